//! `regulator bench`: a load generator that drives the real service over loopback HTTP.
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
//!      8,000), then `--batch-orders` measured ones (default 200,000);
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
//!    syncs (`pg_stat_wal` is cluster-wide).
//!
//! Each mode stops taking new work after `--duration-secs` (default 120) even if it has not
//! sent everything; the service is stopped at the end ([`App::stop`]). The database is left in
//! place for inspection (`EXPLAIN ANALYZE`, counts); the next run drops it.
//!
//! Example: `cargo build --release && ./target/release/regulator bench --mode both`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use regulator::app::{App, Config};
use regulator::auth::{mint_dev_token, KeySource, Role};

const ISSUER: &str = "regulator";
const AUDIENCE: &str = "regulator";
pub(crate) const CHAIN: &str = "ethereum";

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
}

/// How a load generator's in-process service runs: the same options for every `bench*`
/// command (each names its own database).
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Directory of the jurisdiction policies.
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Conflict window W in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub window_ms: u32,
    /// How long a submission waits for its decision before the server answers 202, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub submit_wait_ms: u64,
    /// Database connections of the service's pool.
    #[arg(long, default_value_t = 16)]
    pub db_connections: u32,
    /// Extra settings for the bench database, `NAME=VALUE`, repeatable, applied with
    /// `ALTER DATABASE … SET` after `synchronous_commit = on` (so they can override it; the
    /// report header shows what is in effect). For profiling, e.g.
    /// `--db-setting log_min_duration_statement=0`.
    #[arg(long = "db-setting", value_name = "NAME=VALUE")]
    pub db_settings: Vec<String>,
    /// Worker threads of the service's runtime.
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
}

impl ServiceArgs {
    /// The report line that says how the service ran.
    pub(crate) fn describe(&self, base: &str) -> String {
        format!(
            "  service                {base} (window {} ms, submit wait {} ms, {} db connections, {} service threads, {} client threads)",
            self.window_ms, self.submit_wait_ms, self.db_connections, self.server_threads, self.client_threads
        )
    }

    /// A multi-thread runtime of `threads` workers named `name`.
    pub(crate) fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .context("cannot start a runtime")
    }
}

/// Why the bench could not run (exit code 2).
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {e}")))
    }
}

impl BenchArgs {
    pub fn run(self) -> ExitCode {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        match self.bench() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn bench(self) -> Result<(), Failure> {
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

    /// Registers the assets, runs the modes, prints the report.
    async fn drive(&self, app: &App, tokens: &Tokens) -> Result<(), Failure> {
        let base = format!("http://{}", app.addr);
        let admin = tokens.mint("bench-ops", vec![Role::Admin])?;
        let token = tokens.mint(&self.sub, self.roles.clone())?;
        let pool_size = self.concurrency.max(self.batch_concurrency) + 16;
        let client = bench_client(pool_size, Duration::from_secs(60))?;

        let mut stats = Stats::connect(&self.database_url).await?;
        print_header("regulator bench", &mut stats, &self.service.db_settings).await?;
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
            batch_url: format!("{base}/v1/orders/batch"),
            token,
            assets: self.assets,
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("cannot make a latency histogram")?,
        });
        let cap = Duration::from_secs(self.duration_secs);
        // Every order gets a number of its own, across modes: its key and holder derive from it.
        let mut next = 0u64;
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
            report(&title, &tally, &before, &after, self.orders, "request");
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
            let title =
                format!("batch: POST /v1/orders/batch, {size} orders per batch, {conc} senders");
            report(&title, &tally, &before, &after, self.batch_orders, "batch");
        }
        let _ = stats.conn.close().await;
        Ok(())
    }
}

/// Mints tokens with the in-process service's development secret.
pub(crate) struct Tokens {
    secret: PathBuf,
}

impl Tokens {
    /// A token for `sub` with `roles`, valid for longer than any bench runs.
    pub(crate) fn mint(&self, sub: &str, roles: Vec<Role>) -> Result<String, Failure> {
        mint_dev_token(
            &self.secret,
            ISSUER,
            AUDIENCE,
            sub,
            roles,
            chrono::Duration::hours(4),
        )
        .context("cannot mint a token")
    }
}

