//! `regulator-bench audit`: audit query and proof latency on a large decision log (SPEC §5 and
//! §7; the targets are a p99 of at most 50 ms per audit query and at most 5 ms per proof).
//!
//! What it does, in order:
//!
//! 1. **A clean database.** Drops and recreates the database of `--database-url` (default
//!    `postgres://postgres@127.0.0.1:5432/regulator_bench_audit`, env
//!    `REGULATOR_BENCH_DATABASE_URL`) as `regulator-bench orders` does, refusing any name without
//!    `bench`, and starts the real service in-process on `127.0.0.1:0` (its own runtime,
//!    threads `regulator-srv`; the bench runs on another, `bench-client`) with the conflict
//!    window `--window-ms` (default 0) and the periodic checkpoint turned off, so that the
//!    first checkpoint the bench asks for builds the whole Merkle tree.
//! 2. **Seeding.** Registers `--assets` U.S. securities (default 1,000) `<chain>/0xBENCH-<n>`
//!    spread over `ethereum`, `polygon` and `arbitrum`, then has `--senders` (default 4)
//!    concurrent senders decide `--decisions` orders (default 1,000,000) through
//!    `POST /v1/orders/batch`, in units of 1,000 orders: 980 U.S.-SEC court-order FREEZEs of a
//!    holder each (APPLIED), 10 FATF SEIZEs on a recommendation (REJECTED) and 10 FATF
//!    MONITORs (allowed). So issuer, kind and outcome each have a common value and rare ones.
//!    Reports the seeding time and rate and the log's make-up; no request starts after
//!    `--seed-timeout-secs` (default 900).
//! 3. **Checkpoints.** `POST /v1/audit/checkpoints`, timed: the first builds the tree of every
//!    seeded decision. Then `--extra-decisions` more (default 5,000) and a second checkpoint,
//!    so that consistency proofs run between two real signed sizes. Then
//!    `VACUUM (ANALYZE)` of `decisions` and `merkle_nodes`, as autovacuum would after a bulk
//!    load, so that the planner has statistics.
//! 4. **Audit queries** over HTTP with an auditor token, one at a time (latency, not
//!    queueing): for each filter, `--warmup-queries` (default 5) unmeasured, then `--queries`
//!    (default 200) measured `GET /v1/audit/decisions?<filter>&after=<random in [0, head)>&limit=100`:
//!    target (`chain`+`asset`, random asset), target + `holder`, `issuer=US-SEC` (common),
//!    `issuer=FATF` (rare), `outcome=REJECTED` (rare), `outcome=APPLIED` (common),
//!    `kind=SEIZE` (rare), `policy` = a determining policy of a sample REJECTED decision (rare)
//!    and of a sample APPLIED one (common), a random 60-second `from_time`/`to_time` range and a
//!    random `from_seq`/`to_seq` range of 1,000. Prints p50/p90/p99/max in ms (round trip,
//!    whole body read), the rows returned, and PASS/FAIL against `--target-query-p99-ms`.
//! 5. **Proofs**: `--proofs` (default 1,000) inclusion proofs of random decisions against the
//!    latest checkpoint's size and as many consistency proofs from a random size (the first
//!    one from the first checkpoint's) to it; p50/p90/p99/max and PASS/FAIL against
//!    `--target-proof-p99-ms`. One proof in `--verify-every` (default 10) is checked with
//!    [`regulator::domain::merkle`]: inclusion against the signed root, the leaf being
//!    `leaf_hash(record_hash)` and `record_hash` the decision's hash in the database;
//!    consistency against the signed new root and the old tree's root (the first checkpoint's
//!    signed root, or the root recomputed from the stored subtrees for a random size).
//! 6. **Where it stands**: table and index sizes of `decisions`, `merkle_nodes` and
//!    `decision_policies` (the policy index of migration 0006), and for one query of each
//!    filter the `EXPLAIN (ANALYZE, BUFFERS)` top line, scan lines and execution time, with the custom plan (planned with the values, which is what `audit_page`
//!    runs: an unnamed statement) and the generic plan (what a cached prepared statement would
//!    switch to after five executions, shown for comparison). For a time range it is the
//!    statement that sorts the range's matches, which `audit_page` runs when walking the
//!    2,000 seqs after the cursor did not fill the page.
//!
//! Exit code: 0 on PASS; 1 if a target is missed, a filter returned nothing at all, a request
//! failed or a proof did not verify; 2 if the bench could not run (including a seeding that
//! did not reach `--decisions` within its time limit). Everything is on loopback and bounded in
//! time. The service is stopped at the end; the database is left for inspection and dropped by
//! the next run.
//!
//! Example: `cargo run --release -p regulator-bench -- audit` (about 3 minutes of seeding here), or the
//! quicker `cargo run --release -p regulator-bench -- audit --decisions 100000`.

use std::collections::BTreeMap;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::IgnoredAny;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgConnection;

use regulator::app::App;
use regulator::auth::Role;
use regulator::domain::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash};
use regulator::storage::audit::{time_to_seq, TimeSpan};

use crate::harness::{
    bench_client, print_header, register_named_assets, wait_until_leading, Context, Failure,
    Harness, ServiceArgs, Stats, Tokens,
};

/// The chains the assets are spread over (asset `n` is on `CHAINS[n % 3]`).
const CHAINS: [&str; 3] = ["ethereum", "polygon", "arbitrum"];
/// Orders per seeding unit, and how they split: SEC FREEZEs first, then FATF SEIZEs, then
/// FATF MONITORs.
const UNIT: u64 = 1_000;
const UNIT_SEC: u64 = 980;
const UNIT_SEIZE: u64 = 10;
/// The width of the time-range filter.
const TIME_RANGE_SECS: i64 = 60;
/// The width of the sequence-range filter.
const SEQ_RANGE: u64 = 1_000;
/// Page size of every measured query.
const LIMIT: u32 = 100;

