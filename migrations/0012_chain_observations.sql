-- What chain adapters report they read from their chains, and the divergences the reconciler
-- found in it. Both are evidence, append-only like the ledger: a regulator must be able to see
-- what a chain showed at a block, not what someone later wished it had shown.

CREATE TABLE chain_observations (
    id           bigserial   PRIMARY KEY,
    chain        text        NOT NULL,
    asset        text        NOT NULL,
    -- '' for the asset as a whole (its pause), so that (chain, asset, holder) is a key.
    holder       text        NOT NULL,
    observed     jsonb       NOT NULL,
    block_number bigint      NOT NULL CHECK (block_number >= 0),
    block_hash   text        NOT NULL,
    finality     text        NOT NULL CHECK (finality IN ('final', 'unsafe')),
    -- The asset version the adapter believed in force.
    version      bigint      NOT NULL CHECK (version >= 0),
    tx_hashes    text[]      NOT NULL,
    failure      text,
    -- The reconciler's status of the target when the observation arrived; none for an unsafe one.
    status       text,
    reported_by  text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX chain_observations_latest_final
    ON chain_observations (chain, asset, holder, id DESC) WHERE finality = 'final';

CREATE TABLE chain_divergences (
    id             bigserial   PRIMARY KEY,
    chain          text        NOT NULL,
    asset          text        NOT NULL,
    holder         text        NOT NULL,
    observation_id bigint      NOT NULL REFERENCES chain_observations (id),
    version        bigint      NOT NULL,
    differences    jsonb       NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX chain_divergences_by_target ON chain_divergences (chain, asset, holder);

CREATE TRIGGER chain_observations_append_only BEFORE UPDATE OR DELETE ON chain_observations
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER chain_observations_no_truncate BEFORE TRUNCATE ON chain_observations
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER chain_divergences_append_only BEFORE UPDATE OR DELETE ON chain_divergences
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER chain_divergences_no_truncate BEFORE TRUNCATE ON chain_divergences
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
