//! Chain observations and divergences (append-only), and the reads the reconciler needs: which
//! targets a chain has, when each asset's current version was decided, the latest final
//! observation of each target.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::{corrupt, StorageError};
use crate::domain::event::EventRequest;
use crate::domain::observation::{BlockRef, Finality, Hash32, Observation};
use crate::domain::projection::{Observed, Status};
use crate::domain::{AssetId, AssetKey, AssetState, ChainId, HolderAddress};

/// A target of a chain: an asset, and a holder or the asset as a whole.
pub type ChainTarget = (AssetId, Option<HolderAddress>);

fn holder_column(holder: &Option<HolderAddress>) -> &str {
    holder.as_ref().map_or("", |h| h.as_str())
}

fn holder_from(column: String) -> Result<Option<HolderAddress>, StorageError> {
    if column.is_empty() {
        Ok(None)
    } else {
        HolderAddress::parse(column).map(Some).map_err(corrupt)
    }
}

/// An observation to store, with the reconciler's status when it arrived.
pub struct NewObservation<'a> {
    pub observation: &'a Observation,
    pub status: Option<Status>,
    /// Set when this observation opens a divergence: what differs.
    pub divergence: Option<Vec<String>>,
}

/// Stores a batch of one chain's observations, the divergences they open and the ledger events
/// that record them, in one transaction.
pub async fn insert_observations(
    pool: &PgPool,
    chain: &ChainId,
    reporter: &str,
    rows: &[NewObservation<'_>],
    events: &[EventRequest],
) -> Result<(), StorageError> {
    let mut tx = pool.begin().await?;
    // Rows that open no divergence go in as one statement per run, in order (ids follow the
    // order of the batch, which is what "latest" means); a row that opens one goes in alone,
    // since its divergence names its id.
    let mut run: Vec<&NewObservation<'_>> = Vec::new();
    for row in rows {
        if row.divergence.is_none() {
            run.push(row);
            continue;
        }
        insert_run(&mut tx, chain, reporter, &run).await?;
        run.clear();
        let o = row.observation;
        let id = insert_one(&mut tx, chain, reporter, row).await?;
        if let Some(differences) = &row.divergence {
            sqlx::query(
                "INSERT INTO chain_divergences
                   (chain, asset, holder, observation_id, version, differences)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(chain.as_str())
            .bind(o.asset.as_str())
            .bind(holder_column(&o.holder))
            .bind(id)
            .bind(i64::try_from(o.version).map_err(corrupt)?)
            .bind(sqlx::types::Json(differences))
            .execute(&mut *tx)
            .await?;
        }
    }
    insert_run(&mut tx, chain, reporter, &run).await?;
    for event in events {
        super::policy::request_event(&mut *tx, event, reporter).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn insert_one(
    tx: &mut sqlx::PgConnection,
    chain: &ChainId,
    reporter: &str,
    row: &NewObservation<'_>,
) -> Result<i64, StorageError> {
    let o = row.observation;
    let observed = serde_json::to_value(&o.observed).map_err(corrupt)?;
    let tx_hashes: Vec<String> = o.tx_hashes.iter().map(|h| h.to_string()).collect();
    Ok(sqlx::query_scalar(
        "INSERT INTO chain_observations
           (chain, asset, holder, observed, block_number, block_hash, finality, version,
            tx_hashes, failure, status, reported_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(chain.as_str())
    .bind(o.asset.as_str())
    .bind(holder_column(&o.holder))
    .bind(observed)
    .bind(i64::try_from(o.block.number).map_err(corrupt)?)
    .bind(o.block.hash.as_str())
    .bind(o.finality.as_str())
    .bind(i64::try_from(o.version).map_err(corrupt)?)
    .bind(&tx_hashes)
    .bind(o.failure.as_deref())
    .bind(row.status.map(Status::as_str))
    .bind(reporter)
    .fetch_one(&mut *tx)
    .await?)
}

/// Inserts `run` in one statement, ids in its order. Transaction hashes travel as one
/// comma-joined text per row (arrays of arrays do not unnest by row).
async fn insert_run(
    tx: &mut sqlx::PgConnection,
    chain: &ChainId,
    reporter: &str,
    run: &[&NewObservation<'_>],
) -> Result<(), StorageError> {
    if run.is_empty() {
        return Ok(());
    }
    let n = run.len();
    let (mut assets, mut holders, mut observed, mut numbers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut hashes, mut finality, mut versions, mut txs, mut failures, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in run {
        let o = row.observation;
        assets.push(o.asset.as_str());
        holders.push(holder_column(&o.holder));
        observed.push(serde_json::to_value(&o.observed).map_err(corrupt)?);
        numbers.push(i64::try_from(o.block.number).map_err(corrupt)?);
        hashes.push(o.block.hash.as_str());
        finality.push(o.finality.as_str());
        versions.push(i64::try_from(o.version).map_err(corrupt)?);
        txs.push(
            o.tx_hashes
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        failures.push(o.failure.as_deref());
        statuses.push(row.status.map(Status::as_str));
    }
    sqlx::query(
        "INSERT INTO chain_observations
           (chain, asset, holder, observed, block_number, block_hash, finality, version,
            tx_hashes, failure, status, reported_by)
         SELECT $1, r.asset, r.holder, r.observed, r.number, r.hash, r.finality, r.version,
                CASE WHEN r.txs = '' THEN '{}'::text[] ELSE string_to_array(r.txs, ',') END,
                r.failure, r.status, $12
           FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::text[], $7::text[],
                       $8::int8[], $9::text[], $10::text[], $11::text[])
                WITH ORDINALITY
                AS r(asset, holder, observed, number, hash, finality, version, txs, failure,
                     status, ord)
          ORDER BY r.ord",
    )
    .bind(chain.as_str())
    .bind(&assets)
    .bind(&holders)
    .bind(&observed)
    .bind(&numbers)
    .bind(&hashes)
    .bind(&finality)
    .bind(&versions)
    .bind(&txs)
    .bind(&failures)
    .bind(&statuses)
    .bind(reporter)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The latest final observation of a target, as stored.
#[derive(Debug, Clone)]
pub struct StoredObservation {
    pub id: i64,
    pub observation: Observation,
    pub status: Option<Status>,
    pub received_at: DateTime<Utc>,
}

/// The latest final observation of every target of `chain`, or of `targets` only: one index
/// probe per target (a batch of observations needs its own targets' history, not the asset's).
pub async fn latest_final(
    pool: &PgPool,
    chain: &ChainId,
    targets: Option<&[ChainTarget]>,
) -> Result<HashMap<ChainTarget, StoredObservation>, StorageError> {
    const COLUMNS: &str = "id, asset, holder, observed, block_number, block_hash, version, \
                           tx_hashes, failure, status, received_at";
    let rows = match targets {
        None => {
            sqlx::query(&format!(
                "SELECT DISTINCT ON (asset, holder) {COLUMNS}
                   FROM chain_observations
                  WHERE chain = $1 AND finality = 'final'
                  ORDER BY asset, holder, id DESC"
            ))
            .bind(chain.as_str())
            .fetch_all(pool)
            .await?
        }
        Some(targets) => {
            let (assets, holders) = target_columns(targets);
            sqlx::query(&format!(
                "SELECT o.* FROM (SELECT DISTINCT * FROM unnest($2::text[], $3::text[])) AS t(asset, holder)
                  CROSS JOIN LATERAL (
                        SELECT {COLUMNS} FROM chain_observations c
                         WHERE c.chain = $1 AND c.asset = t.asset AND c.holder = t.holder
                           AND c.finality = 'final'
                         ORDER BY c.id DESC LIMIT 1) o"
            ))
            .bind(chain.as_str())
            .bind(&assets)
            .bind(&holders)
            .fetch_all(pool)
            .await?
        }
    };
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let asset = AssetId::parse(r.get::<String, _>(1)).map_err(corrupt)?;
        let holder = holder_from(r.get(2))?;
        let observed: Observed =
            serde_json::from_value(r.get::<serde_json::Value, _>(3)).map_err(corrupt)?;
        let hash: Hash32 = r.get::<String, _>(5).parse().map_err(corrupt)?;
        let tx_hashes = r
            .get::<Vec<String>, _>(7)
            .into_iter()
            .map(|h| h.parse::<Hash32>().map_err(corrupt))
            .collect::<Result<_, _>>()?;
        let status = r
            .get::<Option<String>, _>(9)
            .map(|s| s.parse::<Status>().map_err(corrupt))
            .transpose()?;
        let observation = Observation {
            asset: asset.clone(),
            holder: holder.clone(),
            observed,
            block: BlockRef {
                number: r.get::<i64, _>(4).max(0) as u64,
                hash,
            },
            finality: Finality::Final,
            version: r.get::<i64, _>(6).max(0) as u64,
            tx_hashes,
            failure: r.get(8),
        };
        out.insert(
            (asset, holder),
            StoredObservation {
                id: r.get(0),
                observation,
                status,
                received_at: r.get(10),
            },
        );
    }
    Ok(out)
}

/// The asset and holder columns of `targets`, for `unnest`.
fn target_columns(targets: &[ChainTarget]) -> (Vec<&str>, Vec<&str>) {
    targets
        .iter()
        .map(|(a, h)| (a.as_str(), holder_column(h)))
        .unzip()
}

/// How many divergences each target of `chain` (or of `targets` only) has had.
pub async fn divergence_counts(
    pool: &PgPool,
    chain: &ChainId,
    targets: Option<&[ChainTarget]>,
) -> Result<HashMap<ChainTarget, u32>, StorageError> {
    let (assets, holders) = match targets {
        Some(t) => {
            let (a, h) = target_columns(t);
            (Some(a), Some(h))
        }
        None => (None, None),
    };
    let rows = sqlx::query(
        "SELECT asset, holder, count(*) FROM chain_divergences
          WHERE chain = $1
            AND ($2::text[] IS NULL
                 OR (asset, holder) IN (SELECT * FROM unnest($2::text[], $3::text[])))
          GROUP BY asset, holder",
    )
    .bind(chain.as_str())
    .bind(&assets)
    .bind(&holders)
    .fetch_all(pool)
    .await?;
    let mut out = HashMap::new();
    for r in rows {
        let asset = AssetId::parse(r.get::<String, _>(0)).map_err(corrupt)?;
        let holder = holder_from(r.get(1))?;
        out.insert(
            (asset, holder),
            u32::try_from(r.get::<i64, _>(2)).unwrap_or(u32::MAX),
        );
    }
    Ok(out)
}

/// The chains with a registered asset.
pub async fn chains(pool: &PgPool) -> Result<Vec<ChainId>, StorageError> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT DISTINCT chain FROM assets ORDER BY chain")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|c| ChainId::parse(c).map_err(corrupt))
        .collect()
}

/// The decided side of a chain: each registered asset's state, when its current version was
/// decided, and every holder a decision ever named.
pub struct DecidedChain {
    pub states: HashMap<AssetId, AssetState>,
    pub decided_at: HashMap<AssetId, DateTime<Utc>>,
    pub targets: BTreeSet<ChainTarget>,
}

pub async fn decided_chain(pool: &PgPool, chain: &ChainId) -> Result<DecidedChain, StorageError> {
    decided(pool, chain, None).await
}

/// The decided side of some assets of a chain; their holders are not listed in `targets` (a
/// target's page, or a batch of observations, needs only the states and when they were
/// decided, and listing every holder a decision ever named is a scan of the chain's decisions).
pub async fn decided_assets(
    pool: &PgPool,
    chain: &ChainId,
    assets: &[AssetId],
) -> Result<DecidedChain, StorageError> {
    decided(pool, chain, Some(assets)).await
}

async fn decided(
    pool: &PgPool,
    chain: &ChainId,
    only: Option<&[AssetId]>,
) -> Result<DecidedChain, StorageError> {
    let only: Option<Vec<&str>> = only.map(|a| a.iter().map(AssetId::as_str).collect());
    let assets: Vec<String> = sqlx::query_scalar(
        "SELECT asset FROM assets WHERE chain = $1 AND ($2::text[] IS NULL OR asset = ANY($2))
          ORDER BY asset",
    )
    .bind(chain.as_str())
    .bind(&only)
    .fetch_all(pool)
    .await?;
    let keys: Vec<AssetKey> = assets
        .into_iter()
        .map(|a| {
            Ok(AssetKey {
                chain: chain.clone(),
                asset: AssetId::parse(a).map_err(corrupt)?,
            })
        })
        .collect::<Result<_, StorageError>>()?;
    let mut conn = pool.acquire().await?;
    let loaded = super::load_states(&mut conn, &keys).await?;
    drop(conn);
    let mut targets: BTreeSet<ChainTarget> = keys.iter().map(|k| (k.asset.clone(), None)).collect();
    let states: HashMap<AssetId, AssetState> = keys
        .iter()
        .map(|k| (k.asset.clone(), loaded.get(k).cloned().unwrap_or_default()))
        .collect();
    let holders = match &only {
        Some(_) => Vec::new(),
        None => {
            sqlx::query(
                "SELECT DISTINCT asset, holder FROM decisions
                  WHERE chain = $1 AND holder IS NOT NULL",
            )
            .bind(chain.as_str())
            .fetch_all(pool)
            .await?
        }
    };
    for r in holders {
        let asset = AssetId::parse(r.get::<String, _>(0)).map_err(corrupt)?;
        let holder = HolderAddress::parse(r.get::<String, _>(1)).map_err(corrupt)?;
        targets.insert((asset, Some(holder)));
    }
    // The first decision that reached an asset's current version is when it was decided.
    let times = sqlx::query(
        "SELECT d.asset, min(d.decided_at)
           FROM decisions d JOIN asset_state s ON s.chain = d.chain AND s.asset = d.asset
          WHERE d.chain = $1 AND d.target_version = s.version
            AND ($2::text[] IS NULL OR d.asset = ANY($2))
          GROUP BY d.asset",
    )
    .bind(chain.as_str())
    .bind(&only)
    .fetch_all(pool)
    .await?;
    let mut decided_at = HashMap::new();
    for r in times {
        let asset = AssetId::parse(r.get::<String, _>(0)).map_err(corrupt)?;
        decided_at.insert(asset, r.get::<DateTime<Utc>, _>(1));
    }
    Ok(DecidedChain {
        states,
        decided_at,
        targets,
    })
}

/// An operator's settings of a chain, as stored.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    pub apply_deadline_secs: u32,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// The stored settings of `chain`, if an operator set any.
pub async fn settings(
    pool: &PgPool,
    chain: &ChainId,
) -> Result<Option<ChainSettings>, StorageError> {
    let row = sqlx::query(
        "SELECT apply_deadline_secs, updated_by, updated_at FROM chain_settings WHERE chain = $1",
    )
    .bind(chain.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(ChainSettings {
            apply_deadline_secs: u32::try_from(r.get::<i32, _>(0)).map_err(corrupt)?,
            updated_by: r.get(1),
            updated_at: r.get(2),
        })
    })
    .transpose()
}

/// Sets `chain`'s apply deadline; answers the settings as stored.
pub async fn set_apply_deadline(
    pool: &PgPool,
    chain: &ChainId,
    seconds: u32,
    by: &str,
) -> Result<ChainSettings, StorageError> {
    let seconds = i32::try_from(seconds).map_err(corrupt)?;
    let r = sqlx::query(
        "INSERT INTO chain_settings (chain, apply_deadline_secs, updated_by)
         VALUES ($1, $2, $3)
         ON CONFLICT (chain) DO UPDATE
            SET apply_deadline_secs = EXCLUDED.apply_deadline_secs,
                updated_by = EXCLUDED.updated_by,
                updated_at = clock_timestamp()
         RETURNING apply_deadline_secs, updated_by, updated_at",
    )
    .bind(chain.as_str())
    .bind(seconds)
    .bind(by)
    .fetch_one(pool)
    .await?;
    Ok(ChainSettings {
        apply_deadline_secs: u32::try_from(r.get::<i32, _>(0)).map_err(corrupt)?,
        updated_by: r.get(1),
        updated_at: r.get(2),
    })
}
