//! The notification body a chain receives for each decision: the wire format of SPEC §8, built
//! from the ledger's own text so a notification can never disagree with the decision it carries.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::DECISION_EVENT;
use crate::storage::webhooks::delivery::Pending;

/// The notification body: `{type, timestamp, data}`, where `data` holds the decision's record
/// exactly as the ledger has it, its hash, and the target's resulting state and version.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// When the decision was made, exactly as its record says.
    timestamp: &'a RawValue,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    seq: u64,
    /// Hex SHA-256 of `decision`'s text as stored.
    hash: &'a str,
    /// The target's absolute state after the decision, with the asset's version.
    state: &'a RawValue,
    decision: &'a RawValue,
}

#[derive(Deserialize)]
struct RecordFields<'a> {
    #[serde(borrow)]
    decided_at: &'a RawValue,
    #[serde(borrow)]
    state_after: &'a RawValue,
}

/// The body for one decision, byte for byte what is signed and sent.
pub fn payload(decision: &Pending) -> Result<Vec<u8>, serde_json::Error> {
    let record: &RawValue = serde_json::from_str(&decision.record)?;
    let fields: RecordFields<'_> = serde_json::from_str(&decision.record)?;
    serde_json::to_vec(&Envelope {
        kind: DECISION_EVENT,
        timestamp: fields.decided_at,
        data: Data {
            seq: decision.seq,
            hash: &decision.hash,
            state: fields.state_after,
            decision: record,
        },
    })
}
