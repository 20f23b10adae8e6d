//! A chain adapter added to a chain that already has decisions starts from the snapshot at
//! the engine's last signed checkpoint, verified with the pinned checkpoint key, then reads
//! the feed after it: against a real anvil node running T-REX and the real engine over HTTP.

mod evm;
mod service;

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use regulator::audit::signer::public_key_from_pem;
use regulator::chain::adapter::{Adapter, Durable};
use regulator::domain::HolderAddress;
use serde_json::json;
use sqlx::PgPool;

use evm::{
    addr, eventually, hex_of, sent_by, spawn_adapter, submit, wait_status, Chain, ASSET, SEC_COURT,
};
use service::TestApp;

async fn checkpoint_key(app: &TestApp) -> VerifyingKey {
    let (status, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    assert_eq!(status, 200, "{key}");
    public_key_from_pem(key["pem"].as_str().unwrap()).unwrap()
}

/// Signs a checkpoint now; answers its tree size.
async fn sign_checkpoint(app: &TestApp) -> u64 {
    let (status, cp) = app
        .post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await;
    assert!(status.is_success(), "{cp}");
    cp["tree_size"].as_u64().unwrap()
}

fn holders(durable: &Durable) -> Vec<HolderAddress> {
    durable.targets.values().flatten().cloned().collect()
}

/// The SEC froze Alice, froze part of Bob's balance, and froze then released Carol before the
/// engine signed a checkpoint; after it, Dave is frozen. A new adapter, pinned to the engine's
/// checkpoint key, starts from the verified snapshot: its cursor is the checkpoint, it knows
/// Alice and Bob from the snapshot and Dave from the feed's tail, and it puts every decided
/// state in force. A second adapter that reads the whole feed ends in the same place: it finds
/// nothing to send.
#[sqlx::test]
async fn a_new_adapter_starts_from_a_verified_snapshot_and_ends_where_the_whole_feed_ends(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-sync", 31337, 1).await;
    app.register(chain.name.as_str(), ASSET, "US", "security")
        .await;
    let (carol, dave) = (addr(7), addr(8));
    submit(
        &app,
        &chain,
        "US-SEC",
        "s-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "s-2",
        Some(chain.bob),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "200"}),
    )
    .await;
    let carols = submit(
        &app,
        &chain,
        "US-SEC",
        "s-3",
        Some(carol),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "s-4",
        Some(carol),
        SEC_COURT,
        json!({"kind": "RELEASE", "releases": carols}),
    )
    .await;
    let at = sign_checkpoint(&app).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "s-5",
        Some(dave),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;

    let mut config = chain.adapter_config(&app, ASSET, 30);
    config.engine.checkpoint_key = Some(checkpoint_key(&app).await);
    let adapter = spawn_adapter(config.clone()).await;
    for who in [chain.alice, chain.bob, dave] {
        wait_status(&app, &chain, Some(who), "converged").await;
    }
    assert!(chain.is_frozen(chain.alice).await);
    assert_eq!(chain.frozen_tokens(chain.bob).await, 200);
    assert!(chain.is_frozen(dave).await);
    assert!(!chain.is_frozen(carol).await);
    let synced = Durable::load(&config.state_file).unwrap();
    assert_eq!(synced.synced_from, Some(at), "{synced:?}");
    assert!(
        synced.cursor > at,
        "the tail after the checkpoint was read: {synced:?}"
    );
    let mut known = holders(&synced);
    known.sort();
    let mut want: Vec<HolderAddress> = [chain.alice, chain.bob, dave]
        .into_iter()
        .map(|a| HolderAddress::parse(hex_of(a)).unwrap())
        .collect();
    want.sort();
    assert_eq!(
        known, want,
        "Carol's holds were all lifted before the checkpoint: the snapshot does not name her"
    );
    drop(adapter);

    // The same chain followed from the whole feed, by a fresh adapter with no key pinned.
    let agent = chain.agent_key.address();
    let sent = sent_by(&chain, agent).await;
    let whole = chain.adapter_config(&app, ASSET, 30);
    assert!(whole.engine.checkpoint_key.is_none());
    let _adapter = spawn_adapter(whole.clone()).await;
    eventually(
        Duration::from_secs(30),
        "the whole-feed adapter reads to the same cursor",
        || async { Durable::load(&whole.state_file).is_ok_and(|d| d.cursor >= synced.cursor) },
    )
    .await;
    let read = Durable::load(&whole.state_file).unwrap();
    assert_eq!(read.synced_from, None);
    let mut all = holders(&read);
    all.sort();
    let carol_hex = HolderAddress::parse(hex_of(carol)).unwrap();
    assert!(all.contains(&carol_hex), "{all:?}");
    all.retain(|h| *h != carol_hex);
    assert_eq!(all, want);
    // Level-triggered, it re-read every target it knows, Carol too, and found the chain as
    // decided.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sent_by(&chain, agent).await,
        sent,
        "the chain was already in the decided state: nothing to send"
    );
    for who in [chain.alice, chain.bob, dave] {
        wait_status(&app, &chain, Some(who), "converged").await;
    }
    app.app.stop().await;
}

/// With a key pinned: no checkpoint yet means the whole feed (nothing written until something
/// is applied); a snapshot that does not verify with the pinned key stops the start and
/// writes no state file; once it verifies, the state file says which checkpoint it came from.
#[sqlx::test]
async fn a_snapshot_that_does_not_verify_is_refused_and_none_means_the_whole_feed(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-sync-refused", 31337, 1).await;
    app.register(chain.name.as_str(), ASSET, "US", "security")
        .await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "r-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    let key = checkpoint_key(&app).await;

    let mut config = chain.adapter_config(&app, ASSET, 30);
    config.engine.checkpoint_key = Some(key);
    let opened = Adapter::open(config.clone()).await;
    assert!(opened.is_ok(), "no checkpoint yet: the whole feed");
    drop(opened);
    assert!(
        !config.state_file.exists(),
        "nothing written before anything is applied"
    );

    let at = sign_checkpoint(&app).await;
    let mut wrong = config.clone();
    wrong.engine.checkpoint_key =
        Some(ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key());
    let refused = Adapter::open(wrong)
        .await
        .err()
        .expect("a foreign key is refused");
    let refused = refused.to_string();
    assert!(refused.contains("does not verify"), "{refused}");
    assert!(refused.contains("checkpoint_key_file"), "{refused}");
    assert!(
        !config.state_file.exists(),
        "a refused snapshot writes no state file"
    );

    drop(
        Adapter::open(config.clone())
            .await
            .expect("the pinned key verifies"),
    );
    let synced = Durable::load(&config.state_file).unwrap();
    assert_eq!(synced.synced_from, Some(at));
    assert_eq!(synced.cursor, at);
    assert_eq!(
        holders(&synced),
        vec![HolderAddress::parse(hex_of(chain.alice)).unwrap()]
    );
    app.app.stop().await;
}
