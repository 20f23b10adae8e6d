-- Webhook subscriptions (SPEC §8). The decision log is the outbox: a subscription is a cursor
-- into it, so a decision and its notification can never disagree, and nothing is queued twice.

CREATE TABLE webhook_subscriptions (
    id                         uuid        PRIMARY KEY,
    chain                      text        NOT NULL,
    url                        text        NOT NULL,
    description                text        NOT NULL DEFAULT '',
    -- active: delivering; paused: the head delivery exhausted its retries (failed_seq);
    -- disabled: by an admin, or by the receiver answering 410 Gone (status_reason says which).
    status                     text        NOT NULL CHECK (status IN ('active', 'paused', 'disabled')),
    status_reason              text,
    secret                     text        NOT NULL,
    -- While a secret is rotated, deliveries are signed with both until this expires.
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    -- Every decision of `chain` with seq <= cursor_seq has been delivered (or skipped by a
    -- replay from a later seq); the next delivery is the first after it.
    cursor_seq                 bigint      NOT NULL CHECK (cursor_seq >= 0),
    -- Failed attempts at the head delivery, and when the next may start.
    attempts                   integer     NOT NULL DEFAULT 0,
    next_attempt_at            timestamptz NOT NULL DEFAULT now(),
    failed_seq                 bigint,
    -- Bumped by every admin change, so a worker's write from before the change is refused.
    generation                 bigint      NOT NULL DEFAULT 0,
    -- One deliverer per subscription across replicas: whoever holds an unexpired lease.
    lease_owner                uuid,
    lease_expires_at           timestamptz,
    created_by                 text        NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    -- A paused subscription names its failed delivery; disabling it keeps the failure visible.
    CHECK (status <> 'paused' OR failed_seq IS NOT NULL),
    CHECK (status <> 'active' OR failed_seq IS NULL)
);

-- Every HTTP attempt, for operators and subscribers asking "what happened to seq N?".
CREATE TABLE webhook_attempts (
    id              bigserial   PRIMARY KEY,
    subscription_id uuid        NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    webhook_id      text        NOT NULL,
    seq             bigint      NOT NULL,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL,
    -- delivered (2xx), failed (will retry), exhausted (failed, retries used up: paused),
    -- gone (410: disabled)
    outcome         text        NOT NULL CHECK (outcome IN ('delivered', 'failed', 'exhausted', 'gone')),
    response_status integer,
    latency_ms      double precision NOT NULL,
    error           text,
    worker          uuid        NOT NULL
);
CREATE INDEX webhook_attempts_by_subscription ON webhook_attempts (subscription_id, id);
CREATE INDEX webhook_attempts_by_time ON webhook_attempts (attempted_at);
