//! The reconciler: compares each target's decided state, projected onto what its token can
//! express, with the chain's latest final observation, and names a status (SPEC §9).
//!
//! The rules are pure ([`crate::domain::projection::status`]); this module gathers their inputs
//! from storage, records what arrives, and keeps the metrics.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::event::{Divergence, EventRequest};
use crate::domain::observation::{BlockRef, Finality, Hash32, Observation};
use crate::domain::projection::{self, Decided, FinalObservation, Observed, Standing, Status};
use crate::domain::{AssetId, AssetState, ChainId, HolderAddress};
use crate::storage::chains::{self as store, ChainTarget, NewObservation, StoredObservation};
use crate::storage::StorageError;

/// How long after a decision a chain may take before its target is `lagging` rather than
/// `pending`, for a chain whose operator set nothing (`PUT /v1/chains/{chain}`).
pub const DEFAULT_APPLY_DEADLINE_SECS: u32 = 30;

/// `chain`'s apply deadline: its operator's setting, or the default.
pub async fn apply_deadline(pool: &PgPool, chain: &ChainId) -> Result<Duration, StorageError> {
    let secs = store::settings(pool, chain)
        .await?
        .map_or(DEFAULT_APPLY_DEADLINE_SECS, |s| s.apply_deadline_secs);
    Ok(Duration::seconds(i64::from(secs)))
}

/// One target's standing, with the evidence behind it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetReport {
    pub chain: ChainId,
    pub asset: AssetId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    pub status: Status,
    /// What the token should show.
    pub decided: Decided,
    /// The asset's current version.
    pub version: u64,
    /// When that version was decided (absent for an asset no decision has touched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// The latest final observation, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// What differs between `decided` and the observation (empty when converged).
    pub differences: Vec<String>,
    pub divergences: u32,
}

/// The chain evidence of a target: what the adapter read, where, and what it sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Applied {
    pub observed: Observed,
    pub block: BlockRef,
    /// The version the adapter believed in force.
    pub version: u64,
    pub tx_hashes: Vec<Hash32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// Per-chain counts by status.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ChainSummary {
    pub chain: String,
    pub targets: u64,
    pub converged: u64,
    pub pending: u64,
    pub lagging: u64,
    pub diverged: u64,
    pub failed: u64,
    pub escalated: u64,
}

impl ChainSummary {
    fn count(&mut self, status: Status) {
        self.targets += 1;
        *match status {
            Status::Converged => &mut self.converged,
            Status::Pending => &mut self.pending,
            Status::Lagging => &mut self.lagging,
            Status::Diverged => &mut self.diverged,
            Status::Failed => &mut self.failed,
            Status::Escalated => &mut self.escalated,
        } += 1;
    }

    fn publish(&self) {
        for (status, n) in [
            (Status::Converged, self.converged),
            (Status::Pending, self.pending),
            (Status::Lagging, self.lagging),
            (Status::Diverged, self.diverged),
            (Status::Failed, self.failed),
            (Status::Escalated, self.escalated),
        ] {
            metrics::gauge!("regulator_reconciliation_targets", "chain" => self.chain.clone(), "status" => status.as_str())
                .set(n as f64);
        }
    }
}

fn standing<'a>(
    decided: &'a Decided,
    state: &AssetState,
    decided_at: DateTime<Utc>,
    latest: Option<&'a Observation>,
    divergences: u32,
) -> Standing<'a> {
    Standing {
        decided,
        version: state.version(),
        decided_at,
        latest: latest.map(|o| FinalObservation {
            observed: &o.observed,
            version: o.version,
            failure: o.failure.as_deref(),
        }),
        divergences,
    }
}

