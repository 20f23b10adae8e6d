//! Planning and sending: each dirty target with nothing in flight is read, and what it lacks is
//! signed with the next nonce of ours and sent, without waiting for any receipt.

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::Address;
use alloy::providers::Provider;
use alloy::rpc::types::BlockId;
use futures::StreamExt;
use tokio::time::Instant;

use super::flights::{Flight, Flying, Landing};
use super::{parse_address, Adapter, TargetKey, ESTIMATES_IN_FLIGHT, QUIESCE_TIMEOUT};
use crate::chain::sender::{self, Broadcast, Fees};
use crate::chain::token::{self, Action};
use crate::chain::ChainError;
use crate::domain::projection::{self, Observed};
use crate::domain::OrderId;

impl Adapter {
    /// The nonce to sign the next transaction with: ours while transactions are in flight;
    /// otherwise the node's, once its pool holds nothing of this key.
    async fn settled_nonce(&mut self) -> Result<Option<u64>, ChainError> {
        if let Some(n) = self.nonce {
            return Ok(Some(n));
        }
        if !self.flights.is_empty() {
            return Ok(None);
        }
        let (pending, mined) = token::nonces(&self.conn).await?;
        if pending == mined {
            self.quiescing_since = None;
            self.nonce = Some(mined);
            return Ok(Some(mined));
        }
        let since = *self.quiescing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= QUIESCE_TIMEOUT {
            return Err(ChainError::Other(format!(
                "{} transaction(s) of {} still in flight after {QUIESCE_TIMEOUT:?}",
                pending.saturating_sub(mined),
                self.conn.signer
            )));
        }
        Ok(None)
    }

    /// Plans every dirty target that has nothing in flight, from the engine's state and the
    /// chain's latest block, and sends what each lacks, without waiting for any receipt.
    pub(super) async fn apply(&mut self) -> Result<(), ChainError> {
        // Escalated targets are left alone until a new decision touches them (which takes
        // them out of `escalated`); their decisions are applied by leaving them.
        let escalated: Vec<TargetKey> = self
            .dirty
            .iter()
            .filter(|k| self.escalated.contains(*k) && !self.flights.contains_key(*k))
            .cloned()
            .collect();
        for key in escalated {
            self.dirty.remove(&key);
            for seq in self.uncovered.remove(&key).unwrap_or_default() {
                self.unapplied.remove(&seq);
            }
        }
        let keys: Vec<TargetKey> = self
            .dirty
            .iter()
            .filter(|k| !self.escalated.contains(*k) && !self.flights.contains_key(*k))
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let Some(mut nonce) = self.settled_nonce().await? else {
            return Ok(());
        };
        let states = self.decided_states(keys.iter()).await?;
        let latest = BlockId::Number(BlockNumberOrTag::Latest);
        let observed = self.read_all(&keys, latest).await?;
        let head = self
            .conn
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::rpc)?;

        struct Plan {
            key: TargetKey,
            version: u64,
            token: Address,
            holder: Address,
            actions: Vec<Action>,
            seizure: Option<OrderId>,
            failure: Option<String>,
        }
        let mut plans = Vec::with_capacity(keys.len());
        for (key, now) in keys.iter().zip(observed) {
            let Some(state) = states.get(&key.0) else {
                continue;
            };
            let decided = projection::decide(state, key.1.as_ref());
            let custody = key
                .1
                .as_ref()
                .and_then(|h| projection::custody_hold(state, h));
            // A seized balance found empty is a seizure done, whoever moved it.
            if let (Some(hold), Observed::Holder { balance, .. }) = (custody, &now) {
                if balance.0 == 0 && !self.durable.seizures.contains_key(&hold.order_id) {
                    self.durable
                        .seizures
                        .insert(hold.order_id, "found empty".into());
                    self.durable.save(&self.state_path)?;
                }
            }
            let done = custody.is_some_and(|h| self.durable.seizures.contains_key(&h.order_id));
            let wallet = custody.and_then(|h| self.config.custody.get(&h.issuer).copied());
            let (actions, failure) = match token::plan(&decided, &now, wallet, done) {
                Ok(actions) => (actions, None),
                Err(why) => (Vec::new(), Some(why)),
            };
            plans.push(Plan {
                key: key.clone(),
                version: state.version(),
                token: self.token(&key.0)?,
                holder: match &key.1 {
                    Some(h) => parse_address(h)?,
                    None => Address::ZERO,
                },
                actions,
                seizure: custody.map(|h| h.order_id),
                failure,
            });
        }

