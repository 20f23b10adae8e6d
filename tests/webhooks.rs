//! Webhooks to chains (SPEC §8), against a real HTTP receiver on loopback.
//!
//! The receiver checks every delivery with its own implementation of the Standard Webhooks
//! verification (HMAC-SHA256 over `id.timestamp.body`, written here from the specification),
//! so a bug in the engine's signing code cannot hide behind the same bug in the check.

mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use regulator::auth::Role;
use regulator::webhooks::{RetrySchedule, UrlGuard, WebhookConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Notify;

use service::{order, TestApp};

const CHAIN: &str = "ethereum";

// ---------------------------------------------------------------------------------------------
// The receiver

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    json: Value,
    at: Instant,
    answered: u16,
}

impl Delivery {
    fn seq(&self) -> u64 {
        self.json["data"]["seq"].as_u64().unwrap()
    }
}

/// How the receiver answers: the status, and a `Retry-After` if any. `seen` counts earlier
/// requests with the same `webhook-id`.
type Script = Arc<dyn Fn(&Delivery, usize) -> (u16, Option<u64>) + Send + Sync>;

struct ReceiverState {
    log: Mutex<Vec<Delivery>>,
    script: Mutex<Script>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Time each request takes, so overlapping deliveries would show.
    delay: Duration,
    changed: Notify,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

fn ok() -> Script {
    Arc::new(|_, _| (204, None))
}

impl Receiver {
    async fn start(script: Script) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script, Duration::ZERO).await
    }

    async fn start_on(addr: SocketAddr, script: Script, delay: Duration) -> Self {
        let state = Arc::new(ReceiverState {
            log: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay,
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set_script(&self, script: Script) {
        *self.state.script.lock().unwrap() = script;
    }

    fn log(&self) -> Vec<Delivery> {
        self.state.log.lock().unwrap().clone()
    }

    /// The deliveries answered 2xx.
    fn accepted(&self) -> Vec<Delivery> {
        self.log()
            .into_iter()
            .filter(|d| (200..300).contains(&d.answered))
            .collect()
    }

    /// Waits until `done` holds for the log, or fails the test after `within`.
    async fn wait_until(&self, within: Duration, done: impl Fn(&[Delivery]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.state.changed.notified();
            if done(&self.state.log.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let log = self.log();
                panic!(
                    "the receiver did not get what was expected within {within:?}; it has {} requests, the last: {:?}",
                    log.len(),
                    log.last().map(|d| (&d.id, d.answered))
                );
            }
        }
    }

    async fn wait_for_accepted(&self, n: usize, within: Duration) {
        self.wait_until(within, |log| {
            log.iter()
                .filter(|d| (200..300).contains(&d.answered))
                .count()
                >= n
        })
        .await;
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    /// Counts the request out even if its client goes away and the handler is dropped.
    struct InFlight<'a>(&'a AtomicUsize);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let in_flight = InFlight(&state.in_flight);
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut delivery = Delivery {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        at: Instant::now(),
        answered: 0,
    };
    let script = state.script.lock().unwrap().clone();
    let seen = state
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.id == delivery.id)
        .count();
    let (status, retry_after) = script(&delivery, seen);
    delivery.answered = status;
    state.log.lock().unwrap().push(delivery);
    drop(in_flight);
    state.changed.notify_waiters();
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    response
}

/// Standard Webhooks verification, written from the specification: the message is authentic
/// if one of the `v1,` signatures is the HMAC-SHA256, keyed with the base64 part of the
/// secret, of `{id}.{timestamp}.{body}`, and the timestamp is within five minutes of now.
fn verify(secret: &str, d: &Delivery) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let Ok(timestamp) = d.timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - timestamp).abs() > 300 {
        return false;
    }
    let mut signed = format!("{}.{}.", d.id, d.timestamp).into_bytes();
    signed.extend_from_slice(&d.body);
    d.signature.split(' ').any(|candidate| {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            return false;
        };
        let Ok(signature) = STANDARD.decode(encoded) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        mac.verify_slice(&signature).is_ok()
    })
}

