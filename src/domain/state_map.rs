//! A binary sparse Merkle tree over 256-bit keys, persistent (every version is a root pointer).
//!
//! The hashing, which an independent verifier re-implements from `docs/audit.md`:
//! - an empty subtree hashes to 32 zero bytes;
//! - a subtree holding exactly one leaf hashes to that leaf's hash,
//!   `SHA-256(0x00 || key || value_hash)`, at whatever depth it sits (the single-leaf shortcut
//!   of Diem's and Aptos' trees, so a tree of n leaves is about log2(n) deep);
//! - any other subtree hashes to `SHA-256(0x01 || left || right)`.
//!
//! Key bit `d` (most significant bit of byte 0 first) chooses the side at depth `d`: 0 left.
//! The tree is canonical: its root depends only on the set of (key, value hash), never on the
//! order they were inserted in. Nodes are shared (`Arc`), so a clone is a cheap version.

use std::sync::Arc;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The hash of an empty subtree, and the root of an empty map.
pub const EMPTY: Hash = [0; 32];

/// Most siblings a proof can carry: one per key bit.
pub const MAX_DEPTH: usize = 256;

pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(key);
    h.update(value_hash);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Bit `depth` of `key`, most significant first.
pub fn bit(key: &Hash, depth: usize) -> bool {
    (key[depth / 8] >> (7 - depth % 8)) & 1 == 1
}

struct Leaf<V> {
    key: Hash,
    value_hash: Hash,
    hash: Hash,
    value: V,
}

impl<V> Leaf<V> {
    fn new(key: Hash, value_hash: Hash, value: V) -> Arc<Self> {
        Arc::new(Leaf {
            hash: leaf_hash(&key, &value_hash),
            key,
            value_hash,
            value,
        })
    }
}

/// `items`, sorted by `key` (stably) with only the last of equal keys kept.
fn sorted_last_wins<T>(mut items: Vec<T>, key: impl Fn(&T) -> Hash) -> Vec<T> {
    items.sort_by_key(|i| key(i));
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        match kept.last_mut() {
            Some(last) if key(last) == key(&item) => *last = item,
            _ => kept.push(item),
        }
    }
    kept
}

struct Internal<V> {
    hash: Hash,
    left: Option<Node<V>>,
    right: Option<Node<V>>,
}

enum Node<V> {
    Leaf(Arc<Leaf<V>>),
    Internal(Arc<Internal<V>>),
}

impl<V> Clone for Node<V> {
    fn clone(&self) -> Self {
        match self {
            Node::Leaf(l) => Node::Leaf(Arc::clone(l)),
            Node::Internal(i) => Node::Internal(Arc::clone(i)),
        }
    }
}

impl<V> Node<V> {
    fn hash(&self) -> &Hash {
        match self {
            Node::Leaf(l) => &l.hash,
            Node::Internal(i) => &i.hash,
        }
    }
}

fn hash_of<V>(node: &Option<Node<V>>) -> Hash {
    node.as_ref().map_or(EMPTY, |n| *n.hash())
}

fn internal<V>(left: Option<Node<V>>, right: Option<Node<V>>) -> Node<V> {
    Node::Internal(Arc::new(Internal {
        hash: node_hash(&hash_of(&left), &hash_of(&right)),
        left,
        right,
    }))
}

/// A subtree with `left` and `right` children in canonical form: a lone leaf rises.
fn canonical<V>(left: Option<Node<V>>, right: Option<Node<V>>) -> Option<Node<V>> {
    match (left, right) {
        (None, None) => None,
        (Some(Node::Leaf(l)), None) | (None, Some(Node::Leaf(l))) => Some(Node::Leaf(l)),
        (left, right) => Some(internal(left, right)),
    }
}

