//! Ledger records: what the sequencer commits for each decision, and the SHA-256 hash chain that
//! makes the log tamper-evident (events, in [`super::event`], continue the same chain).
//!
//! A record is serialized once, hashed, and stored as that exact text, so anyone can recompute
//! `hash = SHA-256(record text)` and check that each record names its predecessor's hash.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{
    AssetClass, HolderAddress, IssuerId, JurisdictionCode, OrderId, PolicyId, Priority,
};
use super::order::{LockLevel, Order, OrderKind, RegisteredAsset, Target};
use super::resolve::{Decision, Outcome, Reason, Subject};
use super::state::{AssetState, Effect, Frozen};

/// A stretch of the log: seqs `from_seq..=to_seq`, decision times
/// `from_time <= t < to_time`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
    pub from_time: Option<DateTime<Utc>>,
    pub to_time: Option<DateTime<Utc>>,
}

impl Range {
    /// Why the range is inverted (it would replay nothing), if it is: refused, not run.
    pub fn inverted(&self) -> Option<String> {
        if let (Some(from), Some(to)) = (self.from_seq, self.to_seq) {
            if from > to {
                return Some(format!("from_seq {from} is after to_seq {to}"));
            }
        }
        if let (Some(from), Some(to)) = (self.from_time, self.to_time) {
            if from > to {
                return Some("from_time is after to_time".into());
            }
        }
        None
    }
}

/// The hash before the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The last committed record: where the next group continues the sequence and the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub const GENESIS: Head = Head {
        seq: 0,
        hash: GENESIS_HASH,
    };
}

/// A target's lock state as a chain applies it: absolute, so applying it twice is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetState {
    /// The asset's version: bumped once per state-changing decision on the asset.
    pub version: u64,
    /// The effective level for this target: the maximum over the holds that cover it.
    pub level: LockLevel,
    pub level_number: u8,
    /// `"none"`, `"all"`, or the frozen amount in base units as a decimal string.
    pub frozen: String,
    /// The active holds that cover this target (asset-wide ones included), by order id.
    pub holds: Vec<OrderId>,
}

impl TargetState {
    pub fn of(state: &AssetState, holder: Option<&HolderAddress>) -> Self {
        let coverage = state.coverage(holder);
        Self {
            version: state.version(),
            level: coverage.level,
            level_number: coverage.level.number(),
            frozen: match coverage.frozen {
                Frozen::Nothing => "none".into(),
                Frozen::All => "all".into(),
                Frozen::Partial(units) => units.to_string(),
            },
            holds: coverage.holds,
        }
    }
}

/// The asset attributes the policies read when the decision was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetAttributes {
    pub issuer_jurisdiction: JurisdictionCode,
    pub asset_class: AssetClass,
}

/// One committed decision, self-contained: the order, the outcome and why, the policies and
/// their version, and the state it met and left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// Global, gapless, starting at 1 (shared with the ledger's events).
    pub seq: u64,
    /// The seq of the first decision of the conflict group this one was decided in: the
    /// decisions made together, against the same state. Absent in records written before it
    /// was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
    #[schema(value_type = Object)]
    pub subject: Subject,
    pub target: Target,
    pub kind: OrderKind,
    /// The order's issuer; for an expiry, the issuer of the hold that expired.
    pub issuer: IssuerId,
    pub outcome: Outcome,
    pub reason_code: String,
    pub reason: String,
    #[schema(value_type = Object)]
    pub reason_detail: Reason,
    pub priority: Priority,
    pub determining_policies: Vec<PolicyId>,
    /// The content hash of the policy bundle that decided.
    pub policy_version: String,
    pub asset_attributes: AssetAttributes,
    /// The order decided; absent for an expiry.
    pub order: Option<Order>,
    pub decided_at: DateTime<Utc>,
    pub state_before: TargetState,
    pub state_after: TargetState,
    #[schema(value_type = Vec<Object>)]
    pub effects: Vec<Effect>,
    /// Hex SHA-256 of the previous record's text.
    pub prev_hash: String,
}

/// A record ready to commit: its text is what was hashed.
#[derive(Debug, Clone)]
pub struct SealedRecord {
    pub record: DecisionRecord,
    pub text: String,
    pub hash: [u8; 32],
}

/// `SHA-256(text)`: the hash of a record, whose text already names its predecessor.
pub fn record_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Everything a group's decisions need besides the decisions themselves.
pub struct GroupContext<'a> {
    pub asset: &'a RegisteredAsset,
    /// The state the group met (before any expiry it contains).
    pub before: &'a AssetState,
    /// The state the group left.
    pub after: &'a AssetState,
    /// The group's orders, to embed in their decisions.
    pub orders: &'a [Order],
    pub policy_version: &'a str,
    pub decided_at: DateTime<Utc>,
}

