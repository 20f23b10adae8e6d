//! What a token can express of a decided state, and how the reconciler names the distance
//! between that and what a chain shows.
//!
//! The engine's state has six levels and one hold per order; an ERC-3643 (T-REX) token has an
//! address freeze, a frozen amount per holder, a global pause and forced transfers. The
//! projection is the only place where the first is mapped onto the second: the adapter uses it
//! to know what to send, and the reconciler uses the same function to know what to expect.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{HolderAddress, InvalidValue, IssuerId};
use super::order::LockLevel;
use super::state::{AssetState, Hold};

/// A token quantity in base units, zero allowed (unlike [`super::Amount`], which is an order's
/// positive amount). A decimal string on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Units(pub u128);

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Units {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidValue {
                what: "units",
                why: "must be a decimal integer of base units below 2^128".into(),
            });
        }
        s.parse::<u128>().map(Units).map_err(|_| InvalidValue {
            what: "units",
            why: "exceeds 2^128 - 1 base units".into(),
        })
    }
}

impl Serialize for Units {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Units {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("token units in base units, as a decimal string"))
            .into()
    }
}

impl utoipa::ToSchema for Units {}

/// The decided state of one target as the token can express it.
///
/// MONITOR (level 1) and PREEMPT (level 2) project to nothing: a flag and a coordinator's
/// short lease are enforced off chain (see `docs/reconciliation.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decided {
    /// The asset as a whole: any asset-wide hold at TEMP_LOCKED or above pauses the token.
    Asset { paused: bool },
    /// One holder's balance.
    Holder {
        /// `setAddressFrozen(holder, true)`: a blocking hold without an amount, or a seizure.
        frozen: bool,
        /// `getFrozenTokens(holder)`: the sum of the blocking holds' amounts (0 once seized).
        frozen_tokens: Units,
        /// The authority that took custody (SEIZE / CONFISCATE): the holder's balance must be
        /// moved to its custody wallet, once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        seized_by: Option<IssuerId>,
    },
}

/// What an adapter read from the token for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Observed {
    /// `paused()`.
    Asset { paused: bool },
    /// `isFrozen`, `getFrozenTokens` and `balanceOf` of the holder.
    Holder {
        frozen: bool,
        frozen_tokens: Units,
        balance: Units,
    },
}

/// The projection of `state` for the asset as a whole (`holder` = `None`) or one holder.
pub fn decide(state: &AssetState, holder: Option<&HolderAddress>) -> Decided {
    let blocking = |h: &&Hold| h.level() >= LockLevel::BLOCKING;
    match holder {
        None => Decided::Asset {
            paused: state
                .holds()
                .filter(|h| h.target.holder.is_none())
                .any(|h| blocking(&h)),
        },
        Some(holder) => {
            // Only the holder's own holds: asset-wide ones are expressed by the pause.
            let own: Vec<_> = state
                .holds()
                .filter(|h| h.target.holder.as_ref() == Some(holder))
                .filter(blocking)
                .collect();
            let seized_by = custody_hold(state, holder).map(|h| h.issuer.clone());
            let frozen = seized_by.is_some() || own.iter().any(|h| h.amount.is_none());
            let frozen_tokens = if seized_by.is_some() {
                Units(0)
            } else {
                Units(
                    own.iter()
                        .filter_map(|h| h.amount)
                        .fold(0u128, |sum, a| sum.saturating_add(a.units())),
                )
            };
            Decided::Holder {
                frozen,
                frozen_tokens,
                seized_by,
            }
        }
    }
}

/// The seizure or confiscation that holds `holder`'s balance, if any. One custodian at a time
/// (the resolver guarantees it); should two ever be active, the earliest placed wins, so the
/// choice is deterministic.
pub fn custody_hold<'a>(state: &'a AssetState, holder: &HolderAddress) -> Option<&'a Hold> {
    state
        .holds()
        .filter(|h| h.target.holder.as_ref() == Some(holder) && h.kind.takes_custody())
        .min_by_key(|h| (h.placed_at, h.order_id))
}

