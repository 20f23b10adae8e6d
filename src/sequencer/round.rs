//! One round of the sequencer, apart from leading: what a round's preparation found, deciding
//! and sealing its groups (on a blocking thread when a commit is in flight), committing it with
//! the state map's round beside it, and the round's metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::decide::decide_group;
use crate::domain::ledger::{seal_group, GroupContext, Head, SealedRecord};
use crate::domain::state_leaves::{Delta, Overlay, StateTree};
use crate::domain::{AssetKey, AssetState, Order, RegisteredAsset};
use crate::policy::PolicyEngine;
use crate::storage::state::StateRound;
use crate::storage::{self, StorageError};

/// What [`Sequencer::prepare`] found.
pub(super) enum Prepared {
    /// Nothing is ready: wait this long, or until woken.
    Idle(StdDuration),
    /// Event requests are queued: they are settled before any order is decided.
    Requests {
        stamp: DateTime<Utc>,
    },
    Decided(Decided),
}

/// A round decided and sealed, not yet committed.
pub(super) struct Decided {
    pub(super) records: Arc<Vec<SealedRecord>>,
    /// The `holds` rows the records write.
    pub(super) holds: Box<storage::HoldWrites>,
    /// The assets whose state the round changed, as it leaves them.
    pub(super) changes: Vec<storage::StateChange>,
    /// The head after the round's last record.
    pub(super) head: Head,
    pub(super) stamp: DateTime<Utc>,
    /// Orders fetched for it: a round this large says a backlog is waiting.
    pub(super) fetched: usize,
    pub(super) fetch_time: StdDuration,
    pub(super) decide_time: StdDuration,
    /// The orders it took in itself and decides, which were never queued.
    pub(super) taken_in: HashSet<uuid::Uuid>,
}

/// Everything deciding a round needs, owned, so that it can run on another thread.
pub(super) struct RoundInput {
    pub(super) groups: Vec<(AssetKey, Vec<Order>)>,
    pub(super) assets: HashMap<AssetKey, RegisteredAsset>,
    /// The states of the groups' assets, as the round meets them.
    pub(super) states: HashMap<AssetKey, AssetState>,
    pub(super) engine: Arc<PolicyEngine>,
    pub(super) policy_version: String,
    pub(super) from: Head,
    pub(super) now: DateTime<Utc>,
    pub(super) stamp: DateTime<Utc>,
}

pub(super) struct RoundOutput {
    /// The states of the groups' assets, as the round leaves them.
    pub(super) states: HashMap<AssetKey, AssetState>,
    /// The assets whose version moved.
    pub(super) changed: HashSet<AssetKey>,
    /// The sealed records, the `holds` rows they write, and the head after the last.
    pub(super) sealed: Result<(Vec<SealedRecord>, storage::HoldWrites, Head), StorageError>,
}

/// Decides each group against the state the previous groups on its asset left (an asset may
/// have several windows in one round), and seals the decisions in order from `input.from`.
pub(super) fn decide_round(input: RoundInput) -> RoundOutput {
    let RoundInput {
        groups,
        assets,
        mut states,
        engine,
        policy_version,
        from,
        now,
        stamp,
    } = input;
    let mut changed: HashSet<AssetKey> = HashSet::new();
    let mut head = from;
    let mut records: Vec<SealedRecord> = Vec::new();
    let decide = || -> Result<(), StorageError> {
        for (key, orders) in groups {
            let missing = || StorageError::Corrupt(format!("no state or attributes for {key}"));
            let asset = assets.get(&key).ok_or_else(missing)?;
            let before = states.get(&key).ok_or_else(missing)?;
            let resolution = decide_group(&engine, asset, before, orders.clone(), now)
                // Only duplicate order ids can cause this; the primary key forbids them.
                .map_err(|error| StorageError::Corrupt(format!("group on {key}: {error}")))?;
            let ctx = GroupContext {
                asset,
                before,
                after: &resolution.state,
                orders: &orders,
                policy_version: &policy_version,
                decided_at: stamp,
            };
            let sealed = seal_group(&ctx, &resolution.decisions, &mut head)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            records.extend(sealed);
            // The version moves exactly when a decision changes the state.
            if resolution.state.version() != before.version() {
                changed.insert(key.clone());
                states.insert(key, resolution.state);
            }
        }
        Ok(())
    };
    // The holds' rows are built here, off the sequencer's serial path, not in the commit.
    let sealed = decide()
        .and_then(|()| storage::HoldWrites::of(&records))
        .map(|holds| (records, holds, head));
    RoundOutput {
        states,
        changed,
        sealed,
    }
}