/// Turns a resolved group into sealed records continuing `head`, and advances `head`.
///
/// Each decision's before/after state is computed by applying the decisions one by one, so a
/// record shows exactly the state its own decision met.
pub fn seal_group(
    ctx: &GroupContext<'_>,
    decisions: &[Decision],
    head: &mut Head,
) -> Result<Vec<SealedRecord>, serde_json::Error> {
    // A lone decision goes from `before` to `after`; only a longer group needs the states in
    // between, replayed on a copy.
    let mut replay: Option<AssetState> = (decisions.len() > 1).then(|| ctx.before.clone());
    let group = head.seq + 1;
    let mut sealed = Vec::with_capacity(decisions.len());
    for decision in decisions {
        let current = replay.as_ref().unwrap_or(ctx.before);
        let (order, target, kind, issuer) = match decision.subject {
            Subject::Order { order_id } => {
                let Some(order) = ctx.orders.iter().find(|o| o.id == order_id) else {
                    return Err(serde::ser::Error::custom(format!(
                        "decision for order {order_id} outside its group"
                    )));
                };
                (
                    Some(order.clone()),
                    order.target.clone(),
                    order.kind(),
                    order.issuer.clone(),
                )
            }
            Subject::Expiry { hold } => {
                let Some(h) = current.hold(&hold) else {
                    return Err(serde::ser::Error::custom(format!(
                        "expiry of hold {hold} that is not active"
                    )));
                };
                (None, h.target.clone(), h.kind, h.issuer.clone())
            }
        };
        let state_before = TargetState::of(current, target.holder.as_ref());
        let state_after = match replay.as_mut() {
            Some(state) => {
                state.apply(&decision.effects);
                TargetState::of(state, target.holder.as_ref())
            }
            None => TargetState::of(ctx.after, target.holder.as_ref()),
        };
        let record = DecisionRecord {
            seq: head.seq + 1,
            group: Some(group),
            subject: decision.subject,
            target,
            kind,
            issuer,
            outcome: decision.outcome,
            reason_code: reason_code(&decision.reason),
            reason: decision.reason.to_string(),
            reason_detail: decision.reason.clone(),
            priority: decision.priority,
            determining_policies: decision.determining.clone(),
            policy_version: ctx.policy_version.to_owned(),
            asset_attributes: AssetAttributes {
                issuer_jurisdiction: ctx.asset.issuer_jurisdiction.clone(),
                asset_class: ctx.asset.asset_class.clone(),
            },
            order,
            decided_at: ctx.decided_at,
            state_before,
            state_after,
            effects: decision.effects.clone(),
            prev_hash: hex::encode(head.hash),
        };
        let text = serde_json::to_string(&record)?;
        let hash = record_hash(&text);
        *head = Head {
            seq: record.seq,
            hash,
        };
        sealed.push(SealedRecord { record, text, hash });
    }
    Ok(sealed)
}

/// The stable snake-case code of a reason (its serde tag).
pub fn reason_code(reason: &Reason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Why a record does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    #[error("expected seq {expected}: the log has a gap or a duplicate")]
    Gap { expected: u64 },
    #[error("the stored hash {stored} is not SHA-256 of the record text ({computed}): the record or its hash was altered")]
    HashMismatch { stored: String, computed: String },
    #[error("the record text does not parse as a ledger record: {0}")]
    Unreadable(String),
    #[error("the record says seq {0}")]
    WrongSeq(u64),
    #[error("prev_hash {found} does not name the previous record ({expected}): this record or the one before it was altered")]
    WrongPredecessor { found: String, expected: String },
    #[error(transparent)]
    Contradicts(#[from] super::event::Contradiction),
}

/// What every ledger record (decision or event) says about its place in the chain.
#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev_hash: String,
}

/// Checks that the record `seq` with `text` and `stored_hash` continues `head`; returns the
/// new head. Decisions and events link alike.
pub fn check_link(
    head: Head,
    seq: u64,
    text: &str,
    stored_hash: [u8; 32],
) -> Result<Head, BrokenLink> {
    if seq != head.seq + 1 {
        return Err(BrokenLink::Gap {
            expected: head.seq + 1,
        });
    }
    let hash = record_hash(text);
    if hash != stored_hash {
        return Err(BrokenLink::HashMismatch {
            stored: hex::encode(stored_hash),
            computed: hex::encode(hash),
        });
    }
    let record: Link =
        serde_json::from_str(text).map_err(|e| BrokenLink::Unreadable(e.to_string()))?;
    if record.seq != seq {
        return Err(BrokenLink::WrongSeq(record.seq));
    }
    let expected = hex::encode(head.hash);
    if record.prev_hash != expected {
        return Err(BrokenLink::WrongPredecessor {
            found: record.prev_hash,
            expected,
        });
    }
    Ok(Head { seq, hash })
}

/// Checks that `records` (texts in sequence order, starting after `start`) form an unbroken
/// chain; returns the seq of the first record that does not.
pub fn first_broken_link<'a>(
    start: Head,
    records: impl IntoIterator<Item = (u64, &'a str, [u8; 32])>,
) -> Option<u64> {
    let mut head = start;
    for (seq, text, stored_hash) in records {
        match check_link(head, seq, text, stored_hash) {
            Ok(next) => head = next,
            Err(_) => return Some(seq),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_the_serde_tags() {
        assert_eq!(reason_code(&Reason::Applied), "applied");
        assert_eq!(
            reason_code(&Reason::LeaseHeld { by: OrderId::new() }),
            "lease_held"
        );
    }
}
