//! Webhook subscriptions (admin): create, list, get, enable/disable, delete, rotate the secret,
//! replay from a sequence number, and read the delivery attempts.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{json_body, require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::domain::{check_text, ChainId, Lines};
use crate::storage;
use crate::storage::webhooks::{
    self as store, Attempt, AttemptOutcome, Change, NewSubscription, Subscription,
    SubscriptionStatus,
};
use crate::webhooks::signing::Secret;
use crate::webhooks::webhook_id;

const BODY_LIMIT: usize = 16 * 1024;
const MAX_URL_CHARS: usize = 2_048;
const MAX_DESCRIPTION_CHARS: usize = 500;
/// The longest grace period a rotation may ask for.
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

/// A subscription to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    /// Deliver the decisions on this chain's assets.
    pub chain: ChainId,
    /// Where to POST them: https, and allowed by the engine's URL guard.
    #[schema(max_length = 2048, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    pub url: String,
    /// For the people who run it: at most 500 characters; line breaks and tabs are the only
    /// control characters allowed.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: String,
    /// The first sequence number to deliver (default 1: the chain's whole history, so nothing
    /// decided before the subscription existed is missed). Decisions of other chains are
    /// skipped.
    pub from_seq: Option<u64>,
}

/// A failed delivery that paused its subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedDelivery {
    pub seq: u64,
    pub webhook_id: String,
}

/// A subscription, without its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub id: Uuid,
    pub chain: String,
    pub url: String,
    pub description: String,
    pub status: SubscriptionStatus,
    /// Why it is paused or disabled.
    pub status_reason: Option<String>,
    /// Every decision of the chain up to this sequence number has been delivered; the next
    /// delivery is the chain's first decision after it.
    pub delivered_through: u64,
    /// Failed attempts at the next delivery so far.
    pub attempts: u32,
    /// When the next attempt may start, while one is being retried.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The delivery that exhausted its retries (while paused, or disabled after that). Replay
    /// from its `seq`, or enable, to try again.
    pub failed: Option<FailedDelivery>,
    /// While a rotation's grace period lasts, deliveries carry a signature with the previous
    /// secret too, until this time.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        Self {
            id: s.id,
            failed: s.failed_seq.map(|seq| FailedDelivery {
                seq,
                webhook_id: webhook_id(s.id, seq),
            }),
            chain: s.chain,
            url: s.url,
            description: s.description,
            status: s.status,
            status_reason: s.status_reason,
            delivered_through: s.cursor_seq,
            attempts: s.attempts,
            next_attempt_at: (s.attempts > 0 && s.status == SubscriptionStatus::Active)
                .then_some(s.next_attempt_at),
            previous_secret_expires_at: s.previous_secret_expires_at,
            created_by: s.created_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A subscription with its signing secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionWithSecret {
    #[serde(flatten)]
    pub subscription: SubscriptionView,
    /// `whsec_…`: verify the `webhook-signature` of every delivery with it. It is not shown
    /// again; rotate to get a new one.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("subscription {id}"))
}

