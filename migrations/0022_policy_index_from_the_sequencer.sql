-- The policy index (`decision_policies`, migration 0006) is written by the sequencer, in the
-- statement that inserts the decisions, from the same records it seals: the trigger that read
-- each record's determining policies back out of its text is gone. That trigger cast the record
-- to json (a full lex), took `->` of it (a second full parse), expanded the array and sorted the
-- pairs: 16 µs of Postgres's time a decision, on the commit's serial path, out of about 35 µs for
-- the whole insert of a decision (1,500 decision rows inserted in 53–54 ms with it, 29–31 ms
-- without).
--
-- The database still refuses a record that is not JSON: a check constraint casts it (one lex,
-- about 4 µs a decision). `NOT VALID`: every row already there passed the trigger's cast when it
-- was inserted, so the table is not read again; new rows are checked as before.
DROP TRIGGER decisions_index_policies ON decisions;
DROP FUNCTION index_decision_policies();

ALTER TABLE decisions
    ADD CONSTRAINT decisions_record_is_json CHECK (record::json IS NOT NULL) NOT VALID;

-- A sequencer of an older release, still leading after this migration, would go on inserting
-- decisions and leave their policy index to the trigger that is gone: an auditor's `policy=`
-- query would then miss them, silently. So every decision now says that its sequencer wrote
-- its policy index, and a row that does not say so is refused: the older release's insert does
-- not name the column, and has no default to fall back on. The rows already there were indexed
-- by the trigger (the default fills them without rewriting the table).
ALTER TABLE decisions ADD COLUMN policies_indexed boolean NOT NULL DEFAULT true;
ALTER TABLE decisions ALTER COLUMN policies_indexed DROP DEFAULT;
ALTER TABLE decisions
    ADD CONSTRAINT decisions_policies_indexed CHECK (policies_indexed) NOT VALID;
