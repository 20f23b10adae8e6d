//! The policy lifecycle for legal teams: validate and test a draft, store it as a version, diff
//! versions, activate a version and roll back. Simulation against the recorded history is in
//! [`super::simulations`].
//!
//! Activation is a ledger event: the request is queued for the sequencer, which records it at
//! the next seq and decides every later order with the version it activated. The response
//! waits for that seq.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{json_body, require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::domain::event::{EventRecord, EventRequest, LedgerEvent, VersionRef};
use crate::domain::{check_text, Lines};
use crate::policy::diff::{diff, PolicyDiff};
use crate::policy::suite::CaseResult;
use crate::policy::{files::MAX_BYTES, Compiled, PolicyFiles};
use crate::storage::policy::{self as store, Activation, RequestOutcome, VersionInfo};
use crate::storage::StorageError;

/// A draft's files may take `MAX_BYTES`; JSON escaping adds some.
pub const DRAFT_BODY_LIMIT: usize = MAX_BYTES + MAX_BYTES / 2;
/// A rollback names at most a version.
pub const ROLLBACK_BODY_LIMIT: usize = 1024;
/// How long an activation waits for the sequencer to record it before answering 202.
const ACTIVATION_WAIT: Duration = Duration::from_secs(10);

const MAX_MESSAGE_CHARS: usize = 2_000;

const READERS: &[Role] = &[Role::PolicyAuthor, Role::Auditor, Role::Admin];
const AUTHORS: &[Role] = &[Role::PolicyAuthor];

/// A draft bundle: its files by name (`schema.cedarschema`, `entities.json`, `*.cedar`,
/// `tests/*.toml`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    pub files: PolicyFiles,
}

/// A draft that checks out.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Validated {
    /// The content hash it would have as a version (and record with its decisions).
    pub hash: String,
    pub policies: usize,
    pub test_suites: usize,
}

/// The results of a bundle's test suites.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestReport {
    pub passed: bool,
    pub cases: usize,
    pub failed: usize,
    pub results: Vec<CaseResult>,
}

impl TestReport {
    fn of(results: Vec<CaseResult>) -> Self {
        let failed = results.iter().filter(|r| !r.passed).count();
        Self {
            passed: failed == 0,
            cases: results.len(),
            failed,
            results,
        }
    }
}

/// A draft to store as a version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    pub files: PolicyFiles,
    /// Why: what the change is for, for the people who review and audit it. 1 to 2,000
    /// characters; line breaks and tabs are the only control characters allowed.
    #[schema(min_length = 1, max_length = 2000)]
    pub message: String,
}

/// A stored version.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: u32,
    pub hash: String,
    /// The token subject that stored it.
    pub author: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

impl From<VersionInfo> for VersionView {
    fn from(v: VersionInfo) -> Self {
        Self {
            version: v.version,
            hash: v.hash,
            author: v.author,
            message: v.message,
            created_at: v.created_at,
        }
    }
}

/// A version just stored (or found: the same content is the same version).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub version: VersionView,
    /// False when a version with this content already existed; it is returned unchanged.
    pub created: bool,
    /// Its own test suites, run against it.
    pub tests: TestSummary,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestSummary {
    pub cases: usize,
    pub failed: usize,
}

/// A version with its files.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub version: VersionView,
    pub files: PolicyFiles,
}

/// An activation as the ledger records it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivationView {
    /// The seq of the activation event: every decision after it is made by `version`.
    pub seq: u64,
    pub version: u32,
    pub hash: String,
    /// The token subject that activated it (`regulator` for the first activation).
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

impl From<Activation> for ActivationView {
    fn from(a: Activation) -> Self {
        Self {
            seq: a.seq,
            version: a.version,
            hash: a.hash,
            actor: a.actor,
            recorded_at: a.recorded_at,
        }
    }
}

/// The versions, newest first, and which is active.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionList {
    pub active: Option<ActivationView>,
    pub versions: Vec<VersionView>,
}

/// The activations, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivationList {
    pub activations: Vec<ActivationView>,
}

/// A recorded activation: the event, with the version it replaced.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Activated {
    pub seq: u64,
    pub active: VersionRef,
    pub previous: Option<VersionRef>,
    pub rollback: bool,
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

/// An activation not yet recorded when the response was due.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivationPending {
    pub status: String,
    /// The queued request: `GET /v1/policies/requests/{request}` says what became of it.
    pub request: i64,
}

