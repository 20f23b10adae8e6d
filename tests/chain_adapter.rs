//! The chain adapter against a real anvil node running the real T-REX contracts, and the real
//! engine over HTTP: each test is a story from an order to the token's state.

mod evm;
mod service;

use std::time::Duration;

use alloy::primitives::Address;
use alloy::rpc::types::BlockId;
use regulator::chain::contracts::{IIdentityRegistry, IToken};
use regulator::chain::token;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use evm::{Chain, ALICE_BALANCE, BOB_BALANCE};
use service::{order, TestApp};

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

/// Submits an order on `holder`'s balance of the chain's bond (or the whole bond); returns its
/// order id after checking it applied.
async fn submit(
    app: &TestApp,
    chain: &Chain,
    issuer: &str,
    key: &str,
    holder: Option<Address>,
    legal: (&str, &str),
    instruction: Value,
) -> String {
    let mut body = order(chain.name.as_str(), ASSET, legal.0, legal.1, instruction);
    if let Some(h) = holder {
        body["target"]["holder"] = json!(evm::holder(h));
    }
    let (status, answer) = app.submit(&app.regulator(issuer), key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["decision"]["outcome"], "APPLIED", "{answer}");
    answer["order_id"].as_str().unwrap().to_owned()
}

const ASSET: &str = "ACME-BOND-2031";
const SEC_COURT: (&str, &str) = ("court_order", "SEC v. Acme Corp., 26-cv-0142 (S.D.N.Y.)");
const DOJ_WARRANT: (&str, &str) = ("warrant", "26-MAG-0913");

/// The engine, one chain with its suite, and its adapter running, resyncing every `resync` s.
async fn story(pool: PgPool, name: &str, resync: u64) -> (TestApp, Chain, evm::RunningAdapter) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start(name, 31337, 1).await;
    app.register(name, ASSET, "US", "security").await;
    let adapter = evm::spawn_adapter(chain.adapter_config(&app, ASSET, resync)).await;
    (app, chain, adapter)
}

/// The reconciler's view of one target of `chain`.
async fn reconciliation(app: &TestApp, chain: &Chain, holder: Option<Address>) -> Value {
    let (status, answer) = app
        .get(
            &app.auditor(),
            &format!("/v1/reconciliation?chain={}", chain.name),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let want = holder.map(evm::holder);
    answer["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["asset"] == ASSET && t["holder"].as_str().map(str::to_owned) == want)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_status(app: &TestApp, chain: &Chain, holder: Option<Address>, want: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        last = reconciliation(app, chain, holder).await;
        if last["status"] == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("target {holder:?} never became {want}: {last:#}");
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

/// The issuer's own agent (the suite's owner) sends `call` on the token, out of band.
async fn out_of_band(chain: &Chain, input: Vec<u8>) {
    let nonce = token::quiesce(&chain.owner, Duration::from_secs(10))
        .await
        .unwrap();
    let hash = token::send(&chain.owner, chain.suite.token, input, nonce)
        .await
        .unwrap();
    let mined = token::receipt(&chain.owner, hash, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(mined.is_some_and(|m| m.success));
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
    assert_eq!(d["holder"], evm::holder(chain.alice));
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
