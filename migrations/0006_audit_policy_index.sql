-- "Which decisions did policy P determine?", answered from an index in seq order (SPEC §5).
--
-- The GIN index of 0005 over the record's determining policies could not do it fast on a large
-- log: it gives matches in no order, and the jsonb `?` operator makes every match be rechecked,
-- which parses the record (1.5 kB to tens of kB) again; the planner, which prices that parse like
-- an addition, preferred walking the primary key from the cursor and parsing every record until
-- it had a page. `regulator bench-audit` measured a policy of 1 % of a million decisions at
-- 180 ms (p50) a page, against a target of 50 ms p99.
--
-- Instead: one row per (policy, decision) that a decision names among its determining policies,
-- written by the database in the statement that inserts the decisions (the sequencer's code does
-- not change), keyed (policy, seq) so that a page is an index range scan from the cursor, however
-- rare or common the policy. Append-only, like the log it indexes.

CREATE TABLE decision_policies (
    policy text   NOT NULL,
    -- The decision's seq (no foreign key: only the trigger below writes here, from the rows
    -- being inserted, and checking one would cost a trigger per row on the sequencer's path).
    seq    bigint NOT NULL,
    PRIMARY KEY (policy, seq)
);

CREATE FUNCTION index_decision_policies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO decision_policies (policy, seq)
    SELECT DISTINCT p.policy, d.seq
    FROM added AS d,
         json_array_elements_text(CASE json_typeof(d.record -> 'determining_policies')
                                  WHEN 'array' THEN d.record -> 'determining_policies' END)
             AS p(policy);
    RETURN NULL;
END $$;

CREATE TRIGGER decisions_index_policies AFTER INSERT ON decisions
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION index_decision_policies();

INSERT INTO decision_policies (policy, seq)
SELECT DISTINCT p.policy, d.seq
FROM decisions AS d,
     json_array_elements_text(CASE json_typeof(d.record -> 'determining_policies')
                              WHEN 'array' THEN d.record -> 'determining_policies' END)
         AS p(policy);

CREATE TRIGGER decision_policies_append_only BEFORE UPDATE OR DELETE ON decision_policies
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER decision_policies_no_truncate BEFORE TRUNCATE ON decision_policies
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();

-- audit_page no longer reads it; it cost a record parse and a GIN insertion per decision.
DROP INDEX decisions_by_policy;
