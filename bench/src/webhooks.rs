//! `regulator-bench webhooks`: webhook delivery lag to a local receiver under a paced load
//! (SPEC §8; the target is a p99 lag of at most 100 ms at 1,000 decisions/s).
//!
//! What it does, in order:
//!
//! 1. **A clean database.** Drops and recreates the database of `--database-url` (default
//!    `postgres://postgres@127.0.0.1:5432/regulator_bench_webhooks`, env
//!    `REGULATOR_BENCH_DATABASE_URL`) as `regulator-bench orders` does, refusing any name without
//!    `bench`.
//! 2. **A receiver.** An HTTP server on `127.0.0.1:0` (its own runtime, thread
//!    `bench-receiver`) that answers `POST /hook` with 204 and, for each delivery, records the
//!    **lag**: its wall clock on arrival minus the payload's `timestamp` (the decision's
//!    `decided_at`, taken from the database's clock on the same machine). It checks the
//!    `webhook-id` and the `webhook-signature` (with the subscription's secret), and the order:
//!    `data.seq` must increase from one delivery to the next; a `seq` seen before is a
//!    duplicate (allowed, at least once, but counted), a new `seq` below the highest seen is out
//!    of order (an error).
//! 3. **The real service, in-process.** [`App::start_with_pool`] on `127.0.0.1:0` (thread
//!    `regulator-srv`) with a fresh development secret, the conflict window `--window-ms`
//!    (default 0), and webhooks allowed to reach loopback (`UrlGuard::new(vec![], true)`),
//!    default timeout and lease. One subscription for chain `ethereum` points at the receiver;
//!    `--assets` U.S. securities `ethereum/0xBENCH-<n>` are registered (default 100).
//! 4. **Paced load** (thread `bench-client`): `--rate` orders per second (default 1,000), each a
//!    single `POST /v1/orders` — a FREEZE of a holder of its own, with a unique
//!    `Idempotency-Key`, as in `regulator-bench orders --mode single` — dispatched on schedule to at
//!    most `--concurrency` requests in flight (default 64); a request that cannot start on time
//!    starts as soon as one finishes, and the report shows how far dispatch fell behind. First
//!    `--warmup-secs` (default 3) not measured, then `--duration-secs` (default 30) measured:
//!    the lag statistics cover the decisions taken from the start of the measured phase on.
//! 5. **Drain and report.** Waits (at most `--drain-secs`, default 30) until the receiver has
//!    every decision of the chain in the ledger, then prints orders sent and their answers,
//!    the decision rate achieved, deliveries, duplicates, out-of-order deliveries, decisions
//!    lost (the cursor passed them unreceived) or still undelivered at the drain limit,
//!    the lag p50/p90/p99/max (and p99 per 5-second slice, to show whether the lag grows), the
//!    time between consecutive deliveries (the worker's pace), the worker's HTTP attempt time,
//!    and where the CPU went. PASS when the p99 lag is at most `--target-p99-ms` (default 100).
//!
//! Exit code: 0 on PASS with every decision delivered once or more, in order, correctly
//! signed; 1 if a decision is lost, still undelivered after the drain, out of order or wrongly
//! signed, or the p99 target is missed; 2 if the bench could not run. Everything is on
//! loopback and bounded in time: no request starts after the measured phase, and the drain
//! has its own limit.
//!
//! Example: `cargo run --release -p regulator-bench -- webhooks`, or
//! `./target/release/regulator-bench webhooks --rate 1000 --duration-secs 30`.

use std::collections::{BTreeMap, HashSet};

use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use regulator::app::App;
use regulator::auth::Role;
use regulator::webhooks::signing::Secret;
use regulator::webhooks::{webhook_id, UrlGuard, WebhookConfig};

use crate::harness::{
    bench_client, metric, print_header, register_assets, wait_until_leading, Context, Failure,
    Harness, ServiceArgs, Snapshot, Stats, Tokens, CHAIN,
};
use crate::orders::order_body;

