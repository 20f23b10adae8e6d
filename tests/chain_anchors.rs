//! Checkpoints anchored on chain (issue 12, point 8), on two real anvil nodes with the real
//! engine over HTTP: each chain's adapter anchors the engine's signed checkpoints in the
//! project's CheckpointAnchor contract; a restarted adapter that lost its state file sends no
//! anchor twice; an insider who rewrites a suffix of the log, drops the stored tree and the
//! checkpoints, and has the engine re-sign passes plain `audit verify` but not
//! `audit verify --anchors`, which names the first contradicted checkpoint on each chain; and
//! an adapter refuses to anchor the rewritten history.

mod evm;
mod insider;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::Address;
use alloy::providers::Provider;
use alloy::rpc::types::{BlockId, Filter};
use alloy::sol_types::SolEvent;
use regulator::auth::Role;
use regulator::chain::anchor;
use regulator::chain::contracts::ICheckpointAnchor;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use evm::{eventually, sent_by, spawn_adapter, submit, wait_status, Chain, ASSET, SEC_COURT};
use insider::{drop_evidence, rewrite_suffix, verify_cli};
use service::{config, TestApp};

/// A chain with its anchor contract, whose publisher is the chain's adapter key.
struct Anchored {
    chain: Chain,
    contract: Address,
}

impl Anchored {
    async fn start(name: &str, chain_id: u64) -> Anchored {
        let chain = Chain::start(name, chain_id, 1).await;
        let contract = anchor::deploy(&chain.owner, chain.agent_key.address())
            .await
            .expect("the anchor deploys");
        Anchored { chain, contract }
    }

    async fn adapter(&self, app: &TestApp) -> evm::RunningAdapter {
        let mut config = self.chain.adapter_config(app, ASSET, 30);
        config.anchor = Some(self.contract);
        spawn_adapter(config).await
    }

    async fn latest(&self) -> u64 {
        anchor::latest(&self.chain.owner.provider, self.contract, BlockId::latest())
            .await
            .unwrap()
            .map_or(0, |a| a.tree_size)
    }

    async fn wait_anchored(&self, size: u64) {
        eventually(
            Duration::from_secs(30),
            &format!("{} anchors tree size {size}", self.chain.name),
            || async { self.latest().await == size },
        )
        .await;
    }

    /// The tree sizes of every `Anchored` event the contract emitted, in order.
    async fn events(&self) -> Vec<u64> {
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(ICheckpointAnchor::Anchored::SIGNATURE_HASH)
            .from_block(0);
        self.chain
            .owner
            .provider
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .map(|log| {
                log.log_decode::<ICheckpointAnchor::Anchored>()
                    .unwrap()
                    .inner
                    .data
                    .treeSize
            })
            .collect()
    }

    fn source(&self) -> String {
        format!(
            "[[chains]]\nname = \"{}\"\nrpc_url = \"{}\"\ncontract = \"{:#x}\"\n",
            self.chain.name,
            self.chain.anvil.url(),
            self.contract
        )
    }
}

async fn publish(app: &TestApp) -> Value {
    let (status, cp) = app
        .post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cp}");
    cp
}