/// The differences between what was decided and what a chain shows, in words; empty when the
/// chain is in the decided state.
pub fn differences(decided: &Decided, observed: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    match (decided, observed) {
        (Decided::Asset { paused: d }, Observed::Asset { paused: o }) => {
            if d != o {
                out.push(format!("paused() is {o}, decided {d}"));
            }
        }
        (
            Decided::Holder {
                frozen,
                frozen_tokens,
                seized_by,
            },
            Observed::Holder {
                frozen: o_frozen,
                frozen_tokens: o_tokens,
                balance,
            },
        ) => {
            if frozen != o_frozen {
                out.push(format!("isFrozen is {o_frozen}, decided {frozen}"));
            }
            if frozen_tokens != o_tokens {
                out.push(format!(
                    "getFrozenTokens is {o_tokens}, decided {frozen_tokens}"
                ));
            }
            if let Some(by) = seized_by {
                if balance.0 != 0 {
                    out.push(format!(
                        "balanceOf is {balance}, decided 0 (seized by {by})"
                    ));
                }
            }
        }
        _ => out.push("the observation is of another kind of target".into()),
    }
    out
}

/// How far a chain is from the decided state of one target.
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
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The latest final observation shows the decided state.
    Converged,
    /// Decided after the chain's latest final observation, still within the chain's deadline.
    Pending,
    /// Like pending, past the deadline.
    Lagging,
    /// The chain shows a state no decision explains: the adapter believed the decided version
    /// in force, and the chain says otherwise.
    Diverged,
    /// The adapter could not apply the decided state; the observation says why.
    Failed,
    /// Diverged again and again: the adapter stops fighting and a human has to look.
    Escalated,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Converged,
        Status::Pending,
        Status::Lagging,
        Status::Diverged,
        Status::Failed,
        Status::Escalated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Converged => "converged",
            Status::Pending => "pending",
            Status::Lagging => "lagging",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
            Status::Escalated => "escalated",
        }
    }
}

impl FromStr for Status {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InvalidValue {
                what: "reconciliation status",
                why: format!(
                    "{s:?} is not one of converged, pending, lagging, diverged, failed, escalated"
                ),
            })
    }
}

/// The latest final observation of a target, as the reconciler weighs it.
#[derive(Debug, Clone)]
pub struct FinalObservation<'a> {
    pub observed: &'a Observed,
    /// The asset version the adapter believed in force when it read the chain.
    pub version: u64,
    /// Why the adapter could not apply that version, if it could not.
    pub failure: Option<&'a str>,
}

/// What the reconciler knows of one target.
#[derive(Debug, Clone)]
pub struct Standing<'a> {
    pub decided: &'a Decided,
    /// The asset's current version.
    pub version: u64,
    /// When the asset's current version was decided.
    pub decided_at: DateTime<Utc>,
    pub latest: Option<FinalObservation<'a>>,
    /// Divergences recorded for the target so far.
    pub divergences: u32,
}

/// A target that has diverged this many times is escalated instead of re-applied forever.
pub const ESCALATE_AFTER: u32 = 3;

/// The status of a target at `now`, given the chain's apply deadline.
pub fn status(standing: &Standing<'_>, now: DateTime<Utc>, deadline: Duration) -> Status {
    let late = || {
        if now - standing.decided_at > deadline {
            Status::Lagging
        } else {
            Status::Pending
        }
    };
    let Some(latest) = &standing.latest else {
        // Never observed: nothing to express is already converged (a fresh target is unlocked
        // on a fresh token); anything else waits for the adapter.
        return if is_rest(standing.decided) {
            Status::Converged
        } else {
            late()
        };
    };
    if differences(standing.decided, latest.observed).is_empty() {
        return Status::Converged;
    }
    if latest.version < standing.version {
        return late();
    }
    if latest.failure.is_some() {
        return Status::Failed;
    }
    if standing.divergences >= ESCALATE_AFTER {
        Status::Escalated
    } else {
        Status::Diverged
    }
}

