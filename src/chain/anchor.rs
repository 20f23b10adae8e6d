//! Signed checkpoints anchored on chain: the project's `CheckpointAnchor` contract (deployed
//! from its committed artifact), the adapter's anchoring step, and the reads with which
//! `regulator audit verify --anchors` compares the database against what the chains hold.
//!
//! A checkpoint signed by the engine proves nothing against the engine's own operator: a
//! superuser who rewrites a suffix of the log and drops the stored tree and checkpoints has the
//! rewrite re-signed by the same key. A root published on a chain cannot be taken back, so the
//! rewrite contradicts it.
//!
//! The adapter's step is level-triggered, like the rest of the adapter: it compares the
//! contract's latest anchored size, read on chain, with the engine's latest checkpoint, and
//! sends one `anchor` transaction when the engine's is larger. Nothing about anchoring is kept
//! in the state file, so a restart, a lost state file or a dropped transaction can only lead to
//! reading the chain again; and the contract refuses a size that is not larger than its latest,
//! which the step takes as "already anchored".

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::BlockId;
use alloy::sol_types::{SolCall, SolConstructor};
use serde::Deserialize;
use tokio::time::Instant;

use super::contracts::{CheckpointAnchor, ICheckpointAnchor};
use super::engine::{CheckpointHead, Engine};
use super::token::call_at as call;
use super::{token, ChainError, Connection};
use crate::domain::merkle::{verify_consistency, Hash};
use crate::domain::ChainId;

/// The committed artifact (`node chain/compile-anchor.js` writes it; `tests/anchor_artifact.rs`
/// checks it is what the source compiles to).
pub const ARTIFACT: &str = include_str!("../../chain/artifacts/CheckpointAnchor.json");

/// The revert reason of an `anchor` call whose size is not larger than the latest anchored.
const NOT_LARGER: &str = "tree size not larger than the latest anchored";

/// The contract's creation bytecode, from the artifact.
pub fn creation_code() -> Result<Vec<u8>, ChainError> {
    #[derive(Deserialize)]
    struct Artifact {
        bytecode: String,
    }
    let err = |why: String| ChainError::Artifact {
        path: "chain/artifacts/CheckpointAnchor.json".into(),
        why,
    };
    let artifact: Artifact = serde_json::from_str(ARTIFACT).map_err(|e| err(e.to_string()))?;
    hex::decode(artifact.bytecode.trim_start_matches("0x"))
        .map_err(|e| err(format!("bytecode is not hex: {e}")))
}

/// Deploys an anchor whose only publisher is `publisher`, as `conn`'s key.
pub async fn deploy(conn: &Connection, publisher: Address) -> Result<Address, ChainError> {
    let mut code = creation_code()?;
    code.extend(
        CheckpointAnchor::constructorCall {
            publisher_: publisher,
        }
        .abi_encode(),
    );
    super::deploy::create(conn, code).await
}

/// One anchored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchored {
    pub tree_size: u64,
    pub root: Hash,
}

/// The latest anchored checkpoint at `block`, `None` if nothing is anchored yet.
pub async fn latest(
    provider: &DynProvider,
    contract: Address,
    block: BlockId,
) -> Result<Option<Anchored>, ChainError> {
    let answer = call(provider, contract, ICheckpointAnchor::latestCall {}, block).await?;
    Ok((answer.treeSize > 0).then_some(Anchored {
        tree_size: answer.treeSize,
        root: answer.root.0,
    }))
}

/// Anchor reads at a time.
const READ_CONCURRENCY: usize = 64;

/// A node to read anchors from, without a key.
pub fn reader(rpc_url: &str) -> Result<DynProvider, ChainError> {
    let url = rpc_url
        .parse()
        .map_err(|e| ChainError::Other(format!("rpc_url {rpc_url:?}: {e}")))?;
    Ok(ProviderBuilder::new().connect_http(url).erased())
}

