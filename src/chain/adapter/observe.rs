//! Reading the token: every target at a block, in JSON-RPC batches; the final block by the
//! chain's rule; the observations reported to the engine once what was sent is final.

use std::collections::{BTreeMap, BTreeSet};

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use alloy::rpc::types::BlockId;
use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use super::{
    parse_address, Adapter, TargetKey, BATCHES_IN_FLIGHT, HOLDERS_PER_BATCH, REPORT_CHUNK,
};
use crate::chain::config::{Finality, FinalityTag};
use crate::chain::token;
use crate::chain::ChainError;
use crate::domain::observation::{self, BlockRef, Observation, ObservationBatch};
use crate::domain::projection::{self, Decided, Observed, Status};
use crate::domain::AssetId;

impl Adapter {
    async fn read(&self, key: &TargetKey, block: BlockId) -> Result<Observed, ChainError> {
        let token = self.token(&key.0)?;
        match &key.1 {
            None => token::observe_asset(&self.conn, token, block).await,
            Some(holder) => {
                token::observe_holder(&self.conn, token, parse_address(holder)?, block).await
            }
        }
    }

    /// Reads `keys` at `block`, in their order: holders of one asset in JSON-RPC batches of
    /// `HOLDERS_PER_BATCH`, `BATCHES_IN_FLIGHT` at a time; asset-wide targets one call each.
    pub(super) async fn read_all(
        &self,
        keys: &[TargetKey],
        block: BlockId,
    ) -> Result<Vec<Observed>, ChainError> {
        let mut out: Vec<Option<Observed>> = vec![None; keys.len()];
        let mut holders: BTreeMap<&AssetId, Vec<(usize, Address)>> = BTreeMap::new();
        let mut assets = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match &key.1 {
                Some(h) => holders
                    .entry(&key.0)
                    .or_default()
                    .push((i, parse_address(h)?)),
                None => assets.push(i),
            }
        }
        for i in assets {
            out[i] = Some(self.read(&keys[i], block).await?);
        }
        let mut jobs = Vec::new();
        for (asset, list) in &holders {
            let token = self.token(asset)?;
            for chunk in list.chunks(HOLDERS_PER_BATCH) {
                jobs.push((token, chunk));
            }
        }
        let reads: Vec<super::Pending<'_, Vec<Observed>>> = jobs
            .iter()
            .map(|(token, chunk)| {
                let addresses: Vec<Address> = chunk.iter().map(|(_, a)| *a).collect();
                let conn = &self.conn;
                let token = *token;
                Box::pin(
                    async move { token::observe_holders(conn, token, &addresses, block).await },
                ) as _
            })
            .collect();
        // A steady `BATCHES_IN_FLIGHT` requests at the node, not waves that wait for their
        // slowest member.
        let answers: Vec<Vec<Observed>> = futures::stream::iter(reads)
            .buffered(BATCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        for ((_, chunk), answer) in jobs.iter().zip(answers) {
            for ((i, _), seen) in chunk.iter().zip(answer) {
                out[*i] = Some(seen);
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| ChainError::Other("a target was not read".into())))
            .collect()
    }

    /// The final block by the chain's rule.
    async fn final_block(&self) -> Result<(u64, B256), ChainError> {
        let tag = match self.config.finality {
            Finality::Confirmations { confirmations } => {
                let head = self
                    .conn
                    .provider
                    .get_block_number()
                    .await
                    .map_err(ChainError::rpc)?;
                BlockNumberOrTag::Number(head.saturating_sub(confirmations))
            }
            Finality::Tag {
                tag: FinalityTag::Finalized,
            } => BlockNumberOrTag::Finalized,
            Finality::Tag {
                tag: FinalityTag::Safe,
            } => BlockNumberOrTag::Safe,
        };
        let block = self
            .conn
            .provider
            .get_block_by_number(tag)
            .await
            .map_err(ChainError::rpc)?
            .ok_or_else(|| ChainError::Other(format!("the node has no {tag} block")))?;
        Ok((block.header.number, block.header.hash))
    }

    /// The hash of the canonical block at `number`, if the node has one.
    async fn hash_at(&self, number: u64) -> Result<Option<B256>, ChainError> {
        Ok(self
            .conn
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(ChainError::rpc)?
            .map(|b| b.header.hash))
    }