/// The projection of a target without holds.
fn is_rest(decided: &Decided) -> bool {
    match decided {
        Decided::Asset { paused } => !paused,
        Decided::Holder {
            frozen,
            frozen_tokens,
            seized_by,
        } => !frozen && frozen_tokens.0 == 0 && seized_by.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Amount, AssetId, AssetKey, ChainId, Effect, Hold, Instrument, OrderId, OrderKind, Priority,
        Target,
    };

    fn key() -> AssetKey {
        AssetKey {
            chain: ChainId::parse("anvil").unwrap(),
            asset: AssetId::parse("BOND").unwrap(),
        }
    }

    fn alice() -> HolderAddress {
        HolderAddress::parse("0xa11ce").unwrap()
    }

    fn hold(kind: OrderKind, holder: Option<HolderAddress>, amount: Option<u128>) -> Hold {
        Hold {
            order_id: OrderId::new(),
            issuer: IssuerId::parse(if kind.takes_custody() {
                "US-DOJ"
            } else {
                "US-SEC"
            })
            .unwrap(),
            kind,
            target: Target {
                asset: key(),
                holder,
            },
            amount: amount.map(|a| Amount::new(a).unwrap()),
            instrument: Instrument::parse("court_order").unwrap(),
            priority: Priority::new(100).unwrap(),
            placed_at: Utc::now(),
            expires_at: None,
            fencing_token: None,
        }
    }

    fn state(holds: Vec<Hold>) -> AssetState {
        let mut s = AssetState::default();
        for hold in holds {
            s.apply(&[Effect::Place { hold }]);
        }
        s
    }

    fn holder_of(s: &AssetState) -> Decided {
        decide(s, Some(&alice()))
    }

    #[test]
    fn monitor_and_preempt_put_nothing_on_chain() {
        let s = state(vec![
            hold(OrderKind::Monitor, Some(alice()), None),
            hold(OrderKind::Preempt, Some(alice()), Some(5)),
            hold(OrderKind::Monitor, None, None),
        ]);
        assert_eq!(
            holder_of(&s),
            Decided::Holder {
                frozen: false,
                frozen_tokens: Units(0),
                seized_by: None
            }
        );
        assert_eq!(decide(&s, None), Decided::Asset { paused: false });
    }

    #[test]
    fn a_blocking_hold_without_amount_freezes_the_address() {
        for kind in [OrderKind::Suspend, OrderKind::Freeze] {
            let s = state(vec![hold(kind, Some(alice()), None)]);
            assert_eq!(
                holder_of(&s),
                Decided::Holder {
                    frozen: true,
                    frozen_tokens: Units(0),
                    seized_by: None
                }
            );
        }
    }

    #[test]
    fn partial_holds_sum() {
        let s = state(vec![
            hold(OrderKind::Freeze, Some(alice()), Some(300)),
            hold(OrderKind::Suspend, Some(alice()), Some(200)),
            hold(
                OrderKind::Freeze,
                Some(HolderAddress::parse("0xb0b").unwrap()),
                Some(7),
            ),
        ]);
        assert_eq!(
            holder_of(&s),
            Decided::Holder {
                frozen: false,
                frozen_tokens: Units(500),
                seized_by: None
            }
        );
    }

    #[test]
    fn a_seizure_names_its_custodian_and_freezes_an_empty_balance() {
        let s = state(vec![
            hold(OrderKind::Freeze, Some(alice()), Some(300)),
            hold(OrderKind::Seize, Some(alice()), None),
        ]);
        assert_eq!(
            holder_of(&s),
            Decided::Holder {
                frozen: true,
                frozen_tokens: Units(0),
                seized_by: Some(IssuerId::parse("US-DOJ").unwrap())
            }
        );
    }

    #[test]
    fn asset_wide_blocking_holds_pause_and_do_not_touch_holders() {
        let s = state(vec![hold(OrderKind::Freeze, None, None)]);
        assert_eq!(decide(&s, None), Decided::Asset { paused: true });
        assert_eq!(
            holder_of(&s),
            Decided::Holder {
                frozen: false,
                frozen_tokens: Units(0),
                seized_by: None
            }
        );
    }

    fn observed(frozen: bool, tokens: u128, balance: u128) -> Observed {
        Observed::Holder {
            frozen,
            frozen_tokens: Units(tokens),
            balance: Units(balance),
        }
    }

    #[test]
    fn differences_name_each_field() {
        let decided = Decided::Holder {
            frozen: true,
            frozen_tokens: Units(0),
            seized_by: Some(IssuerId::parse("US-DOJ").unwrap()),
        };
        assert!(differences(&decided, &observed(true, 0, 0)).is_empty());
        let diff = differences(&decided, &observed(false, 3, 9));
        assert_eq!(diff.len(), 3, "{diff:?}");
        assert!(diff[0].contains("isFrozen"));
        assert!(diff[1].contains("getFrozenTokens"));
        assert!(diff[2].contains("balanceOf"));
    }

    fn standing<'a>(
        decided: &'a Decided,
        version: u64,
        latest: Option<FinalObservation<'a>>,
        divergences: u32,
    ) -> Standing<'a> {
        Standing {
            decided,
            version,
            decided_at: Utc::now() - Duration::seconds(10),
            latest,
            divergences,
        }
    }

    fn obs<'a>(
        observed: &'a Observed,
        version: u64,
        failure: Option<&'a str>,
    ) -> FinalObservation<'a> {
        FinalObservation {
            observed,
            version,
            failure,
        }
    }

    #[test]
    fn statuses() {
        let frozen = Decided::Holder {
            frozen: true,
            frozen_tokens: Units(0),
            seized_by: None,
        };
        let on_chain_frozen = &observed(true, 0, 100);
        let on_chain_free = &observed(false, 0, 100);
        let now = Utc::now();
        let long = Duration::seconds(60);
        let short = Duration::seconds(1);
        let st = |s: Standing<'_>, d| status(&s, now, d);

        assert_eq!(
            st(
                standing(&frozen, 2, Some(obs(on_chain_frozen, 1, None)), 0),
                long
            ),
            Status::Converged,
            "the chain shows the decided state, whichever version the adapter read it for"
        );
        assert_eq!(
            st(
                standing(&frozen, 2, Some(obs(on_chain_free, 1, None)), 0),
                long
            ),
            Status::Pending
        );
        assert_eq!(
            st(
                standing(&frozen, 2, Some(obs(on_chain_free, 1, None)), 0),
                short
            ),
            Status::Lagging
        );
        assert_eq!(st(standing(&frozen, 2, None, 0), long), Status::Pending);
        assert_eq!(
            st(
                standing(&frozen, 2, Some(obs(on_chain_free, 2, None)), 0),
                long
            ),
            Status::Diverged,
            "the adapter believed version 2 in force and the chain disagrees"
        );
        assert_eq!(
            st(
                standing(&frozen, 2, Some(obs(on_chain_free, 2, Some("reverted"))), 0),
                long
            ),
            Status::Failed
        );
        assert_eq!(
            st(
                standing(
                    &frozen,
                    2,
                    Some(obs(on_chain_free, 2, None)),
                    ESCALATE_AFTER
                ),
                long
            ),
            Status::Escalated
        );
        let rest = Decided::Asset { paused: false };
        assert_eq!(st(standing(&rest, 0, None, 0), short), Status::Converged);
    }

    #[test]
    fn units_parse_at_the_edge() {
        assert_eq!("0".parse::<Units>(), Ok(Units(0)));
        assert_eq!(u128::MAX.to_string().parse::<Units>(), Ok(Units(u128::MAX)));
        for bad in [
            "",
            "-1",
            "1e3",
            "340282366920938463463374607431768211456",
            " 1",
        ] {
            assert!(bad.parse::<Units>().is_err(), "{bad:?}");
        }
    }
}
