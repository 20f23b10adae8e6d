//! The resolve phase of SPEC §4: a conflict group of orders on one asset, each with its policy
//! verdict, becomes one decision per order and the new state, independent of arrival order.
//!
//! The order of evaluation is fixed by the orders themselves, never by when they arrived:
//! priority (desc), lock level (desc), intake time (asc), order id (asc). Custody contests
//! (SEIZE, CONFISCATE) are settled over the whole group before any order is applied, so a tie
//! between two authorities escalates both instead of letting the earlier one win.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{IssuerId, OrderId, PolicyId, Priority};
use super::order::{AssetKey, Instruction, LockLevel, Order, OrderKind, Target};
use super::state::{AssetState, Effect, Hold, LiftCause};

/// What the policies said about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    allowed: bool,
    /// The permits that allowed it, or the forbids that denied it (empty for a default deny).
    determining: Vec<PolicyId>,
    priority: Priority,
    /// Evaluation errors, as `policy id: message`. A policy that errors does not apply.
    errors: Vec<String>,
}

impl Verdict {
    pub fn allow(determining: Vec<PolicyId>, priority: Priority, errors: Vec<String>) -> Self {
        Self {
            allowed: true,
            determining,
            priority,
            errors,
        }
    }

    /// A denial has no priority: it never outranks anything.
    pub fn deny(forbids: Vec<PolicyId>, errors: Vec<String>) -> Self {
        Self {
            allowed: false,
            determining: forbids,
            priority: Priority::ZERO,
            errors,
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    pub fn determining(&self) -> &[PolicyId] {
        &self.determining
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    pub fn errors(&self) -> &[String] {
        &self.errors
    }
}

/// An order with its verdict, ready to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub order: Order,
    pub verdict: Verdict,
}

impl Candidate {
    fn level(&self) -> LockLevel {
        self.order.kind().level()
    }

    fn priority(&self) -> Priority {
        self.verdict.priority
    }
}

/// Orders on one asset that fell in one conflict window, in resolve order.
#[derive(Debug, Clone)]
pub struct ConflictGroup {
    asset: AssetKey,
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("order {order} targets {found}, not {expected}")]
    WrongAsset {
        order: OrderId,
        expected: AssetKey,
        found: AssetKey,
    },
    #[error("order {0} appears twice in the group")]
    Duplicate(OrderId),
}

impl ConflictGroup {
    pub fn new(asset: AssetKey, mut candidates: Vec<Candidate>) -> Result<Self, GroupError> {
        let mut seen = HashSet::new();
        for c in &candidates {
            if c.order.target.asset != asset {
                return Err(GroupError::WrongAsset {
                    order: c.order.id,
                    expected: asset,
                    found: c.order.target.asset.clone(),
                });
            }
            if !seen.insert(c.order.id) {
                return Err(GroupError::Duplicate(c.order.id));
            }
        }
        candidates.sort_by_key(|c| {
            (
                Reverse(c.priority()),
                Reverse(c.level()),
                c.order.intake_at,
                c.order.id,
            )
        });
        Ok(Self { asset, candidates })
    }

    /// A group with no orders: resolving it only applies due expiries.
    pub fn empty(asset: AssetKey) -> Self {
        Self {
            asset,
            candidates: Vec::new(),
        }
    }

    pub fn asset(&self) -> &AssetKey {
        &self.asset
    }

    /// The candidates in resolve order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

/// Each order gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Applied,
    Rejected,
    /// Lost a custody contest to a higher-priority seizure.
    Superseded,
    /// Irreconcilable without a human; recorded, no state change.
    Escalated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "APPLIED",
            Outcome::Rejected => "REJECTED",
            Outcome::Superseded => "SUPERSEDED",
            Outcome::Escalated => "ESCALATED",
        }
    }
}

/// What a decision is about: an order, or a hold that expired by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "subject", rename_all = "snake_case")]
pub enum Subject {
    Order { order_id: OrderId },
    Expiry { hold: OrderId },
}

