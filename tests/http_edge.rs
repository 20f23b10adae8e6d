//! The HTTP edge against a real service: slow and idle clients are cut off, oversized and
//! non-JSON bodies are refused before they are read, every error is a problem document, role
//! checks come before path parsing, the token rules, and who may scrape `/metrics`.

mod service;

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use regulator::api::edge::HttpConfig;
use regulator::auth::{dev_secret, Role};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{sec_freeze, TestApp, AUDIENCE, BOND, ISSUER};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROBLEM_JSON: &str = "application/problem+json";

async fn spawn_with_http(pool: PgPool, http: HttpConfig) -> TestApp {
    let mut config = service::config(service::secret_file(), 100);
    config.http = http;
    TestApp::start(config, pool).await
}

/// Reads what the server sends until it closes the connection or `within` passes; returns
/// the bytes and whether the server closed it.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// The status line's code and the body of a raw HTTP/1.1 response.
fn status_and_body(response: &str) -> (u16, Value) {
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn problem(response: reqwest::Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(PROBLEM_JSON)
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        format!("urn:regulator:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], status, "{body}");
    body
}

#[sqlx::test]
async fn hundreds_of_idle_connections_do_not_hold_the_service_and_are_closed(pool: PgPool) {
    let header_timeout = Duration::from_secs(2);
    let app = spawn_with_http(
        pool,
        HttpConfig {
            header_timeout,
            ..HttpConfig::default()
        },
    )
    .await;
    let addr = app.app.addr;
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A third send nothing, a third half a request line, a third headers without the end.
        match i % 3 {
            0 => {}
            1 => stream.write_all(b"GET /healthz HT").await.unwrap(),
            _ => stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
        }
        idle.push(stream);
    }
    let opened = Instant::now();

    let started = Instant::now();
    let answer = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a request behind 300 idle connections took {:?}",
        started.elapsed()
    );

    // Every idle connection is closed by the server within the header timeout (plus slack
    // for a loaded machine), and none of them got a request answered.
    let limit = header_timeout + Duration::from_secs(3);
    for (i, mut stream) in idle.into_iter().enumerate() {
        let left = limit.saturating_sub(opened.elapsed());
        let (text, closed) = read_until_closed(&mut stream, left).await;
        assert!(
            closed,
            "idle connection {i} still open after {:?}",
            opened.elapsed()
        );
        assert!(
            !text.contains("200 OK"),
            "connection {i} was answered: {text}"
        );
    }
    app.app.stop().await;
}