/// The subtree at `depth` holding the two distinct leaves `a` and `b`.
fn split<V>(a: Arc<Leaf<V>>, b: Arc<Leaf<V>>, depth: usize) -> Node<V> {
    let (ba, bb) = (bit(&a.key, depth), bit(&b.key, depth));
    if ba == bb {
        let child = Some(split(a, b, depth + 1));
        if ba {
            internal(None, child)
        } else {
            internal(child, None)
        }
    } else if ba {
        internal(Some(Node::Leaf(b)), Some(Node::Leaf(a)))
    } else {
        internal(Some(Node::Leaf(a)), Some(Node::Leaf(b)))
    }
}

fn insert_at<V>(
    node: Option<&Node<V>>,
    depth: usize,
    leaf: Arc<Leaf<V>>,
) -> (Node<V>, Option<Hash>) {
    match node {
        None => (Node::Leaf(leaf), None),
        Some(Node::Leaf(l)) if l.key == leaf.key => (Node::Leaf(leaf), Some(l.value_hash)),
        Some(Node::Leaf(l)) => (split(Arc::clone(l), leaf, depth), None),
        Some(Node::Internal(i)) => {
            if bit(&leaf.key, depth) {
                let (right, old) = insert_at(i.right.as_ref(), depth + 1, leaf);
                (internal(i.left.clone(), Some(right)), old)
            } else {
                let (left, old) = insert_at(i.left.as_ref(), depth + 1, leaf);
                (internal(Some(left), i.right.clone()), old)
            }
        }
    }
}

/// `None` if `key` is not in the subtree; else the subtree without it and the removed value hash.
fn remove_at<V>(node: &Node<V>, depth: usize, key: &Hash) -> Option<(Option<Node<V>>, Hash)> {
    match node {
        Node::Leaf(l) => (l.key == *key).then_some((None, l.value_hash)),
        Node::Internal(i) => {
            if bit(key, depth) {
                let (right, old) = remove_at(i.right.as_ref()?, depth + 1, key)?;
                Some((canonical(i.left.clone(), right), old))
            } else {
                let (left, old) = remove_at(i.left.as_ref()?, depth + 1, key)?;
                Some((canonical(left, i.right.clone()), old))
            }
        }
    }
}

/// The subtree at `depth` of `leaves`, sorted by key without duplicates.
fn build<V>(leaves: &mut [Option<Arc<Leaf<V>>>], depth: usize) -> Option<Node<V>> {
    match leaves.len() {
        0 => None,
        1 => leaves[0].take().map(Node::Leaf),
        _ => {
            let mid = leaves.partition_point(|l| l.as_ref().is_some_and(|l| !bit(&l.key, depth)));
            let (left, right) = leaves.split_at_mut(mid);
            Some(internal(build(left, depth + 1), build(right, depth + 1)))
        }
    }
}

/// A key's new leaf, or `None`: removed.
type Change<V> = (Hash, Option<Arc<Leaf<V>>>);

/// The subtree at `depth` after `changes` (sorted by key, each key once, all on this subtree's
/// path). Only the nodes above a change are rebuilt, each once however many changes lie below
/// it; `grown` counts leaves added minus leaves removed.
fn update_at<V>(
    node: Option<&Node<V>>,
    depth: usize,
    changes: &mut [Change<V>],
    grown: &mut isize,
) -> Option<Node<V>> {
    if changes.is_empty() {
        return node.cloned();
    }
    match node {
        Some(Node::Internal(i)) => {
            let mid = changes.partition_point(|(k, _)| !bit(k, depth));
            let (left, right) = changes.split_at_mut(mid);
            let left = update_at(i.left.as_ref(), depth + 1, left, grown);
            let right = update_at(i.right.as_ref(), depth + 1, right, grown);
            canonical(left, right)
        }
        // An empty subtree or a lone leaf: what is left in it is that leaf (unless a change
        // names its key) and the changes' new leaves, built at once.
        _ => {
            let mut existing = match node {
                Some(Node::Leaf(l)) => Some(Arc::clone(l)),
                _ => None,
            };
            let mut leaves: Vec<Option<Arc<Leaf<V>>>> = Vec::with_capacity(changes.len() + 1);
            for (key, leaf) in changes.iter_mut() {
                if let Some(e) = existing.take_if(|e| e.key < *key) {
                    leaves.push(Some(e));
                }
                let replaces = existing.take_if(|e| e.key == *key).is_some();
                match (leaf.take(), replaces) {
                    (Some(l), true) => leaves.push(Some(l)),
                    (Some(l), false) => {
                        *grown += 1;
                        leaves.push(Some(l));
                    }
                    (None, true) => *grown -= 1,
                    (None, false) => {}
                }
            }
            leaves.extend(existing.map(Some));
            build(&mut leaves, depth)
        }
    }
}

