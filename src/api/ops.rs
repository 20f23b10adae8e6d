//! Operations endpoints, outside `/v1`: liveness, readiness, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use super::problem::{ApiError, Problem};
use super::AppState;
use crate::storage;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    /// The policy version the ledger says is active (absent until the first activation).
    pub active_version: Option<u32>,
    /// Its content hash, which decisions record as their `policy_version`.
    pub policy_version: Option<String>,
    /// The seq of its activation: decisions after it are its decisions.
    pub active_since_seq: Option<u64>,
    /// Whether this replica's sequencer holds the lead (one replica does).
    pub sequencer_leading: bool,
}

/// The database is reachable, the migrations are applied and a policy version is stored (the
/// sequencer activates the first on its own).
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Problem, content_type = "application/problem+json"))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    // A probe gives up after about a second; it must get an answer before then, whatever the
    // pool's acquire timeout.
    tokio::time::timeout(READY_PROBE, readiness(&state))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::NotReady(format!(
                "the database did not answer within {} ms",
                READY_PROBE.as_millis()
            )))
        })
}

/// How long `/readyz` waits for the database.
const READY_PROBE: std::time::Duration = std::time::Duration::from_millis(800);

async fn readiness(state: &AppState) -> Result<Json<Readiness>, ApiError> {
    let applied = storage::migrations_applied(&state.pool)
        .await
        .map_err(|e| ApiError::NotReady(format!("database: {e}")))?;
    if !applied {
        return Err(ApiError::NotReady("migrations are not all applied".into()));
    }
    let not_ready = |e: storage::StorageError| ApiError::NotReady(format!("database: {e}"));
    if !storage::policy::has_versions(&state.pool)
        .await
        .map_err(not_ready)?
    {
        return Err(ApiError::NotReady("no policy version is stored".into()));
    }
    let active = storage::policy::active(&state.pool)
        .await
        .map_err(not_ready)?;
    Ok(Json(Readiness {
        status: "ready",
        active_version: active.as_ref().map(|a| a.version),
        policy_version: active.as_ref().map(|a| a.hash.clone()),
        active_since_seq: active.as_ref().map(|a| a.seq),
        sequencer_leading: *state.leading.borrow(),
    }))
}

/// Prometheus metrics. Open unless the service runs with `--metrics-require-token`; then it
/// needs a token with the `monitor` or `admin` role.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "With --metrics-require-token: missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "With --metrics-require-token: the token lacks the monitor or admin role", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::webhooks::series::scrub(state.metrics.render()),
    )
}

/// This OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}