/// Commits `decided` on the lock's connection, from `from` in `epoch`. The state map's round
/// runs on a blocking thread meanwhile (the map is lent to it and comes back with its result);
/// only the commit's last statement waits for it. If the commit fails, the map is lost with
/// the leader that stops.
pub(super) async fn commit_decided(
    conn: &mut PgConnection,
    tree: &mut StateTree,
    epoch: i64,
    from: Head,
    decided: &Decided,
) -> Result<Head, StorageError> {
    let mut lent = std::mem::take(tree);
    let effects = Arc::clone(&decided.records);
    let (from_seq, to_seq) = (from.seq + 1, decided.head.seq);
    let mapped = tokio::task::spawn_blocking(move || {
        let round = state_round(&mut lent, &effects, from_seq, to_seq);
        (lent, round)
    });
    let mut returned: Option<StateTree> = None;
    let state_round = async {
        let (tree, round) = mapped
            .await
            .map_err(|e| StorageError::Corrupt(format!("the state map's round: {e}")))?;
        returned = Some(tree);
        round
    };
    let commit = storage::Commit {
        epoch,
        from,
        records: &decided.records,
        states: &decided.changes,
        holds: &decided.holds,
        taken_in: &decided.taken_in,
    };
    let head = storage::commit(conn, commit, state_round).await?;
    *tree = returned.ok_or_else(|| {
        StorageError::Corrupt("the state map did not come back from its round".into())
    })?;
    Ok(head)
}

/// Applies a round's records (seqs `from_seq..=to_seq`) to the state map, staged and written
/// at once; the round's roots and settled delta, or `None` if no target's state changed.
fn state_round(
    tree: &mut StateTree,
    records: &[SealedRecord],
    from_seq: u64,
    to_seq: u64,
) -> Result<Option<StateRound>, StorageError> {
    let prev_root = tree.root();
    let mut delta = Delta::default();
    let mut overlay = Overlay::default();
    for s in records {
        tree.stage(&mut overlay, &s.record.target.asset, &s.record.effects)
            .map_err(|e| StorageError::Corrupt(format!("seq {}: {e}", s.record.seq)))?;
    }
    tree.write(overlay, &mut delta);
    delta.settle();
    Ok((!delta.changes.is_empty()).then(|| StateRound {
        from_seq,
        to_seq,
        prev_root,
        new_root: tree.root(),
        baseline: false,
        delta,
    }))
}

/// The wall-clock split of a round that committed something: the fetch, the deciding and
/// sealing, and the commit (mostly Postgres's time). When rounds overlap, a round's fetch and
/// deciding ran during the previous one's commit, so the phases add up to more than the time.
pub(super) fn record_phases(fetch: StdDuration, decide: StdDuration, commit: StdDuration) {
    for (name, d) in [("fetch", fetch), ("decide", decide), ("commit", commit)] {
        metrics::histogram!("regulator_sequencer_round_seconds", "phase" => name)
            .record(d.as_secs_f64());
    }
}

pub(super) fn record_metrics(records: &[SealedRecord]) {
    metrics::histogram!("regulator_sequencer_batch_size").record(records.len() as f64);
    // Counted per (kind, outcome) first: a metric's lookup hashes its labels, and a round holds
    // thousands of decisions of a few kinds.
    let mut counts: Vec<(&'static str, &'static str, u64, u64)> = Vec::new();
    let latency = metrics::histogram!("regulator_decision_latency_seconds");
    for s in records {
        let r = &s.record;
        let (kind, outcome) = (r.kind.as_str(), r.outcome.as_str());
        let at = match counts.iter().position(|c| c.0 == kind && c.1 == outcome) {
            Some(at) => at,
            None => {
                counts.push((kind, outcome, 0, 0));
                counts.len() - 1
            }
        };
        counts[at].2 += 1;
        // Only order decisions carry an order; expiries have no intake to measure from.
        if let Some(order) = &r.order {
            counts[at].3 += 1;
            let seconds = (r.decided_at - order.intake_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6;
            latency.record(seconds.max(0.0));
        }
    }
    for (kind, outcome, decisions, orders) in counts {
        metrics::counter!("regulator_decisions_total", "kind" => kind, "outcome" => outcome)
            .increment(decisions);
        if orders > 0 {
            metrics::counter!("regulator_orders_total", "kind" => kind, "outcome" => outcome)
                .increment(orders);
        }
    }
}
