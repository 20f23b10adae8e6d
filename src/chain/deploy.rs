//! Deploys a full T-REX suite from the reference implementation's compiled artifacts: identity
//! registry storage, claim topics and trusted issuers registries, identity registry, modular
//! compliance and the token, each used directly through its `init` function (no proxies);
//! registers the holders' ONCHAINID identities, mints to them, and makes the adapter's key an
//! agent of the token.
//!
//! The artifacts are read at run time (bytecode only; the functions called are declared in
//! [`super::contracts`]), so nothing here needs `node_modules` to build.

use std::path::{Path, PathBuf};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::{SolCall, SolConstructor};
use serde::{Deserialize, Serialize};

use super::contracts::{
    IIdentityRegistry, IIdentityRegistryStorage, IInitialisable, IToken, Identity,
};
use super::{ChainError, Connection};

/// Where `npm ci` in `chain/` puts the T-REX artifacts.
pub fn default_artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("chain/node_modules/@tokenysolutions/t-rex/artifacts")
}

const TOKEN: &str = "contracts/token/Token.sol/Token.json";
const IDENTITY_REGISTRY: &str =
    "contracts/registry/implementation/IdentityRegistry.sol/IdentityRegistry.json";
const IDENTITY_REGISTRY_STORAGE: &str =
    "contracts/registry/implementation/IdentityRegistryStorage.sol/IdentityRegistryStorage.json";
const CLAIM_TOPICS_REGISTRY: &str =
    "contracts/registry/implementation/ClaimTopicsRegistry.sol/ClaimTopicsRegistry.json";
const TRUSTED_ISSUERS_REGISTRY: &str =
    "contracts/registry/implementation/TrustedIssuersRegistry.sol/TrustedIssuersRegistry.json";
const MODULAR_COMPLIANCE: &str =
    "contracts/compliance/modular/ModularCompliance.sol/ModularCompliance.json";
const IDENTITY: &str = "@onchain-id/solidity/contracts/Identity.sol/Identity.json";

/// The creation bytecode of a Hardhat artifact.
pub fn bytecode(artifacts: &Path, relative: &str) -> Result<Vec<u8>, ChainError> {
    #[derive(Deserialize)]
    struct Artifact {
        bytecode: String,
    }
    let path = artifacts.join(relative);
    let err = |why: String| ChainError::Artifact {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let artifact: Artifact = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let hex_code = artifact.bytecode.trim_start_matches("0x");
    if hex_code.is_empty() {
        return Err(err("no bytecode (an interface?)".into()));
    }
    hex::decode(hex_code).map_err(|e| err(format!("bytecode is not hex: {e}")))
}

/// A holder to register and mint to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderSpec {
    pub address: Address,
    /// Base units minted to it (0: registered only, e.g. a custody wallet).
    pub mint: u128,
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct SuiteSpec {
    pub name: String,
    pub symbol: String,
    pub decimals: u8,
    /// Made an agent of the token: the adapter's key.
    pub agents: Vec<Address>,
    pub holders: Vec<HolderSpec>,
}

/// A deployed suite's addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suite {
    pub token: Address,
    pub identity_registry: Address,
    pub identity_registry_storage: Address,
    pub claim_topics_registry: Address,
    pub trusted_issuers_registry: Address,
    pub compliance: Address,
    /// Each holder's ONCHAINID identity contract, in the order given.
    pub identities: Vec<(Address, Address)>,
}

/// ISO 3166 numeric code the holders are registered under (the suite's compliance has no
/// country module, so any value passes).
const COUNTRY: u16 = 840;

/// Sends `tx` and waits for it to succeed; returns the created contract's address, if any.
async fn submit(conn: &Connection, tx: TransactionRequest) -> Result<Option<Address>, ChainError> {
    let pending = conn
        .provider
        .send_transaction(tx.with_from(conn.signer))
        .await
        .map_err(ChainError::rpc)?;
    let receipt = pending
        .get_receipt()
        .await
        .map_err(|e| ChainError::Rpc(e.to_string()))?;
    if !receipt.status() {
        return Err(ChainError::Reverted(format!(
            "transaction {} reverted",
            receipt.transaction_hash
        )));
    }
    Ok(receipt.contract_address)
}

