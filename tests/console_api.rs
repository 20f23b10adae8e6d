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

async fn post_json(
    app: &TestApp,
    path: &str,
    host: Option<&str>,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let mut request = app.client.post(app.url(path)).json(&body);
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

async fn dev_sign_in_offered(app: &TestApp, host: Option<&str>) -> bool {
    let mut request = app.client.get(app.url("/v1/console/config"));
    if let Some(host) = host {
        request = request.header("Host", host);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let config: serde_json::Value = response.json().await.unwrap();
    config["dev_sign_in"]
        .as_bool()
        .expect("dev_sign_in is a bool")
}

#[sqlx::test]
async fn a_development_service_signs_in_a_caller_on_this_machine(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert!(dev_sign_in_offered(&app, None).await);
    let before = chrono::Utc::now();
    let (status, signed) = post_json(
        &app,
        "/v1/dev/sign-in",
        None,
        serde_json::json!({"subject": "legal-team", "roles": ["policy_author", "auditor"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let token = signed["token"].as_str().unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(signed["expires_at"].clone()).unwrap();
    let ttl = expires_at - before;
    assert!(
        ttl > chrono::Duration::minutes(59) && ttl <= chrono::Duration::minutes(61),
        "{ttl}"
    );

    // The token is the service's own: it reads as a policy author, and as nothing more.
    let (status, versions) = app.get(token, "/v1/policies/versions").await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let (status, _) = app.get(token, "/v1/audit/checkpoints/latest").await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    assert_ne!(status, StatusCode::FORBIDDEN);
    let (status, problem) = app.get(token, "/v1/webhooks/subscriptions").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");

    // Subjects and roles are checked as the CLI checks them.
    for (body, why) in [
        (
            serde_json::json!({"subject": "x", "roles": ["pope"]}),
            "unknown role",
        ),
        (serde_json::json!({"subject": "x", "roles": []}), "no role"),
        (
            serde_json::json!({"subject": "", "roles": ["admin"]}),
            "sub",
        ),
        (
            serde_json::json!({"subject": "a\nb", "roles": ["admin"]}),
            "sub",
        ),
        (
            serde_json::json!({"subject": "x", "roles": ["admin"], "ttl": 9}),
            "ttl",
        ),
    ] {
        let (status, problem) = post_json(&app, "/v1/dev/sign-in", None, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["type"], "urn:regulator:problem:invalid-request");
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{problem}"
        );
    }

    // Another name for this machine, as a rebound DNS name would send: no sign-in.
    let body = serde_json::json!({"subject": "x", "roles": ["admin"]});
    assert!(!dev_sign_in_offered(&app, Some("evil.example")).await);
    let (status, problem) = post_json(
        &app,
        "/v1/dev/sign-in",
        Some("evil.example:8080"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["type"], "urn:regulator:problem:not-found");
    assert!(dev_sign_in_offered(&app, Some("localhost")).await);
    let (status, _) = post_json(&app, "/v1/dev/sign-in", Some("localhost:1"), body).await;
    assert_eq!(status, StatusCode::OK);
}

#[sqlx::test]
async fn a_service_with_configured_keys_has_no_development_sign_in(pool: PgPool) {
    let mut config = service::config(service::secret_file(), 100);
    config.keys = regulator::auth::KeySource::PublicKeyPem(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rsa-test-public.pem"),
    );
    let app = TestApp::start(config, pool).await;
    assert!(!dev_sign_in_offered(&app, None).await);
    let (status, problem) = post_json(
        &app,
        "/v1/dev/sign-in",
        None,
        serde_json::json!({"subject": "ops", "roles": ["admin"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["type"], "urn:regulator:problem:not-found");
    // Exactly the answer of a route that does not exist.
    let (_, absent) = post_json(&app, "/v1/dev/nothing-here", None, serde_json::json!({})).await;
    assert_eq!(problem["detail"], absent["detail"]);
}
