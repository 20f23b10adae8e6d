//! Signing checkpoints only of a tree the engine has recomputed from the records itself.
//!
//! Extending the stored tree and signing its root would sign whatever the database holds: a
//! superuser who rewrites a suffix of the log, drops the checkpoints that covered it and the
//! stored subtrees beyond some point would have the rewrite built into the tree and signed.
//! So the notary keeps, in memory, the right edge ([`Frontier`]) of the last checkpoint it
//! verified, and before it signs it:
//! 1. checks that this checkpoint still stands in the database, unchanged;
//! 2. pushes the records since then into its own frontier, checking every checkpoint signed
//!    meanwhile (by any replica) and the stored tree at its head against it;
//! 3. extends the stored tree and signs only if its root is the one it recomputed.
//!
//! The same pass replays each record's effects onto the notary's own state map (each record's
//! text checked against its hash first), so the state root it signs is the one the records
//! make, compared with the root the sequencer recorded; the map at each checkpoint it verifies
//! is kept (a root pointer) to serve state proofs and snapshots against that checkpoint.
//!
//! A fresh process starts from the empty tree, so its first checkpoint recomputes the whole
//! log (reading only seq and hash, 10,000 records a query) and checks every stored checkpoint.

use std::collections::BTreeMap;

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::signer::CheckpointKey;
use super::tree;
use crate::domain::merkle::{leaf_hash, Frontier, Hash};
use crate::domain::state_leaves::{effects_of, Delta, Leaf, Overlay, StateTree};
use crate::domain::state_map::StateMap;
use crate::storage::audit::{self as store, Checkpoint};
use crate::storage::{self, state as state_store, StorageError};

