//! The delivery worker's side of a subscription: taking and renewing its lease, reading the
//! decisions it owes, logging each attempt and settling it, fenced on the lease and the cursor.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{
    record, secs, seq, subscription, AttemptOutcome, Subscription, SubscriptionStatus, COLUMNS,
};
use crate::domain::event::SubscriptionChange;
use crate::storage::{corrupt, StorageError};

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
