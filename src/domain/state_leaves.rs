//! What the state map holds: one leaf per target, its key and its value's bytes
//! (docs/audit.md, "The state map"), and the replay of records' effects onto the map.
//!
//! - A holder leaf, key `target_key(asset, Some(holder))`, commits to the holds placed exactly
//!   on that holder; a holder with none has no leaf.
//! - The asset leaf, key `target_key(asset, None)`, commits to the asset's version, its last
//!   fencing token and its asset-wide holds; it exists once the asset has a state.
//!
//! A holder's effective state is the asset leaf's holds plus its own (SPEC rules), so a holder
//! is proven by two proofs. A decision on one holder changes two leaves, never the others.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::ids::{HolderAddress, OrderId};
use super::order::{AssetKey, Target};
use super::state::{AssetState, Effect, FencingToken, Hold};
use super::state_map::{Hash, StateMap};

const KEY_DOMAIN: &[u8] = b"regulator state key v1\0";
const HOLDER_DOMAIN: &[u8] = b"regulator state holder v1\0";
const ASSET_DOMAIN: &[u8] = b"regulator state asset v1\0";

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The key of a target: SHA-256 over the domain, the chain, the asset and (tag 0x01) the
/// holder or (tag 0x00) nothing, each string prefixed by its byte length (u32 big-endian).
pub fn target_key(asset: &AssetKey, holder: Option<&HolderAddress>) -> Hash {
    let mut bytes = Vec::with_capacity(96);
    bytes.extend_from_slice(KEY_DOMAIN);
    push_str(&mut bytes, asset.chain.as_str());
    push_str(&mut bytes, asset.asset.as_str());
    match holder {
        None => bytes.push(0),
        Some(h) => {
            bytes.push(1);
            push_str(&mut bytes, h.as_str());
        }
    }
    Sha256::digest(&bytes).into()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// One hold's bytes: order id (16 bytes), kind, issuer, amount (0x00, or 0x01 and 16 bytes),
/// instrument, priority (u16), placed_at (i64 microseconds since 1970), expires_at (0x00, or
/// 0x01 and i64), fencing token (0x00, or 0x01 and u64); integers big-endian.
fn push_hold(out: &mut Vec<u8>, hold: &Hold) {
    out.extend_from_slice(hold.order_id.as_uuid().as_bytes());
    push_str(out, hold.kind.as_str());
    push_str(out, hold.issuer.as_str());
    match hold.amount {
        None => out.push(0),
        Some(a) => {
            out.push(1);
            out.extend_from_slice(&a.units().to_be_bytes());
        }
    }
    push_str(out, hold.instrument.as_str());
    out.extend_from_slice(&hold.priority.value().to_be_bytes());
    out.extend_from_slice(&micros(hold.placed_at).to_be_bytes());
    match hold.expires_at {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&micros(t).to_be_bytes());
        }
    }
    match hold.fencing_token {
        None => out.push(0),
        Some(FencingToken(t)) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
    }
}

fn push_holds<'a>(out: &mut Vec<u8>, holds: impl ExactSizeIterator<Item = &'a Arc<Hold>>) {
    out.extend_from_slice(&(holds.len() as u32).to_be_bytes());
    for h in holds {
        push_hold(out, h);
    }
}

/// A leaf's value: the holds on its target, by order id; for the asset leaf, also the
/// asset's version and last fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafValue {
    pub asset: AssetKey,
    pub holder: Option<HolderAddress>,
    pub holds: BTreeMap<OrderId, Arc<Hold>>,
    pub version: u64,
    pub last_fencing_token: u64,
}

impl LeafValue {
    pub fn key(&self) -> Hash {
        target_key(&self.asset, self.holder.as_ref())
    }

    /// The bytes hashed into the leaf: the holder domain and the holds; or the asset domain,
    /// version (u64), last fencing token (u64) and the holds. Holds are counted (u32) and in
    /// order-id byte order.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 120 * self.holds.len());
        match self.holder {
            Some(_) => out.extend_from_slice(HOLDER_DOMAIN),
            None => {
                out.extend_from_slice(ASSET_DOMAIN);
                out.extend_from_slice(&self.version.to_be_bytes());
                out.extend_from_slice(&self.last_fencing_token.to_be_bytes());
            }
        }
        push_holds(&mut out, self.holds.values());
        out
    }

    pub fn value_hash(&self) -> Hash {
        Sha256::digest(self.bytes()).into()
    }

    /// The value's bytes do not name targets (the key does): every hold must be on this leaf's
    /// target, keyed by its own order id.
    pub fn check_targets(&self) -> Result<(), OrderId> {
        match self.holds.iter().find(|(id, h)| {
            **id != h.order_id || h.target.asset != self.asset || h.target.holder != self.holder
        }) {
            Some((id, _)) => Err(*id),
            None => Ok(()),
        }
    }
}

