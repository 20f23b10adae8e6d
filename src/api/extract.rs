//! Request parsing shared by the handlers: the caller, JSON bodies, the idempotency key.

use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use super::AppState;
use crate::auth::{AuthError, Principal, Role, Verifier};

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The route's role gate (`check_gate`) has verified the token already.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        authenticate(&parts.headers, &state.verifier)
    }
}

/// Verifies the `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
pub fn authenticate(headers: &HeaderMap, verifier: &Verifier) -> Result<Principal, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let token = value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <token>`".into()))?;
    Ok(verifier.verify(token)?)
}

/// The roles that may use a route at all (the router's `gate`), checked before any of its
/// extractors run, so a caller without them learns nothing from a malformed path or body.
/// Handlers then decide the finer rules (whose orders, which chain).
pub async fn check_gate(
    axum::extract::State((state, roles)): axum::extract::State<(AppState, &'static [Role])>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let principal = match authenticate(request.headers(), &state.verifier) {
        Ok(principal) => principal,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = require(&principal, roles) {
        return e.into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Refuses callers with none of `roles`.
pub fn require(principal: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if principal.has_any(roles) {
        return Ok(());
    }
    let names: Vec<String> = roles
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    Err(ApiError::Forbidden(format!(
        "this needs one of the roles {}",
        names.join(", ")
    )))
}

/// Parses a JSON body that axum read up to the route's limit.
pub fn json_body<T: DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else if super::edge::is_body_timeout(&rejection) {
            ApiError::RequestTimeout
        } else {
            ApiError::MalformedJson(rejection.body_text())
        }
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A query string parsed like a body: a bad one is an `invalid-request` problem.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::InvalidRequest(e.body_text()))
    }
}

/// The request body's identity for idempotency: JSON with every object's keys sorted, so key
/// order and whitespace do not make a retry look like another request.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(item, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The `Idempotency-Key` header: required, 1 to 200 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or(ApiError::MissingIdempotencyKey)?;
    parse_idempotency_key(
        value
            .to_str()
            .map_err(|_| ApiError::InvalidIdempotencyKey)?,
    )
}

pub fn parse_idempotency_key(key: &str) -> Result<String, ApiError> {
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > 200 || !visible {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::canonical_json;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order_at_every_depth() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"q":1,"p":2}],"x":"s"}}"#).unwrap();
        let b = json!({"a": {"x": "s", "y": [{"p": 2, "q": 1}]}, "b": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&b),
            r#"{"a":{"x":"s","y":[{"p":2,"q":1}]},"b":1}"#
        );
    }
}
