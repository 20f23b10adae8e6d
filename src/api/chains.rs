//! Chains report what they show (observations); the reconciler says, per target, how far that is
//! from what was decided.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{json_body, require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::targets::may_read_chain;
use super::AppState;
use crate::auth::{Principal, Role};
use crate::domain::observation::ObservationBatch;
use crate::domain::projection::Status;
use crate::domain::ChainId;
use crate::reconcile::{self, ChainSummary, TargetReport, Verdict};
use crate::storage;

/// An observation batch is at most this large (about 1,000 targets).
pub const OBSERVATIONS_BODY_LIMIT: usize = 2 * 1024 * 1024;
const MAX_BATCH: usize = 2000;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ObservationAnswer {
    /// Per observation, in order: the target's status as the reconciler now sees it.
    pub results: Vec<Verdict>,
}

/// Report observations of this chain's tokens (`chain` role, the chain's own token only).
///
/// Stored append-only. Only `final` observations count for the reconciler; an observation that
/// shows a state no decision explains opens a divergence, recorded in the ledger.
#[utoipa::path(
    post, path = "/v1/chains/{chain}/observations", tag = "chains",
    params(("chain" = String, Path)),
    request_body = ObservationBatch,
    responses(
        (status = 200, body = ObservationAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn observe(
    State(state): State<AppState>,
    principal: Principal,
    Path(chain): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ObservationAnswer>, ApiError> {
    require(&principal, &[Role::Chain])?;
    let chain = ChainId::parse(chain).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if principal.sub != chain.as_str() {
        return Err(ApiError::Forbidden(format!(
            "a chain token reports only for its own chain ({})",
            principal.sub
        )));
    }
    let batch: ObservationBatch = json_body(body, OBSERVATIONS_BODY_LIMIT)?;
    if batch.observations.is_empty() || batch.observations.len() > MAX_BATCH {
        return Err(ApiError::InvalidRequest(format!(
            "observations must hold 1 to {MAX_BATCH} entries"
        )));
    }
    for (i, o) in batch.observations.iter().enumerate() {
        o.check()
            .map_err(|why| ApiError::InvalidRequest(format!("observations[{i}]: {why}")))?;
        let key = crate::domain::AssetKey {
            chain: chain.clone(),
            asset: o.asset.clone(),
        };
        if storage::asset(&state.pool, &key).await?.is_none() {
            return Err(ApiError::UnknownAsset(key.to_string()));
        }
    }
    let (results, divergences) = reconcile::ingest(
        &state.pool,
        &chain,
        &principal.sub,
        &batch.observations,
        chrono::Utc::now(),
    )
    .await?;
    for d in divergences {
        tracing::warn!(chain = %chain, asset = %d.asset, holder = ?d.holder, version = d.version, block = d.block_number, differences = ?d.differences, "divergence");
    }
    Ok(Json(ObservationAnswer { results }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationQuery {
    /// Only this chain (a chain token always reads its own).
    pub chain: Option<String>,
    /// Only targets with this status.
    pub status: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconciliationAnswer {
    /// Counts by status, per chain (over every target, whatever `status` filters).
    pub chains: Vec<ChainSummary>,
    pub targets: Vec<TargetReport>,
}

/// Every target's reconciliation status, with the chain evidence behind it.
#[utoipa::path(
    get, path = "/v1/reconciliation", tag = "chains",
    params(ReconciliationQuery),
    responses(
        (status = 200, body = ReconciliationAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reconciliation(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ReconciliationQuery>,
) -> Result<Json<ReconciliationAnswer>, ApiError> {
    let status = query
        .status
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let chains = match (
        query.chain,
        principal.has_any(&[Role::Chain])
            && !principal.has_any(&[Role::Auditor, Role::Admin, Role::Regulator]),
    ) {
        (asked, true) => {
            let own = asked.unwrap_or_else(|| principal.sub.clone());
            may_read_chain(&principal, &own)?;
            vec![ChainId::parse(own).map_err(|e| ApiError::InvalidRequest(e.to_string()))?]
        }
        (Some(c), false) => {
            require(&principal, &[Role::Auditor, Role::Admin, Role::Regulator])?;
            vec![ChainId::parse(c).map_err(|e| ApiError::InvalidRequest(e.to_string()))?]
        }
        (None, false) => {
            require(&principal, &[Role::Auditor, Role::Admin, Role::Regulator])?;
            storage::chains::chains(&state.pool).await?
        }
    };
    let now = chrono::Utc::now();
    let mut summaries = Vec::new();
    let mut targets = Vec::new();
    for chain in &chains {
        let (reports, summary) = reconcile::chain_report(&state.pool, chain, now).await?;
        summaries.push(summary);
        targets.extend(
            reports
                .into_iter()
                .filter(|r| status.is_none_or(|s| r.status == s)),
        );
    }
    Ok(Json(ReconciliationAnswer {
        chains: summaries,
        targets,
    }))
}

/// The most an apply deadline may be: a week.
const MAX_APPLY_DEADLINE_SECS: u32 = 7 * 24 * 3600;
pub const CHAIN_SETTINGS_BODY_LIMIT: usize = 4 * 1024;

/// An operator's settings of a chain (admin).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainSettingsRequest {
    /// How long, in seconds, the chain may take to put a decision in force before its target is
    /// `lagging` rather than `pending` (1 to 604,800).
    pub apply_deadline_secs: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainSettingsAnswer {
    pub chain: ChainId,
    pub apply_deadline_secs: u32,
    /// True while no operator has set this chain's settings: the defaults apply.
    pub default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ChainSettingsAnswer {
    fn of(chain: ChainId, stored: Option<storage::chains::ChainSettings>) -> Self {
        match stored {
            Some(s) => Self {
                chain,
                apply_deadline_secs: s.apply_deadline_secs,
                default: false,
                updated_by: Some(s.updated_by),
                updated_at: Some(s.updated_at),
            },
            None => Self {
                chain,
                apply_deadline_secs: reconcile::DEFAULT_APPLY_DEADLINE_SECS,
                default: true,
                updated_by: None,
                updated_at: None,
            },
        }
    }
}

/// A chain's settings: its apply deadline (the default until an admin sets one).
#[utoipa::path(
    get, path = "/v1/chains/{chain}", tag = "chains",
    params(("chain" = ChainId, Path)),
    responses(
        (status = 200, body = ChainSettingsAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
    Path(chain): Path<String>,
) -> Result<Json<ChainSettingsAnswer>, ApiError> {
    may_read_chain(&principal, &chain)?;
    let chain = ChainId::parse(chain).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let stored = storage::chains::settings(&state.pool, &chain).await?;
    Ok(Json(ChainSettingsAnswer::of(chain, stored)))
}

/// Set a chain's apply deadline (admin). It takes effect on the next status the reconciler
/// computes; who set it and when is kept with it.
#[utoipa::path(
    put, path = "/v1/chains/{chain}", tag = "chains",
    params(("chain" = ChainId, Path)),
    request_body = ChainSettingsRequest,
    responses(
        (status = 200, body = ChainSettingsAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn put_settings(
    State(state): State<AppState>,
    principal: Principal,
    Path(chain): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChainSettingsAnswer>, ApiError> {
    require(&principal, &[Role::Admin])?;
    let chain = ChainId::parse(chain).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let request: ChainSettingsRequest = json_body(body, CHAIN_SETTINGS_BODY_LIMIT)?;
    if !(1..=MAX_APPLY_DEADLINE_SECS).contains(&request.apply_deadline_secs) {
        return Err(ApiError::InvalidRequest(format!(
            "apply_deadline_secs must be between 1 and {MAX_APPLY_DEADLINE_SECS}, not {}",
            request.apply_deadline_secs
        )));
    }
    let stored = storage::chains::set_apply_deadline(
        &state.pool,
        &chain,
        request.apply_deadline_secs,
        &principal.sub,
    )
    .await?;
    tracing::info!(chain = %chain, apply_deadline_secs = stored.apply_deadline_secs, by = %principal.sub, "chain settings changed");
    Ok(Json(ChainSettingsAnswer::of(chain, Some(stored))))
}
