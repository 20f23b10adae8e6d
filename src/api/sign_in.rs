//! What the console needs to know before anyone signs in, and the development sign-in.
//!
//! The development sign-in mints the same token `regulator token` does, for any subject and
//! roles. It exists only where `regulator token` would work too: a service that verifies tokens
//! with the development secret (which refuses to listen anywhere but loopback), asked from this
//! machine, by a name of this machine. Anywhere else it is the same 404 as a route that does not
//! exist. The `Host` check keeps a web page from reaching it through DNS rebinding (a page's own
//! name pointed at 127.0.0.1): the browser would send that name, not `localhost`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::json_body;
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{check_sub, sign_dev_claims, Claims, Role};
use crate::storage::StorageError;

/// A sign-in names a subject and a few roles.
pub const SIGN_IN_BODY_LIMIT: usize = 4 * 1024;

/// How long a development token lives (as `regulator token` by default), unless the service
/// accepts less.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the development sign-in signs with: present only when the service verifies tokens with
/// the development secret.
#[derive(Debug, Clone)]
pub struct DevSignIn {
    pub secret: PathBuf,
    pub issuer: String,
    pub audience: String,
    /// The lifetime of the tokens it mints.
    pub ttl: std::time::Duration,
}

impl DevSignIn {
    /// For a service whose tokens are capped at `max_lifetime`.
    pub fn new(
        secret: PathBuf,
        issuer: &str,
        audience: &str,
        max_lifetime: std::time::Duration,
    ) -> Self {
        Self {
            secret,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl: DEV_TOKEN_TTL.min(max_lifetime),
        }
    }
}

/// What the console shows before sign-in.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleConfig {
    /// Whether `POST /v1/dev/sign-in` answers this caller: a development service, asked from
    /// this machine.
    pub dev_sign_in: bool,
}

/// Who to sign in as, in development.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// The token's `sub`: an authority (`US-SEC`), a chain (`ethereum`), a person. One line
    /// of printable text, at most 256 characters.
    pub subject: String,
    /// At least one of `regulator`, `coordinator`, `policy_author`, `auditor`, `chain`,
    /// `admin`, `monitor`.
    #[schema(min_items = 1)]
    pub roles: Vec<String>,
}

/// A token, as `regulator token` mints it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedIn {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Whether this request may use the development sign-in.
fn allowed<'a>(
    state: &'a AppState,
    peer: Option<&ConnectInfo<SocketAddr>>,
    headers: &HeaderMap,
) -> Option<&'a DevSignIn> {
    let dev = state.dev_sign_in.as_deref()?;
    let peer = peer?.0;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    (peer.ip().is_loopback() && is_loopback_host(host)).then_some(dev)
}

/// `localhost`, a loopback address, each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:8080`
        rest.split_once(']').map_or("", |(address, _)| address)
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the console needs to know before sign-in (no token needed).
#[utoipa::path(
    get, path = "/v1/console/config", tag = "console",
    responses((status = 200, body = ConsoleConfig))
)]
pub async fn config(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Json<ConsoleConfig> {
    let peer = peer.as_ref().map(|p| &p.0);
    Json(ConsoleConfig {
        dev_sign_in: allowed(&state, peer, &headers).is_some(),
    })
}

/// Development only: a token for any subject and roles, as `regulator token` mints it. Exists
/// only on a service that verifies tokens with the development secret, for a caller on the
/// same machine (a 404 otherwise, as for a route that does not exist).
#[utoipa::path(
    post, path = "/v1/dev/sign-in", tag = "console", request_body = SignInRequest,
    responses(
        (status = 200, body = SignedIn),
        (status = 404, description = "Not a development service, or not asked from this machine", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown role, no role, or a subject that is not one line of printable text", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sign_in(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SignedIn>, ApiError> {
    let peer = peer.as_ref().map(|p| &p.0);
    // Refused before the body is read: elsewhere, nothing about the request matters.
    let Some(dev) = allowed(&state, peer, &headers) else {
        return Err(ApiError::NotFound("this route".into()));
    };
    let request: SignInRequest = json_body(body, SIGN_IN_BODY_LIMIT)?;
    check_sub(&request.subject).map_err(|e| ApiError::InvalidRequest(format!("subject: {e}")))?;
    let mut roles: Vec<Role> = Vec::new();
    for name in request.roles.iter().map(|r| r.trim()) {
        let role = name.parse::<Role>().map_err(ApiError::InvalidRequest)?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    if roles.is_empty() {
        return Err(ApiError::InvalidRequest("roles names no role".into()));
    }
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(dev.ttl).unwrap_or(chrono::Duration::hours(1));
    let expires_at = now + ttl;
    let claims = Claims {
        sub: request.subject,
        roles,
        iss: dev.issuer.clone(),
        aud: dev.audience.clone(),
        exp: expires_at.timestamp(),
        nbf: None,
        iat: now.timestamp(),
    };
    let token = sign_dev_claims(&dev.secret, &claims)
        .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?;
    tracing::info!(sub = %claims.sub, roles = ?claims.roles, "development sign-in");
    Ok(Json(SignedIn {
        token,
        // The token's own second.
        expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at),
    }))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_names_of_this_machine_are_loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
            "",
            "127.0.0.1.evil:80",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