#[derive(Debug, Args)]
pub struct BenchAuditArgs {
    /// Postgres URL of the bench database. It is DROPPED and recreated; its name must contain
    /// `bench`.
    #[arg(
        long,
        env = "REGULATOR_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator_bench_audit"
    )]
    database_url: String,
    #[command(flatten)]
    service: ServiceArgs,
    /// Decisions to seed before the first checkpoint.
    #[arg(long, default_value_t = 1_000_000)]
    decisions: u64,
    /// Decisions added after the first checkpoint, before the second.
    #[arg(long, default_value_t = 5_000)]
    extra_decisions: u64,
    /// Assets to register, spread over three chains.
    #[arg(long, default_value_t = 1_000)]
    assets: u64,
    /// Concurrent seeding senders, each with one batch in flight.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// No seeding request starts after this many seconds.
    #[arg(long, default_value_t = 900)]
    seed_timeout_secs: u64,
    /// Measured queries per filter.
    #[arg(long, default_value_t = 200)]
    queries: u64,
    /// Unmeasured queries per filter (and proofs per kind) first.
    #[arg(long, default_value_t = 5)]
    warmup_queries: u64,
    /// Measured proofs of each kind (inclusion, consistency).
    #[arg(long, default_value_t = 1_000)]
    proofs: u64,
    /// Check one proof in this many.
    #[arg(long, default_value_t = 10)]
    verify_every: u64,
    /// The target: p99 of an audit query, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    target_query_p99_ms: f64,
    /// The target: p99 of a proof, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    target_proof_p99_ms: f64,
    /// Seed of the random choices (assets, cursors, ranges, proofs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// How a run ended, short of an error.
enum Verdict {
    Pass,
    Fail,
    /// Measured, but on fewer decisions than asked: could not run as asked.
    Incomplete,
}