/// Deploys `code` (creation bytecode with its constructor arguments) and waits for it.
pub(super) async fn create(conn: &Connection, code: Vec<u8>) -> Result<Address, ChainError> {
    let tx = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    submit(conn, tx)
        .await?
        .ok_or_else(|| ChainError::Other("a deployment created no contract".into()))
}

async fn call<C: SolCall>(conn: &Connection, to: Address, call: C) -> Result<(), ChainError> {
    let tx = TransactionRequest::default()
        .with_to(to)
        .with_input(Bytes::from(call.abi_encode()));
    submit(conn, tx).await.map(|_| ())
}

/// Deploys a suite as `conn`'s key (the suite's owner), from the artifacts under `artifacts`.
pub async fn deploy_suite(
    conn: &Connection,
    artifacts: &Path,
    spec: &SuiteSpec,
) -> Result<Suite, ChainError> {
    let init = |to| call(conn, to, IInitialisable::initCall {});

    let irs = create(conn, bytecode(artifacts, IDENTITY_REGISTRY_STORAGE)?).await?;
    init(irs).await?;
    let ctr = create(conn, bytecode(artifacts, CLAIM_TOPICS_REGISTRY)?).await?;
    init(ctr).await?;
    let tir = create(conn, bytecode(artifacts, TRUSTED_ISSUERS_REGISTRY)?).await?;
    init(tir).await?;
    let ir = create(conn, bytecode(artifacts, IDENTITY_REGISTRY)?).await?;
    call(
        conn,
        ir,
        IIdentityRegistry::initCall {
            trustedIssuersRegistry: tir,
            claimTopicsRegistry: ctr,
            identityStorage: irs,
        },
    )
    .await?;
    call(
        conn,
        irs,
        IIdentityRegistryStorage::bindIdentityRegistryCall {
            identityRegistry: ir,
        },
    )
    .await?;
    call(
        conn,
        ir,
        IIdentityRegistry::addAgentCall { agent: conn.signer },
    )
    .await?;
    let compliance = create(conn, bytecode(artifacts, MODULAR_COMPLIANCE)?).await?;
    init(compliance).await?;
    let token = create(conn, bytecode(artifacts, TOKEN)?).await?;
    call(
        conn,
        token,
        IToken::initCall {
            identityRegistry: ir,
            compliance,
            name: spec.name.clone(),
            symbol: spec.symbol.clone(),
            decimals: spec.decimals,
            onchainID: Address::ZERO,
        },
    )
    .await?;
    call(conn, token, IToken::addAgentCall { agent: conn.signer }).await?;
    for agent in &spec.agents {
        call(conn, token, IToken::addAgentCall { agent: *agent }).await?;
    }

    let identity_code = bytecode(artifacts, IDENTITY)?;
    let mut identities = Vec::new();
    for holder in &spec.holders {
        let identity = add_holder(conn, ir, &identity_code, holder.address).await?;
        identities.push((holder.address, identity));
        if holder.mint > 0 {
            call(
                conn,
                token,
                IToken::mintCall {
                    to: holder.address,
                    amount: U256::from(holder.mint),
                },
            )
            .await?;
        }
    }
    // T-REX tokens start paused.
    call(conn, token, IToken::unpauseCall {}).await?;
    Ok(Suite {
        token,
        identity_registry: ir,
        identity_registry_storage: irs,
        claim_topics_registry: ctr,
        trusted_issuers_registry: tir,
        compliance,
        identities,
    })
}

/// Deploys `holder`'s identity (managed by the holder's own key) and registers it.
pub async fn add_holder(
    conn: &Connection,
    identity_registry: Address,
    identity_code: &[u8],
    holder: Address,
) -> Result<Address, ChainError> {
    let mut code = identity_code.to_vec();
    code.extend(
        Identity::constructorCall {
            initialManagementKey: holder,
            isLibrary: false,
        }
        .abi_encode(),
    );
    let identity = create(conn, code).await?;
    call(
        conn,
        identity_registry,
        IIdentityRegistry::registerIdentityCall {
            user: holder,
            identity,
            country: COUNTRY,
        },
    )
    .await?;
    Ok(identity)
}

/// The identity contract's bytecode, for [`add_holder`].
pub fn identity_bytecode(artifacts: &Path) -> Result<Vec<u8>, ChainError> {
    bytecode(artifacts, IDENTITY)
}
