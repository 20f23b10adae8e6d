//! State sync: a reader that starts from a verified snapshot at a checkpoint and then reads the
//! feed after it ends in the same state as one that read the whole feed.

mod service;

use regulator::api::state::SnapshotChunk;
use regulator::audit::signer::public_key_from_pem;
use regulator::domain::ledger::DecisionRecord;
use regulator::domain::ChainId;
use regulator::state_sync::{sync, SyncError, Synced};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use service::{order, TestApp, BOND};

async fn whole_feed(app: &TestApp, chain: &str) -> Vec<DecisionRecord> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let (status, page) = app
            .get(
                &app.admin(),
                &format!("/v1/decisions?chain={chain}&after={after}&limit=1000"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let records: Vec<DecisionRecord> =
            serde_json::from_value(page["decisions"].clone()).unwrap();
        if records.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().unwrap();
        out.extend(records);
    }
}

#[sqlx::test]
async fn a_snapshot_and_the_tail_give_the_whole_feeds_state(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.register(BOND.0, "0xSECOND", "US", "security").await;
    app.register("polygon", "0xOTHER", "US", "security").await;
    app.freeze_holders(0..6).await;
    let mut asset_wide = order(
        BOND.0,
        "0xSECOND",
        "court_order",
        "x",
        json!({"kind": "FREEZE"}),
    );
    let (status, placed) = app
        .submit(&app.regulator("US-SEC"), "wide", &asset_wide)
        .await;
    assert_eq!(status, 201, "{placed}");
    let mut other = order(
        "polygon",
        "0xOTHER",
        "court_order",
        "x",
        json!({"kind": "FREEZE"}),
    );
    other["target"]["holder"] = json!("0xP1");
    assert_eq!(
        app.submit(&app.regulator("US-SEC"), "p1", &other).await.0,
        201
    );
    let (status, cp) = app
        .post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cp}");

    // After the checkpoint: more freezes, and the asset-wide freeze released.
    app.freeze_holders(6..9).await;
    asset_wide = order(
        BOND.0,
        "0xSECOND",
        "court_order",
        "x",
        json!({"kind": "RELEASE", "releases": placed["order_id"]}),
    );
    let (status, released) = app
        .submit(&app.regulator("US-SEC"), "release", &asset_wide)
        .await;
    assert_eq!(status, 201, "{released}");
    assert_eq!(released["decision"]["outcome"], "APPLIED", "{released}");

    let (_, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    let key = public_key_from_pem(key["pem"].as_str().unwrap()).unwrap();
    let chain = ChainId::parse("ethereum").unwrap();
    let synced = sync(&app.client, &app.url(""), &app.admin(), &chain, &key, None)
        .await
        .unwrap();

    let mut replayed = Synced {
        chain: Some(chain.clone()),
        ..Synced::default()
    };
    replayed.apply(&whole_feed(&app, "ethereum").await);
    assert_eq!(synced.states, replayed.states);
    assert!(synced.seq >= replayed.seq);
    // It is the engine's state too, and the tail mattered.
    let stored = regulator::storage::all_states(&pool).await.unwrap();
    let ethereum: std::collections::BTreeMap<_, _> = stored
        .into_iter()
        .filter(|(k, _)| k.chain == chain)
        .collect();
    assert_eq!(synced.states, ethereum);
    let second = synced
        .states
        .iter()
        .find(|(k, _)| k.asset.as_str() == "0xSECOND")
        .unwrap()
        .1;
    assert_eq!(
        second.holds().count(),
        0,
        "the release after the checkpoint"
    );
    assert_eq!(second.version(), 2);

    // From the snapshot alone, the state at the checkpoint: the asset-wide freeze in force.
    let (_, chunk) = app
        .get(
            &app.admin(),
            &format!("/v1/snapshots?chain=ethereum&tree_size={}", cp["tree_size"]),
        )
        .await;
    let chunk: SnapshotChunk = serde_json::from_value(chunk).unwrap();
    assert_eq!(chunk.chunks, 1);
    let at_checkpoint = Synced::from_chunks(std::slice::from_ref(&chunk), &key).unwrap();
    assert_eq!(at_checkpoint.seq, cp["tree_size"].as_u64().unwrap());
    let bond = at_checkpoint
        .states
        .iter()
        .find(|(k, _)| k.asset.as_str() == "0xSECOND")
        .unwrap()
        .1;
    assert_eq!(bond.holds().count(), 1);

    // A chunk altered in transit is refused, and so is another key.
    let mut forged: Value = serde_json::to_value(&chunk).unwrap();
    forged["leaves"][0]["value_hash"] = json!("11".repeat(32));
    let forged: SnapshotChunk = serde_json::from_value(forged).unwrap();
    assert!(matches!(
        Synced::from_chunks(&[forged], &key),
        Err(SyncError::Invalid(_))
    ));
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    assert!(matches!(
        Synced::from_chunks(std::slice::from_ref(&chunk), &other_key),
        Err(SyncError::Invalid(_))
    ));
}