/// Why a decision came out as it did. `code` values are stable; messages are for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    Applied,
    Expired,
    PolicyDenied {
        forbids: Vec<PolicyId>,
        errors: Vec<String>,
    },
    NoSuchHold {
        releases: OrderId,
    },
    ConfiscationIsFinal {
        hold: OrderId,
    },
    ReleaseTargetMismatch {
        hold: OrderId,
        hold_target: Target,
    },
    TargetConfiscated {
        by: OrderId,
    },
    ExpiryNotInFuture {
        expires_at: DateTime<Utc>,
    },
    TargetLocked {
        by: OrderId,
        level: LockLevel,
    },
    LeaseHeld {
        by: OrderId,
    },
    OutrankedInCustodyContest {
        winner: OrderId,
    },
    CustodyTie {
        rivals: Vec<OrderId>,
    },
    CustodyHeld {
        custodian: IssuerId,
        by: OrderId,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: &[PolicyId]| {
            ids.iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Reason::Applied => write!(f, "applied"),
            Reason::Expired => write!(f, "the hold reached its expiry"),
            Reason::PolicyDenied { forbids, errors } => {
                if forbids.is_empty() {
                    write!(f, "no permit policy allows this order")?;
                } else {
                    write!(f, "denied by policy {}", list(forbids))?;
                }
                if !errors.is_empty() {
                    write!(f, " (evaluation errors: {})", errors.join("; "))?;
                }
                Ok(())
            }
            Reason::NoSuchHold { releases } => {
                write!(f, "order {releases} is not an active hold on this asset")
            }
            Reason::ConfiscationIsFinal { hold } => {
                write!(f, "hold {hold} is a confiscation, which is final")
            }
            Reason::ReleaseTargetMismatch { hold, hold_target } => write!(
                f,
                "the release must name the hold's own target {hold_target} (hold {hold})"
            ),
            Reason::TargetConfiscated { by } => {
                write!(f, "the target was confiscated by order {by}; that is final")
            }
            Reason::ExpiryNotInFuture { expires_at } => {
                write!(f, "expires_at {expires_at} is not in the future")
            }
            Reason::TargetLocked { by, level } => write!(
                f,
                "a preemptive lease cannot be taken while hold {by} keeps the target at {level:?}"
            ),
            Reason::LeaseHeld { by } => write!(f, "lease {by} is already active on the target"),
            Reason::OutrankedInCustodyContest { winner } => {
                write!(f, "custody goes to the higher-priority order {winner}")
            }
            Reason::CustodyTie { rivals } => {
                let rivals: Vec<String> = rivals.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "competing custody orders of equal priority from different authorities ({}); needs a human",
                    rivals.join(", ")
                )
            }
            Reason::CustodyHeld { custodian, by } => write!(
                f,
                "custody is held by {custodian} under order {by} at equal or lower priority; transferring it needs a human"
            ),
        }
    }
}

/// One decision: the outcome, its reason, the policies behind it, and the state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub subject: Subject,
    pub outcome: Outcome,
    pub reason: Reason,
    pub priority: Priority,
    pub determining: Vec<PolicyId>,
    pub effects: Vec<Effect>,
}

/// The decisions of one group, in the order they are to be sequenced, and the resulting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub decisions: Vec<Decision>,
    pub state: AssetState,
}

/// Decides a conflict group against the asset's state at `now` (the sequencer's database time).
///
/// Holds whose expiry is due at `now` expire first, each as its own decision; then every order
/// gets exactly one decision, in resolve order. The result does not depend on the order in which
/// `group` was built.
pub fn resolve(state: &AssetState, group: &ConflictGroup, now: DateTime<Utc>) -> Resolution {
    let mut state = state.clone();
    let mut decisions = expire_due(&mut state, now);
    let contest = settle_custody_contests(group.candidates());
    for candidate in group.candidates() {
        let decision = decide(&state, candidate, contest.get(&candidate.order.id), now);
        state.apply(&decision.effects);
        decisions.push(decision);
    }
    Resolution { decisions, state }
}

fn expire_due(state: &mut AssetState, now: DateTime<Utc>) -> Vec<Decision> {
    let mut due: Vec<(DateTime<Utc>, OrderId, Priority)> = state
        .expiring()
        .filter_map(|h| match h.expires_at {
            Some(at) if at <= now => Some((at, h.order_id, h.priority)),
            _ => None,
        })
        .collect();
    due.sort();
    due.into_iter()
        .map(|(_, hold, priority)| {
            let decision = Decision {
                subject: Subject::Expiry { hold },
                outcome: Outcome::Applied,
                reason: Reason::Expired,
                priority,
                determining: Vec::new(),
                effects: vec![Effect::Lift {
                    order_id: hold,
                    cause: LiftCause::Expired,
                }],
            };
            state.apply(&decision.effects);
            decision
        })
        .collect()
}

