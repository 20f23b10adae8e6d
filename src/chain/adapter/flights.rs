//! Transactions in flight: their receipts looked for when the head moves, what the node forgot
//! sent again, what is stuck replaced with a higher fee, and a plan finished once every one of
//! its transactions landed.

use std::collections::{BTreeSet, HashMap};

use tokio::time::Instant;

use super::{Adapter, Awaiting, TargetKey, FEE_BUMP_PERCENT};
use crate::chain::sender::{self, Broadcast, Fees, Seen, Signed};
use crate::chain::token;
use crate::chain::ChainError;
use crate::domain::OrderId;

/// One target's plan while its transactions are in flight. The target is not planned again
/// until they all landed: a read of the chain meanwhile would not show them, and a plan made
/// from it would send the difference a second time.
#[derive(Debug)]
pub(super) struct Flight {
    pub(super) version: u64,
    /// The head when the plan read the chain.
    pub(super) head: u64,
    pub(super) txs: Vec<Flying>,
    pub(super) failure: Option<String>,
    /// The decisions this plan applies: done, and passed by the cursor, once it landed.
    pub(super) seqs: Vec<u64>,
}

#[derive(Debug)]
pub(super) struct Flying {
    /// Every signed copy, the first and its fee-bumped replacements (same nonce): at most one
    /// of them is ever mined.
    pub(super) copies: Vec<Signed>,
    pub(super) call: &'static str,
    pub(super) seizure: Option<OrderId>,
    /// When the latest copy was sent.
    pub(super) sent_at: Instant,
    pub(super) fate: Landing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landing {
    InFlight,
    Mined {
        block: u64,
        success: bool,
        copy: usize,
    },
    /// The node refused it for good: not in effect, the target is planned again.
    Lost,
}

impl Adapter {
    /// Looks for the receipts of everything in flight; sends again what the node forgot,
    /// replaces what is stuck, fills a nonce a reorg emptied; finishes the plans that landed.
    pub(super) async fn land(&mut self) -> Result<(), ChainError> {
        let mut hashes = Vec::new();
        let mut at = Vec::new();
        for (key, flight) in &self.flights {
            for (i, tx) in flight.txs.iter().enumerate() {
                if tx.fate != Landing::InFlight {
                    continue;
                }
                for (c, copy) in tx.copies.iter().enumerate() {
                    hashes.push(copy.hash);
                    at.push((key.clone(), i, c));
                }
            }
        }
        let seen = sender::look(&self.conn, &hashes).await?;
        // Per transaction: mined (by which copy), or what its copies' fates add up to.
        let mut pooled: HashMap<(TargetKey, usize), bool> = HashMap::new();
        for ((key, i, c), seen) in at.into_iter().zip(seen) {
            let Some(tx) = self.flights.get_mut(&key).map(|f| &mut f.txs[i]) else {
                continue;
            };
            match seen {
                Seen::Mined { block, success } => {
                    tx.fate = Landing::Mined {
                        block,
                        success,
                        copy: c,
                    }
                }
                Seen::Pooled => {
                    pooled.insert((key, i), true);
                }
                Seen::Unknown => {
                    pooled.entry((key, i)).or_insert(false);
                }
            }
        }
        let stuck_after = self.config.stuck_after();
        let mut stuck_nonces = Vec::new();
        for ((key, i), in_pool) in pooled {
            let chain = self.config.chain.to_string();
            let Some(tx) = self.flights.get_mut(&key).map(|f| &mut f.txs[i]) else {
                continue;
            };
            if !matches!(tx.fate, Landing::InFlight) {
                continue;
            }
            let Some(last) = tx.copies.last().cloned() else {
                continue;
            };
            if !in_pool {
                // Dropped, or reorged out and not re-queued: the same bytes again. They are
                // the same transaction, so this can never apply it twice.
                metrics::counter!("adapter_dropped_transactions_total", "chain" => chain.clone())
                    .increment(1);
                match sender::broadcast(&self.conn, &last).await? {
                    Broadcast::Accepted => {
                        tracing::warn!(chain = %chain, hash = %last.hash, "the node forgot a transaction; sent it again");
                    }
                    Broadcast::Refused(why) => {
                        tracing::warn!(chain = %chain, hash = %last.hash, %why, "a forgotten transaction cannot be sent again; its target is planned again");
                        tx.fate = Landing::Lost;
                        self.nonce = None;
                    }
                }
            } else if tx.sent_at.elapsed() >= stuck_after {
                stuck_nonces.push((key, i, last));
            }
        }
        if !stuck_nonces.is_empty() {
            self.unstick(stuck_nonces).await?;
        }
        let done: Vec<TargetKey> = self
            .flights
            .iter()
            .filter(|(_, f)| f.txs.iter().all(|t| t.fate != Landing::InFlight))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(flight) = self.flights.remove(&key) {
                self.landed(key, flight);
            }
        }
        if self.flights.is_empty() {
            // Nothing of ours in flight: the next plan takes the node's nonce, which is what
            // notices a reorg that took mined transactions of ours out of the chain.
            self.nonce = None;
        }
        Ok(())
    }

