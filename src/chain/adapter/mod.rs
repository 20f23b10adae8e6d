//! The chain adapter: follows one chain's decisions from a durable cursor and makes each
//! token's state equal the decided absolute state of every target, level-triggered.
//!
//! The feed is read ahead by a task of its own (long-poll). Each turn: for every target a
//! decision touched that has nothing in flight, read the engine's current state of the asset
//! and the token's state at the latest block, and send only the difference, signed here with
//! nonces assigned ahead ([`super::sender`]), without waiting for earlier receipts; look for the
//! receipts of what is in flight when the head moves; once every transaction of a target's plan
//! is mined, its decisions are applied and the cursor may pass them; once the block holding
//! them is final by the chain's rule, read the token at that final block and report the
//! observation. A periodic resync re-reads every known target the same way, which is what
//! catches an out-of-band change, a reorg that undid a transaction, or a failure worth retrying.
//!
//! A target with transactions in flight is never planned again from a read that does not show
//! them: it waits until they landed (mined, or refused for good by the node). Nothing is
//! computed from events: a restarted adapter waits for the pool to drain of its key, re-reads
//! state and sends nothing that is already in effect; the one call that is not idempotent by
//! state, the forced transfer of a seizure, is recorded by its order id in the state file once
//! mined and never sent twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use alloy::providers::Provider;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::AdapterConfig;
use super::engine::{Engine, FeedPage};
use super::stages::Stages;
use super::{ChainError, Connection};
use crate::domain::observation::Hash32;
use crate::domain::{AssetId, AssetState, HolderAddress, OrderId};
use crate::state_sync::{SyncError, Synced};

mod apply;
mod flights;
mod observe;

use flights::Flight;

/// A chain read in flight, boxed: a list of them is driven a few at a time with
/// `StreamExt::buffered` (unboxed, the borrowing closures defeat the `Send` proof of the spawned
/// adapter).
type Pending<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ChainError>> + Send + 'a>>;

/// A target as the adapter tracks it: an asset, and a holder or the asset as a whole.
pub type TargetKey = (AssetId, Option<HolderAddress>);

/// What survives a restart. Written atomically (temporary file, fsync, rename).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durable {
    /// The feed cursor: every decision up to it has been applied (sent and mined).
    pub cursor: u64,
    /// Every target a decision ever touched, per asset: what a resync re-reads.
    pub targets: BTreeMap<AssetId, BTreeSet<HolderAddress>>,
    /// Seizures whose forced transfer is done, by the seizing order: never sent twice.
    pub seizures: BTreeMap<OrderId, String>,
    /// The last block this adapter took as final, by number and hash: if the hash at that
    /// number changes, a final block was reorged and every target is re-read.
    pub last_final: Option<(u64, String)>,
    /// The signed checkpoint (its tree size) whose verified snapshot this adapter started
    /// from, when it did: the feed before it was never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_from: Option<u64>,
}

impl Durable {
    /// The state file, or a fresh state when there is none.
    pub fn load(path: &Path) -> Result<Self, ChainError> {
        Ok(Self::read(path)?.unwrap_or_default())
    }

