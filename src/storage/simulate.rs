//! Reading the recorded history for impact analysis.

use std::collections::HashMap;

use sqlx::{PgPool, Row};

use super::audit::TimeSpan;
use super::{corrupt, StorageError};
use crate::domain::ledger::{DecisionRecord, Range};
use crate::domain::AssetKey;

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The inclusive seq range `range` selects (the whole log by default), widened to whole
/// conflict groups. A time range `[from_time, to_time)` becomes the seqs decided in it; given
/// both kinds of bound, the narrower wins. An empty selection comes back with `from > to`.
pub async fn seq_range(pool: &PgPool, range: &Range) -> Result<(u64, u64), StorageError> {
    let head: i64 = sqlx::query_scalar("SELECT seq FROM ledger_head")
        .fetch_one(pool)
        .await?;
    let head = u64::try_from(head).map_err(corrupt)?;
    let mut from = range.from_seq.unwrap_or(1).max(1);
    let mut to = range.to_seq.unwrap_or(head).min(head);
    if range.from_time.is_some() || range.to_time.is_some() {
        let mut conn = pool.acquire().await?;
        let span =
            match super::audit::time_to_seq(&mut conn, range.from_time, range.to_time).await? {
                TimeSpan::Unordered => seqs_decided_between(pool, range).await?,
                span => span,
            };
        match span {
            TimeSpan::Seqs(first, last) => {
                from = from.max(first);
                to = to.min(last);
            }
            _ => return Ok((head + 1, head)),
        }
    }
    if from > to {
        return Ok((from, to));
    }
    // A group cut by the range would be decided without its other members: take it whole.
    // A group's decisions have consecutive seqs and name the first.
    let group_of = |seq: u64| async move {
        let group: Option<i64> = sqlx::query_scalar(
            "SELECT (record::jsonb ->> 'group')::bigint FROM decisions WHERE seq = $1",
        )
        .bind(seq_param(seq))
        .fetch_optional(pool)
        .await?
        .flatten();
        Ok::<_, StorageError>(group.and_then(|g| u64::try_from(g).ok()))
    };
    if let Some(first) = group_of(from).await? {
        from = from.min(first);
    }
    if let Some(group) = group_of(to).await? {
        loop {
            let next: Vec<Option<i64>> = sqlx::query_scalar(
                "SELECT (record::jsonb ->> 'group')::bigint FROM decisions
                 WHERE seq > $1 AND seq <= $1 + 64 ORDER BY seq",
            )
            .bind(seq_param(to))
            .fetch_all(pool)
            .await?;
            let members = next
                .iter()
                .take_while(|g| g.and_then(|g| u64::try_from(g).ok()) == Some(group))
                .count();
            to += members as u64;
            if members < 64 {
                break;
            }
        }
    }
    Ok((from, to))
}

/// The first and last seq decided in the time range, reading every entry of the range in
/// `decisions_by_time`: for logs whose time is not in seq order.
async fn seqs_decided_between(pool: &PgPool, range: &Range) -> Result<TimeSpan, StorageError> {
    let row = sqlx::query(
        "SELECT min(seq), max(seq) FROM decisions
         WHERE ($1::timestamptz IS NULL OR decided_at >= $1)
           AND ($2::timestamptz IS NULL OR decided_at < $2)",
    )
    .bind(range.from_time)
    .bind(range.to_time)
    .fetch_one(pool)
    .await?;
    let first: Option<i64> = row.try_get(0)?;
    let last: Option<i64> = row.try_get(1)?;
    Ok(match (first, last) {
        (Some(first), Some(last)) => TimeSpan::Seqs(
            u64::try_from(first).map_err(corrupt)?,
            u64::try_from(last).map_err(corrupt)?,
        ),
        _ => TimeSpan::Empty,
    })
}

/// How many orders were decided at seqs `from..=to` (expiries are not orders).
pub async fn orders_between(pool: &PgPool, from: u64, to: u64) -> Result<u64, StorageError> {
    if from > to {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM decisions WHERE seq BETWEEN $1 AND $2 AND order_id IS NOT NULL",
    )
    .bind(seq_param(from))
    .bind(seq_param(to))
    .fetch_one(pool)
    .await?;
    u64::try_from(n).map_err(corrupt)
}

fn parse(seq: i64, text: &str) -> Result<DecisionRecord, StorageError> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("decision {seq}: {e}")))
}

/// The decisions with `after < seq <= upto`, in order. Callers keep the span short (a page):
/// the bound on seq, not a `LIMIT`, is what keeps the read small whatever plan the database
/// picks (a `LIMIT` over a wide range let a stale estimate sort the whole range per page).
pub async fn decisions_between(
    pool: &PgPool,
    after: u64,
    upto: u64,
) -> Result<Vec<DecisionRecord>, StorageError> {
    let rows = sqlx::query(
        "SELECT seq, record::text FROM decisions WHERE seq > $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(seq_param(after))
    .bind(seq_param(upto))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| parse(r.try_get(0)?, r.try_get(1)?))
        .collect()
}

/// For each asset, its decisions before the given seq, in order.
pub async fn earlier_decisions(
    pool: &PgPool,
    assets: &[(AssetKey, u64)],
) -> Result<Vec<(AssetKey, Vec<DecisionRecord>)>, StorageError> {
    let chains: Vec<&str> = assets.iter().map(|(k, _)| k.chain.as_str()).collect();
    let names: Vec<&str> = assets.iter().map(|(k, _)| k.asset.as_str()).collect();
    let before: Vec<i64> = assets.iter().map(|(_, s)| seq_param(*s)).collect();
    let rows = sqlx::query(
        "SELECT d.seq, d.record::text
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(chain, asset, before)
         JOIN decisions d ON d.chain = t.chain AND d.asset = t.asset AND d.seq < t.before
         ORDER BY d.seq",
    )
    .bind(&chains)
    .bind(&names)
    .bind(&before)
    .fetch_all(pool)
    .await?;
    let mut by_asset: HashMap<AssetKey, Vec<DecisionRecord>> = HashMap::new();
    for r in &rows {
        let record = parse(r.try_get(0)?, r.try_get(1)?)?;
        by_asset
            .entry(record.target.asset.clone())
            .or_default()
            .push(record);
    }
    Ok(assets
        .iter()
        .map(|(key, _)| (key.clone(), by_asset.remove(key).unwrap_or_default()))
        .collect())
}