/// What a ledger record changes: the asset of a decision and its effects; `None` for an event.
pub fn effects_of(text: &str) -> Result<Option<(AssetKey, Vec<Effect>)>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Changes {
        target: Option<Target>,
        #[serde(default)]
        effects: Vec<Effect>,
    }
    let changes: Changes = serde_json::from_str(text)?;
    Ok(changes.target.map(|t| (t.asset, changes.effects)))
}

/// Why a leaf does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error(transparent)]
    Proof(#[from] super::state_map::ProofError),
    #[error("the state given hashes to {given}, the proof proves {proven}")]
    OtherValue { given: String, proven: String },
    #[error("the proof proves the target absent, but a state is given for it")]
    Absent,
    #[error("the proof proves the target present, but no state is given for it")]
    Present,
    #[error("a hold on {0} is given with another target's leaf")]
    OtherTarget(OrderId),
}

/// Checks that `value` (or, with `None`, nothing) is what `proof` proves at `key` in the map
/// of root `root`.
pub fn verify_leaf(
    root: &Hash,
    key: &Hash,
    proof: &super::state_map::Proof,
    value: Option<&LeafValue>,
) -> Result<(), LeafError> {
    match (proof.verify(root, key)?, value) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(LeafError::Absent),
        (Some(_), None) => Err(LeafError::Present),
        (Some(proven), Some(v)) => {
            v.check_targets().map_err(LeafError::OtherTarget)?;
            let given = v.value_hash();
            if v.key() != *key || given != proven {
                return Err(LeafError::OtherValue {
                    given: hex::encode(given),
                    proven: hex::encode(proven),
                });
            }
            Ok(())
        }
    }
}

/// Chunks of a snapshot: the map's key space split by the first `depth` bits; chunk `i` holds
/// the keys whose first `depth` bits, read as a number, are `i`.
pub fn chunk_depth(leaves: usize) -> u32 {
    let mut depth = 0;
    while depth < MAX_CHUNK_DEPTH && (leaves >> depth) > CHUNK_LEAVES {
        depth += 1;
    }
    depth
}

/// About how many leaves a snapshot chunk holds, at most twice this on average.
pub const CHUNK_LEAVES: usize = 1_024;
const MAX_CHUNK_DEPTH: u32 = 24;

/// A key whose first `depth` bits are `chunk`: the path of the chunk's subtree.
pub fn chunk_prefix(depth: u32, chunk: u64) -> Hash {
    let mut prefix = [0u8; 32];
    if depth > 0 {
        prefix[..8].copy_from_slice(&(chunk << (64 - depth)).to_be_bytes());
    }
    prefix
}

pub fn in_chunk(key: &Hash, depth: u32, chunk: u64) -> bool {
    let prefix = chunk_prefix(depth, chunk);
    (0..depth as usize).all(|d| super::state_map::bit(key, d) == super::state_map::bit(&prefix, d))
}

