//! EVM chains: the ERC-3643 token as the adapter reads and writes it, the checkpoint anchor it
//! publishes the log's signed checkpoints to, the T-REX deployer used by tests and
//! walk-throughs, and a local anvil node.
//!
//! Everything that speaks JSON-RPC lives here; what to send is computed by the pure projection
//! in [`crate::domain::projection`].

pub mod adapter;
pub mod anchor;
pub mod anvil;
pub mod config;
pub mod contracts;
pub mod deploy;
pub mod engine;
pub mod sender;
pub mod stages;
pub mod token;

use alloy::network::EthereumWallet;
use alloy::primitives::Address;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("RPC: {0}")]
    Rpc(String),
    /// The node refused the transaction or its gas estimate: the contract reverted.
    #[error("reverted: {0}")]
    Reverted(String),
    #[error("the node's chain id is {actual}, the configuration says {expected}")]
    WrongChain { expected: u64, actual: u64 },
    #[error("artifact {path}: {why}")]
    Artifact { path: String, why: String },
    #[error("key file {path}: {why}")]
    Key { path: String, why: String },
    #[error("{0}")]
    Other(String),
}

impl ChainError {
    /// An RPC error, with the node's revert message when the node gave one.
    pub fn rpc(error: alloy::transports::TransportError) -> Self {
        if let Some(payload) = error.as_error_resp() {
            if payload.message.contains("revert") {
                return ChainError::Reverted(payload.message.to_string());
            }
        }
        ChainError::Rpc(error.to_string())
    }
}

/// A connection to one node with the key that signs.
#[derive(Clone)]
pub struct Connection {
    pub provider: DynProvider,
    pub signer: Address,
    /// The signing key, for transactions signed here ([`sender`]).
    pub wallet: EthereumWallet,
}

impl Connection {
    /// Connects to `rpc_url` signing with `key`; checks the node's chain id when given.
    pub async fn open(
        rpc_url: &str,
        key: PrivateKeySigner,
        chain_id: Option<u64>,
    ) -> Result<Self, ChainError> {
        let url = rpc_url
            .parse()
            .map_err(|e| ChainError::Other(format!("rpc_url {rpc_url:?}: {e}")))?;
        let signer = key.address();
        let wallet = EthereumWallet::from(key);
        let provider = ProviderBuilder::new()
            .wallet(wallet.clone())
            .connect_http(url)
            .erased();
        if let Some(expected) = chain_id {
            let actual = provider.get_chain_id().await.map_err(ChainError::rpc)?;
            if actual != expected {
                return Err(ChainError::WrongChain { expected, actual });
            }
        }
        Ok(Self {
            provider,
            signer,
            wallet,
        })
    }
}

/// Reads a hex private key (with or without `0x`, surrounding whitespace ignored) from a file.
pub fn read_key(path: &std::path::Path) -> Result<PrivateKeySigner, ChainError> {
    let text = std::fs::read_to_string(path).map_err(|e| ChainError::Key {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    text.trim().parse().map_err(|_| ChainError::Key {
        path: path.display().to_string(),
        why: "not a hex secp256k1 private key".into(),
    })
}
