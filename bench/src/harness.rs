//! What every load generator shares: the in-process service on a fresh bench database, its
//! tokens, the HTTP client, the report header and the counters read around a measured phase.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use regulator::app::{App, Config};
use regulator::auth::{mint_dev_token, KeySource, Role};

const ISSUER: &str = "regulator";
const AUDIENCE: &str = "regulator";
pub(crate) const CHAIN: &str = "ethereum";

/// How a load generator's in-process service runs: the same options for every command
/// (each names its own database).
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
        db_acquire_timeout: regulator::storage::DEFAULT_ACQUIRE_TIMEOUT,
        leader_lease: regulator::sequencer::DEFAULT_LEASE_TTL,
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
    /// `regulator_sequencer_round_seconds` sums by phase: fetch, decide, commit.
    pub(crate) round_phases: [f64; 3],
    /// The whole machine's CPU time (`/proc/stat`), if readable.
    pub(crate) machine: Option<MachineCpu>,
}

/// The machine's CPU time in clock ticks, summed over its cores: all of it, the idle part
/// (with I/O wait), and the part its host gave to other guests ("steal"). On a shared virtual
/// machine the last says whether a run was slowed from outside.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MachineCpu {
    pub(crate) total: f64,
    pub(crate) idle: f64,
    pub(crate) steal: f64,
}

impl MachineCpu {
    /// The first line of `/proc/stat`: user nice system idle iowait irq softirq steal (guest
    /// time is already in user).
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<f64> = line
            .split_whitespace()
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
            return None;
        };
        Some(Self {
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            idle: idle + iowait,
            steal,
        })
    }

    /// Idle and stolen shares of the time between `self` and `later`, in percent.
    pub(crate) fn shares_until(&self, later: &Self) -> Option<(f64, f64)> {
        let total = later.total - self.total;
        (total > 0.0).then(|| {
            (
                (later.idle - self.idle) / total * 100.0,
                (later.steal - self.steal) / total * 100.0,
            )
        })
    }
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
        let metric_in = |name: &str| metric(&metrics, name);
        Ok(Snapshot {
            at: Some(Instant::now()),
            threads,
            postgres,
            xact_commit,
            wal_records,
            wal_bytes,
            wal_sync,
            wal_write,
            seq_records: metric_in("regulator_sequencer_batch_size_sum"),
            seq_rounds: metric_in("regulator_sequencer_batch_size_count"),
            latency_sum: metric_in("regulator_decision_latency_seconds_sum"),
            latency_count: metric_in("regulator_decision_latency_seconds_count"),
            round_phases: ["fetch", "decide", "commit"].map(|phase| {
                metric(
                    &metrics,
                    &format!("regulator_sequencer_round_seconds_sum{{phase=\"{phase}\"}}"),
                )
            }),
            machine: MachineCpu::read(),
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
