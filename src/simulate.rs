//! Impact analysis: what a draft would have decided, replayed over the recorded history.
//!
//! Every recorded conflict group is decided again by the draft, against the state it actually
//! met, and each order's simulated outcome, priority and determining policies are compared with
//! the recorded ones. The history is not rewritten as it goes: after each group the state moves
//! on by the *recorded* effects, so every change reported is the draft's own answer to a
//! situation that really happened, not a consequence of an earlier simulated change.
//!
//! [`Simulator`] is the pure part (records in, report out); [`run`] feeds it from Postgres and
//! says how far it has got through a [`Progress`], which whoever waits for it may read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decide::decide_group;
/// The stretch of the log a simulation replays.
pub use crate::domain::ledger::Range;
use crate::domain::ledger::{DecisionRecord, TargetState};
use crate::domain::{
    AssetKey, AssetState, Outcome, PolicyId, Priority, RegisteredAsset, Subject, Target,
};
use crate::policy::PolicyEngine;
use crate::storage::{self, StorageError};

/// Seqs read from the database at a time.
const PAGE: u64 = 5_000;

/// A decision as recorded, or as the draft would make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verdict {
    pub outcome: Outcome,
    pub priority: Priority,
    pub determining_policies: Vec<PolicyId>,
    pub reason_code: String,
}

/// One order the draft would decide differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub seq: u64,
    #[schema(value_type = String)]
    pub order_id: crate::domain::OrderId,
    pub kind: crate::domain::OrderKind,
    pub issuer: crate::domain::IssuerId,
    pub target: Target,
    pub decided_at: DateTime<Utc>,
    pub recorded: Verdict,
    pub simulated: Verdict,
    /// What differs: any of `outcome`, `priority`, `determining_policies`.
    pub differs: Vec<String>,
}

/// How many orders changed, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeCounts {
    /// Orders with any change.
    pub changed: u64,
    pub outcome: u64,
    pub priority: u64,
    pub determining_policies: u64,
    /// Outcome changes by transition, e.g. `"REJECTED -> APPLIED": 12`.
    pub transitions: BTreeMap<String, u64>,
}

/// What a simulation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// The seq range replayed (decisions only; events in it are skipped).
    pub from_seq: u64,
    pub to_seq: u64,
    /// Orders decided again.
    pub orders: u64,
    pub counts: ChangeCounts,
    /// The changed orders in seq order, at most `max_changes` of them.
    pub changes: Vec<Change>,
    /// True when more orders changed than are listed (the counts are always complete).
    pub truncated: bool,
    pub elapsed_ms: u64,
    /// Orders replayed per second.
    pub orders_per_second: f64,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The recorded history does not replay: a record's state before is not what the records
    /// before it leave. `regulator audit verify` would say more.
    #[error("the history does not replay at seq {seq}: {why}")]
    History { seq: u64, why: String },
}

/// How far a simulation has got: orders replayed of the orders in its range. Shared between
/// the replay, which moves it on, and whoever shows it (a job's status, a progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    replayed: AtomicU64,
    /// Zero until the range's orders are counted.
    total: AtomicU64,
}

impl Progress {
    /// Orders decided again so far.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Orders in the range (zero until counted).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn set_replayed(&self, n: u64) {
        self.replayed.store(n, Ordering::Relaxed);
    }

    fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
}

/// Replays recorded groups against a draft. Feed it every decision of the range, in order.
pub struct Simulator<'e> {
    engine: &'e PolicyEngine,
    states: HashMap<AssetKey, AssetState>,
    /// The run of records that forms the current group: one asset, one decision time.
    group: Vec<DecisionRecord>,
    counts: ChangeCounts,
    changes: Vec<Change>,
    max_changes: usize,
    orders: u64,
}

impl<'e> Simulator<'e> {
    pub fn new(engine: &'e PolicyEngine, max_changes: usize) -> Self {
        Self {
            engine,
            states: HashMap::new(),
            group: Vec::new(),
            counts: ChangeCounts::default(),
            changes: Vec::new(),
            max_changes,
            orders: 0,
        }
    }

