//! The chain adapter: follows one chain's decisions from a durable cursor and makes each
//! token's state equal the decided absolute state of every target, level-triggered.
//!
//! Each turn: read the feed (long-poll); for every target a decision touched, read the engine's
//! current state of the asset and the token's state at the latest block, and send only the
//! difference; then, once the block holding those transactions is final by the chain's rule,
//! read the token at that final block and report the observation. A periodic resync re-reads
//! every known target the same way, which is what catches an out-of-band change, a reorg that
//! undid a transaction, or a failure worth retrying.
//!
//! Nothing is computed from events: a restarted adapter re-reads state and sends nothing that is
//! already in effect; the one call that is not idempotent by state, the forced transfer of a
//! seizure, is recorded by its order id in the state file once mined and never sent twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::BlockId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{AdapterConfig, Finality, FinalityTag};
use super::engine::Engine;
use super::stages::Stages;
use super::token::{self, Action, Fate};
use super::{ChainError, Connection};
use crate::domain::observation::{self, BlockRef, Hash32, Observation, ObservationBatch};
use crate::domain::projection::{self, Decided, Observed, Status};
use crate::domain::{AssetId, AssetState, HolderAddress, OrderId};

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
}

impl Durable {
    pub fn load(path: &Path) -> Result<Self, ChainError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ChainError::Other(format!("state file {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ChainError::Other(format!(
                "state file {}: {e}",
                path.display()
            ))),
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

/// How long to wait for a receipt, and for our in-flight transactions before a round.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Holders read in one JSON-RPC batch (three calls each), and batches in flight at once.
const HOLDERS_PER_BATCH: usize = 100;
const BATCHES_IN_FLIGHT: usize = 8;
/// How often to look at the chain's head while transactions wait to become final.
const FINALITY_POLL: Duration = Duration::from_millis(250);
/// Observations per report.
const REPORT_CHUNK: usize = 1000;

