//! Verifiable state over HTTP: a target's state with its proofs against a signed checkpoint's
//! state root, and snapshots of the state map in chunks, each verifiable on arrival
//! (docs/audit.md, "The state map").
//!
//! Both are served from the notary's state maps, recomputed from the records and kept for the
//! checkpoints this replica verified since it started; an older checkpoint is answered
//! `state-not-retained`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::audit::CheckpointView;
use super::extract::ApiQuery;
use super::problem::{ApiError, Problem};
use super::targets::may_read_chain;
use super::AppState;
use crate::auth::Principal;
use crate::domain::ledger::TargetState;
use crate::domain::state_leaves::{
    chunk_depth, chunk_prefix, in_chunk, target_key, verify_chunk, verify_leaf, Leaf, LeafValue,
};
use crate::domain::state_map::{Proof, StateMap};
use crate::domain::{AssetId, AssetKey, AssetState, ChainId, Hold, HolderAddress};
use crate::storage::audit::{self as store, Checkpoint};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    /// One holder's balance; absent: the asset as a whole.
    pub holder: Option<String>,
    /// The checkpoint to prove against (default: the latest).
    pub tree_size: Option<u64>,
}

/// One leaf's proof.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeafProof {
    /// Hex leaf key (docs/audit.md: SHA-256 of the target's encoding).
    pub key: String,
    /// Whether the leaf is in the map; `false`: the proof is of its absence.
    pub present: bool,
    /// Base64 of the proof's bytes (docs/audit.md, "Proof bytes").
    pub proof: String,
}

/// A target's state and the proofs that it is the state at a signed checkpoint.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetProof {
    pub chain: ChainId,
    pub asset: AssetId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    /// The state as of the checkpoint: level, frozen, version, the covering holds' order ids.
    pub state: TargetState,
    /// The asset's last fencing token (committed in the asset leaf).
    pub last_fencing_token: u64,
    /// The holds behind the state: the asset-wide ones (in the asset leaf) and, with a holder,
    /// its own (in the holder leaf).
    pub holds: Vec<Hold>,
    /// The asset leaf: version, last fencing token and asset-wide holds.
    pub asset_proof: LeafProof,
    /// With a holder: its leaf, the holds placed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_proof: Option<LeafProof>,
    /// The signed checkpoint whose `state_root` the proofs lead to.
    pub checkpoint: CheckpointView,
}

/// The checkpoint asked for (or the latest) and the state map at it.
async fn state_at(
    state: &AppState,
    tree_size: Option<u64>,
) -> Result<(Checkpoint, StateMap<Leaf>), ApiError> {
    let size = match tree_size {
        Some(size) => size,
        None => {
            store::latest_checkpoint(&state.pool)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(
                        "a checkpoint (none is signed yet: POST /v1/audit/checkpoints)".into(),
                    )
                })?
                .tree_size
        }
    };
    let (cp, map) = state.notary.state_at(&state.pool, size).await?;
    if cp.state_root.is_none() {
        return Err(ApiError::StateNotRetained(format!(
            "the checkpoint of tree size {size} was signed before the state map (text v1): it \
             has no state root"
        )));
    }
    Ok((cp, map))
}

fn proof_of(map: &StateMap<Leaf>, key: &[u8; 32]) -> LeafProof {
    LeafProof {
        key: hex::encode(key),
        present: map.get(key).is_some(),
        proof: STANDARD.encode(map.prove(key).to_bytes()),
    }
}

