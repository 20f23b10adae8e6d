//! Ledger events: the entries of the log that are not decisions. A policy activation says from
//! which seq on a policy version decides; a subscription change says who changed which chain's
//! webhook delivery, and how.
//!
//! An event takes the next seq and continues the hash chain exactly as a decision does, so the
//! log (and its Merkle tree) proves what was active when, as well as what was decided.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ledger::{record_hash, Head};

/// Who the ledger names for what the engine does of itself: the first activation, which
/// nobody asked for, and the subscription changes its delivery worker makes.
pub const ENGINE_ACTOR: &str = "regulator";

/// A policy version as the ledger names it: its number and its content hash (the
/// `policy_version` every decision it makes records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionRef {
    pub version: u32,
    pub hash: String,
}

/// What a subscription change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubscriptionChange {
    Created {
        url: String,
        from_seq: u64,
    },
    Deleted,
    Enabled,
    Disabled,
    Replayed {
        from_seq: u64,
    },
    /// The secret itself is never in the log.
    SecretRotated {
        grace_seconds: u64,
    },
    /// The engine paused it: the delivery of `failed_seq` ran out of retries.
    Paused {
        failed_seq: u64,
        reason: String,
    },
    /// The engine disabled it: the receiver answered 410 Gone.
    Gone {
        reason: String,
    },
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LedgerEvent {
    /// From the next seq on, `active` decides every order.
    PolicyActivated {
        active: VersionRef,
        /// The version it replaced; none for the ledger's first activation.
        previous: Option<VersionRef>,
        /// Asked for as a rollback (to an earlier version).
        rollback: bool,
    },
    SubscriptionChanged {
        subscription: Uuid,
        chain: String,
        change: SubscriptionChange,
    },
    /// A chain showed, at a final block, a state no decision explains (see
    /// `docs/reconciliation.md`): the evidence auditors see in the log.
    DivergenceDetected(Divergence),
}

/// What a divergence records: where, at which block, against which decided version, and what
/// differed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Divergence {
    pub chain: String,
    pub asset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The asset version the adapter believed in force.
    pub version: u64,
    pub block_number: u64,
    pub block_hash: String,
    pub differences: Vec<String>,
}

impl LedgerEvent {
    /// The `kind` column and metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerEvent::PolicyActivated { .. } => "policy_activated",
            LedgerEvent::SubscriptionChanged { .. } => "subscription_changed",
            LedgerEvent::DivergenceDetected(_) => "divergence_detected",
        }
    }
}

/// What the API asks the sequencer to put in the log. The sequencer decides an activation
/// (the version must exist, compile, and not be active already) and records a subscription
/// change as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventRequest {
    Activate {
        version: u32,
        rollback: bool,
    },
    Subscription {
        subscription: Uuid,
        chain: String,
        change: SubscriptionChange,
    },
    /// Recorded as it is, like a subscription change.
    Divergence(Divergence),
}

impl EventRequest {
    /// The `kind` column of the request queue.
    pub fn kind(&self) -> &'static str {
        match self {
            EventRequest::Activate { .. } => "activate",
            EventRequest::Subscription { .. } => "subscription",
            EventRequest::Divergence(_) => "divergence",
        }
    }
}

/// A committed event, self-contained like a decision record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// In the same sequence as decisions.
    pub seq: u64,
    pub event: LedgerEvent,
    /// Who asked for it: the token subject (`regulator` for the engine's own first activation).
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
    /// Hex SHA-256 of the previous record's text.
    pub prev_hash: String,
}

/// An event ready to commit: its text is what was hashed.
#[derive(Debug, Clone)]
pub struct SealedEvent {
    pub record: EventRecord,
    pub text: String,
    pub hash: [u8; 32],
}

/// Seals `event` as the record after `head`, and advances `head`.
pub fn seal_event(
    event: LedgerEvent,
    actor: &str,
    recorded_at: DateTime<Utc>,
    head: &mut Head,
) -> Result<SealedEvent, serde_json::Error> {
    let record = EventRecord {
        seq: head.seq + 1,
        event,
        actor: actor.to_owned(),
        recorded_at,
        prev_hash: hex::encode(head.hash),
    };
    let text = serde_json::to_string(&record)?;
    let hash = record_hash(&text);
    *head = Head {
        seq: record.seq,
        hash,
    };
    Ok(SealedEvent { record, text, hash })
}

/// Follows the log record by record and checks what the records say about each other beyond
/// the hash chain, from the ledger's first activation on (records before it were written by an
/// engine older than activations, which promised neither): every decision records the version
/// the last activation before it made active, and time never goes back.
#[derive(Debug, Default)]
pub struct ActiveTrail {
    active: Option<String>,
    last_time: Option<DateTime<Utc>>,
}