/// Checks a snapshot chunk against the state root: the leaves (key order; each with its value
/// where the chunk gives it, which must hash to its value hash) with the siblings fold up to
/// `root`. Returns the given values of the leaves that belong to the chunk.
pub fn verify_chunk(
    root: &Hash,
    depth: u32,
    chunk: u64,
    siblings: &[Hash],
    leaves: Vec<(Hash, Hash, Option<LeafValue>)>,
) -> Result<Vec<LeafValue>, String> {
    if siblings.len() > depth as usize {
        return Err("more siblings than the chunk's depth".into());
    }
    if chunk >> depth != 0 && depth < 64 {
        return Err(format!("chunk {chunk} does not exist at depth {depth}"));
    }
    for pair in leaves.windows(2) {
        if pair[0].0 >= pair[1].0 {
            return Err("the leaves are not in strictly increasing key order".into());
        }
    }
    let prefix = chunk_prefix(depth, chunk);
    let at = siblings.len();
    if let Some((k, _, _)) = leaves.iter().find(|(k, _, _)| {
        (0..at).any(|d| super::state_map::bit(k, d) != super::state_map::bit(&prefix, d))
    }) {
        return Err(format!(
            "leaf {} is not under the chunk's path",
            hex::encode(k)
        ));
    }
    let pairs: Vec<(Hash, Hash)> = leaves.iter().map(|(k, v, _)| (*k, *v)).collect();
    let computed = super::state_map::fold_path(
        &prefix,
        super::state_map::subtree_root(&pairs, at),
        siblings,
    );
    if computed != *root {
        return Err(format!(
            "the chunk gives state root {}, not {}",
            hex::encode(computed),
            hex::encode(root)
        ));
    }
    let mut out = Vec::new();
    for (key, value_hash, value) in leaves {
        if let Some(v) = value {
            if let Err(id) = v.check_targets() {
                return Err(format!("hold {id} is given with another target's leaf"));
            }
            if v.key() != key || v.value_hash() != value_hash {
                return Err(format!(
                    "the state given for leaf {} does not hash to its value hash",
                    hex::encode(key)
                ));
            }
            if in_chunk(&key, depth, chunk) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// A map leaf: `None` when only its hash is known (a state walked back through recorded
/// deltas).
pub type Leaf = Option<Arc<LeafValue>>;

/// The leaves of one asset state.
pub fn leaves_of(asset: &AssetKey, state: &AssetState) -> Vec<LeafValue> {
    let mut by_holder: BTreeMap<Option<HolderAddress>, BTreeMap<OrderId, Arc<Hold>>> =
        BTreeMap::new();
    by_holder.insert(None, BTreeMap::new());
    for hold in state.holds() {
        by_holder
            .entry(hold.target.holder.clone())
            .or_default()
            .insert(hold.order_id, Arc::new(hold.clone()));
    }
    by_holder
        .into_iter()
        .map(|(holder, holds)| LeafValue {
            asset: asset.clone(),
            version: if holder.is_none() { state.version() } else { 0 },
            last_fencing_token: if holder.is_none() {
                state.last_fencing_token()
            } else {
                0
            },
            holder,
            holds,
        })
        .collect()
}

/// What changed in a stretch of the log: per key, the value hash before and after (`None`:
/// absent). A key changed twice keeps its first before and last after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub changes: BTreeMap<Hash, (Option<Hash>, Option<Hash>)>,
}

impl Delta {
    fn record(&mut self, key: Hash, old: Option<Hash>, new: Option<Hash>) {
        self.changes
            .entry(key)
            .and_modify(|(_, n)| *n = new)
            .or_insert((old, new));
    }

    /// Drops keys that ended where they started.
    pub fn settle(&mut self) {
        self.changes.retain(|_, (old, new)| old != new);
    }
}

/// Leaves a round of decisions changed, not yet hashed into the map (see [`StateTree::stage`]).
#[derive(Default)]
pub struct Overlay {
    touched: BTreeMap<Hash, Touched>,
}

/// A leaf as a round left it so far, and its value hash before the round (`None`: absent).
struct Touched {
    before: Option<Hash>,
    leaf: LeafValue,
}

/// The state map and what replaying needs: where each active hold sits.
#[derive(Clone, Default)]
pub struct StateTree {
    map: StateMap<Leaf>,
    /// Each active hold's leaf key.
    index: HashMap<OrderId, Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("hold {0} is lifted but not active")]
    NotActive(OrderId),
    #[error("hold {0} is placed on another asset than its decision's")]
    OtherAsset(OrderId),
}

impl StateTree {
    /// The tree of these asset states, built at once.
    pub fn from_states<'a>(
        states: impl IntoIterator<Item = (&'a AssetKey, &'a AssetState)>,
    ) -> Self {
        let mut index = HashMap::new();
        let mut leaves = Vec::new();
        for (asset, state) in states {
            for leaf in leaves_of(asset, state) {
                let key = leaf.key();
                for id in leaf.holds.keys() {
                    index.insert(*id, key);
                }
                leaves.push((key, leaf.value_hash(), Some(Arc::new(leaf))));
            }
        }
        Self {
            map: StateMap::from_leaves(leaves),
            index,
        }
    }

    pub fn root(&self) -> Hash {
        self.map.root()
    }

    pub fn map(&self) -> &StateMap<Leaf> {
        &self.map
    }

    /// The leaf of a target, if present and known.
    pub fn leaf(&self, asset: &AssetKey, holder: Option<&HolderAddress>) -> Option<&LeafValue> {
        self.map
            .get(&target_key(asset, holder))
            .and_then(|(_, v)| v.as_deref())
    }

    /// A target's leaf in `overlay`, brought there from the map (or made empty) on first touch,
    /// with its value hash before the round. `None` if `must_exist` and the map lacks it.
    fn touch<'o>(
        &self,
        overlay: &'o mut Overlay,
        key: Hash,
        asset: &AssetKey,
        holder: Option<&HolderAddress>,
        must_exist: bool,
    ) -> Option<&'o mut LeafValue> {
        let touched = match overlay.touched.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let found = self.map.get(&key);
                let leaf = match found.and_then(|(_, v)| v.as_deref()) {
                    Some(v) => v.clone(),
                    None if must_exist => return None,
                    None => LeafValue {
                        asset: asset.clone(),
                        holder: holder.cloned(),
                        holds: BTreeMap::new(),
                        version: 0,
                        last_fencing_token: 0,
                    },
                };
                e.insert(Touched {
                    before: found.map(|(h, _)| *h),
                    leaf,
                })
            }
        };
        Some(&mut touched.leaf)
    }

    /// Applies one decision's effects on `asset`, as [`AssetState::apply`] does: the holds
    /// placed and lifted, and (if there are any effects) the asset's version.
    pub fn apply(
        &mut self,
        asset: &AssetKey,
        effects: &[Effect],
        delta: &mut Delta,
    ) -> Result<(), ReplayError> {
        let mut overlay = Overlay::default();
        self.stage(&mut overlay, asset, effects)?;
        self.write(overlay, delta);
        Ok(())
    }

    /// Like [`Self::apply`], into `overlay`: the leaves change there and reach the map only at
    /// [`Self::write`], so that a round of decisions reads each changed leaf once and hashes
    /// it, and each node above them, once. The hold index moves at once; on an error the tree
    /// is left half applied and must be thrown away (every caller stops).
    pub fn stage(
        &mut self,
        overlay: &mut Overlay,
        asset: &AssetKey,
        effects: &[Effect],
    ) -> Result<(), ReplayError> {
        if effects.is_empty() {
            return Ok(());
        }
        let asset_key = target_key(asset, None);
        self.touch(overlay, asset_key, asset, None, false);
        for effect in effects {
            match effect {
                Effect::Place { hold } => {
                    if hold.target.asset != *asset {
                        return Err(ReplayError::OtherAsset(hold.order_id));
                    }
                    let key = target_key(asset, hold.target.holder.as_ref());
                    if let Some(old) = self.index.insert(hold.order_id, key) {
                        // Placed again (not lifted first): it moves to its new leaf.
                        if let Some(leaf) = self.touch(overlay, old, asset, None, false) {
                            leaf.holds.remove(&hold.order_id);
                        }
                    }
                    if let Some(FencingToken(t)) = hold.fencing_token {
                        if let Some(a) = overlay.touched.get_mut(&asset_key) {
                            a.leaf.last_fencing_token = a.leaf.last_fencing_token.max(t);
                        }
                    }
                    let holder = hold.target.holder.as_ref();
                    if let Some(leaf) = self.touch(overlay, key, asset, holder, false) {
                        leaf.holds.insert(hold.order_id, Arc::new(hold.clone()));
                    }
                }
                Effect::Lift { order_id, .. } => {
                    let key = self
                        .index
                        .remove(order_id)
                        .ok_or(ReplayError::NotActive(*order_id))?;
                    self.touch(overlay, key, asset, None, true)
                        .ok_or(ReplayError::NotActive(*order_id))?
                        .holds
                        .remove(order_id);
                }
            }
        }
        if let Some(a) = overlay.touched.get_mut(&asset_key) {
            a.leaf.version += 1;
        }
        Ok(())
    }

    /// Writes what `overlay` staged into the map, in one pass, and records it in `delta`.
    pub fn write(&mut self, overlay: Overlay, delta: &mut Delta) {
        let mut changes = Vec::with_capacity(overlay.touched.len());
        for (key, Touched { before, leaf }) in overlay.touched {
            if leaf.holder.is_some() && leaf.holds.is_empty() {
                delta.record(key, before, None);
                changes.push((key, None));
            } else {
                let value_hash = leaf.value_hash();
                delta.record(key, before, Some(value_hash));
                changes.push((key, Some((value_hash, Some(Arc::new(leaf))))));
            }
        }
        self.map.update_many(changes);
    }

    /// Sets `key` to a value hash only (or removes it): walking back through recorded deltas.
    pub fn set_hash(&mut self, key: Hash, value_hash: Option<Hash>) {
        match value_hash {
            Some(h) => {
                self.map.insert(key, h, None);
            }
            None => {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{AssetId, ChainId, Instrument, IssuerId, Priority};
    use crate::domain::order::OrderKind;
    use crate::domain::state::LiftCause;
    use proptest::prelude::*;

    fn asset(n: u8) -> AssetKey {
        AssetKey {
            chain: ChainId::parse("ethereum").unwrap(),
            asset: AssetId::parse(format!("0x{:040x}", n)).unwrap(),
        }
    }

    fn holder(n: u8) -> HolderAddress {
        HolderAddress::parse(format!("0x{:040x}", 0x1000 + n as u32)).unwrap()
    }

    fn hold(a: u8, h: Option<u8>, kind: OrderKind, token: Option<u64>) -> Hold {
        Hold {
            order_id: OrderId::new(),
            issuer: IssuerId::parse("sec").unwrap(),
            kind,
            target: Target {
                asset: asset(a),
                holder: h.map(holder),
            },
            amount: None,
            instrument: Instrument::parse("order_1").unwrap(),
            priority: Priority::new(10).unwrap(),
            placed_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            expires_at: None,
            fencing_token: token.map(FencingToken),
        }
    }

    #[test]
    fn keys_separate_assets_holders_and_the_asset_leaf() {
        let a = asset(1);
        assert_ne!(target_key(&a, None), target_key(&a, Some(&holder(1))));
        assert_ne!(
            target_key(&a, Some(&holder(1))),
            target_key(&a, Some(&holder(2)))
        );
        assert_ne!(target_key(&a, None), target_key(&asset(2), None));
    }

    /// A random walk of places and lifts over two assets and three holders.
    fn ops() -> impl Strategy<Value = Vec<(u8, Option<u8>, bool, usize)>> {
        proptest::collection::vec(
            (
                0u8..2,
                proptest::option::of(0u8..3),
                any::<bool>(),
                0usize..8,
            ),
            1..40,
        )
    }

    proptest! {
        #[test]
        fn replaying_effects_equals_building_from_the_states(ops in ops()) {
            let mut states: BTreeMap<AssetKey, AssetState> = BTreeMap::new();
            let mut tree = StateTree::default();
            // The same decisions staged in rounds (a write every few) and in one delta.
            let mut rounds = StateTree::default();
            let mut overlay = Overlay::default();
            let mut round_delta = Delta::default();
            let mut total = Delta::default();
            let mut live: Vec<Hold> = Vec::new();
            for (i, (a, h, lift, pick)) in ops.into_iter().enumerate() {
                let effects = if lift && !live.is_empty() {
                    let gone = live.remove(pick % live.len());
                    vec![Effect::Lift { order_id: gone.order_id, cause: LiftCause::Expired }]
                } else {
                    let kind = if i % 3 == 0 { OrderKind::Preempt } else { OrderKind::Freeze };
                    let token = (kind == OrderKind::Preempt).then_some(i as u64 + 1);
                    let placed = hold(a, h, kind, token);
                    live.push(placed.clone());
                    vec![Effect::Place { hold: placed }]
                };
                let on = match &effects[0] {
                    Effect::Place { hold } => hold.target.asset.clone(),
                    Effect::Lift { order_id, .. } => states
                        .iter()
                        .find(|(_, s)| s.hold(order_id).is_some())
                        .map(|(k, _)| k.clone())
                        .unwrap(),
                };
                states.entry(on.clone()).or_default().apply(&effects);
                let mut delta = Delta::default();
                let before = tree.root();
                let mut walked = tree.clone();
                tree.apply(&on, &effects, &mut delta).unwrap();
                for (key, (old, new)) in &delta.changes {
                    total.record(*key, *old, *new);
                }
                rounds.stage(&mut overlay, &on, &effects).unwrap();
                if i % 5 == 4 {
                    rounds.write(std::mem::take(&mut overlay), &mut round_delta);
                    prop_assert_eq!(rounds.root(), tree.root());
                }
                // The delta takes the old root to the new one.
                for (key, (_, new)) in &delta.changes {
                    walked.set_hash(*key, *new);
                }
                prop_assert_eq!(walked.root(), tree.root());
                // And back.
                for (key, (old, _)) in &delta.changes {
                    walked.set_hash(*key, *old);
                }
                prop_assert_eq!(walked.root(), before);
            }
            rounds.write(overlay, &mut round_delta);
            prop_assert_eq!(rounds.root(), tree.root());
            total.settle();
            round_delta.settle();
            prop_assert_eq!(round_delta, total);
            let rebuilt = StateTree::from_states(states.iter());
            prop_assert_eq!(rebuilt.root(), tree.root());
            prop_assert_eq!(rebuilt.map().len(), tree.map().len());
        }
    }
}