/// How an order fared in its group's custody contest, when it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContestLoss {
    Outranked { winner: OrderId },
    Tied { rivals: Vec<OrderId> },
}

/// Settles custody contests among the allowed SEIZE/CONFISCATE orders of a group. Orders whose
/// targets overlap (directly or through a chain of overlaps) contest together: the highest
/// priority wins; if the highest priority is shared by several authorities, all of them are
/// escalated and the rest are outranked.
fn settle_custody_contests(sorted: &[Candidate]) -> BTreeMap<OrderId, ContestLoss> {
    let contenders: Vec<&Candidate> = sorted
        .iter()
        .filter(|c| c.verdict.allowed && c.order.kind().takes_custody())
        .collect();
    let mut losses = BTreeMap::new();
    for contest in overlap_components(&contenders) {
        // `contest` keeps resolve order, so its first member has the top priority.
        let top = contest[0].priority();
        let leaders: Vec<&Candidate> = contest
            .iter()
            .copied()
            .filter(|c| c.priority() == top)
            .collect();
        let leader_issuers: BTreeSet<&IssuerId> = leaders.iter().map(|c| &c.order.issuer).collect();
        let tied = leader_issuers.len() > 1;
        for c in &contest {
            let id = c.order.id;
            if c.priority() == top {
                if tied {
                    let rivals = leaders
                        .iter()
                        .map(|l| l.order.id)
                        .filter(|r| *r != id)
                        .collect();
                    losses.insert(id, ContestLoss::Tied { rivals });
                }
            } else if tied || !leader_issuers.contains(&c.order.issuer) {
                losses.insert(
                    id,
                    ContestLoss::Outranked {
                        winner: leaders[0].order.id,
                    },
                );
            }
        }
    }
    losses
}

