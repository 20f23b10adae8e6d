//! `regulator audit verify-proof`: check an inclusion or consistency proof, a target's state
//! proof or a snapshot chunk offline, against signed checkpoints and a public key the auditor
//! holds, with no access to the engine.
//!
//! The inputs are the JSON documents the API serves, saved as files: a proof from
//! `GET /v1/audit/proofs/inclusion` or `/consistency`, the checkpoint(s) from
//! `GET /v1/audit/checkpoints[/latest]`, and the key's PEM from `GET /v1/audit/public-key`.
//! Nothing they say is taken on trust: the signed text is rebuilt from the checkpoint's fields,
//! the leaf hash from the record hash (and that from the record, if given).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use regulator::api::state::{SnapshotChunk, TargetProof};
use regulator::audit::signer::{public_key_from_pem, signed_text, verify_checkpoint};
use regulator::domain::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash};
use regulator::storage::audit::Checkpoint;

#[derive(Debug, Args)]
pub struct VerifyProofArgs {
    /// The proof, as `GET /v1/audit/proofs/inclusion` or `/consistency` returned it.
    #[arg(long)]
    proof: PathBuf,
    /// The signed checkpoint the proof leads to (for a consistency proof: the newer tree), as
    /// `GET /v1/audit/checkpoints/latest` returned it (or one item of the checkpoint list).
    /// A state proof or snapshot chunk carries its checkpoint: without this, that one is
    /// checked (its signature still with `--public-key`); with it, they must be the same.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// For a consistency proof: the older signed checkpoint, which the newer must extend.
    #[arg(long)]
    old_checkpoint: Option<PathBuf>,
    /// The checkpoint key's public half (PEM), obtained out of band.
    #[arg(long)]
    public_key: PathBuf,
    /// For an inclusion proof: the record's exact text (as the audit API gives it), whose
    /// SHA-256 must be the proof's record hash.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
struct CheckpointFile {
    tree_size: u64,
    root: String,
    #[serde(default)]
    state_root: Option<String>,
    signed_at: DateTime<Utc>,
    key_id: String,
    signature: String,
    signed_text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ProofFile {
    Inclusion {
        seq: u64,
        leaf_index: u64,
        tree_size: u64,
        record_hash: String,
        leaf_hash: String,
        audit_path: Vec<String>,
    },
    Consistency {
        from: u64,
        to: u64,
        proof: Vec<String>,
    },
    /// `GET /v1/targets/{chain}/{asset}/proof`.
    State(Box<TargetProof>),
    /// `GET /v1/snapshots`.
    Snapshot(Box<SnapshotChunk>),
}

/// Why the check could not run (exit 2), as against a proof that fails (exit 1).
enum Failure {
    Input(String),
    Invalid(String),
}

impl VerifyProofArgs {
    pub fn run(self) -> ExitCode {
        match self.check() {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(Failure::Invalid(why)) => {
                println!("proof does not verify: {why}");
                ExitCode::from(1)
            }
            Err(Failure::Input(why)) => {
                eprintln!("error: {why}");
                ExitCode::from(2)
            }
        }
    }

