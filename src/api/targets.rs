//! Assets and targets: registration, current lock state with its holds, history.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::extract::{json_body, require, ApiQuery};
use super::orders::raw;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::domain::ledger::TargetState;
use crate::domain::projection::{Decided, Status};
use crate::domain::{
    AssetClass, AssetId, AssetKey, ChainId, Hold, HolderAddress, JurisdictionCode, RegisteredAsset,
};
use crate::policy::vocabulary::Vocabulary;
use crate::reconcile::{self, Applied};
use crate::storage;
use crate::storage::policy as store;

pub const ASSET_BODY_LIMIT: usize = 16 * 1024;

/// The attributes of an asset that policies read.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssetRequest {
    /// The jurisdiction of the asset's issuer, e.g. `US`.
    pub issuer_jurisdiction: JurisdictionCode,
    /// e.g. `security`, `stablecoin`.
    pub asset_class: AssetClass,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssetResponse {
    pub chain: ChainId,
    pub asset: AssetId,
    pub issuer_jurisdiction: JurisdictionCode,
    pub asset_class: AssetClass,
}

/// A path's chain and asset, parsed: a 422 problem for either that is not well formed.
pub(crate) fn asset_key(chain: &str, asset: &str) -> Result<AssetKey, ApiError> {
    Ok(AssetKey {
        chain: ChainId::parse(chain).map_err(|e| ApiError::InvalidRequest(e.to_string()))?,
        asset: AssetId::parse(asset).map_err(|e| ApiError::InvalidRequest(e.to_string()))?,
    })
}

