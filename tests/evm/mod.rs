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

use crate::service::TestApp;

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
pub fn holder(a: Address) -> String {
    format!("{a:#x}")
}

impl Chain {
    /// Starts anvil (mining each transaction while the suite deploys, then one block every
    /// `block_time` seconds) and deploys a suite as account 0, with account 1 as the agent.
    pub async fn start(name: &str, chain_id: u64, block_time: u64) -> Chain {
        let anvil = Anvil::start(chain_id, None).await.expect("anvil starts");
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
            engine: EngineConfig {
                url: app.base.clone(),
                token_file,
            },
            assets: [(AssetId::parse(asset).unwrap(), self.suite.token)].into(),
            custody: [(IssuerId::parse("US-DOJ").unwrap(), self.doj_custody)].into(),
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
