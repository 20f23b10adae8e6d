//! The lock state of one asset: one hold per order, never a single overwritten status.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{Amount, HolderAddress, Instrument, IssuerId, OrderId, Priority};
use super::order::{LockLevel, Order, OrderKind, Target};

/// A monotonically increasing token handed out with each preemptive lease, so that a chain can
/// refuse a transfer from a coordinator whose lease was revoked and re-granted to another.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = u64)]
pub struct FencingToken(pub u64);

/// An active hold, placed by one applied order and lifted by a release, an expiry or a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hold {
    pub order_id: OrderId,
    pub issuer: IssuerId,
    pub kind: OrderKind,
    pub target: Target,
    pub amount: Option<Amount>,
    pub instrument: Instrument,
    pub priority: Priority,
    pub placed_at: DateTime<Utc>,
    /// When a SUSPEND or a PREEMPT lease ends by itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// Only PREEMPT leases carry one.
    pub fencing_token: Option<FencingToken>,
}

impl Hold {
    /// The hold `order` places when it is applied at `placed_at` with `priority`.
    pub fn placed_by(
        order: &Order,
        priority: Priority,
        placed_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        fencing_token: Option<FencingToken>,
    ) -> Self {
        Self {
            order_id: order.id,
            issuer: order.issuer.clone(),
            kind: order.kind(),
            target: order.target.clone(),
            amount: order.instruction.amount(),
            instrument: order.legal_basis.instrument.clone(),
            priority,
            placed_at,
            expires_at,
            fencing_token,
        }
    }

    pub fn level(&self) -> LockLevel {
        self.kind.level()
    }

    /// Does this hold apply to `holder`? Asset-wide holds apply to everyone.
    pub fn covers(&self, holder: Option<&HolderAddress>) -> bool {
        match (&self.target.holder, holder) {
            (None, _) => true,
            (Some(own), Some(asked)) => own == asked,
            (Some(_), None) => false,
        }
    }
}

/// Why a hold stopped being active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum LiftCause {
    Released {
        by: OrderId,
    },
    Expired,
    /// A preemptive lease revoked because a hold of level >= 3 landed.
    Revoked {
        by: OrderId,
    },
}

/// A single change to an asset's state. A decision's effects, replayed in order from the empty
/// state, rebuild the state exactly: this is what makes the state tables a function of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    Place { hold: Hold },
    Lift { order_id: OrderId, cause: LiftCause },
}

/// How much of a balance is frozen, as reported to chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frozen", content = "amount", rename_all = "snake_case")]
pub enum Frozen {
    Nothing,
    /// The sum of the active partial holds, in base units (saturating at `u128::MAX`).
    Partial(u128),
    All,
}

/// What the holds covering one holder add up to ([`AssetState::coverage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The maximum level over them.
    pub level: LockLevel,
    pub frozen: Frozen,
    /// Their order ids, in order.
    pub holds: Vec<OrderId>,
}

/// The state of one asset: its active holds, its version and its lease counter.
///
/// The sequencer copies a state for every group it decides (and once more to seal a group of
/// several decisions), and a sanctioned token may carry thousands of holds, each its own
/// allocation. So a state is a shared base, the holds as of its last compaction, sorted by
/// order id, plus the few changes since: a copy shares the base and copies only the changes,
/// and touches no hold. The changes fold into the base once they pass [`FOLD_AT`], in place
/// when no other copy shares it.
///
/// Every hold has a [`Tag`] beside it: each decision scans the holds several times (the
/// target's coverage before and after, due expiries, leases to revoke), and the scans read the
/// tags, which lie in one array, following a pointer only for the holds that may match.
#[derive(Debug, Clone, Default)]
pub struct AssetState {
    base: Arc<Base>,
    /// Holds placed since the base, sorted by order id (a later placing replaces).
    placed: Vec<(Tag, Arc<Hold>)>,
    /// Base holds lifted or replaced since, sorted.
    hidden: Vec<OrderId>,
    /// Bumped once per decision that changes the state; a chain that sees a jump knows it missed one.
    version: u64,
    last_fencing_token: u64,
}

