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
//! A fresh process starts from the empty tree, so its first checkpoint recomputes the whole
//! log (reading only seq and hash, 10,000 records a query) and checks every stored checkpoint.

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::signer::CheckpointKey;
use super::tree;
use crate::domain::merkle::{leaf_hash, Frontier, Hash};
use crate::storage::audit::{self as store, Checkpoint};
use crate::storage::StorageError;

/// Records read per query while recomputing.
const PAGE: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    /// The database does not hold the tree the records make: nothing is signed.
    #[error("refusing to sign a checkpoint: {0}")]
    Refused(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The checkpoint signer and what it last verified.
pub struct Notary {
    key: CheckpointKey,
    witnessed: Mutex<Witnessed>,
}

/// The tree of the last checkpoint this process verified (empty at first).
#[derive(Clone)]
struct Witnessed {
    frontier: Frontier,
    /// The root that checkpoint signed: `frontier.root()`, kept to compare with the database.
    checkpoint: Option<Hash>,
}

impl Notary {
    pub fn new(key: CheckpointKey) -> Self {
        Self {
            key,
            witnessed: Mutex::new(Witnessed {
                frontier: Frontier::empty(),
                checkpoint: None,
            }),
        }
    }

    pub fn key(&self) -> &CheckpointKey {
        &self.key
    }

    /// Extends the tree to every committed record and signs a checkpoint of it (or returns the
    /// one already signed at that size), if the stored tree is the one the records make.
    pub async fn publish(&self, pool: &PgPool) -> Result<Checkpoint, NotaryError> {
        // One publication at a time per process: each starts from what the last verified.
        let mut witnessed = self.witnessed.lock().await;
        let mut frontier = witnessed.frontier.clone();
        if let Some(root) = witnessed.checkpoint {
            let size = frontier.size();
            match store::checkpoint_at(pool, size).await? {
                Some(cp) if cp.root == root => {}
                Some(cp) => {
                    return Err(NotaryError::Refused(format!(
                        "the checkpoint of tree size {size}, verified earlier with root {}, now \
                         names root {}",
                        hex::encode(root),
                        hex::encode(cp.root)
                    )))
                }
                None => {
                    return Err(NotaryError::Refused(format!(
                        "the checkpoint of tree size {size} (root {}), verified earlier, is gone \
                         from the database",
                        hex::encode(root)
                    )))
                }
            }
        }
        // The stored tree up to its head, before anything is added to it.
        let built = store::merkle_size(pool).await?;
        advance(pool, &mut frontier, built).await?;
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
        advance(pool, &mut frontier, size).await?;
        if root != frontier.root() {
            return Err(NotaryError::Refused(format!(
                "the extended tree of {size} leaves has root {}, the records give {}",
                hex::encode(root),
                hex::encode(frontier.root())
            )));
        }
        let cp = store::insert_checkpoint(pool, &self.key.sign(size, root, Utc::now())).await?;
        if cp.root != root {
            return Err(NotaryError::Refused(format!(
                "a checkpoint of tree size {size} already names root {}, the records give {}",
                hex::encode(cp.root),
                hex::encode(root)
            )));
        }
        *witnessed = Witnessed {
            frontier,
            checkpoint: Some(root),
        };
        Ok(cp)
    }
}

/// Pushes records `frontier.size() + 1 ..= upto` into `frontier`, checking the root of every
/// checkpoint on the way.
async fn advance(pool: &PgPool, frontier: &mut Frontier, upto: u64) -> Result<(), NotaryError> {
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
    while frontier.size() < upto {
        let limit = PAGE.min(i64::try_from(upto - frontier.size()).unwrap_or(PAGE));
        let leaves = store::leaf_data(pool, frontier.size(), limit).await?;
        if leaves.is_empty() {
            return Err(NotaryError::Refused(format!(
                "the tree has {upto} leaves but the log ends at seq {}",
                frontier.size()
            )));
        }
        for (seq, record_hash) in leaves {
            if seq != frontier.size() + 1 {
                return Err(NotaryError::Refused(format!(
                    "record {seq} follows {} records: the log has a gap",
                    frontier.size()
                )));
            }
            frontier.push(leaf_hash(&record_hash), &mut Vec::new());
            while let Some(cp) = pending.next_if(|cp| cp.tree_size == frontier.size()) {
                if cp.root != frontier.root() {
                    return Err(NotaryError::Refused(format!(
                        "the checkpoint of tree size {} names root {}, the records give {}",
                        cp.tree_size,
                        hex::encode(cp.root),
                        hex::encode(frontier.root())
                    )));
                }
            }
        }
    }
    Ok(())
}
