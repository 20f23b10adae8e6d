//! The intake queue as the sequencer reads it: what a round fetches (pending orders, due
//! expiries, the clock), the orders a leading replica hands its round to take in, and the
//! queue's upkeep.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgTransactionManager;
use sqlx::{PgConnection, PgPool, Row, TransactionManager};
use uuid::Uuid;

use super::intake::{Intake, NewOrder, INTAKE_GATE};
use super::{asset_key, order_from_row, registered, StorageError};
use crate::domain::{AssetKey, Order, RegisteredAsset};

/// The query for pending orders with their assets' attributes, in the columns
/// [`pending_orders`] reads: the queue's rows that `$queue` (a filter, an order and a limit on
/// `intake_queue q`) picks, each order and asset then looked up by its key.
///
/// The lookups are fenced subqueries (`LATERAL … LIMIT 1`), so the plan cannot turn them into
/// a hash join over the whole of `orders` (which only grows) or `assets`. It did: the queue is
/// inserted into and deleted from all day, its dead rows wait for a vacuum, and the planner
/// sizes it by its pages. With 180,000 dead rows (a minute of single orders between two runs of
/// autovacuum) it planned a fetch of 25 pending orders as a hash of every order and every
/// asset, 17–32 ms instead of about 1.
macro_rules! pending_orders_sql {
    ($queue:literal) => {
        concat!(
            "SELECT o.order_id, o.issuer, o.chain, o.asset, o.holder, o.intake_at, o.body,
                    a.issuer_jurisdiction, a.asset_class
             FROM (SELECT q.order_id, q.chain, q.asset, q.intake_at FROM intake_queue q ",
            $queue,
            ") q
             CROSS JOIN LATERAL (
                 SELECT o.order_id, o.issuer, o.chain, o.asset, o.holder, o.intake_at, o.body
                 FROM orders o WHERE o.order_id = q.order_id LIMIT 1) o
             CROSS JOIN LATERAL (
                 SELECT a.issuer_jurisdiction, a.asset_class
                 FROM assets a WHERE a.chain = q.chain AND a.asset = q.asset LIMIT 1) a
             ORDER BY q.intake_at, q.order_id"
        )
    };
}

/// An undecided order with its asset's attributes, as the sequencer fetches it.
#[derive(Debug, Clone)]
pub struct PendingOrder {
    pub order: Order,
    pub asset: RegisteredAsset,
}

/// What the sequencer sees when it looks for work.
#[derive(Debug)]
pub struct Work {
    pub now: DateTime<Utc>,
    pub pending: Vec<PendingOrder>,
    /// True when `limit` cut the fetch short.
    pub truncated: bool,
    /// Assets with a hold due to expire at `now`.
    pub expiring: Vec<RegisteredAsset>,
    /// The earliest expiry still ahead.
    pub next_expiry: Option<DateTime<Utc>>,
    /// Requests for ledger events are waiting.
    pub requests: bool,
    /// What became of the orders the fetch was given to take in, in their order; they are in
    /// the connection's open transaction, durable only once it commits.
    pub taken: Option<Vec<Intake>>,
    /// The orders taken in and accepted, not queued (`pending` is only the queue's): the round
    /// decides them with the rest, and queues those it does not decide ([`super::queue_taken`]).
    pub taken_in: Vec<PendingOrder>,
}

/// Fetches what there is to decide, leaving out `in_flight` (the orders of a round being
/// committed, still in the queue until it lands). With `settle_intake`, first waits for every
/// intake transaction in flight to commit, so that every order stamped at or before the
/// returned `now` is visible: a window that has closed by `now` is then complete. (With a
/// window of 0 only orders of one statement group together, and they commit together, so it is
/// not needed.)
///
/// With `take_in`, the leading replica's own single orders (`crate::sequencer::Handoff`), it
/// first opens a transaction and takes them in on `conn` as [`super::intake`] would, but
/// without queueing them: they come back in [`Work::taken_in`], and the round queues those it
/// does not decide ([`super::queue_taken`]). The round's commit ([`super::commit`]) then makes them
/// durable with their decisions, one commit where there were two, or [`commit_taken`] does if
/// the round has nothing to commit; a failed round leaves them unwritten ([`roll_back_round`]).
pub async fn fetch_work(
    conn: &mut PgConnection,
    limit: i64,
    settle_intake: bool,
    in_flight: &[Uuid],
    take_in: Option<&[NewOrder]>,
) -> Result<Work, StorageError> {
    const CLOCK: &str = "SELECT clock_timestamp(),
                (SELECT min(next_expiry) FROM asset_state WHERE next_expiry > clock_timestamp()),
                EXISTS (SELECT 1 FROM ledger_requests WHERE done_at IS NULL)";
    // With a window, the clock is read behind the gate before anything is taken in: taken in
    // the round's transaction, the gate's exclusive lock would last until the round commits and
    // hold every other intake back meanwhile. The orders taken in then stamp a later time, as
    // any intake after the gate does, and wait for their window. Without a window the clock is
    // read after them, so that they are stamped before `now` and their group is ready at once.
    let gated = if settle_intake {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INTAKE_GATE)
            .execute(&mut *tx)
            .await?;
        let clock = sqlx::query(CLOCK).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Some(clock)
    } else {
        None
    };
    // Taken in, not queued: the round decides them from what comes back, and queues only those
    // it does not decide.
    let (taken, taken_in) = match take_in {
        Some(orders) => {
            PgTransactionManager::begin(&mut *conn, None).await?;
            let (outcomes, accepted) = super::intake::take_in(&mut *conn, orders).await?;
            (Some(outcomes), accepted)
        }
        None => (None, Vec::new()),
    };
    let clock = match gated {
        Some(clock) => clock,
        None => sqlx::query(CLOCK).fetch_one(&mut *conn).await?,
    };
    let now: DateTime<Utc> = clock.get(0);
    let next_expiry: Option<DateTime<Utc>> = clock.get(1);
    let requests: bool = clock.get(2);

    let rows = if in_flight.is_empty() {
        sqlx::query(pending_orders_sql!(
            "ORDER BY q.intake_at, q.order_id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
    } else {
        // Planned with its values each time (an unnamed statement): Postgres then looks the
        // ids up in a hash table; a cached generic plan compares each row with every id.
        sqlx::query(pending_orders_sql!(
            "WHERE q.order_id <> ALL($2) ORDER BY q.intake_at, q.order_id LIMIT $1"
        ))
        .bind(limit)
        .bind(in_flight)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?
    };

    let truncated = rows.len() as i64 >= limit;
    let pending = pending_orders(&rows)?;

    // Each due asset's attributes looked up by key, as in `pending_orders_sql!`: a join free
    // to choose read every registered asset in every round to find the few with a hold due.
    let expiring = sqlx::query(
        "SELECT s.chain, s.asset, a.issuer_jurisdiction, a.asset_class
         FROM asset_state s
         CROSS JOIN LATERAL (
             SELECT a.issuer_jurisdiction, a.asset_class
             FROM assets a WHERE a.chain = s.chain AND a.asset = s.asset LIMIT 1) a
         WHERE s.next_expiry <= $1",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| registered(asset_key(r.get(0), r.get(1))?, r.get(2), r.get(3)))
    .collect::<Result<Vec<_>, _>>()?;

    Ok(Work {
        now,
        pending,
        truncated,
        expiring,
        next_expiry,
        requests,
        taken,
        taken_in,
    })
}

/// Commits the orders [`fetch_work`] took in, when their round has nothing else to commit
/// (nothing was ready, or event requests go first). A no-op if none were taken in.
pub async fn commit_taken(conn: &mut PgConnection) -> Result<(), StorageError> {
    PgTransactionManager::commit(conn).await?;
    Ok(())
}

/// Rolls back what a failed round left open on `conn` (the orders it took in, its writes): none
/// of it was written. Best effort: if the connection is broken, so is its transaction.
pub async fn roll_back_round(conn: &mut PgConnection) {
    if let Err(error) = PgTransactionManager::rollback(conn).await {
        tracing::debug!(%error, "rolling back a failed round");
    }
}

/// Every pending order on `key` stamped at or before `closes_at`: one whole conflict window,
/// whatever the fetch limit. Read along the arrival index, keeping `key`'s: the queue holds
/// only undecided orders, and this runs only for a burst past the fetch limit inside one
/// window, so it has no index of its own to pay for on every intake.
pub async fn fetch_window(
    conn: &mut PgConnection,
    key: &AssetKey,
    closes_at: DateTime<Utc>,
) -> Result<Vec<PendingOrder>, StorageError> {
    let rows = sqlx::query(pending_orders_sql!(
        "WHERE q.chain = $1 AND q.asset = $2 AND q.intake_at <= $3"
    ))
    .bind(key.chain.as_str())
    .bind(key.asset.as_str())
    .bind(closes_at)
    .fetch_all(&mut *conn)
    .await?;
    pending_orders(&rows)
}

/// Reads rows of (order columns, issuer_jurisdiction, asset_class).
fn pending_orders(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<PendingOrder>, StorageError> {
    rows.iter()
        .map(|r| {
            let order = order_from_row(r, 0)?;
            let asset = registered(order.target.asset.clone(), r.get(7), r.get(8))?;
            Ok(PendingOrder { order, asset })
        })
        .collect()
}

/// Vacuums `intake_queue`, skipping it if another vacuum holds it.
///
/// Every order of a batch or from a follower is inserted into the queue and deleted from it
/// once decided (a leader's single orders only when their round cannot decide them at once), so
/// at a few thousand orders a second the queue leaves that many dead rows a second. Autovacuum looks at
/// a table once a minute (its default `autovacuum_naptime`), and until then each fetch reads
/// past every dead row: the leader runs this every second instead (`app`), about 1 ms for a
/// second's dead rows, which keeps the queue a few pages long and its statistics true.
///
/// Only the table's owner (or a superuser) may vacuum it; see [`may_vacuum_intake_queue`].
pub async fn vacuum_intake_queue(pool: &PgPool) -> Result<(), StorageError> {
    // VACUUM cannot run in a transaction block: a simple query is its own statement. No
    // truncation: cutting the empty pages off the end of the table takes an exclusive lock
    // that would hold intake's inserts back, and the pages are reused anyway.
    sqlx::raw_sql("VACUUM (SKIP_LOCKED, TRUNCATE false) intake_queue")
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether the service's role may vacuum `intake_queue`: it owns the table (directly or as a
/// member of the owning role) or is a superuser. Postgres answers a VACUUM it may not run with
/// a warning, not an error, which the leader would otherwise log every second.
pub async fn may_vacuum_intake_queue(pool: &PgPool) -> Result<bool, StorageError> {
    let may: bool = sqlx::query_scalar(
        "SELECT pg_has_role(current_user, c.relowner, 'MEMBER')
                OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
         FROM pg_class c WHERE c.oid = 'intake_queue'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok(may)
}