/// A subtree's hash, the siblings down to it, and its leaves (key, value hash, value).
pub type Subtree<'a, V> = (Hash, Vec<Hash>, Vec<(&'a Hash, &'a Hash, &'a V)>);

/// A persistent sparse Merkle map from keys to (value hash, value).
pub struct StateMap<V> {
    root: Option<Node<V>>,
    len: usize,
}

impl<V> Clone for StateMap<V> {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for StateMap<V> {
    fn default() -> Self {
        Self { root: None, len: 0 }
    }
}

/// Where a key's path ends: an empty subtree, or a leaf (the key's own, or another one whose
/// key shares the path so far, which proves the key absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    Empty,
    Leaf { key: Hash, value_hash: Hash },
}

/// The siblings along a key's path, from the root down, and where the path ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub siblings: Vec<Hash>,
    pub terminal: Terminal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the proof does not parse: {0}")]
    Malformed(&'static str),
    #[error("the proof's other leaf is not on the key's path")]
    OffPath,
    #[error("the proof gives root {computed}, not {expected}")]
    WrongRoot { computed: String, expected: String },
}

impl<V> StateMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A map of `leaves` built at once (faster than inserting them one by one). A key given
    /// twice keeps its last value.
    pub fn from_leaves(leaves: impl IntoIterator<Item = (Hash, Hash, V)>) -> Self {
        let leaves: Vec<Option<Arc<Leaf<V>>>> = leaves
            .into_iter()
            .map(|(key, value_hash, value)| Some(Leaf::new(key, value_hash, value)))
            .collect();
        let mut deduped = sorted_last_wins(leaves, |l| *key_of(l));
        let len = deduped.len();
        Self {
            root: build(&mut deduped, 0),
            len,
        }
    }

    pub fn root(&self) -> Hash {
        hash_of(&self.root)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `key`; returns its previous value hash.
    pub fn insert(&mut self, key: Hash, value_hash: Hash, value: V) -> Option<Hash> {
        let leaf = Leaf::new(key, value_hash, value);
        let (root, old) = insert_at(self.root.as_ref(), 0, leaf);
        self.root = Some(root);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Sets (`Some((value hash, value))`) or removes (`None`) many keys at once. The result is
    /// the one inserting and removing them one by one would give (of a key given twice, the
    /// last wins), but each node above the changed leaves is hashed once: a round's changes
    /// share the upper part of their paths.
    pub fn update_many(&mut self, changes: impl IntoIterator<Item = (Hash, Option<(Hash, V)>)>) {
        let changes: Vec<Change<V>> = changes
            .into_iter()
            .map(|(key, set)| {
                let leaf = set.map(|(value_hash, value)| Leaf::new(key, value_hash, value));
                (key, leaf)
            })
            .collect();
        let mut deduped = sorted_last_wins(changes, |c| c.0);
        let mut grown = 0isize;
        self.root = update_at(self.root.as_ref(), 0, &mut deduped, &mut grown);
        self.len = self.len.saturating_add_signed(grown);
    }

    /// Removes `key`; returns its value hash, if it was there.
    pub fn remove(&mut self, key: &Hash) -> Option<Hash> {
        let (root, old) = remove_at(self.root.as_ref()?, 0, key)?;
        self.root = root;
        self.len -= 1;
        Some(old)
    }

    /// The value hash and value at `key`.
    pub fn get(&self, key: &Hash) -> Option<(&Hash, &V)> {
        let mut node = self.root.as_ref()?;
        let mut depth = 0;
        loop {
            match node {
                Node::Leaf(l) => return (l.key == *key).then_some((&l.value_hash, &l.value)),
                Node::Internal(i) => {
                    node = if bit(key, depth) {
                        i.right.as_ref()?
                    } else {
                        i.left.as_ref()?
                    };
                    depth += 1;
                }
            }
        }
    }

    /// The proof of `key`'s presence (with its value hash) or absence.
    pub fn prove(&self, key: &Hash) -> Proof {
        let mut siblings = Vec::new();
        let mut node = self.root.as_ref();
        let mut depth = 0;
        loop {
            match node {
                None => {
                    return Proof {
                        siblings,
                        terminal: Terminal::Empty,
                    }
                }
                Some(Node::Leaf(l)) => {
                    return Proof {
                        siblings,
                        terminal: Terminal::Leaf {
                            key: l.key,
                            value_hash: l.value_hash,
                        },
                    }
                }
                Some(Node::Internal(i)) => {
                    let (next, other) = if bit(key, depth) {
                        (&i.right, &i.left)
                    } else {
                        (&i.left, &i.right)
                    };
                    siblings.push(hash_of(other));
                    node = next.as_ref();
                    depth += 1;
                }
            }
        }
    }

    /// Every leaf in key order: key, value hash, value.
    pub fn leaves(&self) -> Vec<(&Hash, &Hash, &V)> {
        let mut out = Vec::with_capacity(self.len);
        let mut stack: Vec<&Node<V>> = self.root.iter().collect();
        while let Some(node) = stack.pop() {
            match node {
                Node::Leaf(l) => out.push((&l.key, &l.value_hash, &l.value)),
                Node::Internal(i) => {
                    stack.extend(i.right.iter());
                    stack.extend(i.left.iter());
                }
            }
        }
        out
    }

    /// The node on the path `prefix` at depth `depth`, or the lone leaf (or nothing) where the
    /// path ends sooner: its hash, the siblings from the root down to it (as many as its depth),
    /// and all its leaves in key order. Every leaf whose key starts with the prefix's first
    /// `depth` bits is among them; when the path ended sooner, one leaf may lie outside it.
    /// This is what a snapshot chunk carries.
    pub fn subtree(&self, prefix: &Hash, depth: usize) -> Subtree<'_, V> {
        let mut siblings = Vec::new();
        let mut node = self.root.as_ref();
        let mut d = 0;
        while d < depth {
            match node {
                Some(Node::Internal(i)) => {
                    let (next, other) = if bit(prefix, d) {
                        (&i.right, &i.left)
                    } else {
                        (&i.left, &i.right)
                    };
                    siblings.push(hash_of(other));
                    node = next.as_ref();
                    d += 1;
                }
                // A lone leaf (or nothing) stands for the whole subtree from here down.
                _ => break,
            }
        }
        let mut leaves = Vec::new();
        let mut stack: Vec<&Node<V>> = node.into_iter().collect();
        while let Some(n) = stack.pop() {
            match n {
                Node::Leaf(l) => leaves.push((&l.key, &l.value_hash, &l.value)),
                Node::Internal(i) => {
                    stack.extend(i.right.iter());
                    stack.extend(i.left.iter());
                }
            }
        }
        (hash_of(&node.cloned()), siblings, leaves)
    }
}