    /// The state `key` had before the range: the effects of its earlier decisions, applied.
    pub fn prime(&mut self, key: AssetKey, earlier: &[DecisionRecord]) {
        let state = self.states.entry(key).or_default();
        for record in earlier {
            state.apply(&record.effects);
        }
    }

    /// Takes the next decision of the range.
    pub fn push(&mut self, record: DecisionRecord) -> Result<(), SimulateError> {
        let same_group = self
            .group
            .last()
            .is_some_and(|last| match (last.group, record.group) {
                (Some(a), Some(b)) => a == b,
                // Records from before groups were recorded: one asset, one round, consecutive.
                _ => {
                    last.target.asset == record.target.asset
                        && last.decided_at == record.decided_at
                        && last.seq + 1 == record.seq
                }
            });
        if !same_group {
            self.flush()?;
        }
        self.group.push(record);
        Ok(())
    }

    /// Decides the current group again and moves its asset's state on by what was recorded.
    fn flush(&mut self) -> Result<(), SimulateError> {
        let group = std::mem::take(&mut self.group);
        let Some(first) = group.first() else {
            return Ok(());
        };
        let key = first.target.asset.clone();
        let state = self.states.entry(key.clone()).or_default();
        let orders: Vec<_> = group.iter().filter_map(|r| r.order.clone()).collect();
        if !orders.is_empty() {
            let asset = RegisteredAsset {
                key,
                issuer_jurisdiction: first.asset_attributes.issuer_jurisdiction.clone(),
                asset_class: first.asset_attributes.asset_class.clone(),
            };
            self.orders += orders.len() as u64;
            let resolution = decide_group(self.engine, &asset, state, orders, first.decided_at)
                .map_err(|e| SimulateError::History {
                    seq: first.seq,
                    why: e.to_string(),
                })?;
            for simulated in resolution.decisions {
                let Subject::Order { order_id } = simulated.subject else {
                    continue;
                };
                let Some(recorded) = group.iter().find(|r| r.subject == simulated.subject) else {
                    continue;
                };
                let simulated = Verdict {
                    outcome: simulated.outcome,
                    priority: simulated.priority,
                    determining_policies: simulated.determining,
                    reason_code: crate::domain::ledger::reason_code(&simulated.reason),
                };
                let was = Verdict {
                    outcome: recorded.outcome,
                    priority: recorded.priority,
                    determining_policies: recorded.determining_policies.clone(),
                    reason_code: recorded.reason_code.clone(),
                };
                let mut differs = Vec::new();
                if was.outcome != simulated.outcome {
                    differs.push("outcome".to_owned());
                    self.counts.outcome += 1;
                    *self
                        .counts
                        .transitions
                        .entry(format!(
                            "{} -> {}",
                            was.outcome.as_str(),
                            simulated.outcome.as_str()
                        ))
                        .or_default() += 1;
                }
                if was.priority != simulated.priority {
                    differs.push("priority".to_owned());
                    self.counts.priority += 1;
                }
                if was.determining_policies != simulated.determining_policies {
                    differs.push("determining_policies".to_owned());
                    self.counts.determining_policies += 1;
                }
                if differs.is_empty() {
                    continue;
                }
                self.counts.changed += 1;
                if self.changes.len() < self.max_changes {
                    self.changes.push(Change {
                        seq: recorded.seq,
                        order_id,
                        kind: recorded.kind,
                        issuer: recorded.issuer.clone(),
                        target: recorded.target.clone(),
                        decided_at: recorded.decided_at,
                        recorded: was,
                        simulated,
                        differs,
                    });
                }
            }
        }
        for record in &group {
            let met = TargetState::of(state, record.target.holder.as_ref());
            if met != record.state_before {
                return Err(SimulateError::History {
                    seq: record.seq,
                    why: format!(
                        "recorded state before is version {}, the replay has version {}",
                        record.state_before.version, met.version
                    ),
                });
            }
            state.apply(&record.effects);
        }
        Ok(())
    }

