//! The database's log against the checkpoints anchored on chains: the first anchored
//! checkpoint whose root the log's records do not give is where the log was rewritten (or the
//! anchor was not this log's). Pure: the anchors are read by [`crate::chain::anchor`], the roots
//! recomputed by [`super::verify_with_roots`].

use std::collections::BTreeMap;

use crate::domain::merkle::Hash;

/// What one chain's anchors say of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// Every anchored root is the root of the log's first `tree_size` records.
    Sound {
        anchors: usize,
        /// The largest anchored tree size (none when nothing is anchored).
        latest: Option<u64>,
    },
    /// The smallest anchored tree size whose root the log contradicts: the log gives another
    /// root (`database`), or holds fewer records than the anchor covers (`database` is `None`).
    Contradicted {
        tree_size: u64,
        anchored: Hash,
        database: Option<Hash>,
        records: u64,
    },
}

/// Compares anchored `(tree_size, root)` pairs with `roots`, the log's roots recomputed at (at
/// least) those sizes, for a log of `records` records.
pub fn check(anchored: &[(u64, Hash)], roots: &BTreeMap<u64, Hash>, records: u64) -> AnchorCheck {
    let mut sorted = anchored.to_vec();
    sorted.sort_by_key(|(size, _)| *size);
    for (tree_size, root) in &sorted {
        let database = if *tree_size <= records {
            roots.get(tree_size).copied()
        } else {
            None
        };
        if database != Some(*root) {
            return AnchorCheck::Contradicted {
                tree_size: *tree_size,
                anchored: *root,
                database,
                records,
            };
        }
    }
    AnchorCheck::Sound {
        anchors: sorted.len(),
        latest: sorted.last().map(|(size, _)| *size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_contradicted_anchor_is_named() {
        let roots: BTreeMap<u64, Hash> = [(3, [3; 32]), (7, [7; 32]), (9, [9; 32])].into();
        assert_eq!(
            check(&[(7, [7; 32]), (3, [3; 32])], &roots, 9),
            AnchorCheck::Sound {
                anchors: 2,
                latest: Some(7)
            }
        );
        assert_eq!(
            check(&[], &roots, 9),
            AnchorCheck::Sound {
                anchors: 0,
                latest: None
            }
        );
        assert_eq!(
            check(&[(9, [0; 32]), (3, [3; 32]), (7, [1; 32])], &roots, 9),
            AnchorCheck::Contradicted {
                tree_size: 7,
                anchored: [1; 32],
                database: Some([7; 32]),
                records: 9
            }
        );
        // Records removed from the end: the anchor covers more than the log holds.
        assert_eq!(
            check(&[(3, [3; 32]), (12, [5; 32])], &roots, 9),
            AnchorCheck::Contradicted {
                tree_size: 12,
                anchored: [5; 32],
                database: None,
                records: 9
            }
        );
    }
}
