//! The Merkle tree in Postgres: extending it as decisions are committed, and proving from it.
//!
//! Building is serialized by a row lock on `merkle_head`, so any replica may extend the tree;
//! each batch of leaves commits its new subtrees and the new size together.

use std::cell::RefCell;
use std::collections::HashMap;

use sqlx::PgPool;

use crate::domain::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, Frontier, Hash, Nodes,
};
use crate::storage::audit as store;
use crate::storage::{corrupt, StorageError};

/// Leaves added per transaction.
const BATCH: i64 = 10_000;

/// Adds every committed decision not yet in the tree; returns the tree's size and root.
pub async fn extend(pool: &PgPool) -> Result<(u64, Hash), StorageError> {
    loop {
        let mut tx = pool.begin().await?;
        let size = store::lock_merkle(&mut tx).await?;
        let coordinates = Frontier::coordinates(size);
        let stored = store::nodes(&mut *tx, &coordinates).await?;
        let mut frontier = Frontier::restore(size, |l, i| stored.get(&(l, i)).copied())
            .ok_or_else(|| corrupt(format!("the Merkle tree of {size} leaves misses a node")))?;
        let leaves = store::leaf_data(&mut *tx, size, BATCH).await?;
        if leaves.is_empty() {
            tx.commit().await?;
            return Ok((size, frontier.root()));
        }
        let mut nodes = Vec::with_capacity(leaves.len() * 2);
        for (seq, record_hash) in &leaves {
            if *seq != frontier.size() + 1 {
                return Err(corrupt(format!(
                    "decision {} follows {} leaves: the log has a gap",
                    seq,
                    frontier.size()
                )));
            }
            frontier.push(leaf_hash(record_hash), &mut nodes);
        }
        store::append_nodes(&mut tx, &nodes, frontier.size()).await?;
        tx.commit().await?;
    }
}

/// The subtrees a proof reads. A first pass only records which it needs (answering with
/// placeholders); they are then fetched in one query and the proof is made for real. Which
/// subtrees a proof needs depends only on the sizes, never on the hashes.
#[derive(Default)]
struct Subtrees {
    needed: RefCell<Vec<(u32, u64)>>,
    fetched: Option<HashMap<(u32, u64), Hash>>,
}

impl Nodes for Subtrees {
    type Error = StorageError;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, StorageError> {
        match &self.fetched {
            None => {
                self.needed.borrow_mut().push((level, index));
                Ok([0; 32])
            }
            Some(fetched) => fetched
                .get(&(level, index))
                .copied()
                .ok_or_else(|| corrupt(format!("merkle node ({level}, {index}) is missing"))),
        }
    }
}

async fn with_nodes<T>(
    pool: &PgPool,
    prove: impl Fn(&Subtrees) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut subtrees = Subtrees::default();
    prove(&subtrees)?;
    let needed = subtrees.needed.take();
    subtrees.fetched = Some(store::nodes(pool, &needed).await?);
    prove(&subtrees)
}

/// Why a proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProofRequestError {
    #[error("the tree has {built} leaves so far; {asked} is beyond it")]
    BeyondTree { asked: u64, built: u64 },
    #[error("decision {seq} is not in a tree of {size} leaves")]
    NotInTree { seq: u64, size: u64 },
    #[error("a consistency proof needs 1 <= from <= to, not {from} and {to}")]
    BadRange { from: u64, to: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The audit path of decision `seq` in the tree of `size` leaves.
pub async fn prove_inclusion(
    pool: &PgPool,
    seq: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofRequestError> {
    let built = store::merkle_size(pool).await?;
    if size > built {
        return Err(ProofRequestError::BeyondTree { asked: size, built });
    }
    if seq == 0 || seq > size {
        return Err(ProofRequestError::NotInTree { seq, size });
    }
    let path = with_nodes(pool, |nodes| {
        Ok(inclusion_proof(nodes, seq - 1, size)?.unwrap_or_default())
    })
    .await?;
    Ok(path)
}

/// The proof that the tree of `from` leaves is a prefix of the tree of `to` leaves.
pub async fn prove_consistency(
    pool: &PgPool,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, ProofRequestError> {
    let built = store::merkle_size(pool).await?;
    if to > built {
        return Err(ProofRequestError::BeyondTree { asked: to, built });
    }
    if from == 0 || from > to {
        return Err(ProofRequestError::BadRange { from, to });
    }
    let proof = with_nodes(pool, |nodes| {
        Ok(consistency_proof(nodes, from, to)?.unwrap_or_default())
    })
    .await?;
    Ok(proof)
}

/// The root of the tree of `size` leaves from the stored subtrees, if they reach that far.
pub async fn root_at_if_built(pool: &PgPool, size: u64) -> Result<Option<Hash>, StorageError> {
    if size > store::merkle_size(pool).await? {
        return Ok(None);
    }
    with_nodes(pool, |nodes| root(nodes, size)).await.map(Some)
}
