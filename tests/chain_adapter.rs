//! The chain adapter against a real anvil node running the real T-REX contracts, and the real
//! engine over HTTP: each test is a story from an order to the token's state.

mod evm;
mod service;

use std::time::Duration;

use alloy::rpc::types::BlockId;
use regulator::chain::contracts::{IIdentityRegistry, IToken};
use regulator::chain::token;
use serde_json::{json, Value};
use sqlx::PgPool;

use evm::{
    out_of_band, story, submit, wait_status, Chain, ALICE_BALANCE, BOB_BALANCE, DOJ_WARRANT,
    SEC_COURT,
};

#[tokio::test]
async fn a_t_rex_suite_deploys_and_reads_back() {
    let chain = Chain::start("anvil-deploy", 31337, 1).await;
    assert_eq!(chain.balance(chain.alice).await, ALICE_BALANCE);
    assert_eq!(chain.balance(chain.bob).await, BOB_BALANCE);
    assert!(!chain.paused().await, "the deployer unpaused the token");
    let agent = chain.agent_key.address();
    assert!(chain.latest(IToken::isAgentCall { agent }).await);
    let verified: bool = token::read(
        &chain.owner,
        chain.suite.identity_registry,
        IIdentityRegistry::isVerifiedCall {
            user: chain.doj_custody,
        },
        BlockId::latest(),
    )
    .await
    .unwrap();
    assert!(verified, "the custody wallet has a registered identity");
    assert_eq!(chain.suite.identities.len(), 3);
}

/// (1) The SEC's court freeze of Alice's balance is in force on chain (`isFrozen`), observed at a
/// final block, and the reconciler calls it converged with the transaction as evidence.
#[sqlx::test]
async fn an_sec_freeze_takes_effect_on_chain_and_converges(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-sec", 30).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "sec-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert!(chain.is_frozen(chain.alice).await);
    assert!(!chain.is_frozen(chain.bob).await, "only Alice is frozen");
    assert_eq!(converged["decided"]["frozen"], true);
    assert_eq!(converged["applied"]["observed"]["frozen"], true);
    assert_eq!(
        converged["applied"]["tx_hashes"].as_array().unwrap().len(),
        1,
        "{converged}"
    );
    assert!(converged["applied"]["block"]["number"].as_u64().unwrap() > 0);
    app.app.stop().await;
}

/// (2) Two partial freezes of Alice's balance sum in `getFrozenTokens`; releasing one lifts
/// exactly its amount.
#[sqlx::test]
async fn two_partial_freezes_sum_and_a_release_lifts_exactly_its_amount(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-partial", 30).await;
    let first = submit(
        &app,
        &chain,
        "US-SEC",
        "p-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "300"}),
    )
    .await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "p-2",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "200"}),
    )
    .await;
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert_eq!(converged["decided"]["frozen_tokens"], "500", "{converged}");
    assert_eq!(chain.frozen_tokens(chain.alice).await, 500);
    assert!(
        !chain.is_frozen(chain.alice).await,
        "a partial freeze leaves the address free"
    );

    submit(
        &app,
        &chain,
        "US-SEC",
        "p-3",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "RELEASE", "releases": first}),
    )
    .await;
    evm::eventually(
        Duration::from_secs(30),
        "the release is applied",
        || async { chain.frozen_tokens(chain.alice).await == 200 },
    )
    .await;
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert_eq!(converged["applied"]["observed"]["frozen_tokens"], "200");
    assert_eq!(
        chain.balance(chain.alice).await,
        ALICE_BALANCE,
        "nothing moved"
    );
    app.app.stop().await;
}

/// (3) A DOJ seizure warrant moves Alice's whole balance to the DOJ's custody wallet, once, and
/// leaves her address frozen.
#[sqlx::test]
async fn a_doj_seizure_moves_the_balance_to_the_doj_custody_wallet(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-doj", 30).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "f-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": "100"}),
    )
    .await;
    submit(
        &app,
        &chain,
        "US-DOJ",
        "s-1",
        Some(chain.alice),
        DOJ_WARRANT,
        json!({"kind": "SEIZE"}),
    )
    .await;
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert_eq!(converged["decided"]["seized_by"], "US-DOJ");
    assert_eq!(chain.balance(chain.alice).await, 0);
    assert_eq!(chain.balance(chain.doj_custody).await, ALICE_BALANCE);
    assert!(chain.is_frozen(chain.alice).await);
    assert_eq!(chain.frozen_tokens(chain.alice).await, 0);
    assert_eq!(
        chain.balance(chain.bob).await,
        BOB_BALANCE,
        "Bob is untouched"
    );
    app.app.stop().await;
}

