-- A decision's record is stored as text: the exact text that was hashed, as before (json kept
-- it verbatim too), but Postgres no longer parses it to check it on the insert. The trigger
-- that indexes its determining policies still parses it (the cast to json checks it, so a
-- record that is not JSON is still refused; `->` reads the field), and now reads the field
-- once instead of twice (once for `json_typeof`, once more for the elements): three parses of
-- 2-3 kB per decision become two. Every read casts as it did (`record::text`,
-- `record::jsonb`). Rewrites the table once.

DROP VIEW ledger;
ALTER TABLE decisions ALTER COLUMN record TYPE text;
CREATE VIEW ledger AS
    SELECT seq, record, hash FROM decisions
    UNION ALL
    SELECT seq, record::text, hash FROM ledger_events;

CREATE OR REPLACE FUNCTION index_decision_policies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH p AS MATERIALIZED (
        SELECT d.seq, d.record::json -> 'determining_policies' AS policies FROM added AS d
    )
    INSERT INTO decision_policies (policy, seq)
    SELECT DISTINCT e.policy, p.seq
    FROM p,
         json_array_elements_text(CASE json_typeof(p.policies) WHEN 'array' THEN p.policies END)
             AS e(policy);
    RETURN NULL;
END $$;