#[sqlx::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout(pool: PgPool) {
    let app = spawn_with_http(
        pool,
        HttpConfig {
            header_timeout: Duration::from_secs(1),
            ..HttpConfig::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(app.app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(closed, "the keep-alive connection stayed open");
    app.app.stop().await;
}

#[sqlx::test]
async fn a_body_that_does_not_arrive_in_time_is_408(pool: PgPool) {
    let app = spawn_with_http(
        pool,
        HttpConfig {
            body_timeout: Duration::from_secs(1),
            ..HttpConfig::default()
        },
    )
    .await;
    let token = app.regulator("US-SEC");
    let mut stream = TcpStream::connect(app.app.addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Idempotency-Key: slow-1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"target\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let (code, body) = status_and_body(&text);
    assert_eq!(code, 408, "{text}");
    assert_eq!(
        body["type"], "urn:regulator:problem:request-timeout",
        "{text}"
    );
    assert!(text.contains(PROBLEM_JSON), "{text}");
    assert!(closed, "the connection is closed after a body timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    app.app.stop().await;
}

#[sqlx::test]
async fn a_declared_length_over_the_limit_is_413_before_the_body_is_sent(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.regulator("US-SEC");
    for (path, declared) in [
        ("/v1/orders", 64 * 1024 + 1),
        ("/v1/orders/batch", 4 * 1024 * 1024 + 1),
        ("/v1/orders", 10_000_000_000u64),
    ] {
        let mut stream = TcpStream::connect(app.app.addr).await.unwrap();
        // Only the headers: a server that waited for the body would never answer.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Idempotency-Key: big-1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (text, _) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        let (code, body) = status_and_body(&text);
        assert_eq!(code, 413, "{path} {declared}: {text}");
        assert_eq!(body["type"], "urn:regulator:problem:payload-too-large");
    }
    app.app.stop().await;
}

#[sqlx::test]
async fn a_body_that_is_not_json_is_415(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let token = app.regulator("US-SEC");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .client
            .post(app.url("/v1/orders"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "ct-1")
            .body(sec_freeze().to_string());
        if let Some(ct) = content_type {
            request = request.header(CONTENT_TYPE, ct);
        }
        let body = problem(request.send().await.unwrap(), 415, "unsupported-media-type").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{body}"
        );
    }
    // JSON with a charset is JSON.
    let answer = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "ct-2")
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(sec_freeze().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    // A route whose body is optional still takes none.
    let author = app.token("legal", &[Role::PolicyAuthor]);
    let answer = app
        .client
        .post(app.url("/v1/policies/rollback"))
        .bearer_auth(&author)
        .send()
        .await
        .unwrap();
    assert_ne!(answer.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.app.stop().await;
}

#[sqlx::test]
async fn path_errors_405_and_404_are_problem_documents(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let admin = app.admin();
    let answer = app
        .client
        .get(app.url("/v1/webhooks/subscriptions/not-a-uuid"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = problem(answer, 400, "bad-request").await;
    assert!(!body["detail"].as_str().unwrap().is_empty());
    let answer = app
        .client
        .patch(app.url("/v1/orders"))
        .send()
        .await
        .unwrap();
    problem(answer, 405, "method-not-allowed").await;
    let answer = app
        .client
        .get(app.url("/v1/nothing/here"))
        .send()
        .await
        .unwrap();
    problem(answer, 404, "not-found").await;
    app.app.stop().await;
}

#[sqlx::test]
async fn role_checks_answer_before_the_path_is_parsed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let chain = app.token("ethereum", &[Role::Chain]);
    for path in [
        "/v1/webhooks/subscriptions/not-a-uuid",
        "/v1/webhooks/subscriptions/not-a-uuid/attempts?limit=x",
        "/v1/orders/not-a-uuid",
        "/v1/policies/versions/x",
    ] {
        let unauthenticated = app.client.get(app.url(path)).send().await.unwrap();
        problem(unauthenticated, 401, "missing-token").await;
        let wrong_role = app
            .client
            .get(app.url(path))
            .bearer_auth(&chain)
            .send()
            .await
            .unwrap();
        problem(wrong_role, 403, "forbidden").await;
    }
    app.app.stop().await;
}

#[sqlx::test]
async fn reading_an_order_needs_a_role_not_only_the_issuers_sub(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let (status, order) = app
        .submit(&app.regulator("US-SEC"), "read-1", &sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let path = format!("/v1/orders/{}", order["order_id"].as_str().unwrap());
    let (status, _) = app.get(&app.regulator("US-SEC"), &path).await;
    assert_eq!(status, StatusCode::OK);
    for roles in [&[][..], &[Role::Chain][..], &[Role::Monitor][..]] {
        let token = app.token("US-SEC", roles);
        let answer = app
            .client
            .get(app.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        problem(answer, 403, "forbidden").await;
    }
    app.app.stop().await;
}

/// Signs `claims` with the app's development secret, as an identity provider would.
fn sign(app: &TestApp, claims: &Value) -> String {
    let secret = dev_secret(&app.secret).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn feed_with(app: &TestApp, authorization: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/decisions"))
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_bearer_scheme_is_case_insensitive(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let token = app.auditor();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let answer = feed_with(&app, &format!("{scheme} {token}")).await;
        assert_eq!(answer.status(), StatusCode::OK, "{scheme}");
    }
    for bad in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        "Bearer ".into(),
    ] {
        problem(feed_with(&app, &bad).await, 401, "invalid-token").await;
    }
    app.app.stop().await;
}

#[sqlx::test]
async fn the_audience_may_be_an_array(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let claims = |aud: Value| {
        json!({"sub": "audit", "roles": ["auditor"], "iss": ISSUER, "aud": aud,
               "iat": now(), "exp": now() + 600})
    };
    let ok = sign(&app, &claims(json!(["other-service", AUDIENCE])));
    assert_eq!(feed_with(&app, &format!("Bearer {ok}")).await.status(), 200);
    let wrong = sign(&app, &claims(json!(["other-service", "another"])));
    problem(
        feed_with(&app, &format!("Bearer {wrong}")).await,
        401,
        "wrong-audience",
    )
    .await;
    app.app.stop().await;
}

#[sqlx::test]
async fn iat_is_required_and_lifetime_and_size_are_capped(pool: PgPool) {
    let app = spawn_with_http(
        pool,
        HttpConfig {
            max_token_lifetime: Duration::from_secs(3600),
            ..HttpConfig::default()
        },
    )
    .await;
    let base = || {
        json!({"sub": "audit", "roles": ["auditor"], "iss": ISSUER, "aud": AUDIENCE,
               "iat": now(), "exp": now() + 600})
    };
    let accepted = sign(&app, &base());
    assert_eq!(
        feed_with(&app, &format!("Bearer {accepted}"))
            .await
            .status(),
        200
    );

    let mut no_iat = base();
    no_iat.as_object_mut().unwrap().remove("iat");
    let mut future_iat = base();
    future_iat["iat"] = json!(now() + 3600);
    future_iat["exp"] = json!(now() + 3700);
    let mut too_long = base();
    too_long["exp"] = json!(now() + 3600 + 120);
    let mut year_old_iat = base();
    // Still valid for ten minutes, but minted for a year.
    year_old_iat["iat"] = json!(now() - 365 * 24 * 3600);
    let mut huge = base();
    huge["padding"] = json!("x".repeat(9 * 1024));
    let mut nul_sub = base();
    nul_sub["sub"] = json!("aud\u{0}it");
    let mut empty_sub = base();
    empty_sub["sub"] = json!("");
    let mut long_sub = base();
    long_sub["sub"] = json!("a".repeat(257));
    for (name, claims) in [
        ("a NUL in sub", nul_sub),
        ("an empty sub", empty_sub),
        ("a sub over 256 characters", long_sub),
        ("no iat", no_iat),
        ("iat in the future", future_iat),
        ("lifetime over the cap", too_long),
        ("minted a year ago", year_old_iat),
        ("over 8 KiB", huge),
    ] {
        let token = sign(&app, &claims);
        let body = problem(
            feed_with(&app, &format!("Bearer {token}")).await,
            401,
            "invalid-token",
        )
        .await;
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    app.app.stop().await;
}

async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[sqlx::test]
async fn metrics_can_require_a_monitor_token(pool: PgPool) {
    let app = spawn_with_http(
        pool,
        HttpConfig {
            metrics_need_token: true,
            ..HttpConfig::default()
        },
    )
    .await;
    problem(scrape(&app, None).await, 401, "missing-token").await;
    let regulator = app.regulator("US-SEC");
    problem(scrape(&app, Some(&regulator)).await, 403, "forbidden").await;
    for roles in [&[Role::Monitor][..], &[Role::Admin][..]] {
        let token = app.token("prometheus", roles);
        let answer = scrape(&app, Some(&token)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        // The Prometheus text itself, whatever has been recorded so far.
        assert!(answer
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/plain")));
    }
    // Health and readiness stay open for probes.
    assert_eq!(app.get("", "/healthz").await.0, StatusCode::OK);
    app.app.stop().await;
}

#[sqlx::test]
async fn metrics_are_open_by_default(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(scrape(&app, None).await.status(), StatusCode::OK);
    app.app.stop().await;
}

#[sqlx::test]
async fn a_deleted_subscriptions_series_leave_the_metrics(pool: PgPool) {
    let mut config = service::config(service::secret_file(), 100);
    config.webhooks.guard = regulator::webhooks::UrlGuard::new(vec![], true);
    let app = TestApp::start(config, pool).await;
    let admin = app.admin();
    // Nothing listens there: deliveries fail, which records series too.
    let (status, created) = app
        .post(
            &admin,
            "/v1/webhooks/subscriptions",
            json!({"chain": "ethereum", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let label = format!("subscription=\"{id}\"");
    // The worker reports every subscription's lag every few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(&app, None).await.text().await.unwrap();
        if text.contains(&label) {
            break;
        }
        assert!(Instant::now() < deadline, "no series for {id}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/webhooks/subscriptions/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let text = scrape(&app, None).await.text().await.unwrap();
    assert!(!text.contains(&label), "{text}");
    // And stays gone after the next lag report.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = scrape(&app, None).await.text().await.unwrap();
    assert!(!text.contains(&label), "{text}");
    app.app.stop().await;
}