/// Every checkpoint anchored in `contract`, oldest (smallest) first, all read at one block (the
/// node's latest when the read starts). An unreachable node, an address without code and a
/// contract that does not answer as an anchor are told apart in the error.
pub async fn anchored(
    provider: &DynProvider,
    contract: Address,
) -> Result<Vec<Anchored>, ChainError> {
    let head = provider
        .get_block_number()
        .await
        .map_err(|e| ChainError::Rpc(format!("the node is unreachable: {e}")))?;
    let at = BlockId::number(head);
    let code = provider
        .get_code_at(contract)
        .block_id(at)
        .await
        .map_err(ChainError::rpc)?;
    if code.is_empty() {
        return Err(ChainError::Other(format!(
            "no contract at {contract} on this node (a wrong address, or another chain?)"
        )));
    }
    let not_an_anchor = |e: ChainError| {
        ChainError::Other(format!(
            "the contract at {contract} does not answer as a CheckpointAnchor: {e}"
        ))
    };
    let count = call(provider, contract, ICheckpointAnchor::countCall {}, at)
        .await
        .map_err(not_an_anchor)?;
    call(provider, contract, ICheckpointAnchor::latestCall {}, at)
        .await
        .map_err(not_an_anchor)?;
    let count = u64::try_from(count).map_err(|_| {
        ChainError::Other(format!("the contract at {contract} counts {count} anchors"))
    })?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut index = 0u64;
    while index < count {
        let end = (index + READ_CONCURRENCY as u64).min(count);
        let reads: Vec<_> = (index..end)
            .map(|i| {
                call(
                    provider,
                    contract,
                    ICheckpointAnchor::anchorAtCall {
                        index: U256::from(i),
                    },
                    at,
                )
            })
            .collect();
        for answer in futures::future::try_join_all(reads).await? {
            out.push(Anchored {
                tree_size: answer.treeSize,
                root: answer.root.0,
            });
        }
        index = end;
    }
    Ok(out)
}

/// What `regulator audit verify --anchors FILE` reads: the chains whose anchors to check.
///
/// ```toml
/// [[chains]]
/// name = "anvil-1"
/// rpc_url = "http://127.0.0.1:8545"
/// contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorsFile {
    pub chains: Vec<AnchorSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorSource {
    /// The chain as the engine names it (for the report).
    pub name: ChainId,
    pub rpc_url: String,
    /// The `CheckpointAnchor` contract.
    pub contract: Address,
}

impl AnchorsFile {
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: AnchorsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.chains.is_empty() {
            return Err("name at least one chain ([[chains]] with name, rpc_url, contract)".into());
        }
        for chain in &file.chains {
            url::Url::parse(&chain.rpc_url)
                .map_err(|e| format!("chain {}: rpc_url {:?}: {e}", chain.name, chain.rpc_url))?;
        }
        Ok(file)
    }
}

/// Whether the engine's checkpoint may be anchored over what the contract holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The contract already holds this size or a larger one.
    Nothing,
    /// The checkpoint extends the anchored one (or nothing is anchored yet).
    Anchor,
    /// The checkpoint does not extend the anchored one: the log was rewritten since.
    Refuse(String),
}

/// Decides the step from the contract's latest anchor, the engine's latest checkpoint and the
/// engine's consistency proof between the two (only asked for when both exist).
pub fn step(anchored: Option<Anchored>, checkpoint: CheckpointHead, proof: &[Hash]) -> Step {
    match anchored {
        Some(a) if a.tree_size >= checkpoint.tree_size => Step::Nothing,
        None => Step::Anchor,
        Some(a) => match verify_consistency(
            a.tree_size,
            checkpoint.tree_size,
            &a.root,
            &checkpoint.root,
            proof,
        ) {
            Ok(()) => Step::Anchor,
            Err(why) => Step::Refuse(format!(
                "the engine's checkpoint of tree size {} (root {}) does not extend the one \
                 anchored at tree size {} (root {}): {why}",
                checkpoint.tree_size,
                hex::encode(checkpoint.root),
                a.tree_size,
                hex::encode(a.root)
            )),
        },
    }
}

/// How often the adapter looks at the engine's latest checkpoint.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long the adapter waits for an anchor's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The adapter's anchoring, for one contract.
pub struct Anchorer {
    chain: ChainId,
    contract: Address,
    next_look: Instant,
}