    /// The state file; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, ChainError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ChainError::Other(format!("state file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ChainError::Other(format!(
                "state file {}: {e}",
                path.display()
            ))),
        }
    }

    /// A first start's state from `synced`, a verified snapshot of this chain: the cursor at
    /// its checkpoint, and as targets every holder of a configured asset that a hold in force
    /// there covers. A target whose holds were all lifted before the checkpoint is not among
    /// them (docs/reconciliation.md, "Starting from a snapshot").
    pub fn from_snapshot(synced: &Synced, config: &AdapterConfig) -> Self {
        let mut targets: BTreeMap<AssetId, BTreeSet<HolderAddress>> = BTreeMap::new();
        for (key, state) in &synced.states {
            if key.chain != config.chain || config.token_of(&key.asset).is_none() {
                continue;
            }
            for holder in state.holds().filter_map(|h| h.target.holder.as_ref()) {
                if parse_address(holder).is_ok() {
                    targets
                        .entry(key.asset.clone())
                        .or_default()
                        .insert(holder.clone());
                }
            }
        }
        Self {
            cursor: synced.seq,
            targets,
            synced_from: Some(synced.seq),
            ..Self::default()
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ChainError> {
        let err =
            |e: std::io::Error| ChainError::Other(format!("state file {}: {e}", path.display()));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| ChainError::Other(format!("state file: {e}")))?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&text).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// A target whose transactions were sent: observed once their block is final.
#[derive(Debug, Clone)]
struct Awaiting {
    version: u64,
    /// The block at or after which the token shows what was sent.
    at_block: u64,
    tx_hashes: Vec<Hash32>,
}

/// Waiting longer than this for the pool to drain of a previous run's transactions (or of an
/// anchor's) before the first plan is a health fault.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much more each replacement pays, in percent (nodes ask at least 10).
const FEE_BUMP_PERCENT: u128 = 25;
/// Holders read in one JSON-RPC batch (three calls each), and batches in flight at once.
const HOLDERS_PER_BATCH: usize = 100;
const BATCHES_IN_FLIGHT: usize = 8;
/// How often to look at the chain's head while transactions are in flight or wait to become
/// final; receipts and the final block are read only when the head moved, or every
/// `LOOK_ANYWAY` (a reorg can replace blocks without moving the head).
const HEAD_POLL: Duration = Duration::from_millis(100);
const LOOK_ANYWAY: Duration = Duration::from_secs(1);
/// Gas estimates in flight at once while a plan is sent.
const ESTIMATES_IN_FLIGHT: usize = 16;
/// Observations per report.
const REPORT_CHUNK: usize = 1000;
/// The feed's long-poll, in seconds.
const FEED_WAIT: u64 = 5;

pub struct Adapter {
    config: AdapterConfig,
    conn: Connection,
    engine: Engine,
    state_path: PathBuf,
    durable: Durable,
    /// Pages of the feed, read ahead by a task of their own so that a decision is seen while
    /// transactions are in flight.
    feed: Option<mpsc::Receiver<FeedPage>>,
    /// How far the feed has been read; the durable cursor trails it.
    read_to: u64,
    /// Decisions read and not yet applied (their target's plan has not landed), by sequence
    /// number: the cursor stays below the oldest.
    unapplied: BTreeMap<u64, TargetKey>,
    /// Per target, the decisions read since its last plan: what its next plan applies.
    uncovered: HashMap<TargetKey, Vec<u64>>,
    /// Targets to (re-)apply.
    dirty: BTreeSet<TargetKey>,
    /// Targets to observe at the next final block without applying first (resync).
    resync: BTreeSet<TargetKey>,
    flights: BTreeMap<TargetKey, Flight>,
    awaiting: BTreeMap<TargetKey, Awaiting>,
    /// The next nonce to sign with; `None` until the node's pool holds nothing of ours (at
    /// start, after an anchor, after the node refused one of ours, whenever the flights
    /// drain), then the node's count.
    nonce: Option<u64>,
    /// Since when the first plan waits for the pool to drain.
    quiescing_since: Option<Instant>,
    /// The head at the last look, and when that look was.
    head: u64,
    looked: Option<Instant>,
    /// The last failure per target and the version it was for: repeated in observations until
    /// the target converges or its version moves on.
    failures: HashMap<TargetKey, (u64, String)>,
    /// Targets the engine escalated: left alone until a new decision touches them.
    escalated: BTreeSet<TargetKey>,
    next_resync: Instant,
    /// Anchors the engine's checkpoints, when the configuration names a contract.
    anchor: Option<super::anchor::Anchorer>,
    stages: Stages,
    /// How long the last observation round took to read the chain and to report.
    timings: Resync,
}

/// What a resync did: how many targets, how long reading them at the final block took, and
/// reporting them to the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resync {
    pub targets: usize,
    pub read: Duration,
    pub report: Duration,
}

impl Adapter {
    /// Connects to the node and the engine and loads the state file.
    pub async fn open(config: AdapterConfig) -> Result<Self, ChainError> {
        let key = super::read_key(&config.key_file)?;
        let conn = Connection::open(config.rpc_url.as_str(), key, Some(config.chain_id)).await?;
        let token = std::fs::read_to_string(&config.engine.token_file)
            .map_err(|e| {
                ChainError::Other(format!(
                    "engine token file {}: {e}",
                    config.engine.token_file.display()
                ))
            })?
            .trim()
            .to_owned();
        let engine = Engine::new(&config.engine.url, token, config.chain.clone())?;
        let state_path = config.state_file.clone();
        let durable = match Durable::read(&state_path)? {
            Some(durable) => durable,
            None => first_start(&config, &engine, &state_path).await?,
        };
        let anchor = (config.anchor)
            .map(|contract| super::anchor::Anchorer::new(config.chain.clone(), contract));
        let mut adapter = Self {
            config,
            conn,
            engine,
            state_path,
            read_to: durable.cursor,
            durable,
            feed: None,
            unapplied: BTreeMap::new(),
            uncovered: HashMap::new(),
            dirty: BTreeSet::new(),
            resync: BTreeSet::new(),
            flights: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            nonce: None,
            quiescing_since: None,
            head: 0,
            looked: None,
            failures: HashMap::new(),
            escalated: BTreeSet::new(),
            next_resync: Instant::now(),
            anchor,
            stages: Stages::default(),
            timings: Resync::default(),
        };
        // A restart re-applies every known target: level-triggered, it sends only what the
        // chain lacks.
        adapter.dirty = adapter.known_targets();
        Ok(adapter)
    }

