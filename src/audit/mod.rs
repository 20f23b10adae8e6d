//! Tamper evidence for the decision log (SPEC §7).
//!
//! - This module: checking the ledger in the database against itself (every record's hash,
//!   every link of the chain, the head, and that every decision records the policy version the
//!   ledger had activated); `regulator audit verify` runs it and names the first bad entry.
//! - [`tree`]: the RFC 6962 Merkle tree in Postgres, extended as decisions commit, and proofs.
//! - [`signer`]: the Ed25519 key that signs checkpoints of the tree.
//! - [`notary`]: signs a checkpoint only of a tree it recomputed from the records.
//! - [`anchors`]: the log against the checkpoints anchored on chains.

pub mod anchors;
pub mod notary;
pub mod signer;
pub mod tree;

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use sqlx::PgPool;

use crate::domain::event::ActiveTrail;
use crate::domain::ledger::{check_link, BrokenLink, Head};
use crate::domain::merkle::{leaf_hash, Frontier, Hash};
use crate::domain::state_leaves::{effects_of, Delta, StateTree};
use crate::storage::{self, StorageError};
use signer::verify_checkpoint;

/// Records read at a time: bounded memory for any length of log.
const PAGE: i64 = 10_000;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every record (decision or event) from seq 1 links to the one before, every decision
    /// names the active policy version, and the head names the last record.
    Sound { records: u64, head: Head },
    /// The first record that does not continue the chain, and why.
    Broken { seq: u64, reason: BrokenLink },
    /// The records link, but `ledger_head` names another last record (records were removed
    /// from the end, or the head was altered).
    HeadMismatch { head: Head, last: Head },
}

/// What the check of the checkpoints found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointCheck {
    /// Every checkpoint's root is the root of the log's first `tree_size` records, and of the
    /// stored subtrees; its signature verifies (when a key was given).
    Sound {
        checkpoints: usize,
        signatures_checked: bool,
    },
    /// The first checkpoint that does not hold, and why.
    Bad { tree_size: u64, reason: String },
    /// Not checked: the chain is broken, so the roots cannot be recomputed from it.
    Skipped,
}

/// What the check of the stored Merkle tree (which proofs and new checkpoints are made from)
/// found, at its head and not only at checkpoint sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeCheck {
    /// Every stored leaf is its record's, and the stored subtrees give the records' root at
    /// the tree's size.
    Sound { size: u64 },
    /// The first record whose stored leaf is another (the record was rewritten after the tree
    /// was built), or, with `seq` absent, stored interior nodes that give another root.
    Bad { seq: Option<u64>, reason: String },
    /// Not checked: the chain is broken.
    Skipped,
}

/// Everything `regulator audit verify` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub chain: ChainCheck,
    pub checkpoints: CheckpointCheck,
    pub tree: TreeCheck,
}

/// Recomputes the hash chain from the genesis head, a page at a time.
pub async fn verify_chain(pool: &PgPool) -> Result<ChainCheck, StorageError> {
    Ok(verify(pool, None).await?.chain)
}

/// Recomputes the hash chain and, from the same records, the Merkle root at every checkpoint's
/// size; checks each checkpoint's signature with `key`, if given, and that the stored subtrees
/// (which proofs are made from) give the same root.
pub async fn verify(
    pool: &PgPool,
    key: Option<&VerifyingKey>,
) -> Result<Verification, StorageError> {
    verify_with_progress(pool, key, |_, _| {}).await
}

/// [`verify`], calling `progress(checked, total)` after each page of records: the records
/// checked so far, of the log's length when the pass began (a log that grows meanwhile is
/// checked to its new end, so `checked` may pass `total`).
pub async fn verify_with_progress(
    pool: &PgPool,
    key: Option<&VerifyingKey>,
    progress: impl FnMut(u64, u64),
) -> Result<Verification, StorageError> {
    Ok(verify_with_roots(pool, key, &BTreeSet::new(), progress)
        .await?
        .0)
}