// ---------------------------------------------------------------------------------------------
// The engine

fn webhooks(schedule: &str) -> WebhookConfig {
    WebhookConfig {
        guard: UrlGuard::new(vec![], true),
        timeout: Duration::from_secs(2),
        schedule: RetrySchedule::parse(schedule).unwrap(),
        lease: Duration::from_secs(5),
        ..WebhookConfig::default()
    }
}

async fn spawn(pool: PgPool, webhooks: WebhookConfig) -> TestApp {
    let mut config = service::config(service::secret_file(), 0);
    config.webhooks = webhooks;
    TestApp::start(config, pool).await
}

/// A second replica on the same database and development secret.
async fn spawn_replica(first: &TestApp, pool: PgPool, webhooks: WebhookConfig) -> TestApp {
    let mut config = service::config(first.secret.clone(), 0);
    config.webhooks = webhooks;
    TestApp::start(config, pool).await
}

async fn register_bonds(app: &TestApp, chain: &str, n: usize) {
    for i in 0..n {
        app.register(chain, &format!("0xBOND-{i}"), "US", "security")
            .await;
    }
}

/// A freeze of a holder of its own, so every one is APPLIED.
fn freeze(chain: &str, i: usize) -> Value {
    let mut o = order(
        chain,
        &format!("0xBOND-{}", i % 10),
        "court_order",
        "SEC v. Many",
        json!({"kind": "FREEZE"}),
    );
    o["target"]["holder"] = json!(format!("0xH{i}"));
    o
}

/// Submits freezes `range` on `chain` as batches of up to 1,000, all decided.
async fn submit_freezes(app: &TestApp, chain: &str, range: std::ops::Range<usize>) {
    let items: Vec<Value> = range
        .map(|i| json!({"idempotency_key": format!("{chain}-{i}"), "order": freeze(chain, i)}))
        .collect();
    for chunk in items.chunks(1000) {
        let response = app
            .client
            .post(app.url("/v1/orders/batch"))
            .bearer_auth(app.regulator("US-SEC"))
            .json(&json!({ "orders": chunk }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let answer: Value = response.json().await.unwrap();
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["status"], 201, "{result}");
        }
    }
}