/// The holds of a state as of its last compaction, sorted by order id, one per order id, with
/// `tags[i]` the tag of `holds[i]`.
#[derive(Debug, Clone, Default)]
struct Base {
    holds: Vec<Arc<Hold>>,
    tags: Vec<Tag>,
}

/// How many changes a state carries beside its base before they fold into it.
const FOLD_AT: usize = 32;

/// What the scans over an asset's holds ask first, kept inline. A tag only narrows a scan: a
/// hold whose tag matches is then checked in full, so a hash collision costs a comparison,
/// never a wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    id: OrderId,
    /// [`holder_tag`] of the hold's holder; [`ASSET_WIDE`] for an asset-wide hold.
    holder: u64,
    kind: OrderKind,
    expires: bool,
}

/// The tag of an asset-wide hold; no holder's tag is ever 0.
const ASSET_WIDE: u64 = 0;

/// A hash of a holder address, never [`ASSET_WIDE`]. Only compared within this process.
fn holder_tag(holder: &HolderAddress) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    holder.as_str().hash(&mut hasher);
    hasher.finish().max(1)
}

impl Tag {
    fn of(hold: &Hold) -> Self {
        Self {
            id: hold.order_id,
            holder: hold.target.holder.as_ref().map_or(ASSET_WIDE, holder_tag),
            kind: hold.kind,
            expires: hold.expires_at.is_some(),
        }
    }
}

/// Two states are equal when their holds, version and lease counter are, however they are
/// split between base and changes.
impl PartialEq for AssetState {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.last_fencing_token == other.last_fencing_token
            && self.holds().eq(other.holds())
    }
}

impl Eq for AssetState {}

impl AssetState {
    /// Rebuilds a state from its stored parts.
    pub fn from_parts(
        holds: impl IntoIterator<Item = Hold>,
        version: u64,
        last_fencing_token: u64,
    ) -> Self {
        let mut holds: Vec<Arc<Hold>> = holds.into_iter().map(Arc::new).collect();
        // Stable, so that of two holds with one order id the later is kept, as an insert would.
        holds.sort_by_key(|h| h.order_id);
        holds.dedup_by(|later, earlier| {
            let same = later.order_id == earlier.order_id;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        let tags = holds.iter().map(|h| Tag::of(h)).collect();
        Self {
            base: Arc::new(Base { holds, tags }),
            placed: Vec::new(),
            hidden: Vec::new(),
            version,
            last_fencing_token,
        }
    }

    /// The holds whose tags pass `keep`, in order-id order: the base's that are not hidden and
    /// the placed ones, merged.
    fn tagged<'a>(
        &'a self,
        keep: impl Fn(&Tag) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Hold> + 'a {
        Merged {
            base: self.base.tags.iter().zip(&self.base.holds).peekable(),
            placed: self.placed.iter().map(|(tag, hold)| (tag, hold)).peekable(),
        }
        // The tag first: the hidden list is searched only for base holds the scan wants.
        .filter(move |(tag, _, from_base)| {
            keep(tag) && !(*from_base && self.hidden.binary_search(&tag.id).is_ok())
        })
        .map(|(_, hold, _)| hold.as_ref())
    }

    /// Where the hold of `order_id` is among the placed ones, or would be inserted.
    fn placed_at(&self, order_id: &OrderId) -> Result<usize, usize> {
        self.placed.binary_search_by(|(t, _)| t.id.cmp(order_id))
    }

    /// Where the hold of `order_id` is in the base, if there.
    fn in_base(&self, order_id: &OrderId) -> Option<usize> {
        self.base.tags.binary_search_by(|t| t.id.cmp(order_id)).ok()
    }

    pub fn last_fencing_token(&self) -> u64 {
        self.last_fencing_token
    }

    /// The earliest moment a hold of this asset ends by itself.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.expiring().filter_map(|h| h.expires_at).min()
    }

    /// The holds that end by themselves (they have an expiry), in order.
    pub fn expiring(&self) -> impl Iterator<Item = &Hold> {
        self.tagged(|t| t.expires)
    }

