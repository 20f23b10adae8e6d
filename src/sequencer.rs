//! The sequencer: the single writer that turns intake into decisions (SPEC §4).
//!
//! Every replica runs one; the one holding the Postgres advisory lock leads. The leader loops:
//! fetch pending orders and due expiries at the database's time, *detect* the conflict groups
//! whose window has closed, *resolve* each against its asset's state, and *converge* by
//! committing all of them in one transaction that compare-and-sets the ledger head. A leader
//! that loses its lock connection, or finds the head moved, stops writing and starts over as a
//! candidate.
//!
//! The policies it decides with are the version the ledger says is active, loaded from Postgres
//! when it takes the lead, never a local file. Requests for ledger events (activations,
//! subscription changes) are settled first in a round of their own, so every decision after an
//! activation's seq uses the version it activated, on whichever replica leads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{watch, Notify};

use crate::domain::detect::{detect, Pending};
use crate::domain::event::VersionRef;
use crate::domain::ledger::Head;
use crate::domain::state_leaves::StateTree;
use crate::domain::{AssetKey, AssetState, Order, RegisteredAsset};
use crate::hub::Hub;
use crate::policy::PolicyEngine;
use crate::storage::{self, Intake, NewOrder, StorageError};

mod events;
mod handoff;
mod round;
pub use handoff::{Gathered, Handoff, Reply, CLAIM_WITHIN};
use round::{
    commit_decided, decide_round, record_metrics, record_phases, Decided, Prepared, RoundInput,
};

/// The default [`SequencerConfig::lease_ttl`].
pub const DEFAULT_LEASE_TTL: StdDuration = StdDuration::from_secs(5);
/// The default [`SequencerConfig::pipeline_from`].
pub const DEFAULT_PIPELINE_FROM: usize = 500;
/// Most event requests settled per round.
const REQUESTS_PER_ROUND: i64 = 100;

/// How the sequencer behaves; the window is SPEC §4's `W`.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    pub window: Duration,
    /// Most orders fetched per round.
    pub fetch_limit: i64,
    /// How often a standby tries to take the lead, and the longest a leader sleeps unwoken.
    pub poll: StdDuration,
    /// How long a leader's lease lasts unrenewed: a standby deposes a leader that has not
    /// renewed it for this long (by the database's clock). It must exceed the longest round.
    pub lease_ttl: StdDuration,
    /// A round that fetched at least this many orders is committed while the next is fetched
    /// and decided: a backlog that large fills the next round too. Smaller rounds run one
    /// after the other, where the overlap would cost a fetch beside every commit for little.
    pub pipeline_from: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        Self {
            window: Duration::milliseconds(100),
            fetch_limit: 5_000,
            poll: StdDuration::from_millis(250),
            lease_ttl: DEFAULT_LEASE_TTL,
            pipeline_from: DEFAULT_PIPELINE_FROM,
        }
    }
}

/// One replica's sequencer.
pub struct Sequencer {
    pool: PgPool,
    /// The last version loaded, kept across leaderships (compiling takes tens of ms).
    loaded: std::sync::Mutex<Option<ActivePolicy>>,
    hub: Arc<Hub>,
    config: SequencerConfig,
    /// Woken when an order reaches intake (locally, or announced by another replica).
    intake: Arc<Notify>,
    leading: watch::Sender<bool>,
    /// The single orders this replica's intake hands its rounds while it leads.
    handoff: Arc<Handoff>,
}

impl Sequencer {
    pub fn new(pool: PgPool, hub: Arc<Hub>, config: SequencerConfig, intake: Arc<Notify>) -> Self {
        Self {
            pool,
            loaded: std::sync::Mutex::new(None),
            hub,
            config,
            intake,
            leading: watch::Sender::new(false),
            handoff: Arc::default(),
        }
    }

    /// Where this replica's intake hands its single orders while it leads.
    pub fn handoff(&self) -> Arc<Handoff> {
        Arc::clone(&self.handoff)
    }

