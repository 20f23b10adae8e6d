//! The observations endpoint and the reconciler's rules, over real HTTP and Postgres, without a
//! chain: who may report, what is refused, and that only final observations count.

mod service;

use regulator::auth::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{order, TestApp};
use sqlx::PgPool;

const CHAIN: &str = "evm-test";
const ASSET: &str = "BOND";
const HOLDER: &str = "0x00000000000000000000000000000000000000a1";

fn observation(finality: &str, frozen: bool, version: u64) -> Value {
    json!({
        "asset": ASSET,
        "holder": HOLDER,
        "observed": {"kind": "holder", "frozen": frozen, "frozen_tokens": "0", "balance": "10"},
        "block": {"number": 12, "hash": format!("0x{}", "ab".repeat(32))},
        "finality": finality,
        "version": version,
        "tx_hashes": [format!("0x{}", "cd".repeat(32))],
    })
}

async fn status(app: &TestApp) -> Value {
    let (code, answer) = app
        .get(&app.auditor(), &format!("/v1/reconciliation?chain={CHAIN}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    answer["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["holder"] == HOLDER)
        .cloned()
        .unwrap()
}

async fn frozen_holder(pool: PgPool) -> TestApp {
    let app = TestApp::spawn_with(pool, 0).await;
    app.register(CHAIN, ASSET, "US", "security").await;
    let mut body = order(
        CHAIN,
        ASSET,
        "court_order",
        "SEC v. X",
        json!({"kind": "FREEZE"}),
    );
    body["target"]["holder"] = json!(HOLDER);
    let (code, answer) = app.submit(&app.regulator("US-SEC"), "f", &body).await;
    assert_eq!(code, StatusCode::CREATED, "{answer}");
    app
}

#[sqlx::test]
async fn only_a_final_observation_makes_a_target_converged(pool: PgPool) {
    let app = frozen_holder(pool).await;
    let chain = app.token(CHAIN, &[Role::Chain]);
    assert_eq!(status(&app).await["status"], "pending");

    let path = format!("/v1/chains/{CHAIN}/observations");
    let (code, answer) = app
        .post(
            &chain,
            &path,
            json!({"observations": [observation("unsafe", true, 1)]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert!(answer["results"][0].get("status").is_none(), "{answer}");
    assert_eq!(
        status(&app).await["status"],
        "pending",
        "an unsafe observation does not count"
    );

    let (code, answer) = app
        .post(
            &chain,
            &path,
            json!({"observations": [observation("final", true, 1)]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["status"], "converged");
    let seen = status(&app).await;
    assert_eq!(seen["status"], "converged");
    assert_eq!(seen["applied"]["block"]["number"], 12);
    assert_eq!(
        seen["applied"]["tx_hashes"][0],
        format!("0x{}", "cd".repeat(32))
    );

    let (_, summary) = app
        .get(
            &app.auditor(),
            &format!("/v1/reconciliation?chain={CHAIN}&status=converged"),
        )
        .await;
    assert_eq!(summary["chains"][0]["chain"], CHAIN);
    assert_eq!(
        summary["chains"][0]["converged"], 2,
        "the holder and the asset: {summary}"
    );
    app.app.stop().await;
}

#[sqlx::test]
async fn a_chain_reports_only_for_itself_and_bad_reports_change_nothing(pool: PgPool) {
    let app = frozen_holder(pool.clone()).await;
    let path = format!("/v1/chains/{CHAIN}/observations");
    let good = json!({"observations": [observation("final", true, 1)]});

    let other = app.token("other-chain", &[Role::Chain]);
    let (code, answer) = app.post(&other, &path, good.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{answer}");
    let (code, _) = app.post(&app.admin(), &path, good.clone()).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "reporting is the chain's own role"
    );

    let chain = app.token(CHAIN, &[Role::Chain]);
    let mut wrong_kind = observation("final", true, 1);
    wrong_kind["observed"] = json!({"kind": "asset", "paused": true});
    let mut bad_hash = observation("final", true, 1);
    bad_hash["block"]["hash"] = json!("0x1234");
    let mut extra = observation("final", true, 1);
    extra["colour"] = json!("red");
    let mut unknown_asset = observation("final", true, 1);
    unknown_asset["asset"] = json!("NOT-REGISTERED");
    for bad in [
        json!({"observations": []}),
        json!({"observations": [wrong_kind]}),
        json!({"observations": [bad_hash]}),
        json!({"observations": [extra]}),
        json!({"observations": [unknown_asset]}),
    ] {
        let (code, answer) = app.post(&chain, &path, bad.clone()).await;
        assert!(code.is_client_error(), "{bad} → {code} {answer}");
        assert!(answer["type"].is_string(), "a problem document: {answer}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_observations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let refused = sqlx::query("UPDATE chain_observations SET version = 0")
        .execute(&pool)
        .await;
    assert!(refused.is_ok(), "no rows, nothing to refuse yet");
    let (code, _) = app.post(&chain, &path, good).await;
    assert_eq!(code, StatusCode::OK);
    let refused = sqlx::query("UPDATE chain_observations SET version = 0")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "observations are append-only");
    app.app.stop().await;
}