/// A target's state at a signed checkpoint, with the proofs (presence or absence) of its
/// leaves against the checkpoint's state root.
#[utoipa::path(
    get, path = "/v1/targets/{chain}/{asset}/proof", tag = "targets",
    params(("chain" = ChainId, Path), ("asset" = AssetId, Path), ProofQuery),
    responses(
        (status = 200, body = TargetProof),
        (status = 404, description = "No such checkpoint", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The state at that checkpoint is not kept by this replica (`state-not-retained`): ask for a later checkpoint", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn proof(
    State(state): State<AppState>,
    principal: Principal,
    Path((chain, asset)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ProofQuery>,
) -> Result<Json<TargetProof>, ApiError> {
    may_read_chain(&principal, &chain)?;
    let key = super::targets::asset_key(&chain, &asset)?;
    let holder = query
        .holder
        .map(HolderAddress::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let (cp, map) = state_at(&state, query.tree_size).await?;
    Ok(Json(target_proof(&map, cp, key, holder)))
}

/// The proof document of one target in `map`.
pub fn target_proof(
    map: &StateMap<Leaf>,
    cp: Checkpoint,
    key: AssetKey,
    holder: Option<HolderAddress>,
) -> TargetProof {
    let asset_key = target_key(&key, None);
    let asset_leaf = map.get(&asset_key).and_then(|(_, v)| v.clone());
    let holder_leaf = holder.as_ref().and_then(|h| {
        map.get(&target_key(&key, Some(h)))
            .and_then(|(_, v)| v.clone())
    });
    let holds: Vec<Hold> = asset_leaf
        .iter()
        .chain(holder_leaf.iter())
        .flat_map(|leaf| leaf.holds.values().map(|h| h.as_ref().clone()))
        .collect();
    let (version, token) = asset_leaf
        .as_ref()
        .map_or((0, 0), |a| (a.version, a.last_fencing_token));
    let as_state = AssetState::from_parts(holds.iter().cloned(), version, token);
    TargetProof {
        state: TargetState::of(&as_state, holder.as_ref()),
        last_fencing_token: token,
        holds,
        asset_proof: proof_of(map, &asset_key),
        holder_proof: holder
            .as_ref()
            .map(|h| proof_of(map, &target_key(&key, Some(h)))),
        checkpoint: cp.into(),
        chain: key.chain,
        asset: key.asset,
        holder,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// The chain whose targets the chunk gives in full.
    pub chain: String,
    /// The checkpoint (default: the latest).
    pub tree_size: Option<u64>,
    /// Which chunk, from 0 to `chunks - 1` (default 0).
    pub chunk: Option<u64>,
}

/// One leaf of a chunk: a leaf of the asked chain in full, any other by its hashes alone.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLeaf {
    /// Hex leaf key.
    pub key: String,
    /// Hex SHA-256 of the leaf's value bytes.
    pub value_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<AssetId>,
    /// With `asset`: absent for the asset leaf, the holder for a holder leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    /// The asset leaf's version and last fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fencing_token: Option<u64>,
    /// With `asset`: the holds the leaf commits to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<Vec<Hold>>,
}

/// One chunk of a snapshot: every leaf of a subtree of the state map and the siblings from
/// the root down to it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotChunk {
    pub chain: ChainId,
    /// The key bits that split the snapshot into `chunks = 2^depth` chunks.
    pub depth: u32,
    pub chunk: u64,
    pub chunks: u64,
    /// Hex siblings from the root down to the chunk's subtree (fewer than `depth` when a lone
    /// leaf or nothing stands higher up for it).
    pub siblings: Vec<String>,
    /// The subtree's leaves in key order; a leaf outside the chunk's prefix may be among them
    /// (it then belongs to another chunk, and is given there too).
    pub leaves: Vec<SnapshotLeaf>,
    /// The next chunk to ask for; absent after the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_chunk: Option<u64>,
    pub checkpoint: CheckpointView,
}

/// A chunk of the state of every target of a chain at a signed checkpoint, verifiable on
/// arrival against its state root.
#[utoipa::path(
    get, path = "/v1/snapshots", tag = "targets",
    params(SnapshotQuery),
    responses(
        (status = 200, body = SnapshotChunk),
        (status = 404, description = "No such checkpoint or chunk", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The state at that checkpoint is not kept by this replica (`state-not-retained`): ask for a later checkpoint", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn snapshot(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<SnapshotQuery>,
) -> Result<Json<SnapshotChunk>, ApiError> {
    may_read_chain(&principal, &query.chain)?;
    let chain = ChainId::parse(query.chain).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let (cp, map) = state_at(&state, query.tree_size).await?;
    let chunk = query.chunk.unwrap_or(0);
    snapshot_chunk(&map, cp, chain, chunk)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("chunk {chunk} of this snapshot")))
}

/// Chunk `chunk` of the snapshot of `chain` in `map`; `None` past the last chunk.
pub fn snapshot_chunk(
    map: &StateMap<Leaf>,
    cp: Checkpoint,
    chain: ChainId,
    chunk: u64,
) -> Option<SnapshotChunk> {
    let depth = chunk_depth(map.len());
    let chunks = 1u64 << depth;
    if chunk >= chunks {
        return None;
    }
    let (_, siblings, leaves) = map.subtree(&chunk_prefix(depth, chunk), depth as usize);
    let leaves = leaves
        .into_iter()
        .map(|(key, value_hash, value)| {
            let full = value
                .as_ref()
                .filter(|v| v.asset.chain == chain && in_chunk(key, depth, chunk));
            SnapshotLeaf {
                key: hex::encode(key),
                value_hash: hex::encode(value_hash),
                asset: full.map(|v| v.asset.asset.clone()),
                holder: full.and_then(|v| v.holder.clone()),
                version: full.filter(|v| v.holder.is_none()).map(|v| v.version),
                last_fencing_token: full
                    .filter(|v| v.holder.is_none())
                    .map(|v| v.last_fencing_token),
                holds: full.map(|v| holds_of(&v.holds)),
            }
        })
        .collect();
    Some(SnapshotChunk {
        chain,
        depth,
        chunk,
        chunks,
        siblings: siblings.iter().map(hex::encode).collect(),
        leaves,
        next_chunk: (chunk + 1 < chunks).then_some(chunk + 1),
        checkpoint: cp.into(),
    })
}

fn holds_of(holds: &BTreeMap<crate::domain::OrderId, Arc<Hold>>) -> Vec<Hold> {
    holds.values().map(|h| h.as_ref().clone()).collect()
}

fn unhex(text: &str, what: &str) -> Result<[u8; 32], String> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{what} {text:?} is not 64 hex digits"))
}

