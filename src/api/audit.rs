//! Tamper evidence over HTTP (auditor or admin): the latest signed checkpoint, a new one on
//! demand, the public key, and inclusion and consistency proofs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::audit::signer::{checkpoint_text, CheckpointKey};
use crate::audit::tree::{self, ProofRequestError};
use crate::auth::{Principal, Role};
use crate::storage::audit::{self as store, Checkpoint};
use crate::storage::StorageError;

const READERS: &[Role] = &[Role::Auditor, Role::Admin];

/// A signed tree head.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointView {
    /// Leaves in the tree: decisions 1 to `tree_size`.
    pub tree_size: u64,
    /// Hex RFC 6962 root.
    pub root: String,
    pub signed_at: DateTime<Utc>,
    pub key_id: String,
    /// Base64 Ed25519 signature of `signed_text`.
    pub signature: String,
    /// Exactly the bytes signed (UTF-8).
    pub signed_text: String,
}

impl From<Checkpoint> for CheckpointView {
    fn from(c: Checkpoint) -> Self {
        Self {
            signed_text: checkpoint_text(c.tree_size, &c.root, c.signed_at, &c.key_id),
            tree_size: c.tree_size,
            root: hex::encode(c.root),
            signed_at: c.signed_at,
            key_id: c.key_id,
            signature: STANDARD.encode(c.signature),
        }
    }
}

/// Extends the tree to every committed decision and signs a checkpoint of it (or returns the
/// one already signed at that size).
pub async fn publish_checkpoint(
    pool: &sqlx::PgPool,
    key: &CheckpointKey,
) -> Result<Checkpoint, StorageError> {
    let (size, root) = tree::extend(pool).await?;
    store::insert_checkpoint(pool, &key.sign(size, root, Utc::now())).await
}

/// The latest signed checkpoint.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints/latest", tag = "audit",
    responses(
        (status = 200, body = CheckpointView),
        (status = 404, description = "None published yet", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn latest(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<CheckpointView>, ApiError> {
    require(&principal, READERS)?;
    let latest = store::latest_checkpoint(&state.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound("a checkpoint".into()))?;
    Ok(Json(latest.into()))
}

/// Publish a checkpoint now, covering every decision committed so far.
#[utoipa::path(
    post, path = "/v1/audit/checkpoints", tag = "audit",
    responses((status = 201, body = CheckpointView)),
    security(("bearer" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, Json<CheckpointView>), ApiError> {
    require(&principal, READERS)?;
    let cp = publish_checkpoint(&state.pool, &state.checkpoint_key).await?;
    Ok((StatusCode::CREATED, Json(cp.into())))
}

/// The key that signs checkpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeyView {
    pub key_id: String,
    pub algorithm: &'static str,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// The same as a SubjectPublicKeyInfo PEM.
    pub pem: String,
}

/// The checkpoint signing key's public half.
#[utoipa::path(
    get, path = "/v1/audit/public-key", tag = "audit",
    responses((status = 200, body = PublicKeyView)),
    security(("bearer" = []))
)]
pub async fn public_key(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<PublicKeyView>, ApiError> {
    require(&principal, READERS)?;
    Ok(Json(key_view(&state.checkpoint_key)))
}

fn key_view(key: &Arc<CheckpointKey>) -> PublicKeyView {
    PublicKeyView {
        key_id: key.key_id().to_owned(),
        algorithm: "Ed25519",
        public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        pem: key.public_pem(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The decision.
    pub seq: u64,
    /// The tree to prove against (default: the latest checkpoint's).
    pub tree_size: Option<u64>,
}

/// An RFC 6962 audit path.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    /// `seq - 1`.
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Hex SHA-256 of the decision's record text: the leaf's data.
    pub record_hash: String,
    /// Hex `SHA-256(0x00 || record_hash)`.
    pub leaf_hash: String,
    /// Hex sibling hashes, nearest the leaf first.
    pub audit_path: Vec<String>,
}

async fn default_size(state: &AppState, asked: Option<u64>) -> Result<u64, ApiError> {
    match asked {
        Some(size) => Ok(size),
        None => Ok(store::latest_checkpoint(&state.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound("a checkpoint".into()))?
            .tree_size),
    }
}

impl From<ProofRequestError> for ApiError {
    fn from(e: ProofRequestError) -> Self {
        match e {
            ProofRequestError::Storage(e) => ApiError::Internal(e),
            other => ApiError::InvalidRequest(other.to_string()),
        }
    }
}

/// Prove that a decision is in a tree.
#[utoipa::path(
    get, path = "/v1/audit/proofs/inclusion", tag = "audit",
    params(InclusionQuery),
    responses(
        (status = 200, body = InclusionProof),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn inclusion(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    require(&principal, READERS)?;
    let size = default_size(&state, query.tree_size).await?;
    let path = tree::prove_inclusion(&state.pool, query.seq, size).await?;
    let record_hash = crate::storage::record_hash(&state.pool, query.seq)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("decision {}", query.seq)))?;
    Ok(Json(InclusionProof {
        seq: query.seq,
        leaf_index: query.seq - 1,
        tree_size: size,
        record_hash: hex::encode(record_hash),
        leaf_hash: hex::encode(crate::domain::merkle::leaf_hash(&record_hash)),
        audit_path: path.iter().map(hex::encode).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree's size.
    pub from: u64,
    /// The newer tree's size (default: the latest checkpoint's).
    pub to: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    /// Hex hashes, as RFC 6962 §2.1.2 orders them.
    pub proof: Vec<String>,
}

/// Prove that an older tree is a prefix of a newer one: nothing recorded was changed.
#[utoipa::path(
    get, path = "/v1/audit/proofs/consistency", tag = "audit",
    params(ConsistencyQuery),
    responses(
        (status = 200, body = ConsistencyProof),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn consistency(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    require(&principal, READERS)?;
    let to = default_size(&state, query.to).await?;
    let proof = tree::prove_consistency(&state.pool, query.from, to).await?;
    Ok(Json(ConsistencyProof {
        from: query.from,
        to,
        proof: proof.iter().map(hex::encode).collect(),
    }))
}