    /// Orders decided again so far (a group's orders count once it is decided).
    pub fn replayed(&self) -> u64 {
        self.orders
    }

    /// Ends the replay.
    pub fn finish(mut self) -> Result<(ChangeCounts, Vec<Change>, u64), SimulateError> {
        self.flush()?;
        self.changes.sort_by_key(|c| c.seq);
        Ok((self.counts, self.changes, self.orders))
    }
}

/// Replays the decisions of `range` (the whole log by default) against `engine`.
pub async fn run(
    pool: &sqlx::PgPool,
    engine: Arc<PolicyEngine>,
    range: &Range,
    max_changes: usize,
) -> Result<Report, SimulateError> {
    run_with_progress(pool, engine, range, max_changes, Arc::default()).await
}

/// [`run`], moving `progress` on as it goes: first the range's order count, then the orders
/// replayed, which reach it when the replay ends.
///
/// Two stages run side by side: this task reads and parses pages of records (and the earlier
/// decisions of assets the range finds mid-history), and a blocking thread decides them.
pub async fn run_with_progress(
    pool: &sqlx::PgPool,
    engine: Arc<PolicyEngine>,
    range: &Range,
    max_changes: usize,
    progress: Arc<Progress>,
) -> Result<Report, SimulateError> {
    let started = Instant::now();
    let (from, to) = storage::simulate::seq_range(pool, range).await?;
    progress.set_total(storage::simulate::orders_between(pool, from, to).await?);
    let (pages, mut inbox) = tokio::sync::mpsc::channel::<Page>(2);
    let shown = Arc::clone(&progress);
    let decider = tokio::task::spawn_blocking(move || {
        let mut simulator = Simulator::new(&engine, max_changes);
        while let Some(page) = inbox.blocking_recv() {
            for (key, earlier) in page.primes {
                simulator.prime(key, &earlier);
            }
            for record in page.records {
                simulator.push(record)?;
                shown.set_replayed(simulator.replayed());
            }
        }
        let finished = simulator.finish()?;
        shown.set_replayed(finished.2);
        Ok::<_, SimulateError>(finished)
    });
    let mut seen: HashSet<AssetKey> = HashSet::new();
    let mut after = from.saturating_sub(1);
    while after < to {
        let upto = to.min(after.saturating_add(PAGE));
        let records = storage::simulate::decisions_between(pool, after, upto).await?;
        after = upto;
        if records.is_empty() {
            continue;
        }
        let mut unknown = Vec::new();
        for record in &records {
            let key = &record.target.asset;
            if !seen.contains(key) {
                seen.insert(key.clone());
                // Version 0: nothing was ever applied to the asset, its state is empty.
                if record.state_before.version > 0 {
                    unknown.push((key.clone(), record.seq));
                }
            }
        }
        let primes = if unknown.is_empty() {
            Vec::new()
        } else {
            storage::simulate::earlier_decisions(pool, &unknown).await?
        };
        if pages.send(Page { primes, records }).await.is_err() {
            // The decider stopped early: its result says why.
            break;
        }
    }
    drop(pages);
    let (counts, changes, orders) = decider
        .await
        .map_err(|e| StorageError::Corrupt(format!("the simulation stopped: {e}")))??;
    let elapsed = started.elapsed();
    Ok(Report {
        from_seq: from,
        to_seq: to,
        orders,
        truncated: counts.changed > changes.len() as u64,
        counts,
        changes,
        elapsed_ms: elapsed.as_millis() as u64,
        orders_per_second: orders as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

/// A page of the range, with the earlier decisions of the assets it reaches first.
struct Page {
    primes: Vec<(AssetKey, Vec<DecisionRecord>)>,
    records: Vec<DecisionRecord>,
}
