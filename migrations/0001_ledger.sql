-- The decision service's tables: registered assets, intake, the decision ledger and the state
-- tables derived from it. Every time here comes from the database clock.

-- Assets orders may target, with the attributes policies read.
CREATE TABLE assets (
    chain               text        NOT NULL,
    asset               text        NOT NULL,
    issuer_jurisdiction text        NOT NULL,
    asset_class         text        NOT NULL,
    registered_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (chain, asset)
);

-- Every accepted order, written durably before anything else happens to it.
CREATE TABLE orders (
    order_id        uuid        PRIMARY KEY,
    issuer          text        NOT NULL,
    idempotency_key text        NOT NULL,
    -- SHA-256 of the canonical request body: same key + other body is refused.
    request_hash    bytea       NOT NULL,
    chain           text        NOT NULL,
    asset           text        NOT NULL,
    holder          text,
    kind            text        NOT NULL,
    intake_at       timestamptz NOT NULL,
    -- The order's legal basis and instruction, as accepted.
    body            jsonb       NOT NULL,
    UNIQUE (issuer, idempotency_key),
    FOREIGN KEY (chain, asset) REFERENCES assets (chain, asset)
);

-- Orders accepted but not yet decided. The sequencer deletes a row in the transaction that
-- commits its decision, so an order is decided exactly once.
CREATE TABLE intake_queue (
    order_id  uuid        PRIMARY KEY REFERENCES orders (order_id),
    chain     text        NOT NULL,
    asset     text        NOT NULL,
    intake_at timestamptz NOT NULL
);
CREATE INDEX intake_queue_by_arrival ON intake_queue (intake_at, order_id);
CREATE INDEX intake_queue_by_asset ON intake_queue (chain, asset, intake_at);

CREATE FUNCTION notify_intake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('regulator_intake', '');
    RETURN NULL;
END $$;
CREATE TRIGGER intake_queue_notify AFTER INSERT ON intake_queue
    FOR EACH STATEMENT EXECUTE FUNCTION notify_intake();

-- The head of the ledger: a single row every sequencer commit compare-and-sets, so that a
-- deposed leader (older epoch) or a stale view (older seq) can never write.
CREATE TABLE ledger_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL,
    hash      bytea   NOT NULL,
    epoch     bigint  NOT NULL
);
INSERT INTO ledger_head (seq, hash, epoch) VALUES (0, decode(repeat('00', 32), 'hex'), 0);

-- The decision log. `record` is the exact text that was hashed (json keeps text verbatim);
-- the other columns are copies for querying.
CREATE TABLE decisions (
    seq            bigint      PRIMARY KEY CHECK (seq > 0),
    order_id       uuid        UNIQUE REFERENCES orders (order_id),
    expired_hold   uuid,
    chain          text        NOT NULL,
    asset          text        NOT NULL,
    holder         text,
    kind           text        NOT NULL,
    issuer         text        NOT NULL,
    outcome        text        NOT NULL,
    reason_code    text        NOT NULL,
    priority       integer     NOT NULL,
    policy_version text        NOT NULL,
    target_version bigint      NOT NULL,
    decided_at     timestamptz NOT NULL,
    record         json        NOT NULL,
    hash           bytea       NOT NULL,
    CHECK ((order_id IS NULL) <> (expired_hold IS NULL))
);
CREATE INDEX decisions_by_asset ON decisions (chain, asset, seq);
CREATE INDEX decisions_by_chain ON decisions (chain, seq);

-- The state tables, always equal to a replay of the decisions' effects: each asset's version,
-- lease counter and next expiry, and one row per active hold (so a decision writes only what it
-- changes, however many holds an asset carries).
CREATE TABLE asset_state (
    chain              text        NOT NULL,
    asset              text        NOT NULL,
    version            bigint      NOT NULL,
    last_fencing_token bigint      NOT NULL,
    next_expiry        timestamptz,
    PRIMARY KEY (chain, asset),
    FOREIGN KEY (chain, asset) REFERENCES assets (chain, asset)
);
CREATE INDEX asset_state_by_expiry ON asset_state (next_expiry) WHERE next_expiry IS NOT NULL;

-- No foreign keys here: only the sequencer writes this table, from the decisions it commits in
-- the same transaction, and the replay check (tests/sequencer.rs) compares it with the log.
-- Checking them cost a deferred trigger per hold.
CREATE TABLE holds (
    order_id uuid  PRIMARY KEY,
    chain    text  NOT NULL,
    asset    text  NOT NULL,
    hold     jsonb NOT NULL
);
CREATE INDEX holds_by_asset ON holds (chain, asset);
