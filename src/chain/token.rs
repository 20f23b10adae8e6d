//! One ERC-3643 token: its state read at a chosen block, the calls that take it to a decided
//! state, and sending them with nonces this process manages.

use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, TxHash, U256};
use alloy::providers::Provider;
use alloy::rpc::types::{BlockId, TransactionRequest};
use alloy::sol_types::SolCall;

use super::contracts::IToken;
use super::{ChainError, Connection};
use crate::domain::projection::{Decided, Observed, Units};

/// Token amounts on chain are `uint256`; the engine's are `u128`. A chain balance above
/// `u128::MAX` base units is reported as `u128::MAX` (no real token has one).
pub fn units(value: U256) -> Units {
    Units(u128::try_from(value).unwrap_or(u128::MAX))
}

/// An `eth_call` of `call` on `to` at `block`.
pub async fn read<C: SolCall>(
    conn: &Connection,
    to: Address,
    call: C,
    block: BlockId,
) -> Result<C::Return, ChainError> {
    call_at(&conn.provider, to, call, block).await
}

/// [`read`] through any provider, one with no signer too (what `audit verify --anchors` has).
pub async fn call_at<C: SolCall>(
    provider: &alloy::providers::DynProvider,
    to: Address,
    call: C,
    block: BlockId,
) -> Result<C::Return, ChainError> {
    let tx = TransactionRequest::default()
        .with_to(to)
        .with_input(Bytes::from(call.abi_encode()));
    let out = provider
        .call(tx)
        .block(block)
        .await
        .map_err(ChainError::rpc)?;
    C::abi_decode_returns(&out).map_err(|e| ChainError::Rpc(format!("undecodable answer: {e}")))
}

/// Reads the asset-wide state of `token` at `block`.
pub async fn observe_asset(
    conn: &Connection,
    token: Address,
    block: BlockId,
) -> Result<Observed, ChainError> {
    let paused = read(conn, token, IToken::pausedCall {}, block).await?;
    Ok(Observed::Asset { paused })
}

/// Reads `holder`'s state in `token` at `block`.
pub async fn observe_holder(
    conn: &Connection,
    token: Address,
    holder: Address,
    block: BlockId,
) -> Result<Observed, ChainError> {
    let (frozen, frozen_tokens, balance) = tokio::try_join!(
        read(conn, token, IToken::isFrozenCall { user: holder }, block),
        read(
            conn,
            token,
            IToken::getFrozenTokensCall { user: holder },
            block
        ),
        read(conn, token, IToken::balanceOfCall { user: holder }, block),
    )?;
    Ok(Observed::Holder {
        frozen,
        frozen_tokens: units(frozen_tokens),
        balance: units(balance),
    })
}

/// Reads many holders' states in `token` at `block`, as JSON-RPC batches: three `eth_call`s per
/// holder, `per_batch` holders to one HTTP request. A resync of thousands of targets is bound by
/// round trips, not by the node's work, so one request carries hundreds of calls.
pub async fn observe_holders(
    conn: &Connection,
    token: Address,
    holders: &[Address],
    block: BlockId,
) -> Result<Vec<Observed>, ChainError> {
    let call = |input: Vec<u8>| {
        TransactionRequest::default()
            .with_to(token)
            .with_input(Bytes::from(input))
    };
    let client = conn.provider.client();
    let mut batch = alloy::rpc::client::BatchRequest::new(client);
    let mut waiters = Vec::with_capacity(holders.len());
    for &user in holders {
        let mut add = |input: Vec<u8>| {
            batch
                .add_call::<_, Bytes>("eth_call", &(call(input), block))
                .map_err(ChainError::rpc)
        };
        let frozen = add(IToken::isFrozenCall { user }.abi_encode())?;
        let tokens = add(IToken::getFrozenTokensCall { user }.abi_encode())?;
        let balance = add(IToken::balanceOfCall { user }.abi_encode())?;
        waiters.push((frozen, tokens, balance));
    }
    batch.send().await.map_err(ChainError::rpc)?;
    let undecodable =
        |e: alloy::sol_types::Error| ChainError::Rpc(format!("undecodable answer: {e}"));
    let mut out = Vec::with_capacity(waiters.len());
    for (frozen, tokens, balance) in waiters {
        let frozen = frozen.await.map_err(ChainError::rpc)?;
        let tokens = tokens.await.map_err(ChainError::rpc)?;
        let balance = balance.await.map_err(ChainError::rpc)?;
        out.push(Observed::Holder {
            frozen: IToken::isFrozenCall::abi_decode_returns(&frozen).map_err(undecodable)?,
            frozen_tokens: units(
                IToken::getFrozenTokensCall::abi_decode_returns(&tokens).map_err(undecodable)?,
            ),
            balance: units(
                IToken::balanceOfCall::abi_decode_returns(&balance).map_err(undecodable)?,
            ),
        });
    }
    Ok(out)
}