async fn subscribe(app: &TestApp, chain: &str, url: &str) -> (String, String) {
    let response = app
        .client
        .post(app.url("/v1/webhooks/subscriptions"))
        .bearer_auth(app.admin())
        .json(&json!({"chain": chain, "url": url, "description": "test chain adapter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/webhooks/subscriptions/{id}"));
    (id, body["secret"].as_str().unwrap().to_owned())
}

async fn subscription(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .get(&app.admin(), &format!("/v1/webhooks/subscriptions/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn attempts(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(
            &app.admin(),
            &format!("/v1/webhooks/subscriptions/{id}/attempts?limit=1000"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut attempts = body["attempts"].as_array().unwrap().clone();
    attempts.reverse();
    attempts
}

async fn post_admin(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    app.post(&app.admin(), path, body).await
}

/// Waits until the subscription's JSON satisfies `done`.
async fn wait_for_subscription(
    app: &TestApp,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let sub = subscription(app, id).await;
        if done(&sub) {
            return sub;
        }
        assert!(Instant::now() < deadline, "subscription stuck at {sub}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chain's decisions as the feed gives them: seq → exact record.
async fn feed(app: &TestApp, chain: &str) -> Vec<(u64, Value)> {
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let (status, page) = app
            .get(
                &app.auditor(),
                &format!("/v1/decisions?after={after}&limit=1000&chain={chain}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let decisions = page["decisions"].as_array().unwrap();
        if decisions.is_empty() {
            return all;
        }
        for d in decisions {
            all.push((d["seq"].as_u64().unwrap(), d.clone()));
        }
        after = page["next_after"].as_u64().unwrap();
    }
}

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(Delivery::seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Stories

/// A chain subscribes, and a thousand freezes are decided on it (and a few on another chain).
/// Every decision of its chain arrives once, in ledger order, signed, exactly as the ledger
/// has it, with the target's resulting state; none of the other chain's does.
#[sqlx::test]
async fn a_thousand_decisions_arrive_in_order_signed_and_exactly_as_recorded(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("100ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    register_bonds(&app, "polygon", 10).await;
    let receiver = Receiver::start(ok()).await;
    let (id, secret) = subscribe(&app, CHAIN, &receiver.url()).await;
    assert!(secret.starts_with("whsec_"));

    submit_freezes(&app, CHAIN, 0..600).await;
    submit_freezes(&app, "polygon", 0..50).await;
    submit_freezes(&app, CHAIN, 600..1000).await;
    receiver
        .wait_for_accepted(1000, Duration::from_secs(60))
        .await;

    let log = receiver.log();
    let recorded = feed(&app, CHAIN).await;
    assert_eq!(recorded.len(), 1000);
    assert_eq!(
        log.len(),
        1000,
        "no retries were needed, so nothing came twice"
    );
    assert_eq!(
        seqs(&log),
        recorded.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        "in ledger order, every one of the chain's decisions, no other chain's"
    );
    for (delivery, (seq, record)) in log.iter().zip(&recorded) {
        assert!(verify(&secret, delivery), "signature of seq {seq}");
        assert_eq!(delivery.id, format!("msg_{}_{seq}", id.replace('-', "")));
        let data = &delivery.json["data"];
        assert_eq!(delivery.json["type"], "decision.recorded");
        assert_eq!(delivery.json["timestamp"], record["decided_at"]);
        assert_eq!(&data["decision"], record);
        assert_eq!(data["state"], record["state_after"]);
        assert!(data["state"]["version"].as_u64().unwrap() >= 1);
        assert_eq!(data["state"]["frozen"], "all", "{}", data["state"]);
        // The hash covers the record text exactly as it went over the wire.
        let text = raw_field(&delivery.body, "decision");
        assert_eq!(
            data["hash"].as_str().unwrap(),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }
    // A body changed in transit does not verify.
    let mut forged = log[0].clone();
    let at = forged
        .body
        .windows(5)
        .position(|w| w == b"\"all\"")
        .unwrap();
    forged.body[at + 1..at + 4].copy_from_slice(b"non");
    assert!(!verify(&secret, &forged));

    let sub = wait_for_subscription(&app, &id, Duration::from_secs(5), |s| {
        s["delivered_through"] == recorded.last().unwrap().0
    })
    .await;
    assert_eq!(sub["status"], "active");
    assert!(sub.get("secret").is_none(), "the secret is shown only once");
    let logged = attempts(&app, &id).await;
    assert_eq!(logged.len(), 1000);
    assert!(logged
        .iter()
        .all(|a| a["outcome"] == "delivered" && a["response_status"] == 204 && a["attempt"] == 1));

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str, labels: &[&str]| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from /metrics"))
    };
    let this = format!("subscription=\"{id}\"");
    assert_eq!(
        sample(
            "regulator_webhook_attempts_total",
            &[&this, "outcome=\"delivered\""]
        ),
        1000.0
    );
    assert_eq!(sample("regulator_webhook_lag_decisions", &[&this]), 0.0);
    assert_eq!(sample("regulator_webhook_lag_seconds", &[&this]), 0.0);
    // Unlabelled: under `cargo test`, other tests in the same process add to it.
    assert!(sample("regulator_webhook_delivery_lag_seconds_count", &[]) >= 1000.0);
}

/// The exact text of a top-level field of `data` in a delivery body.
fn raw_field(body: &[u8], field: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: std::collections::HashMap<String, &'a serde_json::value::RawValue>,
    }
    let text = std::str::from_utf8(body).unwrap();
    let envelope: Envelope<'_> = serde_json::from_str(text).unwrap();
    envelope.data[field].get().to_owned()
}

/// The chain's endpoint is down while decisions are made; when it comes back, everything
/// arrives, in order, nothing lost, and the attempts log shows the refused connections.
#[sqlx::test]
async fn a_receiver_that_is_down_gets_everything_in_order_when_it_comes_back(pool: PgPool) {
    // About 18 s of retries: far more than the outage below, even on a loaded machine.
    let schedule = ["400ms"; 45].join(",");
    let app = spawn(pool.clone(), webhooks(&schedule)).await;
    register_bonds(&app, CHAIN, 10).await;
    // A port nobody listens on, until the receiver comes up on it: bound but not listening, so
    // connections are refused and no other server on the machine can take the port meanwhile.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let port = held.local_addr().unwrap().as_socket().unwrap();
    let (id, secret) = subscribe(&app, CHAIN, &format!("http://{port}/hook")).await;
    submit_freezes(&app, CHAIN, 0..30).await;

    // Wait for a few failed attempts at the first decision. An attempt's row is written before
    // it is sent and completed after: the newest may still be in flight, and is not counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut logged = attempts(&app, &id).await;
        logged.retain(|a| a["outcome"] != "in_flight");
        if logged.len() >= 3 {
            assert!(logged.iter().all(|a| a["outcome"] == "failed"
                && a["response_status"].is_null()
                && a["seq"] == logged[0]["seq"]));
            assert!(
                logged[0]["error"].as_str().unwrap().contains("onnect"),
                "{}",
                logged[0]["error"]
            );
            assert_eq!(
                logged
                    .iter()
                    .map(|a| a["attempt"].as_u64().unwrap())
                    .collect::<Vec<_>>()[..3],
                [1, 2, 3]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempts logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sub = subscription(&app, &id).await;
    assert_eq!(sub["status"], "active");
    assert_eq!(
        sub["delivered_through"], 0,
        "nothing moved past the undelivered head"
    );
    assert!(sub["attempts"].as_u64().unwrap() >= 3);

    drop(held);
    let receiver = Receiver::start_on(port, ok(), Duration::ZERO).await;
    submit_freezes(&app, CHAIN, 30..40).await;
    receiver
        .wait_for_accepted(40, Duration::from_secs(20))
        .await;
    let recorded: Vec<u64> = feed(&app, CHAIN)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs(&receiver.log()), recorded);
    assert!(receiver.log().iter().all(|d| verify(&secret, d)));
}

/// 500s are retried with the same `webhook-id` and body until they succeed; the decisions
/// behind wait, so the order holds.
#[sqlx::test]
async fn server_errors_are_retried_with_the_same_id_and_body(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms,50ms,50ms,50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    // Every decision fails twice, then succeeds.
    let receiver = Receiver::start(Arc::new(
        |_, seen| {
            if seen < 2 {
                (500, None)
            } else {
                (200, None)
            }
        },
    ))
    .await;
    let (id, _) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..5).await;
    receiver.wait_for_accepted(5, Duration::from_secs(20)).await;

    let log = receiver.log();
    assert_eq!(log.len(), 15);
    for three in log.chunks(3) {
        assert_eq!(
            three.iter().map(|d| d.answered).collect::<Vec<_>>(),
            [500, 500, 200]
        );
        assert!(three
            .iter()
            .all(|d| d.id == three[0].id && d.body == three[0].body));
    }
    // The receiver answers before the worker logs the answer.
    let last = feed(&app, CHAIN).await.last().unwrap().0;
    wait_for_subscription(&app, &id, Duration::from_secs(5), |s| {
        s["delivered_through"] == last
    })
    .await;
    let logged = attempts(&app, &id).await;
    assert_eq!(logged.len(), 15);
    assert_eq!(logged[0]["outcome"], "failed");
    assert_eq!(logged[0]["response_status"], 500);
    assert!(logged[0]["error"].as_str().unwrap().contains("500"));
    assert_eq!(logged[2]["outcome"], "delivered");
    assert_eq!(logged[2]["attempt"], 3);
    assert_eq!(
        logged[3]["attempt"], 1,
        "the next decision starts counting afresh"
    );
}

/// A 429 with `Retry-After: 2` is retried after two seconds, though the schedule says 50 ms.
#[sqlx::test]
async fn retry_after_is_honoured(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms,50ms,50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    let receiver = Receiver::start(Arc::new(|_, seen| {
        if seen == 0 {
            (429, Some(2))
        } else {
            (200, None)
        }
    }))
    .await;
    let (id, _) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..1).await;

    // While it waits, the API shows the retry.
    let sub =
        wait_for_subscription(&app, &id, Duration::from_secs(5), |s| s["attempts"] == 1).await;
    assert!(sub["next_attempt_at"].is_string(), "{sub}");
    receiver.wait_for_accepted(1, Duration::from_secs(10)).await;
    let log = receiver.log();
    assert_eq!(log.len(), 2);
    let waited = log[1].at - log[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, not after Retry-After"
    );
    assert_eq!(log[0].id, log[1].id);
}

/// A receiver that answers 410 Gone is not called again: the subscription is disabled, with
/// the reason, until an admin enables it; then delivery resumes where it stopped.
#[sqlx::test]
async fn gone_disables_the_subscription_until_it_is_enabled(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    let receiver = Receiver::start(Arc::new(|_, _| (410, None))).await;
    let (id, _) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..3).await;

    let sub = wait_for_subscription(&app, &id, Duration::from_secs(5), |s| {
        s["status"] == "disabled"
    })
    .await;
    assert!(
        sub["status_reason"].as_str().unwrap().contains("410"),
        "{sub}"
    );
    assert_eq!(sub["delivered_through"], 0);
    submit_freezes(&app, CHAIN, 3..6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.log().len(),
        1,
        "a disabled subscription is not delivered"
    );
    assert_eq!(attempts(&app, &id).await[0]["outcome"], "gone");

    receiver.set_script(ok());
    let (status, enabled) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/enable"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(enabled["status"], "active");
    receiver.wait_for_accepted(6, Duration::from_secs(10)).await;
    let recorded: Vec<u64> = feed(&app, CHAIN)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs(&receiver.accepted()), recorded);
}

/// When retries run out, the head delivery is marked failed and the subscription paused:
/// nothing behind it is sent (ordered delivery never skips). The failure is visible, and a
/// replay from its sequence number delivers everything, in order. A replay from the start
/// delivers again, with the same ids.
#[sqlx::test]
async fn exhausted_retries_pause_and_a_replay_resumes_without_skipping(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms,50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    let receiver = Receiver::start(Arc::new(|_, _| (503, None))).await;
    let (id, _) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..4).await;
    let recorded: Vec<u64> = feed(&app, CHAIN)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();

    let sub = wait_for_subscription(&app, &id, Duration::from_secs(10), |s| {
        s["status"] == "paused"
    })
    .await;
    assert_eq!(sub["failed"]["seq"], recorded[0]);
    assert_eq!(
        sub["failed"]["webhook_id"],
        format!("msg_{}_{}", id.replace('-', ""), recorded[0])
    );
    assert!(
        sub["status_reason"].as_str().unwrap().contains("503"),
        "{sub}"
    );
    assert_eq!(sub["delivered_through"], 0);
    let logged = attempts(&app, &id).await;
    assert_eq!(
        logged
            .iter()
            .map(|a| (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(1, "failed"), (2, "failed"), (3, "exhausted")]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.log().len(),
        3,
        "nothing after the failed delivery was sent"
    );

    receiver.set_script(ok());
    let (status, replayed) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/replay"),
        json!({"from_seq": recorded[0]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["status"], "active");
    assert!(replayed["failed"].is_null());
    receiver.wait_for_accepted(4, Duration::from_secs(10)).await;
    assert_eq!(seqs(&receiver.accepted()), recorded);

    let first_ids: Vec<String> = receiver.accepted().iter().map(|d| d.id.clone()).collect();
    let (status, _) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/replay"),
        json!({"from_seq": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    receiver.wait_for_accepted(8, Duration::from_secs(10)).await;
    let again: Vec<String> = receiver.accepted()[4..]
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(
        again, first_ids,
        "a replay redelivers with the same ids, in order"
    );
}

/// An admin enables a subscription while its last attempt is in flight. That attempt then
/// fails, but its outcome does not undo the admin's change: the subscription stays active and
/// the retries start over.
#[sqlx::test]
async fn an_admin_change_during_an_attempt_is_not_undone_by_it(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    // Every answer is a 500, after 1.5 s.
    let receiver = Receiver::start_on(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(|_, _| (500, None)),
        Duration::from_millis(1500),
    )
    .await;
    let (id, _) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..1).await;

    // Attempt 1 failed; attempt 2, the last, is in flight (logged as such before it was sent).
    let deadline = Instant::now() + Duration::from_secs(10);
    let second_in_flight = |logged: &[Value]| {
        logged.len() == 2
            && logged[0]["outcome"] == "failed"
            && logged[1]["attempt"] == 2
            && logged[1]["outcome"] == "in_flight"
    };
    while !(second_in_flight(&attempts(&app, &id).await)
        && receiver.state.in_flight.load(Ordering::SeqCst) == 1)
    {
        assert!(Instant::now() < deadline, "attempt 2 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, enabled) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/enable"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(enabled["attempts"], 0);

    let deadline = Instant::now() + Duration::from_secs(15);
    let logged = loop {
        let logged = attempts(&app, &id).await;
        if logged.len() >= 3 {
            break logged;
        }
        assert!(Instant::now() < deadline, "no fresh attempt: {logged:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (logged[1]["attempt"].as_u64(), logged[1]["outcome"].as_str()),
        (Some(2), Some("exhausted")),
        "the attempt in flight is logged as it happened"
    );
    assert_eq!(logged[2]["attempt"], 1, "but the retries started over");
    let sub = subscription(&app, &id).await;
    assert!(sub["failed"].is_null(), "{sub}");
    assert_eq!(sub["status"], "active");
}

/// Rotating the secret: during the grace period every delivery carries two signatures, one
/// with each secret, so a chain can switch at its own pace; after it, only the new one.
#[sqlx::test]
async fn a_rotated_secret_signs_alongside_the_old_one_during_the_grace_period(pool: PgPool) {
    let app = spawn(pool.clone(), webhooks("50ms")).await;
    register_bonds(&app, CHAIN, 10).await;
    let receiver = Receiver::start(ok()).await;
    let (id, old) = subscribe(&app, CHAIN, &receiver.url()).await;
    submit_freezes(&app, CHAIN, 0..2).await;
    receiver.wait_for_accepted(2, Duration::from_secs(10)).await;
    let seq_before = receiver.log()[1].seq();

    let (status, rotated) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/rotate-secret"),
        json!({"grace_seconds": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let rotated_at = Instant::now();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());

    submit_freezes(&app, CHAIN, 2..4).await;
    receiver.wait_for_accepted(4, Duration::from_secs(10)).await;
    for d in receiver.log().iter().filter(|d| d.seq() > seq_before) {
        assert_eq!(d.signature.split(' ').count(), 2, "{}", d.signature);
        assert!(verify(&old, d) && verify(&new, d));
    }

    // The grace period ends.
    tokio::time::sleep_until((rotated_at + Duration::from_millis(5500)).into()).await;
    submit_freezes(&app, CHAIN, 4..5).await;
    receiver.wait_for_accepted(5, Duration::from_secs(10)).await;
    let seq5 = feed(&app, CHAIN).await[4].0;
    let log = receiver.log();
    let last = log.iter().rev().find(|d| d.seq() == seq5).unwrap();
    assert_eq!(last.signature.split(' ').count(), 1);
    assert!(verify(&new, last));
    assert!(!verify(&old, last), "the old secret no longer signs");
    assert!(subscription(&app, &id).await["previous_secret_expires_at"].is_null());
}

/// Two replicas, each with a worker, one subscription: never two deliveries at once, and when
/// the worker holding the lease is killed mid-stream, the other takes over after the lease
/// expires. Everything arrives in order; at most the decision in flight comes twice.
#[sqlx::test]
async fn two_workers_never_deliver_at_once_and_a_killed_one_is_taken_over(pool: PgPool) {
    let config = WebhookConfig {
        lease: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        ..webhooks("50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms")
    };
    let a = spawn(pool.clone(), config.clone()).await;
    let b = spawn_replica(&a, pool.clone(), config).await;
    register_bonds(&a, CHAIN, 10).await;
    // Each request takes 3 ms, so overlapping deliveries would be seen.
    let receiver = Receiver::start_on(
        "127.0.0.1:0".parse().unwrap(),
        ok(),
        Duration::from_millis(3),
    )
    .await;
    let (id, secret) = subscribe(&a, CHAIN, &receiver.url()).await;
    submit_freezes(&a, CHAIN, 0..150).await;
    receiver
        .wait_for_accepted(50, Duration::from_secs(20))
        .await;

    let owner: uuid::Uuid =
        sqlx::query_scalar("SELECT lease_owner FROM webhook_subscriptions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let (holder, survivor) = if a.app.webhook_worker == Some(owner) {
        (a, b)
    } else {
        assert_eq!(b.app.webhook_worker, Some(owner));
        (b, a)
    };
    holder.app.kill();
    let killed_wall = chrono::Utc::now();
    submit_freezes(&survivor, CHAIN, 150..300).await;
    let recorded: Vec<u64> = feed(&survivor, CHAIN)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let last = *recorded.last().unwrap();
    // Counting deliveries would not do: the one in flight at the kill may come twice.
    receiver
        .wait_until(Duration::from_secs(30), |log| {
            log.iter()
                .any(|d| (200..300).contains(&d.answered) && d.seq() == last)
        })
        .await;

    let log = receiver.accepted();
    let delivered = seqs(&log);
    // In order, except for one rewind: the survivor starts again from the cursor the killed
    // worker last wrote, re-sending (in order, same ids) what it had delivered since.
    let rewinds: Vec<usize> = (1..delivered.len())
        .filter(|&i| delivered[i] <= delivered[i - 1])
        .collect();
    assert!(rewinds.len() <= 1, "out of order: {delivered:?}");
    let mut distinct = delivered.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, recorded, "nothing lost");
    assert!(
        delivered.len() - distinct.len() <= 128,
        "at most one unsaved batch comes twice"
    );
    assert_eq!(
        receiver.state.max_in_flight.load(Ordering::SeqCst),
        1,
        "two deliveries overlapped"
    );
    assert!(log.iter().all(|d| verify(&secret, d)));

    // The survivor's first attempt came once the killed worker's lease (5 s) had run out,
    // and from then on only the survivor delivered.
    let logged = attempts(&survivor, &id).await;
    let survivor_id = survivor.app.webhook_worker.unwrap().to_string();
    let first = logged
        .iter()
        .position(|a| a["worker"] == survivor_id.as_str())
        .expect("the survivor delivered");
    assert!(first > 0, "the killed worker delivered first");
    assert!(logged[first..]
        .iter()
        .all(|a| a["worker"] == survivor_id.as_str()));
    let taken_over: chrono::DateTime<chrono::Utc> = logged[first]["attempted_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let waited = (taken_over - killed_wall).to_std().unwrap_or_default();
    assert!(
        waited <= Duration::from_secs(10),
        "taken over {waited:?} after the kill"
    );

    // One row per attempt: every request the receiver got, the killed worker's last ones and
    // the survivor's resends of them included, is in the log (the killed worker's unsaved
    // ones as `in_flight`: sent, outcome unknown).
    let mut rows: HashMap<String, usize> = HashMap::new();
    for a in &logged {
        *rows
            .entry(a["webhook_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for d in receiver.log() {
        *received.entry(d.id.clone()).or_default() += 1;
    }
    for (id, n) in &received {
        assert!(
            rows.get(id).copied().unwrap_or(0) >= *n,
            "{id} was received {n} times but logged {:?}",
            rows.get(id)
        );
    }
    let resent = received.values().filter(|n| **n > 1).count();
    eprintln!("{resent} decisions were sent twice across the kill; each send is logged");
}

// ---------------------------------------------------------------------------------------------
// The API's refusals

#[sqlx::test]
async fn the_subscriptions_api_checks_roles_urls_and_ids(pool: PgPool) {
    let strict = WebhookConfig {
        guard: UrlGuard::new(vec!["*.chain.example".into()], false),
        ..WebhookConfig::default()
    };
    let app = spawn(pool.clone(), strict).await;
    let create = |token: String, body: Value| {
        app.client
            .post(app.url("/v1/webhooks/subscriptions"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let problem = |r: reqwest::Response| async move {
        let status = r.status();
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{status}"
        );
        let body: Value = r.json().await.unwrap();
        (status, body["type"].as_str().unwrap().to_owned())
    };

    let answer = create(
        app.regulator("US-SEC"),
        json!({"chain": CHAIN, "url": "https://hooks.chain.example/x"}),
    )
    .await
    .unwrap();
    assert_eq!(
        problem(answer).await,
        (
            StatusCode::FORBIDDEN,
            "urn:regulator:problem:forbidden".into()
        )
    );
    for url in [
        "http://hooks.chain.example/x",
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/x",
        "https://evil.example/x",
        "https://user:pw@hooks.chain.example/x",
        "not a url",
    ] {
        let answer = create(app.admin(), json!({"chain": CHAIN, "url": url}))
            .await
            .unwrap();
        assert_eq!(
            problem(answer).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:regulator:problem:url-refused".into()
            ),
            "{url}"
        );
    }
    for body in [
        json!({"chain": CHAIN, "url": "https://hooks.chain.example/x", "secret": "whsec_mine"}),
        json!({"chain": "", "url": "https://hooks.chain.example/x"}),
        json!({"chain": CHAIN, "url": "https://hooks.chain.example/x", "from_seq": 0}),
        // Only the first policy activation is in the log (seq 1): starting past the next seq
        // would skip the decision it will get.
        json!({"chain": CHAIN, "url": "https://hooks.chain.example/x", "from_seq": 3}),
    ] {
        let answer = create(app.admin(), body.clone()).await.unwrap();
        assert_eq!(
            problem(answer).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:regulator:problem:invalid-request".into()
            ),
            "{body}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_subscriptions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing refused was stored");

    let (id, _) = subscribe(&app, CHAIN, "https://hooks.chain.example/x").await;
    let (id2, _) = subscribe(&app, "polygon", "https://a.chain.example/y").await;
    let (status, list) = app
        .get(&app.admin(), "/v1/webhooks/subscriptions?chain=polygon")
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id2.as_str()]);
    let (_, all) = app.get(&app.admin(), "/v1/webhooks/subscriptions").await;
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 2);
    assert!(all["subscriptions"][0].get("secret").is_none());

    let (status, disabled) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/disable"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(disabled["status_reason"], "disabled by ops");
    let head = regulator::storage::ledger_head(&pool).await.unwrap().seq;
    for from_seq in [0, head + 10] {
        // Well past the next seq (the disable's own ledger event may still take one), which
        // the chain's next decision may get: a replay never skips.
        let (status, problem) = post_admin(
            &app,
            &format!("/v1/webhooks/subscriptions/{id}/replay"),
            json!({ "from_seq": from_seq }),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    }
    let (status, _) = post_admin(
        &app,
        &format!("/v1/webhooks/subscriptions/{id}/rotate-secret"),
        json!({"grace_seconds": 100_000_000}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // An empty body rotates with the default grace.
    let response = app
        .client
        .post(app.url(&format!("/v1/webhooks/subscriptions/{id}/rotate-secret")))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let delete = |sub: String| {
        app.client
            .delete(app.url(&format!("/v1/webhooks/subscriptions/{sub}")))
            .bearer_auth(app.admin())
            .send()
    };
    assert_eq!(
        delete(id.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let answer = delete(id.clone()).await.unwrap();
    assert_eq!(
        problem(answer).await,
        (
            StatusCode::NOT_FOUND,
            "urn:regulator:problem:not-found".into()
        )
    );
    let (status, _) = app
        .get(&app.admin(), &format!("/v1/webhooks/subscriptions/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(
            &app.token("ethereum", &[Role::Chain]),
            &format!("/v1/webhooks/subscriptions/{id2}"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
