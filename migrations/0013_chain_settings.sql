-- Per-chain settings an operator sets: how long a chain may take to put a decision in force
-- before the reconciler calls its targets `lagging` rather than `pending`. A chain without a row
-- has the default (30 s). Who set it and when is kept with it, since a longer deadline hides lag.

CREATE TABLE chain_settings (
    chain               text        PRIMARY KEY,
    apply_deadline_secs integer     NOT NULL CHECK (apply_deadline_secs BETWEEN 1 AND 604800),
    updated_by          text        NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
