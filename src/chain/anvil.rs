//! A local anvil node (from the repo's `chain/` npm folder) on a free port, killed on drop.
//! Tests, benchmarks and the walk-through use it; the adapter itself only needs an RPC URL.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;

use super::ChainError;

/// The keys anvil gives its default accounts (from its well-known test mnemonic).
pub const DEV_KEYS: [&str; 10] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdf4e5f6f4ca",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// Anvil's default account `i` (0 to 9).
pub fn dev_key(i: usize) -> PrivateKeySigner {
    DEV_KEYS[i % DEV_KEYS.len()]
        .parse()
        .unwrap_or_else(|_| PrivateKeySigner::random())
}

/// The anvil binary installed by `npm ci` in `chain/`, unless `ANVIL` names another.
///
/// The platform package's binary itself, not `.bin/anvil`: that is a node wrapper which spawns
/// the binary as its own child, so killing the wrapper would leave the node running.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ANVIL") {
        return PathBuf::from(path);
    }
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("chain/node_modules");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let native = modules.join(format!(
        "@foundry-rs/anvil-{}-{arch}/bin/anvil",
        std::env::consts::OS
    ));
    if native.exists() {
        native
    } else {
        modules.join(".bin/anvil")
    }
}

/// A running anvil process.
pub struct Anvil {
    child: Child,
    pub port: u16,
    pub chain_id: u64,
}

impl Anvil {
    /// Starts anvil on a free port with chain id `chain_id`; `block_time` in seconds, or
    /// mining on every transaction when `None`.
    pub async fn start(chain_id: u64, block_time: Option<u64>) -> Result<Self, ChainError> {
        let port = free_port()?;
        Self::start_on(port, chain_id, block_time).await
    }

    /// Starts anvil on `port` (to bring a node back where its adapter expects it).
    pub async fn start_on(
        port: u16,
        chain_id: u64,
        block_time: Option<u64>,
    ) -> Result<Self, ChainError> {
        Self::start_with(port, chain_id, block_time, &[]).await
    }

    /// [`Anvil::start_on`] with more of anvil's own arguments, e.g. `--slots-in-an-epoch 1` so
    /// that its `finalized` block is two blocks behind the head instead of 64.
    pub async fn start_with(
        port: u16,
        chain_id: u64,
        block_time: Option<u64>,
        extra: &[&str],
    ) -> Result<Self, ChainError> {
        let mut cmd = Command::new(binary());
        cmd.args(extra);
        cmd.args([
            "--port",
            &port.to_string(),
            "--chain-id",
            &chain_id.to_string(),
        ])
        .args(["--host", "127.0.0.1", "--silent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(secs) = block_time {
            cmd.args(["--block-time", &secs.to_string()]);
        }
        let child = cmd.spawn().map_err(|e| {
            ChainError::Other(format!(
                "cannot start anvil ({}): {e}; run `npm ci` in chain/",
                binary().display()
            ))
        })?;
        let anvil = Self {
            child,
            port,
            chain_id,
        };
        anvil.wait_ready().await?;
        Ok(anvil)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) -> Result<(), ChainError> {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ChainError::Other(format!(
            "anvil did not listen on port {} within 10 s",
            self.port
        )))
    }

    /// Kills the node (a chain that goes down).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, ChainError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ChainError::Other(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ChainError::Other(format!("no free port: {e}")))
}
