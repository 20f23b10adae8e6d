//! The state map's recorded roots (`state_roots`, migration 0016), and the state tables read
//! whole, for building the map.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::{assemble_states, corrupt, StorageError};
use crate::domain::state_leaves::Delta;
use crate::domain::state_map::{Hash, EMPTY};
use crate::domain::{AssetKey, AssetState};

/// One round's row: its seqs, the roots before and after, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRound {
    pub from_seq: u64,
    pub to_seq: u64,
    pub prev_root: Hash,
    pub new_root: Hash,
    /// A baseline records the state tables' root without a delta.
    pub baseline: bool,
    pub delta: Delta,
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<Hash, StorageError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} is not 32 bytes")))
}

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const INSERT_ROUND: &str =
    "INSERT INTO state_roots (to_seq, from_seq, prev_root, new_root, baseline,
                                                    keys, old_values, new_values)
                            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// `query` (whose first eight parameters are [`INSERT_ROUND`]'s) with `round` bound to them;
/// the delta goes as three parallel arrays: keys, old and new value hashes.
fn bind_round<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    round: &'q StateRound,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let n = round.delta.changes.len();
    let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
    let mut old: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut new: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    for (key, (o, v)) in &round.delta.changes {
        keys.push(key.as_slice());
        old.push(o.as_ref().map(|h| h.as_slice()));
        new.push(v.as_ref().map(|h| h.as_slice()));
    }
    query
        .bind(seq(round.to_seq))
        .bind(seq(round.from_seq))
        .bind(round.prev_root.as_slice())
        .bind(round.new_root.as_slice())
        .bind(round.baseline)
        .bind(keys)
        .bind(old)
        .bind(new)
}

/// Writes a round's row (a baseline, outside the sequencer's commits).
pub async fn insert_round(conn: &mut PgConnection, round: &StateRound) -> Result<(), StorageError> {
    bind_round(sqlx::query(INSERT_ROUND), round)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes a round's row and announces the new head (as `announce_head`) in one statement, in
/// the sequencer's commit transaction.
pub(crate) async fn insert_round_and_announce(
    conn: &mut PgConnection,
    round: &StateRound,
    to: crate::domain::ledger::Head,
) -> Result<(), StorageError> {
    // A data-modifying CTE runs whether or not the query reads it.
    let sql = format!("WITH round AS ({INSERT_ROUND}) SELECT pg_notify($9, $10)");
    bind_round(sqlx::query(&sql), round)
        .bind(super::DECISIONS_CHANNEL)
        .bind(to.seq.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

const ROUND_COLUMNS: &str =
    "to_seq, from_seq, prev_root, new_root, baseline, keys, old_values, new_values";

fn round(r: sqlx::postgres::PgRow) -> Result<StateRound, StorageError> {
    let to: i64 = r.try_get(0)?;
    let from: i64 = r.try_get(1)?;
    let keys: Vec<Vec<u8>> = r.try_get(5)?;
    let old: Vec<Option<Vec<u8>>> = r.try_get(6)?;
    let new: Vec<Option<Vec<u8>>> = r.try_get(7)?;
    let mut delta = Delta::default();
    for ((k, o), v) in keys.into_iter().zip(old).zip(new) {
        delta.changes.insert(
            hash32(k, "a state key")?,
            (
                o.map(|o| hash32(o, "a state value hash")).transpose()?,
                v.map(|v| hash32(v, "a state value hash")).transpose()?,
            ),
        );
    }
    Ok(StateRound {
        to_seq: u64::try_from(to).map_err(corrupt)?,
        from_seq: u64::try_from(from).map_err(corrupt)?,
        prev_root: hash32(r.try_get(2)?, "a state root")?,
        new_root: hash32(r.try_get(3)?, "a state root")?,
        baseline: r.try_get(4)?,
        delta,
    })
}

/// The last round's row.
pub async fn latest_round<'c>(
    db: impl sqlx::PgExecutor<'c>,
) -> Result<Option<StateRound>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {ROUND_COLUMNS} FROM state_roots ORDER BY to_seq DESC LIMIT 1"
    ))
    .fetch_optional(db)
    .await?;
    row.map(round).transpose()
}

/// The rows of rounds ending after seq `after`, newest first.
pub async fn rounds_after_desc<'c>(
    db: impl sqlx::PgExecutor<'c>,
    after: u64,
) -> Result<Vec<StateRound>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT {ROUND_COLUMNS} FROM state_roots WHERE to_seq > $1 ORDER BY to_seq DESC"
    ))
    .bind(seq(after))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(round).collect()
}

/// The recorded state root after the first `size` records: the new root of the last round
/// ending at or before it; the empty root if none did.
pub async fn root_at<'c>(db: impl sqlx::PgExecutor<'c>, size: u64) -> Result<Hash, StorageError> {
    let root: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT new_root FROM state_roots WHERE to_seq <= $1 ORDER BY to_seq DESC LIMIT 1",
    )
    .bind(seq(size))
    .fetch_optional(db)
    .await?;
    root.map_or(Ok(EMPTY), |r| hash32(r, "a state root"))
}

/// Every asset's stored state, read on `conn` (the sequencer's, which alone writes them).
pub async fn all_states_on(
    conn: &mut PgConnection,
) -> Result<HashMap<AssetKey, AssetState>, StorageError> {
    let heads = sqlx::query("SELECT chain, asset, version, last_fencing_token FROM asset_state")
        .fetch_all(&mut *conn)
        .await?;
    let holds = sqlx::query("SELECT chain, asset, hold FROM holds")
        .fetch_all(&mut *conn)
        .await?;
    let mut states = HashMap::new();
    assemble_states(&mut states, heads, holds)?;
    Ok(states)
}

/// Replaces the stored states of `assets` with the given ones (`None`: the asset has no state)
/// in one transaction on `conn`. Only `regulator state rebuild` calls it, holding the
/// sequencer's lock so that no leader writes meanwhile.
pub async fn replace_states(
    conn: &mut PgConnection,
    assets: &[(AssetKey, Option<AssetState>)],
) -> Result<(), StorageError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (key, state) in assets {
        sqlx::query("DELETE FROM holds WHERE chain = $1 AND asset = $2")
            .bind(key.chain.as_str())
            .bind(key.asset.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM asset_state WHERE chain = $1 AND asset = $2")
            .bind(key.chain.as_str())
            .bind(key.asset.as_str())
            .execute(&mut *tx)
            .await?;
        let Some(state) = state else { continue };
        sqlx::query(
            "INSERT INTO asset_state (chain, asset, version, last_fencing_token, next_expiry)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.chain.as_str())
        .bind(key.asset.as_str())
        .bind(i64::try_from(state.version()).map_err(corrupt)?)
        .bind(i64::try_from(state.last_fencing_token()).map_err(corrupt)?)
        .bind(state.next_expiry())
        .execute(&mut *tx)
        .await?;
        for hold in state.holds() {
            sqlx::query(
                "INSERT INTO holds (order_id, chain, asset, hold) VALUES ($1, $2, $3, $4::json)",
            )
            .bind(hold.order_id.as_uuid())
            .bind(key.chain.as_str())
            .bind(key.asset.as_str())
            .bind(serde_json::to_string(hold).map_err(corrupt)?)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
