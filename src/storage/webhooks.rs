//! Webhook subscriptions and their delivery attempts (SPEC §8).
//!
//! A subscription is a cursor into the decision log plus a lease. The worker that holds the
//! lease is the only one delivering; every change it makes is fenced on the lease and on the
//! cursor it started from, so an admin's replay or a takeover by another replica wins cleanly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{corrupt, StorageError};
use crate::domain::event::{EventRequest, SubscriptionChange};

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Delivering, or waiting for decisions.
    Active,
    /// The head delivery exhausted its retries; nothing after it is sent until it is replayed
    /// or the subscription is enabled again.
    Paused,
    /// Stopped by an admin, or by the receiver answering 410 Gone.
    Disabled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }

    fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            "disabled" => Ok(Self::Disabled),
            other => Err(corrupt(format!("subscription status {other:?}"))),
        }
    }
}

/// What one HTTP attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Sent (or about to be), outcome not yet written: the worker stopped during the attempt,
    /// or before it saved it.
    InFlight,
    /// The receiver answered 2xx.
    Delivered,
    /// It failed; another attempt is scheduled.
    Failed,
    /// It failed and was the last attempt: the subscription is paused.
    Exhausted,
    /// The receiver answered 410 Gone: the subscription is disabled.
    Gone,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Exhausted => "exhausted",
            Self::Gone => "gone",
        }
    }

    fn parse(text: &str) -> Result<Self, StorageError> {
        match text {
            "in_flight" => Ok(Self::InFlight),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            "exhausted" => Ok(Self::Exhausted),
            "gone" => Ok(Self::Gone),
            other => Err(corrupt(format!("attempt outcome {other:?}"))),
        }
    }
}

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: Uuid,
    pub chain: String,
    pub url: String,
    pub description: String,
    pub status: SubscriptionStatus,
    pub status_reason: Option<String>,
    pub secret: String,
    /// The previous secret while its grace period lasts (already `None` once it has expired).
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub cursor_seq: u64,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// How long until `next_attempt_at`, on the database's clock, when this was read.
    pub retry_wait: Duration,
    pub failed_seq: Option<u64>,
    /// Bumped by every admin change; a worker's settle is fenced on it.
    pub generation: i64,
    pub lease_owner: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, chain, url, description, status, status_reason, secret,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret END,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END,
    cursor_seq, attempts, next_attempt_at, failed_seq, lease_owner, lease_expires_at,
    created_by, created_at, updated_at,
    GREATEST(EXTRACT(epoch FROM next_attempt_at - now()), 0)::float8, generation";

fn subscription(r: PgRow) -> Result<Subscription, StorageError> {
    let cursor: i64 = r.try_get(9)?;
    let attempts: i32 = r.try_get(10)?;
    let failed: Option<i64> = r.try_get(12)?;
    Ok(Subscription {
        id: r.try_get(0)?,
        chain: r.try_get(1)?,
        url: r.try_get(2)?,
        description: r.try_get(3)?,
        status: SubscriptionStatus::parse(r.try_get(4)?)?,
        status_reason: r.try_get(5)?,
        secret: r.try_get(6)?,
        previous_secret: r.try_get(7)?,
        previous_secret_expires_at: r.try_get(8)?,
        cursor_seq: u64::try_from(cursor).map_err(corrupt)?,
        attempts: u32::try_from(attempts).map_err(corrupt)?,
        next_attempt_at: r.try_get(11)?,
        failed_seq: failed.map(u64::try_from).transpose().map_err(corrupt)?,
        lease_owner: r.try_get(13)?,
        lease_expires_at: r.try_get(14)?,
        created_by: r.try_get(15)?,
        created_at: r.try_get(16)?,
        updated_at: r.try_get(17)?,
        retry_wait: Duration::try_from_secs_f64(r.try_get(18)?).unwrap_or_default(),
        generation: r.try_get(19)?,
    })
}

fn subscriptions(rows: Vec<PgRow>) -> Result<Vec<Subscription>, StorageError> {
    rows.into_iter().map(subscription).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A subscription to create.
pub struct NewSubscription<'a> {
    pub id: Uuid,
    pub chain: &'a str,
    pub url: &'a str,
    pub description: &'a str,
    pub secret: &'a str,
    /// Deliveries start after this sequence number.
    pub cursor_seq: u64,
    pub created_by: &'a str,
}

