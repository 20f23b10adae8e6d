//! The one place where an order becomes a Cedar request: principal, action, resource and the
//! context each order kind carries.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

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

/// The entity types a request names, parsed once: every order needs several.
struct TypeNames {
    action: EntityTypeName,
    asset: EntityTypeName,
    authority: EntityTypeName,
    jurisdiction: EntityTypeName,
    service: EntityTypeName,
}

static TYPES: LazyLock<TypeNames> = LazyLock::new(|| {
    // Type names are fixed identifiers from our schema.
    #[expect(
        clippy::expect_used,
        reason = "constant entity type names from our own schema"
    )]
    let parse = |name: &str| -> EntityTypeName { name.parse().expect("valid entity type name") };
    TypeNames {
        action: parse("Action"),
        asset: parse("Asset"),
        authority: parse("Authority"),
        jurisdiction: parse("Jurisdiction"),
        service: parse("Service"),
    }
});

/// Ids are data and need no escaping here.
fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// An issuer is a `Service` if the entities know it as one (a coordinator), else an `Authority`.
pub(crate) fn principal_uid(issuer: &IssuerId, entities: &Entities) -> EntityUid {
    let service = uid(&TYPES.service, issuer.as_str());
    if entities.get(&service).is_some() {
        service
    } else {
        uid(&TYPES.authority, issuer.as_str())
    }
}

pub(crate) fn asset_uid(asset: &RegisteredAsset) -> EntityUid {
    uid(&TYPES.asset, &asset.key.to_string())
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
                &TYPES.jurisdiction,
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

/// The context record for an order, per the schema's context type for its action, as Cedar
/// values: built directly, since parsing it from JSON was a fifth of the sequencer's time.
/// [`context_json`] is the same record as JSON (the form the docs and the tests show).
pub fn context(input: &PolicyInput<'_>) -> Result<Context, ContextError> {
    let order = input.order;
    let text = |s: &str| RestrictedExpression::new_string(s.to_owned());
    let record = |fields: Vec<(&str, RestrictedExpression)>| {
        RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)))
            .map_err(|e| ContextError::Schema(e.to_string()))
    };
    let legal_basis = record(vec![
        ("instrument", text(order.legal_basis.instrument.as_str())),
        ("reference", text(&order.legal_basis.reference)),
    ])?;
    let partial = RestrictedExpression::new_bool(order.instruction.amount().is_some());
    let whole_asset = RestrictedExpression::new_bool(order.target.holder.is_none());
    let mut fields = vec![("legal_basis", legal_basis), ("whole_asset", whole_asset)];
    match &order.instruction {
        Instruction::Monitor { .. }
        | Instruction::Freeze { .. }
        | Instruction::Seize { .. }
        | Instruction::Confiscate { .. } => fields.push(("partial", partial)),
        Instruction::Suspend { expires_at, .. } => {
            fields.push(("partial", partial));
            fields.push((
                "duration_hours",
                RestrictedExpression::new_long(duration_hours(*expires_at, order.intake_at)),
            ));
        }
        Instruction::Preempt { lease_ttl_ms } => fields.push((
            "lease_ms",
            RestrictedExpression::new_long(i64::from(lease_ttl_ms.millis())),
        )),
        Instruction::Release { releases } => {
            let hold = released(input, releases)?;
            fields.push((
                "released",
                record(vec![
                    (
                        "issuer",
                        RestrictedExpression::new_entity_uid(uid(
                            &TYPES.authority,
                            hold.issuer.as_str(),
                        )),
                    ),
                    (
                        "same_issuer",
                        RestrictedExpression::new_bool(hold.issuer == order.issuer),
                    ),
                    ("kind", text(hold.kind.as_str())),
                    (
                        "level",
                        RestrictedExpression::new_long(i64::from(hold.level().number())),
                    ),
                    ("instrument", text(hold.instrument.as_str())),
                    (
                        "priority",
                        RestrictedExpression::new_long(i64::from(hold.priority.value())),
                    ),
                ])?,
            ));
        }
    }
    Context::from_pairs(fields.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| ContextError::Schema(e.to_string()))
}

/// A SUSPEND's length in whole hours, rounded up.
fn duration_hours(
    expires_at: chrono::DateTime<chrono::Utc>,
    from: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let seconds = (expires_at - from).num_seconds().max(0);
    (seconds + 3599) / 3600
}

/// The hold a RELEASE names, as the input carries it.
fn released<'a>(
    input: &PolicyInput<'a>,
    releases: &crate::domain::OrderId,
) -> Result<&'a Hold, ContextError> {
    input
        .released
        .filter(|h| h.order_id == *releases)
        .ok_or_else(|| ContextError::UnknownReleasedHold(releases.to_string()))
}

/// [`context`] as JSON, in the form Cedar's JSON context format takes it.
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
        Instruction::Suspend { expires_at, .. } => json!({
            "legal_basis": legal_basis,
            "partial": partial,
            "whole_asset": whole_asset,
            "duration_hours": duration_hours(*expires_at, order.intake_at),
        }),
        Instruction::Preempt { lease_ttl_ms } => json!({
            "legal_basis": legal_basis,
            "whole_asset": whole_asset,
            "lease_ms": lease_ttl_ms.millis(),
        }),
        Instruction::Release { releases } => {
            let hold = released(input, releases)?;
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

/// The Cedar request for an order, its context checked against the schema.
pub fn request(
    input: &PolicyInput<'_>,
    schema: &Schema,
    entities: &Entities,
) -> Result<Request, ContextError> {
    let action = uid(&TYPES.action, input.order.kind().as_str());
    Request::new(
        principal_uid(&input.order.issuer, entities),
        action,
        asset_uid(input.asset),
        context(input)?,
        Some(schema),
    )
    .map_err(|e| ContextError::Schema(e.to_string()))
}