        // Every call's gas at once (a call the contract would revert fails here, with its
        // reason), then signed and sent in nonce order.
        let calls: Vec<(Address, Vec<u8>)> = plans
            .iter()
            .flat_map(|p| p.actions.iter().map(|a| (p.token, a.calldata(p.holder))))
            .collect();
        let estimates: Vec<super::Pending<'_, u64>> = calls
            .iter()
            .map(|(to, input)| Box::pin(sender::estimate(&self.conn, *to, input)) as _)
            .collect();
        let mut gas = futures::stream::iter(estimates)
            .buffered(ESTIMATES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter();
        let fees = if calls.is_empty() {
            None
        } else {
            Some(Fees::estimate(&self.conn).await?)
        };
        let mut error = None;
        for plan in plans {
            let mut estimates: Vec<Result<u64, ChainError>> =
                gas.by_ref().take(plan.actions.len()).collect();
            if error.is_some() {
                // Stopped on an error: this target stays dirty, its decisions uncovered.
                continue;
            }
            let seqs = self.uncovered.remove(&plan.key).unwrap_or_default();
            let mut flight = Flight {
                version: plan.version,
                head,
                txs: Vec::new(),
                failure: plan.failure,
                seqs,
            };
            let mut replan = false;
            for (action, estimate) in plan.actions.iter().zip(estimates.drain(..)) {
                let gas = match estimate {
                    Ok(gas) => gas,
                    Err(ChainError::Reverted(why)) => {
                        flight.failure = Some(format!("{}: {why}", action.name()));
                        break;
                    }
                    Err(other) => {
                        // Node trouble: what was sent of this plan lands, then the target is
                        // planned again.
                        replan = true;
                        error = Some(other);
                        break;
                    }
                };
                let Some(fees) = fees else { break };
                let signed = sender::sign(
                    &self.conn,
                    self.config.chain_id,
                    plan.token,
                    action.calldata(plan.holder),
                    gas,
                    nonce,
                    fees,
                )
                .await?;
                nonce += 1;
                self.nonce = Some(nonce);
                let hash = signed.hash;
                let mut flying = Flying {
                    copies: vec![signed],
                    call: action.name(),
                    seizure: matches!(action, Action::ForcedTransfer { .. })
                        .then_some(plan.seizure)
                        .flatten(),
                    sent_at: Instant::now(),
                    fate: Landing::InFlight,
                };
                match sender::broadcast(&self.conn, &flying.copies[0]).await {
                    Ok(Broadcast::Accepted) => {
                        tracing::info!(chain = %self.config.chain, asset = %plan.key.0, holder = ?plan.key.1, call = action.name(), %hash, "sent");
                        metrics::counter!("adapter_transactions_total", "chain" => self.config.chain.to_string(), "call" => action.name())
                            .increment(1);
                    }
                    Ok(Broadcast::Refused(why)) => {
                        // Our count of nonces is not the node's: stop, let what is in flight
                        // land, and read the node's again.
                        tracing::warn!(chain = %self.config.chain, %hash, %why, "the node refused a transaction; re-reading its nonce");
                        flying.fate = Landing::Lost;
                        self.nonce = None;
                        replan = true;
                        error = Some(ChainError::Other(format!(
                            "the node refused transaction {hash}: {why}"
                        )));
                    }
                    Err(e) => {
                        // It may or may not have it: kept in flight, looked for, and sent
                        // again (the same bytes) if the node does not know it; the rest of
                        // the plan is made again once it landed.
                        flight.txs.push(flying);
                        replan = true;
                        error = Some(e);
                        break;
                    }
                }
                let lost = flying.fate == Landing::Lost;
                flight.txs.push(flying);
                if lost {
                    break;
                }
            }
            let key = plan.key;
            self.dirty.remove(&key);
            self.resync.remove(&key);
            self.stages.sent(&key);
            if replan {
                // Planned again once this plan's transactions landed; its decisions with it.
                self.dirty.insert(key.clone());
                let seqs = std::mem::take(&mut flight.seqs);
                self.uncovered.entry(key.clone()).or_default().extend(seqs);
                flight.failure = None;
            }
            if flight.txs.is_empty() {
                self.landed(key, flight);
            } else {
                self.flights.insert(key, flight);
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