/// Records read per query while recomputing.
const PAGE: i64 = 10_000;
/// State maps kept for the checkpoints verified since start; the oldest go first.
pub const RETAINED_VERSIONS: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    /// The database does not hold the tree the records make: nothing is signed.
    #[error("refusing to sign a checkpoint: {0}")]
    Refused(String),
    /// No checkpoint of that tree size was signed.
    #[error("no checkpoint of tree size {0} was signed")]
    NoCheckpoint(u64),
    /// The state at that checkpoint is no longer (or was never) kept by this process.
    #[error(
        "the state at tree size {size} is not kept by this replica (it keeps the state at the \
         checkpoints it verified since it started{oldest}); ask for a later checkpoint"
    )]
    NotRetained { size: u64, oldest: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The checkpoint signer and what it last verified.
pub struct Notary {
    key: CheckpointKey,
    witnessed: Mutex<Witnessed>,
}

/// The tree of the last checkpoint this process verified (empty at first), and its state map.
struct Witnessed {
    frontier: Frontier,
    /// The root that checkpoint signed: `frontier.root()`, kept to compare with the database.
    checkpoint: Option<Hash>,
    state: StateWitness,
}

/// The state map replayed from the records, and its versions at checkpoints.
#[derive(Default)]
struct StateWitness {
    tree: StateTree,
    /// Records replayed: `1..=size`. Ahead of the frontier only after a pass that failed.
    size: u64,
    versions: BTreeMap<u64, StateMap<Leaf>>,
}

impl StateWitness {
    fn retain(&mut self, size: u64) {
        self.versions.insert(size, self.tree.map().clone());
        while self.versions.len() > RETAINED_VERSIONS {
            self.versions.pop_first();
        }
    }
}

impl Notary {
    pub fn new(key: CheckpointKey) -> Self {
        Self {
            key,
            witnessed: Mutex::new(Witnessed {
                frontier: Frontier::empty(),
                checkpoint: None,
                state: StateWitness::default(),
            }),
        }
    }

    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// Extends the tree to every committed record and signs a checkpoint of it and of the
    /// state map (or returns the one already signed at that size), if the stored tree is the
    /// one the records make and the recorded state root the one their effects make.
    pub async fn publish(&self, pool: &PgPool) -> Result<Checkpoint, NotaryError> {
        // One publication at a time per process: each starts from what the last verified.
        let mut witnessed = self.witnessed.lock().await;
        let mut frontier = witnessed.frontier.clone();
        still_signed(pool, &witnessed).await?;
        // The stored tree up to its head, before anything is added to it.
        let built = store::merkle_size(pool).await?;
        advance(pool, &mut frontier, &mut witnessed.state, built).await?;
        if let Some(stored) = tree::root_at_if_built(pool, built).await? {
            if stored != frontier.root() {
                return Err(NotaryError::Refused(format!(
                    "the stored Merkle tree of {built} leaves has root {}, the records give {}",
                    hex::encode(stored),
                    hex::encode(frontier.root())
                )));
            }
        }
        let (size, root) = tree::extend(pool).await?;
        advance(pool, &mut frontier, &mut witnessed.state, size).await?;
        if root != frontier.root() {
            return Err(NotaryError::Refused(format!(
                "the extended tree of {size} leaves has root {}, the records give {}",
                hex::encode(root),
                hex::encode(frontier.root())
            )));
        }
        let state_root = witnessed.state.tree.root();
        let recorded = state_store::root_at(pool, size).await?;
        if recorded != state_root {
            return Err(NotaryError::Refused(format!(
                "the state root recorded at tree size {size} is {}, the records' effects give {}",
                hex::encode(recorded),
                hex::encode(state_root)
            )));
        }
        let cp = store::insert_checkpoint(pool, &self.key.sign(size, root, state_root, Utc::now()))
            .await?;
        if cp.root != root || cp.state_root.is_some_and(|s| s != state_root) {
            return Err(NotaryError::Refused(format!(
                "a checkpoint of tree size {size} already names root {} (state root {}), the \
                 records give {} ({})",
                hex::encode(cp.root),
                cp.state_root
                    .map(hex::encode)
                    .unwrap_or_else(|| "none".into()),
                hex::encode(root),
                hex::encode(state_root)
            )));
        }
        witnessed.state.retain(size);
        witnessed.frontier = frontier;
        witnessed.checkpoint = Some(root);
        Ok(cp)
    }

    /// The state map at the checkpoint of tree size `size`, verified as a publication is
    /// (recomputed from the records, every checkpoint on the way checked), and the checkpoint.
    pub async fn state_at(
        &self,
        pool: &PgPool,
        size: u64,
    ) -> Result<(Checkpoint, StateMap<Leaf>), NotaryError> {
        let cp = store::checkpoint_at(pool, size)
            .await?
            .ok_or(NotaryError::NoCheckpoint(size))?;
        let mut witnessed = self.witnessed.lock().await;
        if let Some(map) = witnessed.state.versions.get(&size) {
            return Ok((cp, map.clone()));
        }
        if size <= witnessed.frontier.size() {
            return Err(NotaryError::NotRetained {
                size,
                oldest: witnessed
                    .state
                    .versions
                    .keys()
                    .next()
                    .map(|s| format!("; the oldest kept is tree size {s}"))
                    .unwrap_or_default(),
            });
        }
        still_signed(pool, &witnessed).await?;
        let mut frontier = witnessed.frontier.clone();
        advance(pool, &mut frontier, &mut witnessed.state, size).await?;
        // `advance` checked this checkpoint's roots on the way, and kept its state map.
        let map = witnessed
            .state
            .versions
            .get(&size)
            .cloned()
            .ok_or_else(|| {
                NotaryError::Refused(format!(
                    "the checkpoint of tree size {size} was not met replaying the records"
                ))
            })?;
        witnessed.frontier = frontier;
        witnessed.checkpoint = Some(cp.root);
        Ok((cp, map))
    }
}

/// The checkpoint this process verified last is still in the database, unchanged.
async fn still_signed(pool: &PgPool, witnessed: &Witnessed) -> Result<(), NotaryError> {
    let Some(root) = witnessed.checkpoint else {
        return Ok(());
    };
    let size = witnessed.frontier.size();
    match store::checkpoint_at(pool, size).await? {
        Some(cp) if cp.root == root => Ok(()),
        Some(cp) => Err(NotaryError::Refused(format!(
            "the checkpoint of tree size {size}, verified earlier with root {}, now names root {}",
            hex::encode(root),
            hex::encode(cp.root)
        ))),
        None => Err(NotaryError::Refused(format!(
            "the checkpoint of tree size {size} (root {}), verified earlier, is gone from the \
             database",
            hex::encode(root)
        ))),
    }
}

/// Pushes records `frontier.size() + 1 ..= upto` into `frontier` and their effects into the
/// state map, checking each record's text against its hash and the roots of every checkpoint
/// on the way.
async fn advance(
    pool: &PgPool,
    frontier: &mut Frontier,
    state: &mut StateWitness,
    upto: u64,
) -> Result<(), NotaryError> {
    let mut checkpoints = Vec::new();
    let mut after = frontier.size();
    loop {
        let page = store::checkpoints_after(pool, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.tree_size;
        let done = after >= upto;
        checkpoints.extend(page.into_iter().filter(|cp| cp.tree_size <= upto));
        if done {
            break;
        }
    }
    let mut pending = checkpoints.iter().peekable();
    let mut scratch = Delta::default();
    // A page's effects are hashed into the map at once, and before any checkpoint is compared.
    let mut overlay = Overlay::default();
    while frontier.size() < upto {
        let limit = PAGE.min(i64::try_from(upto - frontier.size()).unwrap_or(PAGE));
        let records = storage::chain_links(pool, frontier.size(), limit).await?;
        if records.is_empty() {
            return Err(NotaryError::Refused(format!(
                "the tree has {upto} leaves but the log ends at seq {}",
                frontier.size()
            )));
        }
        for (seq, text, record_hash) in records {
            if seq != frontier.size() + 1 {
                return Err(NotaryError::Refused(format!(
                    "record {seq} follows {} records: the log has a gap",
                    frontier.size()
                )));
            }
            if <[u8; 32]>::from(Sha256::digest(text.as_bytes())) != record_hash {
                return Err(NotaryError::Refused(format!(
                    "record {seq}'s text does not hash to its stored hash"
                )));
            }
            frontier.push(leaf_hash(&record_hash), &mut Vec::new());
            if seq == state.size + 1 {
                let changes = effects_of(&text).map_err(|e| {
                    NotaryError::Refused(format!("record {seq} does not parse: {e}"))
                })?;
                if let Some((asset, effects)) = changes {
                    state
                        .tree
                        .stage(&mut overlay, &asset, &effects)
                        .map_err(|e| {
                            NotaryError::Refused(format!(
                                "record {seq}'s effects do not replay: {e}"
                            ))
                        })?;
                }
                state.size = seq;
            }
            while let Some(cp) = pending.next_if(|cp| cp.tree_size == frontier.size()) {
                state.tree.write(std::mem::take(&mut overlay), &mut scratch);
                scratch.changes.clear();
                if cp.root != frontier.root() {
                    return Err(NotaryError::Refused(format!(
                        "the checkpoint of tree size {} names root {}, the records give {}",
                        cp.tree_size,
                        hex::encode(cp.root),
                        hex::encode(frontier.root())
                    )));
                }
                if state.size == cp.tree_size {
                    if let Some(signed) = cp.state_root {
                        if signed != state.tree.root() {
                            return Err(NotaryError::Refused(format!(
                                "the checkpoint of tree size {} names state root {}, the \
                                 records' effects give {}",
                                cp.tree_size,
                                hex::encode(signed),
                                hex::encode(state.tree.root())
                            )));
                        }
                    }
                    state.retain(cp.tree_size);
                }
            }
        }
        state.tree.write(std::mem::take(&mut overlay), &mut scratch);
        scratch.changes.clear();
    }
    Ok(())
}