/// Partitions candidates into groups connected by overlapping targets, each in input order.
fn overlap_components<'a>(items: &[&'a Candidate]) -> Vec<Vec<&'a Candidate>> {
    let mut component: Vec<usize> = (0..items.len()).collect();
    fn root(component: &mut [usize], mut i: usize) -> usize {
        while component[i] != i {
            component[i] = component[component[i]];
            i = component[i];
        }
        i
    }
    for i in 0..items.len() {
        for j in (i + 1)..items.len() {
            if items[i].order.target.overlaps(&items[j].order.target) {
                let (a, b) = (root(&mut component, i), root(&mut component, j));
                component[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<&'a Candidate>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups
            .entry(root(&mut component, i))
            .or_default()
            .push(*item);
    }
    groups.into_values().collect()
}

fn decide(
    state: &AssetState,
    candidate: &Candidate,
    contest: Option<&ContestLoss>,
    now: DateTime<Utc>,
) -> Decision {
    let order = &candidate.order;
    let verdict = &candidate.verdict;
    let (outcome, reason, effects) = match transition(state, candidate, contest, now) {
        Ok(effects) => (Outcome::Applied, Reason::Applied, effects),
        Err(reason) => {
            let outcome = match reason {
                Reason::OutrankedInCustodyContest { .. } => Outcome::Superseded,
                Reason::CustodyTie { .. } | Reason::CustodyHeld { .. } => Outcome::Escalated,
                _ => Outcome::Rejected,
            };
            (outcome, reason, Vec::new())
        }
    };
    Decision {
        subject: Subject::Order { order_id: order.id },
        outcome,
        reason,
        priority: verdict.priority,
        determining: verdict.determining.clone(),
        effects,
    }
}

/// The state change an order makes, or the reason it makes none.
fn transition(
    state: &AssetState,
    candidate: &Candidate,
    contest: Option<&ContestLoss>,
    now: DateTime<Utc>,
) -> Result<Vec<Effect>, Reason> {
    let order = &candidate.order;
    let verdict = &candidate.verdict;

    // Without the hold it names, a release has nothing to be judged on.
    let released = match &order.instruction {
        Instruction::Release { releases } => {
            Some(state.hold(releases).ok_or(Reason::NoSuchHold {
                releases: *releases,
            })?)
        }
        _ => None,
    };
    if !verdict.allowed {
        return Err(Reason::PolicyDenied {
            forbids: verdict.determining.clone(),
            errors: verdict.errors.clone(),
        });
    }
    match contest {
        Some(ContestLoss::Outranked { winner }) => {
            return Err(Reason::OutrankedInCustodyContest { winner: *winner })
        }
        Some(ContestLoss::Tied { rivals }) => {
            return Err(Reason::CustodyTie {
                rivals: rivals.clone(),
            })
        }
        None => {}
    }

    if let Some(hold) = released {
        return release(order, hold);
    }

    let holder = order.target.holder.as_ref();
    if let Some(confiscation) = state
        .holds_covering(holder)
        .find(|h| h.kind == OrderKind::Confiscate)
    {
        return Err(Reason::TargetConfiscated {
            by: confiscation.order_id,
        });
    }

    let (expires_at, fencing_token) = match &order.instruction {
        Instruction::Suspend { expires_at, .. } => {
            if *expires_at <= now {
                return Err(Reason::ExpiryNotInFuture {
                    expires_at: *expires_at,
                });
            }
            (Some(*expires_at), None)
        }
        Instruction::Preempt { lease_ttl_ms } => {
            let overlapping = || state.overlapping(&order.target);
            if let Some(lock) = overlapping()
                .filter(|h| h.level() >= LockLevel::BLOCKING)
                .max_by_key(|h| (h.level(), Reverse(h.order_id)))
            {
                return Err(Reason::TargetLocked {
                    by: lock.order_id,
                    level: lock.level(),
                });
            }
            if let Some(lease) = overlapping().find(|h| h.kind == OrderKind::Preempt) {
                return Err(Reason::LeaseHeld { by: lease.order_id });
            }
            (
                Some(now + lease_ttl_ms.duration()),
                Some(state.next_fencing_token()),
            )
        }
        _ => (None, None),
    };

    if order.kind().takes_custody() {
        check_custody(state, candidate)?;
    }

    let hold = Hold::placed_by(order, verdict.priority, now, expires_at, fencing_token);
    Ok(place(state, hold))
}

fn release(order: &Order, hold: &Hold) -> Result<Vec<Effect>, Reason> {
    if hold.kind == OrderKind::Confiscate {
        return Err(Reason::ConfiscationIsFinal {
            hold: hold.order_id,
        });
    }
    if hold.target != order.target {
        return Err(Reason::ReleaseTargetMismatch {
            hold: hold.order_id,
            hold_target: hold.target.clone(),
        });
    }
    Ok(vec![Effect::Lift {
        order_id: hold.order_id,
        cause: LiftCause::Released { by: order.id },
    }])
}

/// An authority other than the current custodian may not take custody by arriving later: a lower
/// priority loses; an equal or higher one needs a human to move custody that has already moved.
fn check_custody(state: &AssetState, candidate: &Candidate) -> Result<(), Reason> {
    let order = &candidate.order;
    let strongest_rival = state
        .holds_of_kind(OrderKind::takes_custody)
        .filter(|h| h.issuer != order.issuer)
        .filter(|h| h.target.overlaps(&order.target))
        .max_by_key(|h| (h.priority, Reverse(h.order_id)));
    match strongest_rival {
        None => Ok(()),
        Some(rival) if candidate.priority() < rival.priority => {
            Err(Reason::OutrankedInCustodyContest {
                winner: rival.order_id,
            })
        }
        Some(rival) => Err(Reason::CustodyHeld {
            custodian: rival.issuer.clone(),
            by: rival.order_id,
        }),
    }
}

/// Places a hold; a blocking hold revokes the preemptive leases it overlaps.
fn place(state: &AssetState, hold: Hold) -> Vec<Effect> {
    let revoked: Vec<Effect> = if hold.level() >= LockLevel::BLOCKING {
        state
            .holds_of_kind(|k| k == OrderKind::Preempt)
            .filter(|h| h.target.overlaps(&hold.target))
            .map(|lease| Effect::Lift {
                order_id: lease.order_id,
                cause: LiftCause::Revoked { by: hold.order_id },
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut effects = vec![Effect::Place { hold }];
    effects.extend(revoked);
    effects
}