/// An SEC court freeze of `holder` on `chain` (one more hold on an already frozen holder sends
/// nothing on chain, so decisions are cheap).
async fn freeze(app: &TestApp, chain: &Chain, key: &str, holder: Address) {
    submit(
        app,
        chain,
        "US-SEC",
        key,
        Some(holder),
        SEC_COURT,
        json!({"kind": "FREEZE"}),
    )
    .await;
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("anchors-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[sqlx::test]
async fn anchors_on_two_chains_contradict_a_re_signed_rewrite(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let a = Anchored::start("anvil-a", 31337).await;
    let b = Anchored::start("anvil-b", 31338).await;
    app.register("anvil-a", ASSET, "US", "security").await;
    app.register("anvil-b", ASSET, "US", "security").await;

    // A chain's token reads checkpoints (to anchor them) but cannot publish one.
    let chain_token = app.token("anvil-a", &[Role::Chain]);
    let (status, _) = app
        .post(&chain_token, "/v1/audit/checkpoints", json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let adapter_a = a.adapter(&app).await;
    let adapter_b = b.adapter(&app).await;

    // Seq 1 is the policy activation; each round adds one decision per chain, then a
    // checkpoint, which both chains anchor: 3, 5, 7.
    let mut roots = Vec::new();
    for round in 0..3 {
        freeze(&app, &a.chain, &format!("a-{round}"), a.chain.alice).await;
        freeze(&app, &b.chain, &format!("b-{round}"), b.chain.bob).await;
        let cp = publish(&app).await;
        let size = cp["tree_size"].as_u64().unwrap();
        assert_eq!(size, 3 + 2 * round);
        a.wait_anchored(size).await;
        b.wait_anchored(size).await;
        roots.push(cp["root"].as_str().unwrap().to_owned());
    }
    wait_status(&app, &a.chain, Some(a.chain.alice), "converged").await;
    assert!(a.chain.is_frozen(a.chain.alice).await);
    assert!(b.chain.is_frozen(b.chain.bob).await);
    let (status, latest) = app.get(&chain_token, "/v1/audit/checkpoints/latest").await;
    assert_eq!(status, StatusCode::OK, "{latest}");
    assert_eq!(latest["tree_size"], 7);
    let stored = anchor::anchored(&a.chain.owner.provider, a.contract)
        .await
        .unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|x| (x.tree_size, hex::encode(x.root)))
            .collect::<Vec<_>>(),
        [3, 5, 7].into_iter().zip(roots.clone()).collect::<Vec<_>>(),
        "the contract holds the engine's roots"
    );

    // Adapter A restarts with its state file lost. It re-reads everything and sends nothing:
    // the one transaction of its key from now on is the anchor of the next checkpoint.
    drop(adapter_a);
    let agent_a = a.chain.agent_key.address();
    let sent_before = sent_by(&a.chain, agent_a).await;
    let adapter_a = a.adapter(&app).await;
    freeze(&app, &b.chain, "b-3", b.chain.alice).await;
    assert_eq!(publish(&app).await["tree_size"], 8);
    a.wait_anchored(8).await;
    b.wait_anchored(8).await;
    wait_status(&app, &b.chain, Some(b.chain.alice), "converged").await;
    assert_eq!(
        sent_by(&a.chain, agent_a).await,
        sent_before + 1,
        "the restarted adapter sent the new anchor and nothing else"
    );
    assert_eq!(
        a.events().await,
        [3, 5, 7, 8],
        "no checkpoint anchored twice"
    );
    assert_eq!(b.events().await, [3, 5, 7, 8]);

    let anchors = scratch("anchors.toml", &(a.source() + "\n" + &b.source()));
    let anchors = anchors.to_str().unwrap();
    let (code, out) = verify_cli(&pool, &["--anchors", anchors]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("anchors on anvil-a sound: 4 checkpoints anchored (latest tree size 8)"),
        "{out}"
    );
    assert!(out.contains("anchors on anvil-b sound: 4"), "{out}");

    // The insider: records 4 to 8 rewritten with a consistent chain, the checkpoints above 3
    // and the stored tree beyond 3 leaves dropped; an engine with the same key, started on
    // that database, recomputes the log from seq 1 and signs the rewrite.
    drop(adapter_a);
    drop(adapter_b);
    let secret = app.secret.clone();
    app.app.stop().await;
    rewrite_suffix(&pool, 4).await;
    drop_evidence(&pool, 3, 3).await;
    let resigned = TestApp::start(config(secret, 0), pool.clone()).await;
    let forged = publish(&resigned).await;
    assert_eq!(forged["tree_size"], 8);
    assert_ne!(forged["root"], json!(roots[2]));
    let (_, key) = resigned
        .get(&resigned.auditor(), "/v1/audit/public-key")
        .await;
    let pem = scratch("key.pem", key["pem"].as_str().unwrap());

    // Plain verify, with the engine's key, finds nothing wrong: the database is consistent.
    let (code, out) = verify_cli(&pool, &["--public-key", pem.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checkpoints sound: 2 roots recomputed from the log, signatures verified"),
        "{out}"
    );

    // The anchors contradict it from tree size 5 on, the first anchored size the rewrite
    // covers: tree size 3 still holds.
    let (code, out) = verify_cli(
        &pool,
        &["--public-key", pem.to_str().unwrap(), "--anchors", anchors],
    );
    assert_eq!(code, 1, "{out}");
    for chain in ["anvil-a", "anvil-b"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("anchors on {chain}:")))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains(&format!(
                "first contradicted checkpoint: tree size 5: anchored root {}, the database's root",
                roots[1]
            )),
            "{line}"
        );
    }

    // An adapter of the re-signed engine refuses to anchor the rewritten history: the engine's
    // new checkpoint does not extend the anchored tree of 8. It still applies decisions.
    let _adapter_a = a.adapter(&resigned).await;
    let sent_before = sent_by(&a.chain, agent_a).await;
    freeze(&resigned, &a.chain, "a-9", a.chain.bob).await;
    assert_eq!(publish(&resigned).await["tree_size"], 9);
    wait_status(&resigned, &a.chain, Some(a.chain.bob), "converged").await;
    // Several looks at the engine's checkpoint (one every 2 s) after the freeze was applied.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(a.latest().await, 8, "the rewrite is not anchored");
    assert_eq!(a.events().await, [3, 5, 7, 8]);
    assert_eq!(
        sent_by(&a.chain, agent_a).await,
        sent_before + 1,
        "only the freeze was sent"
    );
    resigned.app.stop().await;
}

/// An unreachable node and an address that is not an anchor are errors of their own (exit 2),
/// before the database is read.
#[sqlx::test]
async fn verify_names_an_unreachable_node_and_a_wrong_contract(pool: PgPool) {
    let a = Anchored::start("anvil-wrong", 31337).await;
    let wrong = format!(
        "[[chains]]\nname = \"anvil-wrong\"\nrpc_url = \"{}\"\ncontract = \"{:#x}\"\n",
        a.chain.anvil.url(),
        a.chain.suite.token
    );
    let (code, out) = verify_cli(
        &pool,
        &["--anchors", scratch("a.toml", &wrong).to_str().unwrap()],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("chain anvil-wrong") && out.contains("does not answer as a CheckpointAnchor"),
        "{out}"
    );
    let empty = wrong.replace(
        &format!("{:#x}", a.chain.suite.token),
        &format!("{:#x}", a.chain.alice),
    );
    let (code, out) = verify_cli(
        &pool,
        &["--anchors", scratch("a.toml", &empty).to_str().unwrap()],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no contract at"), "{out}");
    let port = regulator::chain::anvil::free_port().unwrap();
    let down = a
        .source()
        .replace(&a.chain.anvil.url(), &format!("http://127.0.0.1:{port}"));
    let (code, out) = verify_cli(
        &pool,
        &["--anchors", scratch("a.toml", &down).to_str().unwrap()],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the node is unreachable"), "{out}");
}
