//! `regulator-bench orders`: a load generator that drives the real service over loopback HTTP.
//!
//! What it does, in order:
//!
//! 1. **A clean database.** Drops and recreates the database of `--database-url` (default
//!    `postgres://postgres@127.0.0.1:5432/regulator_bench`, env `REGULATOR_BENCH_DATABASE_URL`),
//!    terminating its other connections (`DROP DATABASE … WITH (FORCE)`), pins
//!    `synchronous_commit = on` on it, and migrates it with [`regulator::storage::connect`]. As a
//!    safety net it refuses any database whose name does not contain `bench`.
//! 2. **The real service, in-process.** [`App::start_with_pool`] on `127.0.0.1:0` with a fresh
//!    development secret in a temporary directory and the conflict window `--window-ms` (default
//!    0). The service runs on its own Tokio runtime (threads named `regulator-srv`), the load
//!    generator on another (`bench-client`), so the report can split the process's CPU between
//!    them.
//! 3. **Assets.** Registers `--assets` U.S. securities `ethereum/0xBENCH-<n>` through
//!    `PUT /v1/assets/{chain}/{asset}` with an admin token.
//! 4. **Load**, with a token for `--sub` (default `US-SEC`) and `--roles` (default `regulator`):
//!    - `single`: `--concurrency` workers (default 64), each sending `POST /v1/orders`
//!      one after the other and waiting for each answer, `--warmup` orders first (default
//!      2,000, not measured), then `--orders` measured ones (default 50,000);
//!    - `batch`: `--batch-concurrency` senders (default 4) of `POST /v1/orders/batch` with
//!      `--batch-size` items each (default 1,000), `--batch-warmup` orders first (default
//!      8,000), then `--batch-orders` measured ones (default 200,000), asking for answers
//!      with `?detail=summary` (`--batch-detail full` for every record);
//!    - `--mode both` (the default) runs `single`, then `batch`.
//!
//!    Every order is a FREEZE on a target of its own — `{chain, asset: 0xBENCH-<n % assets>,
//!    holder: 0xH<n>}` — on a `court_order` legal basis, with a unique `Idempotency-Key`, so
//!    every one should be APPLIED; the report shows the outcome distribution to prove it.
//! 5. **Report**, per mode: orders sent, decisions per second (only items answered 201, i.e.
//!    decided within the server's submit wait; 202 pending and errors are counted apart),
//!    latency p50/p95/p99/max of the HTTP round trip (per request; per batch in batch mode),
//!    outcome counts, and where the time went: CPU seconds of the service threads, of the
//!    load generator's threads and of the bench database's Postgres processes; sequencer rounds
//!    and records per round (from the service's metrics); database commits, WAL bytes and WAL
//!    syncs (`pg_stat_wal` is cluster-wide), with WAL bytes and records per decision.
//! 6. **The machine's ceilings** (`--ceiling-secs` each, default 10; 0 skips them), measured
//!    on the same database right after ([`crate::ceilings`]): durable one-row commits at
//!    `--concurrency` connections, and 1,000-row transactions of decision-shaped rows at
//!    `--batch-concurrency`. The targets are printed PASS/FAIL, as decisions/s and as a
//!    fraction of each ceiling (single ≥ 0.45×, batch ≥ 0.33×), which compares across noisy
//!    machines; the exit code is 1 if one was missed.
//!
//! Each mode stops taking new work after `--duration-secs` (default 120) even if it has not
//! sent everything; the service is stopped at the end ([`App::stop`]). The database is left in
//! place for inspection (`EXPLAIN ANALYZE`, counts); the next run drops it.
//!
//! Example: `cargo run --release -p regulator-bench -- orders --mode both`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Deserialize;
use sqlx::Connection;

use regulator::app::App;
use regulator::auth::Role;