    /// Transactions in the pool for the configured `stuck_after_seconds`: if a nonce below them is empty (a reorg took
    /// out a mined transaction of ours), it is filled with a transaction that does nothing;
    /// otherwise each is replaced by a copy, same nonce, paying `FEE_BUMP_PERCENT` more.
    async fn unstick(&mut self, stuck: Vec<(TargetKey, usize, Signed)>) -> Result<(), ChainError> {
        let chain = self.config.chain.to_string();
        let now = Fees::estimate(&self.conn).await?;
        let (_, mined) = token::nonces(&self.conn).await?;
        let ours: BTreeSet<u64> = self
            .flights
            .values()
            .flat_map(|f| f.txs.iter())
            .filter(|t| t.fate == Landing::InFlight)
            .filter_map(|t| t.copies.last().map(|c| c.nonce))
            .collect();
        if let Some(&lowest) = ours.iter().next() {
            for gap in mined..lowest {
                let filler = sender::filler(&self.conn, self.config.chain_id, gap, now).await?;
                tracing::warn!(chain = %chain, nonce = gap, hash = %filler.hash, "a nonce below our transactions in flight is empty; filling it");
                metrics::counter!("adapter_nonce_fillers_total", "chain" => chain.clone())
                    .increment(1);
                let _ = sender::broadcast(&self.conn, &filler).await?;
            }
            if mined < lowest {
                // The fillers go first; what is stuck is looked at again later.
                return Ok(());
            }
        }
        for (key, i, last) in stuck {
            let replacement = sender::resign(
                &self.conn,
                last.request.clone(),
                last.nonce,
                last.fees.bumped(now, FEE_BUMP_PERCENT),
            )
            .await?;
            match sender::broadcast(&self.conn, &replacement).await? {
                Broadcast::Accepted => {
                    tracing::warn!(chain = %chain, nonce = last.nonce, old = %last.hash, new = %replacement.hash, max_fee = replacement.fees.max_fee, "a transaction is stuck; replaced it with a higher fee");
                    metrics::counter!("adapter_fee_bumps_total", "chain" => chain.clone())
                        .increment(1);
                    if let Some(tx) = self.flights.get_mut(&key).map(|f| &mut f.txs[i]) {
                        tx.copies.push(replacement);
                        tx.sent_at = Instant::now();
                    }
                }
                Broadcast::Refused(why) => {
                    // Mined meanwhile (the nonce is used), or the node wants more: the next
                    // look reads its receipt, or the next bump pays more.
                    tracing::warn!(chain = %chain, nonce = last.nonce, %why, "replacement refused");
                    if let Some(tx) = self.flights.get_mut(&key).map(|f| &mut f.txs[i]) {
                        tx.sent_at = Instant::now();
                    }
                }
            }
        }
        Ok(())
    }

    /// A plan whose transactions all landed: its target waits for the block to be final, and
    /// its decisions are applied. One with a lost transaction is planned again instead.
    pub(super) fn landed(&mut self, key: TargetKey, flight: Flight) {
        if flight.txs.iter().any(|t| t.fate == Landing::Lost) {
            self.dirty.insert(key.clone());
            self.uncovered.entry(key).or_default().extend(flight.seqs);
            return;
        }
        let mut at_block = flight.head;
        let mut tx_hashes = Vec::new();
        let mut failure = flight.failure;
        for tx in &flight.txs {
            let Landing::Mined {
                block,
                success,
                copy,
            } = tx.fate
            else {
                continue;
            };
            let Some(signed) = tx.copies.get(copy) else {
                continue;
            };
            at_block = at_block.max(block);
            if let Ok(h) = signed.hash.to_string().parse() {
                tx_hashes.push(h);
            }
            if !success {
                failure.get_or_insert_with(|| format!("{} {} reverted", tx.call, signed.hash));
            } else if let Some(order) = tx.seizure {
                self.durable.seizures.insert(order, signed.hash.to_string());
                if let Err(e) = self.durable.save(&self.state_path) {
                    // Kept in memory; the next save writes it (and a restart finds the
                    // balance empty, which counts as done).
                    tracing::error!(chain = %self.config.chain, error = %e, "saving a seizure");
                }
            }
        }
        match &failure {
            Some(why) => {
                tracing::warn!(chain = %self.config.chain, asset = %key.0, holder = ?key.1, %why, "could not apply");
                self.failures
                    .insert(key.clone(), (flight.version, why.clone()));
            }
            None => {
                self.failures.remove(&key);
            }
        }
        for seq in &flight.seqs {
            self.unapplied.remove(seq);
        }
        self.stages.mined(&key);
        self.awaiting.insert(
            key,
            Awaiting {
                version: flight.version,
                at_block,
                tx_hashes,
            },
        );
    }
}
