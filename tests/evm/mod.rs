//! A real chain for a test: anvil from `chain/node_modules`, a T-REX suite deployed by the
//! product's own deploy code, and the adapter of that chain wired to a test engine.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::BlockId;
use alloy::signers::local::PrivateKeySigner;
use regulator::auth::Role;
use regulator::chain::anvil::{dev_key, Anvil};
use regulator::chain::config::{AdapterConfig, EngineConfig, Finality};
use regulator::chain::contracts::IToken;
use regulator::chain::deploy::{self, HolderSpec, Suite, SuiteSpec};
use regulator::chain::{token, Connection};
use regulator::domain::{AssetId, ChainId, IssuerId};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::service::{order, TestApp};

/// Balances minted at deployment.
pub const ALICE_BALANCE: u128 = 1_000;
pub const BOB_BALANCE: u128 = 500;

/// One chain: a node, the suite on it, and who is who.
pub struct Chain {
    pub anvil: Anvil,
    pub name: ChainId,
    /// The owner of the suite (also an agent: the "issuer's agent" of out-of-band stories).
    pub owner: Connection,
    pub suite: Suite,
    pub agent_key: PrivateKeySigner,
    pub alice: Address,
    pub bob: Address,
    /// The DOJ's custody wallet (registered, so forced transfers to it are allowed).
    pub doj_custody: Address,
}

pub fn addr(i: usize) -> Address {
    dev_key(i).address()
}

/// The lowercase hex form the engine gets as a holder.
pub fn hex_of(a: Address) -> String {
    format!("{a:#x}")
}

impl Chain {
    /// Starts anvil (mining each transaction while the suite deploys, then one block every
    /// `block_time` seconds) and deploys a suite as account 0, with account 1 as the agent.
    pub async fn start(name: &str, chain_id: u64, block_time: u64) -> Chain {
        Self::start_with(name, chain_id, block_time, &[]).await
    }

    /// [`Chain::start`] with more of anvil's arguments.
    pub async fn start_with(name: &str, chain_id: u64, block_time: u64, extra: &[&str]) -> Chain {
        let port = regulator::chain::anvil::free_port().expect("a free port");
        let anvil = Anvil::start_with(port, chain_id, None, extra)
            .await
            .expect("anvil starts");
        let owner = Connection::open(&anvil.url(), dev_key(0), Some(chain_id))
            .await
            .expect("connects");
        let agent_key = dev_key(1);
        let (alice, bob, doj_custody) = (addr(2), addr(3), addr(4));
        let suite = deploy::deploy_suite(
            &owner,
            &deploy::default_artifacts(),
            &SuiteSpec {
                name: "ACME Bond 2031".into(),
                symbol: "ACME31".into(),
                decimals: 0,
                agents: vec![agent_key.address()],
                holders: vec![
                    HolderSpec {
                        address: alice,
                        mint: ALICE_BALANCE,
                    },
                    HolderSpec {
                        address: bob,
                        mint: BOB_BALANCE,
                    },
                    HolderSpec {
                        address: doj_custody,
                        mint: 0,
                    },
                ],
            },
        )
        .await
        .expect("suite deploys");
        let _: serde_json::Value = owner
            .provider
            .raw_request("evm_setIntervalMining".into(), (block_time,))
            .await
            .expect("interval mining");
        Chain {
            anvil,
            name: ChainId::parse(name).unwrap(),
            owner,
            suite,
            agent_key,
            alice,
            bob,
            doj_custody,
        }
    }

    pub async fn latest<C: alloy::sol_types::SolCall>(&self, call: C) -> C::Return {
        token::read(&self.owner, self.suite.token, call, BlockId::latest())
            .await
            .expect("reads")
    }

    pub async fn balance(&self, who: Address) -> u128 {
        let b: U256 = self.latest(IToken::balanceOfCall { user: who }).await;
        b.to::<u128>()
    }

    pub async fn frozen_tokens(&self, who: Address) -> u128 {
        let b: U256 = self.latest(IToken::getFrozenTokensCall { user: who }).await;
        b.to::<u128>()
    }

    pub async fn is_frozen(&self, who: Address) -> bool {
        self.latest(IToken::isFrozenCall { user: who }).await
    }

    pub async fn paused(&self) -> bool {
        self.latest(IToken::pausedCall {}).await
    }