use crate::ceilings::{self, Ceilings};
use crate::harness::{
    bench_client, print_header, register_assets, wait_until_leading, Context, Failure, Harness,
    ServiceArgs, Snapshot, Stats, Tokens, CHAIN,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BatchDetail {
    Summary,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Single,
    Batch,
    Both,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Postgres URL of the bench database. It is DROPPED and recreated; its name must contain
    /// `bench`.
    #[arg(
        long,
        env = "REGULATOR_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator_bench"
    )]
    database_url: String,
    #[command(flatten)]
    service: ServiceArgs,
    /// Which load to run.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Assets to register (U.S. securities `ethereum/0xBENCH-<n>`); orders spread over them.
    #[arg(long, default_value_t = 1_000)]
    assets: u64,
    /// Single mode: concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Single mode: measured orders.
    #[arg(long, default_value_t = 50_000)]
    orders: u64,
    /// Single mode: orders sent before measuring.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Batch mode: orders per batch request (the server takes at most 1,000).
    #[arg(long, default_value_t = 1_000)]
    batch_size: u64,
    /// Batch mode: concurrent senders, each with one batch in flight.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Batch mode: measured orders.
    #[arg(long, default_value_t = 200_000)]
    batch_orders: u64,
    /// Batch mode: how much of each decision the answers carry (`?detail=`): `summary` (seq,
    /// outcome, reason code), what a portal sending a sanctions list needs back, or `full`
    /// (every record, about 1.5 KB each).
    #[arg(long, value_enum, default_value_t = BatchDetail::Summary)]
    batch_detail: BatchDetail,
    /// Batch mode: orders sent before measuring.
    #[arg(long, default_value_t = 8_000)]
    batch_warmup: u64,
    /// Cap per mode (warm-up included), in seconds: no new request starts after it.
    #[arg(long, default_value_t = 120)]
    duration_secs: u64,
    /// The authority the orders come from (the token's `sub`).
    #[arg(long, default_value = "US-SEC")]
    sub: String,
    /// Roles of the submitting token, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "regulator")]
    roles: Vec<Role>,
    /// Seconds each of the machine's two ceilings is measured for, after the modes (0: skip).
    #[arg(long, default_value_t = 10)]
    ceiling_secs: u64,
}

/// Issue 14's targets: decisions/s, and the same as a fraction of the machine's ceilings.
const SINGLE_TARGET: f64 = 5_000.0;
const SINGLE_P99_TARGET_MS: f64 = 50.0;
const BATCH_TARGET: f64 = 28_000.0;
const SINGLE_RATIO_TARGET: f64 = 0.45;
const BATCH_RATIO_TARGET: f64 = 0.33;