    /// Whether this replica leads right now.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Runs until `shutdown` turns true: stand by, lead when the lock is free, repeat.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // The connection this replica stands for leadership on, kept from one try to the next
        // (and through a leadership): standing must not need a new connection, which a process
        // out of file descriptors, or a server out of connection slots, could not open.
        let mut standby: Option<PgConnection> = None;
        while !*shutdown.borrow() {
            match self.candidate(&mut standby).await {
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
                                r = self.lead(&mut leader) => r,
                                _ = shutdown.changed() => Ok(()),
                            }
                        }
                        Err(e) => Err(e),
                    };
                    self.hub.follow();
                    self.leading.send_replace(false);
                    // Intake writes them itself now, for whichever replica leads next.
                    self.handoff.give_all_back();
                    if let Err(error) = result {
                        tracing::warn!(%error, "sequencer stepped down");
                    }
                    // Keep the connection to stand again, if it is sound and lets go of the lock.
                    let mut conn = leader.conn;
                    let released = tokio::time::timeout(
                        StdDuration::from_secs(2),
                        storage::release_lead(&mut conn),
                    )
                    .await;
                    if matches!(released, Ok(Ok(()))) {
                        standby = Some(conn);
                    }
                }
                Ok(None) => {}
                Err(error @ StorageError::StateMismatch(_)) => {
                    metrics::counter!("regulator_state_mismatch_total").increment(1);
                    tracing::error!(%error, "sequencer refuses to lead")
                }
                Err(error) => tracing::warn!(%error, "sequencer could not stand for leadership"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn candidate(
        &self,
        standby: &mut Option<PgConnection>,
    ) -> Result<Option<Leader>, StorageError> {
        // A connection of its own, outside the pool: if it breaks, the lock goes with it (a
        // pooled one would return to the pool still holding the lock), and it lives on the
        // sequencer's own runtime. On an error it is dropped, and the next try reconnects.
        let mut conn = match standby.take() {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.pool.connect_options()).await?,
        };
        let mut lead = storage::try_lead(&mut conn).await?;
        if lead.is_none() {
            if let Some(pid) =
                storage::depose_stuck_leader(&mut conn, self.config.lease_ttl).await?
            {
                tracing::warn!(
                    backend_pid = pid,
                    lease_ttl_ms = self.config.lease_ttl.as_millis() as u64,
                    "the leader stopped renewing its lease: its session was terminated"
                );
                lead = storage::try_lead(&mut conn).await?;
            }
        }
        let Some((epoch, head)) = lead else {
            *standby = Some(conn);
            return Ok(None);
        };
        let last_stamp = storage::last_stamp(&mut conn).await?;
        let (policy, head, last_stamp) = self
            .active_policy(&mut conn, epoch, head, last_stamp)
            .await?;
        // Nothing is decided on state tables that do not give the recorded and signed roots.
        let tree = crate::state_commit::lead_check(&mut conn, head).await?;
        tracing::info!(
            version = policy.version.version,
            hash = %policy.version.hash,
            targets = tree.map().len(),
            state_root = %hex::encode(tree.root()),
            "sequencer decides with the active policy version"
        );
        // The reader fetches the next round while one commits. Without it (no connection to be
        // had) rounds run one after the other: leading must not depend on a second connection.
        let reader = match PgConnection::connect_with(&self.pool.connect_options()).await {
            Ok(reader) => Some(reader),
            Err(error) => {
                tracing::warn!(%error, "no reader connection: rounds will not overlap");
                None
            }
        };
        Ok(Some(Leader {
            tree,
            conn,
            reader,
            next: None,
            renewed: tokio::time::Instant::now(),
            epoch,
            head,
            states: HashMap::new(),
            policy,
            last_stamp,
        }))
    }

    /// Leads until an error, renewing the lease as it goes.
    async fn lead(&self, leader: &mut Leader) -> Result<(), StorageError> {
        let renew_every = self.config.lease_ttl / 4;
        loop {
            if leader.renewed.elapsed() >= renew_every {
                storage::renew_lease(&mut leader.conn, leader.epoch, leader.head.seq).await?;
                leader.renewed = tokio::time::Instant::now();
            }
            let next = self.round(leader).await?;
            let Some(wait) = next else { continue };
            tokio::select! {
                _ = self.intake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: commits one decided round (the one decided while the last committed, or one
    /// fetched and decided now). Returns how long to wait before the next, or `None` to go
    /// again at once.
    ///
    /// A round of at least [`SequencerConfig::pipeline_from`] fetched orders is committed on
    /// the lock's connection while the next is fetched (on the reader connection, leaving out
    /// the orders being committed) and decided on a blocking thread, against the states this
    /// round leaves and chained to its last record. If the commit fails, the next round is
    /// dropped with it: it was never written, and the leader steps down.
    async fn round(&self, leader: &mut Leader) -> Result<Option<StdDuration>, StorageError> {
        // The leader's own single orders, taken in by this round's transaction (only a round
        // fetched on the lock's connection takes any in: one decided beside a commit is not).
        let (decided, taken_in) = match leader.next.take() {
            Some(decided) => (decided, None),
            None => match self.prepare_on_lock(leader).await? {
                Fresh::Idle(wait) => return Ok(Some(wait)),
                Fresh::Requests { stamp } => {
                    // Settled before any order of this fetch is decided: an order decided
                    // after an activation's seq is decided by the version it activated.
                    self.settle_requests(leader, stamp).await?;
                    leader.last_stamp = stamp;
                    return Ok(None);
                }
                Fresh::Decided(decided, taken_in) => (*decided, taken_in),
            },
        };
        leader.last_stamp = decided.stamp;
        let overlap = decided.fetched >= self.config.pipeline_from && leader.reader.is_some();
        let Leader {
            conn,
            reader,
            states,
            tree,
            policy,
            epoch,
            head,
            next,
            ..
        } = leader;
        let started = std::time::Instant::now();
        let committing = commit_decided(conn, tree, *epoch, *head, &decided);
        let (committed, prepared) = match reader.as_mut().filter(|_| overlap) {
            Some(reader) => {
                let in_flight: Vec<uuid::Uuid> = decided
                    .records
                    .iter()
                    .filter_map(|s| s.record.order.as_ref().map(|o| o.id.as_uuid()))
                    .collect();
                let preparing = self.prepare(
                    reader,
                    states,
                    policy,
                    decided.head,
                    decided.stamp,
                    &in_flight,
                    true,
                    None,
                );
                let (committed, prepared) = tokio::join!(committing, preparing);
                (committed, Some(prepared.map(|(prepared, _)| prepared)))
            }
            None => (committing.await, None),
        };
        if matches!(prepared, Some(Ok(Prepared::Decided(_)))) {
            metrics::counter!("regulator_sequencer_overlapped_rounds_total").increment(1);
        }
        // A failed commit takes the round decided beside it along: both are dropped. The
        // orders it took in were not written either: intake writes them itself.
        *head = match committed {
            Ok(head) => head,
            Err(error) => {
                if let Some((gathered, _)) = taken_in {
                    self.handoff.give_back(gathered);
                }
                return Err(error);
            }
        };
        record_phases(decided.fetch_time, decided.decide_time, started.elapsed());
        record_metrics(&decided.records);
        self.hub.deliver_local(&decided.records);
        if let Some((gathered, outcomes)) = taken_in {
            gathered.answer(outcomes);
        }
        // Freeing a large round (thousands of record texts, states and holds) took a few ms of
        // the serial path between two commits; a blocking thread does it instead.
        if decided.records.len() >= self.config.pipeline_from {
            tokio::task::spawn_blocking(move || drop(decided));
        }
        match prepared.transpose()? {
            Some(Prepared::Decided(following)) => *next = Some(following),
            // Nothing ready, or event requests first: the next round fetches again, on the
            // lock's connection, once nothing is in flight.
            Some(Prepared::Idle(_) | Prepared::Requests { .. }) | None => {}
        }
        Ok(None)
    }

    /// Prepares a round on the lock's connection with nothing in flight, taking in what intake
    /// handed over. Orders taken in that it does not decide are queued in its transaction;
    /// with nothing to commit they are committed alone. What it took in comes back beside the
    /// decided round, to be answered once that commits.
    async fn prepare_on_lock(&self, leader: &mut Leader) -> Result<Fresh, StorageError> {
        let claimed = self.handoff.claim();
        let prepared = self
            .prepare(
                &mut leader.conn,
                &mut leader.states,
                &leader.policy,
                leader.head,
                leader.last_stamp,
                &[],
                false,
                claimed.as_ref().map(|g| g.orders.as_slice()),
            )
            .await;
        let (prepared, taken) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                if let Some(claimed) = claimed {
                    self.abandon(&mut leader.conn, claimed).await;
                }
                return Err(error);
            }
        };
        let claimed = match (claimed, taken) {
            (Some(claimed), Some(taken)) => Some((claimed, taken)),
            (Some(claimed), None) => {
                self.handoff.give_back(claimed);
                None
            }
            (None, _) => None,
        };
        let Some((gathered, outcomes)) = claimed else {
            return Ok(match prepared {
                Prepared::Idle(wait) => Fresh::Idle(wait),
                Prepared::Requests { stamp } => Fresh::Requests { stamp },
                Prepared::Decided(decided) => Fresh::Decided(Box::new(decided), None),
            });
        };
        match prepared {
            Prepared::Idle(wait) => {
                self.commit_taken(&mut leader.conn, gathered, outcomes)
                    .await?;
                Ok(Fresh::Idle(wait))
            }
            Prepared::Requests { stamp } => {
                self.commit_taken(&mut leader.conn, gathered, outcomes)
                    .await?;
                Ok(Fresh::Requests { stamp })
            }
            Prepared::Decided(mut decided) => {
                // Those it does not decide wait in the queue, like any order.
                let decided_ids: HashSet<uuid::Uuid> = decided
                    .records
                    .iter()
                    .filter_map(|s| s.record.order.as_ref().map(|o| o.id.as_uuid()))
                    .collect();
                let (now, later): (Vec<&Order>, Vec<&Order>) =
                    accepted(&outcomes).partition(|o| decided_ids.contains(&o.id.as_uuid()));
                if let Err(error) = storage::queue_taken(&mut leader.conn, &later).await {
                    self.abandon(&mut leader.conn, gathered).await;
                    return Err(error);
                }
                decided.taken_in = now.iter().map(|o| o.id.as_uuid()).collect();
                Ok(Fresh::Decided(
                    Box::new(decided),
                    Some((gathered, outcomes)),
                ))
            }
        }
    }

    /// Rolls back a failed round's transaction on `conn` and gives the orders it took in back
    /// to intake, which writes them itself.
    async fn abandon(&self, conn: &mut PgConnection, gathered: Gathered) {
        storage::roll_back_round(conn).await;
        self.handoff.give_back(gathered);
    }

    /// Queues and commits the orders a round took in when it has nothing else to commit, and
    /// answers their requests; if that fails, intake writes them itself.
    async fn commit_taken(
        &self,
        conn: &mut PgConnection,
        gathered: Gathered,
        outcomes: Vec<Intake>,
    ) -> Result<(), StorageError> {
        let undecided: Vec<&Order> = accepted(&outcomes).collect();
        let committed = match storage::queue_taken(&mut *conn, &undecided).await {
            Ok(()) => storage::commit_taken(conn).await,
            Err(error) => Err(error),
        };
        match committed {
            Ok(()) => {
                gathered.answer(outcomes);
                Ok(())
            }
            Err(error) => {
                self.abandon(conn, gathered).await;
                Err(error)
            }
        }
    }

    /// Fetches on `conn` what there is to decide (leaving out `in_flight`, the orders of a
    /// round being committed) and decides and seals it, chained to `from`: on a blocking thread
    /// if `off_thread` (a commit is in flight on this thread's runtime), else here. `states`
    /// is the leader's cache; it holds the states the round leaves when this returns.
    ///
    /// With `take_in`, the fetch first takes those orders in, in a transaction it leaves open
    /// for the round's commit (see [`Handoff`]); what became of each is returned beside.
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        conn: &mut PgConnection,
        states: &mut HashMap<AssetKey, AssetState>,
        policy: &ActivePolicy,
        from: Head,
        last_stamp: DateTime<Utc>,
        in_flight: &[uuid::Uuid],
        off_thread: bool,
        take_in: Option<&[NewOrder]>,
    ) -> Result<(Prepared, Option<Vec<Intake>>), StorageError> {
        let started = std::time::Instant::now();
        let mut work = storage::fetch_work(
            &mut *conn,
            self.config.fetch_limit,
            self.config.window > Duration::zero(),
            in_flight,
            take_in,
        )
        .await?;
        let taken = work.taken.take();
        let prepared: Result<Prepared, StorageError> = async {
            // The ledger's time never goes back, even if the database's clock does (a time range
            // of the log is then a seq range). Only the stamp is raised: windows, expiries and
            // waits keep the database's own time.
            let stamp = work.now.max(last_stamp);
            if work.requests {
                return Ok(Prepared::Requests { stamp });
            }
            let horizon = work
                .truncated
                .then(|| work.pending.last().map(|p| p.order.intake_at))
                .flatten();
            metrics::gauge!("regulator_intake_backlog").set(work.pending.len() as f64);
            metrics::gauge!("regulator_policy_active_version").set(policy.version.version);
            let fetched = work.pending.len() + work.taken_in.len();

            let earliest = work
                .pending
                .first()
                .map(|p| (p.order.target.asset.clone(), p.order.intake_at));
            let mut assets: HashMap<AssetKey, RegisteredAsset> = HashMap::new();
            let pending: Vec<Pending<Order>> = work
                .pending
                .into_iter()
                .chain(work.taken_in)
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
                        let mut window = storage::fetch_window(&mut *conn, &key, closes_at).await?;
                        // Rare (a burst past the fetch limit in one window): left out here.
                        let in_flight: HashSet<&uuid::Uuid> = in_flight.iter().collect();
                        window.retain(|p| !in_flight.contains(&p.order.id.as_uuid()));
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
                return Ok(Prepared::Idle(wait));
            }

            // Every asset a round in flight changed is in the cache (it was loaded to be decided),
            // so what is loaded here was committed.
            let missing: Vec<AssetKey> = groups
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| !states.contains_key(k))
                .collect();
            if !missing.is_empty() {
                let loaded = storage::load_states(&mut *conn, &missing).await?;
                states.extend(loaded);
            }
            let fetch_time = started.elapsed();

            let taken: HashMap<AssetKey, AssetState> = groups
                .iter()
                .filter_map(|(k, _)| states.remove_entry(k))
                .collect();
            let input = RoundInput {
                groups,
                assets,
                states: taken,
                engine: Arc::clone(&policy.engine),
                policy_version: policy.version.hash.clone(),
                from,
                now: work.now,
                stamp,
            };
            let output = if off_thread {
                tokio::task::spawn_blocking(move || decide_round(input))
                    .await
                    .map_err(|e| StorageError::Corrupt(format!("deciding a round: {e}")))?
            } else {
                decide_round(input)
            };
            // The states go back to the cache even if sealing failed: the error stops this leader,
            // and its cache with it.
            states.extend(output.states);
            let (records, holds, head) = output.sealed?;
            let changes = output
                .changed
                .into_iter()
                .filter_map(|key| {
                    let after = states.get(&key)?;
                    Some(storage::StateChange {
                        version: after.version(),
                        last_fencing_token: after.last_fencing_token(),
                        next_expiry: after.next_expiry(),
                        key,
                    })
                })
                .collect();
            Ok(Prepared::Decided(Decided {
                records: Arc::new(records),
                holds: Box::new(holds),
                changes,
                head,
                stamp,
                fetched,
                fetch_time,
                decide_time: started.elapsed().saturating_sub(fetch_time),
                taken_in: HashSet::new(),
            }))
        }
        .await;
        prepared.map(|prepared| (prepared, taken))
    }
}