    /// Every target the adapter knows: the asset-wide one of each configured asset, and each
    /// holder a decision touched.
    fn known_targets(&self) -> BTreeSet<TargetKey> {
        let mut all: BTreeSet<TargetKey> = self
            .config
            .assets
            .keys()
            .map(|a| (a.clone(), None))
            .collect();
        for (asset, holders) in &self.durable.targets {
            all.extend(holders.iter().map(|h| (asset.clone(), Some(h.clone()))));
        }
        all
    }

    /// Runs until the process ends. A failed turn (node or engine unreachable) is logged and
    /// retried; it never loses the cursor, which only moves after the decisions are applied.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.turn().await {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(error) => {
                    tracing::warn!(chain = %self.config.chain, %error, "adapter turn failed; retrying");
                    metrics::counter!("adapter_turn_failures_total", "chain" => self.config.chain.to_string())
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One resync now, as the periodic one: every known target read at the final block and
    /// reported, nothing applied. Answers how many targets were reported.
    pub async fn resync_now(&mut self) -> Result<Resync, ChainError> {
        self.dirty.clear();
        self.resync = self.known_targets();
        let targets = self.resync.len();
        self.observe().await?;
        Ok(Resync {
            targets,
            read: self.timings.read,
            report: self.timings.report,
        })
    }

    /// The feed reader: long-polls the engine from `after` and hands over every page in order.
    /// It ends when the adapter is gone.
    fn spawn_feed(&self) -> mpsc::Receiver<FeedPage> {
        let (tx, rx) = mpsc::channel(4);
        let engine = self.engine.clone();
        let chain = self.config.chain.clone();
        let mut after = self.read_to;
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            while !tx.is_closed() {
                match engine.decisions(after, FEED_WAIT).await {
                    Ok(page) => {
                        backoff = Duration::from_millis(250);
                        let next = page.next_after.max(after);
                        if (!page.decisions.is_empty() || next > after)
                            && tx.send(page).await.is_err()
                        {
                            return;
                        }
                        after = next;
                    }
                    Err(error) => {
                        tracing::warn!(chain = %chain, %error, "reading the decision feed failed; retrying");
                        metrics::counter!("adapter_turn_failures_total", "chain" => chain.to_string())
                            .increment(1);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        rx
    }

    /// One turn: take what the feed brought, look at what is in flight, send what the dirty
    /// targets lack, move the cursor over what landed, observe what is final.
    pub async fn turn(&mut self) -> Result<(), ChainError> {
        let now = Instant::now();
        if now >= self.next_resync {
            let all = self.known_targets();
            self.resync.extend(all);
            self.next_resync = now + self.config.resync();
        }
        self.wait_for_work().await;
        let head = self
            .conn
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::rpc)?;
        let look = head != self.head || self.looked.is_none_or(|t| t.elapsed() >= LOOK_ANYWAY);
        if look {
            self.head = head;
            self.looked = Some(Instant::now());
        }
        if look && !self.flights.is_empty() {
            self.land().await?;
        }
        self.apply().await?;
        self.advance_cursor()?;
        let resync_ready = self.resync.iter().any(|k| !self.flights.contains_key(k));
        if (look && !self.awaiting.is_empty()) || resync_ready {
            self.observe().await?;
        }
        // Only with nothing to apply or in flight, at most one attempt, never failing the turn.
        if let (true, Some(anchor)) = (
            self.dirty.is_empty() && self.flights.is_empty(),
            self.anchor.as_mut(),
        ) {
            if anchor.turn(&self.conn, &self.engine).await {
                // It sent with the node's nonce: ours is read again before the next plan.
                self.nonce = None;
            }
        }
        Ok(())
    }

    /// Waits for a page of the feed, or until the next look at the chain is due; returns at
    /// once when a target can be planned.
    async fn wait_for_work(&mut self) {
        let free = |k: &TargetKey| !self.flights.contains_key(k);
        let plannable = self
            .dirty
            .iter()
            .any(|k| free(k) && !self.escalated.contains(k))
            && (self.nonce.is_some()
                || (self.flights.is_empty() && self.quiescing_since.is_none()));
        let tick = if plannable || self.resync.iter().any(free) {
            Duration::ZERO
        } else if !self.flights.is_empty()
            || !self.awaiting.is_empty()
            || self.quiescing_since.is_some()
        {
            HEAD_POLL
        } else {
            self.next_resync
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), Duration::from_secs(10))
        };
        if self.feed.as_ref().is_none_or(|f| f.is_closed()) {
            // First turn, or the reader is gone (it never ends by itself): read from where the
            // feed was read to.
            self.feed = Some(self.spawn_feed());
        }
        if self.feed.is_none() {
            self.feed = Some(self.spawn_feed());
        }
        let mut pages = Vec::new();
        if let Some(feed) = self.feed.as_mut() {
            if !tick.is_zero() {
                tokio::select! {
                    page = feed.recv() => pages.extend(page),
                    _ = tokio::time::sleep(tick) => {}
                }
            }
            while let Ok(page) = feed.try_recv() {
                pages.push(page);
            }
        }
        for page in pages {
            self.take(page);
        }
    }