/// Every target of `chain` with its status at `now`; publishes the chain's gauges.
pub async fn chain_report(
    pool: &PgPool,
    chain: &ChainId,
    now: DateTime<Utc>,
) -> Result<(Vec<TargetReport>, ChainSummary), StorageError> {
    let deadline = apply_deadline(pool, chain).await?;
    let decided = store::decided_chain(pool, chain).await?;
    let latest = store::latest_final(pool, chain, None).await?;
    let divergences = store::divergence_counts(pool, chain, None).await?;
    let mut targets = decided.targets.clone();
    // An observed target whose asset is registered counts even if no decision named it.
    targets.extend(
        latest
            .keys()
            .filter(|(a, _)| decided.states.contains_key(a))
            .cloned(),
    );
    let mut summary = ChainSummary {
        chain: chain.to_string(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(targets.len());
    for key in targets {
        let report = assess(chain, key, &decided, &latest, &divergences, now, deadline);
        summary.count(report.status);
        out.push(report);
    }
    summary.publish();
    Ok((out, summary))
}

/// One target's standing: what a target's page shows as its `applied` section. The chain's
/// evidence is read the same way as for the whole chain, so both always agree.
pub async fn target_report(
    pool: &PgPool,
    chain: &ChainId,
    target: ChainTarget,
    now: DateTime<Utc>,
) -> Result<TargetReport, StorageError> {
    let deadline = apply_deadline(pool, chain).await?;
    let decided = store::decided_assets(pool, chain, std::slice::from_ref(&target.0)).await?;
    let only = std::slice::from_ref(&target);
    let latest = store::latest_final(pool, chain, Some(only)).await?;
    let divergences = store::divergence_counts(pool, chain, Some(only)).await?;
    Ok(assess(
        chain,
        target,
        &decided,
        &latest,
        &divergences,
        now,
        deadline,
    ))
}

fn assess(
    chain: &ChainId,
    key: ChainTarget,
    decided: &store::DecidedChain,
    latest: &HashMap<ChainTarget, StoredObservation>,
    divergences: &HashMap<ChainTarget, u32>,
    now: DateTime<Utc>,
    deadline: Duration,
) -> TargetReport {
    let empty = AssetState::default();
    let state = decided.states.get(&key.0).unwrap_or(&empty);
    let decided_at = decided.decided_at.get(&key.0).copied();
    let projection = projection::decide(state, key.1.as_ref());
    let stored = latest.get(&key);
    let count = divergences.get(&key).copied().unwrap_or(0);
    let st = standing(
        &projection,
        state,
        decided_at.unwrap_or(now),
        stored.map(|s| &s.observation),
        count,
    );
    let status = projection::status(&st, now, deadline);
    report(
        chain,
        key,
        status,
        projection.clone(),
        state,
        decided_at,
        stored,
        count,
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    chain: &ChainId,
    (asset, holder): ChainTarget,
    status: Status,
    decided: Decided,
    state: &AssetState,
    decided_at: Option<DateTime<Utc>>,
    stored: Option<&StoredObservation>,
    divergences: u32,
) -> TargetReport {
    let differences = stored
        .map(|s| projection::differences(&decided, &s.observation.observed))
        .unwrap_or_default();
    TargetReport {
        chain: chain.clone(),
        asset,
        holder,
        status,
        decided,
        version: state.version(),
        decided_at,
        applied: stored.map(|s| Applied {
            observed: s.observation.observed.clone(),
            block: s.observation.block.clone(),
            version: s.observation.version,
            tx_hashes: s.observation.tx_hashes.clone(),
            failure: s.observation.failure.clone(),
            received_at: s.received_at,
        }),
        differences,
        divergences,
    }
}

/// The reconciler's answer for one reported target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub asset: AssetId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    /// Absent for an `unsafe` observation, which the reconciler does not weigh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    pub differences: Vec<String>,
}

/// Records a batch of `chain`'s observations and answers each target's status. A final
/// observation that opens a divergence (the target was not diverged before) is recorded as one,
/// and as a ledger event.
pub async fn ingest(
    pool: &PgPool,
    chain: &ChainId,
    reporter: &str,
    observations: &[Observation],
    now: DateTime<Utc>,
) -> Result<(Vec<Verdict>, Vec<Divergence>), StorageError> {
    let deadline = apply_deadline(pool, chain).await?;
    let mut assets: Vec<AssetId> = observations.iter().map(|o| o.asset.clone()).collect();
    assets.sort();
    assets.dedup();
    // Only what this batch needs: its assets' states and its own targets' history (a resync
    // reports a whole chain in batches; each batch must not cost a scan of the chain).
    let decided = store::decided_assets(pool, chain, &assets).await?;
    let targets: Vec<ChainTarget> = observations
        .iter()
        .map(|o| (o.asset.clone(), o.holder.clone()))
        .collect();
    let previous = store::latest_final(pool, chain, Some(&targets)).await?;
    let mut counts = store::divergence_counts(pool, chain, Some(&targets)).await?;
    let empty = AssetState::default();
    let mut rows = Vec::with_capacity(observations.len());
    let mut verdicts = Vec::with_capacity(observations.len());
    let mut divergences = Vec::new();
    // A batch may carry a target twice; the later one sees the earlier one's status.
    let mut last_status: HashMap<ChainTarget, Option<Status>> = previous
        .iter()
        .map(|(k, v)| (k.clone(), v.status))
        .collect();
    for o in observations {
        let key: ChainTarget = (o.asset.clone(), o.holder.clone());
        let state = decided.states.get(&o.asset).unwrap_or(&empty);
        let decided_at = decided.decided_at.get(&o.asset).copied().unwrap_or(now);
        let projection = projection::decide(state, o.holder.as_ref());
        let differences = projection::differences(&projection, &o.observed);
        if o.finality != Finality::Final {
            rows.push((o, None, None));
            verdicts.push(Verdict {
                asset: o.asset.clone(),
                holder: o.holder.clone(),
                status: None,
                differences,
            });
            continue;
        }
        let count = counts.get(&key).copied().unwrap_or(0);
        let mut status = projection::status(
            &standing(&projection, state, decided_at, Some(o), count),
            now,
            deadline,
        );
        let was = last_status.get(&key).copied().flatten();
        let mut opened = None;
        if status == Status::Diverged && !matches!(was, Some(Status::Diverged | Status::Escalated))
        {
            let count = counts.entry(key.clone()).or_insert(0);
            *count += 1;
            metrics::counter!("regulator_reconciliation_divergences_total", "chain" => chain.to_string())
                .increment(1);
            status = projection::status(
                &standing(&projection, state, decided_at, Some(o), *count),
                now,
                deadline,
            );
            opened = Some(differences.clone());
            divergences.push(Divergence {
                chain: chain.to_string(),
                asset: o.asset.to_string(),
                holder: o.holder.as_ref().map(|h| h.to_string()),
                version: o.version,
                block_number: o.block.number,
                block_hash: o.block.hash.to_string(),
                differences: differences.clone(),
            });
        }
        if status == Status::Converged && was != Some(Status::Converged) {
            let lag = (now - decided_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("regulator_reconciliation_apply_lag_seconds", "chain" => chain.to_string())
                .record(lag);
        }
        last_status.insert(key, Some(status));
        rows.push((o, Some(status), opened));
        verdicts.push(Verdict {
            asset: o.asset.clone(),
            holder: o.holder.clone(),
            status: Some(status),
            differences,
        });
    }
    let new_rows: Vec<NewObservation<'_>> = rows
        .into_iter()
        .map(|(observation, status, divergence)| NewObservation {
            observation,
            status,
            divergence,
        })
        .collect();
    // The divergences become ledger events in the same transaction as their evidence.
    let events: Vec<EventRequest> = divergences
        .iter()
        .cloned()
        .map(EventRequest::Divergence)
        .collect();
    store::insert_observations(pool, chain, reporter, &new_rows, &events).await?;
    Ok((verdicts, divergences))
}
