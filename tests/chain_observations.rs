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

/// A chain whose operator gives it one second to apply is `lagging` once that second passes,
/// while another chain on the default 30 s is still `pending`; who set it is kept with it.
#[sqlx::test]
async fn each_chain_has_its_own_apply_deadline(pool: PgPool) {
    let app = frozen_holder(pool).await;
    let path = format!("/v1/chains/{CHAIN}");
    let (code, answer) = app.get(&app.auditor(), &path).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["apply_deadline_secs"], 30, "{answer}");
    assert_eq!(answer["default"], true, "{answer}");

    let (code, answer) = app
        .put(&app.auditor(), &path, json!({"apply_deadline_secs": 1}))
        .await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "only an admin sets it: {answer}"
    );
    for bad in [
        json!({"apply_deadline_secs": 0}),
        json!({"apply_deadline_secs": 1, "x": 1}),
    ] {
        let (code, answer) = app.put(&app.admin(), &path, bad).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    }
    assert_eq!(status(&app).await["status"], "pending");

    let (code, answer) = app
        .put(&app.admin(), &path, json!({"apply_deadline_secs": 1}))
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["default"], false, "{answer}");
    assert!(answer["updated_by"].is_string(), "{answer}");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(status(&app).await["status"], "lagging");

    // Another chain, same decision, default deadline: still pending.
    app.register("evm-other", ASSET, "US", "security").await;
    let mut body = order(
        "evm-other",
        ASSET,
        "court_order",
        "SEC v. X",
        json!({"kind": "FREEZE"}),
    );
    body["target"]["holder"] = json!(HOLDER);
    let (code, answer) = app.submit(&app.regulator("US-SEC"), "o", &body).await;
    assert_eq!(code, StatusCode::CREATED, "{answer}");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (_, other) = app
        .get(&app.auditor(), "/v1/reconciliation?chain=evm-other")
        .await;
    assert_eq!(other["chains"][0]["pending"], 1, "{other}");
    assert_eq!(other["chains"][0]["lagging"], 0, "{other}");
    app.app.stop().await;
}

/// A target's page says whether the chain shows it: the reconciler's status and the final
/// observation behind it, the same as the target's row in the reconciliation.
#[sqlx::test]
async fn a_targets_page_carries_its_chain_evidence(pool: PgPool) {
    let app = frozen_holder(pool).await;
    let target = format!("/v1/targets/{CHAIN}/{ASSET}?holder={HOLDER}");
    let (code, page) = app.get(&app.auditor(), &target).await;
    assert_eq!(code, StatusCode::OK, "{page}");
    assert_eq!(page["applied"]["status"], "pending", "{page}");
    assert!(page["applied"].get("observation").is_none(), "{page}");
    assert_eq!(page["applied"]["decided"]["frozen"], true, "{page}");

    let chain = app.token(CHAIN, &[Role::Chain]);
    let (code, answer) = app
        .post(
            &chain,
            &format!("/v1/chains/{CHAIN}/observations"),
            json!({"observations": [observation("final", true, 1)]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (_, page) = app.get(&chain, &target).await;
    let applied = &page["applied"];
    assert_eq!(applied["status"], "converged", "{page}");
    assert_eq!(applied["observation"]["block"]["number"], 12, "{page}");
    assert_eq!(applied["observation"]["observed"]["frozen"], true, "{page}");
    assert_eq!(
        applied["observation"]["tx_hashes"][0],
        format!("0x{}", "cd".repeat(32))
    );
    assert_eq!(applied["status"], status(&app).await["status"]);

    // The asset as a whole was never observed and holds nothing asset-wide: converged.
    let (_, asset) = app
        .get(&app.auditor(), &format!("/v1/targets/{CHAIN}/{ASSET}"))
        .await;
    assert_eq!(asset["applied"]["status"], "converged", "{asset}");
    assert_eq!(asset["applied"]["decided"]["paused"], false, "{asset}");
    app.app.stop().await;
}

/// An agent keeps unfreezing the holder out of band: each time the chain shows it, a divergence
/// opens (recorded in the ledger); the third makes the target `escalated`, its own status in the
/// summary and the metrics, for a human to look at instead of being fought forever.
#[sqlx::test]
async fn a_target_that_keeps_diverging_is_escalated(pool: PgPool) {
    let app = frozen_holder(pool).await;
    let chain = app.token(CHAIN, &[Role::Chain]);
    let path = format!("/v1/chains/{CHAIN}/observations");
    let mut statuses = Vec::new();
    for frozen in [false, true, false, true, false] {
        let (code, answer) = app
            .post(
                &chain,
                &path,
                json!({"observations": [observation("final", frozen, 1)]}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{answer}");
        statuses.push(answer["results"][0]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        statuses,
        [
            "diverged",
            "converged",
            "diverged",
            "converged",
            "escalated"
        ]
    );
    let seen = status(&app).await;
    assert_eq!(seen["status"], "escalated");
    assert_eq!(seen["divergences"], 3);

    let (_, summary) = app
        .get(
            &app.auditor(),
            &format!("/v1/reconciliation?chain={CHAIN}&status=escalated"),
        )
        .await;
    assert_eq!(summary["chains"][0]["escalated"], 1, "{summary}");
    assert_eq!(summary["targets"].as_array().unwrap().len(), 1, "{summary}");

    let (_, events) = app.get(&app.auditor(), "/v1/audit/events?limit=100").await;
    let divergences = events["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{events}"))
        .iter()
        .filter(|e| e.to_string().contains("divergence_detected"))
        .count();
    assert_eq!(
        divergences, 3,
        "each divergence is a ledger event: {events}"
    );

    let metrics = app.metrics().await;
    for needle in [
        format!("regulator_reconciliation_targets{{chain=\"{CHAIN}\",status=\"escalated\"}} 1"),
        format!("regulator_reconciliation_divergences_total{{chain=\"{CHAIN}\"}} 3"),
    ] {
        assert!(metrics.contains(&needle), "{needle} in\n{metrics}");
    }
    app.app.stop().await;
}
