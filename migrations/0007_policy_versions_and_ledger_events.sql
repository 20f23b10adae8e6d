-- Policy versions, and ledger events: entries of the log that are not decisions (SPEC §7).
--
-- The log is one sequence. A decision or an event takes the next seq, continues the same hash
-- chain and becomes the next leaf of the same Merkle tree; `ledger` below is that whole log.
-- Events live in their own table so that every reader of decisions (feed, webhooks, audit
-- queries, history) keeps reading decisions only.

-- Every policy bundle legal teams have stored, immutable once stored. `hash` is the content
-- hash that decisions record as their `policy_version`; the same content is one version.
CREATE TABLE policy_versions (
    version    integer     PRIMARY KEY CHECK (version > 0),
    hash       text        NOT NULL UNIQUE,
    author     text        NOT NULL,
    message    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The bundle's files by name: schema.cedarschema, entities.json, *.cedar, tests/*.toml.
    files      jsonb       NOT NULL
);
CREATE TRIGGER policy_versions_append_only BEFORE UPDATE OR DELETE ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER policy_versions_no_truncate BEFORE TRUNCATE ON policy_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();

-- Ledger events: policy activations and webhook subscription changes. `record` is the exact
-- text that was hashed, as for decisions; the other columns are copies for querying.
CREATE TABLE ledger_events (
    seq            bigint      PRIMARY KEY CHECK (seq > 0),
    kind           text        NOT NULL,
    -- The version an activation made active.
    policy_version integer     REFERENCES policy_versions (version),
    subscription   uuid,
    actor          text        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    record         json        NOT NULL,
    hash           bytea       NOT NULL,
    CHECK ((kind = 'policy_activated') = (policy_version IS NOT NULL))
);
-- "Which version is active?" is the last activation: one index probe from the end.
CREATE INDEX ledger_events_activations ON ledger_events (seq) WHERE kind = 'policy_activated';
CREATE TRIGGER ledger_events_append_only BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER ledger_events_no_truncate BEFORE TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();

-- The whole log in one sequence: what the hash chain, the Merkle tree and `audit verify` cover.
-- A range of seq reads both primary keys and merges them.
CREATE VIEW ledger AS
    SELECT seq, record, hash FROM decisions
    UNION ALL
    SELECT seq, record, hash FROM ledger_events;

-- Requests for ledger events, queued by the API replicas and turned into events, in order, by
-- the sequencer (the log's single writer). A working table: the sequencer marks each request
-- done with the seq of its event, or with why it was refused.
CREATE TABLE ledger_requests (
    id           bigserial   PRIMARY KEY,
    kind         text        NOT NULL,
    body         jsonb       NOT NULL,
    actor        text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    done_at      timestamptz,
    seq          bigint,
    refused      text,
    CHECK (done_at IS NULL OR (seq IS NULL) <> (refused IS NULL))
);
CREATE INDEX ledger_requests_pending ON ledger_requests (id) WHERE done_at IS NULL;
-- Wakes the sequencers, as a new order does.
CREATE TRIGGER ledger_requests_notify AFTER INSERT ON ledger_requests
    FOR EACH STATEMENT EXECUTE FUNCTION notify_intake();

-- Every decision records the policy version the ledger has active, or the database refuses it:
-- a bug, or a sequencer of an older release still leading after this migration (which knows no
-- activations; the new release records the first before it decides anything). One probe of the
-- last activation per insert statement, not per row.
CREATE FUNCTION check_decision_policy_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    active text;
BEGIN
    SELECT record::jsonb #>> '{event,active,hash}' INTO active
    FROM ledger_events WHERE kind = 'policy_activated' ORDER BY seq DESC LIMIT 1;
    IF active IS NULL THEN
        RAISE EXCEPTION 'no policy version is active: a decision needs one'
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows WHERE policy_version <> active) THEN
        RAISE EXCEPTION 'a decision must record the active policy version %', active
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER decisions_record_the_active_version AFTER INSERT ON decisions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION check_decision_policy_version();