    /// The holds of the kinds `kinds` accepts, in order.
    pub fn holds_of_kind<'a>(
        &'a self,
        kinds: impl Fn(OrderKind) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Hold> + 'a {
        self.tagged(move |t| kinds(t.kind))
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.tagged(|_| true)
    }

    pub fn hold(&self, order_id: &OrderId) -> Option<&Hold> {
        if let Ok(i) = self.placed_at(order_id) {
            return Some(self.placed[i].1.as_ref());
        }
        if self.hidden.binary_search(order_id).is_ok() {
            return None;
        }
        self.in_base(order_id).map(|i| self.base.holds[i].as_ref())
    }

    /// The holds that apply to `holder` (asset-wide ones included); `None` asks for the holds that
    /// apply to every holder, i.e. the asset-wide ones.
    pub fn holds_covering<'a>(
        &'a self,
        holder: Option<&'a HolderAddress>,
    ) -> impl Iterator<Item = &'a Hold> + 'a {
        let wanted = holder.map(holder_tag);
        self.tagged(move |t| t.holder == ASSET_WIDE || Some(t.holder) == wanted)
            .filter(move |h| h.covers(holder))
    }

    /// The maximum level over the active holds that apply to `holder`.
    pub fn effective_level(&self, holder: Option<&HolderAddress>) -> LockLevel {
        self.coverage(holder).level
    }

    /// What is frozen for `holder`: holds at a blocking level (SUSPEND and above) and preemptive
    /// leases freeze; MONITOR only flags. Any such hold without an amount freezes everything.
    pub fn frozen(&self, holder: Option<&HolderAddress>) -> Frozen {
        self.coverage(holder).frozen
    }

    /// The level, the frozen amount and the holds (by order id) that apply to `holder`, in one
    /// pass over the asset's holds: every record states all three for its target, before and
    /// after its decision, and an asset may carry thousands of holds.
    pub fn coverage(&self, holder: Option<&HolderAddress>) -> Coverage {
        let mut level = LockLevel::default();
        let mut holds = Vec::new();
        let (mut sum, mut partial, mut all) = (0u128, false, false);
        for hold in self.holds_covering(holder) {
            level = level.max(hold.level());
            holds.push(hold.order_id);
            if hold.level() >= LockLevel::PreemptiveLocked {
                match hold.amount {
                    None => all = true,
                    Some(a) => {
                        partial = true;
                        sum = sum.saturating_add(a.units());
                    }
                }
            }
        }
        let frozen = if all {
            Frozen::All
        } else if partial {
            Frozen::Partial(sum)
        } else {
            Frozen::Nothing
        };
        Coverage {
            level,
            frozen,
            holds,
        }
    }

    /// Holds that overlap `target` (see [`Target::overlaps`]).
    pub fn overlapping<'a>(&'a self, target: &'a Target) -> impl Iterator<Item = &'a Hold> + 'a {
        // A target with a holder overlaps the asset-wide holds and that holder's; one without
        // overlaps every hold.
        let wanted = target.holder.as_ref().map(holder_tag);
        self.tagged(move |t| wanted.is_none() || t.holder == ASSET_WIDE || Some(t.holder) == wanted)
            .filter(move |h| h.target.overlaps(target))
    }

    /// The next fencing token a lease would get.
    pub fn next_fencing_token(&self) -> FencingToken {
        FencingToken(self.last_fencing_token + 1)
    }

    /// Hides the base's hold of `order_id`, if it has one.
    fn hide(&mut self, order_id: OrderId) {
        if self.in_base(&order_id).is_some() {
            if let Err(i) = self.hidden.binary_search(&order_id) {
                self.hidden.insert(i, order_id);
            }
        }
    }

    /// Applies one decision's effects. Empty effects leave the version unchanged.
    pub fn apply(&mut self, effects: &[Effect]) {
        if effects.is_empty() {
            return;
        }
        for effect in effects {
            match effect {
                Effect::Place { hold } => {
                    if let Some(FencingToken(t)) = hold.fencing_token {
                        self.last_fencing_token = self.last_fencing_token.max(t);
                    }
                    self.hide(hold.order_id);
                    let placed = (Tag::of(hold), Arc::new(hold.clone()));
                    match self.placed_at(&hold.order_id) {
                        Ok(i) => self.placed[i] = placed,
                        Err(i) => self.placed.insert(i, placed),
                    }
                }
                Effect::Lift { order_id, .. } => {
                    if let Ok(i) = self.placed_at(order_id) {
                        self.placed.remove(i);
                    }
                    self.hide(*order_id);
                }
            }
        }
        self.version += 1;
        if self.placed.len() + self.hidden.len() > FOLD_AT {
            self.fold();
        }
    }

    /// Folds the changes into the base: in place if no other copy shares it, else into a new
    /// one (the only time a copy costs a pass over every hold).
    fn fold(&mut self) {
        let placed = std::mem::take(&mut self.placed);
        let hidden = std::mem::take(&mut self.hidden);
        let base = Arc::make_mut(&mut self.base);
        let old = std::mem::take(base);
        let n = old.holds.len().saturating_sub(hidden.len()) + placed.len();
        let (mut holds, mut tags) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut placed = placed.into_iter().peekable();
        for (tag, hold) in old.tags.into_iter().zip(old.holds) {
            while let Some((t, h)) = placed.next_if(|(t, _)| t.id < tag.id) {
                tags.push(t);
                holds.push(h);
            }
            if hidden.binary_search(&tag.id).is_err() {
                tags.push(tag);
                holds.push(hold);
            }
        }
        for (t, h) in placed {
            tags.push(t);
            holds.push(h);
        }
        *base = Base { holds, tags };
    }
}