impl BenchAuditArgs {
    pub fn run(self) -> ExitCode {
        match self.bench() {
            Ok(Verdict::Pass) => ExitCode::SUCCESS,
            Ok(Verdict::Fail) => ExitCode::from(1),
            Ok(Verdict::Incomplete) => {
                eprintln!("error: seeding did not reach --decisions within --seed-timeout-secs");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn bench(self) -> Result<Verdict, Failure> {
        if self.decisions == 0 || self.assets == 0 || self.senders == 0 {
            return Err(Failure(
                "--decisions, --assets and --senders must be positive".into(),
            ));
        }
        if self.queries == 0 || self.proofs == 0 || self.verify_every == 0 {
            return Err(Failure(
                "--queries, --proofs and --verify-every must be positive".into(),
            ));
        }
        if self.decisions > 100_000_000 || self.seed_timeout_secs > 7_200 {
            return Err(Failure(
                "at most 100,000,000 decisions and 7200 s of seeding".into(),
            ));
        }
        // The periodic checkpoint is out of the way (once a day), so that the bench's first
        // checkpoint builds the whole tree.
        Harness {
            database_url: &self.database_url,
            service: &self.service,
            webhooks: regulator::webhooks::WebhookConfig::default(),
            checkpoint_interval: Duration::from_secs(86_400),
        }
        .run(async |app, tokens| self.drive(app, tokens).await)
    }

    async fn drive(&self, app: &App, tokens: &Tokens) -> Result<Verdict, Failure> {
        let base = format!("http://{}", app.addr);
        let admin = tokens.mint("bench-ops", vec![Role::Admin])?;
        let auditor = tokens.mint("bench-auditor", vec![Role::Auditor])?;
        let client = bench_client(self.senders + 8, Duration::from_secs(120))?;

        let mut stats = Stats::connect(&self.database_url).await?;
        print_header(
            "regulator-bench audit",
            &mut stats,
            &self.service.db_settings,
        )
        .await?;
        println!("{}", self.service.describe(&base));
        let db = &mut stats.conn;
        sqlx::raw_sql("SET statement_timeout = '600s'")
            .execute(&mut *db)
            .await
            .context("SET statement_timeout")?;

        wait_until_leading(&client, &base).await?;
        let started = Instant::now();
        register(&client, &base, &admin, self.assets).await?;
        println!(
            "  assets                 {} registered on {} chains in {:.2} s",
            self.assets,
            CHAINS.len(),
            started.elapsed().as_secs_f64()
        );

        // 1. Seeding.
        let seeder = Arc::new(Seeder {
            client: client.clone(),
            batch_url: format!("{base}/v1/orders/batch"),
            sec: tokens.mint("US-SEC", vec![Role::Regulator])?,
            fatf: tokens.mint("FATF", vec![Role::Regulator])?,
            assets: self.assets,
            done: AtomicU64::new(0),
        });
        let deadline = Instant::now() + Duration::from_secs(self.seed_timeout_secs);
        println!();
        println!(
            "== seeding: {} decisions, POST /v1/orders/batch, {} senders",
            self.decisions, self.senders
        );
        let seeded = seed(&seeder, db, 0, self.decisions, self.senders, deadline).await?;
        seeded.print();
        let incomplete = seeded.head < self.decisions;

        // 2. Checkpoints.
        println!();
        println!("== checkpoints");
        let first = checkpoint(&client, &base, &auditor).await?;
        println!(
            "  first                  tree_size {} built and signed in {:.2} s ({:.0} leaves/s)",
            first.reply.tree_size,
            first.secs,
            first.reply.tree_size as f64 / first.secs.max(1e-9)
        );
        let extra_units = self.decisions.div_ceil(UNIT);
        let extra = seed(
            &seeder,
            db,
            extra_units,
            self.extra_decisions,
            self.senders,
            Instant::now() + Duration::from_secs(120),
        )
        .await?;
        let second = checkpoint(&client, &base, &auditor).await?;
        println!(
            "  second                 tree_size {} after {} more decisions, in {:.3} s",
            second.reply.tree_size,
            extra.head - seeded.head,
            second.secs
        );
        if second.reply.tree_size <= first.reply.tree_size {
            return Err(Failure(format!(
                "the second checkpoint ({}) is no larger than the first ({})",
                second.reply.tree_size, first.reply.tree_size
            )));
        }
        let vacuum = Instant::now();
        let tables = tables(db).await?.join(", ");
        sqlx::raw_sql(&format!("VACUUM (ANALYZE) {tables}"))
            .execute(&mut *db)
            .await
            .context("VACUUM (ANALYZE)")?;
        println!(
            "  VACUUM (ANALYZE)       {tables} in {:.1} s",
            vacuum.elapsed().as_secs_f64()
        );

        // 3. The log as it stands.
        let head = extra.head;
        let (min_time, max_time): (DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as("SELECT min(decided_at), max(decided_at) FROM decisions")
                .fetch_one(&mut *db)
                .await
                .context("the decisions' time span")?;
        let rejected_policy = sample_policy(&client, &base, &auditor, "REJECTED").await?;
        let applied_policy = sample_policy(&client, &base, &auditor, "APPLIED").await?;
        println!();
        println!(
            "== audit queries: GET /v1/audit/decisions, {} per filter after {} unmeasured, one at a time, after=random in [0, {head}), limit={LIMIT}",
            self.queries, self.warmup_queries
        );
        println!(
            "  log                    {head} decisions decided from {} to {} ({:.1} s)",
            min_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            max_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            (max_time - min_time).num_milliseconds() as f64 / 1e3
        );
        println!("  sample policies        REJECTED: {rejected_policy}  APPLIED: {applied_policy}");
        let facts = Facts {
            head,
            assets: self.assets,
            orders: self.decisions,
            min_time,
            max_time,
            rejected_policy,
            applied_policy,
        };
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut pass = true;
        let mut examples = Vec::new();
        println!(
            "  {:<26} {:>8} {:>8} {:>8} {:>8}  {:>8} {:>9} {:>6}  verdict",
            "filter (ms)", "p50", "p90", "p99", "max", "rows", "non-empty", "full"
        );
        for filter in FILTERS {
            let result = self
                .measure_filter(&client, &base, &auditor, &facts, filter, &mut rng)
                .await?;
            let ms = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
            let p99 = ms(0.99);
            let ok = p99 <= self.target_query_p99_ms && result.non_empty > 0 && result.errors == 0;
            pass &= ok;
            println!(
                "  {:<26} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {:>8} {:>9} {:>6}  {}{}",
                filter.name,
                ms(0.50),
                ms(0.90),
                p99,
                result.latency.max() as f64 / 1000.0,
                result.rows,
                result.non_empty,
                result.full,
                if ok { "PASS" } else { "FAIL" },
                if result.errors > 0 {
                    format!(
                        " ({} errors: {})",
                        result.errors,
                        result.first_error.unwrap_or_default()
                    )
                } else if result.non_empty == 0 {
                    " (no rows at all)".to_owned()
                } else {
                    String::new()
                }
            );
            examples.push((filter.name, result.example));
        }
        println!("  target: p99 <= {} ms per query", self.target_query_p99_ms);

        // 4. Proofs.
        let proofs = self
            .measure_proofs(&client, &base, &auditor, &first, &second, &mut rng)
            .await?;
        pass &= proofs;

        // 5. Sizes and plans.
        sizes(db).await?;
        println!();
        println!(
            "== EXPLAIN (ANALYZE, BUFFERS) of one query per filter: custom plan / generic plan"
        );
        for (name, (after, params)) in &examples {
            println!("  {name}  (after={after}{})", query_text(params));
            for generic in [false, true] {
                let lines = explain(db, *after, params, generic).await?;
                let label = if generic { "generic" } else { "custom " };
                for (i, line) in lines.iter().enumerate() {
                    let lead = if i == 0 { label } else { "       " };
                    println!("    {lead}  {line}");
                }
            }
        }

        let _ = sqlx::Connection::close(stats.conn).await;
        println!();
        if incomplete {
            println!(
                "RESULT: INCOMPLETE (seeded {} of {} decisions)",
                seeded.head, self.decisions
            );
            return Ok(Verdict::Incomplete);
        }
        println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
        Ok(if pass { Verdict::Pass } else { Verdict::Fail })
    }

    async fn measure_filter(
        &self,
        client: &reqwest::Client,
        base: &str,
        auditor: &str,
        facts: &Facts,
        filter: &Filter,
        rng: &mut StdRng,
    ) -> Result<FilterResult, Failure> {
        let url = format!("{base}/v1/audit/decisions");
        let mut result = FilterResult {
            latency: histogram()?,
            rows: 0,
            non_empty: 0,
            full: 0,
            errors: 0,
            first_error: None,
            example: (0, Vec::new()),
        };
        for i in 0..self.warmup_queries + self.queries {
            let params = (filter.params)(facts, rng);
            let after = rng.gen_range(0..facts.head);
            if i == self.warmup_queries {
                result.example = (after, params.clone());
            }
            let mut pairs: Vec<(&str, String)> =
                params.iter().map(|(k, v)| (*k, v.to_string())).collect();
            pairs.push(("after", after.to_string()));
            pairs.push(("limit", LIMIT.to_string()));
            let url = url::Url::parse_with_params(&url, &pairs).context("a query's URL")?;
            let started = Instant::now();
            let answer = client.get(url).bearer_auth(auditor).send().await;
            let (status, bytes) = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.bytes().await)
                }
                Err(e) => (0, Err(e)),
            };
            let elapsed = started.elapsed();
            if i < self.warmup_queries {
                continue;
            }
            let bytes = match bytes {
                Ok(b) if status == 200 => b,
                Ok(b) => {
                    result.fail(format!("{status}: {}", String::from_utf8_lossy(&b)));
                    continue;
                }
                Err(e) => {
                    result.fail(e.to_string());
                    continue;
                }
            };
            record(&mut result.latency, elapsed);
            match serde_json::from_slice::<PageReply>(&bytes) {
                Ok(page) => {
                    let n = page.records.len() as u64;
                    result.rows += n;
                    result.non_empty += u64::from(n > 0);
                    result.full += u64::from(n == u64::from(LIMIT));
                }
                Err(e) => result.fail(format!("unparsable page: {e}")),
            }
        }
        Ok(result)
    }

    /// Measures and checks inclusion and consistency proofs; false if a target is missed or a
    /// proof does not verify.
    async fn measure_proofs(
        &self,
        client: &reqwest::Client,
        base: &str,
        auditor: &str,
        first: &Published,
        second: &Published,
        rng: &mut StdRng,
    ) -> Result<bool, Failure> {
        // A pool of the bench's own for the checks, outside the timed requests.
        let options: PgConnectOptions = self.database_url.parse().context("--database-url")?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.application_name("regulator-bench-audit-verify"))
            .await
            .context("cannot connect for the proof checks")?;
        let size = second.reply.tree_size;
        let root = hash32(&second.reply.root).context("the checkpoint's root")?;
        let old_size = first.reply.tree_size;
        let old_root = hash32(&first.reply.root).context("the first checkpoint's root")?;
        println!();
        println!(
            "== proofs against the latest checkpoint (tree_size {size}), {} of each after {} unmeasured, one at a time; one in {} checked",
            self.proofs, self.warmup_queries, self.verify_every
        );
        let mut pass = true;

        // Inclusion.
        let mut latency = histogram()?;
        let (mut checked, mut bad, mut errors) = (0u64, 0u64, 0u64);
        let mut first_problem: Option<String> = None;
        for i in 0..self.warmup_queries + self.proofs {
            let seq = rng.gen_range(1..=size);
            let url = format!("{base}/v1/audit/proofs/inclusion?seq={seq}&tree_size={size}");
            let (elapsed, answer) = get_json::<InclusionReply>(client, &url, auditor).await;
            if i < self.warmup_queries {
                continue;
            }
            let reply = match answer {
                Ok(reply) => reply,
                Err(e) => {
                    errors += 1;
                    first_problem.get_or_insert(e);
                    continue;
                }
            };
            record(&mut latency, elapsed);
            if (i - self.warmup_queries).is_multiple_of(self.verify_every) {
                checked += 1;
                if let Err(e) = check_inclusion(&pool, seq, size, &root, &reply).await {
                    bad += 1;
                    first_problem.get_or_insert(format!("inclusion of {seq}: {e}"));
                }
            }
        }
        pass &= self.proof_line("inclusion", &latency, checked, bad, errors);

        // Consistency: the first from the first checkpoint, then from random sizes.
        let mut latency = histogram()?;
        let (mut checked_c, mut bad_c, mut errors_c) = (0u64, 0u64, 0u64);
        for i in 0..self.warmup_queries + self.proofs {
            let measured = i.checked_sub(self.warmup_queries);
            let from = if measured == Some(0) {
                old_size
            } else {
                rng.gen_range(1..size)
            };
            let url = format!("{base}/v1/audit/proofs/consistency?from={from}&to={size}");
            let (elapsed, answer) = get_json::<ConsistencyReply>(client, &url, auditor).await;
            let Some(measured) = measured else {
                continue;
            };
            let reply = match answer {
                Ok(reply) => reply,
                Err(e) => {
                    errors_c += 1;
                    first_problem.get_or_insert(e);
                    continue;
                }
            };
            record(&mut latency, elapsed);
            if measured.is_multiple_of(self.verify_every) {
                checked_c += 1;
                let from_root = if from == old_size {
                    Ok(old_root)
                } else {
                    regulator::audit::tree::root_at_if_built(&pool, from)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.ok_or_else(|| format!("no tree of {from} leaves")))
                };
                let checked = from_root.and_then(|from_root| {
                    if reply.from != from || reply.to != size {
                        return Err(format!(
                            "asked {from}..{size}, answered {}..{}",
                            reply.from, reply.to
                        ));
                    }
                    let proof = reply
                        .proof
                        .iter()
                        .map(|h| hash32(h))
                        .collect::<Result<Vec<_>, _>>()?;
                    verify_consistency(from, size, &from_root, &root, &proof)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = checked {
                    bad_c += 1;
                    first_problem.get_or_insert(format!("consistency {from}..{size}: {e}"));
                }
            }
        }
        pass &= self.proof_line("consistency", &latency, checked_c, bad_c, errors_c);
        println!(
            "  (the first consistency proof is {old_size}..{size}, checked against both signed roots)"
        );
        if let Some(problem) = first_problem {
            println!("  first problem          {problem}");
        }
        println!("  target: p99 <= {} ms per proof", self.target_proof_p99_ms);
        pool.close().await;
        Ok(pass)
    }

    fn proof_line(
        &self,
        name: &str,
        latency: &Histogram<u64>,
        checked: u64,
        bad: u64,
        errors: u64,
    ) -> bool {
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        let ok = ms(0.99) <= self.target_proof_p99_ms && bad == 0 && errors == 0;
        println!(
            "  {name:<12} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} answered, {errors} errors; {checked} checked, {bad} wrong)  {}",
            ms(0.50),
            ms(0.90),
            ms(0.99),
            latency.max() as f64 / 1000.0,
            latency.len(),
            if ok { "PASS" } else { "FAIL" }
        );
        ok
    }
}

/// The seeding senders' shared state.
struct Seeder {
    client: reqwest::Client,
    batch_url: String,
    sec: String,
    fatf: String,
    assets: u64,
    /// Items answered so far (any status).
    done: AtomicU64,
}

fn asset_of(n: u64, assets: u64) -> (&'static str, String) {
    let a = n % assets;
    (
        CHAINS[(a % CHAINS.len() as u64) as usize],
        format!("0xBENCH-{a}"),
    )
}

/// Order number `n`: its issuer's token and its body.
fn order(seeder: &Seeder, n: u64) -> (&str, String) {
    let (chain, asset) = asset_of(n, seeder.assets);
    let i = n % UNIT;
    if i < UNIT_SEC {
        let body = format!(
            r#"{{"target":{{"chain":"{chain}","asset":"{asset}","holder":"0xH{n}"}},"legal_basis":{{"instrument":"court_order","reference":"SEC v. Bench Holder {n}, 26-cv-{n} (S.D.N.Y.)"}},"instruction":{{"kind":"FREEZE"}}}}"#
        );
        (&seeder.sec, body)
    } else {
        let kind = if i < UNIT_SEC + UNIT_SEIZE {
            "SEIZE"
        } else {
            "MONITOR"
        };
        let body = format!(
            r#"{{"target":{{"chain":"{chain}","asset":"{asset}"}},"legal_basis":{{"instrument":"recommendation","reference":"R.38 follow-up {n}"}},"instruction":{{"kind":"{kind}"}}}}"#
        );
        (&seeder.fatf, body)
    }
}

#[derive(Default)]
struct SeedTally {
    requests: u64,
    sent: u64,
    decided: u64,
    pending: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl SeedTally {
    fn error(&mut self, class: String, count: u64, detail: impl FnOnce() -> String) {
        *self.errors.entry(class).or_default() += count;
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
    }

    fn merge(&mut self, other: SeedTally) {
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
    }
}

#[derive(Deserialize)]
struct BatchReply {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    status: u16,
    problem: Option<serde_json::Value>,
}

/// Sends orders `numbers` (all of one issuer) as one batch.
async fn send_batch(seeder: &Seeder, token: &str, numbers: &[u64], tally: &mut SeedTally) {
    let count = numbers.len() as u64;
    let mut body = String::with_capacity(numbers.len() * 300 + 16);
    body.push_str(r#"{"orders":["#);
    for (k, n) in numbers.iter().enumerate() {
        if k > 0 {
            body.push(',');
        }
        let (_, order) = order(seeder, *n);
        body.push_str(&format!(
            r#"{{"idempotency_key":"seed-{n}","order":{order}}}"#
        ));
    }
    body.push_str("]}");
    tally.requests += 1;
    tally.sent += count;
    let sent = seeder
        .client
        .post(&seeder.batch_url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    seeder.done.fetch_add(count, Ordering::Relaxed);
    let response = match sent {
        Ok(r) => r,
        Err(e) => return tally.error("transport".into(), count, || e.to_string()),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return tally.error("transport".into(), count, || e.to_string()),
    };
    if status != 200 {
        return tally.error(format!("batch {status}"), count, || {
            format!("{status}: {}", String::from_utf8_lossy(&bytes))
        });
    }
    match serde_json::from_slice::<BatchReply>(&bytes) {
        Ok(reply) => {
            for item in reply.results {
                match item.status {
                    201 => tally.decided += 1,
                    202 => tally.pending += 1,
                    other => tally.error(other.to_string(), 1, || {
                        format!("{other}: {}", item.problem.unwrap_or_default())
                    }),
                }
            }
        }
        Err(e) => tally.error("unparsable".into(), count, || e.to_string()),
    }
}

/// What a seeding phase did.
struct Seeded {
    tally: SeedTally,
    /// The ledger's head once the intake queue drained.
    head: u64,
    /// Decisions added.
    added: u64,
    secs: f64,
    /// (issuer, kind, outcome) → decisions, over the whole log.
    makeup: Vec<(String, String, String, i64)>,
}

impl Seeded {
    fn print(&self) {
        let t = &self.tally;
        println!(
            "  sent                   {} orders in {} requests; answered 201: {}, 202: {}",
            t.sent, t.requests, t.decided, t.pending
        );
        let errors: u64 = t.errors.values().sum();
        if errors > 0 {
            println!("  errors                 {errors} {:?}", t.errors);
            if let Some(e) = &t.first_error {
                let e: String = e.chars().take(400).collect();
                println!("  first error            {e}");
            }
        }
        println!(
            "  seeded                 {} decisions in {:.1} s  =>  {:.0} decisions/s (until the intake queue drained)",
            self.added,
            self.secs,
            self.added as f64 / self.secs.max(1e-9)
        );
        println!("  log make-up            (issuer, kind, outcome): decisions");
        for (issuer, kind, outcome, n) in &self.makeup {
            println!("                         {issuer:<8} {kind:<8} {outcome:<10} {n}");
        }
    }
}

/// Seeds `orders` orders, numbered from unit `first_unit` on, with `senders` senders; waits for
/// the intake queue to drain.
async fn seed(
    seeder: &Arc<Seeder>,
    db: &mut PgConnection,
    first_unit: u64,
    orders: u64,
    senders: usize,
    deadline: Instant,
) -> Result<Seeded, Failure> {
    let head_before = ledger_head(db).await?;
    let units = orders.div_ceil(UNIT);
    let cursor = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let done_before = seeder.done.load(Ordering::Relaxed);
    let mut handles = Vec::new();
    for _ in 0..senders {
        let seeder = Arc::clone(seeder);
        let cursor = Arc::clone(&cursor);
        handles.push(tokio::spawn(async move {
            let mut tally = SeedTally::default();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let u = cursor.fetch_add(1, Ordering::Relaxed);
                if u >= units {
                    break;
                }
                let first = (first_unit + u) * UNIT;
                let count = UNIT.min(orders - u * UNIT);
                let numbers: Vec<u64> = (first..first + count).collect();
                let (sec, fatf): (Vec<u64>, Vec<u64>) =
                    numbers.iter().partition(|n| *n % UNIT < UNIT_SEC);
                let (seize, monitor): (Vec<u64>, Vec<u64>) =
                    fatf.iter().partition(|n| *n % UNIT < UNIT_SEC + UNIT_SEIZE);
                for (token, numbers) in [
                    (&seeder.sec, sec),
                    (&seeder.fatf, seize),
                    (&seeder.fatf, monitor),
                ] {
                    if !numbers.is_empty() {
                        send_batch(&seeder, token, &numbers, &mut tally).await;
                    }
                }
            }
            tally
        }));
    }
    let mut joined = futures::future::join_all(handles);
    let mut last = Instant::now();
    let results = loop {
        tokio::select! {
            results = &mut joined => break results,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if orders >= 100_000 && last.elapsed() >= Duration::from_secs(20) {
                    last = Instant::now();
                    let done = seeder.done.load(Ordering::Relaxed) - done_before;
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "  … {done} of {orders} answered after {secs:.0} s ({:.0}/s)",
                        done as f64 / secs
                    );
                }
            }
        }
    };
    let mut tally = SeedTally::default();
    for result in results {
        match result {
            Ok(t) => tally.merge(t),
            Err(e) => tally.error("sender died".into(), 1, || e.to_string()),
        }
    }
    // Items answered 202 are decided later: wait for the queue to empty.
    let drain_until = Instant::now() + Duration::from_secs(120);
    loop {
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_queue")
            .fetch_one(&mut *db)
            .await
            .context("counting the intake queue")?;
        if queued == 0 {
            break;
        }
        if Instant::now() >= drain_until {
            return Err(Failure(format!(
                "{queued} orders still undecided 120 s after seeding"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let head = ledger_head(db).await?;
    let makeup = sqlx::query_as(
        "SELECT issuer, kind, outcome, count(*) FROM decisions
         GROUP BY issuer, kind, outcome ORDER BY count(*) DESC",
    )
    .fetch_all(&mut *db)
    .await
    .context("the log's make-up")?;
    Ok(Seeded {
        tally,
        head,
        added: head - head_before,
        secs,
        makeup,
    })
}

async fn ledger_head(db: &mut PgConnection) -> Result<u64, Failure> {
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM ledger_head")
        .fetch_one(db)
        .await
        .context("reading the ledger head")?;
    u64::try_from(seq).context("the ledger head")
}

/// Registers `assets` U.S. securities `<CHAINS[n % 3]>/0xBENCH-<n>`.
async fn register(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    assets: u64,
) -> Result<(), Failure> {
    register_named_assets(client, base, admin, assets, |n| {
        let (chain, asset) = asset_of(n, assets);
        (chain.to_owned(), asset)
    })
    .await
}

#[derive(Deserialize)]
struct CheckpointReply {
    tree_size: u64,
    root: String,
}

struct Published {
    reply: CheckpointReply,
    secs: f64,
}

/// `POST /v1/audit/checkpoints`, timed.
async fn checkpoint(
    client: &reqwest::Client,
    base: &str,
    auditor: &str,
) -> Result<Published, Failure> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/audit/checkpoints"))
        .bearer_auth(auditor)
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .context("publishing a checkpoint")?;
    let status = response.status();
    let bytes = response.bytes().await.context("publishing a checkpoint")?;
    let secs = started.elapsed().as_secs_f64();
    if status.as_u16() != 201 {
        return Err(Failure(format!(
            "publishing a checkpoint: {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let reply = serde_json::from_slice(&bytes).context("the checkpoint")?;
    Ok(Published { reply, secs })
}

/// A determining policy of the first decision with `outcome`.
async fn sample_policy(
    client: &reqwest::Client,
    base: &str,
    auditor: &str,
    outcome: &str,
) -> Result<String, Failure> {
    let url = format!("{base}/v1/audit/decisions?outcome={outcome}&limit=1");
    let (_, page) = get_json::<serde_json::Value>(client, &url, auditor).await;
    let page = page.map_err(|e| Failure(format!("a sample {outcome} decision: {e}")))?;
    page["records"][0]["decision"]["determining_policies"][0]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            Failure(format!(
                "no {outcome} decision with a determining policy: {page}"
            ))
        })
}

/// A GET with the auditor's token: its round trip (whole body read) and the parsed answer, or
/// what went wrong.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (Duration, Result<T, String>) {
    let started = Instant::now();
    let answer = match client.get(url).bearer_auth(token).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            r.bytes().await.map(|b| (status, b))
        }
        Err(e) => Err(e),
    };
    let elapsed = started.elapsed();
    let parsed = match answer {
        Ok((200, bytes)) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Ok((status, bytes)) => Err(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
        Err(e) => Err(e.to_string()),
    };
    (elapsed, parsed)
}

/// What the filters draw their values from.
struct Facts {
    head: u64,
    assets: u64,
    /// Orders of the first seeding (numbers `0..orders`).
    orders: u64,
    min_time: DateTime<Utc>,
    max_time: DateTime<Utc>,
    rejected_policy: String,
    applied_policy: String,
}

/// A filter's value, typed as `audit_page` binds it.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(u64),
    Time(DateTime<Utc>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Text(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Time(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        }
    }
}

type Params = Vec<(&'static str, Value)>;

/// An audit filter: a name and how to draw its parameters (in `audit_page`'s order).
struct Filter {
    name: &'static str,
    params: fn(&Facts, &mut StdRng) -> Params,
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn random_asset(facts: &Facts, rng: &mut StdRng) -> Params {
    let (chain, asset) = asset_of(rng.gen_range(0..facts.assets), facts.assets);
    vec![("chain", text(chain)), ("asset", Value::Text(asset))]
}

/// A seeded SEC freeze's holder, with its asset.
fn random_holder(facts: &Facts, rng: &mut StdRng) -> Params {
    let n = loop {
        let n = rng.gen_range(0..facts.orders);
        if n % UNIT < UNIT_SEC {
            break n;
        }
    };
    let (chain, asset) = asset_of(n, facts.assets);
    vec![
        ("chain", text(chain)),
        ("asset", Value::Text(asset)),
        ("holder", Value::Text(format!("0xH{n}"))),
    ]
}

fn random_time_range(facts: &Facts, rng: &mut StdRng) -> Params {
    let span = (facts.max_time - facts.min_time).num_milliseconds();
    let room = (span - TIME_RANGE_SECS * 1_000).max(0);
    let from = facts.min_time + chrono::Duration::milliseconds(rng.gen_range(0..=room));
    let to = from + chrono::Duration::seconds(TIME_RANGE_SECS);
    vec![
        ("from_time", Value::Time(from)),
        ("to_time", Value::Time(to)),
    ]
}

fn random_seq_range(facts: &Facts, rng: &mut StdRng) -> Params {
    let from = rng.gen_range(1..=facts.head.saturating_sub(SEQ_RANGE - 1).max(1));
    vec![
        ("from_seq", Value::Int(from)),
        ("to_seq", Value::Int(from + SEQ_RANGE - 1)),
    ]
}

const FILTERS: &[Filter] = &[
    Filter {
        name: "target chain+asset",
        params: random_asset,
    },
    Filter {
        name: "target+holder",
        params: random_holder,
    },
    Filter {
        name: "issuer=US-SEC (common)",
        params: |_, _| vec![("issuer", text("US-SEC"))],
    },
    Filter {
        name: "issuer=FATF (rare)",
        params: |_, _| vec![("issuer", text("FATF"))],
    },
    Filter {
        name: "outcome=REJECTED (rare)",
        params: |_, _| vec![("outcome", text("REJECTED"))],
    },
    Filter {
        name: "outcome=APPLIED (common)",
        params: |_, _| vec![("outcome", text("APPLIED"))],
    },
    Filter {
        name: "kind=SEIZE (rare)",
        params: |_, _| vec![("kind", text("SEIZE"))],
    },
    Filter {
        name: "policy of REJECTED (rare)",
        params: |f, _| vec![("policy", text(&f.rejected_policy))],
    },
    Filter {
        name: "policy of APPLIED (common)",
        params: |f, _| vec![("policy", text(&f.applied_policy))],
    },
    Filter {
        name: "time range 60 s",
        params: random_time_range,
    },
    Filter {
        name: "seq range 1,000",
        params: random_seq_range,
    },
];

struct FilterResult {
    /// Round trip per query, in microseconds.
    latency: Histogram<u64>,
    rows: u64,
    non_empty: u64,
    /// Pages of `LIMIT` rows.
    full: u64,
    errors: u64,
    first_error: Option<String>,
    /// The first measured query's cursor and parameters, to explain.
    example: (u64, Params),
}

impl FilterResult {
    fn fail(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.chars().take(300).collect());
        }
    }
}

#[derive(Deserialize)]
struct PageReply {
    records: Vec<IgnoredAny>,
}

fn query_text(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| format!("&{k}={v}"))
        .collect::<String>()
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the statement `audit_page` builds for these parameters (kept
/// in step with it by hand), as a prepared statement with a custom or a generic plan: its top
/// line, scan lines and execution time.
async fn explain(
    db: &mut PgConnection,
    after: u64,
    params: &Params,
    generic: bool,
) -> Result<Vec<String>, Failure> {
    // A time range is first turned into a seq range, as `audit_page` does; the page query
    // then carries both.
    let time = |key: &str| {
        params.iter().find_map(|(k, v)| match v {
            Value::Time(t) if *k == key => Some(*t),
            _ => None,
        })
    };
    let mut params = params.clone();
    if time("from_time").is_some() || time("to_time").is_some() {
        let span = time_to_seq(&mut *db, time("from_time"), time("to_time"))
            .await
            .context("the time probes")?;
        let bounds = match span {
            TimeSpan::Seqs(first, last) => Some((first, last)),
            // The service answers an empty range without a query; plan one that finds nothing.
            TimeSpan::Empty => Some((u64::MAX >> 1, 0)),
            // A log from before activations: the time filters alone, as the service does.
            TimeSpan::Unordered => None,
        };
        if let Some((first, last)) = bounds {
            params.push(("from_seq", Value::Int(first)));
            params.push(("to_seq", Value::Int(last)));
        }
    }
    let mut sql =
        "SELECT seq, encode(hash, 'hex'), record::text FROM decisions WHERE seq > $1".to_owned();
    let mut types = vec!["bigint"];
    let mut args = vec![after.to_string()];
    for (key, value) in &params {
        let n = types.len() + 1;
        let clause = match *key {
            "policy" => format!(
                " AND seq IN (SELECT seq FROM decision_policies WHERE policy = ${n} AND seq > $1)"
            ),
            "from_time" => format!(" AND decided_at >= ${n}"),
            "to_time" => format!(" AND decided_at < ${n}"),
            "from_seq" => format!(" AND seq >= ${n}"),
            "to_seq" => format!(" AND seq <= ${n}"),
            column => format!(" AND {column} = ${n}"),
        };
        sql.push_str(&clause);
        let (ty, arg) = match value {
            Value::Text(s) => ("text", format!("'{}'", s.replace('\'', "''"))),
            Value::Int(n) => ("bigint", n.to_string()),
            Value::Time(_) => ("timestamptz", format!("'{value}'")),
        };
        types.push(ty);
        args.push(arg);
    }
    let n = types.len() + 1;
    sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
    types.push("bigint");
    args.push(LIMIT.to_string());
    let mode = if generic {
        "force_generic_plan"
    } else {
        "force_custom_plan"
    };
    let setup = format!(
        "SET plan_cache_mode = {mode}; PREPARE bench_audit_q({}) AS {sql}",
        types.join(", ")
    );
    sqlx::raw_sql(&setup)
        .execute(&mut *db)
        .await
        .context("PREPARE")?;
    let statement = format!(
        "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_audit_q({})",
        args.join(", ")
    );
    let plan: Vec<String> = sqlx::query_scalar(&statement)
        .persistent(false)
        .fetch_all(&mut *db)
        .await
        .context("EXPLAIN")?;
    sqlx::raw_sql("DEALLOCATE bench_audit_q; RESET plan_cache_mode")
        .execute(&mut *db)
        .await
        .context("DEALLOCATE")?;
    let mut lines = Vec::new();
    for (i, line) in plan.iter().enumerate() {
        let trimmed = line.trim().trim_start_matches("->").trim();
        if i == 0 || trimmed.contains("Scan") || trimmed.starts_with("Execution Time") {
            let short: String = trimmed.chars().take(170).collect();
            lines.push(short);
        }
    }
    Ok(lines)
}

/// The audit's tables present: `decisions`, `merkle_nodes` and, from migration 0006,
/// `decision_policies`.
async fn tables(db: &mut PgConnection) -> Result<Vec<String>, Failure> {
    sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
           AND relname IN ('decisions', 'merkle_nodes', 'decision_policies') ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .context("listing the audit tables")
}

/// Table and index sizes of the audit's tables.
async fn sizes(db: &mut PgConnection) -> Result<(), Failure> {
    let names = tables(db).await?;
    let mb = |b: i64| b as f64 / 1_048_576.0;
    let tables: Vec<(String, i64, i64, i64, f32)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid), pg_indexes_size(c.oid),
                pg_total_relation_size(c.oid), c.reltuples
         FROM pg_class c WHERE c.relname = ANY($1) AND c.relkind = 'r'
         ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(&mut *db)
    .await
    .context("table sizes")?;
    println!();
    println!("== sizes");
    for (name, heap, indexes, total, tuples) in tables {
        println!(
            "  {name:<22} {tuples:.0} rows: table {:.1} MB, indexes {:.1} MB, total with TOAST {:.1} MB",
            mb(heap),
            mb(indexes),
            mb(total)
        );
    }
    let indexes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT indexrelname::text, pg_relation_size(indexrelid) FROM pg_stat_user_indexes
         WHERE relname = ANY($1) ORDER BY relname, indexrelname",
    )
    .bind(&names)
    .fetch_all(&mut *db)
    .await
    .context("index sizes")?;
    for (name, size) in indexes {
        println!("    {name:<28} {:.1} MB", mb(size));
    }
    Ok(())
}

#[derive(Deserialize)]
struct InclusionReply {
    leaf_index: u64,
    tree_size: u64,
    record_hash: String,
    leaf_hash: String,
    audit_path: Vec<String>,
}

#[derive(Deserialize)]
struct ConsistencyReply {
    from: u64,
    to: u64,
    proof: Vec<String>,
}

/// An inclusion proof against the signed root, with its leaf from the decision's hash in the
/// database.
async fn check_inclusion(
    pool: &sqlx::PgPool,
    seq: u64,
    size: u64,
    root: &Hash,
    reply: &InclusionReply,
) -> Result<(), String> {
    if reply.leaf_index != seq - 1 || reply.tree_size != size {
        return Err(format!(
            "asked seq {seq} in {size}, answered leaf {} in {}",
            reply.leaf_index, reply.tree_size
        ));
    }
    let record_hash = hash32(&reply.record_hash)?;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT hash FROM decisions WHERE seq = $1")
        .bind(i64::try_from(seq).map_err(|e| e.to_string())?)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
    if stored != record_hash {
        return Err("record_hash is not the decision's hash".into());
    }
    let leaf = leaf_hash(&record_hash);
    if hash32(&reply.leaf_hash)? != leaf {
        return Err("leaf_hash is not leaf_hash(record_hash)".into());
    }
    let path = reply
        .audit_path
        .iter()
        .map(|h| hash32(h))
        .collect::<Result<Vec<_>, _>>()?;
    verify_inclusion(seq - 1, size, &leaf, &path, root).map_err(|e| e.to_string())
}

fn hash32(text: &str) -> Result<Hash, String> {
    hex::decode(text)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| format!("{text:?} is not 32 bytes"))
}

fn histogram() -> Result<Histogram<u64>, Failure> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("cannot make a latency histogram")
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(micros.max(1));
}