/// Create a subscription; its secret is in the answer, and only there.
#[utoipa::path(
    post, path = "/v1/webhooks/subscriptions", tag = "webhooks",
    request_body = CreateSubscription,
    responses(
        (status = 201, description = "Created; `Location` names it", body = SubscriptionWithSecret),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid, or the URL is refused by the guard (`url-refused`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, HeaderMap, Json<SubscriptionWithSecret>), ApiError> {
    require(&principal, &[Role::Admin])?;
    let request: CreateSubscription = json_body(body, BODY_LIMIT)?;
    check_text("url", &request.url, MAX_URL_CHARS, Lines::One).map_err(ApiError::InvalidRequest)?;
    check_text(
        "description",
        &request.description,
        MAX_DESCRIPTION_CHARS,
        Lines::Many,
    )
    .map_err(ApiError::InvalidRequest)?;
    let url = state.webhooks.guard.check(&request.url)?;
    let from_seq = request.from_seq.unwrap_or(1);
    let next = storage::ledger_head(&state.pool).await?.seq + 1;
    if from_seq == 0 || from_seq > next {
        return Err(ApiError::InvalidRequest(format!(
            "from_seq must be between 1 and {next}, the next decision"
        )));
    }
    let secret = Secret::generate();
    let created = store::create(
        &state.pool,
        NewSubscription {
            id: Uuid::new_v4(),
            chain: request.chain.as_str(),
            url: url.as_str(),
            description: &request.description,
            secret: &secret.expose(),
            cursor_seq: from_seq - 1,
            created_by: &principal.sub,
        },
    )
    .await?;
    state.webhook_wake.announce();
    tracing::info!(subscription = %created.id, chain = %created.chain, by = %principal.sub, "webhook subscription created");
    let mut headers = HeaderMap::new();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/v1/webhooks/subscriptions/{}", created.id))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(SubscriptionWithSecret {
            subscription: created.into(),
            secret: secret.expose(),
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this chain's subscriptions.
    pub chain: Option<ChainId>,
}

/// List subscriptions.
#[utoipa::path(
    get, path = "/v1/webhooks/subscriptions", tag = "webhooks",
    params(ListQuery),
    responses(
        (status = 200, body = SubscriptionList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SubscriptionList>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let found = store::list(&state.pool, query.chain.as_ref().map(ChainId::as_str)).await?;
    Ok(Json(SubscriptionList {
        subscriptions: found.into_iter().map(Into::into).collect(),
    }))
}

/// Get a subscription: its cursor, retry state and any failed delivery.
#[utoipa::path(
    get, path = "/v1/webhooks/subscriptions/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<SubscriptionView>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let found = store::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(found.into()))
}

/// Delete a subscription and its attempts log. Deliveries stop; nothing else changes.
#[utoipa::path(
    delete, path = "/v1/webhooks/subscriptions/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    require(&principal, &[Role::Admin])?;
    if !store::delete(&state.pool, id, &principal.sub).await? {
        return Err(not_found(id));
    }
    crate::webhooks::series::retire(id);
    tracing::info!(subscription = %id, by = %principal.sub, "webhook subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Applies an admin's change, wakes this replica's worker, and logs who did what.
async fn apply(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    change: Change<'_>,
    what: &str,
) -> Result<Json<SubscriptionView>, ApiError> {
    let changed = store::change(&state.pool, id, change, &principal.sub)
        .await?
        .ok_or_else(|| not_found(id))?;
    state.webhook_wake.announce();
    tracing::info!(subscription = %id, by = %principal.sub, "webhook subscription {what}");
    Ok(Json(changed.into()))
}

/// Enable a subscription: it resumes at its cursor, retrying a failed delivery first.
#[utoipa::path(
    post, path = "/v1/webhooks/subscriptions/{id}/enable", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn enable(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<SubscriptionView>, ApiError> {
    require(&principal, &[Role::Admin])?;
    apply(&state, &principal, id, Change::Enable, "enabled").await
}

/// Disable a subscription: deliveries stop at the cursor until it is enabled.
#[utoipa::path(
    post, path = "/v1/webhooks/subscriptions/{id}/disable", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = SubscriptionView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn disable(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<SubscriptionView>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let reason = format!("disabled by {}", principal.sub);
    apply(
        &state,
        &principal,
        id,
        Change::Disable { reason: &reason },
        "disabled",
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Deliver again from this sequence number on (the chain's decisions only), even those
    /// already delivered; they keep their `webhook-id`. At most the next undelivered one
    /// (`delivered_through + 1`): a replay never skips.
    pub from_seq: u64,
}

/// Replay a subscription from a sequence number; a paused or disabled one becomes active.
#[utoipa::path(
    post, path = "/v1/webhooks/subscriptions/{id}/replay", tag = "webhooks",
    params(("id" = Uuid, Path)),
    request_body = ReplayRequest,
    responses(
        (status = 200, body = SubscriptionView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let request: ReplayRequest = json_body(body, BODY_LIMIT)?;
    let current = store::get(&state.pool, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    // Replaying moves the cursor back (or keeps it): it never skips a decision of the chain.
    // (The log's other entries, on other chains or events, are not the chain's to skip.)
    let furthest =
        match store::next_decision(&state.pool, &current.chain, current.cursor_seq).await? {
            Some(next) => next,
            None => storage::ledger_head(&state.pool).await?.seq + 1,
        }
        .max(current.cursor_seq + 1);
    if request.from_seq == 0 || request.from_seq > furthest {
        return Err(ApiError::InvalidRequest(format!(
            "from_seq must be between 1 and {furthest}, the next undelivered decision: a replay never skips decisions"
        )));
    }
    apply(
        &state,
        &principal,
        id,
        Change::Replay {
            from_seq: request.from_seq,
        },
        &format!("replayed from seq {}", request.from_seq),
    )
    .await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the current secret keeps signing alongside the new one (default: the engine's
    /// `--webhook-rotation-grace`; at most 30 days; 0 ends it at once).
    pub grace_seconds: Option<u64>,
}

/// Rotate the secret: the answer holds the new one, shown this once.
#[utoipa::path(
    post, path = "/v1/webhooks/subscriptions/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path)),
    request_body(content = Option<RotateRequest>, description = "Optional"),
    responses(
        (status = 200, body = SubscriptionWithSecret),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubscriptionWithSecret>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let request: RotateRequest = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => RotateRequest::default(),
        _ => json_body(body, BODY_LIMIT)?,
    };
    let grace = match request.grace_seconds {
        Some(secs) if secs > MAX_GRACE_SECS => {
            return Err(ApiError::InvalidRequest(format!(
                "grace_seconds is at most {MAX_GRACE_SECS} (30 days)"
            )))
        }
        Some(secs) => Duration::from_secs(secs),
        None => state.webhooks.rotation_grace,
    };
    let secret = Secret::generate();
    let exposed = secret.expose();
    let rotated = store::change(
        &state.pool,
        id,
        Change::Rotate {
            secret: &exposed,
            grace,
        },
        &principal.sub,
    )
    .await?
    .ok_or_else(|| not_found(id))?;
    state.webhook_wake.announce();
    tracing::info!(subscription = %id, by = %principal.sub, grace_secs = grace.as_secs(), "webhook secret rotated");
    Ok(Json(SubscriptionWithSecret {
        subscription: rotated.into(),
        secret: exposed,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    /// Attempts before this attempt id (the previous page's `next_before`).
    pub before: Option<i64>,
    /// At most this many (1 to 1,000; default 100).
    pub limit: Option<u32>,
}

/// One HTTP attempt at delivering a decision.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub id: i64,
    pub webhook_id: String,
    pub seq: u64,
    /// 1 for the first attempt at this decision, counting up through its retries.
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    /// The receiver's HTTP status, if it answered.
    pub response_status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    /// The worker (lease owner) that made the attempt.
    pub worker: Uuid,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id,
            webhook_id: a.webhook_id,
            seq: a.seq,
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            outcome: a.outcome,
            response_status: a.response_status,
            latency_ms: a.latency_ms,
            error: a.error,
            worker: a.worker,
        }
    }
}

/// Attempts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptPage {
    pub attempts: Vec<AttemptView>,
    /// Pass as `before` for older attempts; absent on the last page.
    pub next_before: Option<i64>,
}

/// The delivery attempts log of a subscription, newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/subscriptions/{id}/attempts", tag = "webhooks",
    params(("id" = Uuid, Path), AttemptsQuery),
    responses(
        (status = 200, body = AttemptPage),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn attempts(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    ApiQuery(query): ApiQuery<AttemptsQuery>,
) -> Result<Json<AttemptPage>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let limit = super::targets::page_limit(query.limit)?;
    if store::get(&state.pool, id).await?.is_none() {
        return Err(not_found(id));
    }
    let found = store::attempts(&state.pool, id, query.before, limit).await?;
    let next_before = (found.len() as i64 == limit)
        .then(|| found.last().map(|a| a.id))
        .flatten();
    Ok(Json(AttemptPage {
        attempts: found.into_iter().map(Into::into).collect(),
        next_before,
    }))
}

/// The body limit of the webhooks routes that take one, for the router's edge checks.
pub(super) const ROUTE_BODY_LIMIT: usize = BODY_LIMIT;