/// (4) An asset-wide freeze pauses the token; its release unpauses it.
#[sqlx::test]
async fn an_asset_wide_freeze_pauses_the_token(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-pause", 30).await;
    let freeze = submit(
        &app,
        &chain,
        "US-SEC",
        "a-1",
        None,
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    let converged = wait_status(&app, &chain, None, "converged").await;
    assert_eq!(
        converged["decided"],
        json!({"kind": "asset", "paused": true})
    );
    assert!(chain.paused().await);
    submit(
        &app,
        &chain,
        "US-SEC",
        "a-2",
        None,
        SEC_COURT,
        json!({"kind": "RELEASE", "releases": freeze}),
    )
    .await;
    evm::eventually(Duration::from_secs(30), "unpaused", || async {
        !chain.paused().await
    })
    .await;
    wait_status(&app, &chain, None, "converged").await;
    app.app.stop().await;
}

/// (5) The token's agent unfreezes Alice out of band: within one resync period the reconciler
/// calls her diverged (a divergence recorded), the adapter re-applies the freeze, and she
/// converges again.
#[sqlx::test]
async fn an_out_of_band_unfreeze_diverges_and_is_re_applied(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-oob", 3).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "o-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    wait_status(&app, &chain, Some(chain.alice), "converged").await;

    out_of_band(
        &chain,
        alloy::sol_types::SolCall::abi_encode(&IToken::setAddressFrozenCall {
            user: chain.alice,
            freeze: false,
        }),
    )
    .await;
    assert!(!chain.is_frozen(chain.alice).await);
    let diverged = wait_status(&app, &chain, Some(chain.alice), "diverged").await;
    assert_eq!(diverged["divergences"], 1, "{diverged}");
    assert!(
        diverged["differences"][0]
            .as_str()
            .unwrap()
            .contains("isFrozen is false"),
        "{diverged}"
    );
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    assert!(
        chain.is_frozen(chain.alice).await,
        "the adapter froze her again"
    );
    assert_eq!(
        converged["divergences"], 1,
        "the divergence stays on record"
    );

    // Auditors see it in the log, with the block and what differed.
    let (_, page) = app.get(&app.auditor(), "/v1/audit/events?limit=1000").await;
    let divergences: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .filter(|e| e["event"]["type"] == "divergence_detected")
        .collect();
    assert_eq!(divergences.len(), 1, "{page:#}");
    let d = &divergences[0]["event"];
    assert_eq!(d["holder"], evm::hex_of(chain.alice));
    assert_eq!(d["chain"], chain.name.as_str());
    assert!(d["block_number"].as_u64().unwrap() > 0);
    assert_eq!(divergences[0]["actor"], chain.name.as_str());
    app.app.stop().await;
}

/// (6) Freezing more than Alice holds cannot be applied: the target is failed, with the
/// contract's revert reason, and nothing was sent that reverted on chain.
#[sqlx::test]
async fn a_freeze_above_the_balance_fails_with_the_revert_reason(pool: PgPool) {
    let (app, chain, _adapter) = story(pool, "anvil-fail", 30).await;
    let too_much = (ALICE_BALANCE + 1).to_string();
    submit(
        &app,
        &chain,
        "US-SEC",
        "x-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE", "amount": too_much}),
    )
    .await;
    let failed = wait_status(&app, &chain, Some(chain.alice), "failed").await;
    let reason = failed["applied"]["failure"].as_str().unwrap();
    assert!(
        reason.contains("Amount exceeds available balance"),
        "{reason}"
    );
    assert!(reason.starts_with("freezePartialTokens"), "{reason}");
    assert_eq!(chain.frozen_tokens(chain.alice).await, 0);
    // Bob's targets are unaffected by Alice's failure.
    submit(
        &app,
        &chain,
        "US-SEC",
        "x-2",
        Some(chain.bob),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    wait_status(&app, &chain, Some(chain.bob), "converged").await;
    app.app.stop().await;
}

/// A chain whose finality rule is the node's own `finalized` tag (anvil with one slot per epoch
/// finalizes two blocks behind its head): the freeze converges on an observation read at a block
/// the node calls finalized, at or after the block that mined it, on the canonical chain.
#[sqlx::test]
async fn a_freeze_converges_on_the_nodes_finalized_block(pool: PgPool) {
    use alloy::eips::BlockNumberOrTag;
    use alloy::providers::Provider;
    use regulator::chain::config::{Finality, FinalityTag};

    let app = service::TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start_with("anvil-tag", 31337, 1, &["--slots-in-an-epoch", "1"]).await;
    app.register("anvil-tag", evm::ASSET, "US", "security")
        .await;
    let mut config = chain.adapter_config(&app, evm::ASSET, 30);
    config.finality = Finality::Tag {
        tag: FinalityTag::Finalized,
    };
    let _adapter = evm::spawn_adapter(config).await;
    submit(
        &app,
        &chain,
        "US-SEC",
        "t-1",
        Some(chain.alice),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
    let converged = wait_status(&app, &chain, Some(chain.alice), "converged").await;
    let applied = &converged["applied"];
    let observed_at = applied["block"]["number"].as_u64().unwrap();
    let tx: alloy::primitives::TxHash = applied["tx_hashes"][0].as_str().unwrap().parse().unwrap();
    let mined = chain
        .owner
        .provider
        .get_transaction_receipt(tx)
        .await
        .unwrap()
        .expect("the freeze was mined")
        .block_number
        .unwrap();
    assert!(
        observed_at >= mined,
        "read at {observed_at}, mined at {mined}"
    );
    let finalized = chain
        .owner
        .provider
        .get_block_by_number(BlockNumberOrTag::Finalized)
        .await
        .unwrap()
        .unwrap();
    assert!(
        observed_at <= finalized.header.number,
        "read at a finalized block"
    );
    let canonical = chain
        .owner
        .provider
        .get_block_by_number(BlockNumberOrTag::Number(observed_at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        applied["block"]["hash"].as_str().unwrap(),
        canonical.header.hash.to_string()
    );
    assert!(chain.is_frozen(chain.alice).await);
    app.app.stop().await;
}
