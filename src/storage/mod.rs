//! Postgres: every SQL statement of the service lives here, with bind parameters only.
//!
//! The tables are created by the migrations in `migrations/`. Writers: the API inserts assets and
//! intake; only the sequencer, over its leadership connection, writes decisions and state.

pub mod audit;
pub mod chains;
mod commit;
mod intake;
pub mod policy;
mod queue;
pub mod simulate;
pub mod state;
pub mod webhooks;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

pub(crate) use commit::{advance_head, announce_head};
pub use commit::{commit, Commit, HoldWrites, StateChange};
pub use intake::{intake, intake_on, queue_taken, Announce, Intake, NewOrder, OrderBody};
pub use queue::{
    commit_taken, fetch_window, fetch_work, may_vacuum_intake_queue, roll_back_round,
    vacuum_intake_queue, PendingOrder, Work,
};

use crate::domain::ledger::Head;
use crate::domain::{
    AssetClass, AssetKey, AssetState, HolderAddress, IssuerId, JurisdictionCode, Order, OrderId,
    RegisteredAsset, Target,
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The channel a committed group announces its last sequence number on.
pub const DECISIONS_CHANNEL: &str = "regulator_decisions";
/// The channel the intake queue's trigger announces new orders on.
pub const INTAKE_CHANNEL: &str = "regulator_intake";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value no longer parses: the database was changed outside the engine.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The sequencer cannot decide: no policy version is stored, or the active one does not load.
    #[error("no policy to decide with: {0}")]
    NoPolicy(String),
    /// The ledger head moved under this sequencer: another leader has taken over.
    #[error("deposed: the ledger head is no longer at seq {expected_seq} in epoch {epoch}")]
    Deposed { expected_seq: u64, epoch: i64 },
    /// The state tables do not give the state root recorded or signed for them: this replica
    /// refuses to decide on them (`regulator state rebuild` recomputes them from the log).
    #[error("the state tables do not match the state root: {0}; run `regulator state rebuild`")]
    StateMismatch(String),
}

impl StorageError {
    /// The database could not be reached (down, restarting, or every connection busy past
    /// the acquire timeout): the engine is not ready, which is no fault of the request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::WorkerCrashed
                ) || matches!(e, sqlx::Error::Database(db)
                // Class 08: connection exception; 57: operator intervention (shutting down,
                // starting up, terminated).
                if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")))
            }
            _ => false,
        }
    }
}

pub fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(what.to_string())
}

/// How long a request waits for a pooled connection before it is answered 503 `not-ready`:
/// with the database down, a request should fail fast rather than wait out sqlx's 30 s.
pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Creates the database if it is missing, connects, and applies the migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StorageError> {
    connect_with(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
}

/// [`connect`], waiting at most `acquire_timeout` for a pooled connection.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, StorageError> {
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating database");
        Postgres::create_database(url).await?;
    }
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Are all embedded migrations applied?
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, StorageError> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(applied as usize >= MIGRATOR.iter().count())
}

// ---------------------------------------------------------------------------------------------
// Assets

/// Registers `asset` or updates its attributes; `true` if it was new.
pub async fn upsert_asset(pool: &PgPool, asset: &RegisteredAsset) -> Result<bool, StorageError> {
    let created: bool = sqlx::query_scalar(
        "INSERT INTO assets (chain, asset, issuer_jurisdiction, asset_class)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (chain, asset) DO UPDATE
            SET issuer_jurisdiction = EXCLUDED.issuer_jurisdiction,
                asset_class = EXCLUDED.asset_class,
                updated_at = clock_timestamp()
         RETURNING (xmax = 0)",
    )
    .bind(asset.key.chain.as_str())
    .bind(asset.key.asset.as_str())
    .bind(asset.issuer_jurisdiction.as_str())
    .bind(asset.asset_class.as_str())
    .fetch_one(pool)
    .await?;
    Ok(created)
}

pub async fn asset(pool: &PgPool, key: &AssetKey) -> Result<Option<RegisteredAsset>, StorageError> {
    let row = sqlx::query(
        "SELECT issuer_jurisdiction, asset_class FROM assets WHERE chain = $1 AND asset = $2",
    )
    .bind(key.chain.as_str())
    .bind(key.asset.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| registered(key.clone(), r.get(0), r.get(1)))
        .transpose()
}

