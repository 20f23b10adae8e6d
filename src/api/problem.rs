//! The one error type of the HTTP layer, rendered as RFC 9457 problem documents.
//!
//! Each variant has a stable `type` (`urn:regulator:problem:<slug>`) clients can match on; the
//! `detail` is for people and may change.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::AuthError;
use crate::storage::StorageError;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable identifier of the problem kind: `urn:regulator:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every error in a refused policy bundle, with its place in the source
    /// (`urn:regulator:problem:policy-invalid` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<SourceError>>,
}

/// One error in a policy bundle, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceError {
    /// Stable kind, e.g. `policy::missing_id`, `policy::validation`, `suite::invalid`.
    pub code: String,
    pub file: String,
    /// 1-based; absent when the error has no place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl From<&crate::policy::PolicyError> for SourceError {
    fn from(e: &crate::policy::PolicyError) -> Self {
        Self {
            code: e.code.to_owned(),
            file: e.file.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
            hint: e.hint.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key must be 1 to 200 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("idempotency key {0:?} was already used with a different request")]
    IdempotencyKeyReused(String),
    #[error("asset {0} is not registered; register it with PUT /v1/assets/{{chain}}/{{asset}}")]
    UnknownAsset(String),
    #[error("the release of order {releases} is refused: {why}")]
    ReleaseRefused {
        releases: crate::domain::OrderId,
        why: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("the body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("a batch holds at most {max} orders; this one holds {got}")]
    BatchTooLarge { max: usize, got: usize },
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("token subject {sub:?} cannot submit as issuer {issuer:?}")]
    IssuerMismatch { sub: String, issuer: String },
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    #[error("the body must be JSON (Content-Type: application/json), not {0}")]
    UnsupportedMediaType(String),
    #[error("the request body did not arrive within the body timeout")]
    RequestTimeout,
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the webhook URL is refused: {0}")]
    UrlRefused(#[from] crate::webhooks::guard::UrlRefused),
    #[error("the policy bundle has {} error(s); see `errors`", .0.errors.len())]
    PolicyInvalid(crate::policy::PolicyErrors),
    #[error("{0}")]
    Conflict(String),
    /// A state proof or snapshot at a checkpoint whose state this replica no longer keeps.
    #[error("{0}")]
    StateNotRetained(String),
    #[error("{0} simulations are running on this replica, the most it runs at once; try again when one ends")]
    TooManySimulations(usize),
    #[error("internal error")]
    Internal(#[from] StorageError),
}

impl ApiError {
    fn status_and_slug(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json"),
            InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-request"),
            MissingIdempotencyKey => (StatusCode::BAD_REQUEST, "missing-idempotency-key"),
            InvalidIdempotencyKey => (StatusCode::BAD_REQUEST, "invalid-idempotency-key"),
            IdempotencyKeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            UnknownAsset(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown-asset"),
            ReleaseRefused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "release-refused"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            BatchTooLarge { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "batch-too-large"),
            Unauthorized(AuthError::Missing) => (StatusCode::UNAUTHORIZED, "missing-token"),
            Unauthorized(AuthError::Invalid(_)) => (StatusCode::UNAUTHORIZED, "invalid-token"),
            Unauthorized(AuthError::Expired) => (StatusCode::UNAUTHORIZED, "token-expired"),
            Unauthorized(AuthError::WrongAudience) => (StatusCode::UNAUTHORIZED, "wrong-audience"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            IssuerMismatch { .. } => (StatusCode::FORBIDDEN, "issuer-mismatch"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
            NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not-ready"),
            UrlRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "url-refused"),
            PolicyInvalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy-invalid"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StateNotRetained(_) => (StatusCode::GONE, "state-not-retained"),
            TooManySimulations(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-simulations"),
            Internal(e) if e.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "not-ready"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug) = self.status_and_slug();
        let detail = match self {
            // Database details are for the log, not for the caller.
            ApiError::Internal(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "the database is unavailable");
                "the database is unavailable; try again shortly".to_owned()
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                "the engine could not complete the request; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::PolicyInvalid(e) => Some(e.errors.iter().map(SourceError::from).collect()),
            _ => None,
        };
        Problem {
            kind: format!("urn:regulator:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: do not read it as the next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The problem `type` slug of an error status that did not come from an [`ApiError`].
fn slug_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-request",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    }
}

/// Turns every error response that is not a problem document yet (axum's own rejections:
/// an unparsable path segment, for one, are `text/plain`) into one, keeping its status and
/// headers and using its text as the `detail`. Handlers' errors pass through untouched.
pub async fn problems_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let problem = Problem {
        kind: format!("urn:regulator:problem:{}", slug_for_status(status)),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        errors: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Maps a body parse failure: broken JSON is a 400, JSON of the wrong shape a 422.
impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(e.to_string())
            }
            Category::Data => ApiError::InvalidRequest(e.to_string()),
        }
    }
}