/// The authority the orders come from, and its roles.
const SUB: &str = "US-SEC";
/// Lag statistics per slice of this many seconds of `decided_at`.
const SLICE_SECS: i64 = 5;
/// The most slices kept (the rest fall into the last one).
const MAX_SLICES: usize = 720;

#[derive(Debug, Args)]
pub struct BenchWebhooksArgs {
    /// Postgres URL of the bench database. It is DROPPED and recreated; its name must contain
    /// `bench`.
    #[arg(
        long,
        env = "REGULATOR_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator_bench_webhooks"
    )]
    database_url: String,
    #[command(flatten)]
    service: ServiceArgs,
    /// Assets to register (U.S. securities `ethereum/0xBENCH-<n>`); orders spread over them.
    #[arg(long, default_value_t = 100)]
    assets: u64,
    /// Orders per second, each a single `POST /v1/orders`.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Measured phase, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Warm-up at the same rate before measuring, in seconds.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// The most order requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to wait after the load for the last deliveries, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
    /// The target: p99 of the delivery lag, in milliseconds.
    #[arg(long, default_value_t = 100)]
    target_p99_ms: u64,
}

impl BenchWebhooksArgs {
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

    /// Runs the bench; `Ok(false)` when a check failed.
    fn bench(self) -> Result<bool, Failure> {
        if self.assets == 0 || self.concurrency == 0 || self.rate == 0 || self.duration_secs == 0 {
            return Err(Failure(
                "--assets, --concurrency, --rate and --duration-secs must be positive".into(),
            ));
        }
        if self.duration_secs > 3_600 || self.warmup_secs > 600 || self.drain_secs > 600 {
            return Err(Failure(
                "at most 3600 s measured, 600 s of warm-up and 600 s of drain".into(),
            ));
        }
        let receiver_rt = ServiceArgs::runtime(1, "bench-receiver")?;

        // The receiver first: the subscription needs its address.
        let template =
            Histogram::new_with_bounds(1, 3_600_000_000, 3).context("cannot make a histogram")?;
        let receiver = Arc::new(Receiver::new(template.clone()));
        let (stop_receiver, receiver_stopped) = oneshot::channel::<()>();
        let receiver_addr = receiver_rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("cannot bind the receiver")?;
            let addr = listener.local_addr().context("the receiver's address")?;
            let router = axum::Router::new()
                .route("/hook", axum::routing::post(hook))
                .with_state(Arc::clone(&receiver));
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = receiver_stopped.await;
                    })
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "the bench receiver failed");
                }
            });
            Ok::<_, Failure>(addr)
        })?;

        // Webhooks allowed to loopback, where the receiver is.
        let result = Harness {
            database_url: &self.database_url,
            service: &self.service,
            webhooks: WebhookConfig {
                guard: UrlGuard::new(vec![], true),
                ..WebhookConfig::default()
            },
            checkpoint_interval: Duration::from_secs(60),
        }
        .run(async |app, tokens| {
            self.drive(app, tokens, &receiver, receiver_addr, template)
                .await
        });
        let _ = stop_receiver.send(());
        receiver_rt.shutdown_timeout(Duration::from_secs(5));
        result
    }

    /// Subscribes the receiver, registers the assets, sends, drains, reports; `Ok(false)` when
    /// a check failed.
    async fn drive(
        &self,
        app: &App,
        tokens: &Tokens,
        receiver: &Arc<Receiver>,
        receiver_addr: std::net::SocketAddr,
        template: Histogram<u64>,
    ) -> Result<bool, Failure> {
        let base = format!("http://{}", app.addr);
        let admin = tokens.mint("bench-ops", vec![Role::Admin])?;
        let token = tokens.mint(SUB, vec![Role::Regulator])?;
        let client = bench_client(self.concurrency + 16, Duration::from_secs(60))?;

        let mut stats = Stats::connect(&self.database_url).await?;
        print_header(
            "regulator-bench webhooks",
            &mut stats,
            &self.service.db_settings,
        )
        .await?;
        println!("{}", self.service.describe(&base));

        wait_until_leading(&client, &base).await?;
        let subscription = subscribe(
            &client,
            &base,
            &admin,
            &format!("http://{receiver_addr}/hook"),
        )
        .await?;
        let subscription_id = subscription.0;
        receiver
            .subscription
            .set(subscription)
            .map_err(|_| Failure("subscribed twice".into()))?;
        println!("  receiver               http://{receiver_addr}/hook (chain {CHAIN})");
        let started = Instant::now();
        register_assets(&client, &base, &admin, self.assets).await?;
        println!(
            "  assets                 {} registered in {:.2} s",
            self.assets,
            started.elapsed().as_secs_f64()
        );
        println!(
            "  load                   {} orders/s, {} in flight at most; {} s warm-up, {} s measured",
            self.rate, self.concurrency, self.warmup_secs, self.duration_secs
        );

        let sender = Arc::new(Sender {
            client,
            url: format!("{base}/v1/orders"),
            token,
            assets: self.assets,
            template,
        });
        let rate = f64::from(self.rate);
        let warmup = pace(
            &sender,
            0,
            rate,
            Duration::from_secs(self.warmup_secs),
            self.concurrency,
        )
        .await;
        // Let the warm-up's deliveries go out, so the measured phase starts from an idle worker.
        let warm_decisions = warmup.accepted();
        let _ = drain(app, receiver, warm_decisions, Duration::from_secs(10)).await;

        let before = stats.snapshot().await?;
        let measured_from = Utc::now();
        receiver.measure_from(measured_from);
        let measured = pace(
            &sender,
            warmup.planned,
            rate,
            Duration::from_secs(self.duration_secs),
            self.concurrency,
        )
        .await;
        let measured_to = Utc::now();
        let drain_started = Instant::now();
        let expected = warm_decisions + measured.accepted();
        let drained = drain(
            app,
            receiver,
            expected,
            Duration::from_secs(self.drain_secs),
        )
        .await?;
        let drain_time = drain_started.elapsed();
        let after = stats.snapshot().await?;

        let decided_in_phase: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM decisions WHERE chain = $1 AND decided_at >= $2 AND decided_at < $3",
        )
        .bind(CHAIN)
        .bind(measured_from)
        .bind(measured_to)
        .fetch_one(&app.pool)
        .await
        .context("counting the decisions")?;
        let ledger: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM decisions WHERE chain = $1 ORDER BY seq")
                .bind(CHAIN)
                .fetch_all(&app.pool)
                .await
                .context("reading the decisions")?;
        // The cursor before the receiver's tally: whatever it covers was answered 2xx, so
        // received, by then.
        let cursor: i64 =
            sqlx::query_scalar("SELECT cursor_seq FROM webhook_subscriptions WHERE id = $1")
                .bind(subscription_id)
                .fetch_one(&app.pool)
                .await
                .context("reading the subscription's cursor")?;
        let _ = sqlx::Connection::close(stats.conn).await;

        let phase_secs = (measured_to - measured_from)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64()
            .max(1e-9);
        let received = receiver.take();
        // Not received: lost if the cursor passed it, still queued otherwise.
        let (lost, undelivered) = ledger
            .iter()
            .filter(|s| !received.seen.contains(&u64::try_from(**s).unwrap_or(0)))
            .fold((0u64, 0u64), |(lost, queued), s| {
                if *s <= cursor {
                    (lost + 1, queued)
                } else {
                    (lost, queued + 1)
                }
            });
        let ledger_set: HashSet<u64> = ledger
            .iter()
            .filter_map(|s| u64::try_from(*s).ok())
            .collect();
        let unknown = received
            .seen
            .iter()
            .filter(|s| !ledger_set.contains(s))
            .count() as u64;

        println!();
        println!(
            "== webhook delivery lag: {} orders/s for {} s, one subscription (chain {CHAIN})",
            self.rate, self.duration_secs
        );
        measured.print("measured orders", self.duration_secs as f64);
        println!(
            "  decisions              {decided_in_phase} decided in the measured phase  =>  {:.0} decisions/s",
            decided_in_phase as f64 / phase_secs
        );
        println!(
            "  ledger                 {} decisions on {CHAIN} in all (warm-up {} accepted, measured {} accepted)",
            ledger.len(),
            warm_decisions,
            measured.accepted()
        );
        println!(
            "  drain                  {} after the last order ({:.2} s)",
            if drained {
                "every decision delivered"
            } else {
                "STOPPED BY --drain-secs"
            },
            drain_time.as_secs_f64()
        );
        println!(
            "  deliveries             {} in all, {} distinct decisions; {} measured at {:.0} deliveries/s",
            received.deliveries,
            received.seen.len(),
            received.measured,
            received.measured_rate()
        );
        println!(
            "  duplicates             {} (a decision delivered again: allowed, counted)",
            received.duplicates
        );
        println!("  out of order           {}", received.out_of_order);
        println!(
            "  lost                   {lost} (the subscription's cursor passed them, the receiver never got them)"
        );
        if undelivered > 0 {
            println!(
                "  undelivered            {undelivered} still queued when --drain-secs ran out (delivered through seq {cursor} of {}; the lag figures cover only what was delivered)",
                ledger.last().copied().unwrap_or(0)
            );
        }
        if unknown > 0 {
            println!("  not in the ledger      {unknown}");
        }
        println!(
            "  bad deliveries         {} (unparsable, wrong webhook-id or signature){}",
            received.bad,
            received
                .first_bad
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        );
        let h = &received.lag;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let p99 = ms(0.99);
        println!(
            "  lag (decided → received) p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms  ({} measured)",
            ms(0.50),
            ms(0.90),
            p99,
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0,
            h.len()
        );
        let slices: Vec<String> = received
            .slices
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| {
                format!(
                    "{}s:{:.0}",
                    i as i64 * SLICE_SECS,
                    s.value_at_quantile(0.99) as f64 / 1000.0
                )
            })
            .collect();
        println!("  lag p99 per {SLICE_SECS} s (ms)    {}", slices.join("  "));
        let g = &received.gaps;
        println!(
            "  between deliveries     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            g.value_at_quantile(0.5) as f64 / 1000.0,
            g.value_at_quantile(0.9) as f64 / 1000.0,
            g.value_at_quantile(0.99) as f64 / 1000.0,
            g.max() as f64 / 1000.0
        );
        where_the_time_went(&before, &after, received.measured);

        let correct = lost == 0
            && undelivered == 0
            && received.out_of_order == 0
            && received.bad == 0
            && drained;
        let passed = !h.is_empty() && p99 <= self.target_p99_ms as f64;
        println!(
            "  delivery               {}",
            if correct {
                "OK: every decision delivered, in order, signed"
            } else {
                "FAILED: decisions lost, undelivered in time, out of order or badly signed"
            }
        );
        println!(
            "  result                 {}: lag p99 {p99:.2} ms against a target of {} ms at {:.0} decisions/s",
            if passed { "PASS" } else { "FAIL" },
            self.target_p99_ms,
            decided_in_phase as f64 / phase_secs
        );
        Ok(correct && passed)
    }
}

