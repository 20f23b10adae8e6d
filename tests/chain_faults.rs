//! The adapter under faults, on real anvil nodes: a reorg that removes a freeze, a node that
//! goes down while decisions keep coming, an adapter killed with SIGKILL mid-stream.

mod evm;
mod service;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::providers::Provider;
use regulator::chain::config::Finality;
use regulator::chain::token::{self, Action, Fate};
use serde_json::json;
use sqlx::PgPool;

use evm::{
    sent_by, spawn_adapter, submit, wait_status, write_config_file, Chain, Relay, ALICE_BALANCE,
    ASSET, BOB_BALANCE, DOJ_WARRANT, SEC_COURT,
};
use service::TestApp;

/// (7) A block holding the freeze is reorged out before it is final: the engine never calls
/// the target converged on what it saw before finality; the adapter, reading the final block,
/// finds the freeze missing, sends it again, and the target converges.
#[sqlx::test]
async fn a_reorged_freeze_is_sent_again_and_converges(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-reorg", 31337, 1).await;
    app.register("anvil-reorg", ASSET, "US", "security").await;
    let mut config = chain.adapter_config(&app, ASSET, 30);
    // Enough confirmations that the reorg lands before the freeze is final.
    config.finality = Finality::Confirmations { confirmations: 4 };
    let _adapter = spawn_adapter(config).await;

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
    evm::eventually(Duration::from_secs(20), "the freeze is mined", || async {
        chain.is_frozen(chain.alice).await
    })
    .await;
    evm::reorg(&chain, 3).await;
    assert!(
        !chain.is_frozen(chain.alice).await,
        "the reorg took the freeze out of the chain"
    );
    let seen = evm::reconciliation(&app, &chain, Some(chain.alice)).await;
    assert_ne!(
        seen["status"], "converged",
        "nothing final showed the freeze: {seen}"
    );

    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert!(
        chain.is_frozen(chain.alice).await,
        "the adapter sent it again"
    );
    assert_eq!(converged["applied"]["observed"]["frozen"], true);
    app.app.stop().await;
}