/// Two order-id-sorted runs of tagged holds merged into one, each item saying whether it came
/// from the base; an order id is never in both.
struct Merged<A: Iterator, B: Iterator> {
    base: std::iter::Peekable<A>,
    placed: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for Merged<A, B>
where
    A: Iterator<Item = (&'a Tag, &'a Arc<Hold>)>,
    B: Iterator<Item = (&'a Tag, &'a Arc<Hold>)>,
{
    type Item = (&'a Tag, &'a Arc<Hold>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let from_base = match (self.base.peek(), self.placed.peek()) {
            (Some((b, _)), Some((p, _))) => b.id < p.id,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let next = if from_base {
            self.base.next()
        } else {
            self.placed.next()
        };
        next.map(|(tag, hold)| (tag, hold, from_base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AssetId, AssetKey, ChainId};

    fn hold(order_id: OrderId, issuer: &str) -> Hold {
        Hold {
            order_id,
            issuer: IssuerId::parse(issuer).unwrap(),
            kind: OrderKind::Freeze,
            target: Target {
                asset: AssetKey {
                    chain: ChainId::parse("ethereum").unwrap(),
                    asset: AssetId::parse("0xBOND").unwrap(),
                },
                holder: None,
            },
            amount: None,
            instrument: Instrument::parse("court_order").unwrap(),
            priority: Priority::new(0).unwrap(),
            placed_at: Utc::now(),
            expires_at: None,
            fencing_token: None,
        }
    }

    /// The holds are kept in order-id order, one per order id (the later of two), as a map
    /// would keep them; placing replaces, lifting what is not there changes no hold.
    #[test]
    fn holds_are_one_per_order_in_order_id_order() {
        let (a, b, c) = (OrderId::new(), OrderId::new(), OrderId::new());
        let state = AssetState::from_parts(
            [
                hold(c, "US-SEC"),
                hold(a, "US-SEC"),
                hold(c, "US-DOJ"),
                hold(b, "US-SEC"),
            ],
            3,
            0,
        );
        let ids: Vec<OrderId> = state.holds().map(|h| h.order_id).collect();
        let mut sorted = vec![a, b, c];
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(state.hold(&c).unwrap().issuer.as_str(), "US-DOJ");

        let mut changed = state.clone();
        changed.apply(&[Effect::Place {
            hold: hold(a, "US-DOJ"),
        }]);
        assert_eq!(changed.holds().count(), 3);
        assert_eq!(changed.hold(&a).unwrap().issuer.as_str(), "US-DOJ");
        let absent = OrderId::new();
        changed.apply(&[
            Effect::Lift {
                order_id: b,
                cause: LiftCause::Expired,
            },
            Effect::Lift {
                order_id: absent,
                cause: LiftCause::Expired,
            },
        ]);
        assert!(changed.hold(&b).is_none());
        assert_eq!(changed.holds().count(), 2);
        assert_eq!(changed.version(), 5);
        assert_eq!(
            state.holds().count(),
            3,
            "the copy was changed, not the original"
        );
    }
}
