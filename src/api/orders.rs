//! Orders: submit one, submit a batch, read one with its decision.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::extract::{
    canonical_json, idempotency_key, json_body, parse_idempotency_key, require, ApiQuery,
};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::domain::resolve::Outcome;
use crate::domain::{Instruction, IssuerId, LegalBasis, Order, OrderId, OrderKind, Target};
use crate::hub::{RecordText, Waiter};
use crate::storage::{self, Intake, NewOrder, OrderBody};

/// Body limit of a single order.
pub const ORDER_BODY_LIMIT: usize = 64 * 1024;
/// Body limit of a batch.
pub const BATCH_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Most orders in one batch.
pub const MAX_BATCH: usize = 1_000;

/// An order as an authority submits it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// The issuing authority. Defaults to the token's `sub`, and must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerId>,
    pub target: Target,
    pub legal_basis: LegalBasis,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted and durable, waiting for the sequencer.
    Pending,
    Decided,
}

/// An order and, once decided, its decision record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderResponse {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub order: Order,
    /// The decision record exactly as committed to the ledger.
    #[schema(value_type = Option<crate::domain::ledger::DecisionRecord>)]
    pub decision: Option<Box<RawValue>>,
}

impl OrderResponse {
    fn new(order: Order, decision: Option<RecordText>) -> Result<Self, ApiError> {
        let decision = decision.map(|r| raw(&r)).transpose()?;
        Ok(Self {
            order_id: order.id,
            status: if decision.is_some() {
                OrderStatus::Decided
            } else {
                OrderStatus::Pending
            },
            order,
            decision,
        })
    }
}

pub(super) fn raw(text: &str) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(text.to_owned())
        .map_err(|e| ApiError::Internal(storage::StorageError::Corrupt(e.to_string())))
}

/// Checks who may submit `request` and turns it into an order for intake.
fn admit(
    principal: &Principal,
    request: OrderRequest,
    key: String,
    canonical: &serde_json::Value,
) -> Result<NewOrder, ApiError> {
    let kind = request.instruction.kind();
    let allowed: &[Role] = match kind {
        OrderKind::Preempt => &[Role::Coordinator],
        OrderKind::Release => &[Role::Regulator, Role::Coordinator],
        _ => &[Role::Regulator],
    };
    require(principal, allowed)?;
    // Text and times a decision could not use are refused here, before they reach the ledger.
    let invalid = |e: crate::domain::InvalidValue| ApiError::InvalidRequest(e.why);
    request.legal_basis.check().map_err(invalid)?;
    request
        .instruction
        .check_at(Utc::now())
        .map_err(|e| ApiError::InvalidRequest(format!("{}: {}", e.what, e.why)))?;
    let issuer = match request.issuer {
        Some(issuer) if issuer.as_str() != principal.sub => {
            return Err(ApiError::IssuerMismatch {
                sub: principal.sub.clone(),
                issuer: issuer.to_string(),
            })
        }
        Some(issuer) => issuer,
        None => IssuerId::parse(principal.sub.as_str())
            .map_err(|e| ApiError::Forbidden(format!("the token's sub is not an issuer: {e}")))?,
    };
    let request_hash: [u8; 32] = Sha256::digest(canonical_json(canonical).as_bytes()).into();
    Ok(NewOrder {
        id: OrderId::new(),
        issuer,
        idempotency_key: key,
        request_hash,
        target: request.target,
        body: OrderBody {
            legal_basis: request.legal_basis,
            instruction: request.instruction,
        },
    })
}

/// Submit an order.
///
/// Waits for the decision up to the configured bound: 201 with the decision, or 202 with a
/// `Location` to poll. Retrying with the same `Idempotency-Key` and body returns the same order
/// (200); the same key with another body is refused (422).
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = OrderRequest,
    params(("Idempotency-Key" = String, Header, description = "1 to 200 visible ASCII characters, unique per issuer")),
    responses(
        (status = 201, description = "Accepted and decided", body = OrderResponse),
        (status = 200, description = "A retry: the original order", body = OrderResponse),
        (status = 202, description = "Accepted, decision pending; see Location", body = OrderResponse),
        (status = 400, description = "Malformed JSON or missing Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong role, or issuer is not the token's subject", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order, unknown asset, or key reused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let canonical: serde_json::Value = json_body(body, ORDER_BODY_LIMIT)?;
    let request = OrderRequest::deserialize(&canonical)?;
    let new = admit(&principal, request, key, &canonical)?;

    let waiter = state.hub.wait_for(new.id);
    let intake = state
        .intake
        .submit(new.clone())
        .await
        .map_err(intake_unavailable)?;
    match intake {
        Intake::Accepted { order } => {
            let decision = waiter.wait(state.submit_wait).await;
            respond(*order, decision, StatusCode::CREATED)
        }
        Intake::Existing {
            order_id,
            same_request: true,
        } => {
            drop(waiter);
            let waiter = state.hub.wait_for(order_id);
            let stored = storage::order(&state.pool, order_id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("order {order_id}")))?;
            let decision = match stored.decision {
                Some(text) => Some(RecordText::from(text)),
                None => waiter.wait(state.submit_wait).await,
            };
            respond(stored.order, decision, StatusCode::OK)
        }
        Intake::Existing { .. } | Intake::KeyTaken => {
            Err(ApiError::IdempotencyKeyReused(new.idempotency_key))
        }
        Intake::UnknownAsset => Err(ApiError::UnknownAsset(new.target.asset.to_string())),
        Intake::ReleaseRefused { releases, why } => Err(ApiError::ReleaseRefused { releases, why }),
    }
}