/// (8) Two chains; one node is unreachable while decisions keep coming. The other chain keeps
/// converging; when the node is back, its adapter catches up from its cursor, in order, with
/// nothing lost.
#[sqlx::test]
async fn chains_fail_independently_and_a_node_that_returns_catches_up(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let healthy = Chain::start("anvil-up", 31337, 1).await;
    let flaky = Chain::start("anvil-down", 31338, 1).await;
    app.register("anvil-up", ASSET, "US", "security").await;
    app.register("anvil-down", ASSET, "US", "security").await;
    let relay = Relay::start(flaky.anvil.port).await;
    let _a = spawn_adapter(healthy.adapter_config(&app, ASSET, 30)).await;
    let mut flaky_config = flaky.adapter_config(&app, ASSET, 30);
    flaky_config.rpc_url = relay.url();
    let _b = spawn_adapter(flaky_config).await;

    relay.set_up(false);
    // Order matters on the flaky chain: a freeze of 100, a second of 50, then the first released.
    let first = submit(
        &app,
        &flaky,
        "US-SEC",
        "d-1",
        Some(flaky.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "100"}),
    )
    .await;
    submit(
        &app,
        &flaky,
        "US-SEC",
        "d-2",
        Some(flaky.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "50"}),
    )
    .await;
    submit(
        &app,
        &healthy,
        "US-SEC",
        "u-1",
        Some(healthy.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    submit(
        &app,
        &flaky,
        "US-SEC",
        "d-3",
        Some(flaky.alice),
        SEC_COURT,
        json!({"kind": "RELEASE", "releases": first}),
    )
    .await;

    wait_status(&app, &healthy, Some(healthy.alice), "converged").await;
    assert!(healthy.is_frozen(healthy.alice).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = evm::reconciliation(&app, &flaky, Some(flaky.alice)).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(
        flaky.frozen_tokens(flaky.alice).await,
        0,
        "nothing reached the node"
    );

    relay.set_up(true);
    let converged = wait_status(&app, &flaky, Some(flaky.alice), "converged").await;
    assert_eq!(flaky.frozen_tokens(flaky.alice).await, 50);
    assert_eq!(converged["decided"]["frozen_tokens"], "50");
    app.app.stop().await;
}

fn spawn_binary(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["adapter", "evm", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// (9) The adapter process is killed with SIGKILL in the middle of a stream of partial freezes
/// and a seizure; restarted, it sends nothing already in effect: the frozen amount is exactly
/// the sum, the seized balance moved once, and no transaction was doubled.
#[sqlx::test]
async fn a_killed_adapter_restarts_without_doubling_anything(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-kill", 31337, 1).await;
    app.register("anvil-kill", ASSET, "US", "security").await;
    let config_file = write_config_file(&chain.adapter_config(&app, ASSET, 30));
    let mut adapter = spawn_binary(&config_file);

    const FREEZES: u32 = 10;
    let mut first_seen = false;
    for i in 0..FREEZES {
        submit(
            &app,
            &chain,
            "US-SEC",
            &format!("k-{i}"),
            Some(chain.alice),
            SEC_COURT,
            json!({"kind": "FREEZE", "amount": "10"}),
        )
        .await;
        if i == 4 {
            submit(
                &app,
                &chain,
                "US-DOJ",
                "k-seize",
                Some(chain.bob),
                DOJ_WARRANT,
                json!({"kind": "SEIZE"}),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !first_seen && chain.frozen_tokens(chain.alice).await > 0 {
            first_seen = true;
            adapter.kill().unwrap();
            adapter.wait().unwrap();
            adapter = spawn_binary(&config_file);
        }
    }
    assert!(first_seen, "the adapter was killed mid-stream");

    wait_status(&app, &chain, Some(chain.alice), "converged").await;
    wait_status(&app, &chain, Some(chain.bob), "converged").await;
    assert_eq!(
        chain.frozen_tokens(chain.alice).await,
        u128::from(FREEZES) * 10
    );
    assert_eq!(chain.balance(chain.alice).await, ALICE_BALANCE);
    assert_eq!(chain.balance(chain.bob).await, 0);
    assert_eq!(
        chain.balance(chain.doj_custody).await,
        BOB_BALANCE,
        "moved once"
    );
    assert!(chain.is_frozen(chain.bob).await);
    // At most one transaction per decision (and the seizure's freeze): nothing sent twice.
    let sent = sent_by(&chain, chain.agent_key.address()).await;
    assert!(sent <= u64::from(FREEZES) + 2, "{sent} transactions");
    adapter.kill().unwrap();
    adapter.wait().unwrap();
    app.app.stop().await;
}

/// A freeze reorged out of the chain before anyone read its receipt leaves neither a receipt
/// nor a place in the node's pool. The adapter learns at once that it was dropped, instead of
/// waiting out the receipt timeout while every later decision of the chain waits behind it.
#[tokio::test]
async fn a_transaction_reorged_out_before_its_receipt_is_read_is_known_dropped() {
    let chain = Chain::start("anvil-drop", 31337, 1).await;
    let nonce = token::quiesce(&chain.owner, Duration::from_secs(10))
        .await
        .unwrap();
    let hash = token::send(
        &chain.owner,
        chain.suite.token,
        Action::SetFrozen(true).calldata(chain.alice),
        nonce,
    )
    .await
    .unwrap();
    evm::eventually(Duration::from_secs(20), "the freeze is mined", || async {
        chain.is_frozen(chain.alice).await
    })
    .await;
    evm::reorg(&chain, 3).await;
    assert!(!chain.is_frozen(chain.alice).await, "the reorg took it out");

    let fate = token::receipt(&chain.owner, hash, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(fate, Fate::Dropped), "{fate:?}");
}

/// The adapter's RPC endpoint starts answering from a node that is far behind (a lagging
/// replica behind a load balancer). That is a health fault, not a reorg: the turns fail and are
/// retried, nothing is re-applied or sent, and no reorg is counted; when the
/// endpoint reaches the real node again, the adapter goes on where it was.
#[sqlx::test]
async fn a_node_that_is_behind_is_a_health_fault_not_a_reorg(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-behind", 31337, 1).await;
    app.register("anvil-behind", ASSET, "US", "security").await;
    let relay = Relay::start(chain.anvil.port).await;
    // Resync every 2 s, so the adapter keeps looking at the final block while it is behind.
    let mut config = chain.adapter_config(&app, ASSET, 2);
    config.rpc_url = relay.url();
    let _adapter = spawn_adapter(config).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "b-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    wait_status(&app, &chain, Some(chain.alice), "converged").await;
    let sent = sent_by(&chain, chain.agent_key.address()).await;

    // Same chain id, a handful of blocks: far behind the adapter's last final block.
    let behind = regulator::chain::anvil::Anvil::start(31337, None)
        .await
        .unwrap();
    relay.point(behind.port);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("adapter_turn_failures_total{chain=\"anvil-behind\"}"),
        "the behind node fails the adapter's turns: {metrics}"
    );
    assert!(
        !metrics.contains("adapter_reorgs_total{chain=\"anvil-behind\"}"),
        "it is not taken for a reorg"
    );
    assert_eq!(
        evm::reconciliation(&app, &chain, Some(chain.alice)).await["status"],
        "converged",
        "what was final stays so"
    );

    relay.point(chain.anvil.port);
    submit(
        &app,
        &chain,
        "US-SEC",
        "b-2",
        Some(chain.bob),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    wait_status(&app, &chain, Some(chain.bob), "converged").await;
    assert_eq!(
        sent_by(&chain, chain.agent_key.address()).await,
        sent + 1,
        "only the new freeze was sent"
    );
    app.app.stop().await;
}

/// The agent's first transaction in the node's pool, as the node shows it.
async fn pooled(chain: &Chain) -> Option<serde_json::Value> {
    let pool: serde_json::Value = chain
        .owner
        .provider
        .raw_request("txpool_content".into(), ())
        .await
        .unwrap();
    let agent = format!("{:#x}", chain.agent_key.address());
    let by_sender = pool["pending"].as_object()?;
    let (_, txs) = by_sender
        .iter()
        .find(|(who, _)| who.to_lowercase() == agent)?;
    txs.as_object()?.values().next().cloned()
}

fn fee_of(tx: &serde_json::Value) -> u128 {
    let hex = tx["maxFeePerGas"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x");
    u128::from_str_radix(hex, 16).unwrap()
}

async fn rpc(chain: &Chain, method: &'static str, params: serde_json::Value) {
    let _: serde_json::Value = chain
        .owner
        .provider
        .raw_request(method.into(), params)
        .await
        .unwrap();
}

/// A freeze that stays in the node's pool (no block is mined) is replaced, once it has waited
/// `stuck_after_seconds`, by a copy with the same nonce and a higher fee. When blocks come again
/// the replacement is the one mined, the target converges, and the freeze took one transaction.
///
/// (A transaction priced out of a block by a rising base fee is evicted by anvil instead of
/// staying in its pool: the adapter sees it forgotten, the node refuses the same bytes again,
/// and the target is planned again at current fees; the nonce is the same, so nothing doubles.)
#[sqlx::test]
async fn a_stuck_transaction_is_replaced_with_a_higher_fee(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-fees", 31337, 1).await;
    app.register("anvil-fees", ASSET, "US", "security").await;
    // No blocks until this test says so.
    rpc(&chain, "evm_setIntervalMining", json!([0])).await;
    rpc(&chain, "evm_setAutomine", json!([false])).await;
    let mut config = chain.adapter_config(&app, ASSET, 30);
    config.stuck_after_seconds = 2;
    let _adapter = spawn_adapter(config).await;
    let before = sent_by(&chain, chain.agent_key.address()).await;

    submit(
        &app,
        &chain,
        "US-SEC",
        "f-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    evm::eventually(
        Duration::from_secs(20),
        "the freeze is in the pool",
        || async { pooled(&chain).await.is_some() },
    )
    .await;
    let first = pooled(&chain).await.unwrap();
    let offered = fee_of(&first);
    evm::eventually(Duration::from_secs(30), "a replacement", || async {
        app.metrics()
            .await
            .contains("adapter_fee_bumps_total{chain=\"anvil-fees\"}")
    })
    .await;
    rpc(&chain, "evm_setIntervalMining", json!([1])).await;

    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert!(chain.is_frozen(chain.alice).await);
    let hash = converged["applied"]["tx_hashes"][0].clone();
    assert_ne!(hash, first["hash"], "the first copy is not the one mined");
    let mined: serde_json::Value = chain
        .owner
        .provider
        .raw_request("eth_getTransactionByHash".into(), json!([hash]))
        .await
        .unwrap();
    assert_eq!(mined["nonce"], first["nonce"], "same nonce");
    assert!(fee_of(&mined) > offered, "a higher fee");
    assert_eq!(
        sent_by(&chain, chain.agent_key.address()).await,
        before + 1,
        "one transaction for the freeze"
    );
    app.app.stop().await;
}

/// A freeze priced out of the next block (the base fee jumps above what it offers) is evicted
/// from anvil's pool. The adapter finds it forgotten, the node refuses the same bytes again, and
/// the target is planned again from a fresh read at the current fees: the same nonce, so the
/// freeze still takes one transaction.
#[sqlx::test]
async fn a_transaction_priced_out_of_the_pool_is_planned_again(pool: PgPool) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start("anvil-evict", 31337, 1).await;
    app.register("anvil-evict", ASSET, "US", "security").await;
    rpc(&chain, "evm_setIntervalMining", json!([0])).await;
    rpc(&chain, "evm_setAutomine", json!([false])).await;
    let _adapter = spawn_adapter(chain.adapter_config(&app, ASSET, 30)).await;
    let before = sent_by(&chain, chain.agent_key.address()).await;

    submit(
        &app,
        &chain,
        "US-SEC",
        "e-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    evm::eventually(
        Duration::from_secs(20),
        "the freeze is in the pool",
        || async { pooled(&chain).await.is_some() },
    )
    .await;
    let first = pooled(&chain).await.unwrap();
    let offered = fee_of(&first);
    rpc(
        &chain,
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("{:#x}", offered * 10)]),
    )
    .await;
    rpc(&chain, "evm_mine", json!([])).await;
    assert!(
        !chain.is_frozen(chain.alice).await,
        "priced out of the block"
    );
    evm::eventually(
        Duration::from_secs(20),
        "a new plan in the pool",
        || async {
            pooled(&chain)
                .await
                .is_some_and(|tx| tx["hash"] != first["hash"])
        },
    )
    .await;
    rpc(&chain, "evm_setIntervalMining", json!([1])).await;

    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert!(chain.is_frozen(chain.alice).await);
    assert_ne!(converged["applied"]["tx_hashes"][0], first["hash"]);
    assert_eq!(
        sent_by(&chain, chain.agent_key.address()).await,
        before + 1,
        "one transaction for the freeze"
    );
    assert!(app
        .metrics()
        .await
        .contains("adapter_dropped_transactions_total{chain=\"anvil-evict\"}"));
    app.app.stop().await;
}