/// One call the adapter makes on a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause,
    Unpause,
    SetFrozen(bool),
    FreezePartial(u128),
    UnfreezePartial(u128),
    /// Moves `amount` of the holder's balance to the custody wallet.
    ForcedTransfer {
        to: Address,
        amount: u128,
    },
}

impl Action {
    pub fn calldata(&self, holder: Address) -> Vec<u8> {
        match *self {
            Action::Pause => IToken::pauseCall {}.abi_encode(),
            Action::Unpause => IToken::unpauseCall {}.abi_encode(),
            Action::SetFrozen(freeze) => IToken::setAddressFrozenCall {
                user: holder,
                freeze,
            }
            .abi_encode(),
            Action::FreezePartial(amount) => IToken::freezePartialTokensCall {
                user: holder,
                amount: U256::from(amount),
            }
            .abi_encode(),
            Action::UnfreezePartial(amount) => IToken::unfreezePartialTokensCall {
                user: holder,
                amount: U256::from(amount),
            }
            .abi_encode(),
            Action::ForcedTransfer { to, amount } => IToken::forcedTransferCall {
                from: holder,
                to,
                amount: U256::from(amount),
            }
            .abi_encode(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::SetFrozen(_) => "setAddressFrozen",
            Action::FreezePartial(_) => "freezePartialTokens",
            Action::UnfreezePartial(_) => "unfreezePartialTokens",
            Action::ForcedTransfer { .. } => "forcedTransfer",
        }
    }
}

/// The calls that take a target from `observed` (read at the latest block, with none of the
/// target's transactions in flight) to `decided`: only the difference, so sending them again after they
/// took effect sends nothing.
///
/// `custody` is the custody wallet of the seizing authority, `None` when the configuration has
/// none (then the seizure cannot be applied and the caller reports it); `seizure_done` says the
/// forced transfer of this seizure already happened once, so a balance that reappears later is
/// not moved again (it is a divergence for a human).
pub fn plan(
    decided: &Decided,
    observed: &Observed,
    custody: Option<Address>,
    seizure_done: bool,
) -> Result<Vec<Action>, String> {
    match (decided, observed) {
        (Decided::Asset { paused }, Observed::Asset { paused: now }) => Ok(match (paused, now) {
            (true, false) => vec![Action::Pause],
            (false, true) => vec![Action::Unpause],
            _ => vec![],
        }),
        (
            Decided::Holder {
                frozen,
                frozen_tokens,
                seized_by,
            },
            Observed::Holder {
                frozen: now_frozen,
                frozen_tokens: now_tokens,
                balance,
            },
        ) => {
            let mut actions = Vec::new();
            let mut now_tokens = now_tokens.0;
            if let Some(by) = seized_by {
                if balance.0 > 0 && !seizure_done {
                    let to = custody
                        .ok_or_else(|| format!("no custody wallet is configured for {by}"))?;
                    actions.push(Action::ForcedTransfer {
                        to,
                        amount: balance.0,
                    });
                    // forcedTransfer unfreezes what it needs of the frozen amount: all of it.
                    now_tokens = 0;
                }
            }
            if frozen != now_frozen {
                actions.push(Action::SetFrozen(*frozen));
            }
            let want = frozen_tokens.0;
            if want > now_tokens {
                actions.push(Action::FreezePartial(want - now_tokens));
            } else if want < now_tokens {
                actions.push(Action::UnfreezePartial(now_tokens - want));
            }
            Ok(actions)
        }
        _ => Err("the observation is of another kind of target".into()),
    }
}

/// `conn`'s pending and mined nonces: equal when none of its transactions is in flight, and
/// then the mined one is the next to use.
pub async fn nonces(conn: &Connection) -> Result<(u64, u64), ChainError> {
    let pending = conn
        .provider
        .get_transaction_count(conn.signer)
        .pending()
        .await
        .map_err(ChainError::rpc)?;
    let mined = conn
        .provider
        .get_transaction_count(conn.signer)
        .latest()
        .await
        .map_err(ChainError::rpc)?;
    Ok((pending, mined))
}

/// Waits until none of `conn`'s transactions is in flight (its pending nonce equals its mined
/// one), so that what the latest block shows is everything this key sent. Gives up after
/// `timeout`: a transaction stuck in the pool is a health fault to report, not a reason to send
/// a second one.
pub async fn quiesce(conn: &Connection, timeout: Duration) -> Result<u64, ChainError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (pending, mined) = nonces(conn).await?;
        if pending == mined {
            return Ok(mined);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ChainError::Other(format!(
                "{} transaction(s) of {} still in flight after {timeout:?}",
                pending.saturating_sub(mined),
                conn.signer
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one call with nonce `nonce` after estimating its gas: a call the contract would revert
/// is refused here, with the contract's reason, and uses no nonce.
pub async fn send(
    conn: &Connection,
    to: Address,
    input: Vec<u8>,
    nonce: u64,
) -> Result<TxHash, ChainError> {
    let tx = TransactionRequest::default()
        .with_from(conn.signer)
        .with_to(to)
        .with_input(Bytes::from(input));
    let gas = conn
        .provider
        .estimate_gas(tx.clone())
        .await
        .map_err(ChainError::rpc)?;
    let tx = tx
        .with_nonce(nonce)
        .with_gas_limit(gas.saturating_mul(6) / 5);
    let pending = conn
        .provider
        .send_transaction(tx)
        .await
        .map_err(ChainError::rpc)?;
    Ok(*pending.tx_hash())
}

/// Where a transaction was mined, or why it did not take effect.
#[derive(Debug, Clone)]
pub struct Mined {
    pub hash: TxHash,
    pub block: u64,
    pub success: bool,
}

/// What became of a sent transaction while we waited.
#[derive(Debug, Clone)]
pub enum Fate {
    /// In a block of the canonical chain (a reverted call is mined too, with `success` false).
    Mined(Mined),
    /// The node no longer knows it: reorged out and not re-queued, or evicted from the pool.
    /// Nothing of it is in effect; the next round's read of the chain decides what to send.
    Dropped,
    /// Still in the pool when the wait ran out.
    Pending,
}

/// How often, while waiting for a receipt, to ask whether the node still knows the transaction.
const DROPPED_CHECK_EVERY: u32 = 5;

/// Waits for the receipt of `hash` up to `timeout`, and notices when the node drops it: a
/// transaction reorged out of the chain before its receipt was read has neither a receipt nor
/// a place in the pool, and waiting out the timeout for it would hold every later decision.
pub async fn receipt(
    conn: &Connection,
    hash: TxHash,
    timeout: Duration,
) -> Result<Fate, ChainError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut polls: u32 = 0;
    loop {
        let found = conn
            .provider
            .get_transaction_receipt(hash)
            .await
            .map_err(ChainError::rpc)?;
        if let Some(r) = found {
            return Ok(Fate::Mined(Mined {
                hash,
                block: r.block_number.unwrap_or_default(),
                success: r.status(),
            }));
        }
        polls += 1;
        if polls.is_multiple_of(DROPPED_CHECK_EVERY) {
            let known = conn
                .provider
                .get_transaction_by_hash(hash)
                .await
                .map_err(ChainError::rpc)?;
            if known.is_none() {
                // Between the two reads it may have been mined: look once more before saying so.
                let late = conn
                    .provider
                    .get_transaction_receipt(hash)
                    .await
                    .map_err(ChainError::rpc)?;
                return Ok(match late {
                    Some(r) => Fate::Mined(Mined {
                        hash,
                        block: r.block_number.unwrap_or_default(),
                        success: r.status(),
                    }),
                    None => Fate::Dropped,
                });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Fate::Pending);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IssuerId;

    fn holder(frozen: bool, tokens: u128, balance: u128) -> Observed {
        Observed::Holder {
            frozen,
            frozen_tokens: Units(tokens),
            balance: Units(balance),
        }
    }

    fn decided(frozen: bool, tokens: u128, seized: bool) -> Decided {
        Decided::Holder {
            frozen,
            frozen_tokens: Units(tokens),
            seized_by: seized.then(|| IssuerId::parse("US-DOJ").unwrap()),
        }
    }

    #[test]
    fn only_the_difference_is_sent() {
        assert_eq!(
            plan(&decided(true, 0, false), &holder(true, 0, 10), None, false),
            Ok(vec![])
        );
        assert_eq!(
            plan(&decided(true, 0, false), &holder(false, 0, 10), None, false),
            Ok(vec![Action::SetFrozen(true)])
        );
        assert_eq!(
            plan(
                &decided(false, 500, false),
                &holder(false, 300, 1000),
                None,
                false
            ),
            Ok(vec![Action::FreezePartial(200)])
        );
        assert_eq!(
            plan(
                &decided(false, 200, false),
                &holder(false, 500, 1000),
                None,
                false
            ),
            Ok(vec![Action::UnfreezePartial(300)])
        );
        assert_eq!(
            plan(
                &Decided::Asset { paused: true },
                &Observed::Asset { paused: false },
                None,
                false
            ),
            Ok(vec![Action::Pause])
        );
    }

    #[test]
    fn a_seizure_moves_the_balance_once_then_freezes() {
        let custody = Address::repeat_byte(0xd0);
        assert_eq!(
            plan(
                &decided(true, 0, true),
                &holder(false, 40, 100),
                Some(custody),
                false
            ),
            Ok(vec![
                Action::ForcedTransfer {
                    to: custody,
                    amount: 100
                },
                Action::SetFrozen(true)
            ])
        );
        assert_eq!(
            plan(
                &decided(true, 0, true),
                &holder(true, 0, 100),
                Some(custody),
                true
            ),
            Ok(vec![]),
            "a balance that comes back after the seizure is not moved a second time"
        );
        assert!(plan(&decided(true, 0, true), &holder(false, 0, 100), None, false).is_err());
    }
}