    /// Records a page of the feed: each decision's target is dirty, and the decision waits for
    /// the plan that applies it.
    fn take(&mut self, page: FeedPage) {
        for d in &page.decisions {
            if d.seq <= self.read_to {
                continue;
            }
            let asset = d.target.asset.clone();
            if self.config.token_of(&asset).is_none() {
                continue;
            }
            let key = match &d.target.holder {
                Some(h) => {
                    if parse_address(h).is_err() {
                        tracing::warn!(chain = %self.config.chain, seq = d.seq, holder = %h, "decision on a holder that is not an EVM address; nothing to apply");
                        continue;
                    }
                    self.durable
                        .targets
                        .entry(asset.clone())
                        .or_default()
                        .insert(h.clone());
                    (asset, Some(h.clone()))
                }
                // An asset-wide decision can change every holder's projection only through
                // the pause; the holders' own targets are unaffected.
                None => (asset, None),
            };
            self.escalated.remove(&key);
            self.stages.seen(&key, d.decided_at);
            self.unapplied.insert(d.seq, key.clone());
            self.uncovered.entry(key.clone()).or_default().push(d.seq);
            self.dirty.insert(key);
        }
        self.read_to = self.read_to.max(page.next_after);
    }

    /// Moves the durable cursor to just below the oldest decision not yet applied.
    fn advance_cursor(&mut self) -> Result<(), ChainError> {
        let to = match self.unapplied.keys().next() {
            Some(&oldest) => oldest - 1,
            None => self.read_to,
        };
        if to > self.durable.cursor {
            self.durable.cursor = to;
            self.durable.save(&self.state_path)?;
        }
        Ok(())
    }

    /// The engine's state of each asset among `targets`.
    async fn decided_states(
        &self,
        targets: impl Iterator<Item = &TargetKey>,
    ) -> Result<BTreeMap<AssetId, AssetState>, ChainError> {
        let assets: BTreeSet<AssetId> = targets.map(|(a, _)| a.clone()).collect();
        let mut out = BTreeMap::new();
        for asset in assets {
            let state = self.engine.asset(&asset).await?;
            out.insert(asset, state);
        }
        Ok(out)
    }

    fn token(&self, asset: &AssetId) -> Result<Address, ChainError> {
        self.config
            .token_of(asset)
            .ok_or_else(|| ChainError::Other(format!("asset {asset} has no token configured")))
    }
}

/// The state of an adapter with no state file: from the snapshot at the engine's latest
/// signed checkpoint when the configuration pins the checkpoint key, saved before anything is
/// sent; else (or when the engine has no checkpoint with a state root yet) the whole feed.
/// A snapshot that does not verify stops the start, and no state file is written.
async fn first_start(
    config: &AdapterConfig,
    engine: &Engine,
    state_path: &Path,
) -> Result<Durable, ChainError> {
    let Some(key) = &config.engine.checkpoint_key else {
        return Ok(Durable::default());
    };
    match engine.snapshot(key).await {
        Ok(synced) => {
            let durable = Durable::from_snapshot(&synced, config);
            durable.save(state_path)?;
            tracing::info!(
                chain = %config.chain,
                checkpoint = synced.seq,
                holders = durable.targets.values().map(BTreeSet::len).sum::<usize>(),
                "started from the verified snapshot at a signed checkpoint"
            );
            Ok(durable)
        }
        Err(SyncError::NotAvailable(why)) => {
            tracing::warn!(chain = %config.chain, %why, "no snapshot to start from; reading the whole feed");
            Ok(Durable::default())
        }
        Err(SyncError::Invalid(why)) => Err(ChainError::Other(format!(
            "the engine's snapshot does not verify with engine.checkpoint_key_file ({why}); \
             refusing to start from it (no state file written)"
        ))),
        Err(SyncError::Http(why)) => Err(ChainError::Other(format!(
            "reading the engine's snapshot to start from: {why}"
        ))),
    }
}

fn parse_address(holder: &HolderAddress) -> Result<Address, ChainError> {
    holder
        .as_str()
        .parse()
        .map_err(|_| ChainError::Other(format!("holder {holder} is not an EVM address")))
}

/// Runs the adapter of `config` until the process ends.
pub async fn run(config: AdapterConfig) -> Result<(), ChainError> {
    let adapter = Adapter::open(config).await?;
    adapter.run().await;
    Ok(())
}