/// The service's side, from its metrics and the process's threads, between two snapshots.
fn where_the_time_went(before: &Snapshot, after: &Snapshot, deliveries: u64) {
    let metrics = regulator::app::metrics_handle().render();
    let attempts = metric(&metrics, "regulator_webhook_attempt_duration_seconds_count");
    let attempt_secs = metric(&metrics, "regulator_webhook_attempt_duration_seconds_sum");
    if attempts > 0.0 {
        println!(
            "  worker HTTP attempt    mean {:.2} ms over {attempts:.0} attempts (the rest of a delivery's turn is the fetch and the settle in Postgres)",
            attempt_secs / attempts * 1e3
        );
    }
    let window = match (before.at, after.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let delta = |name: &str| {
        after.threads.get(name).copied().unwrap_or(0.0)
            - before.threads.get(name).copied().unwrap_or(0.0)
    };
    let mut pg_by_kind: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (kind, cpu)) in &after.postgres {
        let was = before.postgres.get(pid).map_or(0.0, |(_, c)| *c);
        *pg_by_kind.entry(kind.clone()).or_default() += cpu - was;
    }
    let pg: f64 = pg_by_kind.values().sum();
    println!(
        "  cpu (s, over {window:.1} s)    service {:.2}  sequencer {:.2}  receiver {:.2}  load generator {:.2}  postgres {pg:.2}",
        delta("regulator-srv"),
        delta("sequencer"),
        delta("bench-receiver"),
        delta("bench-client"),
    );
    let commits = after.xact_commit - before.xact_commit;
    let rounds = after.seq_rounds - before.seq_rounds;
    println!(
        "  database               {commits} transactions ({:.1} per measured decision), {} WAL syncs; sequencer {rounds:.0} commits",
        commits as f64 / deliveries.max(1) as f64,
        after.wal_sync - before.wal_sync
    );
}

