//! The adapter's view of the engine, over its HTTP API with a `chain` token: the decision feed
//! (long-poll), a target's absolute state with its holds, and the observations endpoint.

use std::time::Duration;

use serde::Deserialize;

use super::ChainError;
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