fn key_of<V>(leaf: &Option<Arc<Leaf<V>>>) -> &Hash {
    leaf.as_ref().map_or(&EMPTY, |l| &l.key)
}

/// The root of the subtree at `depth` of `leaves` (key, value hash), sorted by key without
/// duplicates: how a snapshot chunk's leaves are checked.
pub fn subtree_root(leaves: &[(Hash, Hash)], depth: usize) -> Hash {
    match leaves.len() {
        0 => EMPTY,
        1 => leaf_hash(&leaves[0].0, &leaves[0].1),
        _ if depth >= MAX_DEPTH => EMPTY,
        _ => {
            let mid = leaves.partition_point(|(k, _)| !bit(k, depth));
            node_hash(
                &subtree_root(&leaves[..mid], depth + 1),
                &subtree_root(&leaves[mid..], depth + 1),
            )
        }
    }
}

/// Folds `hash`, found at the end of `siblings` along `key`'s path, up to the root.
pub fn fold_path(key: &Hash, hash: Hash, siblings: &[Hash]) -> Hash {
    siblings.iter().enumerate().rev().fold(hash, |h, (d, s)| {
        if bit(key, d) {
            node_hash(s, &h)
        } else {
            node_hash(&h, s)
        }
    })
}

impl Proof {
    /// Checks the proof against `root`: `Some(value hash)` if `key` is present, `None` if absent.
    pub fn verify(&self, root: &Hash, key: &Hash) -> Result<Option<Hash>, ProofError> {
        if self.siblings.len() > MAX_DEPTH {
            return Err(ProofError::Malformed("more siblings than key bits"));
        }
        let (start, found) = match &self.terminal {
            Terminal::Empty => (EMPTY, None),
            Terminal::Leaf { key: k, value_hash } => {
                if k == key {
                    (leaf_hash(k, value_hash), Some(*value_hash))
                } else {
                    if (0..self.siblings.len()).any(|d| bit(k, d) != bit(key, d)) {
                        return Err(ProofError::OffPath);
                    }
                    (leaf_hash(k, value_hash), None)
                }
            }
        };
        let computed = fold_path(key, start, &self.siblings);
        if computed != *root {
            return Err(ProofError::WrongRoot {
                computed: hex::encode(computed),
                expected: hex::encode(root),
            });
        }
        Ok(found)
    }

