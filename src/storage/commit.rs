//! The sequencer's group commit: a round's records, the state rows and holds they change, the
//! queue entries they consume and the state map's round, in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgTransactionManager;
use sqlx::{PgConnection, TransactionManager};
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
    /// Orders the round took in itself and decided, never queued: not looked for in the queue
    /// (see [`super::fetch_work`]).
    pub taken_in: &'a HashSet<Uuid>,
}

/// The `holds` rows a round's effects place and lift, with each placed hold's JSON text: built
/// by [`HoldWrites::of`] where the round is decided (a blocking thread), so that the commit, on
/// the sequencer's serial path, only binds them.
#[derive(Debug, Default)]
pub struct HoldWrites {
    /// Placed holds and not lifted in the same round.
    placed: HoldColumns,
    /// Holds lifted that were placed before the round, by the table's key (a decision's
    /// effects are all on its own asset, which the state map checks); `json` stays empty.
    lifted: HoldColumns,
}

/// `holds` rows as one array per column.
#[derive(Debug, Default)]
struct HoldColumns {
    order_ids: Vec<Uuid>,
    chains: Vec<String>,
    assets: Vec<String>,
    json: Vec<String>,
}

impl HoldColumns {
    fn push(&mut self, order_id: Uuid, asset: &AssetKey) {
        self.order_ids.push(order_id);
        self.chains.push(asset.chain.as_str().to_owned());
        self.assets.push(asset.asset.as_str().to_owned());
    }
}

impl HoldWrites {
    /// What `records`' effects write, in sequence order: a hold placed and lifted in the same
    /// round is never written.
    pub fn of(records: &[SealedRecord]) -> Result<Self, StorageError> {
        let mut placed: HashMap<OrderId, &crate::domain::Hold> = HashMap::new();
        let mut writes = Self::default();
        for record in records {
            for effect in &record.record.effects {
                match effect {
                    crate::domain::Effect::Place { hold } => {
                        placed.insert(hold.order_id, hold);
                    }
                    crate::domain::Effect::Lift { order_id, .. } => {
                        if placed.remove(order_id).is_none() {
                            writes
                                .lifted
                                .push(order_id.as_uuid(), &record.record.target.asset);
                        }
                    }
                }
            }
        }
        for (id, hold) in placed {
            writes.placed.push(id.as_uuid(), &hold.target.asset);
            writes
                .placed
                .json
                .push(serde_json::to_string(hold).map_err(corrupt)?);
        }
        Ok(writes)
    }
}

/// Commits a group in one transaction, compare-and-setting the ledger head from `commit.from`
/// to the last record, in `commit.epoch`. Anything else moving the head first makes this fail
/// with [`StorageError::Deposed`] and write nothing.
///
/// If `conn` has a transaction open (the round took the leader's own single orders in, see
/// [`super::fetch_work`]), the round's writes join it and this commits it, or rolls it back
/// with them on any failure; otherwise it begins its own.
///
/// `state_round` gives the round's state roots and delta (`None` if it changed no target's
/// state). It is awaited only before the last statement, so the caller may still be computing
/// it while Postgres takes the others; if it fails, nothing is committed.
pub async fn commit(
    conn: &mut PgConnection,
    commit: Commit<'_>,
    state_round: impl std::future::Future<Output = Result<Option<state::StateRound>, StorageError>>,
) -> Result<Head, StorageError> {
    if PgTransactionManager::get_transaction_depth(conn) == 0 {
        PgTransactionManager::begin(&mut *conn, None).await?;
    }
    let written = match write(&mut *conn, &commit, state_round).await {
        Ok(to) => PgTransactionManager::commit(&mut *conn)
            .await
            .map(|()| to)
            .map_err(StorageError::from),
        Err(error) => Err(error),
    };
    if written.is_err() {
        // Also after a failed COMMIT, which Postgres has rolled back: this brings sqlx's own
        // count of open transactions back to none (a warning from Postgres, nothing more).
        super::roll_back_round(conn).await;
    }
    written
}

