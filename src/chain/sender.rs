//! Transactions signed here, with nonces this process assigns ahead of the node, so that the
//! adapter can keep sending while earlier transactions are in flight: each is kept as the exact
//! signed bytes, rebroadcast unchanged if the node forgets it (the same bytes are the same
//! transaction: it can take effect once at most), and replaced by a copy with a higher fee,
//! same nonce, when it is stuck in the pool.

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, Bytes, TxHash};
use alloy::providers::Provider;
use alloy::rpc::types::{Transaction, TransactionReceipt, TransactionRequest};

use super::{ChainError, Connection};

/// The EIP-1559 fees of a transaction, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    pub max_fee: u128,
    pub priority: u128,
}

impl Fees {
    /// The node's current estimate (one `eth_feeHistory`).
    pub async fn estimate(conn: &Connection) -> Result<Self, ChainError> {
        let e = conn
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(ChainError::rpc)?;
        Ok(Self {
            max_fee: e.max_fee_per_gas,
            priority: e.max_priority_fee_per_gas,
        })
    }

    /// The fees of a replacement for a transaction sent with `self`, when the node now
    /// estimates `now`: at least `bump_percent` more of each (nodes refuse a replacement that
    /// pays less than 10 % more), and never less than the current estimate.
    pub fn bumped(self, now: Fees, bump_percent: u128) -> Self {
        let up = |v: u128| {
            v.saturating_mul(100 + bump_percent)
                .div_ceil(100)
                .max(v + 1)
        };
        let priority = up(self.priority).max(now.priority);
        Self {
            max_fee: up(self.max_fee).max(now.max_fee).max(priority),
            priority,
        }
    }
}

/// A signed transaction: what was sent, and what to send again.
#[derive(Debug, Clone)]
pub struct Signed {
    pub hash: TxHash,
    pub raw: Bytes,
    pub nonce: u64,
    pub fees: Fees,
    /// The unsigned call, kept to sign a replacement with other fees.
    pub request: TransactionRequest,
}

/// Signs a call to `to` (gas limit `gas`) with `nonce` and `fees`, locally.
pub async fn sign(
    conn: &Connection,
    chain_id: u64,
    to: Address,
    input: Vec<u8>,
    gas: u64,
    nonce: u64,
    fees: Fees,
) -> Result<Signed, ChainError> {
    let request = TransactionRequest::default()
        .with_from(conn.signer)
        .with_to(to)
        .with_input(Bytes::from(input))
        .with_gas_limit(gas)
        .with_chain_id(chain_id);
    resign(conn, request, nonce, fees).await
}

/// Signs `request` with `nonce` and `fees`: a first signature or a replacement.
pub async fn resign(
    conn: &Connection,
    request: TransactionRequest,
    nonce: u64,
    fees: Fees,
) -> Result<Signed, ChainError> {
    let envelope = request
        .clone()
        .with_nonce(nonce)
        .with_max_fee_per_gas(fees.max_fee)
        .with_max_priority_fee_per_gas(fees.priority)
        .build(&conn.wallet)
        .await
        .map_err(|e| ChainError::Other(format!("signing: {e}")))?;
    Ok(Signed {
        hash: *envelope.tx_hash(),
        raw: Bytes::from(envelope.encoded_2718()),
        nonce,
        fees,
        request,
    })
}

/// The gas a call needs, with a fifth more as margin. A call the contract would revert is
/// refused here with the contract's reason, before any nonce is used for it.
pub async fn estimate(conn: &Connection, to: Address, input: &[u8]) -> Result<u64, ChainError> {
    let tx = TransactionRequest::default()
        .with_from(conn.signer)
        .with_to(to)
        .with_input(Bytes::copy_from_slice(input));
    let gas = conn
        .provider
        .estimate_gas(tx)
        .await
        .map_err(ChainError::rpc)?;
    Ok(gas.saturating_mul(6) / 5)
}

/// What the node said to a broadcast.
#[derive(Debug)]
pub enum Broadcast {
    /// In its pool (or it already was: the same bytes again).
    Accepted,
    /// Refused for good, with the node's message (e.g. the nonce is used by another
    /// transaction, or a replacement pays too little): this copy will never be mined.
    Refused(String),
}

/// Sends `signed`'s bytes. A transport failure is an error (the node may or may not have it; the
/// caller keeps it in flight and looks again); a refusal by the node is an answer.
pub async fn broadcast(conn: &Connection, signed: &Signed) -> Result<Broadcast, ChainError> {
    match conn.provider.send_raw_transaction(&signed.raw).await {
        Ok(_) => Ok(Broadcast::Accepted),
        Err(e) => match e.as_error_resp() {
            Some(payload) if payload.message.contains("already known") => Ok(Broadcast::Accepted),
            Some(payload) => Ok(Broadcast::Refused(payload.message.to_string())),
            None => Err(ChainError::Rpc(e.to_string())),
        },
    }
}

/// What the node knows of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Mined at this block; `success` false for a reverted call.
    Mined { block: u64, success: bool },
    /// In its pool, not mined.
    Pooled,
    /// Neither mined nor in its pool: dropped, or reorged out and not re-queued.
    Unknown,
}

/// The receipts of `hashes` in one JSON-RPC batch, and for those with none, whether the node
/// still has them (a second batch, only for those): what a look at the chain costs is two
/// requests however many transactions are in flight.
pub async fn look(conn: &Connection, hashes: &[TxHash]) -> Result<Vec<Seen>, ChainError> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let client = conn.provider.client();
    let mut batch = alloy::rpc::client::BatchRequest::new(client);
    let mut waiters = Vec::with_capacity(hashes.len());
    for hash in hashes {
        waiters.push(
            batch
                .add_call::<_, Option<TransactionReceipt>>("eth_getTransactionReceipt", &(hash,))
                .map_err(ChainError::rpc)?,
        );
    }
    batch.send().await.map_err(ChainError::rpc)?;
    let mut out = Vec::with_capacity(hashes.len());
    for w in waiters {
        out.push(match w.await.map_err(ChainError::rpc)? {
            Some(r) => Seen::Mined {
                block: r.block_number.unwrap_or_default(),
                success: r.status(),
            },
            None => Seen::Unknown,
        });
    }
    let missing: Vec<usize> = (0..out.len())
        .filter(|&i| out[i] == Seen::Unknown)
        .collect();
    if missing.is_empty() {
        return Ok(out);
    }
    let mut batch = alloy::rpc::client::BatchRequest::new(client);
    let mut waiters = Vec::with_capacity(missing.len());
    for &i in &missing {
        waiters.push(
            batch
                .add_call::<_, Option<Transaction>>("eth_getTransactionByHash", &(hashes[i],))
                .map_err(ChainError::rpc)?,
        );
    }
    batch.send().await.map_err(ChainError::rpc)?;
    for (&i, w) in missing.iter().zip(waiters) {
        // Known, in the pool or mined between the two batches (its receipt is read at the
        // next look): either way not lost.
        if w.await.map_err(ChainError::rpc)?.is_some() {
            out[i] = Seen::Pooled;
        }
    }
    Ok(out)
}

/// A transaction that does nothing (no value, to its own sender) with `nonce`: fills a nonce
/// that a reorg emptied under transactions of ours already in the pool, which would otherwise
/// wait for it forever.
pub async fn filler(
    conn: &Connection,
    chain_id: u64,
    nonce: u64,
    fees: Fees,
) -> Result<Signed, ChainError> {
    sign(conn, chain_id, conn.signer, Vec::new(), 21_000, nonce, fees).await
}
