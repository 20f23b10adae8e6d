//! Tamper evidence over HTTP (auditor or admin): the latest signed checkpoint, a new one on
//! demand, the public key, and inclusion and consistency proofs. A `chain` token reads the
//! checkpoints, the key and consistency proofs too, to anchor checkpoints on its chain.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::extract::{require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::audit::notary::NotaryError;
use crate::audit::signer::{signed_text, CheckpointKey};
use crate::audit::tree::{self, ProofRequestError};
use crate::auth::{Principal, Role};
use crate::domain::resolve::Outcome;
use crate::domain::{AssetId, ChainId, HolderAddress, IssuerId, OrderKind, PolicyId};
use crate::storage::audit::{self as store, AuditFilter, AuditRecord, Checkpoint, SubjectKind};
use crate::storage::StorageError;

const READERS: &[Role] = &[Role::Auditor, Role::Admin];
/// Checkpoints, the key and consistency proofs: a chain's adapter anchors checkpoints too.
const CHECKPOINT_READERS: &[Role] = super::roles::CHECKPOINT_READERS;

/// A signed tree head.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointView {
    /// Leaves in the tree: decisions 1 to `tree_size`.
    pub tree_size: u64,
    /// Hex RFC 6962 root.
    pub root: String,
    /// Hex root of the state map after decisions 1 to `tree_size` (docs/audit.md); absent from
    /// checkpoints signed before the state map (signed text `regulator checkpoint v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_root: Option<String>,
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
            signed_text: signed_text(&c),
            state_root: c.state_root.map(hex::encode),
            tree_size: c.tree_size,
            root: hex::encode(c.root),
            signed_at: c.signed_at,
            key_id: c.key_id,
            signature: STANDARD.encode(c.signature),
        }
    }
}

