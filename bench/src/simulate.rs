//! `regulator-bench simulate`: impact-analysis throughput (issue 6's target: at least 10,000
//! recorded orders replayed per second).
//!
//! 1. **A clean database** (`--database-url`, default
//!    `postgres://postgres@127.0.0.1:5432/regulator_bench_simulate`; its name must contain
//!    `bench`), dropped and recreated, and the real service started on it in-process on
//!    `127.0.0.1:0`, as the other load generators do.
//! 2. **A history** of `--orders` orders (default 200,000) over `--assets` U.S. securities,
//!    sent as batches over loopback HTTP: first holds on holders of their own (one in three an
//!    OFAC block on designation, the others SEC court-ordered freezes), then releases of the
//!    first of those holds (the federal court releasing every other OFAC block, which the OFAC
//!    rule refuses, and OFAC licences for the rest; the court or the SEC itself releasing the
//!    SEC freezes).
//! 3. **Simulations through the API** (`POST /v1/policies/simulate`, whole log): once with the
//!    active version (which must reproduce the history: 0 changes), then `--runs` times with a
//!    draft that lets the federal court lift OFAC blocks. Each prints orders replayed, elapsed
//!    time, orders/s and the changes found; the expected changes are the court's refused
//!    releases of OFAC blocks.
//!
//! PASS when every run replays at least `--target` orders/s (default 10,000) and finds exactly
//! the expected changes. Exit 0 on PASS, 1 on FAIL, 2 if it could not run. Loopback only;
//! every request has a timeout.
//!
//! Example: `cargo run --release -p regulator-bench -- simulate`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use regulator::app::App;
use regulator::auth::Role;
use regulator::policy::PolicyFiles;
use regulator::simulate::Report;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{
    bench_client, register_named_assets, Context, Failure, Harness, ServiceArgs, Tokens,
};

/// The shipped OFAC rule, and the draft's: the federal court may lift an OFAC block too.
const OFAC_RULE: &str =
    r#"!(principal == Authority::"US-OFAC" && context.legal_basis.instrument == "licence")"#;
const LOOSENED_RULE: &str = r#"!((principal == Authority::"US-OFAC" && context.legal_basis.instrument == "licence") || principal == Authority::"US-SDNY")"#;
const BATCH: usize = 500;

#[derive(Debug, Args)]
pub struct BenchSimulateArgs {
    /// Postgres URL of the bench database. It is DROPPED and recreated; its name must contain
    /// `bench`.
    #[arg(
        long,
        env = "REGULATOR_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator_bench_simulate"
    )]
    database_url: String,
    /// The service; its policy directory is version 1, and the draft loosens its OFAC rule.
    #[command(flatten)]
    service: ServiceArgs,
    /// Orders in the recorded history.
    #[arg(long, default_value_t = 200_000)]
    orders: u64,
    /// Assets they are spread over.
    #[arg(long, default_value_t = 1_000)]
    assets: u64,
    /// Concurrent batch senders while seeding.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Measured simulations of the draft.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The target, in recorded orders replayed per second.
    #[arg(long, default_value_t = 10_000.0)]
    target: f64,
}

/// One hold of the seeded history: who placed it, where, and its order id.
#[derive(Clone)]
struct Hold {
    ofac: bool,
    asset: u64,
    holder: u64,
    order_id: String,
}

#[derive(Deserialize)]
struct BatchReply {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    status: u16,
    order_id: Option<String>,
}

impl BenchSimulateArgs {
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

