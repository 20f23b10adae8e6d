//! Policy versions, ledger events and the queue of requests for them.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use super::{corrupt, StorageError};
use crate::domain::event::{EventRequest, SealedEvent, VersionRef};
use crate::domain::ledger::Head;
use crate::policy::PolicyFiles;

/// A stored version without its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u32,
    pub hash: String,
    pub author: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

impl VersionInfo {
    pub fn reference(&self) -> VersionRef {
        VersionRef {
            version: self.version,
            hash: self.hash.clone(),
        }
    }
}

/// A stored version with its files.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub info: VersionInfo,
    pub files: PolicyFiles,
}

const INFO_COLUMNS: &str = "version, hash, author, message, created_at";

fn info(row: &sqlx::postgres::PgRow) -> Result<VersionInfo, StorageError> {
    let version: i32 = row.try_get(0)?;
    Ok(VersionInfo {
        version: u32::try_from(version).map_err(corrupt)?,
        hash: row.try_get(1)?,
        author: row.try_get(2)?,
        message: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}

fn stored(row: &sqlx::postgres::PgRow) -> Result<StoredVersion, StorageError> {
    let files: sqlx::types::Json<PolicyFiles> = row.try_get(5)?;
    Ok(StoredVersion {
        info: info(row)?,
        files: files.0,
    })
}

/// Stores a checked bundle as the next version, unless a version with the same content hash
/// exists: then that one is returned, with `false`.
pub async fn create_version(
    pool: &PgPool,
    files: &PolicyFiles,
    hash: &str,
    author: &str,
    message: &str,
) -> Result<(VersionInfo, bool), StorageError> {
    let mut tx = pool.begin().await?;
    // Version numbers are consecutive: writers of versions take turns (readers do not wait).
    sqlx::query("LOCK TABLE policy_versions IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let existing = sqlx::query(&format!(
        "SELECT {INFO_COLUMNS} FROM policy_versions WHERE hash = $1"
    ))
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = existing {
        return Ok((info(&row)?, false));
    }
    let row = sqlx::query(&format!(
        "INSERT INTO policy_versions (version, hash, author, message, files)
         SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4 FROM policy_versions
         RETURNING {INFO_COLUMNS}"
    ))
    .bind(hash)
    .bind(author)
    .bind(message)
    .bind(sqlx::types::Json(files))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((info(&row)?, true))
}

/// Whether any version is stored.
pub async fn has_versions(pool: &PgPool) -> Result<bool, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM policy_versions)")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn version<'c>(
    db: impl sqlx::PgExecutor<'c>,
    version: u32,
) -> Result<Option<StoredVersion>, StorageError> {
    sqlx::query(&format!(
        "SELECT {INFO_COLUMNS}, files FROM policy_versions WHERE version = $1"
    ))
    .bind(i32::try_from(version).unwrap_or(i32::MAX))
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(stored)
    .transpose()
}

/// Every version, newest first, without files.
pub async fn versions(pool: &PgPool) -> Result<Vec<VersionInfo>, StorageError> {
    sqlx::query(&format!(
        "SELECT {INFO_COLUMNS} FROM policy_versions ORDER BY version DESC"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(info)
    .collect()
}

/// An activation as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub seq: u64,
    pub version: u32,
    pub hash: String,
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

/// Activations, newest first (at most `limit`).
pub async fn activations<'c>(
    db: impl sqlx::PgExecutor<'c>,
    limit: i64,
) -> Result<Vec<Activation>, StorageError> {
    // The hash as the event recorded it (not as `policy_versions` holds it): the sequencer
    // checks that the stored files still hash to it.
    let rows = sqlx::query(
        "SELECT seq, policy_version, record::jsonb #>> '{event,active,hash}', actor, recorded_at
         FROM ledger_events
         WHERE kind = 'policy_activated' ORDER BY seq DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0)?;
            let version: i32 = r.try_get(1)?;
            let hash: Option<String> = r.try_get(2)?;
            Ok(Activation {
                seq: u64::try_from(seq).map_err(corrupt)?,
                version: u32::try_from(version).map_err(corrupt)?,
                hash: hash.ok_or_else(|| corrupt(format!("activation {seq} names no hash")))?,
                actor: r.try_get(3)?,
                recorded_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// The version the ledger says is active: its last activation.
pub async fn active<'c>(db: impl sqlx::PgExecutor<'c>) -> Result<Option<Activation>, StorageError> {
    Ok(activations(db, 1).await?.into_iter().next())
}

/// Queues a request for a ledger event, in the caller's transaction (so a subscription change
/// and its event are stored together or not at all). Returns its id.
pub async fn request_event<'c>(
    db: impl sqlx::PgExecutor<'c>,
    request: &EventRequest,
    actor: &str,
) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO ledger_requests (kind, body, actor) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(request.kind())
    .bind(sqlx::types::Json(request))
    .bind(actor)
    .fetch_one(db)
    .await?)
}