    fn check(&self) -> Result<String, Failure> {
        let key = public_key_from_pem(&read(&self.public_key)?).map_err(|e| {
            Failure::Input(format!(
                "{} is not an Ed25519 public key PEM: {e}",
                self.public_key.display()
            ))
        })?;
        let proof: ProofFile = json(&self.proof)?;
        let embedded = match &proof {
            ProofFile::State(p) => Some(&p.checkpoint),
            ProofFile::Snapshot(c) => Some(&c.checkpoint),
            _ => None,
        };
        let new = match (&self.checkpoint, embedded) {
            (Some(path), None) => signed(path, &json(path)?, &key)?,
            (None, None) => {
                return Err(Failure::Input(
                    "an inclusion or consistency proof needs --checkpoint".into(),
                ))
            }
            (given, Some(view)) => {
                let file: CheckpointFile = serde_json::to_value(view)
                    .and_then(serde_json::from_value)
                    .map_err(|e| Failure::Input(format!("the proof's checkpoint: {e}")))?;
                let cp = signed(&self.proof, &file, &key)?;
                if let Some(path) = given {
                    let held = signed(path, &json(path)?, &key)?;
                    if held != cp {
                        return Err(Failure::Invalid(format!(
                            "the proof is against the checkpoint of tree size {}, not the one in {}                              (tree size {})",
                            cp.tree_size,
                            path.display(),
                            held.tree_size
                        )));
                    }
                }
                cp
            }
        };
        let state_root = |cp: &Checkpoint| {
            cp.state_root.ok_or_else(|| {
                Failure::Invalid(format!(
                    "the checkpoint of tree size {} signs no state root (text v1)",
                    cp.tree_size
                ))
            })
        };
        match proof {
            ProofFile::State(doc) => {
                let sizes = doc.verify(&state_root(&new)?).map_err(Failure::Invalid)?;
                let target = match &doc.holder {
                    Some(h) => format!("holder {h} of {} on {}", doc.asset, doc.chain),
                    None => format!("asset {} on {}", doc.asset, doc.chain),
                };
                Ok(format!(
                    "state proof verified: {target} at the checkpoint of tree size {} (state root                      {}, signed at {} by key {}): level {} ({}), frozen {}, version {}, holds [{}];                      proofs of {} bytes",
                    new.tree_size,
                    hex::encode(state_root(&new)?),
                    new.signed_at.to_rfc3339(),
                    new.key_id,
                    doc.state.level_number,
                    serde_json::to_value(doc.state.level).unwrap_or_default(),
                    doc.state.frozen,
                    doc.state.version,
                    doc.state.holds.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", "),
                    sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" and "),
                ))
            }
            ProofFile::Snapshot(chunk) => {
                let leaves = chunk.verify(&state_root(&new)?).map_err(Failure::Invalid)?;
                Ok(format!(
                    "snapshot chunk verified: chunk {} of {} of chain {} at the checkpoint of tree                      size {} (state root {}): {} of its targets' leaves",
                    chunk.chunk,
                    chunk.chunks,
                    chunk.chain,
                    new.tree_size,
                    hex::encode(state_root(&new)?),
                    leaves.len()
                ))
            }
            ProofFile::Inclusion {
                seq,
                leaf_index,
                tree_size,
                record_hash,
                leaf_hash: claimed_leaf,
                audit_path,
            } => {
                if self.old_checkpoint.is_some() {
                    return Err(Failure::Input(
                        "--old-checkpoint is for consistency proofs".into(),
                    ));
                }
                if tree_size != new.tree_size {
                    return Err(Failure::Invalid(format!(
                        "the proof is for a tree of {tree_size} leaves, the checkpoint signs {}",
                        new.tree_size
                    )));
                }
                if seq == 0 || leaf_index != seq - 1 {
                    return Err(Failure::Invalid(format!(
                        "leaf index {leaf_index} is not seq {seq} - 1"
                    )));
                }
                let record_hash = hash(&record_hash, "record_hash")?;
                if let Some(path) = &self.record {
                    let text = std::fs::read(path).map_err(|e| {
                        Failure::Input(format!("cannot read {}: {e}", path.display()))
                    })?;
                    let actual: Hash = Sha256::digest(&text).into();
                    if actual != record_hash {
                        return Err(Failure::Invalid(format!(
                            "the record in {} hashes to {}, the proof is for {}",
                            path.display(),
                            hex::encode(actual),
                            hex::encode(record_hash)
                        )));
                    }
                }
                let leaf = leaf_hash(&record_hash);
                if hash(&claimed_leaf, "leaf_hash")? != leaf {
                    return Err(Failure::Invalid(
                        "leaf_hash is not SHA-256(0x00 || record_hash)".into(),
                    ));
                }
                let path = hashes(&audit_path, "audit_path")?;
                verify_inclusion(leaf_index, tree_size, &leaf, &path, &new.root)
                    .map_err(|e| Failure::Invalid(e.to_string()))?;
                Ok(format!(
                    "inclusion proof verified: record seq {seq} (hash {}) is in the tree of {tree_size} \
                     leaves signed at {} by key {} (root {})",
                    hex::encode(record_hash),
                    new.signed_at.to_rfc3339(),
                    new.key_id,
                    hex::encode(new.root)
                ))
            }
            ProofFile::Consistency { from, to, proof } => {
                let Some(old) = &self.old_checkpoint else {
                    return Err(Failure::Input(
                        "a consistency proof needs --old-checkpoint, the older tree's".into(),
                    ));
                };
                let old = signed(old, &json(old)?, &key)?;
                if (from, to) != (old.tree_size, new.tree_size) {
                    return Err(Failure::Invalid(format!(
                        "the proof is from {from} to {to} leaves, the checkpoints sign {} and {}",
                        old.tree_size, new.tree_size
                    )));
                }
                let proof = hashes(&proof, "proof")?;
                verify_consistency(from, to, &old.root, &new.root, &proof)
                    .map_err(|e| Failure::Invalid(e.to_string()))?;
                Ok(format!(
                    "consistency proof verified: the signed tree of {to} leaves (root {}) extends \
                     the signed tree of {from} leaves (root {})",
                    hex::encode(new.root),
                    hex::encode(old.root)
                ))
            }
        }
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("cannot read {}: {e}", path.display())))
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Failure> {
    serde_json::from_str(&read(path)?).map_err(|e| {
        Failure::Input(format!(
            "{} is not what the API serves: {e}",
            path.display()
        ))
    })
}

fn hash(text: &str, what: &str) -> Result<Hash, Failure> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure::Input(format!("{what} {text:?} is not 64 hex digits")))
}

fn hashes(texts: &[String], what: &str) -> Result<Vec<Hash>, Failure> {
    texts.iter().map(|t| hash(t, what)).collect()
}

/// The checkpoint `file` (read from `path`), if its signature verifies with `key`.
fn signed(
    path: &Path,
    file: &CheckpointFile,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Checkpoint, Failure> {
    let file = file.clone();
    let signature = STANDARD
        .decode(&file.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| {
            Failure::Input(format!(
                "{}: the signature is not 64 bytes of base64",
                path.display()
            ))
        })?;
    let cp = Checkpoint {
        tree_size: file.tree_size,
        root: hash(&file.root, "root")?,
        signed_at: file.signed_at,
        key_id: file.key_id,
        signature,
        state_root: file
            .state_root
            .as_deref()
            .map(|h| hash(h, "state_root"))
            .transpose()?,
    };
    if let Some(text) = &file.signed_text {
        if *text != signed_text(&cp) {
            return Err(Failure::Invalid(format!(
                "{}: signed_text does not say what the checkpoint's fields say",
                path.display()
            )));
        }
    }
    if !verify_checkpoint(key, &cp) {
        return Err(Failure::Invalid(format!(
            "{}: the checkpoint's signature does not verify with key {}",
            path.display(),
            regulator::audit::signer::key_id(key)
        )));
    }
    Ok(cp)
}
