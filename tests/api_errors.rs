mod service;

// Bad inputs to the HTTP API (SPEC §5–§6): each is refused with the right status and a stable
// RFC 9457 problem type, and none of them writes anything. A positive control first, so the
// refusals below cannot pass by accident.

use std::path::PathBuf;

use base64::prelude::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use regulator::auth::{mint_dev_token, Claims, KeySource, Role};
use reqwest::header::{HeaderMap, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use service::{sec_freeze, TestApp, AUDIENCE, BOND, ISSUER};
use sqlx::PgPool;

const PROBLEM_JSON: &str = "application/problem+json";

type Answer = (StatusCode, HeaderMap, Value);

async fn send(request: RequestBuilder) -> Answer {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text:.500}"));
    (status, headers, body)
}

/// Asserts `answer` is a problem document of `slug` with `status`; returns its detail.
fn assert_problem(answer: &Answer, status: u16, slug: &str) -> String {
    let (code, headers, body) = answer;
    assert_eq!(code.as_u16(), status, "{body}");
    assert_eq!(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some(PROBLEM_JSON),
        "{body}"
    );
    assert_problem_doc(body, status, slug)
}

/// Asserts the fields of a problem document (also as embedded in a batch result).
fn assert_problem_doc(body: &Value, status: u16, slug: &str) -> String {
    assert_eq!(
        body["type"],
        format!("urn:regulator:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], status, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(!detail.trim().is_empty(), "empty detail: {body}");
    detail.to_owned()
}

/// An app with the ACME bond registered, and the row counts after registering it.
async fn setup(pool: &PgPool) -> (TestApp, Vec<(String, i64)>) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let before = service::table_counts(pool).await;
    (app, before)
}

async fn assert_nothing_written(pool: &PgPool, before: &[(String, i64)]) {
    assert_eq!(
        service::table_counts(pool).await,
        before,
        "a refused request wrote rows"
    );
}

async fn order_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn sec(app: &TestApp) -> String {
    app.regulator("US-SEC")
}

/// POST /v1/orders with a raw body.
fn post_raw(
    app: &TestApp,
    token: &str,
    key: Option<&str>,
    body: impl Into<String>,
) -> RequestBuilder {
    let mut request = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json")
        .body(body.into());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request
}

fn post_order(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> RequestBuilder {
    post_raw(app, token, key, body.to_string())
}

fn post_batch(app: &TestApp, token: &str, body: impl Into<String>) -> RequestBuilder {
    post_batch_to(app, "/v1/orders/batch", token, body)
}

/// Like [`post_batch`], to `path` (the batch endpoint with a query).
fn post_batch_to(
    app: &TestApp,
    path: &str,
    token: &str,
    body: impl Into<String>,
) -> RequestBuilder {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json")
        .body(body.into())
}

fn target_path() -> String {
    format!("/v1/targets/{}/{}", BOND.0, BOND.1)
}

fn claims(sub: &str, roles: Vec<Role>, audience: &str, ttl: chrono::Duration) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: sub.to_owned(),
        roles,
        iss: ISSUER.to_owned(),
        aud: audience.to_owned(),
        exp: now + ttl.num_seconds(),
        nbf: None,
        iat: now,
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn assert_decided_sec_freeze(body: &Value) {
    assert_eq!(body["status"], "decided", "{body}");
    assert_eq!(body["decision"]["outcome"], "APPLIED", "{body}");
    assert_eq!(
        body["decision"]["determining_policies"],
        json!(["us-sec-freeze-court-order"]),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Positive control

#[sqlx::test]
async fn valid_submit_is_decided_and_applied(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let (status, body) = app
        .submit(&sec(&app), "control-1", &service::sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_decided_sec_freeze(&body);
    assert_eq!(body["order"]["issuer"], "US-SEC", "{body}");
    assert_eq!(order_rows(&pool).await, 1);
    assert_ne!(service::table_counts(&pool).await, before);
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed JSON

#[sqlx::test]
async fn malformed_json_is_400(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    for body in [
        r#"{"target": {"chain": "ethereum""#,
        "not json at all",
        "",
        r#"{"target": {"chain": "ethereum", "asset": "0xACME-BOND-2031"},}"#,
    ] {
        let answer = send(post_raw(&app, &sec(&app), Some("k-malformed"), body)).await;
        assert_problem(&answer, 400, "malformed-json");
    }
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Unknown fields

#[sqlx::test]
async fn unknown_top_level_field_is_422_naming_it(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut body = service::sec_freeze();
    body["urgency"] = json!("high");
    let answer = send(post_order(&app, &sec(&app), Some("k-unknown-top"), &body)).await;
    let detail = assert_problem(&answer, 422, "invalid-request");
    assert!(
        detail.contains("urgency"),
        "detail does not name the field: {detail}"
    );
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn unknown_field_in_instruction_is_422_naming_it(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut body = service::sec_freeze();
    body["instruction"]["duration_days"] = json!(30);
    let answer = send(post_order(&app, &sec(&app), Some("k-unknown-instr"), &body)).await;
    let detail = assert_problem(&answer, 422, "invalid-request");
    assert!(
        detail.contains("duration_days"),
        "detail does not name the field: {detail}"
    );
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn unknown_field_in_legal_basis_is_422_naming_it(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut body = service::sec_freeze();
    body["legal_basis"]["judge"] = json!("Hon. A. Smith");
    let answer = send(post_order(&app, &sec(&app), Some("k-unknown-basis"), &body)).await;
    let detail = assert_problem(&answer, 422, "invalid-request");
    assert!(
        detail.contains("judge"),
        "detail does not name the field: {detail}"
    );
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Unknown asset

#[sqlx::test]
async fn unregistered_asset_is_422(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let body = service::order(
        "ethereum",
        "0xNOT-REGISTERED",
        "court_order",
        "SEC v. Nobody",
        json!({"kind": "FREEZE"}),
    );
    let answer = send(post_order(&app, &sec(&app), Some("k-unknown-asset"), &body)).await;
    let detail = assert_problem(&answer, 422, "unknown-asset");
    assert!(detail.contains("0xNOT-REGISTERED"), "{detail}");
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Idempotency-Key

#[sqlx::test]
async fn missing_idempotency_key_is_400(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let answer = send(post_order(&app, &sec(&app), None, &service::sec_freeze())).await;
    assert_problem(&answer, 400, "missing-idempotency-key");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn invalid_idempotency_keys_are_400(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let too_long = "k".repeat(201);
    for key in ["has a space", "", "tab\there", too_long.as_str()] {
        let answer = send(post_order(
            &app,
            &sec(&app),
            Some(key),
            &service::sec_freeze(),
        ))
        .await;
        assert_problem(&answer, 400, "invalid-idempotency-key");
    }
    // Non-ASCII bytes in the header.
    let request = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(sec(&app))
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        )
        .json(&service::sec_freeze());
    assert_problem(&send(request).await, 400, "invalid-idempotency-key");
    assert_nothing_written(&pool, &before).await;
    // 200 characters is still fine: the limit is exact.
    let (status, body) = app
        .submit(&sec(&app), &"k".repeat(200), &service::sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(order_rows(&pool).await, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Tokens

/// Submits a valid order with `token` (or none) and asserts a 401 of `slug`, nothing written.
async fn assert_token_refused(app: &TestApp, pool: &PgPool, token: Option<&str>, slug: &str) {
    let before = service::table_counts(pool).await;
    let mut request = app
        .client
        .post(app.url("/v1/orders"))
        .header("Idempotency-Key", format!("k-{slug}"))
        .json(&service::sec_freeze());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = send(request).await;
    assert_problem(&answer, 401, slug);
    assert_eq!(
        answer.1.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_nothing_written(pool, &before).await;
}

#[sqlx::test]
async fn no_authorization_header_is_401_missing_token(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    assert_token_refused(&app, &pool, None, "missing-token").await;
}

#[sqlx::test]
async fn non_bearer_authorization_is_401_invalid_token(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let request = app
        .client
        .post(app.url("/v1/orders"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .header("Idempotency-Key", "k-basic")
        .json(&service::sec_freeze());
    assert_problem(&send(request).await, 401, "invalid-token");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn garbage_token_is_401_invalid_token(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "...."] {
        assert_token_refused(&app, &pool, Some(token), "invalid-token").await;
    }
}

#[sqlx::test]
async fn token_signed_with_another_secret_is_401_invalid_token(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let other = service::secret_file();
    let token = mint_dev_token(
        &other,
        ISSUER,
        AUDIENCE,
        "US-SEC",
        vec![Role::Regulator],
        chrono::Duration::minutes(10),
    )
    .unwrap();
    assert_token_refused(&app, &pool, Some(&token), "invalid-token").await;
}

#[sqlx::test]
async fn expired_token_is_401_token_expired(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let token = mint_dev_token(
        &app.secret,
        ISSUER,
        AUDIENCE,
        "US-SEC",
        vec![Role::Regulator],
        chrono::Duration::minutes(-5),
    )
    .unwrap();
    assert_token_refused(&app, &pool, Some(&token), "token-expired").await;
}

#[sqlx::test]
async fn wrong_audience_token_is_401_wrong_audience(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let token = mint_dev_token(
        &app.secret,
        ISSUER,
        "someone-else",
        "US-SEC",
        vec![Role::Regulator],
        chrono::Duration::minutes(10),
    )
    .unwrap();
    assert_token_refused(&app, &pool, Some(&token), "wrong-audience").await;
}

#[sqlx::test]
async fn wrong_issuer_token_is_401_invalid_token(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let token = mint_dev_token(
        &app.secret,
        "someone-else",
        AUDIENCE,
        "US-SEC",
        vec![Role::Regulator],
        chrono::Duration::minutes(10),
    )
    .unwrap();
    assert_token_refused(&app, &pool, Some(&token), "invalid-token").await;
}

#[sqlx::test]
async fn alg_none_token_is_401_invalid_token(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let claims = claims(
        "US-SEC",
        vec![Role::Regulator],
        AUDIENCE,
        chrono::Duration::minutes(10),
    );
    let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = BASE64_URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let token = format!("{header}.{payload}.");
    assert_token_refused(&app, &pool, Some(&token), "invalid-token").await;
    // Spelled differently, still refused.
    let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"None","typ":"JWT"}"#);
    let token = format!("{header}.{payload}.");
    assert_token_refused(&app, &pool, Some(&token), "invalid-token").await;
}

/// A token for the RS256 app, signed with the fixture's private key.
fn rs256_token(sub: &str, roles: Vec<Role>) -> String {
    let pem = std::fs::read(fixture("rsa-test-private.pem")).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(sub, roles, AUDIENCE, chrono::Duration::minutes(10)),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

async fn spawn_rs256(pool: &PgPool) -> TestApp {
    let mut config = service::config(service::secret_file(), 100);
    config.keys = KeySource::PublicKeyPem(fixture("rsa-test-public.pem"));
    TestApp::start(config, pool.clone()).await
}

#[sqlx::test]
async fn algorithm_confusion_is_refused_and_rs256_accepted(pool: PgPool) {
    let app = spawn_rs256(&pool).await;
    let admin = rs256_token("ops", vec![Role::Admin]);
    let answer = send(
        app.client
            .put(app.url(&format!("/v1/assets/{}/{}", BOND.0, BOND.1)))
            .bearer_auth(&admin)
            .json(&json!({"issuer_jurisdiction": "US", "asset_class": "security"})),
    )
    .await;
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.2);
    let before = service::table_counts(&pool).await;

    // (a) HS256 with the public key's PEM bytes as the HMAC secret.
    let public_pem = std::fs::read(fixture("rsa-test-public.pem")).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(
            "US-SEC",
            vec![Role::Regulator],
            AUDIENCE,
            chrono::Duration::minutes(10),
        ),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    assert_token_refused(&app, &pool, Some(&confused), "invalid-token").await;
    let answer = send(
        app.client
            .get(app.url(&target_path()))
            .bearer_auth(&confused),
    )
    .await;
    assert_problem(&answer, 401, "invalid-token");
    // Development tokens (HS256 with a dev secret) do not work against configured keys either.
    assert_token_refused(&app, &pool, Some(&app.regulator("US-SEC")), "invalid-token").await;
    // Nor alg: none.
    let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = BASE64_URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&claims(
            "US-SEC",
            vec![Role::Regulator],
            AUDIENCE,
            chrono::Duration::minutes(10),
        ))
        .unwrap(),
    );
    assert_token_refused(
        &app,
        &pool,
        Some(&format!("{header}.{payload}.")),
        "invalid-token",
    )
    .await;
    assert_nothing_written(&pool, &before).await;

    // (b) A properly RS256-signed token is accepted.
    let regulator = rs256_token("US-SEC", vec![Role::Regulator]);
    let (status, body) = app.get(&regulator, &target_path()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .submit(&regulator, "k-rs256", &service::sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_decided_sec_freeze(&body);
}

// ---------------------------------------------------------------------------------------------
// 6. Oversized bodies

#[sqlx::test]
async fn order_body_over_64_kib_is_413(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut body = service::sec_freeze();
    body["legal_basis"]["reference"] = json!("x".repeat(70_000));
    let answer = send(post_order(&app, &sec(&app), Some("k-big"), &body)).await;
    assert_problem(&answer, 413, "payload-too-large");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn batch_body_over_4_mib_is_413(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut order = service::sec_freeze();
    order["legal_basis"]["reference"] = json!("x".repeat(4 * 1024 * 1024 + 1024));
    let body = json!({"orders": [{"idempotency_key": "k-big-batch", "order": order}]});
    let answer = send(post_batch(&app, &sec(&app), body.to_string())).await;
    assert_problem(&answer, 413, "payload-too-large");
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Batches

fn batch_item(key: &str, order: Value) -> Value {
    json!({"idempotency_key": key, "order": order})
}

#[sqlx::test]
async fn batch_of_1001_is_422_batch_too_large(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let items: Vec<Value> = (0..1_001)
        .map(|i| batch_item(&format!("k-{i}"), service::sec_freeze()))
        .collect();
    let body = json!({"orders": items});
    let answer = send(post_batch(&app, &sec(&app), body.to_string())).await;
    let detail = assert_problem(&answer, 422, "batch-too-large");
    assert!(
        detail.contains("1001") || detail.contains("1,001"),
        "{detail}"
    );
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn batch_judges_each_item_on_its_own(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut bad = service::sec_freeze();
    bad["instruction"]["duration_days"] = json!(30);
    let body = json!({"orders": [
        batch_item("k-bad", bad),
        batch_item("k-good", service::sec_freeze()),
    ]});
    let (status, _, response) = send(post_batch(&app, &sec(&app), body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let results = response["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{response}");

    let bad = &results[0];
    assert_eq!(bad["index"], 0, "{response}");
    assert_eq!(bad["status"], 422, "{response}");
    assert!(bad.get("order_id").is_none(), "{response}");
    let detail = assert_problem_doc(&bad["problem"], 422, "invalid-request");
    assert!(detail.contains("duration_days"), "{detail}");

    let good = &results[1];
    assert_eq!(good["index"], 1, "{response}");
    assert_eq!(good["status"], 201, "{response}");
    assert!(good.get("problem").is_none(), "{response}");
    assert_eq!(good["order_status"], "decided", "{response}");
    assert_eq!(good["decision"]["outcome"], "APPLIED", "{response}");
    assert_eq!(
        good["decision"]["determining_policies"],
        json!(["us-sec-freeze-court-order"]),
        "{response}"
    );
    assert_eq!(order_rows(&pool).await, 1);
    assert_eq!(before.iter().find(|(t, _)| t == "orders").unwrap().1, 0);
}

/// `?detail=summary`: each decided item says what was decided (seq, outcome, reason code)
/// without its record, which the order's own URL still serves whole; a refused item still has
/// its problem. An unknown `detail` is refused before anything is written.
#[sqlx::test]
async fn a_batch_answer_can_summarise_its_decisions(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let refused = post_batch_to(
        &app,
        "/v1/orders/batch?detail=brief",
        &sec(&app),
        json!({"orders": [batch_item("k-0", service::sec_freeze())]}).to_string(),
    );
    let detail = assert_problem(&send(refused).await, 422, "invalid-request");
    assert!(detail.contains("detail"), "{detail}");
    assert_nothing_written(&pool, &before).await;

    let mut bad = service::sec_freeze();
    bad["instruction"]["duration_days"] = json!(30);
    let body = json!({"orders": [
        batch_item("k-good", service::sec_freeze()),
        batch_item("k-bad", bad),
    ]});
    let summarised = post_batch_to(
        &app,
        "/v1/orders/batch?detail=summary",
        &sec(&app),
        body.to_string(),
    );
    let (status, _, response) = send(summarised).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let good = &response["results"][0];
    assert_eq!(good["status"], 201, "{response}");
    assert!(good.get("decision").is_none(), "no record: {response}");
    let summary = &good["decision_summary"];
    assert_eq!(summary["outcome"], "APPLIED", "{response}");
    assert_eq!(summary["reason_code"], "applied", "{response}");
    let seq = summary["seq"].as_u64().expect("seq");
    let bad = &response["results"][1];
    assert_eq!(bad["status"], 422, "{response}");
    assert!(bad.get("decision_summary").is_none(), "{response}");
    assert_problem_doc(&bad["problem"], 422, "invalid-request");

    // The whole record is the one the summary points at.
    let order_id = good["order_id"].as_str().expect("order_id");
    let read = app
        .client
        .get(app.url(&format!("/v1/orders/{order_id}")))
        .bearer_auth(sec(&app));
    let (status, _, order) = send(read).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["decision"]["seq"], seq, "{order}");
    assert_eq!(order["decision"]["outcome"], "APPLIED", "{order}");

    // Without `detail`, and with `detail=full`, items carry the record as before.
    let full = post_batch_to(
        &app,
        "/v1/orders/batch?detail=full",
        &sec(&app),
        json!({"orders": [batch_item("k-full", service::sec_freeze())]}).to_string(),
    );
    let (status, _, response) = send(full).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["results"][0]["decision"]["outcome"], "APPLIED");
    assert!(response["results"][0].get("decision_summary").is_none());
}

#[sqlx::test]
async fn batch_malformed_and_wrong_shape_are_refused(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let answer = send(post_batch(&app, &sec(&app), r#"{"orders": ["#)).await;
    assert_problem(&answer, 400, "malformed-json");
    let answer = send(post_batch(
        &app,
        &sec(&app),
        r#"{"orders": [], "extra": 1}"#,
    ))
    .await;
    let detail = assert_problem(&answer, 422, "invalid-request");
    assert!(detail.contains("extra"), "{detail}");
    let answer = send(post_batch(&app, &sec(&app), r#"[1, 2]"#)).await;
    assert_problem(&answer, 422, "invalid-request");
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Roles

#[sqlx::test]
async fn auditor_cannot_submit(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let token = app.token("US-SEC", &[Role::Auditor]);
    let answer = send(post_order(
        &app,
        &token,
        Some("k-auditor"),
        &service::sec_freeze(),
    ))
    .await;
    assert_problem(&answer, 403, "forbidden");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn regulator_cannot_submit_as_another_issuer(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut body = service::doj_seize();
    body["issuer"] = json!("US-DOJ");
    let answer = send(post_order(&app, &sec(&app), Some("k-mismatch"), &body)).await;
    let detail = assert_problem(&answer, 403, "issuer-mismatch");
    assert!(
        detail.contains("US-SEC") && detail.contains("US-DOJ"),
        "{detail}"
    );
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn regulator_cannot_preempt(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let body = service::order(
        BOND.0,
        BOND.1,
        "court_order",
        "SEC v. Acme Corp.",
        json!({"kind": "PREEMPT", "lease_ttl_ms": 1000}),
    );
    let answer = send(post_order(&app, &sec(&app), Some("k-preempt"), &body)).await;
    assert_problem(&answer, 403, "forbidden");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn chain_token_reads_only_its_own_chain(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let polygon = app.token("polygon", &[Role::Chain]);
    for path in [target_path(), format!("{}/history", target_path())] {
        let answer = send(app.client.get(app.url(&path)).bearer_auth(&polygon)).await;
        assert_problem(&answer, 403, "forbidden");
    }
    // The same asset is readable by its own chain: the 403 is about the chain, not the asset.
    let ethereum = app.token("ethereum", &[Role::Chain]);
    let (status, body) = app.get(&ethereum, &target_path()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Idempotency key reuse

#[sqlx::test]
async fn same_key_with_another_body_is_422_and_keeps_the_original(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let token = sec(&app);
    let (status, first) = app.submit(&token, "k-reused", &service::sec_freeze()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let order_id = first["order_id"].as_str().unwrap().to_owned();
    let before = service::table_counts(&pool).await;

    let mut other = service::sec_freeze();
    other["legal_basis"]["reference"] = json!("SEC v. Someone Else, 26-cv-9999");
    let answer = send(post_order(&app, &token, Some("k-reused"), &other)).await;
    let detail = assert_problem(&answer, 422, "idempotency-key-reused");
    assert!(detail.contains("k-reused"), "{detail}");
    assert_nothing_written(&pool, &before).await;
    assert_eq!(order_rows(&pool).await, 1);

    let (status, stored) = app.get(&token, &format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["order"], first["order"]);
    assert_eq!(stored["decision"], first["decision"]);

    // The same key with the same body is a retry: the original, 200, nothing new.
    let (status, retry) = app.submit(&token, "k-reused", &service::sec_freeze()).await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["order_id"], first["order_id"]);
    assert_eq!(retry["order"], first["order"]);
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn same_key_with_same_body_in_another_key_order_is_a_retry(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let token = sec(&app);
    let (status, first) = app
        .submit(&token, "k-reordered", &service::sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let before = service::table_counts(&pool).await;
    // The same order with its members (and the target's) in another order, as raw text so no
    // client library reorders them.
    let reordered = format!(
        r#"{{"instruction": {{"kind": "FREEZE"}}, "legal_basis": {}, "target": {{"asset": "{}", "chain": "{}"}}}}"#,
        service::sec_freeze()["legal_basis"],
        BOND.1,
        BOND.0,
    );
    let answer = send(post_raw(&app, &token, Some("k-reordered"), reordered)).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    assert_eq!(answer.2["order_id"], first["order_id"]);
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Not found

#[sqlx::test]
async fn another_issuers_order_is_404_like_a_missing_one(pool: PgPool) {
    let (app, _) = setup(&pool).await;
    let (status, first) = app
        .submit(&sec(&app), "k-sec", &service::sec_freeze())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let order_id = first["order_id"].as_str().unwrap().to_owned();
    let before = service::table_counts(&pool).await;

    let doj = app.regulator("US-DOJ");
    let theirs = send(
        app.client
            .get(app.url(&format!("/v1/orders/{order_id}")))
            .bearer_auth(&doj),
    )
    .await;
    assert_problem(&theirs, 404, "not-found");
    let missing_id = uuid::Uuid::now_v7().to_string();
    let missing = send(
        app.client
            .get(app.url(&format!("/v1/orders/{missing_id}")))
            .bearer_auth(&doj),
    )
    .await;
    assert_problem(&missing, 404, "not-found");
    // Nothing tells the two apart but the id.
    assert_eq!(
        theirs.2["detail"]
            .as_str()
            .unwrap()
            .replace(&order_id, "ID"),
        missing.2["detail"]
            .as_str()
            .unwrap()
            .replace(&missing_id, "ID"),
    );
    assert_eq!(theirs.2["title"], missing.2["title"]);
    assert!(!theirs.2.to_string().contains("US-SEC"), "{}", theirs.2);

    // The issuer itself and an auditor can read it.
    let (status, _) = app.get(&sec(&app), &format!("/v1/orders/{order_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&app.auditor(), &format!("/v1/orders/{order_id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn non_uuid_order_id_is_404(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    for id in [
        "not-a-uuid",
        "12345",
        "0192f0c4-zzzz-7000-8000-000000000000",
    ] {
        let answer = send(
            app.client
                .get(app.url(&format!("/v1/orders/{id}")))
                .bearer_auth(sec(&app)),
        )
        .await;
        assert_problem(&answer, 404, "not-found");
    }
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn unknown_route_is_404_problem(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    for path in [
        "/v1/nothing-here",
        "/nothing-here",
        "/v1/orders/batch/extra/segments",
    ] {
        let answer = send(app.client.get(app.url(path)).bearer_auth(app.admin())).await;
        assert_problem(&answer, 404, "not-found");
        // Also without a token: an unknown route is not an authentication question.
        let answer = send(app.client.get(app.url(path))).await;
        assert_problem(&answer, 404, "not-found");
    }
    assert_nothing_written(&pool, &before).await;
}

// ---------------------------------------------------------------------------------------------
// Beyond the brief: every error, not only the handlers' own, is a problem document (SPEC §5).

#[sqlx::test]
async fn wrong_method_is_405_problem(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let response = app
        .client
        .delete(app.url("/v1/orders"))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{text}");
    assert_eq!(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some(PROBLEM_JSON),
        "{headers:?} {text:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:regulator:problem:")),
        "{body}"
    );
    assert_eq!(body["status"], 405, "{body}");
    assert_nothing_written(&pool, &before).await;
}

#[sqlx::test]
async fn bad_query_string_is_a_problem(pool: PgPool) {
    let (app, before) = setup(&pool).await;
    let mut wrong = Vec::new();
    for path in [
        format!("{}?bogus=1", target_path()),
        format!("{}/history?limit=abc", target_path()),
        "/v1/decisions?after=-1".to_owned(),
        "/v1/decisions?limit=abc".to_owned(),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .bearer_auth(app.admin())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap();
        let problem: Option<Value> = serde_json::from_str(&text).ok();
        let ok = status.is_client_error()
            && content_type.as_deref() == Some(PROBLEM_JSON)
            && problem.is_some_and(|p| {
                p["type"] == "urn:regulator:problem:invalid-request"
                    && p["status"] == status.as_u16()
            });
        if !ok {
            wrong.push(format!("{path}: {status} {content_type:?} {text:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not problem documents:\n{}",
        wrong.join("\n")
    );
    assert_nothing_written(&pool, &before).await;
}

/// The same key twice in one batch is one order: both slots carry its decision.
#[sqlx::test]
async fn the_same_key_twice_in_a_batch_is_one_order_with_one_decision(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let item = json!({"idempotency_key": "dup-1", "order": sec_freeze()});
    for round in 0..2 {
        let response = app
            .client
            .post(app.url("/v1/orders/batch"))
            .bearer_auth(app.regulator("US-SEC"))
            .json(&json!({"orders": [item.clone(), item.clone()]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results[0]["order_id"], results[1]["order_id"]);
        for r in results {
            assert_eq!(r["order_status"], "decided", "round {round}: {r}");
            assert_eq!(r["decision"]["outcome"], "APPLIED");
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 1);
}