/// What [`Sequencer::prepare_on_lock`] leaves to do.
enum Fresh {
    Idle(StdDuration),
    Requests {
        stamp: DateTime<Utc>,
    },
    /// A round to commit, with the orders it took in and what became of each.
    Decided(Box<Decided>, Option<(Gathered, Vec<Intake>)>),
}

/// The orders intake accepted among `outcomes`.
fn accepted(outcomes: &[Intake]) -> impl Iterator<Item = &Order> {
    outcomes.iter().filter_map(|o| match o {
        Intake::Accepted { order } => Some(&**order),
        _ => None,
    })
}

/// A sequencer that holds the lock: its connection, epoch, view of the head and state cache.
struct Leader {
    /// Holds the advisory lock; every write, and every read while nothing is in flight, runs
    /// on it.
    conn: PgConnection,
    /// Reads the next round while a commit is in flight on `conn`.
    reader: Option<PgConnection>,
    /// The next round, decided while the last committed.
    next: Option<Decided>,
    /// When the lease was last renewed.
    renewed: tokio::time::Instant,
    epoch: i64,
    head: Head,
    /// The states of the assets this leader has touched: valid because only it writes them.
    states: HashMap<AssetKey, AssetState>,
    /// The state map of every target, as of `head`.
    tree: StateTree,
    /// The version the ledger says is active, which decides every order.
    policy: ActivePolicy,
    /// The time of the last record: the next is stamped no earlier.
    last_stamp: DateTime<Utc>,
}

/// A policy version and the engine compiled from it.
#[derive(Clone)]
struct ActivePolicy {
    version: VersionRef,
    engine: Arc<PolicyEngine>,
}