/// The in-process service of a load generator, and how it runs.
pub(crate) struct Harness<'a> {
    pub database_url: &'a str,
    pub service: &'a ServiceArgs,
    pub webhooks: regulator::webhooks::WebhookConfig,
    pub checkpoint_interval: Duration,
}

impl Harness<'_> {
    /// Recreates the bench database and starts the real service on it (runtime
    /// `regulator-srv`, with a fresh development secret in a temporary directory), runs `drive`
    /// on the load generator's own runtime (`bench-client`), then stops the service and removes
    /// the secret, whatever `drive` returned.
    pub(crate) fn run<T>(
        self,
        drive: impl AsyncFnOnce(&App, &Tokens) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let server_rt = ServiceArgs::runtime(self.service.server_threads, "regulator-srv")?;
        let client_rt = ServiceArgs::runtime(self.service.client_threads, "bench-client")?;
        let secret_dir =
            std::env::temp_dir().join(format!("regulator-bench-{}", uuid::Uuid::new_v4()));
        let tokens = Tokens {
            secret: secret_dir.join("dev-secret"),
        };
        let result = match server_rt.block_on(start_service(
            self.database_url,
            self.service,
            tokens.secret.clone(),
            self.webhooks,
            self.checkpoint_interval,
        )) {
            Ok(app) => {
                let result = client_rt.block_on(drive(&app, &tokens));
                server_rt.block_on(app.stop());
                result
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&secret_dir);
        drop(client_rt);
        server_rt.shutdown_timeout(Duration::from_secs(5));
        result
    }
}

/// Recreates the bench database `database_url` and starts the real service on it, on a
/// loopback port with a development secret, publishing checkpoints every
/// `checkpoint_interval`.
async fn start_service(
    database_url: &str,
    setup: &ServiceArgs,
    secret: PathBuf,
    webhooks: regulator::webhooks::WebhookConfig,
    checkpoint_interval: Duration,
) -> Result<App, Failure> {
    recreate_database(database_url, &setup.db_settings).await?;
    let secret_dir = secret
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let pool = regulator::storage::connect(database_url, setup.db_connections)
        .await
        .context("cannot connect to the bench database")?;
    let config = Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: database_url.to_owned(),
        policies: setup.policies.clone(),
        window: chrono::Duration::milliseconds(i64::from(setup.window_ms)),
        submit_wait: Duration::from_millis(setup.submit_wait_ms),
        keys: KeySource::DevSecret(secret),
        jwt_issuer: ISSUER.into(),
        jwt_audience: AUDIENCE.into(),
        max_connections: setup.db_connections,
        webhooks,
        checkpoint_key: secret_dir.join("checkpoint-key.pem"),
        checkpoint_interval,
        http: Default::default(),
    };
    App::start_with_pool(config, pool)
        .await
        .context("cannot start the service")
}