pub async fn create(pool: &PgPool, new: NewSubscription<'_>) -> Result<Subscription, StorageError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO webhook_subscriptions (id, chain, url, description, status, secret, cursor_seq, created_by)
         VALUES ($1, $2, $3, $4, 'active', $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.chain)
    .bind(new.url)
    .bind(new.description)
    .bind(new.secret)
    .bind(seq(new.cursor_seq))
    .bind(new.created_by)
    .fetch_one(&mut *tx)
    .await?;
    let created = subscription(row)?;
    let change = SubscriptionChange::Created {
        url: created.url.clone(),
        from_seq: new.cursor_seq + 1,
    };
    record(&mut tx, &created, change, new.created_by).await?;
    tx.commit().await?;
    Ok(created)
}

/// Queues the ledger event of a subscription change, in the change's own transaction.
async fn record(
    tx: &mut sqlx::PgConnection,
    subscription: &Subscription,
    change: SubscriptionChange,
    actor: &str,
) -> Result<(), StorageError> {
    let request = EventRequest::Subscription {
        subscription: subscription.id,
        chain: subscription.chain.clone(),
        change,
    };
    super::policy::request_event(tx, &request, actor).await?;
    Ok(())
}

pub async fn list(pool: &PgPool, chain: Option<&str>) -> Result<Vec<Subscription>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_subscriptions
         WHERE $1::text IS NULL OR chain = $1 ORDER BY created_at, id"
    ))
    .bind(chain)
    .fetch_all(pool)
    .await?;
    subscriptions(rows)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Subscription>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(subscription).transpose()
}

/// Deletes a subscription and its attempts log; `false` if there was none.
pub async fn delete(pool: &PgPool, id: Uuid, actor: &str) -> Result<bool, StorageError> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(&format!(
        "DELETE FROM webhook_subscriptions WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = deleted else {
        return Ok(false);
    };
    record(
        &mut tx,
        &subscription(row)?,
        SubscriptionChange::Deleted,
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The seq of `chain`'s first decision after `after`, if there is one yet.
pub async fn next_decision(
    pool: &PgPool,
    chain: &str,
    after: u64,
) -> Result<Option<u64>, StorageError> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT seq FROM decisions WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT 1",
    )
    .bind(chain)
    .bind(seq(after))
    .fetch_optional(pool)
    .await?;
    next.map(|s| u64::try_from(s).map_err(corrupt)).transpose()
}

/// An admin's change to a subscription.
pub enum Change<'a> {
    /// Resume delivering at the cursor: a paused subscription retries its failed delivery.
    Enable,
    Disable {
        reason: &'a str,
    },
    /// Deliver again from this sequence number (redelivering what was already delivered).
    Replay {
        from_seq: u64,
    },
    /// A new secret; the current one stays valid for `grace`.
    Rotate {
        secret: &'a str,
        grace: Duration,
    },
}

