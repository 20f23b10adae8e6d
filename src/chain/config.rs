//! The adapter's configuration file (TOML), parsed once into types that cannot be wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use serde::Deserialize;

use crate::domain::{AssetId, ChainId, IssuerId};

/// Which block an observation may be read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Finality {
    /// `head - confirmations`.
    Confirmations { confirmations: u64 },
    /// The node's own tag (`finalized` on a proof-of-stake chain, or `safe`).
    Tag { tag: FinalityTag },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalityTag {
    Finalized,
    Safe,
}

impl Finality {
    /// The name an observation records.
    pub fn label(&self) -> String {
        match self {
            Finality::Confirmations { confirmations } => format!("confirmations:{confirmations}"),
            Finality::Tag {
                tag: FinalityTag::Finalized,
            } => "finalized".into(),
            Finality::Tag {
                tag: FinalityTag::Safe,
            } => "safe".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Base URL of the engine, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// A file holding the adapter's bearer token (a `chain` token whose `sub` is the chain).
    pub token_file: PathBuf,
    /// The engine's checkpoint public key (PEM, as `GET /v1/audit/public-key` gives it, pinned
    /// out of band). With it, an adapter with no state file starts from a snapshot verified
    /// against a signed checkpoint instead of reading the whole feed.
    #[serde(default)]
    pub checkpoint_key_file: Option<PathBuf>,
    /// The key of `checkpoint_key_file`, parsed by [`AdapterConfig::load`].
    #[serde(skip)]
    pub checkpoint_key: Option<ed25519_dalek::VerifyingKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// The chain as the engine names it.
    pub chain: ChainId,
    pub rpc_url: String,
    /// The EVM chain id the node must report.
    pub chain_id: u64,
    pub finality: Finality,
    /// The agent's private key (hex), in a file of its own.
    pub key_file: PathBuf,
    /// Where the cursor and the record of forced transfers live (written atomically).
    pub state_file: PathBuf,
    /// A full re-read of every known target this often (default 30 s).
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// A transaction still in the node's pool this long after it was sent is replaced by a
    /// copy with the same nonce and higher fees (default 30 s).
    #[serde(default = "default_stuck_after")]
    pub stuck_after_seconds: u64,
    pub engine: EngineConfig,
    /// The engine's asset id → the token contract.
    pub assets: BTreeMap<AssetId, Address>,
    /// A seizing authority → its custody wallet.
    #[serde(default)]
    pub custody: BTreeMap<IssuerId, Address>,
    /// A `CheckpointAnchor` contract whose publisher is the agent's key: the engine's signed
    /// checkpoints are anchored there (see [`super::anchor`]). None: nothing is anchored.
    #[serde(default)]
    pub anchor: Option<Address>,
}

fn default_resync() -> u64 {
    30
}

fn default_stuck_after() -> u64 {
    30
}

impl AdapterConfig {
    /// Reads and checks a configuration file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut config: AdapterConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            Some(&mut config.key_file),
            Some(&mut config.state_file),
            Some(&mut config.engine.token_file),
            config.engine.checkpoint_key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(file) = &config.engine.checkpoint_key_file {
            let pem = std::fs::read_to_string(file)
                .map_err(|e| format!("engine.checkpoint_key_file {}: {e}", file.display()))?;
            let key = crate::audit::signer::public_key_from_pem(&pem).map_err(|e| {
                format!(
                    "engine.checkpoint_key_file {}: not an Ed25519 public key PEM: {e}",
                    file.display()
                )
            })?;
            config.engine.checkpoint_key = Some(key);
        }
        for (what, u) in [
            ("rpc_url", &config.rpc_url),
            ("engine.url", &config.engine.url),
        ] {
            url::Url::parse(u).map_err(|e| format!("{what} {u:?}: {e}"))?;
        }
        config.engine.url = config.engine.url.trim_end_matches('/').to_owned();
        if config.resync_seconds == 0 {
            return Err("resync_seconds must be at least 1".into());
        }
        if config.stuck_after_seconds == 0 {
            return Err("stuck_after_seconds must be at least 1".into());
        }
        if config.assets.is_empty() {
            return Err("assets: name at least one asset and its token contract".into());
        }
        Ok(config)
    }

    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds)
    }

    pub fn stuck_after(&self) -> Duration {
        Duration::from_secs(self.stuck_after_seconds)
    }

    pub fn token_of(&self, asset: &AssetId) -> Option<Address> {
        self.assets.get(asset).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
chain = "anvil-1"
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
finality = { confirmations = 2 }
key_file = "agent.key"
state_file = "state.json"

[engine]
url = "http://127.0.0.1:8080"
token_file = "chain.jwt"

[assets]
"BOND-2031" = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

[custody]
"US-DOJ" = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
"#;

    #[test]
    fn a_sample_parses() {
        let config: AdapterConfig = toml::from_str(SAMPLE).unwrap();
        assert_eq!(
            config.finality,
            Finality::Confirmations { confirmations: 2 }
        );
        assert_eq!(config.resync_seconds, 30);
        assert_eq!(config.stuck_after_seconds, 30);
        assert_eq!(config.assets.len(), 1);
        assert_eq!(config.anchor, None);
        assert_eq!(config.engine.checkpoint_key_file, None);
        let pinned = SAMPLE.replace(
            "token_file = \"chain.jwt\"",
            "token_file = \"chain.jwt\"\ncheckpoint_key_file = \"checkpoint.pem\"",
        );
        let config: AdapterConfig = toml::from_str(&pinned).unwrap();
        assert!(config.engine.checkpoint_key_file.is_some());
        let anchored = SAMPLE.replace(
            "state_file = \"state.json\"",
            "state_file = \"state.json\"\nanchor = \"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512\"",
        );
        let config: AdapterConfig = toml::from_str(&anchored).unwrap();
        assert!(config.anchor.is_some());
        let tagged = SAMPLE.replace("{ confirmations = 2 }", "{ tag = \"finalized\" }");
        let config: AdapterConfig = toml::from_str(&tagged).unwrap();
        assert_eq!(config.finality.label(), "finalized");
    }

    /// `load` parses the pinned key, relative to the file, and refuses one that is not a key.
    #[test]
    fn a_pinned_checkpoint_key_is_parsed_at_load() {
        let dir = std::env::temp_dir().join(format!("adapter-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
        let pem = key.to_public_key_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join("checkpoint.pem"), pem).unwrap();
        let text = SAMPLE.replace(
            "token_file = \"chain.jwt\"",
            "token_file = \"chain.jwt\"\ncheckpoint_key_file = \"checkpoint.pem\"",
        );
        std::fs::write(dir.join("adapter.toml"), &text).unwrap();
        let config = AdapterConfig::load(&dir.join("adapter.toml")).unwrap();
        assert_eq!(config.engine.checkpoint_key, Some(key));
        assert_eq!(
            config.engine.checkpoint_key_file,
            Some(dir.join("checkpoint.pem"))
        );

        std::fs::write(dir.join("checkpoint.pem"), "not a key").unwrap();
        let refused = AdapterConfig::load(&dir.join("adapter.toml")).unwrap_err();
        assert!(
            refused.contains("not an Ed25519 public key PEM"),
            "{refused}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mistakes_are_refused() {
        for bad in [
            SAMPLE.replace("{ confirmations = 2 }", "{ tag = \"latest\" }"),
            SAMPLE.replace("{ confirmations = 2 }", "{ confirmation = 2 }"),
            SAMPLE.replace("chain = \"anvil-1\"", "chain = \"Anvil 1\""),
            SAMPLE.replace(
                "[custody]",
                "[custody]\n\"US DOJ\" = \"0x70997970C51812dc3A010C7d01b50e0d17dc79C8\"",
            ),
            SAMPLE.replace("0x5FbDB2315678afecb367f032d93F642f64180aa3", "0x5FbD"),
            SAMPLE.replace("chain_id = 31337", "chain_id = 31337\ncolour = 1"),
            SAMPLE.replace("chain_id = 31337", "chain_id = 31337\nanchor = \"0xe7f1\""),
        ] {
            assert!(toml::from_str::<AdapterConfig>(&bad).is_err(), "{bad}");
        }
    }
}
