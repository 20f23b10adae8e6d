//! The RFC 6962 Merkle tree over the decision log: tree heads, inclusion and consistency proofs,
//! and their verification. Pure: no I/O.
//!
//! Leaf `i` of the tree is decision `seq = i + 1`, and its leaf data is the decision's record
//! hash (`SHA-256` of the record text), so a leaf hash is `SHA-256(0x00 || record_hash)`.
//! Interior nodes are `SHA-256(0x01 || left || right)`, and the empty tree's root is
//! `SHA-256("")`: the domain separation of RFC 6962 §2.1, so a leaf can never pass for a node.
//!
//! Proofs are built from *perfect* subtrees (`2^level` leaves starting at a multiple of
//! `2^level`), asked of a [`Nodes`] source. Every range RFC 6962's recursion needs splits into
//! O(log n) of them, so a store that keeps perfect subtree hashes serves any proof with
//! O(log² n) lookups at most, and usually far fewer. [`Leaves`] computes them from the leaves,
//! for tests and small logs.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where proofs get the hashes of perfect subtrees.
pub trait Nodes {
    type Error;
    /// The hash of the `2^level` leaves starting at leaf `index << level`.
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly below `n` (`n >= 2`): RFC 6962's split point `k`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start..end])` for a range that RFC 6962's recursion produces: `start` is a multiple
/// of a power of two at least `end - start`.
fn range_hash<N: Nodes>(nodes: &N, start: u64, end: u64) -> Result<Hash, N::Error> {
    let n = end - start;
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return nodes.perfect(level, start >> level);
    }
    let k = split(n);
    let left = range_hash(nodes, start, start + k)?;
    let right = range_hash(nodes, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(nodes, 0, size)
}

/// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 6962 §2.1.1),
/// nearest the leaf first. `None` if `index >= size`.
pub fn inclusion_proof<N: Nodes>(
    nodes: &N,
    index: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, N::Error> {
    if index >= size {
        return Ok(None);
    }
    let mut path = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk down from the root, collecting the sibling of each subtree containing the leaf.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            path.push(range_hash(nodes, start + k, end)?);
            end = start + k;
        } else {
            path.push(range_hash(nodes, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(Some(path))
}

/// The proof that the tree of the first `old` leaves is a prefix of the tree of the first
/// `new` leaves (RFC 6962 §2.1.2). `None` unless `0 < old <= new`; empty when they are equal.
pub fn consistency_proof<N: Nodes>(
    nodes: &N,
    old: u64,
    new: u64,
) -> Result<Option<Vec<Hash>>, N::Error> {
    if old == 0 || old > new {
        return Ok(None);
    }
    let mut proof = Vec::new();
    // SUBPROOF(m, D[start..end], whole), unrolled.
    let (mut start, mut end, mut m, mut whole) = (0, new, old, true);
    while m != end - start {
        let k = split(end - start);
        if m <= k {
            proof.push(range_hash(nodes, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(nodes, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        proof.push(range_hash(nodes, start, end)?);
    }
    proof.reverse();
    Ok(Some(proof))
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the old tree size {old} is not between 1 and the new size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes for these sizes")]
    WrongLength,
    #[error("the proof leads to another root")]
    RootMismatch,
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof between the tree heads `(old, old_root)` and `(new, new_root)`
/// (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: for each set bit `l` of its size, the perfect subtree of
/// `2^l` leaves that is still waiting for a right sibling. Appending a leaf completes the
/// perfect subtrees it closes, which are the only new nodes; the root is these subtrees folded
/// right to left.
#[derive(Debug, Clone)]
pub struct Frontier {
    size: u64,
    /// By level: the pending left subtree at that level, if the size has that bit.
    pending: Vec<Option<Hash>>,
}

/// A perfect subtree's coordinates and hash: `2^level` leaves starting at `index << level`.
pub type Node = (u32, u64, Hash);

impl Frontier {
    pub fn empty() -> Self {
        Self {
            size: 0,
            pending: Vec::new(),
        }
    }

    /// The perfect subtrees a tree of `size` leaves keeps pending: `(level, index)` for each set
    /// bit of `size`.
    pub fn coordinates(size: u64) -> Vec<(u32, u64)> {
        (0..64)
            .filter(|l| size >> l & 1 == 1)
            .map(|l| (l, (size >> l) - 1))
            .collect()
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its pending subtrees, given in the
    /// order of [`Frontier::coordinates`]; `None` if one is missing.
    pub fn restore(size: u64, mut lookup: impl FnMut(u32, u64) -> Option<Hash>) -> Option<Self> {
        let mut pending = vec![None; 64 - size.leading_zeros() as usize];
        for (level, index) in Self::coordinates(size) {
            pending[level as usize] = Some(lookup(level, index)?);
        }
        Some(Self { size, pending })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; pushes the leaf and every perfect subtree it completes to `out`.
    pub fn push(&mut self, leaf: Hash, out: &mut Vec<Node>) {
        let (mut level, mut index, mut hash) = (0u32, self.size, leaf);
        out.push((0, index, hash));
        while index & 1 == 1 {
            // A right child: its left sibling is the subtree pending at this level.
            let Some(left) = self.pending.get_mut(level as usize).and_then(Option::take) else {
                break;
            };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            out.push((level, index, hash));
        }
        if self.pending.len() <= level as usize {
            self.pending.resize(level as usize + 1, None);
        }
        self.pending[level as usize] = Some(hash);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut root: Option<Hash> = None;
        for subtree in self.pending.iter().flatten() {
            root = Some(match root {
                None => *subtree,
                Some(right) => node_hash(subtree, &right),
            });
        }
        root.unwrap_or_else(empty_root)
    }
}

/// Perfect subtrees computed from the leaf hashes, each time they are asked for.
pub struct Leaves<'a>(pub &'a [Hash]);

impl Nodes for Leaves<'_> {
    type Error = std::convert::Infallible;

    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let width = 1usize << level;
        let start = (index as usize) << level;
        let mut layer: Vec<Hash> = self.0[start..start + width].to_vec();
        while layer.len() > 1 {
            layer = layer
                .chunks(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(layer[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The inputs of the Certificate Transparency reference tests (`merkle_tree_test.cc`),
    /// which every RFC 6962 implementation checks itself against.
    fn vector_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    unhex("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    unhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    unhex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                5,
                8,
                vec![
                    unhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    unhex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    unhex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                3,
                vec![unhex(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                1,
                5,
                vec![
                    unhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    unhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    unhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    unhex("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    unhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    unhex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    unhex("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    unhex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    unhex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    unhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    unhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    #[test]
    fn roots_match_the_reference_vectors() {
        let leaves = vector_leaves();
        assert_eq!(
            root(&Leaves(&leaves), 0).unwrap(),
            unhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(
                root(&Leaves(&leaves), n as u64 + 1).unwrap(),
                unhex(expected),
                "{n}"
            );
        }
    }

    #[test]
    fn inclusion_proofs_match_and_verify_against_the_reference_vectors() {
        let leaves = vector_leaves();
        for (index, size, expected) in inclusion_vectors() {
            let proof = inclusion_proof(&Leaves(&leaves), index, size)
                .unwrap()
                .unwrap();
            assert_eq!(proof, expected, "leaf {index} of {size}");
            let root = unhex(ROOTS[size as usize - 1]);
            verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_and_verify_against_the_reference_vectors() {
        let leaves = vector_leaves();
        for (old, new, expected) in consistency_vectors() {
            let proof = consistency_proof(&Leaves(&leaves), old, new)
                .unwrap()
                .unwrap();
            assert_eq!(proof, expected, "{old} → {new}");
            let (r1, r2) = (
                unhex(ROOTS[old as usize - 1]),
                unhex(ROOTS[new as usize - 1]),
            );
            verify_consistency(old, new, &r1, &r2, &proof).unwrap();
        }
    }

    #[test]
    fn bad_inclusion_proofs_are_rejected() {
        let leaves = vector_leaves();
        let root = unhex(ROOTS[7]);
        let proof = inclusion_proof(&Leaves(&leaves), 5, 8).unwrap().unwrap();
        let leaf = leaves[5];
        // A tampered path.
        let mut tampered = proof.clone();
        tampered[1][0] ^= 1;
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &tampered, &root),
            Err(ProofError::RootMismatch)
        );
        // A wrong index.
        assert!(verify_inclusion(4, 8, &leaf, &proof, &root).is_err());
        assert!(verify_inclusion(8, 8, &leaf, &proof, &root).is_err());
        // A wrong size. (Size 7 has the same path shape as 8 for this leaf, so only the root,
        // which a signed checkpoint binds to its size, tells them apart.)
        assert!(verify_inclusion(5, 6, &leaf, &proof, &root).is_err());
        assert!(verify_inclusion(5, 16, &leaf, &proof, &root).is_err());
        // A path too short or too long.
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &proof[..2], &root),
            Err(ProofError::WrongLength)
        );
        let mut longer = proof.clone();
        longer.push(root);
        assert_eq!(
            verify_inclusion(5, 8, &leaf, &longer, &root),
            Err(ProofError::WrongLength)
        );
        // Another leaf, and a node passed off as a leaf.
        assert!(verify_inclusion(5, 8, &leaves[4], &proof, &root).is_err());
        // The two children of a node offered as the data of one leaf: domain separation gives
        // that leaf another hash than the node's, so the shorter path fails.
        let forged = leaf_hash(&[leaves[4], leaves[5]].concat());
        assert!(verify_inclusion(2, 4, &forged, &proof[1..], &root).is_err());
    }

    #[test]
    fn bad_consistency_proofs_are_rejected() {
        let leaves = vector_leaves();
        let (r6, r8) = (unhex(ROOTS[5]), unhex(ROOTS[7]));
        let proof = consistency_proof(&Leaves(&leaves), 6, 8).unwrap().unwrap();
        let mut tampered = proof.clone();
        tampered[0][31] ^= 0x80;
        assert_eq!(
            verify_consistency(6, 8, &r6, &r8, &tampered),
            Err(ProofError::RootMismatch)
        );
        assert!(verify_consistency(5, 8, &r6, &r8, &proof).is_err());
        assert!(verify_consistency(6, 9, &r6, &r8, &proof).is_err());
        assert!(verify_consistency(4, 8, &r6, &r8, &proof).is_err());
        assert!(verify_consistency(6, 8, &r8, &r8, &proof).is_err());
        assert!(verify_consistency(6, 8, &r6, &r8, &proof[..2]).is_err());
        assert_eq!(
            verify_consistency(8, 6, &r8, &r6, &proof),
            Err(ProofError::SizesOutOfOrder { old: 8, new: 6 })
        );
        assert_eq!(
            verify_consistency(8, 8, &r8, &r6, &[]),
            Err(ProofError::RootMismatch)
        );
    }

    #[test]
    fn a_frontier_grows_the_reference_tree() {
        let leaves = vector_leaves();
        let mut frontier = Frontier::empty();
        let mut nodes = Vec::new();
        assert_eq!(frontier.root(), root(&Leaves(&leaves), 0).unwrap());
        for (n, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf, &mut nodes);
            assert_eq!(frontier.root(), unhex(ROOTS[n]), "{n}");
        }
        // Every perfect subtree was emitted once: 8 leaves, 4 + 2 + 1 nodes above them.
        assert_eq!(nodes.len(), 15);
        for (level, index, hash) in &nodes {
            assert_eq!(*hash, Leaves(&leaves).perfect(*level, *index).unwrap());
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    proptest! {
        /// A frontier restored from stored subtrees at any size continues exactly like one that
        /// never stopped.
        #[test]
        fn a_restored_frontier_continues_the_tree(total in 1usize..300, cut in any::<prop::sample::Index>()) {
            let all = leaves(total);
            let at = cut.index(total + 1);
            let mut whole = Frontier::empty();
            let mut nodes = Vec::new();
            for leaf in &all[..at] {
                whole.push(*leaf, &mut nodes);
            }
            let stored: std::collections::HashMap<(u32, u64), Hash> =
                nodes.iter().map(|(l, i, h)| ((*l, *i), *h)).collect();
            let mut restored =
                Frontier::restore(at as u64, |l, i| stored.get(&(l, i)).copied()).unwrap();
            prop_assert_eq!(restored.size(), whole.size());
            prop_assert_eq!(restored.root(), whole.root());
            let mut rest = Vec::new();
            for leaf in &all[at..] {
                restored.push(*leaf, &mut rest);
            }
            prop_assert_eq!(restored.root(), root(&Leaves(&all), total as u64).unwrap());
        }

        /// Every leaf of every tree up to 200 leaves has a proof that verifies, and only for
        /// its own index.
        #[test]
        fn every_inclusion_proof_verifies(size in 1u64..200, pick in any::<prop::sample::Index>()) {
            let all = leaves(size as usize);
            let index = pick.index(size as usize) as u64;
            let r = root(&Leaves(&all), size).unwrap();
            let proof = inclusion_proof(&Leaves(&all), index, size).unwrap().unwrap();
            prop_assert!(verify_inclusion(index, size, &all[index as usize], &proof, &r).is_ok());
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(other, size, &all[index as usize], &proof, &r).is_err());
            }
        }

        /// Every pair of sizes up to 200 has a consistency proof that verifies, and the proof
        /// does not verify a tree that was rewritten.
        #[test]
        fn every_consistency_proof_verifies(new in 1u64..200, pick in any::<prop::sample::Index>()) {
            let all = leaves(new as usize);
            let old = pick.index(new as usize) as u64 + 1;
            let (r1, r2) = (root(&Leaves(&all), old).unwrap(), root(&Leaves(&all), new).unwrap());
            let proof = consistency_proof(&Leaves(&all), old, new).unwrap().unwrap();
            prop_assert!(verify_consistency(old, new, &r1, &r2, &proof).is_ok());
            let mut rewritten = all.clone();
            rewritten[old as usize - 1] = leaf_hash(b"rewritten");
            let r1_forged = root(&Leaves(&rewritten), old).unwrap();
            prop_assert!(verify_consistency(old, new, &r1_forged, &r2, &proof).is_err());
        }
    }
}