/// The database's words are for the log: a caller learns that intake is unavailable, not why.
fn intake_unavailable(e: crate::intake::IntakeError) -> ApiError {
    tracing::error!(error = %e, "intake failed");
    ApiError::NotReady("the order could not be written; retry with the same Idempotency-Key".into())
}

fn respond(
    order: Order,
    decision: Option<RecordText>,
    decided: StatusCode,
) -> Result<Response, ApiError> {
    let location = format!("/v1/orders/{}", order.id);
    let status = if decision.is_some() {
        decided
    } else {
        StatusCode::ACCEPTED
    };
    let body = OrderResponse::new(order, decision)?;
    Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
}

/// Read an order and its decision.
#[utoipa::path(
    get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = crate::domain::OrderId, Path, description = "The order's id")),
    responses(
        (status = 200, body = OrderResponse),
        (status = 404, description = "No such order, or not yours to read", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(order_id): Path<String>,
) -> Result<Json<OrderResponse>, ApiError> {
    let not_found = || ApiError::NotFound(format!("order {order_id}"));
    let id: OrderId = order_id.parse().map_err(|_| not_found())?;
    let stored = storage::order(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let may_read = principal.has_any(&[Role::Auditor, Role::Admin])
        || stored.order.issuer.as_str() == principal.sub;
    if !may_read {
        // Not revealing that someone else's order exists.
        return Err(not_found());
    }
    Ok(Json(OrderResponse::new(
        stored.order,
        stored.decision.map(RecordText::from),
    )?))
}

/// One order of a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// Like the `Idempotency-Key` header: 1 to 200 visible ASCII characters. A key used by
    /// several items belongs to the first of them.
    #[schema(min_length = 1, max_length = 200, pattern = "^[!-~]+$")]
    pub idempotency_key: String,
    pub order: OrderRequest,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At most 1,000 items, each parsed and judged on its own.
    #[schema(value_type = Vec<BatchItem>)]
    pub orders: Vec<serde_json::Value>,
}

/// The result of one batch item: like the single-order response, or a problem.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResult {
    pub index: usize,
    /// What a single submission would have answered: 201, 200, 202, or a 4xx.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<OrderStatus>)]
    pub order_status: Option<OrderStatus>,
    /// The decision record exactly as committed (with `detail=full`, the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::domain::ledger::DecisionRecord>)]
    pub decision: Option<Box<RawValue>>,
    /// What the decision was, without its record (with `detail=summary`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_summary: Option<DecisionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// A decision in a few fields: its place in the log and its outcome. The whole record is at
/// `GET /v1/orders/{order_id}` (and in the audit log, by `seq`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionSummary {
    pub seq: u64,
    #[schema(value_type = String, example = "APPLIED")]
    pub outcome: Outcome,
    pub reason_code: String,
}

/// How much of each decision a batch answer carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    /// Each decided item carries its whole decision record (about 1.5 KB), as a single
    /// submission does.
    #[default]
    Full,
    /// Each decided item carries `decision_summary` instead: a batch of 1,000 answers in
    /// about 150 KB rather than 1.6 MB.
    Summary,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// `full` (the default) or `summary`.
    pub detail: Option<Detail>,
}

/// The summary fields of a record's text; the rest is skipped, not built.
fn summary(text: &str) -> Result<DecisionSummary, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::Internal(storage::StorageError::Corrupt(e.to_string())))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

enum Slot {
    Failed(ApiError),
    Waiting {
        id: OrderId,
        fresh: bool,
        decision: Option<RecordText>,
    },
}