/// A record that contradicts the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Contradiction {
    #[error("decided by policy version {recorded}, but the ledger had activated {active}")]
    Policy { recorded: String, active: String },
    #[error(
        "stamped {at}, before the previous record ({previous}): the ledger's time never goes back"
    )]
    TimeWentBack {
        at: DateTime<Utc>,
        previous: DateTime<Utc>,
    },
}

impl ActiveTrail {
    /// Takes the next record's text (already known to be a linked ledger record).
    pub fn follow(&mut self, text: &str) -> Result<(), Contradiction> {
        #[derive(Deserialize)]
        struct Entry {
            policy_version: Option<String>,
            event: Option<EventShape>,
            decided_at: Option<DateTime<Utc>>,
            recorded_at: Option<DateTime<Utc>>,
        }
        #[derive(Deserialize)]
        struct EventShape {
            active: Option<VersionRef>,
        }
        let Ok(entry) = serde_json::from_str::<Entry>(text) else {
            return Ok(());
        };
        let is_event = entry.event.is_some();
        if let Some(active) = entry.event.and_then(|e| e.active) {
            self.active = Some(active.hash);
        }
        if self.active.is_none() {
            return Ok(());
        }
        if let Some(at) = entry.decided_at.or(entry.recorded_at) {
            if let Some(previous) = self.last_time.filter(|p| *p > at) {
                return Err(Contradiction::TimeWentBack { at, previous });
            }
            self.last_time = Some(at);
        }
        if is_event {
            return Ok(());
        }
        match (&self.active, entry.policy_version) {
            (Some(active), Some(recorded)) if *active != recorded => Err(Contradiction::Policy {
                recorded,
                active: active.clone(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ledger::check_link;

    #[test]
    fn sealed_events_continue_the_chain_and_round_trip() {
        let mut head = Head::GENESIS;
        let first = seal_event(
            LedgerEvent::PolicyActivated {
                active: VersionRef {
                    version: 1,
                    hash: "ab".into(),
                },
                previous: None,
                rollback: false,
            },
            "regulator",
            Utc::now(),
            &mut head,
        )
        .unwrap();
        let second = seal_event(
            LedgerEvent::SubscriptionChanged {
                subscription: Uuid::nil(),
                chain: "ethereum".into(),
                change: SubscriptionChange::Replayed { from_seq: 1 },
            },
            "ops",
            Utc::now(),
            &mut head,
        )
        .unwrap();
        let after_first = check_link(Head::GENESIS, 1, &first.text, first.hash).unwrap();
        assert_eq!(
            check_link(after_first, 2, &second.text, second.hash).unwrap(),
            head
        );
        let parsed: EventRecord = serde_json::from_str(&second.text).unwrap();
        assert_eq!(parsed, second.record);
        assert!(second.text.contains(r#""type":"subscription_changed""#));
        assert!(second.text.contains(r#""action":"replayed""#));
    }

    #[test]
    fn the_trail_refuses_a_decision_by_another_version() {
        let mut head = Head::GENESIS;
        let activation = |hash: &str, head: &mut Head| {
            seal_event(
                LedgerEvent::PolicyActivated {
                    active: VersionRef {
                        version: 1,
                        hash: hash.into(),
                    },
                    previous: None,
                    rollback: false,
                },
                "regulator",
                Utc::now(),
                head,
            )
            .unwrap()
            .text
        };
        let mut trail = ActiveTrail::default();
        // Before any activation, nothing is checked.
        trail.follow(r#"{"seq":1,"policy_version":"old"}"#).unwrap();
        trail.follow(&activation("v1", &mut head)).unwrap();
        trail.follow(r#"{"seq":3,"policy_version":"v1"}"#).unwrap();
        assert_eq!(
            trail.follow(r#"{"seq":4,"policy_version":"v2"}"#),
            Err(Contradiction::Policy {
                recorded: "v2".into(),
                active: "v1".into()
            })
        );
        trail.follow(&activation("v2", &mut head)).unwrap();
        trail.follow(r#"{"seq":6,"policy_version":"v2"}"#).unwrap();
    }

    #[test]
    fn the_trail_refuses_time_going_back() {
        let mut trail = ActiveTrail::default();
        // Before the first activation, time is not checked.
        trail
            .follow(r#"{"seq":1,"decided_at":"2026-11-21T11:00:00Z"}"#)
            .unwrap();
        trail
            .follow(r#"{"seq":2,"event":{"active":{"version":1,"hash":"v1"}},"recorded_at":"2026-11-21T09:00:00Z"}"#)
            .unwrap();
        trail
            .follow(r#"{"seq":1,"decided_at":"2026-11-21T10:00:00Z"}"#)
            .unwrap();
        trail
            .follow(r#"{"seq":2,"decided_at":"2026-11-21T10:00:00Z"}"#)
            .unwrap();
        assert!(matches!(
            trail.follow(r#"{"seq":3,"recorded_at":"2026-11-21T09:59:59Z"}"#),
            Err(Contradiction::TimeWentBack { .. })
        ));
    }
}