/// A queued request. A body that does not parse is kept as its error, to be refused.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub id: i64,
    pub request: Result<EventRequest, String>,
    pub actor: String,
}

/// The oldest undone requests.
pub async fn pending_requests(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<PendingRequest>, StorageError> {
    let rows = sqlx::query(
        "SELECT id, body, actor FROM ledger_requests WHERE done_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let body: serde_json::Value = r.try_get(1)?;
            Ok(PendingRequest {
                id: r.try_get(0)?,
                request: serde_json::from_value(body).map_err(|e| e.to_string()),
                actor: r.try_get(2)?,
            })
        })
        .collect()
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    Pending,
    Recorded { seq: u64 },
    Refused { reason: String },
}

/// What became of request `id`; `None` if there is no such request, or it is not an
/// activation (subscription changes are not the policy API's to show).
pub async fn request_outcome(
    pool: &PgPool,
    id: i64,
) -> Result<Option<RequestOutcome>, StorageError> {
    let Some(row) = sqlx::query(
        "SELECT done_at IS NOT NULL, seq, refused FROM ledger_requests
         WHERE id = $1 AND kind = 'activate'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let done: bool = row.try_get(0)?;
    let seq: Option<i64> = row.try_get(1)?;
    let refused: Option<String> = row.try_get(2)?;
    Ok(Some(match (done, seq, refused) {
        (false, _, _) => RequestOutcome::Pending,
        (true, Some(seq), _) => RequestOutcome::Recorded {
            seq: u64::try_from(seq).map_err(corrupt)?,
        },
        (true, None, reason) => RequestOutcome::Refused {
            reason: reason.unwrap_or_default(),
        },
    }))
}

/// How the sequencer settled one request: recorded as an event (its index in the commit's
/// events), or refused.
#[derive(Debug, Clone)]
pub enum Settled {
    Recorded(usize),
    Refused(String),
}

/// Commits events (in sequence order, continuing `from`) and settles the requests they answer,
/// in one transaction that compare-and-sets the ledger head like a decision commit.
pub async fn commit_events(
    conn: &mut PgConnection,
    epoch: i64,
    from: Head,
    events: &[SealedEvent],
    settled: &[(i64, Settled)],
) -> Result<Head, StorageError> {
    let to = events.last().map_or(from, |last| Head {
        seq: last.record.seq,
        hash: last.hash,
    });
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    super::advance_head(&mut tx, epoch, from, to).await?;
    for event in events {
        let r = &event.record;
        let (version, subscription) = match &r.event {
            crate::domain::event::LedgerEvent::PolicyActivated { active, .. } => {
                (Some(i32::try_from(active.version).map_err(corrupt)?), None)
            }
            crate::domain::event::LedgerEvent::SubscriptionChanged { subscription, .. } => {
                (None, Some(*subscription))
            }
            crate::domain::event::LedgerEvent::DivergenceDetected(_) => (None, None),
        };
        sqlx::query(
            "INSERT INTO ledger_events
                (seq, kind, policy_version, subscription, actor, recorded_at, record, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8)",
        )
        .bind(r.seq as i64)
        .bind(r.event.kind())
        .bind(version)
        .bind(subscription)
        .bind(&r.actor)
        .bind(r.recorded_at)
        .bind(&event.text)
        .bind(event.hash.as_slice())
        .execute(&mut *tx)
        .await?;
    }
    for (id, outcome) in settled {
        let (seq, refused) = match outcome {
            Settled::Recorded(i) => (
                Some(
                    events
                        .get(*i)
                        .ok_or_else(|| corrupt("settled by an event outside the commit"))?
                        .record
                        .seq as i64,
                ),
                None,
            ),
            Settled::Refused(reason) => (None, Some(reason.as_str())),
        };
        sqlx::query(
            "UPDATE ledger_requests SET done_at = clock_timestamp(), seq = $2, refused = $3
             WHERE id = $1",
        )
        .bind(id)
        .bind(seq)
        .bind(refused)
        .execute(&mut *tx)
        .await?;
    }
    if to.seq != from.seq {
        super::announce_head(&mut tx, to).await?;
    }
    tx.commit().await?;
    Ok(to)
}

/// Ledger events after `after`, in order (at most `limit`): seq, hash (hex) and record text.
pub async fn events_after(
    pool: &PgPool,
    after: u64,
    limit: i64,
) -> Result<Vec<(u64, String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, encode(hash, 'hex'), record::text FROM ledger_events
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0)?;
            Ok((
                u64::try_from(seq).map_err(corrupt)?,
                r.try_get(1)?,
                r.try_get(2)?,
            ))
        })
        .collect()
}

/// The text of the ledger event at `seq`.
pub async fn event_record(pool: &PgPool, seq: u64) -> Result<Option<String>, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT record::text FROM ledger_events WHERE seq = $1")
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await?,
    )
}