/// Submit up to 1,000 orders at once.
///
/// Every item is judged on its own: a bad item gets its problem, the others go ahead. All
/// accepted items share one intake time. The response waits for their decisions up to the
/// configured bound; an item still pending has status 202.
#[utoipa::path(
    post, path = "/v1/orders/batch", tag = "orders",
    params(BatchQuery),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Per-item results, in input order", body = BatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a batch, more than 1,000 items, or an unknown `detail`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn batch(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<BatchQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchResponse>, ApiError> {
    let detail = query.detail.unwrap_or_default();
    let request: BatchRequest = json_body(body, BATCH_BODY_LIMIT)?;
    if request.orders.len() > MAX_BATCH {
        return Err(ApiError::BatchTooLarge {
            max: MAX_BATCH,
            got: request.orders.len(),
        });
    }

    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(request.orders.len());
    let mut admitted: Vec<(usize, NewOrder)> = Vec::new();
    // Keys of items refused here: the first item of a key is the one judged, so a later item
    // with that key is not written in its place.
    let mut refused_keys: HashSet<String> = HashSet::new();
    for (index, item) in request.orders.into_iter().enumerate() {
        let key = item
            .get("idempotency_key")
            .and_then(|k| k.as_str())
            .map(str::to_owned);
        let parsed = BatchItem::deserialize(&item)
            .map_err(ApiError::from)
            .and_then(|b| {
                let key = parse_idempotency_key(&b.idempotency_key)?;
                if refused_keys.contains(&key) {
                    return Err(ApiError::IdempotencyKeyReused(key));
                }
                let canonical = item.get("order").cloned().unwrap_or_default();
                admit(&principal, b.order, key, &canonical)
            });
        match parsed {
            Ok(new) => {
                admitted.push((index, new));
                slots.push(None);
            }
            Err(e) => {
                if let Some(key) = key {
                    refused_keys.insert(key);
                }
                slots.push(Some(Slot::Failed(e)));
            }
        }
    }

    let mut waiters: HashMap<OrderId, Waiter> = admitted
        .iter()
        .map(|(_, n)| (n.id, state.hub.wait_for(n.id)))
        .collect();
    let orders: Vec<NewOrder> = admitted.iter().map(|(_, n)| n.clone()).collect();
    let outcomes = if orders.is_empty() {
        Vec::new()
    } else {
        let announce = storage::Announce::unless_leading(*state.leading.borrow());
        storage::intake(&state.pool, &orders, announce).await?
    };
    if outcomes
        .iter()
        .any(|o| matches!(o, Intake::Accepted { .. }))
    {
        state.intake_signal.notify_one();
    }

    let mut replays = Vec::new();
    for ((index, new), outcome) in admitted.iter().zip(outcomes) {
        slots[*index] = Some(match outcome {
            Intake::Accepted { order } => Slot::Waiting {
                id: order.id,
                fresh: true,
                decision: None,
            },
            Intake::Existing {
                order_id,
                same_request: true,
            } => {
                waiters.remove(&new.id);
                waiters.insert(order_id, state.hub.wait_for(order_id));
                replays.push(order_id.as_uuid());
                Slot::Waiting {
                    id: order_id,
                    fresh: false,
                    decision: None,
                }
            }
            Intake::Existing { .. } | Intake::KeyTaken => {
                waiters.remove(&new.id);
                Slot::Failed(ApiError::IdempotencyKeyReused(new.idempotency_key.clone()))
            }
            Intake::UnknownAsset => {
                waiters.remove(&new.id);
                Slot::Failed(ApiError::UnknownAsset(new.target.asset.to_string()))
            }
            Intake::ReleaseRefused { releases, why } => {
                waiters.remove(&new.id);
                Slot::Failed(ApiError::ReleaseRefused { releases, why })
            }
        });
    }

    // Retried items may be decided already.
    let mut known: HashMap<OrderId, RecordText> = HashMap::new();
    if !replays.is_empty() {
        for d in storage::decisions_for_orders(&state.pool, &replays).await? {
            if let Some(id) = d.order_id {
                known.insert(id, RecordText::from(d.record));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + state.submit_wait;
    for slot in slots.iter_mut().flatten() {
        if let Slot::Waiting { id, decision, .. } = slot {
            // One order may fill several slots (the same key twice in a batch): wait once,
            // answer every slot.
            if let Some(text) = known.get(id) {
                *decision = Some(RecordText::clone(text));
            } else if let Some(waiter) = waiters.remove(id) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                *decision = waiter.wait(left.max(Duration::from_millis(1))).await;
                if let Some(text) = decision {
                    known.insert(*id, RecordText::clone(text));
                }
            }
        }
    }

    let results = slots
        .into_iter()
        .enumerate()
        .map(|(index, slot)| match slot {
            Some(Slot::Waiting {
                id,
                fresh,
                decision,
            }) => {
                let status = match (&decision, fresh) {
                    (None, _) => StatusCode::ACCEPTED,
                    (Some(_), true) => StatusCode::CREATED,
                    (Some(_), false) => StatusCode::OK,
                };
                let decided = decision.is_some();
                let (decision, decision_summary) = match (detail, decision.as_deref()) {
                    (_, None) => (None, None),
                    (Detail::Full, Some(text)) => (Some(raw(text)?), None),
                    (Detail::Summary, Some(text)) => (None, Some(summary(text)?)),
                };
                Ok(BatchResult {
                    index,
                    status: status.as_u16(),
                    order_id: Some(id),
                    order_status: Some(if decided {
                        OrderStatus::Decided
                    } else {
                        OrderStatus::Pending
                    }),
                    decision,
                    decision_summary,
                    problem: None,
                })
            }
            Some(Slot::Failed(e)) => {
                let problem = e.problem();
                Ok(BatchResult {
                    index,
                    status: problem.status,
                    order_id: None,
                    order_status: None,
                    decision: None,
                    decision_summary: None,
                    problem: Some(problem),
                })
            }
            None => Err(ApiError::NotReady("a batch item was left unjudged".into())),
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(BatchResponse { results }))
}