/// Creates the subscription; returns its id and secret.
async fn subscribe(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    url: &str,
) -> Result<(Uuid, Secret), Failure> {
    #[derive(Deserialize)]
    struct Created {
        id: Uuid,
        secret: String,
    }
    let body = serde_json::json!({
        "chain": CHAIN,
        "url": url,
        "description": "regulator-bench webhooks receiver",
    });
    let response = client
        .post(format!("{base}/v1/webhooks/subscriptions"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .context("creating the subscription")?;
    let status = response.status();
    let text = response.text().await.context("creating the subscription")?;
    if status != reqwest::StatusCode::CREATED {
        return Err(Failure(format!(
            "creating the subscription: {status}: {text}"
        )));
    }
    let created: Created =
        serde_json::from_str(&text).context("the subscription's answer does not parse")?;
    let secret = Secret::parse(&created.secret).context("the subscription's secret")?;
    Ok((created.id, secret))
}

/// Waits until the ledger holds at least `expected` decisions on the chain and the receiver has
/// every one of them, or `limit` passes; says whether it got there.
async fn drain(
    app: &App,
    receiver: &Receiver,
    expected: u64,
    limit: Duration,
) -> Result<bool, Failure> {
    let until = Instant::now() + limit;
    loop {
        let in_ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions WHERE chain = $1")
            .bind(CHAIN)
            .fetch_one(&app.pool)
            .await
            .context("counting the decisions")?;
        let in_ledger = u64::try_from(in_ledger).unwrap_or(0);
        if in_ledger >= expected && receiver.distinct() >= in_ledger {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every order request shares.
struct Sender {
    client: reqwest::Client,
    url: String,
    token: String,
    assets: u64,
    /// An empty latency histogram to clone.
    template: Histogram<u64>,
}

/// What one paced phase saw.
struct Sent {
    /// Orders the schedule asked for.
    planned: u64,
    sent: u64,
    decided: u64,
    pending: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// Round trip per request, in microseconds.
    latency: Histogram<u64>,
    /// How late the last request started, and the latest any did.
    behind_max: Duration,
    elapsed: Duration,
}

impl Sent {
    /// Orders accepted (201 decided, 202 pending): each makes one decision.
    fn accepted(&self) -> u64 {
        self.decided + self.pending
    }

    fn print(&self, what: &str, secs: f64) {
        println!(
            "  {what:<22} {} of {} planned in {:.2} s  =>  {:.0} orders/s; dispatch at worst {:.1} ms behind schedule",
            self.sent,
            self.planned,
            self.elapsed.as_secs_f64(),
            self.sent as f64 / secs,
            self.behind_max.as_secs_f64() * 1e3
        );
        let errors: u64 = self.errors.values().sum();
        println!(
            "  answers                {} decided (201), {} pending (202), {errors} errors {:?}",
            self.decided, self.pending, self.errors
        );
        if let Some(e) = &self.first_error {
            let e: String = e.chars().take(400).collect();
            println!("  first error            {e}");
        }
        let h = &self.latency;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  order round trip       p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        );
    }
}

/// The result of one order request.
enum Answer {
    Decided(Duration),
    Pending(Duration),
    Error(String, String),
}

/// Sends orders `first..` at `rate` per second for `duration`, at most `concurrency` in flight;
/// no request starts after `duration`.
async fn pace(
    sender: &Arc<Sender>,
    first: u64,
    rate: f64,
    duration: Duration,
    concurrency: usize,
) -> Sent {
    let planned = (rate * duration.as_secs_f64()).round() as u64;
    let mut out = Sent {
        planned,
        sent: 0,
        decided: 0,
        pending: 0,
        errors: BTreeMap::new(),
        first_error: None,
        latency: sender.template.clone(),
        behind_max: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks: JoinSet<Answer> = JoinSet::new();
    let start = tokio::time::Instant::now();
    let end = start + duration;
    fn tally(out: &mut Sent, joined: Result<Answer, tokio::task::JoinError>) {
        match joined {
            Ok(Answer::Decided(d)) => {
                out.decided += 1;
                record(&mut out.latency, d);
            }
            Ok(Answer::Pending(d)) => {
                out.pending += 1;
                record(&mut out.latency, d);
            }
            Ok(Answer::Error(class, detail)) => {
                *out.errors.entry(class).or_default() += 1;
                out.first_error.get_or_insert(detail);
            }
            Err(e) => {
                *out.errors.entry("task died".into()).or_default() += 1;
                out.first_error.get_or_insert(e.to_string());
            }
        }
    }
    for i in 0..planned {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        out.behind_max = out.behind_max.max(now - due);
        let sender = Arc::clone(sender);
        tasks.spawn(async move {
            let answer = send_order(&sender, first + i).await;
            drop(permit);
            answer
        });
        out.sent += 1;
        while let Some(joined) = tasks.try_join_next() {
            tally(&mut out, joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        tally(&mut out, joined);
    }
    out.elapsed = start.elapsed();
    out
}

async fn send_order(sender: &Sender, n: u64) -> Answer {
    let started = Instant::now();
    let sent = sender
        .client
        .post(&sender.url)
        .bearer_auth(&sender.token)
        .header("Idempotency-Key", format!("bench-webhooks-{n}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(order_body(n, sender.assets))
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Answer::Error("transport".into(), e.to_string()),
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Answer::Error("transport".into(), e.to_string()),
    };
    match status {
        201 => Answer::Decided(started.elapsed()),
        202 => Answer::Pending(started.elapsed()),
        other => Answer::Error(
            other.to_string(),
            format!("{other}: {}", String::from_utf8_lossy(&body)),
        ),
    }
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(micros.max(1));
}

/// The receiver's shared state.
struct Receiver {
    /// The subscription's id and secret, once created.
    subscription: OnceLock<(Uuid, Secret)>,
    inner: Mutex<Received>,
    /// An empty histogram (1 µs to 1 h, 3 significant digits) to clone.
    template: Histogram<u64>,
}

/// What the receiver saw.
struct Received {
    /// Decisions measured: those decided at or after this instant.
    measure_from: Option<DateTime<Utc>>,
    seen: HashSet<u64>,
    max_seq: u64,
    deliveries: u64,
    duplicates: u64,
    out_of_order: u64,
    bad: u64,
    first_bad: Option<String>,
    /// Lag of the measured deliveries, in microseconds.
    lag: Histogram<u64>,
    /// The same, per slice of [`SLICE_SECS`] of `decided_at`.
    slices: Vec<Histogram<u64>>,
    /// Time between consecutive measured deliveries, in microseconds.
    gaps: Histogram<u64>,
    measured: u64,
    first_measured: Option<Instant>,
    last_measured: Option<Instant>,
}

impl Received {
    fn new(template: &Histogram<u64>) -> Self {
        Self {
            measure_from: None,
            seen: HashSet::new(),
            max_seq: 0,
            deliveries: 0,
            duplicates: 0,
            out_of_order: 0,
            bad: 0,
            first_bad: None,
            lag: template.clone(),
            slices: Vec::new(),
            gaps: template.clone(),
            measured: 0,
            first_measured: None,
            last_measured: None,
        }
    }

    fn measured_rate(&self) -> f64 {
        match (self.first_measured, self.last_measured) {
            (Some(a), Some(b)) if b > a => {
                self.measured.saturating_sub(1) as f64 / b.duration_since(a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn bad(&mut self, why: impl FnOnce() -> String) {
        self.bad += 1;
        if self.first_bad.is_none() {
            self.first_bad = Some(why());
        }
    }
}

/// The part of a delivery the receiver reads.
#[derive(Deserialize)]
struct Delivery {
    timestamp: DateTime<Utc>,
    data: DeliveryData,
}

#[derive(Deserialize)]
struct DeliveryData {
    seq: u64,
}

impl Receiver {
    fn new(template: Histogram<u64>) -> Self {
        Self {
            subscription: OnceLock::new(),
            inner: Mutex::new(Received::new(&template)),
            template,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn measure_from(&self, at: DateTime<Utc>) {
        self.lock().measure_from = Some(at);
    }

    fn distinct(&self) -> u64 {
        self.lock().seen.len() as u64
    }

    fn take(&self) -> Received {
        let mut inner = self.lock();
        let empty = Received::new(&self.template);
        std::mem::replace(&mut *inner, empty)
    }

    /// Records one delivery that arrived at `now`.
    fn record(&self, now: DateTime<Utc>, arrived: Instant, headers: &HeaderMap, body: &[u8]) {
        let parsed = serde_json::from_slice::<Delivery>(body);
        let checked = self.check(headers, body, parsed.as_ref().ok().map(|d| d.data.seq));
        let mut r = self.lock();
        r.deliveries += 1;
        let delivery = match parsed {
            Ok(d) => d,
            Err(e) => return r.bad(|| format!("the body does not parse: {e}")),
        };
        if let Err(why) = checked {
            r.bad(|| why);
        }
        let seq = delivery.data.seq;
        if !r.seen.insert(seq) {
            r.duplicates += 1;
            return;
        }
        if seq < r.max_seq {
            r.out_of_order += 1;
        }
        r.max_seq = r.max_seq.max(seq);
        let Some(from) = r.measure_from else {
            return;
        };
        if delivery.timestamp < from {
            return;
        }
        let lag = (now - delivery.timestamp).to_std().unwrap_or_default();
        record(&mut r.lag, lag);
        let slice = ((delivery.timestamp - from).num_seconds() / SLICE_SECS).max(0) as usize;
        let slice = slice.min(MAX_SLICES - 1);
        while r.slices.len() <= slice {
            r.slices.push(self.template.clone());
        }
        record(&mut r.slices[slice], lag);
        if let Some(last) = r.last_measured {
            record(&mut r.gaps, arrived.duration_since(last));
        }
        r.first_measured.get_or_insert(arrived);
        r.last_measured = Some(arrived);
        r.measured += 1;
    }

    /// Checks the `webhook-id` and the signature.
    fn check(&self, headers: &HeaderMap, body: &[u8], seq: Option<u64>) -> Result<(), String> {
        let Some((id, secret)) = self.subscription.get() else {
            return Err("a delivery before the subscription was known".into());
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("no {name} header"))
        };
        let message = header("webhook-id")?;
        let timestamp: i64 = header("webhook-timestamp")?
            .parse()
            .map_err(|_| "webhook-timestamp is not a number".to_owned())?;
        let signatures = header("webhook-signature")?;
        if let Some(seq) = seq {
            let want = webhook_id(*id, seq);
            if message != want {
                return Err(format!("webhook-id {message:?}, expected {want:?}"));
            }
        }
        let expected = secret.sign(message, timestamp, body);
        if !signatures.split(' ').any(|s| s == expected) {
            return Err(format!("no valid signature in {signatures:?}"));
        }
        Ok(())
    }
}

async fn hook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Utc::now();
    let arrived = Instant::now();
    receiver.record(now, arrived, &headers, &body);
    StatusCode::NO_CONTENT
}
