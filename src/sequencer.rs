//! The sequencer: the single writer that turns intake into decisions (SPEC §4).
//!
//! Every replica runs one; the one holding the Postgres advisory lock leads. The leader loops:
//! fetch pending orders and due expiries at the database's time, *detect* the conflict groups
//! whose window has closed, *resolve* each against its asset's state, and *converge* by
//! committing all of them in one transaction that compare-and-sets the ledger head. A leader
//! that loses its lock connection, or finds the head moved, stops writing and starts over as a
//! candidate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Duration;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{watch, Notify};

use crate::decide::decide_group;
use crate::domain::detect::{detect, Pending};
use crate::domain::ledger::{seal_group, GroupContext, Head, SealedRecord};
use crate::domain::{AssetKey, AssetState, Order, RegisteredAsset};
use crate::hub::Hub;
use crate::policy::PolicyEngine;
use crate::storage::{self, StorageError};

/// How the sequencer behaves; the window is SPEC §4's `W`.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub window: Duration,
    /// Most orders fetched per round.
    pub fetch_limit: i64,
    /// How often a standby tries to take the lead, and the longest a leader sleeps unwoken.
    pub poll: StdDuration,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            window: Duration::milliseconds(100),
            fetch_limit: 5_000,
            poll: StdDuration::from_millis(250),
        }
    }
}

/// One replica's sequencer.
pub struct Sequencer {
    pool: PgPool,
    engine: Arc<PolicyEngine>,
    hub: Arc<Hub>,
    config: SequencerConfig,
    /// Woken when an order reaches intake (locally, or announced by another replica).
    intake: Arc<Notify>,
    leading: watch::Sender<bool>,
}