impl Anchorer {
    pub fn new(chain: ChainId, contract: Address) -> Self {
        Self {
            chain,
            contract,
            next_look: Instant::now(),
        }
    }

    /// At most one anchor attempt, when due. Never fails the adapter's turn: a failure is
    /// logged, and the next look tries again from what the chain says. Answers whether it
    /// looked (and so may have sent a transaction with the node's nonce).
    pub async fn turn(&mut self, conn: &Connection, engine: &Engine) -> bool {
        let now = Instant::now();
        if now < self.next_look {
            return false;
        }
        self.next_look = now + LOOK_EVERY;
        if let Err(error) = self.attempt(conn, engine).await {
            tracing::warn!(chain = %self.chain, contract = %self.contract, %error, "anchoring failed; retrying later");
            metrics::counter!("adapter_anchor_failures_total", "chain" => self.chain.to_string())
                .increment(1);
        }
        true
    }

    fn anchored_size(&self, size: u64) {
        metrics::gauge!("adapter_anchored_tree_size", "chain" => self.chain.to_string())
            .set(size as f64);
    }

    async fn attempt(&self, conn: &Connection, engine: &Engine) -> Result<(), ChainError> {
        let Some(checkpoint) = engine.latest_checkpoint().await? else {
            return Ok(());
        };
        // Read on chain every time, never remembered: an anchor that a reorg took out is sent
        // again.
        let on_chain = latest(&conn.provider, self.contract, BlockId::latest()).await?;
        self.anchored_size(on_chain.map_or(0, |a| a.tree_size));
        let proof = match on_chain {
            Some(a) if a.tree_size < checkpoint.tree_size => {
                engine
                    .consistency(a.tree_size, checkpoint.tree_size)
                    .await?
            }
            _ => Vec::new(),
        };
        match step(on_chain, checkpoint, &proof) {
            Step::Nothing => return Ok(()),
            Step::Refuse(why) => {
                tracing::error!(chain = %self.chain, contract = %self.contract, %why, "refusing to anchor");
                metrics::counter!("adapter_anchor_refusals_total", "chain" => self.chain.to_string())
                    .increment(1);
                return Ok(());
            }
            Step::Anchor => {}
        }
        // Never wait here for a transaction in flight (the turn's apply does that): try again
        // at the next look.
        let (pending, mined) = token::nonces(conn).await?;
        if pending != mined {
            return Ok(());
        }
        let input = ICheckpointAnchor::anchorCall {
            treeSize: checkpoint.tree_size,
            root: B256::from(checkpoint.root),
        }
        .abi_encode();
        let hash = match token::send(conn, self.contract, input, mined).await {
            Ok(hash) => hash,
            Err(ChainError::Reverted(why)) if why.contains(NOT_LARGER) => {
                // Anchored meanwhile (by an earlier transaction of ours that was still on its
                // way): the next look reads the chain again.
                tracing::info!(chain = %self.chain, tree_size = checkpoint.tree_size, "already anchored");
                return Ok(());
            }
            Err(other) => return Err(other),
        };
        tracing::info!(chain = %self.chain, tree_size = checkpoint.tree_size, %hash, "anchor sent");
        let chain = self.chain.to_string();
        metrics::counter!("adapter_anchors_sent_total", "chain" => chain.clone()).increment(1);
        metrics::counter!("adapter_transactions_total", "chain" => chain, "call" => "anchor")
            .increment(1);
        match token::receipt(conn, hash, RECEIPT_TIMEOUT).await? {
            token::Fate::Mined(m) if m.success => {
                self.anchored_size(checkpoint.tree_size);
                Ok(())
            }
            token::Fate::Mined(m) => Err(ChainError::Reverted(format!(
                "anchor transaction {} reverted",
                m.hash
            ))),
            // Dropped or still pending: the next look reads the contract and sends again only
            // if the checkpoint is still not anchored.
            token::Fate::Dropped => Err(ChainError::Other(format!(
                "anchor transaction {hash} was dropped by the node before it was mined"
            ))),
            token::Fate::Pending => Err(ChainError::Other(format!(
                "no receipt for anchor transaction {hash} within {RECEIPT_TIMEOUT:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::merkle::{consistency_proof, leaf_hash, root, Leaves};
    use alloy::primitives::keccak256;
    use alloy::sol_types::{SolEvent, SolInterface};

    /// The Solidity signatures declared in `contracts.rs` are exactly the artifact's ABI.
    #[test]
    fn the_declared_interface_is_the_artifacts_abi() {
        let artifact: serde_json::Value = serde_json::from_str(ARTIFACT).unwrap();
        let signature = |item: &serde_json::Value| {
            let types: Vec<&str> = item["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["type"].as_str().unwrap())
                .collect();
            format!("{}({})", item["name"].as_str().unwrap(), types.join(","))
        };
        let abi = artifact["abi"].as_array().unwrap();
        let mut functions: Vec<[u8; 4]> = abi
            .iter()
            .filter(|i| i["type"] == "function")
            .map(|i| keccak256(signature(i))[..4].try_into().unwrap())
            .collect();
        functions.sort();
        let mut declared = ICheckpointAnchor::ICheckpointAnchorCalls::SELECTORS.to_vec();
        declared.sort();
        assert_eq!(functions, declared);
        assert_eq!(
            ICheckpointAnchor::ICheckpointAnchorCalls::COUNT,
            abi.iter().filter(|i| i["type"] == "function").count()
        );
        let events: Vec<_> = abi.iter().filter(|i| i["type"] == "event").collect();
        assert_eq!(events.len(), 1);
        assert_eq!(
            keccak256(signature(events[0])),
            ICheckpointAnchor::Anchored::SIGNATURE_HASH
        );
        let constructor = abi.iter().find(|i| i["type"] == "constructor").unwrap();
        assert_eq!(constructor["inputs"][0]["type"], "address");
        assert!(creation_code().unwrap().len() > 100);
    }

    fn tree(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i as u8])).collect()
    }

    fn head(leaves: &[Hash], size: u64) -> CheckpointHead {
        CheckpointHead {
            tree_size: size,
            root: root(&Leaves(leaves), size).unwrap(),
        }
    }

    #[test]
    fn a_checkpoint_is_anchored_only_if_it_extends_the_anchored_one() {
        let leaves = tree(12);
        let at = |size| {
            let h = head(&leaves, size);
            Anchored {
                tree_size: h.tree_size,
                root: h.root,
            }
        };
        let proof = consistency_proof(&Leaves(&leaves), 5, 12).unwrap().unwrap();
        assert_eq!(step(None, head(&leaves, 5), &[]), Step::Anchor);
        assert_eq!(step(Some(at(5)), head(&leaves, 12), &proof), Step::Anchor);
        assert_eq!(step(Some(at(12)), head(&leaves, 12), &[]), Step::Nothing);
        assert_eq!(step(Some(at(12)), head(&leaves, 5), &[]), Step::Nothing);

        // Leaf 4 rewritten: the new tree of 12 does not extend the anchored tree of 5, whatever
        // proof the engine offers.
        let mut forged = leaves.clone();
        forged[3] = leaf_hash(b"forged");
        let forged_proof = consistency_proof(&Leaves(&forged), 5, 12).unwrap().unwrap();
        for offered in [&forged_proof, &proof] {
            match step(Some(at(5)), head(&forged, 12), offered) {
                Step::Refuse(why) => assert!(why.contains("tree size 5"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_anchors_file_parses_and_mistakes_are_refused() {
        let good = r#"
[[chains]]
name = "anvil-1"
rpc_url = "http://127.0.0.1:8545"
contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
"#;
        let file = AnchorsFile::parse(good).unwrap();
        assert_eq!(file.chains[0].name.as_str(), "anvil-1");
        for bad in [
            "chains = []".to_owned(),
            good.replace("rpc_url", "url"),
            good.replace("0x5FbDB2315678afecb367f032d93F642f64180aa3", "0x5FbD"),
            good.replace("http://127.0.0.1:8545", "not a url"),
            good.replace("\"anvil-1\"", "\"Anvil 1\""),
            good.to_owned() + "colour = 1\n",
        ] {
            assert!(AnchorsFile::parse(&bad).is_err(), "{bad}");
        }
    }
}