    /// The adapter's configuration for this chain against `app`, in a fresh directory.
    pub fn adapter_config(&self, app: &TestApp, asset: &str, resync_seconds: u64) -> AdapterConfig {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("adapter-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("agent.key");
        std::fs::write(&key_file, hex::encode(self.agent_key.to_bytes())).unwrap();
        let token_file = dir.join("chain.jwt");
        std::fs::write(&token_file, app.token(self.name.as_str(), &[Role::Chain])).unwrap();
        AdapterConfig {
            chain: self.name.clone(),
            rpc_url: self.anvil.url(),
            chain_id: self.anvil.chain_id,
            finality: Finality::Confirmations { confirmations: 2 },
            key_file,
            state_file: dir.join("state.json"),
            resync_seconds,
            stuck_after_seconds: 30,
            engine: EngineConfig {
                url: app.base.clone(),
                token_file,
                checkpoint_key_file: None,
                checkpoint_key: None,
            },
            assets: [(AssetId::parse(asset).unwrap(), self.suite.token)].into(),
            custody: [(IssuerId::parse("US-DOJ").unwrap(), self.doj_custody)].into(),
            anchor: None,
        }
    }
}

/// An adapter running in this process; stopped on drop.
pub struct RunningAdapter(tokio::task::JoinHandle<()>);

impl Drop for RunningAdapter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn spawn_adapter(config: AdapterConfig) -> RunningAdapter {
    let adapter = regulator::chain::adapter::Adapter::open(config)
        .await
        .expect("adapter opens");
    RunningAdapter(tokio::spawn(adapter.run()))
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits an order on `holder`'s balance of the chain's bond (or the whole bond); returns its
/// order id after checking it applied.
pub async fn submit(
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
        body["target"]["holder"] = json!(hex_of(h));
    }
    let (status, answer) = app.submit(&app.regulator(issuer), key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["decision"]["outcome"], "APPLIED", "{answer}");
    answer["order_id"].as_str().unwrap().to_owned()
}

pub const ASSET: &str = "ACME-BOND-2031";
pub const SEC_COURT: (&str, &str) = ("court_order", "SEC v. Acme Corp., 26-cv-0142 (S.D.N.Y.)");
pub const DOJ_WARRANT: (&str, &str) = ("warrant", "26-MAG-0913");

/// The engine, one chain with its suite, and its adapter running, resyncing every `resync` s.
pub async fn story(pool: PgPool, name: &str, resync: u64) -> (TestApp, Chain, RunningAdapter) {
    let app = TestApp::spawn_with(pool, 0).await;
    let chain = Chain::start(name, 31337, 1).await;
    app.register(name, ASSET, "US", "security").await;
    let adapter = spawn_adapter(chain.adapter_config(&app, ASSET, resync)).await;
    (app, chain, adapter)
}

/// The reconciler's view of one target of `chain`.
pub async fn reconciliation(app: &TestApp, chain: &Chain, holder: Option<Address>) -> Value {
    let (status, answer) = app
        .get(
            &app.auditor(),
            &format!("/v1/reconciliation?chain={}", chain.name),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let want = holder.map(hex_of);
    answer["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["asset"] == ASSET && t["holder"].as_str().map(str::to_owned) == want)
        .cloned()
        .unwrap_or(Value::Null)
}

pub async fn wait_status(
    app: &TestApp,
    chain: &Chain,
    holder: Option<Address>,
    want: &str,
) -> Value {
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

/// The issuer's own agent (the suite's owner) sends `call` on the token, out of band.
pub async fn out_of_band(chain: &Chain, input: Vec<u8>) {
    let nonce = token::quiesce(&chain.owner, Duration::from_secs(10))
        .await
        .unwrap();
    let hash = token::send(&chain.owner, chain.suite.token, input, nonce)
        .await
        .unwrap();
    let mined = token::receipt(&chain.owner, hash, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(mined, token::Fate::Mined(m) if m.success));
}

/// A TCP relay in front of a node: taking it down makes the node unreachable to the adapter
/// (connections refused and cut) while the chain itself keeps its state.
pub struct Relay {
    pub port: u16,
    up: tokio::sync::watch::Sender<bool>,
    to: tokio::sync::watch::Sender<u16>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, watch) = tokio::sync::watch::channel(true);
        let (to, target) = tokio::sync::watch::channel(to);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut down = watch.clone();
                let mut moved = target.clone();
                let to = *moved.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                        _ = moved.changed() => {}
                    }
                });
            }
        });
        Relay { port, up, to, task }
    }

    /// Sends every later connection to the node on `port`, and cuts the open ones.
    pub fn point(&self, port: u16) {
        let _ = self.to.send(port);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_up(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `config` as the TOML file `regulator adapter evm --config` reads.
pub fn write_config_file(config: &AdapterConfig) -> PathBuf {
    let finality = match config.finality {
        Finality::Confirmations { confirmations } => {
            format!("{{ confirmations = {confirmations} }}")
        }
        Finality::Tag { .. } => "{ tag = \"finalized\" }".into(),
    };
    let mut text = format!(
        "chain = \"{}\"\nrpc_url = \"{}\"\nchain_id = {}\nfinality = {finality}\nkey_file = \"{}\"\nstate_file = \"{}\"\nresync_seconds = {}\n\n[engine]\nurl = \"{}\"\ntoken_file = \"{}\"\n\n[assets]\n",
        config.chain,
        config.rpc_url,
        config.chain_id,
        config.key_file.display(),
        config.state_file.display(),
        config.resync_seconds,
        config.engine.url,
        config.engine.token_file.display(),
    );
    if let Some(anchor) = config.anchor {
        // A top-level key: it must come before the first table.
        let at = text.find("\n[engine]").unwrap();
        text.insert_str(at, &format!("\nanchor = \"{anchor:#x}\""));
    }
    for (asset, token) in &config.assets {
        text.push_str(&format!("\"{asset}\" = \"{token:#x}\"\n"));
    }
    text.push_str("\n[custody]\n");
    for (authority, wallet) in &config.custody {
        text.push_str(&format!("\"{authority}\" = \"{wallet:#x}\"\n"));
    }
    let path = config.state_file.with_file_name("adapter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Replaces the last `depth` blocks of `chain` with empty ones (anvil's reorg RPC): what they
/// held is gone from the chain and from the node's pool.
pub async fn reorg(chain: &Chain, depth: u64) {
    let _: serde_json::Value = chain
        .owner
        .provider
        .raw_request("anvil_reorg".into(), (depth, Vec::<Value>::new()))
        .await
        .unwrap();
}

/// How many transactions `who` has sent.
pub async fn sent_by(chain: &Chain, who: Address) -> u64 {
    chain
        .owner
        .provider
        .get_transaction_count(who)
        .latest()
        .await
        .unwrap()
}