/// Drops and recreates the bench database of `database_url` (refusing a name without `bench`),
/// pins `synchronous_commit = on` on it, then applies `db_settings` (`NAME=VALUE`).
async fn recreate_database(database_url: &str, db_settings: &[String]) -> Result<(), Failure> {
    let options: PgConnectOptions = database_url
        .parse()
        .context("--database-url is not a Postgres URL")?;
    let name = options
        .get_database()
        .ok_or_else(|| Failure("--database-url names no database".into()))?
        .to_owned();
    if !name.contains("bench") {
        return Err(Failure(format!(
            "refusing to drop database {name:?}: a bench database's name must contain \"bench\""
        )));
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to the postgres database")?;
    for statement in [
        format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
        format!("CREATE DATABASE {quoted}"),
        // The server default, pinned so that a changed server default cannot flatter us.
        format!("ALTER DATABASE {quoted} SET synchronous_commit = on"),
    ] {
        sqlx::raw_sql(&statement)
            .execute(&mut admin)
            .await
            .context(&statement)?;
    }
    for setting in db_settings {
        let (key, value) = setting
            .split_once('=')
            .filter(|(k, _)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            })
            .ok_or_else(|| Failure(format!("--db-setting {setting:?}: expected NAME=VALUE")))?;
        let statement = format!(
            "ALTER DATABASE {quoted} SET {key} = '{}'",
            value.replace('\'', "''")
        );
        sqlx::raw_sql(&statement)
            .execute(&mut admin)
            .await
            .context(&statement)?;
    }
    let _ = admin.close().await;
    Ok(())
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
    decision: Option<Decision>,
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
                tally.item(item.status, item.decision, || {
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

pub(crate) async fn wait_until_leading(
    client: &reqwest::Client,
    base: &str,
) -> Result<(), Failure> {
    #[derive(Deserialize)]
    struct Ready {
        sequencer_leading: bool,
    }
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if let Ok(r) = ready {
            if let Ok(ready) = r.json::<Ready>().await {
                if ready.sequencer_leading {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= until {
            return Err(Failure(
                "the sequencer did not take the lead within 15 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn register_assets(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    assets: u64,
) -> Result<(), Failure> {
    register_named_assets(client, base, admin, assets, |n| {
        (CHAIN.to_owned(), format!("0xBENCH-{n}"))
    })
    .await
}

/// Registers `assets` U.S. securities, asset `n` at `name(n)` = (chain, asset).
pub(crate) async fn register_named_assets(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    assets: u64,
    name: impl Fn(u64) -> (String, String),
) -> Result<(), Failure> {
    let body = r#"{"issuer_jurisdiction":"US","asset_class":"security"}"#;
    let mut puts = futures::stream::iter(0..assets)
        .map(|n| {
            let (chain, asset) = name(n);
            async move {
                let response = client
                    .put(format!("{base}/v1/assets/{chain}/{asset}"))
                    .bearer_auth(admin)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("registering an asset")?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    return Err(Failure(format!(
                        "registering {chain}/{asset}: {status}: {text}"
                    )));
                }
                Ok(())
            }
        })
        .buffer_unordered(32);
    while let Some(result) = puts.next().await {
        result?;
    }
    Ok(())
}

/// The load generator's HTTP client: kept-alive connections, no proxy, Nagle off.
pub(crate) fn bench_client(idle: usize, timeout: Duration) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// Prints the report's title and the database settings in effect.
pub(crate) async fn print_header(
    title: &str,
    stats: &mut Stats,
    db_settings: &[String],
) -> Result<(), Failure> {
    println!("{title}");
    if !db_settings.is_empty() {
        println!("  db settings            {}", db_settings.join(" "));
    }
    for (name, value) in stats.settings().await? {
        println!("  {name:<22} {value}");
    }
    Ok(())
}

/// Database and process counters, read before and after a measured phase.
pub(crate) struct Stats {
    pub(crate) conn: PgConnection,
    clock_ticks: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) at: Option<Instant>,
    /// CPU seconds of this process's threads, by thread name.
    pub(crate) threads: BTreeMap<String, f64>,
    /// CPU seconds of the bench database's backends and of the server's auxiliary processes,
    /// by pid, with their backend type.
    pub(crate) postgres: HashMap<i32, (String, f64)>,
    pub(crate) xact_commit: i64,
    pub(crate) wal_records: i64,
    pub(crate) wal_bytes: f64,
    pub(crate) wal_sync: i64,
    pub(crate) wal_write: i64,
    /// `regulator_sequencer_batch_size` sum and count: records committed, rounds committed.
    pub(crate) seq_records: f64,
    pub(crate) seq_rounds: f64,
    /// `regulator_decision_latency_seconds` sum and count (intake to decision, database clock).
    pub(crate) latency_sum: f64,
    pub(crate) latency_count: f64,
}

impl Stats {
    pub(crate) async fn connect(url: &str) -> Result<Self, Failure> {
        let options: PgConnectOptions = url.parse().context("--database-url")?;
        let conn = options
            .application_name("regulator-bench-stats")
            .connect()
            .await
            .context("cannot connect for statistics")?;
        Ok(Self {
            conn,
            clock_ticks: 100.0,
        })
    }

    pub(crate) async fn settings(&mut self) -> Result<Vec<(String, String)>, Failure> {
        let mut out = Vec::new();
        for name in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "commit_delay",
            "shared_buffers",
            "max_wal_size",
        ] {
            let show = format!("SHOW {name}");
            let value: String = sqlx::query_scalar(&show)
                .fetch_one(&mut self.conn)
                .await
                .context(name)?;
            out.push((name.to_owned(), value));
        }
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut self.conn)
            .await
            .context("current_database()")?;
        out.insert(0, ("database".to_owned(), db));
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        out.push(("cores".to_owned(), cores.to_string()));
        Ok(out)
    }

    pub(crate) async fn snapshot(&mut self) -> Result<Snapshot, Failure> {
        // Backends publish their statistics at most once a second when busy.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await;
        let (xact_commit,): (i64,) = sqlx::query_as(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut self.conn)
        .await
        .context("pg_stat_database")?;
        let (wal_records, wal_bytes, wal_write, wal_sync): (i64, f64, i64, i64) = sqlx::query_as(
            "SELECT wal_records, wal_bytes::float8, wal_write, wal_sync FROM pg_stat_wal",
        )
        .fetch_one(&mut self.conn)
        .await
        .context("pg_stat_wal")?;
        let pids: Vec<(i32, String)> = sqlx::query_as(
            "SELECT pid, coalesce(backend_type, '?') FROM pg_stat_activity
             WHERE datname = current_database() OR datname IS NULL",
        )
        .fetch_all(&mut self.conn)
        .await
        .context("pg_stat_activity")?;
        let mut postgres = HashMap::new();
        for (pid, kind) in pids {
            if let Some(cpu) = proc_cpu(&format!("/proc/{pid}/stat")) {
                postgres.insert(pid, (kind, cpu / self.clock_ticks));
            }
        }
        let mut threads = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for entry in dir.flatten() {
                let path = entry.path();
                let name = std::fs::read_to_string(path.join("comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default();
                if let Some(cpu) = proc_cpu(&path.join("stat").to_string_lossy()) {
                    *threads.entry(name).or_default() += cpu / self.clock_ticks;
                }
            }
        }
        let metrics = regulator::app::metrics_handle().render();
        let metric = |name: &str| metric(&metrics, name);
        Ok(Snapshot {
            at: Some(Instant::now()),
            threads,
            postgres,
            xact_commit,
            wal_records,
            wal_bytes,
            wal_sync,
            wal_write,
            seq_records: metric("regulator_sequencer_batch_size_sum"),
            seq_rounds: metric("regulator_sequencer_batch_size_count"),
            latency_sum: metric("regulator_decision_latency_seconds_sum"),
            latency_count: metric("regulator_decision_latency_seconds_count"),
        })
    }
}

/// The sum of metric `name`'s samples (all label sets) in a Prometheus text rendering.
pub(crate) fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime + stime in clock ticks from a `/proc/…/stat` file.
fn proc_cpu(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn report(title: &str, t: &Tally, before: &Snapshot, after: &Snapshot, asked: u64, per: &str) {
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
    let commits = after.xact_commit - before.xact_commit;
    let wal_syncs = after.wal_sync - before.wal_sync;
    println!(
        "  database               {commits} transactions ({:.0}/s), WAL {:.1} MB ({:.0} B/decision, {} records), {wal_syncs} WAL syncs ({:.0}/s), {} WAL writes",
        commits as f64 / secs,
        (after.wal_bytes - before.wal_bytes) / 1e6,
        (after.wal_bytes - before.wal_bytes) / decided,
        after.wal_records - before.wal_records,
        wal_syncs as f64 / secs,
        after.wal_write - before.wal_write
    );
}