/// [`commit`]'s statements, in the transaction open on `conn`; the head they move to.
async fn write(
    tx: &mut PgConnection,
    commit: &Commit<'_>,
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
    advance_head(&mut *tx, commit.epoch, commit.from, to).await?;

    // Everything else the round writes is one statement: the decisions and their policy index,
    // the assets' version rows, the holds, the queue's entries. Its parts touch disjoint rows
    // (a hold lifted here was placed before the round; one placed and lifted in it is never
    // written), so the order in which Postgres runs them does not matter. A single order's
    // round is a few records, where each round trip on the serial path cost about as much as
    // the statement's work (0.1-0.2 ms each under load): five statements became this one.
    let rows = DecisionRows::of(commit.records);
    let states = StateRows::of(commit.states);
    let (arrivals, dequeued_orders): (Vec<DateTime<Utc>>, Vec<Uuid>) = commit
        .records
        .iter()
        .filter_map(|s| s.record.order.as_ref())
        .filter(|o| !commit.taken_in.contains(&o.id.as_uuid()))
        .map(|o| (o.intake_at, o.id.as_uuid()))
        .unzip();
    // The arguments are one buffer of about 1.7 kB a record (mostly its text): sized once,
    // instead of grown by doubling and copying on the sequencer's serial path.
    let bytes: usize = commit
        .records
        .iter()
        .map(|s| s.text.len() + 320)
        .sum::<usize>()
        + commit
            .holds
            .placed
            .json
            .iter()
            .map(|h| h.len() + 96)
            .sum::<usize>();
    let mut args = sqlx::postgres::PgArguments::default();
    sqlx::Arguments::reserve(&mut args, 32, bytes);
    let (lifted, dequeued): (i64, i64) = sqlx::query_as_with(ROUND_WRITES, args)
        .bind(&rows.seqs)
        .bind(&rows.order_ids)
        .bind(&rows.expired)
        .bind(&rows.chains)
        .bind(&rows.assets)
        .bind(&rows.holders)
        .bind(&rows.kinds)
        .bind(&rows.issuers)
        .bind(&rows.outcomes)
        .bind(&rows.reasons)
        .bind(&rows.priorities)
        .bind(&rows.policy_versions)
        .bind(&rows.versions)
        .bind(&rows.decided)
        .bind(&rows.texts)
        .bind(&rows.hashes)
        .bind(&rows.indexed_policies)
        .bind(&rows.indexed_seqs)
        .bind(&states.chains)
        .bind(&states.assets)
        .bind(&states.versions)
        .bind(&states.tokens)
        .bind(&states.expiries)
        .bind(&commit.holds.lifted.chains)
        .bind(&commit.holds.lifted.assets)
        .bind(&commit.holds.lifted.order_ids)
        .bind(&commit.holds.placed.order_ids)
        .bind(&commit.holds.placed.chains)
        .bind(&commit.holds.placed.assets)
        .bind(&commit.holds.placed.json)
        .bind(&arrivals)
        .bind(&dequeued_orders)
        .fetch_one(&mut *tx)
        .await?;
    // A lifted hold is active, so its row is there: one left behind would outlive its lift.
    all_rows(
        lifted,
        commit.holds.lifted.order_ids.len(),
        "lifted holds were in the holds table",
    )?;
    // An entry left behind would be decided again: nothing is committed unless every decided
    // order left the queue.
    all_rows(
        dequeued,
        dequeued_orders.len(),
        "decided orders were in the intake queue",
    )?;
    match state_round.await? {
        // One statement for both: a round trip fewer on the sequencer's serial path.
        Some(round) => state::insert_round_and_announce(&mut *tx, &round, to).await?,
        None => announce_head(&mut *tx, to).await?,
    }
    Ok(to)
}

/// A round's writes but the head's move and the state map's round, in one statement (each
/// part a data-modifying `WITH`, which runs whether or not the query reads it); it answers how
/// many holds it lifted and how many queue entries it consumed.
///
/// - `indexed`: the policy index, one row per policy a record names (`$17`, `$18`);
/// - `states`: the assets' version rows (`$19`–`$23`);
/// - `lifted`, `placed`: the holds the effects lift (by the table's key, `$24`–`$26`) and
///   place (`$27`–`$30`);
/// - `dequeued`: the decided orders' queue entries, by the arrival index's key (the queue has
///   no index of its own on order id; `$31`, `$32`);
/// - `decided`: the decisions (`$1`–`$16`), each saying its policy index was written with it
///   (`policies_indexed`: migration `0022` refuses a decision that does not, such as one from
///   an older release that left the index to a trigger).
const ROUND_WRITES: &str = "
WITH indexed AS (
    INSERT INTO decision_policies (policy, seq)
    SELECT * FROM UNNEST($17::text[], $18::bigint[])
), states AS (
    INSERT INTO asset_state (chain, asset, version, last_fencing_token, next_expiry)
    SELECT * FROM UNNEST($19::text[], $20::text[], $21::bigint[], $22::bigint[],
                         $23::timestamptz[])
    ON CONFLICT (chain, asset) DO UPDATE
       SET version = EXCLUDED.version, last_fencing_token = EXCLUDED.last_fencing_token,
           next_expiry = EXCLUDED.next_expiry
), lifted AS (
    DELETE FROM holds h
    USING UNNEST($24::text[], $25::text[], $26::uuid[]) AS l(chain, asset, order_id)
    WHERE h.chain = l.chain AND h.asset = l.asset AND h.order_id = l.order_id
    RETURNING 1
), placed AS (
    INSERT INTO holds (order_id, chain, asset, hold)
    SELECT order_id, chain, asset, hold::json
    FROM UNNEST($27::uuid[], $28::text[], $29::text[], $30::text[])
      AS p(order_id, chain, asset, hold)
), dequeued AS (
    DELETE FROM intake_queue q
    USING UNNEST($31::timestamptz[], $32::uuid[]) AS d(intake_at, order_id)
    WHERE q.intake_at = d.intake_at AND q.order_id = d.order_id
    RETURNING 1
), decided AS (
    INSERT INTO decisions (seq, order_id, expired_hold, chain, asset, holder, kind, issuer,
                           outcome, reason_code, priority, policy_version, target_version,
                           decided_at, record, hash, policies_indexed)
    SELECT seq, order_id, expired_hold, chain, asset, holder, kind, issuer, outcome,
           reason_code, priority, policy_version, target_version, decided_at, record, hash,
           true
    FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
                $13::bigint[], $14::timestamptz[], $15::text[], $16::bytea[])
      AS d(seq, order_id, expired_hold, chain, asset, holder, kind, issuer, outcome,
           reason_code, priority, policy_version, target_version, decided_at, record, hash)
)
SELECT (SELECT count(*) FROM lifted), (SELECT count(*) FROM dequeued)";