impl From<NotaryError> for ApiError {
    fn from(e: NotaryError) -> Self {
        match e {
            NotaryError::Storage(e) => ApiError::Internal(e),
            NotaryError::NoCheckpoint(size) => {
                ApiError::NotFound(format!("no checkpoint of tree size {size} was signed"))
            }
            gone @ NotaryError::NotRetained { .. } => ApiError::StateNotRetained(gone.to_string()),
            refused @ NotaryError::Refused(_) => {
                tracing::error!(error = %refused, "checkpoint refused");
                ApiError::Conflict(refused.to_string())
            }
        }
    }
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
    require(&principal, CHECKPOINT_READERS)?;
    let latest = store::latest_checkpoint(&state.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound("a checkpoint".into()))?;
    Ok(Json(latest.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsQuery {
    /// The cursor: checkpoints of trees larger than this (default 0: from the first).
    pub after: Option<u64>,
    /// Page size (default 100, at most 1,000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPage {
    /// Smallest tree first.
    pub checkpoints: Vec<CheckpointView>,
    /// Pass as `after` for the next page: the last tree size returned (the same as `after`
    /// when there are no more yet).
    pub next_after: u64,
}

/// Past checkpoints, smallest tree first, a page at a time: an auditor who missed some can
/// collect every signed tree head and check each against the next by a consistency proof.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "audit",
    params(CheckpointsQuery),
    responses(
        (status = 200, body = CheckpointPage),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn checkpoints(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<CheckpointsQuery>,
) -> Result<Json<CheckpointPage>, ApiError> {
    require(&principal, CHECKPOINT_READERS)?;
    let limit = super::targets::page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    let page = store::checkpoints_after(&state.pool, after, limit).await?;
    let next_after = page.last().map_or(after, |cp| cp.tree_size);
    Ok(Json(CheckpointPage {
        checkpoints: page.into_iter().map(CheckpointView::from).collect(),
        next_after,
    }))
}

/// Publish a checkpoint now, covering every decision committed so far.
#[utoipa::path(
    post, path = "/v1/audit/checkpoints", tag = "audit",
    responses(
        (status = 201, body = CheckpointView),
        (status = 409, description = "Refused: the stored tree is not the one the records since the last verified checkpoint make (the log was altered)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<(StatusCode, Json<CheckpointView>), ApiError> {
    require(&principal, READERS)?;
    let cp = state.notary.publish(&state.pool).await?;
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
    require(&principal, CHECKPOINT_READERS)?;
    Ok(Json(key_view(state.notary.key())))
}

fn key_view(key: &CheckpointKey) -> PublicKeyView {
    PublicKeyView {
        key_id: key.key_id().to_owned(),
        algorithm: "Ed25519",
        public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        pem: key.public_pem(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
        (status = 404, description = "No checkpoint yet (without tree_size), or no such decision", body = Problem, content_type = "application/problem+json"),
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
#[into_params(parameter_in = Query)]
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
        (status = 404, description = "No checkpoint yet (without to)", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn consistency(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    require(&principal, CHECKPOINT_READERS)?;
    let to = default_size(&state, query.to).await?;
    let proof = tree::prove_consistency(&state.pool, query.from, to).await?;
    Ok(Json(ConsistencyProof {
        from: query.from,
        to,
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

/// The filters of an audit query or export; every one narrows it.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The target's chain.
    pub chain: Option<ChainId>,
    /// The target's asset (with `chain`).
    pub asset: Option<AssetId>,
    /// The target's holder: decisions on that balance.
    pub holder: Option<HolderAddress>,
    /// The authority: the order's issuer (for an expiry, the expired hold's).
    pub issuer: Option<IssuerId>,
    #[param(value_type = Option<String>)]
    pub kind: Option<OrderKind>,
    #[param(value_type = Option<String>)]
    pub outcome: Option<Outcome>,
    /// A policy id among the decision's determining policies.
    pub policy: Option<PolicyId>,
    /// `order` or `expiry`: an expiry carries the kind and issuer of the SUSPEND hold that
    /// expired, so `kind=SUSPEND&subject=order` are the suspensions ordered and
    /// `subject=expiry` their expiries.
    #[param(value_type = Option<String>)]
    pub subject: Option<SubjectKind>,
    /// Decided at or after (RFC 3339).
    pub from_time: Option<DateTime<Utc>>,
    /// Decided before (RFC 3339).
    pub to_time: Option<DateTime<Utc>>,
    /// Sequence numbers from (inclusive).
    pub from_seq: Option<u64>,
    /// Sequence numbers to (inclusive).
    pub to_seq: Option<u64>,
    /// The cursor: decisions after this sequence number (the previous page's `next_after`).
    pub after: Option<u64>,
    /// Page size, 1 to 1,000 (default 100); not for exports, which stream everything.
    pub limit: Option<u32>,
    /// Export only: `ndjson` (default) or `csv`.
    pub format: Option<ExportFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

impl AuditQuery {
    fn filter(&self) -> Result<AuditFilter, ApiError> {
        if self.asset.is_some() && self.chain.is_none() {
            return Err(ApiError::InvalidRequest("asset needs chain".into()));
        }
        Ok(AuditFilter {
            chain: self.chain.as_ref().map(|c| c.as_str().to_owned()),
            asset: self.asset.as_ref().map(|a| a.as_str().to_owned()),
            holder: self.holder.as_ref().map(|h| h.as_str().to_owned()),
            issuer: self.issuer.as_ref().map(|i| i.as_str().to_owned()),
            kind: self.kind.map(|k| k.as_str().to_owned()),
            outcome: self.outcome.map(|o| o.as_str().to_owned()),
            policy: self.policy.as_ref().map(|p| p.as_str().to_owned()),
            subject: self.subject,
            from_time: self.from_time,
            to_time: self.to_time,
            from_seq: self.from_seq,
            to_seq: self.to_seq,
        })
    }
}

/// One decision in an audit answer: the record (with its order, outcome, determining
/// policies, priority and policy version) and its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditItem {
    pub seq: u64,
    /// Hex SHA-256 of `decision`'s exact text.
    pub hash: String,
    #[schema(value_type = crate::domain::ledger::DecisionRecord)]
    pub decision: Box<RawValue>,
}

impl TryFrom<AuditRecord> for AuditItem {
    type Error = ApiError;
    fn try_from(r: AuditRecord) -> Result<Self, ApiError> {
        Ok(Self {
            seq: r.seq,
            hash: r.hash,
            decision: super::orders::raw(&r.record)?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditItem>,
    /// Pass as `after` for the next page; the same as `after` when there are no more yet.
    pub next_after: u64,
}

/// Query the decision log, a page at a time in sequence order.
#[utoipa::path(
    get, path = "/v1/audit/decisions", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn query(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    require(&principal, READERS)?;
    if query.format.is_some() {
        return Err(ApiError::InvalidRequest(
            "format is for /v1/audit/export".into(),
        ));
    }
    let filter = query.filter()?;
    let limit = super::targets::page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    let page = store::audit_page(&state.pool, &filter, after, limit).await?;
    let next_after = page.last().map_or(after, |r| r.seq);
    Ok(Json(AuditPage {
        records: page
            .into_iter()
            .map(AuditItem::try_from)
            .collect::<Result<_, _>>()?,
        next_after,
    }))
}

/// Rows read per chunk of an export.
const EXPORT_PAGE: i64 = 1_000;

/// The CSV columns: the record's main fields, then the record itself, exactly, so a CSV
/// export round-trips like NDJSON.
const CSV_HEADER: [&str; 15] = [
    "seq",
    "decided_at",
    "chain",
    "asset",
    "holder",
    "kind",
    "issuer",
    "outcome",
    "reason_code",
    "priority",
    "determining_policies",
    "policy_version",
    "order_id",
    "hash",
    "record",
];

fn csv_row(writer: &mut csv::Writer<Vec<u8>>, r: &AuditRecord) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(&r.record).map_err(|e| e.to_string())?;
    let text = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let policies = v["determining_policies"]
        .as_array()
        .map(|ps| ps.iter().map(text).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    writer
        .write_record([
            r.seq.to_string(),
            text(&v["decided_at"]),
            text(&v["target"]["chain"]),
            text(&v["target"]["asset"]),
            text(&v["target"]["holder"]),
            text(&v["kind"]),
            text(&v["issuer"]),
            text(&v["outcome"]),
            text(&v["reason_code"]),
            text(&v["priority"]),
            policies,
            text(&v["policy_version"]),
            text(&v["order"]["id"]),
            r.hash.clone(),
            r.record.clone(),
        ])
        .map_err(|e| e.to_string())
}

fn encode(format: ExportFormat, page: &[AuditRecord]) -> Result<Vec<u8>, String> {
    match format {
        ExportFormat::Ndjson => {
            let mut out = Vec::new();
            for r in page {
                let item = AuditItem::try_from(r.clone()).map_err(|e| e.to_string())?;
                serde_json::to_writer(&mut out, &item).map_err(|e| e.to_string())?;
                out.push(b'\n');
            }
            Ok(out)
        }
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            for r in page {
                csv_row(&mut writer, r)?;
            }
            writer.into_inner().map_err(|e| e.to_string())
        }
    }
}

/// Export the decisions a query selects, streamed in sequence order as NDJSON (one audit
/// item per line) or CSV (with the exact record in its last column). Nothing is buffered
/// whole: rows are read and sent a thousand at a time. A failure part-way ends the
/// connection without the final chunk, so a cut-short export is never mistaken for a whole one.
/// Resume with `after` = the last seq received.
#[utoipa::path(
    get, path = "/v1/audit/export", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "The records, one per line: NDJSON (`format=ndjson`, the default) or CSV with a header row (`format=csv`)",
            content(
                (String = "application/x-ndjson"),
                (String = "text/csv"),
            )),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    require(&principal, READERS)?;
    if query.limit.is_some() {
        return Err(ApiError::InvalidRequest(
            "an export streams every match; limit is for /v1/audit/decisions".into(),
        ));
    }
    let filter = query.filter()?;
    let format = query.format.unwrap_or(ExportFormat::Ndjson);
    let pool = state.pool.clone();
    let start = query.after.unwrap_or(0);
    let header = match format {
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer
                .write_record(CSV_HEADER)
                .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?;
            writer
                .into_inner()
                .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?
        }
        ExportFormat::Ndjson => Vec::new(),
    };
    let rows = futures::stream::unfold(Some(start), move |cursor| {
        let pool = pool.clone();
        let filter = filter.clone();
        async move {
            let after = cursor?;
            let page = match store::audit_page(&pool, &filter, after, EXPORT_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "audit export failed part-way");
                    return Some((Err(std::io::Error::other(error.to_string())), None));
                }
            };
            let last = page.last()?.seq;
            let next = (page.len() as i64 == EXPORT_PAGE).then_some(last);
            match encode(format, &page) {
                Ok(bytes) => Some((Ok(Bytes::from(bytes)), next)),
                Err(error) => {
                    tracing::error!(%error, "audit export failed part-way");
                    Some((Err(std::io::Error::other(error)), None))
                }
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(header)) })
        .chain(rows);
    let (content_type, extension) = match format {
        ExportFormat::Ndjson => ("application/x-ndjson", "ndjson"),
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"decisions.{extension}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The cursor: events after this sequence number.
    pub after: Option<u64>,
    /// Page size (default 100, at most 1,000).
    pub limit: Option<u32>,
}

/// One ledger event (a policy activation or a subscription change) and its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventItem {
    pub seq: u64,
    /// Hex SHA-256 of `event`'s exact text.
    pub hash: String,
    #[schema(value_type = crate::domain::event::EventRecord)]
    pub event: Box<RawValue>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<EventItem>,
    /// Pass as `after` for the next page.
    pub next_after: u64,
}

/// The ledger's events in sequence order: policy activations and webhook subscription
/// changes, which share the sequence, the hash chain and the Merkle tree with decisions.
#[utoipa::path(
    get, path = "/v1/audit/events", tag = "audit",
    params(EventsQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    require(&principal, READERS)?;
    let limit = super::targets::page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    let page = crate::storage::policy::events_after(&state.pool, after, limit).await?;
    let next_after = page.last().map_or(after, |(seq, _, _)| *seq);
    Ok(Json(EventPage {
        events: page
            .into_iter()
            .map(|(seq, hash, text)| {
                Ok(EventItem {
                    seq,
                    hash,
                    event: super::orders::raw(&text)?,
                })
            })
            .collect::<Result<_, ApiError>>()?,
        next_after,
    }))
}