/// Applies an admin's change; `None` if there is no such subscription.
///
/// Enabling and replaying clear the failure and the backoff, so delivery starts at once.
/// A worker delivering the subscription notices at its next step: its writes are fenced on
/// the status and the cursor it started from.
pub async fn change(
    pool: &PgPool,
    id: Uuid,
    change: Change<'_>,
    actor: &str,
) -> Result<Option<Subscription>, StorageError> {
    let event = match &change {
        Change::Enable => SubscriptionChange::Enabled,
        Change::Disable { .. } => SubscriptionChange::Disabled,
        Change::Replay { from_seq } => SubscriptionChange::Replayed {
            from_seq: *from_seq,
        },
        Change::Rotate { grace, .. } => SubscriptionChange::SecretRotated {
            grace_seconds: grace.as_secs(),
        },
    };
    let mut tx = pool.begin().await?;
    const RESUME: &str = "status = 'active', status_reason = NULL, failed_seq = NULL,
        attempts = 0, next_attempt_at = now(), updated_at = now(), generation = generation + 1";
    let row = match change {
        Change::Enable => {
            sqlx::query(&format!(
                "UPDATE webhook_subscriptions SET {RESUME} WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        Change::Disable { reason } => {
            sqlx::query(&format!(
                "UPDATE webhook_subscriptions
                 SET status = 'disabled', status_reason = $2, updated_at = now(),
                     generation = generation + 1
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?
        }
        Change::Replay { from_seq } => {
            sqlx::query(&format!(
                "UPDATE webhook_subscriptions SET {RESUME}, cursor_seq = $2
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(seq(from_seq.saturating_sub(1)))
            .fetch_optional(&mut *tx)
            .await?
        }
        Change::Rotate { secret, grace } => {
            sqlx::query(&format!(
                "UPDATE webhook_subscriptions
                 SET previous_secret = secret, secret = $2,
                     previous_secret_expires_at = now() + make_interval(secs => $3),
                     updated_at = now(), generation = generation + 1
                 WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(secret)
            .bind(secs(grace))
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let changed = subscription(row)?;
    record(&mut tx, &changed, event, actor).await?;
    tx.commit().await?;
    Ok(Some(changed))
}

/// One logged HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub subscription_id: Uuid,
    pub webhook_id: String,
    pub seq: u64,
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub response_status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub worker: Uuid,
}

/// A subscription's attempts, newest first, before the attempt id `before` if given.
pub async fn attempts(
    pool: &PgPool,
    id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Attempt>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, subscription_id, webhook_id, seq, attempt, attempted_at, outcome,
                response_status, latency_ms, error, worker
         FROM webhook_attempts
         WHERE subscription_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let seq: i64 = r.try_get(3)?;
            let attempt: i32 = r.try_get(4)?;
            let status: Option<i32> = r.try_get(7)?;
            Ok(Attempt {
                id: r.try_get(0)?,
                subscription_id: r.try_get(1)?,
                webhook_id: r.try_get(2)?,
                seq: u64::try_from(seq).map_err(corrupt)?,
                attempt: u32::try_from(attempt).map_err(corrupt)?,
                attempted_at: r.try_get(5)?,
                outcome: AttemptOutcome::parse(r.try_get(6)?)?,
                response_status: status.map(u16::try_from).transpose().map_err(corrupt)?,
                latency_ms: r.try_get(8)?,
                error: r.try_get(9)?,
                worker: r.try_get(10)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The delivery worker's side

/// Takes the leases of active subscriptions that nobody holds (or whose lease expired), except
/// those in `running`; returns their ids.
pub async fn claim(
    pool: &PgPool,
    owner: Uuid,
    lease: Duration,
    running: &[Uuid],
    limit: i64,
) -> Result<Vec<Uuid>, StorageError> {
    let ids = sqlx::query_scalar(
        "UPDATE webhook_subscriptions SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM webhook_subscriptions
             WHERE status = 'active' AND id <> ALL($3)
               AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < now())
             ORDER BY id LIMIT $4
             FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(owner)
    .bind(secs(lease))
    .bind(running)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

/// Extends `owner`'s lease on an active subscription and reads it; `None` if the lease is no
/// longer `owner`'s or the subscription is no longer active.
pub async fn renew(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    lease: Duration,
) -> Result<Option<Subscription>, StorageError> {
    let row = sqlx::query(&format!(
        "UPDATE webhook_subscriptions SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2 AND status = 'active' RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(owner)
    .bind(secs(lease))
    .fetch_optional(pool)
    .await?;
    row.map(subscription).transpose()
}

/// Gives up `owner`'s leases, so another replica can take over at once (on shutdown).
pub async fn release(pool: &PgPool, owner: Uuid) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE webhook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL
         WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// A decision waiting for delivery.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    /// The record's exact text, as hashed.
    pub record: String,
    /// Hex SHA-256 of the record text.
    pub hash: String,
    pub decided_at: DateTime<Utc>,
}

/// `chain`'s decisions after `after`, in order.
pub async fn pending(
    pool: &PgPool,
    chain: &str,
    after: u64,
    limit: i64,
) -> Result<Vec<Pending>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, record::text, encode(hash, 'hex'), decided_at FROM decisions
         WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(chain)
    .bind(seq(after))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let n: i64 = r.try_get(0)?;
            Ok(Pending {
                seq: u64::try_from(n).map_err(corrupt)?,
                record: r.try_get(1)?,
                hash: r.try_get(2)?,
                decided_at: r.try_get(3)?,
            })
        })
        .collect()
}

/// How many of `chain`'s decisions follow `after`, counting at most `cap`.
pub async fn backlog(
    pool: &PgPool,
    chain: &str,
    after: u64,
    cap: i64,
) -> Result<u64, StorageError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM decisions WHERE chain = $1 AND seq > $2 LIMIT $3) d",
    )
    .bind(chain)
    .bind(seq(after))
    .bind(cap)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// An attempt to log.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    /// The row [`begin_attempt`] wrote before the request was sent.
    pub row: i64,
    pub webhook_id: String,
    pub seq: u64,
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub response_status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// Writes an attempt as `in_flight` before its request is sent, so that it is logged even if
/// the worker dies before it learns or saves the outcome; returns its row.
pub async fn begin_attempt(
    pool: &PgPool,
    subscription: Uuid,
    owner: Uuid,
    webhook_id: &str,
    seq_no: u64,
    attempt: u32,
    attempted_at: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let row: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_attempts (subscription_id, webhook_id, seq, attempt, attempted_at,
             outcome, latency_ms, worker)
         VALUES ($1, $2, $3, $4, $5, 'in_flight', 0, $6) RETURNING id",
    )
    .bind(subscription)
    .bind(webhook_id)
    .bind(seq(seq_no))
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(attempted_at)
    .bind(owner)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// Where the worker leaves the subscription after its attempts.
#[derive(Debug, Clone)]
pub struct Settle {
    /// The cursor the worker started from: if it moved (a replay), nothing is written.
    pub from_cursor: u64,
    /// The generation the worker read: if an admin changed the subscription since, nothing
    /// is written, so the change is not undone.
    pub generation: i64,
    pub cursor: u64,
    /// Failed attempts at the new head delivery.
    pub attempts: u32,
    pub retry_in: Duration,
    pub status: SubscriptionStatus,
    pub status_reason: Option<String>,
    pub failed_seq: Option<u64>,
}

/// Logs `attempts` and moves the subscription as `settle` says, renewing the lease, in one
/// statement. Returns the subscription, or `None` if `owner` no longer holds an active
/// subscription at `settle.from_cursor` (taken over, disabled, replayed or deleted): the
/// attempts are logged all the same, since they happened.
pub async fn settle(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    lease: Duration,
    attempts: &[NewAttempt],
    settle: &Settle,
) -> Result<Option<Subscription>, StorageError> {
    let mut rows = Vec::with_capacity(attempts.len());
    let mut ids = Vec::with_capacity(attempts.len());
    let mut seqs = Vec::with_capacity(attempts.len());
    let mut numbers = Vec::with_capacity(attempts.len());
    let mut times = Vec::with_capacity(attempts.len());
    let mut outcomes = Vec::with_capacity(attempts.len());
    let mut statuses = Vec::with_capacity(attempts.len());
    let mut latencies = Vec::with_capacity(attempts.len());
    let mut errors = Vec::with_capacity(attempts.len());
    for a in attempts {
        rows.push(a.row);
        ids.push(a.webhook_id.as_str());
        seqs.push(seq(a.seq));
        numbers.push(i32::try_from(a.attempt).unwrap_or(i32::MAX));
        times.push(a.attempted_at);
        outcomes.push(a.outcome.as_str());
        statuses.push(a.response_status.map(i32::from));
        latencies.push(a.latency_ms);
        errors.push(a.error.as_deref());
    }
    let sql = format!(
        "WITH logged AS (
             -- Each attempt's row was written before it was sent: this completes it (or
             -- writes it again, should it have been pruned meanwhile).
             INSERT INTO webhook_attempts (id, subscription_id, webhook_id, seq, attempt,
                 attempted_at, outcome, response_status, latency_ms, error, worker)
             SELECT l.row_id, $1, l.webhook_id, l.seq, l.attempt, l.attempted_at, l.outcome,
                    l.response_status, l.latency_ms, l.error, $2
             FROM UNNEST($20::bigint[], $3::text[], $4::bigint[], $5::int[], $6::timestamptz[],
                         $7::text[], $8::int[], $9::float8[], $10::text[])
                  AS l(row_id, webhook_id, seq, attempt, attempted_at, outcome, response_status,
                       latency_ms, error)
             WHERE EXISTS (SELECT 1 FROM webhook_subscriptions WHERE id = $1)
             ON CONFLICT (id) DO UPDATE SET outcome = EXCLUDED.outcome,
                 response_status = EXCLUDED.response_status, latency_ms = EXCLUDED.latency_ms,
                 error = EXCLUDED.error
         )
         UPDATE webhook_subscriptions SET
             cursor_seq = $11, attempts = $12, next_attempt_at = now() + make_interval(secs => $13),
             status = $14, status_reason = $15, failed_seq = $16,
             updated_at = CASE WHEN $14 = 'active' THEN updated_at ELSE now() END,
             lease_expires_at = now() + make_interval(secs => $17)
         WHERE id = $1 AND lease_owner = $2 AND status = 'active' AND cursor_seq = $18
           AND generation = $19
         RETURNING {COLUMNS}"
    );
    let query = sqlx::query(&sql)
        .bind(id)
        .bind(owner)
        .bind(&ids)
        .bind(&seqs)
        .bind(&numbers)
        .bind(&times)
        .bind(&outcomes)
        .bind(&statuses)
        .bind(&latencies)
        .bind(&errors)
        .bind(seq(settle.cursor))
        .bind(i32::try_from(settle.attempts).unwrap_or(i32::MAX))
        .bind(secs(settle.retry_in))
        .bind(settle.status.as_str())
        .bind(settle.status_reason.as_deref())
        .bind(settle.failed_seq.map(seq))
        .bind(secs(lease))
        .bind(seq(settle.from_cursor));
    let query = query.bind(settle.generation).bind(&rows);
    let event = match (settle.status, settle.failed_seq) {
        (SubscriptionStatus::Active, _) => None,
        (SubscriptionStatus::Paused, Some(failed_seq)) => Some(SubscriptionChange::Paused {
            failed_seq,
            reason: settle.status_reason.clone().unwrap_or_default(),
        }),
        _ => Some(SubscriptionChange::Gone {
            reason: settle.status_reason.clone().unwrap_or_default(),
        }),
    };
    let Some(event) = event else {
        // The common case, a delivery: one statement, no transaction.
        return query
            .fetch_optional(pool)
            .await?
            .map(subscription)
            .transpose();
    };
    // The engine paused or disabled it: the change and its ledger event are stored together.
    let mut tx = pool.begin().await?;
    let Some(row) = query.fetch_optional(&mut *tx).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let changed = subscription(row)?;
    record(&mut tx, &changed, event, crate::domain::event::ENGINE_ACTOR).await?;
    tx.commit().await?;
    Ok(Some(changed))
}

/// Deletes attempts logged before `cutoff`, a batch at a time so that no statement runs
/// long; returns how many.
pub async fn prune_attempts(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<u64, StorageError> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM webhook_attempts WHERE id IN (
                 SELECT id FROM webhook_attempts WHERE attempted_at < $1 LIMIT 10000)",
        )
        .bind(cutoff)
        .execute(pool)
        .await?;
        total += done.rows_affected();
        if done.rows_affected() < 10_000 {
            return Ok(total);
        }
    }
}

/// How far a subscription is behind the log.
#[derive(Debug, Clone)]
pub struct Lag {
    pub id: Uuid,
    /// Decisions of its chain after its cursor, counted up to the cap.
    pub decisions: u64,
    /// The age of the oldest of them; zero when there is none.
    pub seconds: f64,
}

/// The lag of every subscription, paused and disabled ones included.
pub async fn lags(pool: &PgPool, cap: i64) -> Result<Vec<Lag>, StorageError> {
    let rows = sqlx::query(
        "SELECT s.id,
                (SELECT count(*) FROM (SELECT 1 FROM decisions d
                     WHERE d.chain = s.chain AND d.seq > s.cursor_seq LIMIT $1) x),
                COALESCE((SELECT EXTRACT(epoch FROM now() - d.decided_at)::float8 FROM decisions d
                     WHERE d.chain = s.chain AND d.seq > s.cursor_seq ORDER BY d.seq LIMIT 1), 0)
         FROM webhook_subscriptions s",
    )
    .bind(cap)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let n: i64 = r.try_get(1)?;
            Ok(Lag {
                id: r.try_get(0)?,
                decisions: u64::try_from(n).unwrap_or(0),
                seconds: r.try_get(2)?,
            })
        })
        .collect()
}
