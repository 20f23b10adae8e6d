//! The sequencer's group commit: a round's records, the state rows and holds they change, the
//! queue entries they consume and the state map's round, in one transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::{corrupt, state, StorageError, DECISIONS_CHANNEL};
use crate::domain::ledger::{Head, SealedRecord};
use crate::domain::{AssetKey, OrderId};

/// An asset's `asset_state` row after a commit (its holds are written from the effects).
#[derive(Debug, Clone)]
pub struct StateChange {
    pub key: AssetKey,
    pub version: u64,
    pub last_fencing_token: u64,
    pub next_expiry: Option<DateTime<Utc>>,
}

/// One group commit: the sealed records in sequence order and the assets whose state changed.
pub struct Commit<'a> {
    pub epoch: i64,
    pub from: Head,
    pub records: &'a [SealedRecord],
    pub states: &'a [StateChange],
    /// The `holds` rows the records' effects write: see [`HoldWrites::of`].
    pub holds: &'a HoldWrites,
}

/// The `holds` rows a round's effects place and lift, with each placed hold's JSON text: built
/// by [`HoldWrites::of`] where the round is decided (a blocking thread), so that the commit, on
/// the sequencer's serial path, only binds them.
#[derive(Debug, Default)]
pub struct HoldWrites {
    /// Placed holds and not lifted in the same round: order id, chain, asset, hold as JSON.
    placed: (Vec<Uuid>, Vec<String>, Vec<String>, Vec<String>),
    /// Holds lifted that were placed before the round: chain, asset, order id (the table's
    /// key; a decision's effects are all on its own asset, which the state map checks).
    lifted: (Vec<String>, Vec<String>, Vec<Uuid>),
}

impl HoldWrites {
    /// What `records`' effects write, in sequence order: a hold placed and lifted in the same
    /// round is never written.
    pub fn of(records: &[SealedRecord]) -> Result<Self, StorageError> {
        let mut placed: HashMap<OrderId, &crate::domain::Hold> = HashMap::new();
        let mut writes = Self::default();
        for record in records {
            let asset = &record.record.target.asset;
            for effect in &record.record.effects {
                match effect {
                    crate::domain::Effect::Place { hold } => {
                        placed.insert(hold.order_id, hold);
                    }
                    crate::domain::Effect::Lift { order_id, .. } => {
                        if placed.remove(order_id).is_none() {
                            writes.lifted.0.push(asset.chain.as_str().to_owned());
                            writes.lifted.1.push(asset.asset.as_str().to_owned());
                            writes.lifted.2.push(order_id.as_uuid());
                        }
                    }
                }
            }
        }
        for (id, hold) in placed {
            writes.placed.0.push(id.as_uuid());
            writes
                .placed
                .1
                .push(hold.target.asset.chain.as_str().to_owned());
            writes
                .placed
                .2
                .push(hold.target.asset.asset.as_str().to_owned());
            writes
                .placed
                .3
                .push(serde_json::to_string(hold).map_err(corrupt)?);
        }
        Ok(writes)
    }
}

