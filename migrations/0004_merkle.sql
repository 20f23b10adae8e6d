-- The RFC 6962 Merkle tree over the decision log (SPEC §7). Leaf i is decision seq i + 1, with
-- leaf data its record hash. The hashes of the tree's perfect subtrees (2^level leaves starting
-- at idx << level) are kept, so any inclusion or consistency proof is a few lookups; checkpoints
-- sign the root at a size. Both are append-only, like the log they cover.

CREATE TABLE merkle_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- How many leaves the stored nodes cover.
CREATE TABLE merkle_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    size      bigint  NOT NULL CHECK (size >= 0)
);
INSERT INTO merkle_head (size) VALUES (0);

-- A signed tree head: Ed25519 over the text described in docs/audit.md.
CREATE TABLE checkpoints (
    tree_size bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root      bytea       NOT NULL CHECK (length(root) = 32),
    signed_at timestamptz NOT NULL,
    key_id    text        NOT NULL,
    signature bytea       NOT NULL CHECK (length(signature) = 64)
);

CREATE TRIGGER merkle_nodes_append_only BEFORE UPDATE OR DELETE ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER merkle_nodes_no_truncate BEFORE TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