impl BenchArgs {
    pub fn run(self) -> ExitCode {
        match self.bench() {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }

    /// Whether every target measured was met.
    fn bench(self) -> Result<bool, Failure> {
        if self.batch_size == 0 || self.batch_size > 1_000 {
            return Err(Failure("--batch-size must be between 1 and 1000".into()));
        }
        if self.assets == 0 || self.concurrency == 0 || self.batch_concurrency == 0 {
            return Err(Failure(
                "--assets, --concurrency and --batch-concurrency must be positive".into(),
            ));
        }
        Harness {
            database_url: &self.database_url,
            service: &self.service,
            webhooks: regulator::webhooks::WebhookConfig::default(),
            checkpoint_interval: Duration::from_secs(60),
        }
        .run(async |app, tokens| self.drive(app, tokens).await)
    }

    /// Registers the assets, runs the modes, prints the report; whether the targets were met.
    async fn drive(&self, app: &App, tokens: &Tokens) -> Result<bool, Failure> {
        let base = format!("http://{}", app.addr);
        let admin = tokens.mint("bench-ops", vec![Role::Admin])?;
        let token = tokens.mint(&self.sub, self.roles.clone())?;
        let pool_size = self.concurrency.max(self.batch_concurrency) + 16;
        let client = bench_client(pool_size, Duration::from_secs(60))?;

        let mut stats = Stats::connect(&self.database_url).await?;
        print_header(
            "regulator-bench orders",
            &mut stats,
            &self.service.db_settings,
        )
        .await?;
        println!("{}", self.service.describe(&base));

        wait_until_leading(&client, &base).await?;
        let started = Instant::now();
        register_assets(&client, &base, &admin, self.assets).await?;
        println!(
            "  assets                 {} registered in {:.2} s",
            self.assets,
            started.elapsed().as_secs_f64()
        );

        let ctx = Arc::new(Ctx {
            client,
            orders_url: format!("{base}/v1/orders"),
            batch_url: match self.batch_detail {
                BatchDetail::Summary => format!("{base}/v1/orders/batch?detail=summary"),
                BatchDetail::Full => format!("{base}/v1/orders/batch?detail=full"),
            },
            token,
            assets: self.assets,
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("cannot make a latency histogram")?,
        });
        let cap = Duration::from_secs(self.duration_secs);
        // Every order gets a number of its own, across modes: its key and holder derive from it.
        let mut next = 0u64;
        let mut single_rate = None;
        let mut batch_rate = None;
        if matches!(self.mode, Mode::Single | Mode::Both) {
            let deadline = Instant::now() + cap;
            run_phase(
                &ctx,
                Kind::Single,
                self.concurrency,
                1,
                next,
                self.warmup,
                deadline,
            )
            .await;
            next += self.warmup;
            let before = stats.snapshot().await?;
            let tally = run_phase(
                &ctx,
                Kind::Single,
                self.concurrency,
                1,
                next,
                self.orders,
                deadline,
            )
            .await;
            let after = stats.snapshot().await?;
            next += self.orders;
            let title = format!("single: POST /v1/orders, {} workers", self.concurrency);
            let rate = report(&title, &tally, &before, &after, self.orders, "request");
            single_rate = Some((rate, tally.latency.value_at_quantile(0.99) as f64 / 1000.0));
        }
        if matches!(self.mode, Mode::Batch | Mode::Both) {
            let deadline = Instant::now() + cap;
            let size = self.batch_size;
            let conc = self.batch_concurrency;
            run_phase(
                &ctx,
                Kind::Batch,
                conc,
                size,
                next,
                self.batch_warmup,
                deadline,
            )
            .await;
            next += self.batch_warmup;
            let before = stats.snapshot().await?;
            let tally = run_phase(
                &ctx,
                Kind::Batch,
                conc,
                size,
                next,
                self.batch_orders,
                deadline,
            )
            .await;
            let after = stats.snapshot().await?;
            let detail = match self.batch_detail {
                BatchDetail::Summary => "summary",
                BatchDetail::Full => "full",
            };
            let title = format!(
                "batch: POST /v1/orders/batch?detail={detail}, {size} orders per batch, {conc} senders"
            );
            batch_rate = Some(report(
                &title,
                &tally,
                &before,
                &after,
                self.batch_orders,
                "batch",
            ));
        }
        let _ = stats.conn.close().await;
        let ceilings = if self.ceiling_secs > 0 {
            Some(
                ceilings::measure(
                    &self.database_url,
                    self.concurrency,
                    self.batch_concurrency,
                    self.ceiling_secs,
                )
                .await?,
            )
        } else {
            None
        };
        Ok(verdict(single_rate, batch_rate, ceilings, self))
    }
}

/// What every worker shares.
struct Ctx {
    client: reqwest::Client,
    orders_url: String,
    batch_url: String,
    token: String,
    assets: u64,
    /// An empty latency histogram (1 µs to 10 min, 3 significant digits) to clone.
    histogram: Histogram<u64>,
}

impl Ctx {
    /// Order number `n`: a FREEZE on a target of its own.
    fn order(&self, n: u64) -> String {
        order_body(n, self.assets)
    }
}

/// Order number `n` over `assets` assets: a FREEZE of holder `0xH<n>` of asset
/// `0xBENCH-<n % assets>`, on a court order, which the U.S. policy applies.
pub(crate) fn order_body(n: u64, assets: u64) -> String {
    format!(
        r#"{{"target":{{"chain":"{CHAIN}","asset":"0xBENCH-{}","holder":"0xH{n}"}},"legal_basis":{{"instrument":"court_order","reference":"SEC v. Bench Holder {n}, 26-cv-{n} (S.D.N.Y.)"}},"instruction":{{"kind":"FREEZE"}}}}"#,
        n % assets
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
}

/// What one phase saw.
struct Tally {
    elapsed: Duration,
    requests: u64,
    /// Orders sent (items, in batch mode).
    sent: u64,
    /// Items answered 201: accepted and decided within the submit wait.
    decided: u64,
    /// Items answered 202: accepted, still pending when the submit wait ran out.
    pending: u64,
    /// Items answered anything else (by status), or requests that failed.
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    outcomes: BTreeMap<String, u64>,
    /// Round trip per request, in microseconds.
    latency: Histogram<u64>,
}

impl Tally {
    fn new(latency: Histogram<u64>) -> Self {
        Self {
            elapsed: Duration::ZERO,
            requests: 0,
            sent: 0,
            decided: 0,
            pending: 0,
            errors: BTreeMap::new(),
            first_error: None,
            outcomes: BTreeMap::new(),
            latency,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.sent += other.sent;
        self.decided += other.decided;
        self.pending += other.pending;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        let _ = self.latency.add(&other.latency);
    }

    fn error(&mut self, class: String, detail: impl FnOnce() -> String) {
        *self.errors.entry(class).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
    }

    /// Counts one item's answer.
    fn item(&mut self, status: u16, decision: Option<Decision>, body: impl FnOnce() -> String) {
        match status {
            201 => {
                self.decided += 1;
                let outcome = decision.map_or_else(|| "(no decision)".to_owned(), |d| d.outcome);
                *self.outcomes.entry(outcome).or_default() += 1;
            }
            202 => self.pending += 1,
            other => self.error(other.to_string(), body),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Decision {
    outcome: String,
}

#[derive(Debug, Deserialize)]
struct SingleReply {
    decision: Option<Decision>,
}

#[derive(Debug, Deserialize)]
struct BatchReply {
    results: Vec<BatchItemReply>,
}

#[derive(Debug, Deserialize)]
struct BatchItemReply {
    status: u16,
    /// With `detail=full`.
    decision: Option<Decision>,
    /// With `detail=summary`.
    decision_summary: Option<Decision>,
    problem: Option<serde_json::Value>,
}

/// Sends orders `first..first + count` with `workers` concurrent senders of `size` orders each
/// (1 = one `POST /v1/orders` per order), starting no request after `deadline`.
async fn run_phase(
    ctx: &Arc<Ctx>,
    kind: Kind,
    workers: usize,
    size: u64,
    first: u64,
    count: u64,
    deadline: Instant,
) -> Tally {
    let cursor = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let ctx = Arc::clone(ctx);
            let cursor = Arc::clone(&cursor);
            tokio::spawn(async move {
                let mut tally = Tally::new(ctx.histogram.clone());
                loop {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let at = cursor.fetch_add(size, Ordering::Relaxed);
                    if at >= count {
                        break;
                    }
                    let n = size.min(count - at);
                    match kind {
                        Kind::Single => single(&ctx, first + at, &mut tally).await,
                        Kind::Batch => batch(&ctx, first + at, n, &mut tally).await,
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::new(ctx.histogram.clone());
    for handle in handles {
        match handle.await {
            Ok(tally) => total.merge(tally),
            Err(e) => total.error("worker died".into(), || e.to_string()),
        }
    }
    total.elapsed = started.elapsed();
    total
}

async fn single(ctx: &Ctx, n: u64, tally: &mut Tally) {
    let body = ctx.order(n);
    let started = Instant::now();
    let sent = ctx
        .client
        .post(&ctx.orders_url)
        .bearer_auth(&ctx.token)
        .header("Idempotency-Key", format!("bench-{n}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    tally.requests += 1;
    tally.sent += 1;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return tally.error("transport".into(), || e.to_string()),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return tally.error("transport".into(), || e.to_string()),
    };
    record(&mut tally.latency, started.elapsed());
    let decision = match status {
        201 => match serde_json::from_slice::<SingleReply>(&bytes) {
            Ok(reply) => reply.decision,
            Err(e) => return tally.error("unparsable".into(), || e.to_string()),
        },
        _ => None,
    };
    tally.item(status, decision, || {
        format!("{status}: {}", String::from_utf8_lossy(&bytes))
    });
}

async fn batch(ctx: &Ctx, first: u64, count: u64, tally: &mut Tally) {
    let mut body = String::with_capacity(count as usize * 260 + 16);
    body.push_str(r#"{"orders":["#);
    for n in first..first + count {
        if n > first {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"idempotency_key":"bench-{n}","order":{}}}"#,
            ctx.order(n)
        ));
    }
    body.push_str("]}");
    let started = Instant::now();
    let sent = ctx
        .client
        .post(&ctx.batch_url)
        .bearer_auth(&ctx.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    tally.requests += 1;
    tally.sent += count;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            tally.error("transport".into(), || e.to_string());
            return;
        }
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return tally.error("transport".into(), || e.to_string()),
    };
    record(&mut tally.latency, started.elapsed());
    if status != 200 {
        *tally.errors.entry(format!("batch {status}")).or_default() += count;
        if tally.first_error.is_none() {
            tally.first_error = Some(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        return;
    }
    match serde_json::from_slice::<BatchReply>(&bytes) {
        Ok(reply) => {
            if reply.results.len() as u64 != count {
                tally.error("short batch answer".into(), || {
                    format!("{} results for {count} items", reply.results.len())
                });
            }
            for item in reply.results {
                let problem = item.problem;
                tally.item(item.status, item.decision.or(item.decision_summary), || {
                    format!("{}: {}", item.status, problem.unwrap_or_default())
                });
            }
        }
        Err(e) => tally.error("unparsable".into(), || e.to_string()),
    }
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(micros.max(1));
}
/// Prints the ceilings, our throughput as a fraction of each, and each target met or missed.
fn verdict(
    single: Option<(f64, f64)>,
    batch: Option<f64>,
    ceilings: Option<Ceilings>,
    args: &BenchArgs,
) -> bool {
    println!();
    println!("== targets (synchronous_commit = on)");
    let mut met = true;
    let mut line = |what: String, ok: bool| {
        met &= ok;
        println!("  {:<62} {}", what, if ok { "PASS" } else { "FAIL" });
    };
    if let Some(c) = ceilings {
        println!(
            "  ceiling single         {:.0} durable one-row commits/s at {} connections",
            c.single_tps, args.concurrency
        );
        println!(
            "  ceiling batch          {:.0} decision-shaped rows/s in {}-row transactions, {} connections",
            c.batch_rows,
            ceilings::BATCH_ROWS,
            args.batch_concurrency
        );
    }
    if let Some((rate, p99)) = single {
        line(
            format!("single {rate:.0}/s >= {SINGLE_TARGET:.0}/s"),
            rate >= SINGLE_TARGET,
        );
        line(
            format!("single p99 {p99:.1} ms <= {SINGLE_P99_TARGET_MS:.0} ms"),
            p99 <= SINGLE_P99_TARGET_MS,
        );
        if let Some(c) = ceilings {
            let ratio = rate / c.single_tps.max(1e-9);
            line(
                format!("single {ratio:.2}x of the single ceiling >= {SINGLE_RATIO_TARGET}x"),
                ratio >= SINGLE_RATIO_TARGET,
            );
        }
    }
    if let Some(rate) = batch {
        line(
            format!("batch {rate:.0}/s >= {BATCH_TARGET:.0}/s"),
            rate >= BATCH_TARGET,
        );
        if let Some(c) = ceilings {
            let ratio = rate / c.batch_rows.max(1e-9);
            line(
                format!("batch {ratio:.2}x of the batch ceiling >= {BATCH_RATIO_TARGET}x"),
                ratio >= BATCH_RATIO_TARGET,
            );
        }
    }
    met
}

/// Prints one mode's report; returns its decisions per second.
fn report(
    title: &str,
    t: &Tally,
    before: &Snapshot,
    after: &Snapshot,
    asked: u64,
    per: &str,
) -> f64 {
    let secs = t.elapsed.as_secs_f64().max(1e-9);
    println!();
    println!("== {title}");
    if t.sent < asked {
        println!("  STOPPED BY --duration-secs: sent {} of {asked}", t.sent);
    }
    println!(
        "  sent                   {} orders in {} requests, {:.2} s",
        t.sent, t.requests, secs
    );
    println!(
        "  decided (201)          {}  =>  {:.0} decisions/s",
        t.decided,
        t.decided as f64 / secs
    );
    println!("  pending (202)          {}", t.pending);
    let errors: u64 = t.errors.values().sum();
    println!("  errors                 {errors} {:?}", t.errors);
    if let Some(e) = &t.first_error {
        let e: String = e.chars().take(400).collect();
        println!("  first error            {e}");
    }
    println!("  outcomes               {:?}", t.outcomes);
    let h = &t.latency;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  latency per {per:<9}  p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms",
        ms(0.50),
        ms(0.95),
        ms(0.99),
        h.max() as f64 / 1000.0,
        h.mean() / 1000.0
    );

    // Where the time went, between the two snapshots (they include ~1 s of idle each side).
    let window = match (before.at, after.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => secs,
    };
    let delta = |name: &str| {
        after.threads.get(name).copied().unwrap_or(0.0)
            - before.threads.get(name).copied().unwrap_or(0.0)
    };
    let service = delta("regulator-srv");
    let client = delta("bench-client");
    let other: f64 = after
        .threads
        .iter()
        .filter(|(k, _)| *k != "regulator-srv" && *k != "bench-client")
        .map(|(k, v)| v - before.threads.get(k).copied().unwrap_or(0.0))
        .sum();
    let mut pg_by_kind: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (kind, cpu)) in &after.postgres {
        let was = before.postgres.get(pid).map_or(0.0, |(_, c)| *c);
        *pg_by_kind.entry(kind.clone()).or_default() += cpu - was;
    }
    let pg: f64 = pg_by_kind.values().sum();
    println!(
        "  cpu (s, over {window:.1} s)    service {service:.2}  load generator {client:.2}  other threads {other:.2}  postgres {pg:.2} {}",
        pg_by_kind
            .iter()
            .filter(|(_, v)| **v >= 0.005)
            .map(|(k, v)| format!("[{k} {v:.2}]"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some((idle, stolen)) = before
        .machine
        .zip(after.machine)
        .and_then(|(b, a)| b.shares_until(&a))
    {
        println!(
            "  machine                of its CPU time over the same window: idle {idle:.0}%, taken by the host (steal) {stolen:.0}%"
        );
    }
    let decided = t.decided.max(1) as f64;
    println!(
        "  cpu per decision       service {:.1} µs  load generator {:.1} µs  postgres {:.1} µs",
        service / decided * 1e6,
        client / decided * 1e6,
        pg / decided * 1e6
    );
    let rounds = after.seq_rounds - before.seq_rounds;
    let records = after.seq_records - before.seq_records;
    let lat_n = after.latency_count - before.latency_count;
    let lat_s = after.latency_sum - before.latency_sum;
    println!(
        "  sequencer              {rounds:.0} commits, {:.1} records per commit, {:.1} commits/s; intake-to-decision mean {:.2} ms",
        records / rounds.max(1.0),
        rounds / secs,
        if lat_n > 0.0 { lat_s / lat_n * 1e3 } else { 0.0 }
    );
    let phases: Vec<f64> = (0..3)
        .map(|i| after.round_phases[i] - before.round_phases[i])
        .collect();
    let busy: f64 = phases.iter().sum();
    println!(
        "  sequencer rounds       {:.0}% of the time busy; per round: fetch {:.1} ms, decide and seal {:.1} ms, commit {:.1} ms",
        busy / secs * 100.0,
        phases[0] / rounds.max(1.0) * 1e3,
        phases[1] / rounds.max(1.0) * 1e3,
        phases[2] / rounds.max(1.0) * 1e3,
    );
    let commits = after.xact_commit - before.xact_commit;
    let wal_syncs = after.wal_sync - before.wal_sync;
    let wal_records = after.wal_records - before.wal_records;
    println!(
        "  database               {commits} transactions ({:.0}/s), WAL {:.1} MB ({:.0} B/decision, {} records, {:.1} per decision), {wal_syncs} WAL syncs ({:.0}/s), {} WAL writes",
        commits as f64 / secs,
        (after.wal_bytes - before.wal_bytes) / 1e6,
        (after.wal_bytes - before.wal_bytes) / decided,
        wal_records,
        wal_records as f64 / decided,
        wal_syncs as f64 / secs,
        after.wal_write - before.wal_write
    );
    t.decided as f64 / secs
}