impl TargetProof {
    /// The leaf this document says the target has: the asset leaf from the asset-wide holds,
    /// version and last fencing token; the holder leaf from the holder's own holds. `None`
    /// where the document says the leaf is absent.
    fn claimed_leaf(&self, holder_leaf: bool) -> Option<LeafValue> {
        let holder = if holder_leaf {
            self.holder.clone()
        } else {
            None
        };
        let present = if holder_leaf {
            self.holder_proof.as_ref().is_some_and(|p| p.present)
        } else {
            self.asset_proof.present
        };
        present.then(|| LeafValue {
            asset: AssetKey {
                chain: self.chain.clone(),
                asset: self.asset.clone(),
            },
            holds: self
                .holds
                .iter()
                .filter(|h| h.target.holder == holder)
                .map(|h| (h.order_id, Arc::new(h.clone())))
                .collect(),
            version: if holder_leaf { 0 } else { self.state.version },
            last_fencing_token: if holder_leaf {
                0
            } else {
                self.last_fencing_token
            },
            holder,
        })
    }

    /// Checks the document against `state_root` (a signed checkpoint's, checked by the
    /// caller): each leaf's proof, the holds and version it gives, and that the state it
    /// states is the one those holds make. Returns the proofs' sizes in bytes.
    pub fn verify(&self, state_root: &[u8; 32]) -> Result<Vec<usize>, String> {
        let asset = AssetKey {
            chain: self.chain.clone(),
            asset: self.asset.clone(),
        };
        if let Some(h) = self.holds.iter().find(|h| {
            h.target.asset != asset || (h.target.holder.is_some() && h.target.holder != self.holder)
        }) {
            return Err(format!("hold {} is not on this target", h.order_id));
        }
        let mut leaves = vec![(&self.asset_proof, false)];
        match (&self.holder, &self.holder_proof) {
            (Some(_), Some(p)) => leaves.push((p, true)),
            (None, None) => {}
            _ => return Err("a holder needs a holder proof, and only a holder".into()),
        }
        let mut sizes = Vec::new();
        for (p, holder_leaf) in leaves {
            let key = target_key(
                &asset,
                if holder_leaf {
                    self.holder.as_ref()
                } else {
                    None
                },
            );
            if p.key != hex::encode(key) {
                return Err(format!(
                    "the proof is for key {}, the target's is {}",
                    p.key,
                    hex::encode(key)
                ));
            }
            let bytes = STANDARD
                .decode(&p.proof)
                .map_err(|e| format!("the proof is not base64: {e}"))?;
            sizes.push(bytes.len());
            let proof = Proof::from_bytes(&bytes).map_err(|e| e.to_string())?;
            let which = if holder_leaf { "holder" } else { "asset" };
            verify_leaf(
                state_root,
                &key,
                &proof,
                self.claimed_leaf(holder_leaf).as_ref(),
            )
            .map_err(|e| format!("the {which} leaf: {e}"))?;
        }
        if !self.asset_proof.present && (self.state.version != 0 || self.last_fencing_token != 0) {
            return Err("an absent asset leaf has version 0".into());
        }
        let made = AssetState::from_parts(
            self.holds.iter().cloned(),
            self.state.version,
            self.last_fencing_token,
        );
        let recomputed = TargetState::of(&made, self.holder.as_ref());
        if recomputed != self.state {
            return Err(format!(
                "the state stated ({:?}) is not the one its holds make ({recomputed:?})",
                self.state
            ));
        }
        Ok(sizes)
    }
}

impl SnapshotChunk {
    /// Checks the chunk against `state_root` (a signed checkpoint's, checked by the caller);
    /// returns the chain's leaves it holds.
    pub fn verify(&self, state_root: &[u8; 32]) -> Result<Vec<LeafValue>, String> {
        if self.chunks != 1u64 << self.depth.min(63) || self.chunk >= self.chunks {
            return Err(format!(
                "chunk {} of {} at depth {}",
                self.chunk, self.chunks, self.depth
            ));
        }
        let siblings = self
            .siblings
            .iter()
            .map(|s| unhex(s, "a sibling"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut leaves = Vec::with_capacity(self.leaves.len());
        for l in &self.leaves {
            let value = l.asset.as_ref().map(|asset| LeafValue {
                asset: AssetKey {
                    chain: self.chain.clone(),
                    asset: asset.clone(),
                },
                holder: l.holder.clone(),
                holds: l
                    .holds
                    .iter()
                    .flatten()
                    .map(|h| (h.order_id, Arc::new(h.clone())))
                    .collect(),
                version: l.version.unwrap_or(0),
                last_fencing_token: l.last_fencing_token.unwrap_or(0),
            });
            leaves.push((
                unhex(&l.key, "a key")?,
                unhex(&l.value_hash, "a value hash")?,
                value,
            ));
        }
        verify_chunk(state_root, self.depth, self.chunk, &siblings, leaves)
    }
}
