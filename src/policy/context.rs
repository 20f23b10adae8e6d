//! The one place where an order becomes a Cedar request: principal, action, resource and the
//! context each order kind carries.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};
use serde_json::{json, Value};

use crate::domain::{Hold, Instruction, IssuerId, Order, RegisteredAsset};

/// Everything a policy may read about one order.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    pub order: &'a Order,
    pub asset: &'a RegisteredAsset,
    /// For a RELEASE: the hold it names, as it was placed (or as the same group will place it).
    pub released: Option<&'a Hold>,
}

/// Why an order could not be put to the policies at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("RELEASE of {0} names no known hold, so there is nothing to evaluate")]
    UnknownReleasedHold(String),
    #[error("the order does not fit the policy schema: {0}")]
    Schema(String),
}

pub(crate) fn uid(type_name: &str, id: &str) -> EntityUid {
    // Type names are fixed identifiers from our schema; ids are data and need no escaping here.
    #[expect(
        clippy::expect_used,
        reason = "constant entity type names from our own schema"
    )]
    let type_name: EntityTypeName = type_name.parse().expect("valid entity type name");
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

/// An issuer is a `Service` if the entities know it as one (a coordinator), else an `Authority`.
pub(crate) fn principal_uid(issuer: &IssuerId, entities: &Entities) -> EntityUid {
    let service = uid("Service", issuer.as_str());
    if entities.get(&service).is_some() {
        service
    } else {
        uid("Authority", issuer.as_str())
    }
}

pub(crate) fn asset_uid(asset: &RegisteredAsset) -> EntityUid {
    uid("Asset", &asset.key.to_string())
}

/// The `Asset` entity policies see: its registration attributes, no parents.
pub fn asset_entity(asset: &RegisteredAsset) -> Entity {
    let attrs = HashMap::from([
        (
            "chain".to_owned(),
            RestrictedExpression::new_string(asset.key.chain.to_string()),
        ),
        (
            "issuer_jurisdiction".to_owned(),
            RestrictedExpression::new_entity_uid(uid(
                "Jurisdiction",
                asset.issuer_jurisdiction.as_str(),
            )),
        ),
        (
            "asset_class".to_owned(),
            RestrictedExpression::new_string(asset.asset_class.to_string()),
        ),
    ]);
    #[expect(clippy::expect_used, reason = "attribute names are distinct constants")]
    Entity::new(asset_uid(asset), attrs, HashSet::new()).expect("distinct attribute names")
}

/// The context record for an order, per the schema's context type for its action.
pub fn context_json(input: &PolicyInput<'_>) -> Result<Value, ContextError> {
    let order = input.order;
    let legal_basis = json!({
        "instrument": order.legal_basis.instrument.as_str(),
        "reference": order.legal_basis.reference,
    });
    let partial = order.instruction.amount().is_some();
    let whole_asset = order.target.holder.is_none();
    Ok(match &order.instruction {
        Instruction::Monitor { .. }
        | Instruction::Freeze { .. }
        | Instruction::Seize { .. }
        | Instruction::Confiscate { .. } => json!({
            "legal_basis": legal_basis,
            "partial": partial,
            "whole_asset": whole_asset,
        }),
        Instruction::Suspend { expires_at, .. } => {
            let seconds = (*expires_at - order.intake_at).num_seconds().max(0);
            json!({
                "legal_basis": legal_basis,
                "partial": partial,
                "whole_asset": whole_asset,
                "duration_hours": (seconds + 3599) / 3600,
            })
        }
        Instruction::Preempt { lease_ttl_ms } => json!({
            "legal_basis": legal_basis,
            "whole_asset": whole_asset,
            "lease_ms": lease_ttl_ms.millis(),
        }),
        Instruction::Release { releases } => {
            let hold = input
                .released
                .filter(|h| h.order_id == *releases)
                .ok_or_else(|| ContextError::UnknownReleasedHold(releases.to_string()))?;
            json!({
                "legal_basis": legal_basis,
                "whole_asset": whole_asset,
                "released": {
                    "issuer": { "__entity": { "type": "Authority", "id": hold.issuer.as_str() } },
                    "same_issuer": hold.issuer == order.issuer,
                    "kind": hold.kind.as_str(),
                    "level": hold.level().number(),
                    "instrument": hold.instrument.as_str(),
                    "priority": hold.priority.value(),
                },
            })
        }
    })
}

/// The Cedar request for an order, checked against the schema.
pub fn request(
    input: &PolicyInput<'_>,
    schema: &Schema,
    entities: &Entities,
) -> Result<Request, ContextError> {
    let action = uid("Action", input.order.kind().as_str());
    let context = Context::from_json_value(context_json(input)?, Some((schema, &action)))
        .map_err(|e| ContextError::Schema(e.to_string()))?;
    Request::new(
        principal_uid(&input.order.issuer, entities),
        action,
        asset_uid(input.asset),
        context,
        Some(schema),
    )
    .map_err(|e| ContextError::Schema(e.to_string()))
}
