-- The state map's roots (docs/audit.md, "The state map"). One row per sequencer round that
-- changed a target's state: the round's seqs, the state root before and after, and the delta
-- (each changed leaf key with its value hash before and after; NULL where the leaf is absent),
-- enough to check that the previous root with the delta applied gives the new one. A baseline
-- row (the first leader after this migration, on a log that already had state) records the
-- state tables' root with no delta. Append-only, like the log.

CREATE TABLE state_roots (
    to_seq     bigint  PRIMARY KEY CHECK (to_seq >= 1),
    from_seq   bigint  NOT NULL CHECK (from_seq >= 1 AND from_seq <= to_seq),
    prev_root  bytea   NOT NULL CHECK (length(prev_root) = 32),
    new_root   bytea   NOT NULL CHECK (length(new_root) = 32),
    baseline   boolean NOT NULL DEFAULT false,
    keys       bytea[] NOT NULL,
    old_values bytea[] NOT NULL,
    new_values bytea[] NOT NULL,
    CHECK (cardinality(keys) = cardinality(old_values) AND cardinality(keys) = cardinality(new_values))
);

CREATE TRIGGER state_roots_append_only BEFORE UPDATE OR DELETE ON state_roots
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER state_roots_no_truncate BEFORE TRUNCATE ON state_roots
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();

-- The state root a checkpoint signs with the log root (NULL in checkpoints signed before, whose
-- text is `regulator checkpoint v1`).
ALTER TABLE checkpoints ADD COLUMN state_root bytea CHECK (state_root IS NULL OR length(state_root) = 32);