    /// The byte form (docs/audit.md): `u16 n` big-endian, a bitmap of `ceil(n/8)` bytes (bit d,
    /// most significant first, set when sibling d is not empty), the non-empty siblings top
    /// down, then `0x00` (empty) or `0x01 || key || value_hash`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.siblings.len();
        let mut out = Vec::with_capacity(2 + n.div_ceil(8) + 32 * n + 65);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (d, s) in self.siblings.iter().enumerate() {
            if *s != EMPTY {
                bitmap[d / 8] |= 0x80 >> (d % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for s in self.siblings.iter().filter(|s| **s != EMPTY) {
            out.extend_from_slice(s);
        }
        match &self.terminal {
            Terminal::Empty => out.push(0),
            Terminal::Leaf { key, value_hash } => {
                out.push(1);
                out.extend_from_slice(key);
                out.extend_from_slice(value_hash);
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProofError> {
        let take = |at: usize, n: usize| -> Result<&[u8], ProofError> {
            bytes
                .get(at..at + n)
                .ok_or(ProofError::Malformed("the proof is cut short"))
        };
        let n = u16::from_be_bytes([take(0, 2)?[0], take(0, 2)?[1]]) as usize;
        if n > MAX_DEPTH {
            return Err(ProofError::Malformed("more siblings than key bits"));
        }
        let bitmap = take(2, n.div_ceil(8))?;
        let mut at = 2 + n.div_ceil(8);
        let mut siblings = Vec::with_capacity(n);
        for d in 0..n {
            if bitmap[d / 8] & (0x80 >> (d % 8)) != 0 {
                siblings.push(hash32(take(at, 32)?));
                at += 32;
            } else {
                siblings.push(EMPTY);
            }
        }
        if !n.is_multiple_of(8) && bitmap[n / 8] & (0xff >> (n % 8)) != 0 {
            return Err(ProofError::Malformed("bitmap bits past the last sibling"));
        }
        let terminal = match take(at, 1)?[0] {
            0 => {
                at += 1;
                Terminal::Empty
            }
            1 => {
                let t = Terminal::Leaf {
                    key: hash32(take(at + 1, 32)?),
                    value_hash: hash32(take(at + 33, 32)?),
                };
                at += 65;
                t
            }
            _ => return Err(ProofError::Malformed("unknown terminal tag")),
        };
        if at != bytes.len() {
            return Err(ProofError::Malformed("bytes after the proof"));
        }
        Ok(Self { siblings, terminal })
    }
}

fn hash32(bytes: &[u8]) -> Hash {
    let mut h = [0; 32];
    h.copy_from_slice(bytes);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> Hash {
        Sha256::digest(i.to_be_bytes()).into()
    }

    fn map_of(keys: &[u64]) -> StateMap<u64> {
        let mut m = StateMap::new();
        for &k in keys {
            m.insert(key(k), key(k + 1_000_000), k);
        }
        m
    }

    #[test]
    fn empty_and_single_leaf_roots() {
        let mut m: StateMap<()> = StateMap::new();
        assert_eq!(m.root(), EMPTY);
        m.insert(key(1), key(2), ());
        assert_eq!(
            m.root(),
            leaf_hash(&key(1), &key(2)),
            "a lone leaf is the root"
        );
        assert_eq!(m.remove(&key(1)), Some(key(2)));
        assert_eq!(m.root(), EMPTY);
        assert!(m.is_empty());
    }

    #[test]
    fn two_leaves_hash_as_documented() {
        // Keys differing at bit 0 sit at depth 1; sharing bits 0..2 they sit deeper, with empty
        // siblings on the way.
        let a = [0u8; 32];
        let mut b = [0u8; 32];
        b[0] = 0x20; // bits 0 and 1 equal (0), bit 2 differs
        let mut m: StateMap<()> = StateMap::new();
        m.insert(a, key(1), ());
        m.insert(b, key(2), ());
        let la = leaf_hash(&a, &key(1));
        let lb = leaf_hash(&b, &key(2));
        let expected = node_hash(&node_hash(&node_hash(&la, &lb), &EMPTY), &EMPTY);
        assert_eq!(m.root(), expected);
        let p = m.prove(&b);
        assert_eq!(p.siblings, vec![EMPTY, EMPTY, la]);
        assert_eq!(p.verify(&expected, &b), Ok(Some(key(2))));
    }

    #[test]
    fn a_tampered_proof_fails() {
        let m = map_of(&(0..100).collect::<Vec<_>>());
        let root = m.root();
        let mut p = m.prove(&key(7));
        assert_eq!(p.verify(&root, &key(7)), Ok(Some(key(1_000_007))));
        if let Terminal::Leaf { value_hash, .. } = &mut p.terminal {
            value_hash[0] ^= 1;
        }
        assert!(matches!(
            p.verify(&root, &key(7)),
            Err(ProofError::WrongRoot { .. })
        ));
        let mut p = m.prove(&key(7));
        p.siblings[0][5] ^= 1;
        assert!(p.verify(&root, &key(7)).is_err());
        // A proof for one key does not prove another.
        let p = m.prove(&key(7));
        assert!(p.verify(&root, &key(8)).is_err());
    }

    #[test]
    fn proof_bytes_reject_garbage() {
        let m = map_of(&(0..50).collect::<Vec<_>>());
        let bytes = m.prove(&key(3)).to_bytes();
        assert!(Proof::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Proof::from_bytes(&longer).is_err());
        let mut tag = bytes.clone();
        let at = tag.len() - 65;
        tag[at] = 7;
        assert!(Proof::from_bytes(&tag).is_err());
    }

    proptest! {
        #[test]
        fn proofs_of_presence_and_absence_verify(
            keys in proptest::collection::btree_set(0u64..10_000, 0..120),
            probes in proptest::collection::vec(0u64..10_000, 1..20),
        ) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let m = map_of(&keys);
            let root = m.root();
            for k in keys.iter().chain(probes.iter()) {
                let proof = m.prove(&key(*k));
                let round_trip = Proof::from_bytes(&proof.to_bytes()).unwrap();
                prop_assert_eq!(&round_trip, &proof);
                let found = proof.verify(&root, &key(*k)).unwrap();
                if keys.contains(k) {
                    prop_assert_eq!(found, Some(key(k + 1_000_000)));
                } else {
                    prop_assert_eq!(found, None);
                }
            }
        }

        #[test]
        fn the_root_is_independent_of_insertion_order_and_equals_a_rebuild(
            keys in proptest::collection::vec(0u64..500, 0..150),
            removed in proptest::collection::vec(0u64..500, 0..60),
            seed in any::<u64>(),
        ) {
            let mut forward: StateMap<u64> = StateMap::new();
            for &k in &keys {
                forward.insert(key(k), key(k + 1_000_000), k);
            }
            for k in &removed {
                forward.remove(&key(*k));
            }
            let mut kept: Vec<u64> = keys.iter().copied().filter(|k| !removed.contains(k)).collect();
            kept.sort();
            kept.dedup();
            // Another order: a seeded shuffle.
            let mut shuffled = kept.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let other = map_of(&shuffled);
            let rebuilt = StateMap::from_leaves(kept.iter().map(|&k| (key(k), key(k + 1_000_000), k)));
            prop_assert_eq!(forward.root(), other.root());
            prop_assert_eq!(forward.root(), rebuilt.root());
            prop_assert_eq!(forward.len(), kept.len());
            prop_assert_eq!(rebuilt.len(), kept.len());
            let leaves: Vec<(Hash, Hash)> = rebuilt.leaves().into_iter().map(|(k, v, _)| (*k, *v)).collect();
            prop_assert_eq!(subtree_root(&leaves, 0), rebuilt.root());
        }

        #[test]
        fn many_changes_at_once_equal_them_one_by_one(
            start in proptest::collection::btree_set(0u64..400, 0..120),
            changes in proptest::collection::vec((0u64..400, any::<bool>(), 0u64..3), 0..120),
        ) {
            let start: Vec<u64> = start.into_iter().collect();
            let mut one_by_one = map_of(&start);
            let mut at_once = one_by_one.clone();
            let before = one_by_one.root();
            for &(k, set, v) in &changes {
                if set {
                    one_by_one.insert(key(k), key(k + v * 1_000_000), k);
                } else {
                    one_by_one.remove(&key(k));
                }
            }
            let untouched = at_once.clone();
            at_once.update_many(changes.iter().map(|&(k, set, v)| {
                (key(k), set.then(|| (key(k + v * 1_000_000), k)))
            }));
            prop_assert_eq!(at_once.root(), one_by_one.root());
            prop_assert_eq!(at_once.len(), one_by_one.len());
            for &(k, _, _) in &changes {
                prop_assert_eq!(at_once.get(&key(k)).map(|(h, _)| *h), one_by_one.get(&key(k)).map(|(h, _)| *h));
                let proof = at_once.prove(&key(k));
                prop_assert!(proof.verify(&at_once.root(), &key(k)).is_ok());
            }
            // The old version is untouched: nodes are shared, never changed.
            prop_assert_eq!(untouched.root(), before);
        }

        #[test]
        fn subtrees_recompose_the_root(
            keys in proptest::collection::btree_set(0u64..5_000, 0..200),
            depth in 0usize..6,
        ) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let m = map_of(&keys);
            let mut total = 0;
            for p in 0..(1u32 << depth) {
                let mut prefix = [0u8; 32];
                if depth > 0 {
                    prefix[0] = ((p << (8 - depth)) & 0xff) as u8;
                }
                let (hash, siblings, leaves) = m.subtree(&prefix, depth);
                let pairs: Vec<(Hash, Hash)> = leaves.iter().map(|(k, v, _)| (**k, **v)).collect();
                total += pairs.iter().filter(|(k, _)| (0..depth).all(|b| bit(k, b) == bit(&prefix, b))).count();
                let at = siblings.len();
                prop_assert_eq!(subtree_root(&pairs, at), hash);
                prop_assert_eq!(fold_path(&prefix, hash, &siblings), m.root());
            }
            prop_assert_eq!(total, keys.len());
        }
    }
}
