//! State sync: a new chain adapter (or a replica's cache) starts from a snapshot at a
//! checkpoint it verified, then reads the decision feed after it, and ends in the state a
//! reader of the whole feed has (docs/audit.md, "State sync").
//!
//! [`Synced::from_chunks`] and [`Synced::apply`] are the pure part; [`sync`] fetches over HTTP
//! (`GET /v1/snapshots`, then `GET /v1/decisions`), verifying each chunk on arrival.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::api::audit::CheckpointView;
use crate::api::state::SnapshotChunk;
use crate::audit::signer::verify_checkpoint;
use crate::domain::ledger::DecisionRecord;
use crate::domain::{AssetKey, AssetState, ChainId, Hold};
use crate::storage::audit::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// What the server sent does not verify: nothing of it is used.
    #[error("the snapshot does not verify: {0}")]
    Invalid(String),
    /// The server has no snapshot to give: no checkpoint is signed yet, or the one asked for
    /// was signed before the state map or is no longer kept (404 or 410).
    #[error("no snapshot: {0}")]
    NotAvailable(String),
    #[error("the server: {0}")]
    Http(String),
}

/// A chain's state, as of `seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub chain: Option<ChainId>,
    /// The records applied: through this seq.
    pub seq: u64,
    pub states: BTreeMap<AssetKey, AssetState>,
}

/// The checkpoint a chunk carries, if `key` signed it.
fn signed(view: &CheckpointView, key: &VerifyingKey) -> Result<Checkpoint, SyncError> {
    let invalid = |what: &str| SyncError::Invalid(format!("the checkpoint's {what}"));
    let hash = |s: &str| -> Result<[u8; 32], SyncError> {
        hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("hashes"))
    };
    use base64::Engine;
    let cp = Checkpoint {
        tree_size: view.tree_size,
        root: hash(&view.root)?,
        signed_at: view.signed_at,
        key_id: view.key_id.clone(),
        signature: base64::engine::general_purpose::STANDARD
            .decode(&view.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("signature"))?,
        state_root: view.state_root.as_deref().map(hash).transpose()?,
    };
    if !verify_checkpoint(key, &cp) {
        return Err(invalid("signature (it does not verify with the key given)"));
    }
    Ok(cp)
}

/// A snapshot being put together chunk by chunk, each verified once, as it is added.
#[derive(Default)]
struct Assembly {
    chain: Option<ChainId>,
    checkpoint: Option<Checkpoint>,
    /// Chunks added so far, and how many the first said there are.
    seen: u64,
    chunks: u64,
    parts: BTreeMap<AssetKey, (u64, u64, Vec<Hold>)>,
}

impl Assembly {
    /// Verifies `chunk` (its checkpoint with `key`, its leaves against the checkpoint's state
    /// root, its place among the chunks before it) and keeps its leaves.
    fn add(&mut self, chunk: &SnapshotChunk, key: &VerifyingKey) -> Result<(), SyncError> {
        let cp = signed(&chunk.checkpoint, key)?;
        match &self.checkpoint {
            Some(f) if *f != cp => {
                return Err(SyncError::Invalid(
                    "the chunks are of different checkpoints".into(),
                ))
            }
            Some(_) => {}
            None => {
                self.checkpoint = Some(cp.clone());
                self.chunks = chunk.chunks;
            }
        }
        if self.chain.get_or_insert_with(|| chunk.chain.clone()) != &chunk.chain {
            return Err(SyncError::Invalid(
                "the chunks are of different chains".into(),
            ));
        }
        let root = cp
            .state_root
            .ok_or_else(|| SyncError::Invalid("the checkpoint signs no state root".into()))?;
        if chunk.chunk != self.seen || chunk.chunks != self.chunks {
            return Err(SyncError::Invalid(format!(
                "chunk {} of {} where chunk {} of {} was due",
                chunk.chunk, chunk.chunks, self.seen, self.chunks
            )));
        }
        for leaf in chunk.verify(&root).map_err(SyncError::Invalid)? {
            let entry = self.parts.entry(leaf.asset.clone()).or_default();
            if leaf.holder.is_none() {
                entry.0 = leaf.version;
                entry.1 = leaf.last_fencing_token;
            }
            entry
                .2
                .extend(leaf.holds.values().map(|h| h.as_ref().clone()));
        }
        self.seen += 1;
        Ok(())
    }