pub struct Adapter {
    config: AdapterConfig,
    conn: Connection,
    engine: Engine,
    state_path: PathBuf,
    durable: Durable,
    /// Targets to (re-)apply this turn.
    dirty: BTreeSet<TargetKey>,
    /// Targets to observe at the next final block without applying first (resync).
    resync: BTreeSet<TargetKey>,
    awaiting: BTreeMap<TargetKey, Awaiting>,
    /// The last failure per target and the version it was for: repeated in observations until
    /// the target converges or its version moves on.
    failures: HashMap<TargetKey, (u64, String)>,
    /// Targets the engine escalated: left alone until a new decision touches them.
    escalated: BTreeSet<TargetKey>,
    next_resync: Instant,
    /// Anchors the engine's checkpoints, when the configuration names a contract.
    anchor: Option<super::anchor::Anchorer>,
    stages: Stages,
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
        let durable = Durable::load(&state_path)?;
        let anchor = (config.anchor)
            .map(|contract| super::anchor::Anchorer::new(config.chain.clone(), contract));
        let mut adapter = Self {
            config,
            conn,
            engine,
            state_path,
            durable,
            dirty: BTreeSet::new(),
            resync: BTreeSet::new(),
            awaiting: BTreeMap::new(),
            failures: HashMap::new(),
            escalated: BTreeSet::new(),
            next_resync: Instant::now(),
            anchor,
            stages: Stages::default(),
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
    pub async fn resync_now(&mut self) -> Result<usize, ChainError> {
        self.dirty.clear();
        self.resync = self.known_targets();
        let n = self.resync.len();
        self.observe().await?;
        Ok(n)
    }

    /// One turn: feed, apply, observe.
    pub async fn turn(&mut self) -> Result<(), ChainError> {
        let now = Instant::now();
        if now >= self.next_resync {
            let all = self.known_targets();
            self.resync.extend(all);
            self.next_resync = now + self.config.resync();
        }
        let wait = if !self.dirty.is_empty() || !self.resync.is_empty() {
            0
        } else if !self.awaiting.is_empty() {
            // Waiting for blocks to become final: the feed is only glanced at, and the head is
            // looked at every `FINALITY_POLL` (below), so a final block is seen within a
            // quarter second rather than at the end of a one-second long-poll.
            0
        } else {
            self.next_resync
                .saturating_duration_since(now)
                .as_secs()
                .clamp(1, 10)
        };
        let page = self.engine.decisions(self.durable.cursor, wait).await?;
        if page.decisions.is_empty()
            && self.dirty.is_empty()
            && self.resync.is_empty()
            && !self.awaiting.is_empty()
        {
            tokio::time::sleep(FINALITY_POLL).await;
        }
        for d in &page.decisions {
            let asset = d.target.asset.clone();
            if self.config.token_of(&asset).is_none() {
                continue;
            }
            if let Some(h) = &d.target.holder {
                if parse_address(h).is_err() {
                    tracing::warn!(chain = %self.config.chain, seq = d.seq, holder = %h, "decision on a holder that is not an EVM address; nothing to apply");
                    continue;
                }
                self.durable
                    .targets
                    .entry(asset.clone())
                    .or_default()
                    .insert(h.clone());
                let key = (asset.clone(), Some(h.clone()));
                self.escalated.remove(&key);
                self.stages.seen(&key, d.decided_at);
                self.dirty.insert(key);
            } else {
                // An asset-wide decision can change every holder's projection only through the
                // pause; the holders' own targets are unaffected.
                self.escalated.remove(&(asset.clone(), None));
                self.stages.seen(&(asset.clone(), None), d.decided_at);
                self.dirty.insert((asset.clone(), None));
            }
        }
        if !self.dirty.is_empty() {
            self.apply().await?;
        }
        if page.next_after > self.durable.cursor {
            self.durable.cursor = page.next_after;
            self.durable.save(&self.state_path)?;
        }
        if !self.awaiting.is_empty() || !self.resync.is_empty() {
            self.observe().await?;
        }
        // Only with nothing left to apply, at most one attempt, and never failing the turn.
        if let (true, Some(anchor)) = (self.dirty.is_empty(), self.anchor.as_mut()) {
            anchor.turn(&self.conn, &self.engine).await;
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

    async fn read(&self, key: &TargetKey, block: BlockId) -> Result<Observed, ChainError> {
        let token = self.token(&key.0)?;
        match &key.1 {
            None => token::observe_asset(&self.conn, token, block).await,
            Some(holder) => {
                token::observe_holder(&self.conn, token, parse_address(holder)?, block).await
            }
        }
    }

    /// Reads `keys` at `block`, in their order: holders of one asset in JSON-RPC batches of
    /// `HOLDERS_PER_BATCH`, `BATCHES_IN_FLIGHT` at a time; asset-wide targets one call each.
    async fn read_all(
        &self,
        keys: &[TargetKey],
        block: BlockId,
    ) -> Result<Vec<Observed>, ChainError> {
        let mut out: Vec<Option<Observed>> = vec![None; keys.len()];
        let mut holders: BTreeMap<&AssetId, Vec<(usize, Address)>> = BTreeMap::new();
        let mut assets = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match &key.1 {
                Some(h) => holders
                    .entry(&key.0)
                    .or_default()
                    .push((i, parse_address(h)?)),
                None => assets.push(i),
            }
        }
        for i in assets {
            out[i] = Some(self.read(&keys[i], block).await?);
        }
        let mut jobs = Vec::new();
        for (asset, list) in &holders {
            let token = self.token(asset)?;
            for chunk in list.chunks(HOLDERS_PER_BATCH) {
                jobs.push((token, chunk));
            }
        }
        for wave in jobs.chunks(BATCHES_IN_FLIGHT) {
            let reads = wave.iter().map(|(token, chunk)| {
                let addresses: Vec<Address> = chunk.iter().map(|(_, a)| *a).collect();
                async move { token::observe_holders(&self.conn, *token, &addresses, block).await }
            });
            let answers = futures::future::try_join_all(reads).await?;
            for ((_, chunk), answer) in wave.iter().zip(answers) {
                for ((i, _), seen) in chunk.iter().zip(answer) {
                    out[*i] = Some(seen);
                }
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| ChainError::Other("a target was not read".into())))
            .collect()
    }

    /// Sends what the dirty targets lack and waits for it to be mined.
    async fn apply(&mut self) -> Result<(), ChainError> {
        let mut nonce = token::quiesce(&self.conn, QUIESCE_TIMEOUT).await?;
        let keys: Vec<TargetKey> = self
            .dirty
            .iter()
            .filter(|k| !self.escalated.contains(*k))
            .cloned()
            .collect();
        let states = self.decided_states(keys.iter()).await?;
        let latest = BlockId::Number(BlockNumberOrTag::Latest);
        let observed = self.read_all(&keys, latest).await?;
        let head = self
            .conn
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::rpc)?;

        struct Sent {
            key: TargetKey,
            hash: alloy::primitives::TxHash,
            seizure: Option<OrderId>,
        }
        let mut sent: Vec<Sent> = Vec::new();
        let mut planned: Vec<(TargetKey, u64, Option<String>)> = Vec::new();
        for (key, now) in keys.iter().zip(observed) {
            let Some(state) = states.get(&key.0) else {
                continue;
            };
            let decided = projection::decide(state, key.1.as_ref());
            let custody = key
                .1
                .as_ref()
                .and_then(|h| projection::custody_hold(state, h));
            // A seized balance found empty is a seizure done, whoever moved it.
            if let (Some(hold), Observed::Holder { balance, .. }) = (custody, &now) {
                if balance.0 == 0 && !self.durable.seizures.contains_key(&hold.order_id) {
                    self.durable
                        .seizures
                        .insert(hold.order_id, "found empty".into());
                    self.durable.save(&self.state_path)?;
                }
            }
            let done = custody.is_some_and(|h| self.durable.seizures.contains_key(&h.order_id));
            let wallet = custody.and_then(|h| self.config.custody.get(&h.issuer).copied());
            let mut failure = None;
            match token::plan(&decided, &now, wallet, done) {
                Err(why) => failure = Some(why),
                Ok(actions) => {
                    let token = self.token(&key.0)?;
                    let holder = match &key.1 {
                        Some(h) => parse_address(h)?,
                        None => Address::ZERO,
                    };
                    for action in actions {
                        match token::send(&self.conn, token, action.calldata(holder), nonce).await {
                            Ok(hash) => {
                                nonce += 1;
                                tracing::info!(chain = %self.config.chain, asset = %key.0, holder = ?key.1, call = action.name(), %hash, "sent");
                                metrics::counter!("adapter_transactions_total", "chain" => self.config.chain.to_string(), "call" => action.name())
                                    .increment(1);
                                sent.push(Sent {
                                    key: key.clone(),
                                    hash,
                                    seizure: matches!(action, Action::ForcedTransfer { .. })
                                        .then(|| custody.map(|h| h.order_id))
                                        .flatten(),
                                });
                            }
                            Err(ChainError::Reverted(why)) => {
                                failure = Some(format!("{}: {why}", action.name()));
                                break;
                            }
                            Err(other) => return Err(other),
                        }
                    }
                }
            }
            self.stages.sent(key);
            planned.push((key.clone(), state.version(), failure));
        }

        let mut mined_at: HashMap<TargetKey, (u64, Vec<Hash32>, Option<String>)> = HashMap::new();
        for s in &sent {
            let entry = mined_at
                .entry(s.key.clone())
                .or_insert((head, vec![], None));
            if let Ok(h) = s.hash.to_string().parse() {
                entry.1.push(h);
            }
            match token::receipt(&self.conn, s.hash, RECEIPT_TIMEOUT).await? {
                Fate::Mined(m) if m.success => {
                    entry.0 = entry.0.max(m.block);
                    if let Some(order) = s.seizure {
                        self.durable.seizures.insert(order, s.hash.to_string());
                        self.durable.save(&self.state_path)?;
                    }
                }
                Fate::Mined(m) => {
                    entry.0 = entry.0.max(m.block);
                    entry.2 = Some(format!("transaction {} reverted", m.hash));
                }
                Fate::Dropped => {
                    // Reorged out before we read its receipt (or evicted): nothing of it is in
                    // effect. The turn ends here with the targets still dirty and the cursor
                    // where it was; the next turn re-reads the chain and sends what is missing.
                    metrics::counter!("adapter_dropped_transactions_total", "chain" => self.config.chain.to_string())
                        .increment(1);
                    return Err(ChainError::Other(format!(
                        "transaction {} was dropped by the node before it was mined; re-reading the chain",
                        s.hash
                    )));
                }
                Fate::Pending => {
                    // Not mined in time: the next round re-reads the chain after our nonce
                    // settles, and sends again only what is still missing.
                    return Err(ChainError::Other(format!(
                        "no receipt for {} within {RECEIPT_TIMEOUT:?}",
                        s.hash
                    )));
                }
            }
        }
        for (key, version, failure) in planned {
            self.stages.mined(&key);
            let (at_block, tx_hashes, mined_failure) =
                mined_at.remove(&key).unwrap_or((head, vec![], None));
            let failure = failure.or(mined_failure);
            match &failure {
                Some(why) => {
                    tracing::warn!(chain = %self.config.chain, asset = %key.0, holder = ?key.1, %why, "could not apply");
                    self.failures.insert(key.clone(), (version, why.clone()));
                }
                None => {
                    self.failures.remove(&key);
                }
            }
            self.resync.remove(&key);
            self.awaiting.insert(
                key,
                Awaiting {
                    version,
                    at_block,
                    tx_hashes,
                },
            );
        }
        self.dirty.clear();
        Ok(())
    }

    /// The final block by the chain's rule.
    async fn final_block(&self) -> Result<(u64, B256), ChainError> {
        let tag = match self.config.finality {
            Finality::Confirmations { confirmations } => {
                let head = self
                    .conn
                    .provider
                    .get_block_number()
                    .await
                    .map_err(ChainError::rpc)?;
                BlockNumberOrTag::Number(head.saturating_sub(confirmations))
            }
            Finality::Tag {
                tag: FinalityTag::Finalized,
            } => BlockNumberOrTag::Finalized,
            Finality::Tag {
                tag: FinalityTag::Safe,
            } => BlockNumberOrTag::Safe,
        };
        let block = self
            .conn
            .provider
            .get_block_by_number(tag)
            .await
            .map_err(ChainError::rpc)?
            .ok_or_else(|| ChainError::Other(format!("the node has no {tag} block")))?;
        Ok((block.header.number, block.header.hash))
    }

    /// The hash of the canonical block at `number`, if the node has one.
    async fn hash_at(&self, number: u64) -> Result<Option<B256>, ChainError> {
        Ok(self
            .conn
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(ChainError::rpc)?
            .map(|b| b.header.hash))
    }

    /// Reports the targets whose transactions are final, and the resync's, read at the final
    /// block; re-applies what the chain does not show.
    async fn observe(&mut self) -> Result<(), ChainError> {
        let (number, hash) = self.final_block().await?;
        if let Some((last_number, last_hash)) = self.durable.last_final.clone() {
            if number < last_number {
                // A node that is behind is a health fault: it must not look like a reorg.
                return Err(ChainError::Other(format!(
                    "the node's final block {number} is behind {last_number}, seen before"
                )));
            }
            let now_at_last = self.hash_at(last_number).await?;
            if now_at_last.map(|h| h.to_string()) != Some(last_hash.clone()) {
                tracing::warn!(chain = %self.config.chain, block = last_number, "a final block was reorged; re-reading every target");
                metrics::counter!("adapter_reorgs_total", "chain" => self.config.chain.to_string())
                    .increment(1);
                self.dirty.extend(self.known_targets());
            }
        }
        let ready: Vec<TargetKey> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.at_block <= number)
            .map(|(k, _)| k.clone())
            .chain(
                self.resync
                    .iter()
                    .filter(|k| !self.awaiting.contains_key(*k))
                    .cloned(),
            )
            .collect();
        if ready.is_empty() {
            self.durable.last_final = Some((number, hash.to_string()));
            return Ok(());
        }
        for key in &ready {
            if self.awaiting.contains_key(key) {
                self.stages.finalized(key);
            }
        }
        let states = self.decided_states(ready.iter()).await?;
        let at = BlockId::hash(hash);
        let observed = self.read_all(&ready, at).await?;
        let block = BlockRef {
            number,
            hash: hash
                .to_string()
                .parse()
                .map_err(|e| ChainError::Other(format!("block hash: {e}")))?,
        };
        let mut reports = Vec::with_capacity(ready.len());
        let mut differs: BTreeSet<TargetKey> = BTreeSet::new();
        for (key, seen) in ready.iter().zip(observed) {
            let Some(state) = states.get(&key.0) else {
                continue;
            };
            let awaiting = self.awaiting.get(key);
            let version = awaiting.map_or(state.version(), |a| a.version);
            let decided: Decided = projection::decide(state, key.1.as_ref());
            if !projection::differences(&decided, &seen).is_empty() {
                differs.insert(key.clone());
            }
            let failure = match self.failures.get(key) {
                Some((v, why)) if *v == version && differs.contains(key) => Some(why.clone()),
                _ => None,
            };
            reports.push(Observation {
                asset: key.0.clone(),
                holder: key.1.clone(),
                observed: seen,
                block: block.clone(),
                finality: observation::Finality::Final,
                version,
                tx_hashes: awaiting.map(|a| a.tx_hashes.clone()).unwrap_or_default(),
                failure,
            });
        }
        let mut verdicts = Vec::new();
        for chunk in reports.chunks(REPORT_CHUNK) {
            verdicts.extend(
                self.engine
                    .report(&ObservationBatch {
                        observations: chunk.to_vec(),
                    })
                    .await?,
            );
        }
        for v in verdicts {
            if v.status == Status::Escalated {
                self.escalated.insert((v.asset, v.holder));
            }
        }
        for key in ready {
            let from_resync = !self.awaiting.contains_key(&key);
            if !from_resync && !differs.contains(&key) {
                self.stages.reported(&self.config.chain, &key);
            } else if self.failures.contains_key(&key) || self.escalated.contains(&key) {
                self.stages.forget(&key);
            }
            self.awaiting.remove(&key);
            self.resync.remove(&key);
            // A failure is retried by the next resync, not in a tight loop.
            let failed_now = !from_resync && self.failures.contains_key(&key);
            if differs.contains(&key) && !failed_now && !self.escalated.contains(&key) {
                self.dirty.insert(key);
            }
        }
        self.durable.last_final = Some((number, hash.to_string()));
        Ok(())
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
