//! Webhook subscriptions and their delivery attempts (SPEC §8).
//!
//! A subscription is a cursor into the decision log plus a lease. The worker that holds the
//! lease is the only one delivering; every change it makes is fenced on the lease and on the
//! cursor it started from, so an admin's replay or a takeover by another replica wins cleanly.
//!
//! This module holds the subscriptions and their attempt log as an admin sees them; `delivery`
//! holds what the worker does with them.

pub mod delivery;

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

pub(super) const COLUMNS: &str = "id, chain, url, description, status, status_reason, secret,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret END,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END,
    cursor_seq, attempts, next_attempt_at, failed_seq, lease_owner, lease_expires_at,
    created_by, created_at, updated_at,
    GREATEST(EXTRACT(epoch FROM next_attempt_at - now()), 0)::float8, generation";

pub(super) fn subscription(r: PgRow) -> Result<Subscription, StorageError> {
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

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub(super) fn seq(n: u64) -> i64 {
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
pub(super) async fn record(
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
