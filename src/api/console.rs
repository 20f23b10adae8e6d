//! The web console's static files: `console/dist`, embedded in the binary when it is compiled,
//! so `regulator serve` needs nothing beside itself and works offline.
//!
//! Every answer carries a strict Content-Security-Policy: the console's scripts and styles come
//! from this origin only and never inline, so a policy's text or a decision's reason shown on a
//! page cannot run as script even if the front end mishandled it. Files are revalidated on
//! every load (`no-cache` with a strong `ETag`): a new binary never serves yesterday's script
//! from a browser's cache next to today's page.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use super::problem::ApiError;

#[derive(RustEmbed)]
#[folder = "console/dist/"]
struct Assets;

/// The console's entry page.
const INDEX: &str = "index.html";

/// Sources the console may use: its own origin, and `data:` images (icons inlined by the build).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's entry page (`/console` and `/console/`).
#[utoipa::path(
    get, path = "/console", tag = "console",
    responses(
        (status = 200, description = "The console's page", content_type = "text/html", body = String),
        (status = 304, description = "Unchanged since the `ETag` given in `If-None-Match`"),
    )
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

/// A file of the console (its scripts, styles, images).
#[utoipa::path(
    get, path = "/console/{path}", tag = "console",
    params(("path" = String, Path, description = "The file's path under the console's root")),
    responses(
        (status = 200, description = "The file, with its content type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Unchanged since the `ETag` given in `If-None-Match`"),
        (status = 404, description = "No such file", body = super::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let path = if path.is_empty() { INDEX } else { path };
    let Some(file) = Assets::get(path) else {
        return with_security_headers(
            ApiError::NotFound(format!("console file {path:?}")).into_response(),
        );
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        });
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let content_type = content_type(file.metadata.mimetype());
        // Embedded data is borrowed from the binary: served without a copy.
        (
            [(header::CONTENT_TYPE, content_type)],
            axum::body::Body::from(file.data),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_security_headers(response)
}

/// Text types get their charset said, so a browser never guesses one.
fn content_type(mime: &str) -> HeaderValue {
    let textual = mime.starts_with("text/")
        || mime == "application/javascript"
        || mime == "application/json"
        || mime == "image/svg+xml";
    let value = if textual && !mime.contains("charset") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_types_carry_their_charset() {
        assert_eq!(content_type("text/html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("text/javascript"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("image/png"), "image/png");
    }

    #[test]
    fn the_entry_page_is_embedded() {
        assert!(Assets::get(INDEX).is_some());
    }
}