/// The `decisions` rows of a round as one array per column, and its policy index's rows.
struct DecisionRows<'a> {
    seqs: Vec<i64>,
    order_ids: Vec<Option<Uuid>>,
    expired: Vec<Option<Uuid>>,
    chains: Vec<&'a str>,
    assets: Vec<&'a str>,
    holders: Vec<Option<&'a str>>,
    kinds: Vec<&'a str>,
    issuers: Vec<&'a str>,
    outcomes: Vec<&'a str>,
    reasons: Vec<&'a str>,
    priorities: Vec<i32>,
    policy_versions: Vec<&'a str>,
    versions: Vec<i64>,
    decided: Vec<DateTime<Utc>>,
    texts: Vec<&'a str>,
    hashes: Vec<Vec<u8>>,
    /// The policy index (`decision_policies`): one row per policy a record names among its
    /// determining policies, from the same record that was sealed, not parsed back out of its
    /// text.
    indexed_policies: Vec<&'a str>,
    indexed_seqs: Vec<i64>,
}

impl<'a> DecisionRows<'a> {
    fn of(records: &'a [SealedRecord]) -> Self {
        let n = records.len();
        let mut rows = Self {
            seqs: Vec::with_capacity(n),
            order_ids: Vec::with_capacity(n),
            expired: Vec::with_capacity(n),
            chains: Vec::with_capacity(n),
            assets: Vec::with_capacity(n),
            holders: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            issuers: Vec::with_capacity(n),
            outcomes: Vec::with_capacity(n),
            reasons: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            policy_versions: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            decided: Vec::with_capacity(n),
            texts: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            indexed_policies: Vec::with_capacity(n),
            indexed_seqs: Vec::with_capacity(n),
        };
        for s in records {
            let r = &s.record;
            rows.seqs.push(r.seq as i64);
            match r.subject {
                crate::domain::Subject::Order { order_id } => {
                    rows.order_ids.push(Some(order_id.as_uuid()));
                    rows.expired.push(None);
                }
                crate::domain::Subject::Expiry { hold } => {
                    rows.order_ids.push(None);
                    rows.expired.push(Some(hold.as_uuid()));
                }
            }
            rows.chains.push(r.target.asset.chain.as_str());
            rows.assets.push(r.target.asset.asset.as_str());
            rows.holders
                .push(r.target.holder.as_ref().map(|h| h.as_str()));
            rows.kinds.push(r.kind.as_str());
            rows.issuers.push(r.issuer.as_str());
            rows.outcomes.push(r.outcome.as_str());
            rows.reasons.push(r.reason_code.as_str());
            rows.priorities.push(i32::from(r.priority.value()));
            rows.versions.push(r.state_after.version as i64);
            rows.policy_versions.push(r.policy_version.as_str());
            rows.decided.push(r.decided_at);
            rows.texts.push(s.text.as_str());
            rows.hashes.push(s.hash.to_vec());
            for (i, policy) in r.determining_policies.iter().enumerate() {
                // A policy named twice is indexed once (the table's key is policy and seq).
                if !r.determining_policies[..i].contains(policy) {
                    rows.indexed_policies.push(policy.as_str());
                    rows.indexed_seqs.push(r.seq as i64);
                }
            }
        }
        rows
    }
}

/// The assets' `asset_state` rows after the round, one array per column.
struct StateRows<'a> {
    chains: Vec<&'a str>,
    assets: Vec<&'a str>,
    versions: Vec<i64>,
    tokens: Vec<i64>,
    expiries: Vec<Option<DateTime<Utc>>>,
}

impl<'a> StateRows<'a> {
    fn of(changes: &'a [StateChange]) -> Self {
        Self {
            chains: changes.iter().map(|c| c.key.chain.as_str()).collect(),
            assets: changes.iter().map(|c| c.key.asset.as_str()).collect(),
            versions: changes.iter().map(|c| c.version as i64).collect(),
            tokens: changes
                .iter()
                .map(|c| c.last_fencing_token as i64)
                .collect(),
            expiries: changes.iter().map(|c| c.next_expiry).collect(),
        }
    }
}

/// Refuses the commit unless a statement touched all `wanted` rows: "`done` of the `wanted`
/// `what`".
fn all_rows(done: i64, wanted: usize, what: &str) -> Result<(), StorageError> {
    if usize::try_from(done).is_ok_and(|done| done == wanted) {
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