impl Sequencer {
    pub fn new(
        pool: PgPool,
        engine: Arc<PolicyEngine>,
        hub: Arc<Hub>,
        config: SequencerConfig,
        intake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            engine,
            hub,
            config,
            intake,
            leading: watch::Sender::new(false),
        }
    }

    /// Whether this replica leads right now.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Runs until `shutdown` turns true: stand by, lead when the lock is free, repeat.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.candidate().await {
                Ok(Some(mut leader)) => {
                    tracing::info!(
                        epoch = leader.epoch,
                        seq = leader.head.seq,
                        "sequencer leads"
                    );
                    let result = match self.hub.lead(&mut leader.conn, leader.head.seq).await {
                        Ok(()) => {
                            self.leading.send_replace(true);
                            tokio::select! {
                                r = self.lead(leader) => r,
                                _ = shutdown.changed() => Ok(()),
                            }
                        }
                        Err(e) => Err(e),
                    };
                    self.hub.follow();
                    self.leading.send_replace(false);
                    if let Err(error) = result {
                        tracing::warn!(%error, "sequencer stepped down");
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "sequencer could not stand for leadership"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn candidate(&self) -> Result<Option<Leader>, StorageError> {
        // A connection of its own, outside the pool: when the leader is dropped it closes and
        // the lock goes with it (a pooled one would return to the pool still holding the lock),
        // and it lives on the sequencer's own runtime.
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        match storage::try_lead(&mut conn).await? {
            Some((epoch, head)) => Ok(Some(Leader {
                conn,
                epoch,
                head,
                states: HashMap::new(),
            })),
            None => Ok(None),
        }
    }

    /// Leads until an error: any failure drops the connection, and with it the lock.
    async fn lead(&self, mut leader: Leader) -> Result<(), StorageError> {
        loop {
            let next = self.round(&mut leader).await?;
            let Some(wait) = next else { continue };
            tokio::select! {
                _ = self.intake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round. Returns how long to wait before the next, or `None` to go again at once.
    async fn round(&self, leader: &mut Leader) -> Result<Option<StdDuration>, StorageError> {
        let work = storage::fetch_work(
            &mut leader.conn,
            self.config.fetch_limit,
            self.config.window > Duration::zero(),
        )
        .await?;
        metrics::gauge!("regulator_intake_backlog").set(work.pending.len() as f64);
        let horizon = work
            .truncated
            .then(|| work.pending.last().map(|p| p.order.intake_at))
            .flatten();

        let earliest = work
            .pending
            .first()
            .map(|p| (p.order.target.asset.clone(), p.order.intake_at));
        let mut assets: HashMap<AssetKey, RegisteredAsset> = HashMap::new();
        let pending: Vec<Pending<Order>> = work
            .pending
            .into_iter()
            .map(|p| {
                assets.insert(p.asset.key.clone(), p.asset);
                Pending {
                    asset: p.order.target.asset.clone(),
                    intake_at: p.order.intake_at,
                    item: p.order,
                }
            })
            .collect();
        let detection = detect(pending, work.now, self.config.window, horizon);
        let mut groups = detection.groups;
        let mut next_ready_at = detection.next_ready_at;
        if groups.is_empty() && work.truncated {
            // Every fetched window may reach past the fetch limit (a burst inside one window).
            // Complete the earliest window on its own rather than wait for a fetch that would
            // return the same rows.
            if let Some((key, opened)) = earliest {
                let closes_at = opened + self.config.window;
                if work.now >= closes_at {
                    let window = storage::fetch_window(&mut leader.conn, &key, closes_at).await?;
                    if let Some(first) = window.first() {
                        assets.insert(key.clone(), first.asset.clone());
                    }
                    groups.push((key, window.into_iter().map(|p| p.order).collect()));
                } else {
                    next_ready_at = Some(closes_at);
                }
            }
        }
        for asset in work.expiring {
            if !groups.iter().any(|(k, _)| *k == asset.key) {
                groups.push((asset.key.clone(), Vec::new()));
            }
            assets.insert(asset.key.clone(), asset);
        }

        if groups.is_empty() {
            let wake = [next_ready_at, work.next_expiry]
                .into_iter()
                .flatten()
                .min();
            let wait = match wake {
                Some(at) => (at - work.now)
                    .to_std()
                    .unwrap_or(StdDuration::ZERO)
                    .min(self.config.poll),
                None => self.config.poll,
            };
            return Ok(Some(wait));
        }

        let missing: Vec<AssetKey> = groups
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !leader.states.contains_key(k))
            .collect();
        if !missing.is_empty() {
            let loaded = storage::load_states(&mut leader.conn, &missing).await?;
            leader.states.extend(loaded);
        }

        let policy_version = self.engine.bundle().hash().to_owned();
        let mut head = leader.head;
        let mut records: Vec<SealedRecord> = Vec::new();
        // States after this round's groups so far; an asset may have several groups (windows)
        // in one round, each meeting the state the previous one left.
        let mut working: HashMap<AssetKey, AssetState> = HashMap::new();
        for (key, orders) in groups {
            let missing = || StorageError::Corrupt(format!("no state or attributes for {key}"));
            let asset = assets.get(&key).ok_or_else(missing)?;
            let before = match working.get(&key) {
                Some(state) => state,
                None => leader.states.get(&key).ok_or_else(missing)?,
            };
            let resolution =
                match decide_group(&self.engine, asset, before, orders.clone(), work.now) {
                    Ok(r) => r,
                    Err(error) => {
                        // Only duplicate order ids can cause this; the primary key forbids them.
                        return Err(StorageError::Corrupt(format!("group on {key}: {error}")));
                    }
                };
            let ctx = GroupContext {
                asset,
                before,
                after: &resolution.state,
                orders: &orders,
                policy_version: &policy_version,
                decided_at: work.now,
            };
            let sealed = seal_group(&ctx, &resolution.decisions, &mut head)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            records.extend(sealed);
            // The version moves exactly when a decision changes the state.
            if resolution.state.version() != before.version() {
                working.insert(key, resolution.state);
            }
        }
        let new_states: Vec<(AssetKey, AssetState)> = working.into_iter().collect();

        let changes = new_states
            .iter()
            .map(|(key, after)| storage::StateChange { key, after })
            .collect();
        let commit = storage::Commit {
            epoch: leader.epoch,
            from: leader.head,
            records: &records,
            states: changes,
        };
        leader.head = storage::commit(&mut leader.conn, commit).await?;
        for (key, state) in new_states {
            leader.states.insert(key, state);
        }
        record_metrics(&records);
        self.hub.deliver_local(&records);
        Ok(None)
    }
}

/// A sequencer that holds the lock: its connection, epoch, view of the head and state cache.
struct Leader {
    /// Holds the advisory lock; every sequencer statement runs on it.
    conn: PgConnection,
    epoch: i64,
    head: Head,
    /// The states of the assets this leader has touched: valid because only it writes them.
    states: HashMap<AssetKey, AssetState>,
}

fn record_metrics(records: &[SealedRecord]) {
    metrics::histogram!("regulator_sequencer_batch_size").record(records.len() as f64);
    for s in records {
        let r = &s.record;
        metrics::counter!(
            "regulator_decisions_total",
            "kind" => r.kind.as_str(),
            "outcome" => r.outcome.as_str(),
        )
        .increment(1);
        // Only order decisions carry an order; expiries have no intake to measure from.
        if let Some(order) = &r.order {
            metrics::counter!(
                "regulator_orders_total",
                "kind" => r.kind.as_str(),
                "outcome" => r.outcome.as_str(),
            )
            .increment(1);
            let seconds = (r.decided_at - order.intake_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6;
            metrics::histogram!("regulator_decision_latency_seconds").record(seconds.max(0.0));
        }
    }
}