    /// Reports the targets whose transactions are final, and the resync's, read at the final
    /// block; re-applies what the chain does not show.
    pub(super) async fn observe(&mut self) -> Result<(), ChainError> {
        let (number, hash) = self.final_block().await?;
        if let Some((last_number, last_hash)) = self.durable.last_final.clone() {
            if number < last_number {
                // A node that is behind is a health fault: it must not look like a reorg.
                return Err(ChainError::Other(format!(
                    "the node's final block {number} is behind {last_number}, seen before"
                )));
            }
            let now_at_last = self.hash_at(last_number).await?;
            if now_at_last.map(|h| h.to_string()) != Some(last_hash.clone()) {
                tracing::warn!(chain = %self.config.chain, block = last_number, "a final block was reorged; re-reading every target");
                metrics::counter!("adapter_reorgs_total", "chain" => self.config.chain.to_string())
                    .increment(1);
                self.dirty.extend(self.known_targets());
            }
        }
        // A target with transactions in flight is observed once they landed.
        let ready: Vec<TargetKey> = self
            .awaiting
            .iter()
            .filter(|(k, a)| a.at_block <= number && !self.flights.contains_key(*k))
            .map(|(k, _)| k.clone())
            .chain(
                self.resync
                    .iter()
                    .filter(|k| !self.awaiting.contains_key(*k) && !self.flights.contains_key(*k))
                    .cloned(),
            )
            .collect();
        if ready.is_empty() {
            self.durable.last_final = Some((number, hash.to_string()));
            return Ok(());
        }
        for key in &ready {
            if self.awaiting.contains_key(key) {
                self.stages.finalized(key);
            }
        }
        let states = self.decided_states(ready.iter()).await?;
        let at = BlockId::hash(hash);
        let reading = Instant::now();
        let observed = self.read_all(&ready, at).await?;
        self.timings.read = reading.elapsed();
        let block = BlockRef {
            number,
            hash: hash
                .to_string()
                .parse()
                .map_err(|e| ChainError::Other(format!("block hash: {e}")))?,
        };
        let mut reports = Vec::with_capacity(ready.len());
        let mut differs: BTreeSet<TargetKey> = BTreeSet::new();
        for (key, seen) in ready.iter().zip(observed) {
            let Some(state) = states.get(&key.0) else {
                continue;
            };
            let awaiting = self.awaiting.get(key);
            let version = awaiting.map_or(state.version(), |a| a.version);
            let decided: Decided = projection::decide(state, key.1.as_ref());
            if !projection::differences(&decided, &seen).is_empty() {
                differs.insert(key.clone());
            }
            let failure = match self.failures.get(key) {
                Some((v, why)) if *v == version && differs.contains(key) => Some(why.clone()),
                _ => None,
            };
            reports.push(Observation {
                asset: key.0.clone(),
                holder: key.1.clone(),
                observed: seen,
                block: block.clone(),
                finality: observation::Finality::Final,
                version,
                tx_hashes: awaiting.map(|a| a.tx_hashes.clone()).unwrap_or_default(),
                failure,
            });
        }
        let reporting = Instant::now();
        let mut verdicts = Vec::new();
        for chunk in reports.chunks(REPORT_CHUNK) {
            verdicts.extend(
                self.engine
                    .report(&ObservationBatch {
                        observations: chunk.to_vec(),
                    })
                    .await?,
            );
        }
        self.timings.report = reporting.elapsed();
        for v in verdicts {
            if v.status == Status::Escalated {
                self.escalated.insert((v.asset, v.holder));
            }
        }
        for key in ready {
            let from_resync = !self.awaiting.contains_key(&key);
            if !from_resync && !differs.contains(&key) {
                self.stages.reported(&self.config.chain, &key);
            } else if self.failures.contains_key(&key) || self.escalated.contains(&key) {
                self.stages.forget(&key);
            }
            self.awaiting.remove(&key);
            self.resync.remove(&key);
            // A failure is retried by the next resync, not in a tight loop.
            let failed_now = !from_resync && self.failures.contains_key(&key);
            if differs.contains(&key) && !failed_now && !self.escalated.contains(&key) {
                self.dirty.insert(key);
            }
        }
        self.durable.last_final = Some((number, hash.to_string()));
        Ok(())
    }
}