    /// The state, once every chunk the snapshot has was added.
    fn finish(self) -> Result<Synced, SyncError> {
        let cp = self
            .checkpoint
            .ok_or_else(|| SyncError::Invalid("no chunk".into()))?;
        if self.seen != self.chunks {
            return Err(SyncError::Invalid(format!(
                "{} of the snapshot's {} chunks",
                self.seen, self.chunks
            )));
        }
        Ok(Synced {
            chain: self.chain,
            seq: cp.tree_size,
            states: self
                .parts
                .into_iter()
                .map(|(asset, (version, token, holds))| {
                    (asset, AssetState::from_parts(holds, version, token))
                })
                .collect(),
        })
    }
}

impl Synced {
    /// The state of the chain in `chunks` (every chunk of one snapshot), each verified against
    /// its checkpoint's state root, and the checkpoint against `key`.
    pub fn from_chunks(chunks: &[SnapshotChunk], key: &VerifyingKey) -> Result<Self, SyncError> {
        let mut assembly = Assembly::default();
        for chunk in chunks {
            assembly.add(chunk, key)?;
        }
        assembly.finish()
    }

    /// Applies the feed's decisions after `self.seq` (in seq order) on this chain's assets.
    pub fn apply<'a>(&mut self, records: impl IntoIterator<Item = &'a DecisionRecord>) {
        for record in records {
            if record.seq <= self.seq {
                continue;
            }
            self.seq = record.seq;
            if self
                .chain
                .as_ref()
                .is_some_and(|c| *c != record.target.asset.chain)
                || record.effects.is_empty()
            {
                continue;
            }
            self.states
                .entry(record.target.asset.clone())
                .or_default()
                .apply(&record.effects);
        }
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
    token: &str,
) -> Result<T, SyncError> {
    let response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| SyncError::Http(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let what = format!("{url}: {status}: {body}");
        return Err(match status {
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => {
                SyncError::NotAvailable(what)
            }
            _ => SyncError::Http(what),
        });
    }
    response
        .json()
        .await
        .map_err(|e| SyncError::Http(format!("{url}: {e}")))
}

/// Syncs `chain` from the server at `base` (e.g. `http://127.0.0.1:8080`) with `token` (a
/// chain, auditor or admin token): the [`snapshot`] at the latest checkpoint (or `tree_size`),
/// then the feed after that checkpoint to its current end.
pub async fn sync(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chain: &ChainId,
    key: &VerifyingKey,
    tree_size: Option<u64>,
) -> Result<Synced, SyncError> {
    let synced = snapshot(client, base, token, chain, key, tree_size).await?;
    tail(client, base, token, chain, synced).await
}

/// The state of `chain` at the latest checkpoint (or `tree_size`): every chunk of its
/// snapshot, each verified on arrival with `key` before the next is asked for, all at the
/// first chunk's checkpoint. `seq` is that checkpoint's tree size: the feed after it is what a
/// reader applies next.
pub async fn snapshot(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chain: &ChainId,
    key: &VerifyingKey,
    tree_size: Option<u64>,
) -> Result<Synced, SyncError> {
    let at = tree_size
        .map(|s| format!("&tree_size={s}"))
        .unwrap_or_default();
    let first: SnapshotChunk = get(
        client,
        format!("{base}/v1/snapshots?chain={chain}&chunk=0{at}"),
        token,
    )
    .await?;
    let mut assembly = Assembly::default();
    assembly.add(&first, key)?;
    // The rest at the first chunk's checkpoint, even if a newer one is signed meanwhile.
    let pinned = first.checkpoint.tree_size;
    let mut next = first.next_chunk;
    while let Some(n) = next {
        let chunk: SnapshotChunk = get(
            client,
            format!("{base}/v1/snapshots?chain={chain}&chunk={n}&tree_size={pinned}"),
            token,
        )
        .await?;
        assembly.add(&chunk, key)?;
        next = chunk.next_chunk;
    }
    assembly.finish()
}

/// `synced`, then the feed after it to its current end.
async fn tail(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    chain: &ChainId,
    mut synced: Synced,
) -> Result<Synced, SyncError> {
    #[derive(serde::Deserialize)]
    struct Page {
        decisions: Vec<DecisionRecord>,
        next_after: u64,
    }
    loop {
        let page: Page = get(
            client,
            format!(
                "{base}/v1/decisions?chain={chain}&after={}&limit=1000",
                synced.seq
            ),
            token,
        )
        .await?;
        if page.decisions.is_empty() {
            return Ok(synced);
        }
        synced.apply(&page.decisions);
        synced.seq = synced.seq.max(page.next_after);
    }
}
