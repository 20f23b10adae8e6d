//! The foundation's scenarios, end to end: real HTTP, real Postgres, real Cedar, the real
//! sequencer. Each reads like a case a regulator would recognise.

mod service;

use std::time::Duration;

use regulator::auth::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{doj_seize, order, sec_freeze, TestApp, BOND};
use sqlx::PgPool;

fn decision(response: &Value) -> &Value {
    &response["decision"]
}

/// Submits `first`, then `second` `gap_ms` later, both in flight together; returns both answers.
async fn race(
    app: &TestApp,
    first: (&str, &str, Value),
    second: (&str, &str, Value),
    gap_ms: u64,
) -> (Value, Value) {
    let (t1, k1, b1) = (app.regulator(first.0), first.1.to_owned(), first.2);
    let (t2, k2, b2) = (app.regulator(second.0), second.1.to_owned(), second.2);
    let client = app.client.clone();
    let url = app.url("/v1/orders");
    let early = tokio::spawn(async move {
        let r = client
            .post(url)
            .bearer_auth(t1)
            .header("Idempotency-Key", k1)
            .json(&b1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    let (status, late) = app.submit(&t2, &k2, &b2).await;
    assert_eq!(status, StatusCode::CREATED, "{late}");
    (early.await.unwrap(), late)
}

fn on(asset: &str, body: &Value) -> Value {
    let mut body = body.clone();
    body["target"]["asset"] = json!(asset);
    body
}

/// (a) The SEC's court freeze and the DOJ's seizure warrant land on the same bond 30 ms apart.
/// Whichever arrives first, the seizure (priority 850) is sequenced before the freeze (700), both
/// apply, and the bond ends PERM_LOCKED with two holds.
#[sqlx::test]
async fn sec_freeze_and_doj_seizure_decide_the_same_in_both_arrival_orders(pool: PgPool) {
    // A wide window, so that a loaded test machine cannot stretch 30 ms past it.
    let app = TestApp::spawn_with(pool, 1_000).await;
    app.register("ethereum", "0xBOND-A", "US", "security").await;
    app.register("ethereum", "0xBOND-B", "US", "security").await;

    let (sec_a, doj_a) = race(
        &app,
        ("US-SEC", "sec-a", on("0xBOND-A", &sec_freeze())),
        ("US-DOJ", "doj-a", on("0xBOND-A", &doj_seize())),
        30,
    )
    .await;
    let (doj_b, sec_b) = race(
        &app,
        ("US-DOJ", "doj-b", on("0xBOND-B", &doj_seize())),
        ("US-SEC", "sec-b", on("0xBOND-B", &sec_freeze())),
        30,
    )
    .await;

    for (sec, doj) in [(&sec_a, &doj_a), (&sec_b, &doj_b)] {
        let (s, d) = (decision(sec), decision(doj));
        assert_eq!(d["outcome"], "APPLIED");
        assert_eq!(d["priority"], 850);
        assert_eq!(d["determining_policies"], json!(["us-doj-seize-warrant"]));
        assert_eq!(s["outcome"], "APPLIED");
        assert_eq!(s["priority"], 700);
        assert_eq!(
            s["determining_policies"],
            json!(["us-sec-freeze-court-order"])
        );
        assert_eq!(
            s["seq"].as_u64().unwrap(),
            d["seq"].as_u64().unwrap() + 1,
            "the seizure is sequenced first, the freeze right after it"
        );
        assert_eq!(d["state_before"]["level"], "UNLOCKED");
        assert_eq!(s["state_after"]["level"], "PERM_LOCKED");
        assert_eq!(s["state_after"]["version"], 2);
        assert_eq!(
            s["decided_at"], d["decided_at"],
            "one conflict group, one commit"
        );
    }

    let auditor = app.auditor();
    for asset in ["0xBOND-A", "0xBOND-B"] {
        let (status, target) = app
            .get(&auditor, &format!("/v1/targets/ethereum/{asset}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(target["state"]["level"], "PERM_LOCKED");
        assert_eq!(target["state"]["frozen"], "all");
        assert_eq!(target["holds"].as_array().unwrap().len(), 2);
    }
    app.app.stop().await;
}

/// (b) OFAC blocks a designated person's stablecoin balance. A court's release of the block is
/// rejected by policy; only OFAC's own licence lifts it.
#[sqlx::test]
async fn only_an_ofac_licence_lifts_an_ofac_block(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register("polygon", "0x5GD-COIN", "SG", "stablecoin")
        .await;
    let target = |instrument: &str, reference: &str, instruction: Value| {
        let mut o = order("polygon", "0x5GD-COIN", instrument, reference, instruction);
        o["target"]["holder"] = json!("0xD351GNATED");
        o
    };
    let ofac = app.regulator("US-OFAC");
    let (status, block) = app
        .submit(
            &ofac,
            "sdn-0457",
            &target("designation", "SDN-2026-0457", json!({"kind": "FREEZE"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(decision(&block)["outcome"], "APPLIED");
    assert_eq!(decision(&block)["priority"], 900);
    let block_id = block["order_id"].as_str().unwrap();

    let (_, court) = app
        .submit(
            &app.regulator("US-SDNY"),
            "claimant-release",
            &target(
                "court_order",
                "In re Claimant, 26-mc-0077",
                json!({"kind": "RELEASE", "releases": block_id}),
            ),
        )
        .await;
    assert_eq!(decision(&court)["outcome"], "REJECTED");
    assert_eq!(decision(&court)["reason_code"], "policy_denied");

    let (_, licence) = app
        .submit(
            &ofac,
            "licence-1",
            &target(
                "licence",
                "GL-2026-12",
                json!({"kind": "RELEASE", "releases": block_id}),
            ),
        )
        .await;
    assert_eq!(decision(&licence)["outcome"], "APPLIED", "{licence}");
    assert_eq!(decision(&licence)["state_after"]["level"], "UNLOCKED");
    app.app.stop().await;
}

/// (c) FATF sets standards; it cannot seize, but it may ask for monitoring.
#[sqlx::test]
async fn fatf_cannot_seize_but_may_monitor(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let fatf = app.regulator("FATF");
    let (_, seize) = app
        .submit(
            &fatf,
            "r38",
            &order(
                BOND.0,
                BOND.1,
                "recommendation",
                "R.38 follow-up",
                json!({"kind": "SEIZE"}),
            ),
        )
        .await;
    assert_eq!(decision(&seize)["outcome"], "REJECTED");
    assert_eq!(
        decision(&seize)["reason_detail"]["forbids"],
        json!(["fatf-standard-setter-cannot-freeze-or-seize"])
    );
    let (_, monitor) = app
        .submit(
            &fatf,
            "grey",
            &order(
                BOND.0,
                BOND.1,
                "recommendation",
                "Grey-list review",
                json!({"kind": "MONITOR"}),
            ),
        )
        .await;
    assert_eq!(decision(&monitor)["outcome"], "APPLIED");
    assert_eq!(decision(&monitor)["state_after"]["level"], "SOFT_LOCKED");
    app.app.stop().await;
}

/// (d) The DOJ and the UK's NCA both seize the same stablecoin within one window at equal
/// priority: irreconcilable, both ESCALATED, nothing changes.
#[sqlx::test]
async fn equal_priority_seizures_from_two_jurisdictions_are_escalated(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 1_000).await;
    app.register("polygon", "0x5GD-COIN", "SG", "stablecoin")
        .await;
    let (doj, nca) = race(
        &app,
        (
            "US-DOJ",
            "doj",
            order(
                "polygon",
                "0x5GD-COIN",
                "warrant",
                "26-MAG-1207",
                json!({"kind": "SEIZE"}),
            ),
        ),
        (
            "GB-NCA",
            "nca",
            order(
                "polygon",
                "0x5GD-COIN",
                "warrant",
                "NCA/AFW/2026/311",
                json!({"kind": "SEIZE"}),
            ),
        ),
        20,
    )
    .await;
    for d in [decision(&doj), decision(&nca)] {
        assert_eq!(d["outcome"], "ESCALATED", "{d}");
        assert_eq!(d["reason_code"], "custody_tie");
        assert_eq!(d["state_after"]["level"], "UNLOCKED");
    }
    app.app.stop().await;
}

/// (e) MAS suspends a coin for a moment; the expiry comes back as its own sequenced decision.
/// (f) A coordinator's lease expires the same way.
#[sqlx::test]
async fn suspensions_and_leases_expire_as_sequenced_decisions(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register("polygon", "0x5GD-COIN", "SG", "stablecoin")
        .await;
    app.register(BOND.0, BOND.1, "US", "security").await;

    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (_, suspend) = app
        .submit(
            &app.regulator("SG-MAS"),
            "dir-08",
            &order(
                "polygon",
                "0x5GD-COIN",
                "direction",
                "MAS/DIR/2026/08",
                json!({"kind": "SUSPEND", "expires_at": until}),
            ),
        )
        .await;
    assert_eq!(decision(&suspend)["outcome"], "APPLIED", "{suspend}");

    let coordinator = app.token("settlement-coordinator", &[Role::Coordinator]);
    let mut lease = order(
        BOND.0,
        BOND.1,
        "settlement",
        "trade T-88121",
        json!({"kind": "PREEMPT", "lease_ttl_ms": 300}),
    );
    lease["target"]["holder"] = json!("0xHOLDER01");
    let (_, leased) = app.submit(&coordinator, "t-88121", &lease).await;
    assert_eq!(decision(&leased)["outcome"], "APPLIED", "{leased}");

    let auditor = app.auditor();
    let expiries = |history: &Value| -> Vec<Value> {
        history["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["subject"]["subject"] == "expiry")
            .cloned()
            .collect()
    };
    let mut coin_expiries = Vec::new();
    let mut bond_expiries = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        coin_expiries = expiries(
            &app.get(&auditor, "/v1/targets/polygon/0x5GD-COIN/history")
                .await
                .1,
        );
        bond_expiries = expiries(
            &app.get(
                &auditor,
                &format!("/v1/targets/{}/{}/history", BOND.0, BOND.1),
            )
            .await
            .1,
        );
        if !coin_expiries.is_empty() && !bond_expiries.is_empty() {
            break;
        }
    }
    assert_eq!(
        coin_expiries.len(),
        1,
        "the suspension expires exactly once"
    );
    assert_eq!(coin_expiries[0]["reason_code"], "expired");
    assert_eq!(coin_expiries[0]["state_after"]["level"], "UNLOCKED");
    assert_eq!(coin_expiries[0]["issuer"], "SG-MAS");
    assert_eq!(bond_expiries.len(), 1, "the lease expires exactly once");
    assert_eq!(bond_expiries[0]["kind"], "PREEMPT");

    let (_, coin) = app.get(&auditor, "/v1/targets/polygon/0x5GD-COIN").await;
    assert_eq!(coin["state"]["level"], "UNLOCKED");
    assert_eq!(coin["holds"], json!([]));
    app.app.stop().await;
}

/// A freeze lands while a coordinator holds a lease on one holder's balance: the lease is
/// revoked in the same decision, and the holder is HARD_LOCKED.
#[sqlx::test]
async fn a_freeze_revokes_a_preemptive_lease(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let coordinator = app.token("settlement-coordinator", &[Role::Coordinator]);
    let mut lease = order(
        BOND.0,
        BOND.1,
        "settlement",
        "trade T-1",
        json!({"kind": "PREEMPT", "lease_ttl_ms": 30000}),
    );
    lease["target"]["holder"] = json!("0xHOLDER01");
    let (_, leased) = app.submit(&coordinator, "t-1", &lease).await;
    assert_eq!(decision(&leased)["outcome"], "APPLIED");
    assert_eq!(decision(&leased)["effects"][0]["hold"]["fencing_token"], 1);

    let (_, frozen) = app
        .submit(&app.regulator("US-SEC"), "sec-1", &sec_freeze())
        .await;
    let d = decision(&frozen);
    assert_eq!(d["outcome"], "APPLIED");
    let revoked: Vec<&Value> = d["effects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["effect"] == "lift")
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["order_id"], leased["order_id"]);
    assert_eq!(revoked[0]["cause"]["cause"], "revoked");

    let (_, holder) = app
        .get(
            &app.auditor(),
            &format!("/v1/targets/{}/{}?holder=0xHOLDER01", BOND.0, BOND.1),
        )
        .await;
    assert_eq!(holder["state"]["level"], "HARD_LOCKED");
    assert_eq!(holder["holds"].as_array().unwrap().len(), 1);
    app.app.stop().await;
}

/// A portal that times out and retries with the same key gets the same order and decision,
/// and the engine decides it once.
#[sqlx::test]
async fn an_idempotent_retry_returns_the_original_decision(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let sec = app.regulator("US-SEC");
    let (first_status, first) = app.submit(&sec, "sec-retry", &sec_freeze()).await;
    assert_eq!(first_status, StatusCode::CREATED);
    // The same body with other whitespace and key order is the same request.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&sec_freeze()).unwrap()).unwrap();
    let (again_status, again) = app.submit(&sec, "sec-retry", &reordered).await;
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["decision"], first["decision"]);
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(decisions, 1);

    let (status, fetched) = app
        .get(
            &sec,
            &format!("/v1/orders/{}", first["order_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["decision"], first["decision"]);
    app.app.stop().await;
}

/// A chain follows the feed: long-poll wakes on a new decision, pages resume by cursor, the
/// filter keeps other chains out, and SSE resumes after `Last-Event-ID`.
#[sqlx::test]
async fn a_chain_follows_the_decision_feed(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.register("polygon", "0x5GD-COIN", "SG", "stablecoin")
        .await;
    let chain = app.token("ethereum", &[Role::Chain]);

    let waiting = {
        let client = app.client.clone();
        let url = app.url("/v1/decisions?after=0&wait=10");
        let chain = chain.clone();
        tokio::spawn(async move {
            let r = client.get(url).bearer_auth(chain).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mas = order(
        "polygon",
        "0x5GD-COIN",
        "direction",
        "MAS/DIR/1",
        json!({"kind": "MONITOR"}),
    );
    app.submit(&app.regulator("SG-MAS"), "mas-1", &mas).await;
    app.submit(&app.regulator("US-SEC"), "sec-1", &sec_freeze())
        .await;
    let woken = waiting.await.unwrap();
    let first = &woken["decisions"][0];
    assert_eq!(
        first["target"]["chain"], "ethereum",
        "the chain sees only its own decisions"
    );
    assert_eq!(first["kind"], "FREEZE");

    app.submit(&app.regulator("US-DOJ"), "doj-1", &doj_seize())
        .await;
    let (_, page) = app.get(&chain, "/v1/decisions?after=0&limit=10").await;
    let seqs: Vec<u64> = page["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] < seqs[1]);
    assert_eq!(page["next_after"], seqs[1]);

    let (status, _) = app.get(&chain, "/v1/decisions?chain=polygon").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // SSE from after the first of the chain's decisions: exactly the second arrives.
    let response = app
        .client
        .get(app.url("/v1/decisions/stream"))
        .bearer_auth(&chain)
        .header("Last-Event-ID", seqs[0].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    use futures::StreamExt;
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains(&format!("id: {}", seqs[1])), "{text}");
    assert!(text.contains("event: decision"));
    assert!(!text.contains(&format!("id: {}\n", seqs[0])));
    drop(body);
    app.app.stop().await;
}

/// Operators see the service: liveness, readiness with the policy version, request ids echoed,
/// and the Prometheus metrics the issue names, moved by a decision.
#[sqlx::test]
async fn operators_see_health_readiness_request_ids_and_metrics(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        health.headers().contains_key("x-request-id"),
        "a request id is generated"
    );

    let ready = app
        .client
        .get(app.url("/readyz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.headers()["x-request-id"], "trace-me-42", "and echoed");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    // The policies/ directory became version 1, activated as the log's first entry.
    assert_eq!(ready["active_version"], 1);
    assert_eq!(ready["active_since_seq"], 1);
    assert_eq!(ready["policy_version"].as_str().unwrap().len(), 64);

    app.register(BOND.0, BOND.1, "US", "security").await;
    let (_, frozen) = app
        .submit(&app.regulator("US-SEC"), "sec-1", &sec_freeze())
        .await;
    assert_eq!(decision(&frozen)["outcome"], "APPLIED");
    let metrics = app.metrics().await;
    for needle in [
        "regulator_orders_total{kind=\"FREEZE\",outcome=\"APPLIED\"} 1",
        "regulator_decision_latency_seconds_bucket",
        "regulator_sequencer_batch_size_count",
        "regulator_sequencer_round_seconds_bucket{phase=\"commit\"",
        "regulator_intake_backlog",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    app.app.stop().await;
}