/// Register an asset, or update its attributes (admin).
#[utoipa::path(
    put, path = "/v1/assets/{chain}/{asset}", tag = "assets",
    params(("chain" = ChainId, Path), ("asset" = AssetId, Path)),
    request_body = AssetRequest,
    responses(
        (status = 201, description = "Registered", body = AssetResponse),
        (status = 200, description = "Attributes updated", body = AssetResponse),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn put_asset(
    State(state): State<AppState>,
    principal: Principal,
    Path((chain, asset)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AssetResponse>), ApiError> {
    require(&principal, &[Role::Admin])?;
    let key = asset_key(&chain, &asset)?;
    let request: AssetRequest = json_body(body, ASSET_BODY_LIMIT)?;
    // Checked against the version that decides now; with none active yet, nothing to check.
    if let Some(active) = store::active(&state.pool).await? {
        if let Some(version) = store::version(&state.pool, active.version).await? {
            let refused = Vocabulary::of(&version.files).refuse(
                request.issuer_jurisdiction.as_str(),
                request.asset_class.as_str(),
            );
            if let Some(why) = refused {
                return Err(ApiError::InvalidRequest(format!(
                    "{why}; the active policy version {} would never match this asset",
                    active.version
                )));
            }
        }
    }
    let registered = RegisteredAsset {
        key,
        issuer_jurisdiction: request.issuer_jurisdiction,
        asset_class: request.asset_class,
    };
    let created = storage::upsert_asset(&state.pool, &registered).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(AssetResponse {
            chain: registered.key.chain,
            asset: registered.key.asset,
            issuer_jurisdiction: registered.issuer_jurisdiction,
            asset_class: registered.asset_class,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TargetQuery {
    /// One holder's balance; absent: the asset as a whole.
    pub holder: Option<String>,
}

/// A target's current lock state and the holds behind it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TargetResponse {
    pub chain: ChainId,
    pub asset: AssetId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    pub issuer_jurisdiction: JurisdictionCode,
    pub asset_class: AssetClass,
    pub state: TargetState,
    /// With a holder: the holds that cover it. Without: every active hold on the asset.
    pub holds: Vec<Hold>,
    /// Whether the chain shows it: the reconciler's status of this target and the chain's
    /// evidence (the same as its row in `GET /v1/reconciliation`).
    pub applied: AppliedSection,
}

/// The chain side of a target.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppliedSection {
    pub status: Status,
    /// What the token should show: the decided state projected onto what it can express.
    pub decided: Decided,
    /// The latest final observation the chain's adapter reported, if any: what it read, at
    /// which block, the version it believed in force, the transactions it sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation: Option<Applied>,
    /// What differs between `decided` and the observation (empty when converged).
    pub differences: Vec<String>,
    /// Divergences recorded for this target so far.
    pub divergences: u32,
}

/// Who may read a chain's targets and decisions: a chain only its own.
pub(super) fn may_read_chain(principal: &Principal, chain: &str) -> Result<(), ApiError> {
    const READ_ANY_CHAIN: [Role; 4] = [
        Role::Auditor,
        Role::Admin,
        Role::Regulator,
        Role::Coordinator,
    ];
    if principal.has_any(&READ_ANY_CHAIN) {
        return Ok(());
    }
    require(principal, &[Role::Chain])?;
    if principal.sub == chain {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a chain token reads only its own chain ({})",
        principal.sub
    )))
}

/// The current lock state of an asset, or of one holder's balance of it.
#[utoipa::path(
    get, path = "/v1/targets/{chain}/{asset}", tag = "targets",
    params(("chain" = ChainId, Path), ("asset" = AssetId, Path), TargetQuery),
    responses(
        (status = 200, body = TargetResponse),
        (status = 404, description = "Asset not registered", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_target(
    State(state): State<AppState>,
    principal: Principal,
    Path((chain, asset)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<TargetQuery>,
) -> Result<Json<TargetResponse>, ApiError> {
    may_read_chain(&principal, &chain)?;
    let key = asset_key(&chain, &asset)?;
    let holder = query
        .holder
        .map(HolderAddress::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let registered = storage::asset(&state.pool, &key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("asset {key}")))?;
    let asset_state = storage::asset_state(&state.pool, &key).await?;
    let holds = match &holder {
        Some(h) => asset_state.holds_covering(Some(h)).cloned().collect(),
        None => asset_state.holds().cloned().collect(),
    };
    let report = reconcile::target_report(
        &state.pool,
        &key.chain,
        (key.asset.clone(), holder.clone()),
        chrono::Utc::now(),
    )
    .await?;
    Ok(Json(TargetResponse {
        state: TargetState::of(&asset_state, holder.as_ref()),
        chain: registered.key.chain,
        asset: registered.key.asset,
        holder,
        issuer_jurisdiction: registered.issuer_jurisdiction,
        asset_class: registered.asset_class,
        holds,
        applied: AppliedSection {
            status: report.status,
            decided: report.decided,
            observation: report.applied,
            differences: report.differences,
            divergences: report.divergences,
        },
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only decisions on this holder's balance or on the whole asset.
    pub holder: Option<HolderAddress>,
    /// Only decisions after this sequence number.
    pub after: Option<u64>,
    /// At most this many (1 to 1,000; default 100).
    pub limit: Option<u32>,
}

/// A page of decision records in sequence order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionPage {
    #[schema(value_type = Vec<crate::domain::ledger::DecisionRecord>)]
    pub decisions: Vec<Box<RawValue>>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

impl DecisionPage {
    pub(super) fn new(
        decisions: Vec<storage::StoredDecision>,
        after: u64,
    ) -> Result<Self, ApiError> {
        let next_after = decisions.last().map_or(after, |d| d.seq);
        Ok(Self {
            decisions: decisions
                .iter()
                .map(|d| raw(&d.record))
                .collect::<Result<_, _>>()?,
            next_after,
        })
    }
}

pub(super) fn page_limit(limit: Option<u32>) -> Result<i64, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(i64::from(n)),
        n => Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and 1000, not {n}"
        ))),
    }
}

/// The decisions on an asset, oldest first.
#[utoipa::path(
    get, path = "/v1/targets/{chain}/{asset}/history", tag = "targets",
    params(("chain" = ChainId, Path), ("asset" = AssetId, Path), HistoryQuery),
    responses(
        (status = 200, body = DecisionPage),
        (status = 404, description = "Asset not registered", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
    Path((chain, asset)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<DecisionPage>, ApiError> {
    may_read_chain(&principal, &chain)?;
    let key = asset_key(&chain, &asset)?;
    let limit = page_limit(query.limit)?;
    if storage::asset(&state.pool, &key).await?.is_none() {
        return Err(ApiError::NotFound(format!("asset {key}")));
    }
    let after = query.after.unwrap_or(0);
    let decisions = storage::asset_history(
        &state.pool,
        &key,
        query.holder.as_ref().map(HolderAddress::as_str),
        after,
        limit,
    )
    .await?;
    Ok(Json(DecisionPage::new(decisions, after)?))
}
