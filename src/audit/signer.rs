//! The engine's Ed25519 checkpoint key, and the text a checkpoint signs.
//!
//! The key is a PKCS#8 PEM file, created with mode 0600 on first start if missing (as the
//! development token secret is), so every replica pointed at the same file signs with the same
//! key. It is written as PKCS#8 v1 (RFC 8410 §7: the private key only), the form OpenSSL and
//! most tools read; a v2 file (with the public key) is read too. Its id is the first 16 hex
//! digits of SHA-256 of the 32-byte public key.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::domain::merkle::Hash;
use crate::storage::audit::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointKeyError {
    #[error("cannot read the checkpoint key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the checkpoint key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 PKCS#8 PEM private key: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{0} can be read by other users; make it mode 0600")]
    Exposed(PathBuf),
}

/// The key that signs checkpoints.
pub struct CheckpointKey {
    signing: SigningKey,
    key_id: String,
}

impl CheckpointKey {
    /// Reads the key at `path`, or creates one there (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, CheckpointKeyError> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                refuse_exposed(path)?;
                let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    CheckpointKeyError::Malformed {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Self::new(signing))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = SigningKey::generate(&mut rand::rngs::OsRng);
                // v1: without the optional public key, which OpenSSL 1.1 and 3 refuse in a
                // v2 document of this shape.
                let v1 = KeypairBytes {
                    secret_key: signing.to_bytes(),
                    public_key: None,
                };
                let pem =
                    v1.to_pkcs8_pem(LineEnding::LF)
                        .map_err(|e| CheckpointKeyError::Malformed {
                            path: path.to_owned(),
                            reason: e.to_string(),
                        })?;
                write_private(path, pem.as_bytes()).map_err(|source| {
                    CheckpointKeyError::Write {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                tracing::info!(path = %path.display(), "created a checkpoint signing key");
                Ok(Self::new(signing))
            }
            Err(source) => Err(CheckpointKeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn new(signing: SigningKey) -> Self {
        let key_id = key_id(&signing.verifying_key());
        Self { signing, key_id }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as a SubjectPublicKeyInfo PEM.
    pub fn public_pem(&self) -> String {
        self.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Signs the tree head `(tree_size, root)` and the state root after those records at
    /// `signed_at`.
    pub fn sign(
        &self,
        tree_size: u64,
        root: Hash,
        state_root: Hash,
        signed_at: DateTime<Utc>,
    ) -> Checkpoint {
        // The database keeps microseconds: sign exactly what will be stored.
        let signed_at = truncate_to_micros(signed_at);
        let text = checkpoint_text(tree_size, &root, Some(&state_root), signed_at, &self.key_id);
        let signature = self.signing.sign(text.as_bytes()).to_bytes();
        Checkpoint {
            tree_size,
            root,
            signed_at,
            key_id: self.key_id.clone(),
            signature,
            state_root: Some(state_root),
        }
    }
}

/// Reads a SubjectPublicKeyInfo PEM (as `GET /v1/audit/public-key` serves it, or as
/// `openssl pkey -pubout` writes it), ignoring whitespace around it.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| e.to_string())
}

/// The key id of a public key: 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// What a checkpoint's signature covers, one field per line. Version 2 adds the state root;
/// checkpoints signed before the state map keep their version 1 text (without that line).
///
/// ```text
/// regulator checkpoint v2
/// tree_size 1204
/// root 5dc9da79…
/// state_root 8e01c2…
/// signed_at 2026-11-21T09:30:00.123456Z
/// key_id 3f1a…
/// ```
pub fn checkpoint_text(
    tree_size: u64,
    root: &Hash,
    state_root: Option<&Hash>,
    signed_at: DateTime<Utc>,
    key_id: &str,
) -> String {
    let at = signed_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let root = hex::encode(root);
    match state_root {
        None => format!(
            "regulator checkpoint v1\ntree_size {tree_size}\nroot {root}\nsigned_at {at}\nkey_id {key_id}\n"
        ),
        Some(state) => format!(
            "regulator checkpoint v2\ntree_size {tree_size}\nroot {root}\nstate_root {}\nsigned_at {at}\nkey_id {key_id}\n",
            hex::encode(state)
        ),
    }
}

/// The signed text of a stored checkpoint.
pub fn signed_text(cp: &Checkpoint) -> String {
    checkpoint_text(
        cp.tree_size,
        &cp.root,
        cp.state_root.as_ref(),
        cp.signed_at,
        &cp.key_id,
    )
}

/// Checks a checkpoint's signature with `key`.
pub fn verify_checkpoint(key: &VerifyingKey, cp: &Checkpoint) -> bool {
    let text = signed_text(cp);
    key_id(key) == cp.key_id
        && key
            .verify(text.as_bytes(), &Signature::from_bytes(&cp.signature))
            .is_ok()
}

fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

#[cfg(unix)]
fn refuse_exposed(path: &Path) -> Result<(), CheckpointKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| CheckpointKeyError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CheckpointKeyError::Exposed(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_exposed(_: &Path) -> Result<(), CheckpointKeyError> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_only() {
        let dir = std::env::temp_dir().join(format!("cp-key-{}", uuid::Uuid::new_v4()));
        let key = CheckpointKey::load_or_create(&dir.join("key.pem")).unwrap();
        let again = CheckpointKey::load_or_create(&dir.join("key.pem")).unwrap();
        assert_eq!(key.key_id(), again.key_id(), "the file is read back");
        let cp = key.sign(8, [7; 32], [9; 32], Utc::now());
        assert!(signed_text(&cp).starts_with("regulator checkpoint v2\n"));
        assert!(verify_checkpoint(&key.verifying_key(), &cp));
        let mut forged = cp.clone();
        forged.tree_size = 9;
        assert!(!verify_checkpoint(&key.verifying_key(), &forged));
        let mut forged = cp.clone();
        forged.root[0] ^= 1;
        assert!(!verify_checkpoint(&key.verifying_key(), &forged));
        let mut forged = cp.clone();
        forged.state_root = Some([8; 32]);
        assert!(!verify_checkpoint(&key.verifying_key(), &forged));
        let mut forged = cp.clone();
        forged.state_root = None;
        assert!(!verify_checkpoint(&key.verifying_key(), &forged));
        let other = CheckpointKey::load_or_create(&dir.join("other.pem")).unwrap();
        assert!(!verify_checkpoint(&other.verifying_key(), &cp));
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