fn registered(
    key: AssetKey,
    jurisdiction: String,
    class: String,
) -> Result<RegisteredAsset, StorageError> {
    Ok(RegisteredAsset {
        key,
        issuer_jurisdiction: JurisdictionCode::parse(jurisdiction).map_err(corrupt)?,
        asset_class: AssetClass::parse(class).map_err(corrupt)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Orders

/// An order and, once decided, the exact text of its decision record.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub order: Order,
    pub decision: Option<String>,
}

pub async fn order(pool: &PgPool, id: OrderId) -> Result<Option<StoredOrder>, StorageError> {
    let row = sqlx::query(
        "SELECT o.order_id, o.issuer, o.chain, o.asset, o.holder, o.intake_at, o.body,
                d.record::text
         FROM orders o LEFT JOIN decisions d ON d.order_id = o.order_id
         WHERE o.order_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(StoredOrder {
            order: order_from_row(&r, 0)?,
            decision: r.get(7),
        })
    })
    .transpose()
}

/// Reads an order from columns `at..at+7`: id, issuer, chain, asset, holder, intake_at, body.
fn order_from_row(r: &sqlx::postgres::PgRow, at: usize) -> Result<Order, StorageError> {
    let body: sqlx::types::Json<OrderBody> = r.try_get(at + 6)?;
    let holder: Option<String> = r.get(at + 4);
    Ok(Order {
        id: OrderId::from_uuid(r.get(at)),
        issuer: IssuerId::parse(r.get::<String, _>(at + 1)).map_err(corrupt)?,
        target: Target {
            asset: asset_key(r.get(at + 2), r.get(at + 3))?,
            holder: holder
                .map(HolderAddress::parse)
                .transpose()
                .map_err(corrupt)?,
        },
        legal_basis: body.0.legal_basis,
        instruction: body.0.instruction,
        intake_at: r.get(at + 5),
    })
}

fn asset_key(chain: String, asset: String) -> Result<AssetKey, StorageError> {
    Ok(AssetKey {
        chain: crate::domain::ChainId::parse(chain).map_err(corrupt)?,
        asset: crate::domain::AssetId::parse(asset).map_err(corrupt)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Sequencer: leadership, pending work, commit

/// The advisory lock key of the sequencer ("REGSEQ" in ASCII).
const SEQUENCER_LOCK: i64 = 0x5245_4753_4551;

/// Tries to take the sequencer lock on `conn` (session-scoped: it lasts as long as `conn`).
/// On success, starts a new epoch and returns it with the ledger head.
pub async fn try_lead(conn: &mut PgConnection) -> Result<Option<(i64, Head)>, StorageError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SEQUENCER_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let row = sqlx::query("UPDATE ledger_head SET epoch = epoch + 1 RETURNING epoch, seq, hash")
        .fetch_one(&mut *conn)
        .await?;
    let epoch: i64 = row.get(0);
    sqlx::query(
        "INSERT INTO sequencer_lease (epoch, backend_pid, renewed_at)
         VALUES ($1, pg_backend_pid(), clock_timestamp())
         ON CONFLICT (singleton) DO UPDATE SET epoch = EXCLUDED.epoch,
             backend_pid = EXCLUDED.backend_pid, renewed_at = EXCLUDED.renewed_at",
    )
    .bind(epoch)
    .execute(&mut *conn)
    .await?;
    Ok(Some((epoch, head_from(row.get(1), row.get(2))?)))
}

/// Renews the leader's lease (epoch `epoch`, on the lock's own connection). `Deposed` if
/// another leader has taken it.
pub async fn renew_lease(
    conn: &mut PgConnection,
    epoch: i64,
    seq: u64,
) -> Result<(), StorageError> {
    let renewed = sqlx::query(
        "UPDATE sequencer_lease SET renewed_at = clock_timestamp()
         WHERE epoch = $1 AND backend_pid = pg_backend_pid()",
    )
    .bind(epoch)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if renewed == 0 {
        return Err(StorageError::Deposed {
            expected_seq: seq,
            epoch,
        });
    }
    Ok(())
}

/// A leader that stopped renewing its lease for longer than `ttl` (by the database's clock) is
/// stuck: terminates the backend that holds the sequencer lock, if it is the one the lease
/// names, so that the lock is free. Returns that backend's pid, if it was terminated.
pub async fn depose_stuck_leader(
    conn: &mut PgConnection,
    ttl: std::time::Duration,
) -> Result<Option<i32>, StorageError> {
    // pg_locks shows a bigint advisory key as its high half in classid, its low half in objid,
    // with objsubid 1. Only the lock's holder is terminated, never a pid merely recorded (a
    // new leader that has not written its lease yet holds the lock under another pid).
    let stuck: Option<i32> = sqlx::query_scalar(
        "SELECT l.backend_pid FROM sequencer_lease l
         JOIN pg_locks k ON k.pid = l.backend_pid AND k.locktype = 'advisory' AND k.granted
              AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND k.classid::bigint = ($1 >> 32) AND k.objid::bigint = ($1 & 4294967295)
              AND k.objsubid = 1
         WHERE clock_timestamp() - l.renewed_at > make_interval(secs => $2)",
    )
    .bind(SEQUENCER_LOCK)
    .bind(ttl.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(pid) = stuck else { return Ok(None) };
    // Waits up to 5 s for the backend to end, so that the lock is free when this returns.
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&mut *conn)
        .await?;
    Ok(ended.then_some(pid))
}

/// Releases the sequencer lock if this connection holds it (a leader stepping down keeps its
/// connection to stand again).
pub async fn release_lead(conn: &mut PgConnection) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn head_from(seq: i64, hash: Vec<u8>) -> Result<Head, StorageError> {
    Ok(Head {
        seq: u64::try_from(seq).map_err(corrupt)?,
        hash: hash
            .try_into()
            .map_err(|_| corrupt("ledger head hash is not 32 bytes"))?,
    })
}

/// The time of the ledger's last record (the epoch's start for an empty ledger): a new leader
/// stamps nothing earlier.
pub async fn last_stamp(conn: &mut PgConnection) -> Result<DateTime<Utc>, StorageError> {
    let stamp: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT greatest(
             (SELECT decided_at FROM decisions ORDER BY seq DESC LIMIT 1),
             (SELECT recorded_at FROM ledger_events ORDER BY seq DESC LIMIT 1))",
    )
    .fetch_one(conn)
    .await?;
    Ok(stamp.unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
}

/// The database's clock: every recorded time comes from it, not from a replica's.
pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>, StorageError> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(conn)
        .await?)
}

pub async fn ledger_head(pool: &PgPool) -> Result<Head, StorageError> {
    let row = sqlx::query("SELECT seq, hash FROM ledger_head")
        .fetch_one(pool)
        .await?;
    head_from(row.get(0), row.get(1))
}

/// Loads the states of `keys`; an asset never touched has the empty state.
pub async fn load_states(
    conn: &mut PgConnection,
    keys: &[AssetKey],
) -> Result<HashMap<AssetKey, AssetState>, StorageError> {
    let chains: Vec<&str> = keys.iter().map(|k| k.chain.as_str()).collect();
    let assets: Vec<&str> = keys.iter().map(|k| k.asset.as_str()).collect();
    let heads = sqlx::query(
        "SELECT s.chain, s.asset, s.version, s.last_fencing_token
         FROM asset_state s JOIN UNNEST($1::text[], $2::text[]) AS k(chain, asset)
           ON s.chain = k.chain AND s.asset = k.asset",
    )
    .bind(&chains)
    .bind(&assets)
    .fetch_all(&mut *conn)
    .await?;
    let holds = sqlx::query(
        "SELECT h.chain, h.asset, h.hold
         FROM holds h JOIN UNNEST($1::text[], $2::text[]) AS k(chain, asset)
           ON h.chain = k.chain AND h.asset = k.asset",
    )
    .bind(&chains)
    .bind(&assets)
    .fetch_all(&mut *conn)
    .await?;
    let mut states: HashMap<AssetKey, AssetState> = keys
        .iter()
        .map(|k| (k.clone(), AssetState::default()))
        .collect();
    assemble_states(&mut states, heads, holds)?;
    Ok(states)
}

/// Builds states from `asset_state` rows (chain, asset, version, last_fencing_token) and
/// `holds` rows (chain, asset, hold).
pub(crate) fn assemble_states(
    states: &mut HashMap<AssetKey, AssetState>,
    heads: Vec<sqlx::postgres::PgRow>,
    holds: Vec<sqlx::postgres::PgRow>,
) -> Result<(), StorageError> {
    let mut by_asset: HashMap<AssetKey, Vec<crate::domain::Hold>> = HashMap::new();
    for r in holds {
        let hold: sqlx::types::Json<crate::domain::Hold> = r.try_get(2)?;
        by_asset
            .entry(asset_key(r.get(0), r.get(1))?)
            .or_default()
            .push(hold.0);
    }
    for r in heads {
        let key = asset_key(r.get(0), r.get(1))?;
        let version: i64 = r.get(2);
        let token: i64 = r.get(3);
        let holds = by_asset.remove(&key).unwrap_or_default();
        states.insert(
            key,
            AssetState::from_parts(
                holds,
                u64::try_from(version).map_err(corrupt)?,
                u64::try_from(token).map_err(corrupt)?,
            ),
        );
    }
    if let Some(key) = by_asset.keys().next() {
        return Err(corrupt(format!("holds on {key} without its asset state")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reads: decisions, targets

/// A committed decision: its sequence number, order (if any) and exact record text.
#[derive(Debug, Clone)]
pub struct StoredDecision {
    pub seq: u64,
    pub order_id: Option<OrderId>,
    pub record: String,
}

fn stored_decision(r: sqlx::postgres::PgRow) -> StoredDecision {
    let seq: i64 = r.get(0);
    let order_id: Option<Uuid> = r.get(1);
    StoredDecision {
        seq: seq.max(0) as u64,
        order_id: order_id.map(OrderId::from_uuid),
        record: r.get(2),
    }
}

/// Decisions after `after` in sequence order, optionally only `chain`'s.
pub async fn decisions_after(
    pool: &PgPool,
    after: u64,
    limit: i64,
    chain: Option<&str>,
) -> Result<Vec<StoredDecision>, StorageError> {
    let rows = match chain {
        Some(chain) => {
            sqlx::query(
                "SELECT seq, order_id, record::text FROM decisions
                 WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(chain)
            .bind(after as i64)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT seq, order_id, record::text FROM decisions
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after as i64)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows.into_iter().map(stored_decision).collect())
}

/// The stored hash of record `seq` (a decision or an event).
pub async fn record_hash(pool: &PgPool, seq: u64) -> Result<Option<[u8; 32]>, StorageError> {
    let hash: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM ledger WHERE seq = $1")
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_optional(pool)
        .await?;
    hash.map(|h| {
        h.try_into()
            .map_err(|_| corrupt(format!("decision {seq}: hash is not 32 bytes")))
    })
    .transpose()
}

/// Ledger records (decisions and events) after `after` as the chain check needs them: seq,
/// exact record text, stored hash.
pub async fn chain_links(
    pool: &PgPool,
    after: u64,
    limit: i64,
) -> Result<Vec<(u64, String, [u8; 32])>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, record::text, hash FROM ledger WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after as i64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let seq: i64 = r.try_get(0)?;
            let hash: Vec<u8> = r.try_get(2)?;
            Ok((
                u64::try_from(seq).map_err(corrupt)?,
                r.try_get(1)?,
                hash.try_into()
                    .map_err(|_| corrupt(format!("decision {seq}: hash is not 32 bytes")))?,
            ))
        })
        .collect()
}

/// The decisions of `orders` (those decided so far), in sequence order.
pub async fn decisions_for_orders<'c>(
    db: impl sqlx::PgExecutor<'c>,
    orders: &[Uuid],
) -> Result<Vec<StoredDecision>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, order_id, record::text FROM decisions WHERE order_id = ANY($1) ORDER BY seq",
    )
    .bind(orders)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(stored_decision).collect())
}