/// [`verify_with_progress`], which also answers the log's root at each of `sizes` that the log
/// reaches, recomputed from the records in the same pass (for comparing with anchored
/// checkpoints). When the chain is broken, only roots before the break are answered.
pub async fn verify_with_roots(
    pool: &PgPool,
    key: Option<&VerifyingKey>,
    sizes: &BTreeSet<u64>,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Verification, BTreeMap<u64, Hash>), StorageError> {
    let mut roots = BTreeMap::new();
    let total = storage::ledger_head(pool).await?.seq;
    progress(0, total);
    let checkpoints = storage::audit::all_checkpoints(pool).await?;
    let mut pending = checkpoints.iter().peekable();
    let mut bad_checkpoint: Option<(u64, String)> = None;
    let mut tree = Frontier::empty();
    let mut check_at_size = |tree: &Frontier, state: &Hash, bad: &mut Option<(u64, String)>| {
        while let Some(cp) = pending.next_if(|cp| cp.tree_size == tree.size()) {
            if bad.is_some() {
                continue;
            }
            let root = tree.root();
            if cp.state_root.is_some_and(|s| s != *state) {
                *bad = Some((
                    cp.tree_size,
                    format!(
                        "the signed state root {} is not the state map of the log's first {} \
                         records ({})",
                        cp.state_root.map(hex::encode).unwrap_or_default(),
                        cp.tree_size,
                        hex::encode(state)
                    ),
                ));
            } else if root != cp.root {
                *bad = Some((
                    cp.tree_size,
                    format!(
                        "the signed root {} is not the root of the log's first {} records ({})",
                        hex::encode(cp.root),
                        cp.tree_size,
                        hex::encode(root)
                    ),
                ));
            } else if let Some(key) = key {
                if !verify_checkpoint(key, cp) {
                    *bad = Some((
                        cp.tree_size,
                        format!(
                            "its signature does not verify with key {}",
                            signer::key_id(key)
                        ),
                    ));
                }
            }
        }
    };
    let mut state = StateTree::default();
    let mut scratch = Delta::default();
    check_at_size(&tree, &state.root(), &mut bad_checkpoint);
    // The stored tree's size when the pass starts; it may grow meanwhile, never change.
    let built = storage::audit::merkle_size(pool).await?;
    let mut built_root = (built == 0).then(|| tree.root());
    let mut bad_leaf: Option<(u64, String)> = None;
    let mut head = Head::GENESIS;
    let mut trail = ActiveTrail::default();
    loop {
        let page = storage::chain_links(pool, head.seq, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let stored_leaves = match bad_leaf {
            None if head.seq < built => {
                storage::audit::stored_leaves(pool, head.seq, built.min(head.seq + PAGE as u64))
                    .await?
            }
            _ => Default::default(),
        };
        for (seq, text, stored) in page {
            let linked = check_link(head, seq, &text, stored)
                .and_then(|next| trail.follow(&text).map(|()| next).map_err(Into::into));
            match linked {
                Ok(next) => head = next,
                Err(reason) => {
                    return Ok((
                        Verification {
                            chain: ChainCheck::Broken { seq, reason },
                            checkpoints: CheckpointCheck::Skipped,
                            tree: TreeCheck::Skipped,
                        },
                        roots,
                    ))
                }
            }
            let replayed =
                effects_of(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|found| match found {
                        Some((asset, effects)) => state
                            .apply(&asset, &effects, &mut scratch)
                            .map_err(|e| e.to_string()),
                        None => Ok(()),
                    });
            scratch.changes.clear();
            if let Err(why) = replayed {
                return Ok((
                    Verification {
                        chain: ChainCheck::Broken {
                            seq,
                            reason: BrokenLink::Unreadable(format!(
                                "its effects do not replay onto the state: {why}"
                            )),
                        },
                        checkpoints: CheckpointCheck::Skipped,
                        tree: TreeCheck::Skipped,
                    },
                    roots,
                ));
            }
            let leaf = leaf_hash(&stored);
            if bad_leaf.is_none() && seq <= built && stored_leaves.get(&seq) != Some(&leaf) {
                bad_leaf = Some((
                    seq,
                    match stored_leaves.get(&seq) {
                        Some(other) => format!(
                            "the stored Merkle tree holds leaf {} for it, not its record's {} \
                             (the record was rewritten after the tree was built)",
                            hex::encode(other),
                            hex::encode(leaf)
                        ),
                        None => "the stored Merkle tree misses its leaf".to_owned(),
                    },
                ));
            }
            tree.push(leaf, &mut Vec::new());
            if sizes.contains(&tree.size()) {
                roots.insert(tree.size(), tree.root());
            }
            if tree.size() == built {
                built_root = Some(tree.root());
            }
            check_at_size(&tree, &state.root(), &mut bad_checkpoint);
        }
        progress(head.seq, total);
    }
    let recorded = storage::ledger_head(pool).await?;
    let chain = if recorded != head {
        ChainCheck::HeadMismatch {
            head: recorded,
            last: head,
        }
    } else {
        ChainCheck::Sound {
            records: head.seq,
            head,
        }
    };
    if let Some(cp) = pending.next() {
        bad_checkpoint.get_or_insert((
            cp.tree_size,
            format!(
                "it covers {} records; the log holds {}",
                cp.tree_size, head.seq
            ),
        ));
    }
    if bad_checkpoint.is_none() {
        // The stored subtrees serve the proofs: they must give the signed roots too.
        for cp in &checkpoints {
            if tree::root_at_if_built(pool, cp.tree_size)
                .await?
                .is_some_and(|r| r != cp.root)
            {
                bad_checkpoint = Some((
                    cp.tree_size,
                    "the stored Merkle subtrees give another root than the signed one".into(),
                ));
                break;
            }
        }
    }
    let tree = match (bad_leaf, built_root) {
        (Some((seq, reason)), _) => TreeCheck::Bad {
            seq: Some(seq),
            reason,
        },
        (None, None) => TreeCheck::Bad {
            seq: None,
            reason: format!(
                "the stored Merkle tree has {built} leaves; the log holds {} records",
                head.seq
            ),
        },
        (None, Some(records_root)) => match tree::root_at_if_built(pool, built).await? {
            Some(stored) if stored != records_root => TreeCheck::Bad {
                seq: None,
                reason: format!(
                    "the stored subtrees of the tree of {built} leaves give root {}, the \
                     records give {}",
                    hex::encode(stored),
                    hex::encode(records_root)
                ),
            },
            _ => TreeCheck::Sound { size: built },
        },
    };
    let checkpoints = match bad_checkpoint {
        Some((tree_size, reason)) => CheckpointCheck::Bad { tree_size, reason },
        None => CheckpointCheck::Sound {
            checkpoints: checkpoints.len(),
            signatures_checked: key.is_some(),
        },
    };
    Ok((
        Verification {
            chain,
            checkpoints,
            tree,
        },
        roots,
    ))
}