/// Commits a group in one transaction, compare-and-setting the ledger head from `commit.from`
/// to the last record, in `commit.epoch`. Anything else moving the head first makes this fail
/// with [`StorageError::Deposed`] and write nothing.
///
/// `state_round` gives the round's state roots and delta (`None` if it changed no target's
/// state). It is awaited only before the last statement, so the caller may still be computing
/// it while Postgres takes the others; if it fails, nothing is committed.
pub async fn commit(
    conn: &mut PgConnection,
    commit: Commit<'_>,
    state_round: impl std::future::Future<Output = Result<Option<state::StateRound>, StorageError>>,
) -> Result<Head, StorageError> {
    let Some(last) = commit.records.last() else {
        // No record, so no effect: the round is awaited only to end the caller's computing it.
        state_round.await?;
        return Ok(commit.from);
    };
    let to = Head {
        seq: last.record.seq,
        hash: last.hash,
    };
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    advance_head(&mut tx, commit.epoch, commit.from, to).await?;

    let n = commit.records.len();
    let mut seqs = Vec::with_capacity(n);
    let mut order_ids = Vec::with_capacity(n);
    let mut expired = Vec::with_capacity(n);
    let mut chains = Vec::with_capacity(n);
    let mut assets = Vec::with_capacity(n);
    let mut holders = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut issuers = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut policy_versions = Vec::with_capacity(n);
    let mut decided = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    // The policy index (`decision_policies`): one row per policy a record names among its
    // determining policies, from the same record that is sealed, not parsed back out of its text.
    let mut indexed_policies = Vec::with_capacity(n);
    let mut indexed_seqs = Vec::with_capacity(n);
    for s in commit.records {
        let r = &s.record;
        seqs.push(r.seq as i64);
        match r.subject {
            crate::domain::Subject::Order { order_id } => {
                order_ids.push(Some(order_id.as_uuid()));
                expired.push(None);
            }
            crate::domain::Subject::Expiry { hold } => {
                order_ids.push(None);
                expired.push(Some(hold.as_uuid()));
            }
        }
        chains.push(r.target.asset.chain.as_str());
        assets.push(r.target.asset.asset.as_str());
        holders.push(r.target.holder.as_ref().map(|h| h.as_str()));
        kinds.push(r.kind.as_str());
        issuers.push(r.issuer.as_str());
        outcomes.push(r.outcome.as_str());
        reasons.push(r.reason_code.as_str());
        priorities.push(i32::from(r.priority.value()));
        versions.push(r.state_after.version as i64);
        policy_versions.push(r.policy_version.as_str());
        decided.push(r.decided_at);
        texts.push(s.text.as_str());
        hashes.push(s.hash.to_vec());
        for (i, policy) in r.determining_policies.iter().enumerate() {
            // A policy named twice is indexed once (the table's key is policy and seq).
            if !r.determining_policies[..i].contains(policy) {
                indexed_policies.push(policy.as_str());
                indexed_seqs.push(r.seq as i64);
            }
        }
    }
    // The arguments are one buffer of about 1.7 kB a record (mostly its text): sized once,
    // instead of grown by doubling and copying on the sequencer's serial path.
    let bytes: usize = commit.records.iter().map(|s| s.text.len() + 256).sum();
    let mut args = sqlx::postgres::PgArguments::default();
    sqlx::Arguments::reserve(&mut args, 18, bytes);
    // The policy index's rows ride in the same statement (a data-modifying `WITH` runs once,
    // whether or not it is read): no round trip more on the serial path.
    sqlx::query_with(
        "WITH indexed AS (
            INSERT INTO decision_policies (policy, seq)
            SELECT * FROM UNNEST($17::text[], $18::bigint[])
         )
         INSERT INTO decisions (seq, order_id, expired_hold, chain, asset, holder, kind, issuer,
                                outcome, reason_code, priority, policy_version, target_version,
                                decided_at, record, hash)
         SELECT seq, order_id, expired_hold, chain, asset, holder, kind, issuer, outcome,
                reason_code, priority, policy_version, target_version, decided_at,
                record, hash
         FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
                     $13::bigint[], $14::timestamptz[], $15::text[], $16::bytea[])
           AS d(seq, order_id, expired_hold, chain, asset, holder, kind, issuer, outcome,
                reason_code, priority, policy_version, target_version, decided_at, record, hash)",
        args,
    )
    .bind(&seqs)
    .bind(&order_ids)
    .bind(&expired)
    .bind(&chains)
    .bind(&assets)
    .bind(&holders)
    .bind(&kinds)
    .bind(&issuers)
    .bind(&outcomes)
    .bind(&reasons)
    .bind(&priorities)
    .bind(&policy_versions)
    .bind(&versions)
    .bind(&decided)
    .bind(&texts)
    .bind(&hashes)
    .bind(&indexed_policies)
    .bind(&indexed_seqs)
    .execute(&mut *tx)
    .await?;

    if !commit.states.is_empty() {
        write_states(&mut tx, commit.states, commit.holds).await?;
    }

    // By the arrival index's key: the queue has no index of its own on order_id.
    let (arrivals, decided_orders): (Vec<DateTime<Utc>>, Vec<Uuid>) = commit
        .records
        .iter()
        .filter_map(|s| s.record.order.as_ref())
        .map(|o| (o.intake_at, o.id.as_uuid()))
        .unzip();
    let dequeued = sqlx::query(
        "DELETE FROM intake_queue q
         USING UNNEST($1::timestamptz[], $2::uuid[]) AS d(intake_at, order_id)
         WHERE q.intake_at = d.intake_at AND q.order_id = d.order_id",
    )
    .bind(&arrivals)
    .bind(&decided_orders)
    .execute(&mut *tx)
    .await?;
    // An entry left behind would be decided again: nothing is committed unless every decided
    // order left the queue.
    all_rows(
        dequeued.rows_affected(),
        decided_orders.len(),
        "decided orders were in the intake queue",
    )?;
    match state_round.await? {
        // One statement for both: a round trip fewer on the sequencer's serial path.
        Some(round) => state::insert_round_and_announce(&mut tx, &round, to).await?,
        None => announce_head(&mut tx, to).await?,
    }
    tx.commit().await?;
    Ok(to)
}