/// The decisions on one asset, optionally only those whose target covers or names `holder`.
pub async fn asset_history(
    pool: &PgPool,
    key: &AssetKey,
    holder: Option<&str>,
    after: u64,
    limit: i64,
) -> Result<Vec<StoredDecision>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, order_id, record::text FROM decisions
         WHERE chain = $1 AND asset = $2 AND seq > $3
           AND ($4::text IS NULL OR holder IS NULL OR holder = $4)
         ORDER BY seq LIMIT $5",
    )
    .bind(key.chain.as_str())
    .bind(key.asset.as_str())
    .bind(after as i64)
    .bind(holder)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(stored_decision).collect())
}

/// The current state of one asset (the empty state if nothing was ever applied to it).
pub async fn asset_state(pool: &PgPool, key: &AssetKey) -> Result<AssetState, StorageError> {
    let mut conn = pool.acquire().await?;
    let mut states = load_states(&mut conn, std::slice::from_ref(key)).await?;
    Ok(states.remove(key).unwrap_or_default())
}

/// Every asset's stored state, for comparing with a replay of the log.
pub async fn all_states(pool: &PgPool) -> Result<HashMap<AssetKey, AssetState>, StorageError> {
    let heads = sqlx::query("SELECT chain, asset, version, last_fencing_token FROM asset_state")
        .fetch_all(pool)
        .await?;
    let holds = sqlx::query("SELECT chain, asset, hold FROM holds")
        .fetch_all(pool)
        .await?;
    let mut states = HashMap::new();
    assemble_states(&mut states, heads, holds)?;
    Ok(states)
}
