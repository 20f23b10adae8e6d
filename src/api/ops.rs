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
    /// Content hash of the loaded policy bundle.
    pub policy_version: String,
    pub policies: usize,
    /// Whether this replica's sequencer holds the lead (one replica does).
    pub sequencer_leading: bool,
}

/// The database is reachable, the migrations are applied and the policies are loaded.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Problem, content_type = "application/problem+json"))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let applied = storage::migrations_applied(&state.pool)
        .await
        .map_err(|e| ApiError::NotReady(format!("database: {e}")))?;
    if !applied {
        return Err(ApiError::NotReady("migrations are not all applied".into()));
    }
    Ok(Json(Readiness {
        status: "ready",
        policy_version: state.engine.bundle().hash().to_owned(),
        policies: state.engine.bundle().policy_count(),
        sequencer_leading: *state.leading.borrow(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}
