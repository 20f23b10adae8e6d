//! The adapter's view of the engine, over its HTTP API with a `chain` token: the decision feed
//! (long-poll), a target's absolute state with its holds, the observations endpoint, and the
//! signed checkpoints the adapter anchors on chain, with consistency proofs between them.

use std::time::Duration;

use serde::Deserialize;

use super::ChainError;
use crate::domain::merkle::Hash;
use crate::domain::observation::ObservationBatch;
use crate::domain::projection::Status;
use crate::domain::{AssetId, AssetState, ChainId, Hold, HolderAddress, TargetWire};

#[derive(Clone)]
pub struct Engine {
    client: reqwest::Client,
    base: String,
    token: String,
    chain: ChainId,
}

/// The part of a decision record the adapter needs: which target it touched.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedDecision {
    pub seq: u64,
    pub target: TargetWire,
    pub decided_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize)]
pub struct FeedPage {
    pub decisions: Vec<FeedDecision>,
    pub next_after: u64,
}

#[derive(Deserialize)]
struct TargetAnswer {
    state: VersionOnly,
    holds: Vec<Hold>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

/// The reconciler's verdict on one reported target.
#[derive(Debug, Clone, Deserialize)]
pub struct Verdict {
    pub asset: AssetId,
    #[serde(default)]
    pub holder: Option<HolderAddress>,
    pub status: Status,
}

/// A signed checkpoint of the log, as far as an anchor needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHead {
    pub tree_size: u64,
    pub root: Hash,
}

#[derive(Deserialize)]
struct CheckpointAnswer {
    tree_size: u64,
    root: String,
}

#[derive(Deserialize)]
struct ConsistencyAnswer {
    proof: Vec<String>,
}

/// A hash the audit API serves as 64 hex digits.
fn audit_hash(what: &str, text: &str) -> Result<Hash, ChainError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| ChainError::Other(format!("engine answer: {what} {text:?}: {e}")))?;
    Ok(out)
}

#[derive(Deserialize)]
struct ReportAnswer {
    results: Vec<Verdict>,
}

impl Engine {
    pub fn new(base: &str, token: String, chain: ChainId) -> Result<Self, ChainError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ChainError::Other(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token,
            chain,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ChainError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| ChainError::Other(format!("engine URL: {e}")))?;
        url.query_pairs_mut().extend_pairs(query);
        let response = self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ChainError::Other(format!("engine: {e}")))?;
        decode(response).await
    }

    /// This chain's state at the latest signed checkpoint, from its snapshot, every chunk
    /// verified with `key` on arrival.
    pub async fn snapshot(
        &self,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<crate::state_sync::Synced, crate::state_sync::SyncError> {
        crate::state_sync::snapshot(
            &self.client,
            &self.base,
            &self.token,
            &self.chain,
            key,
            None,
        )
        .await
    }

    /// This chain's decisions after `after`, waiting up to `wait` seconds for one.
    pub async fn decisions(&self, after: u64, wait: u64) -> Result<FeedPage, ChainError> {
        self.get(
            "/v1/decisions",
            &[
                ("after", after.to_string()),
                ("limit", "500".into()),
                ("wait", wait.min(30).to_string()),
                ("chain", self.chain.to_string()),
            ],
        )
        .await
    }

    /// An asset's current state: every active hold and its version.
    pub async fn asset(&self, asset: &AssetId) -> Result<AssetState, ChainError> {
        let answer: TargetAnswer = self
            .get(&format!("/v1/targets/{}/{}", self.chain, asset), &[])
            .await?;
        Ok(AssetState::from_parts(
            answer.holds,
            answer.state.version,
            0,
        ))
    }

    /// Reports observations; answers the status the engine gives each target.
    pub async fn report(&self, batch: &ObservationBatch) -> Result<Vec<Verdict>, ChainError> {
        let response = self
            .client
            .post(format!(
                "{}/v1/chains/{}/observations",
                self.base, self.chain
            ))
            .bearer_auth(&self.token)
            .json(batch)
            .send()
            .await
            .map_err(|e| ChainError::Other(format!("engine: {e}")))?;
        let answer: ReportAnswer = decode(response).await?;
        Ok(answer.results)
    }
}

impl Engine {
    /// The latest signed checkpoint; `None` while the engine has published none.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointHead>, ChainError> {
        let response = self
            .client
            .get(format!("{}/v1/audit/checkpoints/latest", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ChainError::Other(format!("engine: {e}")))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer: CheckpointAnswer = decode(response).await?;
        Ok(Some(CheckpointHead {
            tree_size: answer.tree_size,
            root: audit_hash("checkpoint root", &answer.root)?,
        }))
    }

    /// The engine's RFC 6962 proof that the tree of `from` records is a prefix of the tree of
    /// `to`: checked by the caller against roots it holds, never trusted.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, ChainError> {
        let answer: ConsistencyAnswer = self
            .get(
                "/v1/audit/proofs/consistency",
                &[("from", from.to_string()), ("to", to.to_string())],
            )
            .await?;
        answer
            .proof
            .iter()
            .map(|h| audit_hash("proof hash", h))
            .collect()
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ChainError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ChainError::Other(format!("engine: {e}")))?;
    if !status.is_success() {
        return Err(ChainError::Other(format!(
            "engine answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ChainError::Other(format!("engine answer undecodable: {e}")))
}