    fn bench(self) -> Result<bool, Failure> {
        if self.orders < 10 || self.orders > 10_000_000 || self.assets == 0 || self.runs == 0 {
            return Err(Failure(
                "--orders from 10 to 10,000,000; --assets and --runs positive".into(),
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

    async fn drive(&self, app: &App, tokens: &Tokens) -> Result<bool, Failure> {
        let base = format!("http://{}", app.addr);
        // The load generator's own connections, on its own runtime.
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .context("connecting to the bench database")?;
        let token = |sub: &str, role: Role| tokens.mint(sub, vec![role]);
        let client = bench_client(16, Duration::from_secs(600))?;
        let admin = token("bench-admin", Role::Admin)?;
        let assets = self.assets;
        register_named_assets(&client, &base, &admin, assets, |n| {
            ("ethereum".to_owned(), format!("0xSIM-{n}"))
        })
        .await?;

        println!("regulator-bench simulate: impact analysis over a recorded history");
        println!("{}", self.service.describe(&base));
        let started = Instant::now();
        let holds_wanted = self.orders * 6 / 10;
        let mut tokens = BTreeMap::new();
        for issuer in ["US-OFAC", "US-SEC", "US-SDNY"] {
            tokens.insert(issuer, token(issuer, Role::Regulator)?);
        }
        // Holds: one in three an OFAC block, the rest SEC freezes.
        let mut specs: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
        for k in 0..holds_wanted {
            let ofac = k % 3 == 0;
            let (issuer, instrument, reference) = if ofac {
                ("US-OFAC", "designation", "SDN List")
            } else {
                ("US-SEC", "court_order", "SEC v. Holder")
            };
            let body = json!({
                "target": {"chain": "ethereum", "asset": format!("0xSIM-{}", k % assets), "holder": format!("0xH{k}")},
                "legal_basis": {"instrument": instrument, "reference": format!("{reference} {k}")},
                "instruction": {"kind": "FREEZE"},
            });
            specs.entry(issuer).or_default().push((k, body.to_string()));
        }
        let placed = self.send(&client, &base, &tokens, specs).await?;
        let mut holds: Vec<Hold> = placed
            .into_iter()
            .map(|(k, issuer, order_id)| Hold {
                ofac: issuer == "US-OFAC",
                asset: k % assets,
                holder: k,
                order_id,
            })
            .collect();
        holds.sort_by_key(|h| h.holder);

        // Releases of the first holds.
        let releases = (self.orders - holds_wanted).min(holds.len() as u64) as usize;
        let mut specs: BTreeMap<&str, Vec<(u64, String)>> = BTreeMap::new();
        let mut expected_changes = 0u64;
        for (i, hold) in holds.iter().take(releases).enumerate() {
            let (issuer, instrument) = match (hold.ofac, i % 2 == 0) {
                (true, true) => {
                    expected_changes += 1;
                    ("US-SDNY", "court_order")
                }
                (true, false) => ("US-OFAC", "licence"),
                (false, true) => ("US-SDNY", "court_order"),
                (false, false) => ("US-SEC", "court_order"),
            };
            let body = json!({
                "target": {"chain": "ethereum", "asset": format!("0xSIM-{}", hold.asset), "holder": format!("0xH{}", hold.holder)},
                "legal_basis": {"instrument": instrument, "reference": format!("release {i}")},
                "instruction": {"kind": "RELEASE", "releases": hold.order_id},
            });
            specs
                .entry(issuer)
                .or_default()
                .push((holds_wanted + i as u64, body.to_string()));
        }
        self.send(&client, &base, &tokens, specs).await?;
        wait_for_intake(&db).await?;
        let seeded = started.elapsed().as_secs_f64();
        let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions")
            .fetch_one(&db)
            .await
            .context("counting decisions")?;
        println!(
            "  history                {decisions} decisions seeded in {seeded:.1} s ({:.0}/s); {expected_changes} court releases of OFAC blocks",
            decisions as f64 / seeded.max(1e-9)
        );

        let author = token("bench-legal", Role::PolicyAuthor)?;
        let simulate = |body: Value| {
            let client = client.clone();
            let url = format!("{base}/v1/policies/simulate");
            let author = author.clone();
            async move {
                let response = client
                    .post(url)
                    .bearer_auth(author)
                    .json(&body)
                    .send()
                    .await
                    .context("simulating")?;
                let status = response.status();
                let text = response.text().await.context("reading the report")?;
                if !status.is_success() {
                    return Err(Failure(format!("simulate answered {status}: {text}")));
                }
                serde_json::from_str::<Report>(&text).context("the report")
            }
        };

        let mut pass = true;
        let timed = |label: &str, report: &Report, wall: Duration| {
            let rate = report.orders as f64 / wall.as_secs_f64().max(1e-9);
            println!(
                "  {label:<22} {} orders in {:.2} s => {:.0} orders/s (server {:.0}/s); {} would change, {:?}",
                report.orders,
                wall.as_secs_f64(),
                rate,
                report.orders_per_second,
                report.counts.changed,
                report.counts.transitions
            );
            rate
        };
        let begun = Instant::now();
        let same = simulate(json!({"version": 1, "max_changes": 0})).await?;
        timed("active version", &same, begun.elapsed());
        if same.counts.changed != 0 {
            println!("  FAIL: the active version does not reproduce the history");
            pass = false;
        }
        let draft = loosened(&self.service.policies)?;
        let mut rates = Vec::new();
        for run in 1..=self.runs {
            let begun = Instant::now();
            let report = simulate(json!({"files": draft, "max_changes": 100})).await?;
            rates.push(timed(
                &format!("draft, run {run}"),
                &report,
                begun.elapsed(),
            ));
            if report.counts.changed != expected_changes
                || report.counts.transitions.get("REJECTED -> APPLIED") != Some(&expected_changes)
            {
                println!("  FAIL: expected exactly {expected_changes} REJECTED -> APPLIED changes");
                pass = false;
            }
        }
        let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let met = slowest >= self.target;
        println!(
            "  result                 slowest run {slowest:.0} orders/s against a target of {:.0}: {}",
            self.target,
            if met && pass { "PASS" } else { "FAIL" }
        );
        Ok(met && pass)
    }

    /// Sends each issuer's orders in batches (`--senders` at a time); returns (number, issuer,
    /// order id) of every order accepted.
    async fn send<'a>(
        &self,
        client: &reqwest::Client,
        base: &str,
        tokens: &BTreeMap<&'a str, String>,
        specs: BTreeMap<&'a str, Vec<(u64, String)>>,
    ) -> Result<Vec<(u64, &'a str, String)>, Failure> {
        use futures::StreamExt;
        let mut batches = Vec::new();
        for (issuer, orders) in specs {
            let token = tokens
                .get(issuer)
                .ok_or_else(|| Failure(format!("no token for {issuer}")))?;
            for chunk in orders.chunks(BATCH) {
                batches.push((issuer, token.clone(), chunk.to_vec()));
            }
        }
        let url = format!("{base}/v1/orders/batch");
        let mut sent = futures::stream::iter(batches)
            .map(|(issuer, token, chunk)| {
                let client = client.clone();
                let url = url.clone();
                async move {
                    let mut body = String::from(r#"{"orders":["#);
                    for (i, (k, order)) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(
                            r#"{{"idempotency_key":"sim-{k}","order":{order}}}"#
                        ));
                    }
                    body.push_str("]}");
                    let reply: BatchReply = client
                        .post(url)
                        .bearer_auth(token)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await
                        .context("sending a batch")?
                        .json()
                        .await
                        .context("the batch reply")?;
                    let mut placed = Vec::new();
                    for ((k, _), item) in chunk.iter().zip(reply.results) {
                        match (item.status, item.order_id) {
                            (200..=202, Some(id)) => placed.push((*k, issuer, id)),
                            (status, _) => {
                                return Err(Failure(format!("order {k} answered {status}")))
                            }
                        }
                    }
                    Ok(placed)
                }
            })
            .buffer_unordered(self.senders.max(1));
        let mut all = Vec::new();
        while let Some(placed) = sent.next().await {
            all.extend(placed?);
        }
        Ok(all)
    }
}

/// Waits until every accepted order is decided.
async fn wait_for_intake(db: &sqlx::PgPool) -> Result<(), Failure> {
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_queue")
            .fetch_one(db)
            .await
            .context("counting the intake queue")?;
        if queued == 0 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(Failure(format!("{queued} orders undecided after 300 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The policy directory with the OFAC release rule loosened (and its test case with it).
fn loosened(dir: &std::path::Path) -> Result<BTreeMap<String, String>, Failure> {
    let mut files: BTreeMap<String, String> = PolicyFiles::read_dir(dir)
        .map_err(|e| Failure(e.to_string()))?
        .into();
    let us = files
        .get_mut("us.cedar")
        .filter(|text| text.contains(OFAC_RULE))
        .ok_or_else(|| Failure("us.cedar does not hold the shipped OFAC rule".into()))?;
    *us = us.replace(OFAC_RULE, LOOSENED_RULE);
    Ok(files)
}