/// Refuses the commit unless a statement touched all `wanted` rows: "`done` of the `wanted`
/// `what`".
fn all_rows(done: u64, wanted: usize, what: &str) -> Result<(), StorageError> {
    if done == wanted as u64 {
        return Ok(());
    }
    Err(StorageError::Corrupt(format!(
        "{done} of the {wanted} {what}"
    )))
}

/// The compare-and-set every write to the log begins with: the head moves from `from` to `to`
/// only if it is still at `from` in `epoch`. Anything else moved it first (a new leader): then
/// [`StorageError::Deposed`], and the caller's transaction writes nothing.
pub(crate) async fn advance_head(
    tx: &mut PgConnection,
    epoch: i64,
    from: Head,
    to: Head,
) -> Result<(), StorageError> {
    let moved =
        sqlx::query("UPDATE ledger_head SET seq = $1, hash = $2 WHERE seq = $3 AND epoch = $4")
            .bind(to.seq as i64)
            .bind(to.hash.as_slice())
            .bind(from.seq as i64)
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
    if moved.rows_affected() != 1 {
        return Err(StorageError::Deposed {
            expected_seq: from.seq,
            epoch,
        });
    }
    Ok(())
}

/// Tells every replica, at commit, that the log reached `to`.
pub(crate) async fn announce_head(tx: &mut PgConnection, to: Head) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(DECISIONS_CHANNEL)
        .bind(to.seq.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Writes only what changed: the assets' version rows, and the holds the round's effects placed
/// and lifted (a hold placed and lifted in the same round is never written).
async fn write_states(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    changes: &[StateChange],
    holds: &HoldWrites,
) -> Result<(), StorageError> {
    let mut chains = Vec::new();
    let mut assets = Vec::new();
    let mut versions = Vec::new();
    let mut tokens = Vec::new();
    let mut expiries = Vec::new();
    for c in changes {
        chains.push(c.key.chain.as_str());
        assets.push(c.key.asset.as_str());
        versions.push(c.version as i64);
        tokens.push(c.last_fencing_token as i64);
        expiries.push(c.next_expiry);
    }
    sqlx::query(
        "INSERT INTO asset_state (chain, asset, version, last_fencing_token, next_expiry)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                              $5::timestamptz[])
         ON CONFLICT (chain, asset) DO UPDATE
            SET version = EXCLUDED.version, last_fencing_token = EXCLUDED.last_fencing_token,
                next_expiry = EXCLUDED.next_expiry",
    )
    .bind(&chains)
    .bind(&assets)
    .bind(&versions)
    .bind(&tokens)
    .bind(&expiries)
    .execute(&mut **tx)
    .await?;
    let lifted = &holds.lifted;
    if !lifted.2.is_empty() {
        let removed = sqlx::query(
            "DELETE FROM holds h
             USING UNNEST($1::text[], $2::text[], $3::uuid[]) AS l(chain, asset, order_id)
             WHERE h.chain = l.chain AND h.asset = l.asset AND h.order_id = l.order_id",
        )
        .bind(&lifted.0[..])
        .bind(&lifted.1[..])
        .bind(&lifted.2[..])
        .execute(&mut **tx)
        .await?;
        // A lifted hold is active, so its row is there: one left behind would outlive its lift.
        all_rows(
            removed.rows_affected(),
            lifted.2.len(),
            "lifted holds were in the holds table",
        )?;
    }
    let placed = &holds.placed;
    if !placed.0.is_empty() {
        sqlx::query(
            "INSERT INTO holds (order_id, chain, asset, hold)
             SELECT order_id, chain, asset, hold::json
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
               AS p(order_id, chain, asset, hold)",
        )
        .bind(&placed.0[..])
        .bind(&placed.1[..])
        .bind(&placed.2[..])
        .bind(&placed.3[..])
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
