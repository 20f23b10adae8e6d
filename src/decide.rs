//! Deciding a conflict group: each order is put to the policies, then the pure core resolves the
//! group. This is what the sequencer calls for every group, and what scenario tests exercise.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{
    resolve, AssetState, Candidate, ConflictGroup, GroupError, Hold, Instruction, Order,
    RegisteredAsset, Resolution,
};
use crate::policy::{PolicyEngine, PolicyInput};

/// Decides `orders` (all on `asset`, all in one conflict window) against `state` at `now`.
///
/// A RELEASE is judged on the hold it names: an active one, or one that an order of the same
/// group would place, described as that order would place it. Verdicts do not depend on the order
/// of `orders`, and neither does the resolution.
pub fn decide_group(
    engine: &PolicyEngine,
    asset: &RegisteredAsset,
    state: &AssetState,
    orders: Vec<Order>,
    now: DateTime<Utc>,
) -> Result<Resolution, GroupError> {
    let mut holds = Vec::new();
    let mut releases = Vec::new();
    for order in orders {
        match order.instruction {
            Instruction::Release { releases: named } => releases.push((order, named)),
            _ => holds.push(order),
        }
    }

    let judge = |order: &Order, released: Option<&Hold>| {
        engine.evaluate(&PolicyInput {
            order,
            asset,
            released,
        })
    };
    let mut candidates: Vec<Candidate> = holds
        .into_iter()
        .map(|order| {
            let verdict = judge(&order, None);
            Candidate { order, verdict }
        })
        .collect();

    let pending: HashMap<_, &Candidate> = candidates.iter().map(|c| (c.order.id, c)).collect();
    let judged_releases: Vec<Candidate> = releases
        .into_iter()
        .map(|(order, named)| {
            let released = state
                .hold(&named)
                .cloned()
                .or_else(|| pending.get(&named).map(|c| provisional_hold(c, now)));
            let verdict = judge(&order, released.as_ref());
            Candidate { order, verdict }
        })
        .collect();
    candidates.extend(judged_releases);

    let group = ConflictGroup::new(asset.key.clone(), candidates)?;
    Ok(resolve(state, &group, now))
}

/// The hold an order of the same group would place, as a release's policies see it.
fn provisional_hold(candidate: &Candidate, now: DateTime<Utc>) -> Hold {
    Hold::placed_by(
        &candidate.order,
        candidate.verdict.priority(),
        now,
        None,
        None,
    )
}
