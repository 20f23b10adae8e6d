//! The machine's own ceilings, measured in the same run as the service, so a throughput figure
//! can be read as a fraction of what this Postgres on this machine commits at all.
//!
//! Two loads, straight over sqlx on the bench database (no service in between), each for a fixed
//! time:
//!
//! - **single**: `concurrency` connections, each committing one-row `INSERT`s one after the
//!   other (autocommit, `synchronous_commit = on`, so every one waits for its WAL flush), the
//!   shape of `pgbench`'s simple write. It bounds single orders: each is at least one durable
//!   commit of its own.
//! - **batch**: `senders` connections, each committing transactions of 1,000 *decision-shaped*
//!   rows: a 2.4 KB record and four indexed columns (seq, order id, target, time), inserted with
//!   one `INSERT … SELECT FROM unnest(…)`. It bounds batches: a decision is at least one such row.
//!
//! The tables are created in the bench database (dropped with it by the next run) and emptied
//! first, so neither load meets the other's rows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::harness::{Context, Failure};

/// Rows per batch-ceiling transaction: the size of a full batch request.
pub(crate) const BATCH_ROWS: usize = 1_000;
/// The record column's size, about a decision record's JSON.
const RECORD_BYTES: usize = 2_400;

/// What the two loads reached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ceilings {
    /// Durable one-row commits per second.
    pub single_tps: f64,
    /// Decision-shaped rows per second, in 1,000-row transactions.
    pub batch_rows: f64,
}

/// Runs both loads for `secs` each.
pub(crate) async fn measure(
    database_url: &str,
    concurrency: usize,
    senders: usize,
    secs: u64,
) -> Result<Ceilings, Failure> {
    let pool = PgPoolOptions::new()
        .max_connections((concurrency.max(senders) + 1) as u32)
        .connect(database_url)
        .await
        .context("cannot connect for the ceilings")?;
    for statement in [
        "CREATE TABLE IF NOT EXISTS bench_ceiling_single (id bigserial PRIMARY KEY, worker int NOT NULL, payload text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bench_ceiling_batch (seq bigint PRIMARY KEY, order_id uuid NOT NULL, target text NOT NULL, decided_at timestamptz NOT NULL, record text NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bench_ceiling_batch_order ON bench_ceiling_batch (order_id)",
        "CREATE INDEX IF NOT EXISTS bench_ceiling_batch_target ON bench_ceiling_batch (target, seq)",
        "CREATE INDEX IF NOT EXISTS bench_ceiling_batch_time ON bench_ceiling_batch (decided_at)",
        "TRUNCATE bench_ceiling_single, bench_ceiling_batch",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .context("cannot create the ceiling tables")?;
    }
    let window = Duration::from_secs(secs.max(1));
    let single = run(&pool, concurrency, window, |pool, worker, _| async move {
        sqlx::query("INSERT INTO bench_ceiling_single (worker, payload) VALUES ($1, $2)")
            .bind(worker as i32)
            .bind("x".repeat(100))
            .execute(&pool)
            .await
            .map(|_| 1)
    })
    .await?;
    let next_seq = Arc::new(AtomicU64::new(0));
    let batch = run(&pool, senders, window, move |pool, _, _| {
        let next_seq = Arc::clone(&next_seq);
        async move {
            let first = next_seq.fetch_add(BATCH_ROWS as u64, Ordering::Relaxed) as i64;
            let seqs: Vec<i64> = (first..first + BATCH_ROWS as i64).collect();
            let ids: Vec<uuid::Uuid> = (0..BATCH_ROWS).map(|_| uuid::Uuid::new_v4()).collect();
            let targets: Vec<String> = seqs
                .iter()
                .map(|s| format!("ethereum/0xBENCH-{}/0xH{s}", s % 1_000))
                .collect();
            let records: Vec<String> = seqs
                .iter()
                .map(|s| format!("{{\"seq\":{s},\"r\":\"{}\"}}", "r".repeat(RECORD_BYTES)))
                .collect();
            sqlx::query(
                "INSERT INTO bench_ceiling_batch (seq, order_id, target, decided_at, record) \
                 SELECT s, o, t, now(), r FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[]) AS u(s, o, t, r)",
            )
            .bind(&seqs)
            .bind(&ids)
            .bind(&targets)
            .bind(&records)
            .execute(&pool)
            .await
            .map(|done| done.rows_affected())
        }
    })
    .await?;
    pool.close().await;
    Ok(Ceilings {
        single_tps: single,
        batch_rows: batch,
    })
}

/// `workers` loops of `step` for `window`; returns rows per second.
async fn run<F, Fut>(
    pool: &PgPool,
    workers: usize,
    window: Duration,
    step: F,
) -> Result<f64, Failure>
where
    F: Fn(PgPool, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let rows = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let (pool, stop, rows, step) = (
                pool.clone(),
                Arc::clone(&stop),
                Arc::clone(&rows),
                step.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rows.fetch_add(step(pool.clone(), worker, n).await?, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    // Rows committed by the last statements count, over the time they took to finish.
    for handle in handles {
        handle
            .await
            .context("a ceiling worker died")?
            .context("a ceiling statement failed")?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(rows.load(Ordering::Relaxed) as f64 / secs)
}
