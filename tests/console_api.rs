//! The server side of the web console over real HTTP: its embedded files with their security
//! headers, and the development sign-in.

mod service;

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG};
use reqwest::StatusCode;
use service::TestApp;
use sqlx::PgPool;

fn dist() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console/dist")
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

fn header(response: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[sqlx::test]
async fn the_console_is_served_from_the_binary_with_strict_headers(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let index = std::fs::read(dist().join("index.html")).unwrap();
    for path in ["/console", "/console/", "/console/index.html"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        let csp = header(&response, CONTENT_SECURITY_POLICY).to_owned();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self' data:",
        ] {
            assert!(csp.contains(directive), "{csp} lacks {directive}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let etag = header(&response, ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), index.as_slice());

        // Revalidation: the same tag is unchanged, another is not.
        let again = app
            .client
            .get(app.url(path))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, ETAG), etag);
        let other = app
            .client
            .get(app.url(path))
            .header("If-None-Match", "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    // Every built file, byte for byte, each with a type the browser will not second-guess.
    let mut all = Vec::new();
    files(&dist(), "", &mut all);
    for name in &all {
        let response = app
            .client
            .get(app.url(&format!("/console/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let content_type = header(&response, CONTENT_TYPE).to_owned();
        if name.ends_with(".js") {
            assert_eq!(content_type, "text/javascript; charset=utf-8", "{name}");
        } else if name.ends_with(".css") {
            assert_eq!(content_type, "text/css; charset=utf-8", "{name}");
        }
        assert!(!content_type.is_empty(), "{name}");
        let body = response.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(dist().join(name)).unwrap(),
            "{name}"
        );
    }

    for missing in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
    ] {
        let response = app.client.get(app.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(header(&response, CONTENT_TYPE), "application/problem+json");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:regulator:problem:not-found");
    }

    // HEAD answers like GET without the body.
    let head = app.client.head(app.url("/console")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.bytes().await.unwrap().is_empty());
}