/// What became of a queued activation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestView {
    pub request: i64,
    /// `pending`, `recorded` or `refused`.
    pub status: String,
    /// The activation's seq, once recorded.
    pub seq: Option<u64>,
    /// Why the sequencer refused it.
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// The version to compare from.
    pub from: u32,
    /// The version to compare to.
    pub to: u32,
}

/// A draft to compare with a stored version.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftDiff {
    /// The draft's files, as `POST /v1/policies/validate` takes them.
    pub files: PolicyFiles,
    /// The version to compare from (default: the active one).
    pub from: Option<u32>,
}

/// What to roll back to.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A version that was active before; default: the one the current activation replaced.
    pub to: Option<u32>,
}

/// Compiles on a blocking thread: a large bundle takes tens of milliseconds of CPU.
pub(super) async fn compile(files: PolicyFiles) -> Result<Compiled, ApiError> {
    tokio::task::spawn_blocking(move || Compiled::compile(files))
        .await
        .map_err(|e| ApiError::Internal(StorageError::Corrupt(format!("compiling: {e}"))))?
        .map_err(ApiError::PolicyInvalid)
}

async fn compile_and_test(files: PolicyFiles) -> Result<(Compiled, TestReport), ApiError> {
    let compiled = compile(files).await?;
    tokio::task::spawn_blocking(move || {
        let results = compiled.run_tests();
        results.map(|r| (compiled, TestReport::of(r)))
    })
    .await
    .map_err(|e| ApiError::Internal(StorageError::Corrupt(format!("testing: {e}"))))?
    .map_err(ApiError::PolicyInvalid)
}

/// A version number from the path: a bad one is a 404 problem, like a missing one.
fn version_param(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::NotFound(format!("policy version {raw}")))
}

pub(super) async fn stored(
    state: &AppState,
    version: u32,
) -> Result<store::StoredVersion, ApiError> {
    store::version(&state.pool, version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("policy version {version}")))
}

