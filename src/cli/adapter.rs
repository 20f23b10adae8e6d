//! `regulator adapter evm --config FILE`: runs one chain's adapter. `regulator chain deploy-trex`:
//! deploys a T-REX suite to a node (for a walk-through or a test network) and prints its
//! addresses as JSON; `regulator chain deploy-anchor` deploys the checkpoint anchor.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use regulator::chain::config::AdapterConfig;
use regulator::chain::deploy::{self, HolderSpec, SuiteSpec};
use regulator::chain::{self as evm, Connection};

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Follow a chain's decisions and make its ERC-3643 tokens obey them; report observations.
    Evm {
        /// The adapter's TOML configuration (see README, "Connect a chain").
        #[arg(long)]
        config: PathBuf,
        /// Log format: `text` or `json`.
        #[arg(long, default_value = "text")]
        log_format: String,
    },
}

impl AdapterCommand {
    pub fn run(self) -> ExitCode {
        let AdapterCommand::Evm { config, log_format } = self;
        super::serve::init_tracing(&log_format);
        let config = match AdapterConfig::load(&config) {
            Ok(c) => c,
            Err(why) => {
                eprintln!("error: {why}");
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match runtime.block_on(evm::adapter::run(config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Deploy a full T-REX suite (registries, compliance, token), register and mint to holders,
    /// make the agents agents of the token; prints the addresses as JSON.
    DeployTrex(DeployArgs),
    /// Deploy the CheckpointAnchor contract (from the artifact compiled into this binary) with
    /// one publisher, the adapter's key; prints its address as JSON.
    DeployAnchor(DeployAnchorArgs),
}

#[derive(Debug, Args)]
pub struct DeployAnchorArgs {
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc_url: String,
    /// The deployer's private key (hex) in a file.
    #[arg(long)]
    key_file: PathBuf,
    /// The only address allowed to anchor: the adapter's key (default: the deployer's).
    #[arg(long)]
    publisher: Option<String>,
}

impl DeployAnchorArgs {
    async fn deploy(self) -> Result<String, String> {
        let key = evm::read_key(&self.key_file).map_err(|e| e.to_string())?;
        let publisher = match &self.publisher {
            Some(p) => p
                .parse()
                .map_err(|_| format!("--publisher {p}: not an address"))?,
            None => key.address(),
        };
        let conn = Connection::open(&self.rpc_url, key, None)
            .await
            .map_err(|e| e.to_string())?;
        let anchor = evm::anchor::deploy(&conn, publisher)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_string_pretty(&serde_json::json!({
            "anchor": anchor,
            "publisher": publisher,
        }))
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc_url: String,
    /// The owner's private key (hex) in a file.
    #[arg(long)]
    key_file: PathBuf,
    /// The T-REX artifacts (default: chain/node_modules/@tokenysolutions/t-rex/artifacts).
    #[arg(long)]
    artifacts: Option<PathBuf>,
    #[arg(long, default_value = "Demo Bond")]
    name: String,
    #[arg(long, default_value = "BOND")]
    symbol: String,
    /// An address to make agent of the token (the adapter's); repeatable.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// `ADDRESS=AMOUNT` to register and mint (AMOUNT 0 registers only, e.g. a custody wallet);
    /// repeatable.
    #[arg(long = "holder")]
    holders: Vec<String>,
}

impl ChainCommand {
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        let deployed = match self {
            ChainCommand::DeployTrex(args) => runtime.block_on(args.deploy()),
            ChainCommand::DeployAnchor(args) => runtime.block_on(args.deploy()),
        };
        match deployed {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }
}

impl DeployArgs {
    async fn deploy(self) -> Result<String, String> {
        let key = evm::read_key(&self.key_file).map_err(|e| e.to_string())?;
        let agents = self
            .agents
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("--agent {a}: not an address"))
            })
            .collect::<Result<_, _>>()?;
        let holders = self
            .holders
            .iter()
            .map(|h| {
                let (addr, amount) = h
                    .split_once('=')
                    .ok_or_else(|| format!("--holder {h}: expected ADDRESS=AMOUNT"))?;
                Ok(HolderSpec {
                    address: addr
                        .parse()
                        .map_err(|_| format!("--holder {h}: not an address"))?,
                    mint: amount
                        .parse()
                        .map_err(|_| format!("--holder {h}: not an amount"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        let conn = Connection::open(&self.rpc_url, key, None)
            .await
            .map_err(|e| e.to_string())?;
        let artifacts = self.artifacts.unwrap_or_else(deploy::default_artifacts);
        let suite = deploy::deploy_suite(
            &conn,
            &artifacts,
            &SuiteSpec {
                name: self.name,
                symbol: self.symbol,
                decimals: 0,
                agents,
                holders,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        serde_json::to_string_pretty(&suite).map_err(|e| e.to_string())
    }
}