/// Check a draft: the schema, every policy strictly against it, and the entities.
#[utoipa::path(
    post, path = "/v1/policies/validate", tag = "policies", request_body = Draft,
    responses(
        (status = 200, body = Validated),
        (status = 422, description = "Invalid: `errors` lists each with file, line, column, message and hint", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn validate(
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Validated>, ApiError> {
    require(&principal, AUTHORS)?;
    let draft: Draft = json_body(body, DRAFT_BODY_LIMIT)?;
    let compiled = compile(draft.files).await?;
    Ok(Json(Validated {
        hash: compiled.hash().to_owned(),
        policies: compiled.engine.bundle().policy_count(),
        test_suites: compiled.files.tests().len(),
    }))
}

/// Run a draft's test suites (`tests/*.toml`) against it.
#[utoipa::path(
    post, path = "/v1/policies/test", tag = "policies", request_body = Draft,
    responses(
        (status = 200, description = "The suites ran; `passed` says whether every case did", body = TestReport),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn test(
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TestReport>, ApiError> {
    require(&principal, AUTHORS)?;
    let draft: Draft = json_body(body, DRAFT_BODY_LIMIT)?;
    Ok(Json(compile_and_test(draft.files).await?.1))
}

/// Store a draft as the next version (it must validate). The same content is the same version.
#[utoipa::path(
    post, path = "/v1/policies/versions", tag = "policies", request_body = CreateVersion,
    responses(
        (status = 201, description = "Stored; `Location` names it", body = Created),
        (status = 200, description = "This content is already a version", body = Created),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&principal, AUTHORS)?;
    let request: CreateVersion = json_body(body, DRAFT_BODY_LIMIT)?;
    let message = request.message.trim();
    if message.is_empty() {
        return Err(ApiError::InvalidRequest(
            "message is required: 1 to 2,000 characters saying what the change is for".into(),
        ));
    }
    check_text("message", message, MAX_MESSAGE_CHARS, Lines::Many)
        .map_err(ApiError::InvalidRequest)?;
    let (compiled, tests) = compile_and_test(request.files).await?;
    let (info, created) = store::create_version(
        &state.pool,
        &compiled.files,
        compiled.hash(),
        &principal.sub,
        message,
    )
    .await?;
    tracing::info!(version = info.version, hash = %info.hash, created, by = %principal.sub, "policy version stored");
    let location = HeaderValue::from_str(&format!("/v1/policies/versions/{}", info.version))
        .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Created {
        version: info.into(),
        created,
        tests: TestSummary {
            cases: tests.cases,
            failed: tests.failed,
        },
    };
    Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
}

/// Every version, newest first, and the active one.
#[utoipa::path(
    get, path = "/v1/policies/versions", tag = "policies",
    responses((status = 200, body = VersionList)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<VersionList>, ApiError> {
    require(&principal, READERS)?;
    let versions = store::versions(&state.pool).await?;
    let active = store::active(&state.pool).await?;
    Ok(Json(VersionList {
        active: active.map(Into::into),
        versions: versions.into_iter().map(Into::into).collect(),
    }))
}

/// One version with its files.
#[utoipa::path(
    get, path = "/v1/policies/versions/{version}", tag = "policies",
    params(("version" = u32, Path)),
    responses(
        (status = 200, body = VersionDetail),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(version): Path<String>,
) -> Result<Json<VersionDetail>, ApiError> {
    require(&principal, READERS)?;
    let version = version_param(&version)?;
    let stored = stored(&state, version).await?;
    Ok(Json(VersionDetail {
        version: stored.info.into(),
        files: stored.files,
    }))
}

/// What changed from one version to another: policies added, removed and changed, by id.
#[utoipa::path(
    get, path = "/v1/policies/diff", tag = "policies", params(DiffQuery),
    responses(
        (status = 200, body = PolicyDiff),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn version_diff(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> Result<Json<PolicyDiff>, ApiError> {
    require(&principal, READERS)?;
    let from = compile(stored(&state, query.from).await?.files).await?;
    let to = compile(stored(&state, query.to).await?.files).await?;
    Ok(Json(diff(&from, &to)))
}

/// What a draft changes from a stored version (by default the active one), in the shape of
/// `GET /v1/policies/diff`: policies added, removed and changed, by id.
#[utoipa::path(
    post, path = "/v1/policies/diff", tag = "policies", request_body = DraftDiff,
    responses(
        (status = 200, body = PolicyDiff),
        (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No `from`, and no version is active yet", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The draft does not compile: `errors` lists each with its place", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn draft_diff(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PolicyDiff>, ApiError> {
    require(&principal, AUTHORS)?;
    let request: DraftDiff = json_body(body, DRAFT_BODY_LIMIT)?;
    let from = match request.from {
        Some(from) => from,
        None => {
            store::active(&state.pool)
                .await?
                .ok_or_else(|| ApiError::Conflict("no version is active yet: give `from`".into()))?
                .version
        }
    };
    let from = compile(stored(&state, from).await?.files).await?;
    let to = compile(request.files).await?;
    Ok(Json(diff(&from, &to)))
}

/// The activations recorded in the ledger, newest first.
#[utoipa::path(
    get, path = "/v1/policies/activations", tag = "policies",
    responses((status = 200, body = ActivationList)),
    security(("bearer" = []))
)]
pub async fn activations(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ActivationList>, ApiError> {
    require(&principal, READERS)?;
    let activations = store::activations(&state.pool, 1_000).await?;
    Ok(Json(ActivationList {
        activations: activations.into_iter().map(Into::into).collect(),
    }))
}

/// Activate a version: a ledger event, after which every decision uses it. Its own test suites
/// must pass.
#[utoipa::path(
    post, path = "/v1/policies/versions/{version}/activate", tag = "policies",
    params(("version" = u32, Path)),
    responses(
        (status = 200, description = "Recorded at `seq`", body = Activated),
        (status = 202, description = "Queued; not yet recorded", body = ActivationPending),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already active", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Its test suites fail", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn activate(
    State(state): State<AppState>,
    principal: Principal,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    require(&principal, AUTHORS)?;
    let version = version_param(&version)?;
    request_activation(&state, &principal, version, false).await
}

/// Roll back to a version that was active before (by default, the one the current activation
/// replaced). A rollback is an activation.
#[utoipa::path(
    post, path = "/v1/policies/rollback", tag = "policies", request_body = RollbackRequest,
    responses(
        (status = 200, description = "Recorded at `seq`", body = Activated),
        (status = 202, description = "Queued; not yet recorded", body = ActivationPending),
        (status = 409, description = "Nothing to roll back to", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&principal, AUTHORS)?;
    let empty = matches!(&body, Ok(b) if b.iter().all(u8::is_ascii_whitespace));
    let request: RollbackRequest = if empty {
        RollbackRequest::default()
    } else {
        json_body(body, ROLLBACK_BODY_LIMIT)?
    };
    let history = store::activations(&state.pool, i64::MAX).await?;
    let Some(current) = history.first() else {
        return Err(ApiError::Conflict("no version is active yet".into()));
    };
    let to = match request.to {
        Some(to) => {
            if !history.iter().any(|a| a.version == to) {
                return Err(ApiError::InvalidRequest(format!(
                    "version {to} was never active: activate it instead of rolling back to it"
                )));
            }
            to
        }
        None => history
            .get(1)
            .map(|previous| previous.version)
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "version {} is the only version ever activated: there is nothing to roll back to",
                    current.version
                ))
            })?,
    };
    request_activation(&state, &principal, to, true).await
}

async fn request_activation(
    state: &AppState,
    principal: &Principal,
    version: u32,
    rollback: bool,
) -> Result<Response, ApiError> {
    let stored = stored(state, version).await?;
    if store::active(&state.pool)
        .await?
        .is_some_and(|a| a.version == version)
    {
        return Err(ApiError::Conflict(format!(
            "version {version} is already active"
        )));
    }
    // A rollback returns to a version that has decided before: it is not held back by its
    // suites (which may fail under a newer engine), so the way back is always open.
    if !rollback {
        let (_, tests) = compile_and_test(stored.files).await?;
        if !tests.passed {
            return Err(ApiError::InvalidRequest(format!(
                "version {version} fails {} of its {} test cases; fix them in a new version (POST /v1/policies/test shows which)",
                tests.failed, tests.cases
            )));
        }
    }
    let request = EventRequest::Activate { version, rollback };
    let id = store::request_event(&state.pool, &request, &principal.sub).await?;
    state.intake_signal.notify_one();
    tracing::info!(version, rollback, by = %principal.sub, request = id, "policy activation requested");

    let deadline = tokio::time::Instant::now() + ACTIVATION_WAIT;
    let mut head = state.hub.head();
    loop {
        let outcome = store::request_outcome(&state.pool, id)
            .await?
            .ok_or_else(|| StorageError::Corrupt(format!("ledger request {id} vanished")))?;
        match outcome {
            RequestOutcome::Recorded { seq } => {
                let activated = activated(state, seq).await?;
                return Ok(Json(activated).into_response());
            }
            RequestOutcome::Refused { reason } => return Err(ApiError::Conflict(reason)),
            RequestOutcome::Pending => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let body = ActivationPending {
                status: "pending".into(),
                request: id,
            };
            let location = HeaderValue::from_str(&format!("/v1/policies/requests/{id}"))
                .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?;
            return Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response());
        }
        // Woken when the ledger moves; polled too, in case this replica hears late.
        let _ = tokio::time::timeout(Duration::from_millis(50), head.changed()).await;
    }
}

/// What became of a queued activation (the `Location` of a `202` from activate or rollback).
#[utoipa::path(
    get, path = "/v1/policies/requests/{request}", tag = "policies",
    params(("request" = i64, Path)),
    responses(
        (status = 200, body = RequestView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn request_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(request): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    require(&principal, READERS)?;
    let not_found = || ApiError::NotFound(format!("request {request}"));
    let id: i64 = request.parse().map_err(|_| not_found())?;
    let outcome = store::request_outcome(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let (status, seq, reason) = match outcome {
        RequestOutcome::Pending => ("pending", None, None),
        RequestOutcome::Recorded { seq } => ("recorded", Some(seq), None),
        RequestOutcome::Refused { reason } => ("refused", None, Some(reason)),
    };
    Ok(Json(RequestView {
        request: id,
        status: status.into(),
        seq,
        reason,
    }))
}

async fn activated(state: &AppState, seq: u64) -> Result<Activated, ApiError> {
    let text = store::event_record(&state.pool, seq)
        .await?
        .ok_or_else(|| StorageError::Corrupt(format!("activation event {seq} is missing")))?;
    let record: EventRecord = serde_json::from_str(&text)
        .map_err(|e| StorageError::Corrupt(format!("event {seq}: {e}")))?;
    match record.event {
        LedgerEvent::PolicyActivated {
            active,
            previous,
            rollback,
        } => Ok(Activated {
            seq,
            active,
            previous,
            rollback,
            actor: record.actor,
            recorded_at: record.recorded_at,
        }),
        other => Err(StorageError::Corrupt(format!(
            "event {seq} is a {}, not an activation",
            other.kind()
        ))
        .into()),
    }
}
