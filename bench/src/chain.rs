//! `regulator-bench chain`: apply lag (decided → final observation) on a real anvil node with a
//! real T-REX token, and the time of a full resync (issue 12; targets: p99 lag ≤ 4 s at 50
//! decisions/s with 1 s blocks and a 2-block finality rule; a resync of 10,000 targets ≤ 10 s).
//!
//! 1. A clean database (`--database-url`, default `…/regulator_bench_chain`), the real service
//!    in-process (as `regulator-bench orders`), anvil from `chain/node_modules` on a free port, a T-REX
//!    suite deployed by `chain::deploy`, the asset registered, an adapter in-process.
//! 2. **Lag**: `--rate` SEC freezes per second (default 50) for `--duration-secs` (default 20),
//!    each on a holder address of its own; waits until every one is converged, then reads from
//!    the database, per decision, `decided_at` and the `received_at` of the first final
//!    observation that found it converged, and prints p50/p90/p99/max.
//! 3. **Resync**: `--resync-targets` holder addresses (default 10,000) are added to the
//!    adapter's known targets; one resync (read every target at the final block, report to the
//!    engine in batches of 1,000, the engine stores and judges each) is timed.
//!
//! Exit code 0 when both targets are met, 1 when one is missed, 2 when the bench could not run.
//! Example: `npm ci --prefix chain && cargo run --release -p regulator-bench -- chain`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use clap::Args;
use hdrhistogram::Histogram;
use sqlx::Row;
use tokio::task::JoinSet;

use regulator::app::App;
use regulator::auth::Role;
use regulator::chain::adapter::{Adapter, Durable};
use regulator::chain::anvil::{dev_key, Anvil};
use regulator::chain::config::{AdapterConfig, EngineConfig, Finality};
use regulator::chain::deploy::{self, SuiteSpec};
use regulator::chain::Connection;
use regulator::domain::{AssetId, ChainId, HolderAddress};
use regulator::webhooks::WebhookConfig;

use crate::harness::{
    bench_client, wait_until_leading, Context, Failure, Harness, ServiceArgs, Tokens,
};

const CHAIN: &str = "anvil-bench";
const ASSET: &str = "BENCH-BOND";

#[derive(Debug, Args)]
pub struct BenchChainArgs {
    #[arg(
        long,
        env = "REGULATOR_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator_bench_chain"
    )]
    database_url: String,
    #[command(flatten)]
    service: ServiceArgs,
    /// Decisions per second during the lag phase.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Seconds per block.
    #[arg(long, default_value_t = 1)]
    block_time: u64,
    /// The finality rule: this many confirmations.
    #[arg(long, default_value_t = 2)]
    confirmations: u64,
    #[arg(long, default_value_t = 10_000)]
    resync_targets: u64,
    #[arg(long, default_value_t = 4_000)]
    target_p99_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    target_resync_ms: u64,
}

impl BenchChainArgs {
    pub fn run(self) -> ExitCode {
        let result = Harness {
            database_url: &self.database_url,
            service: &self.service,
            webhooks: WebhookConfig::default(),
            checkpoint_interval: Duration::from_secs(3600),
        }
        .run(async |app, tokens| self.drive(app, tokens).await);
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("regulator-bench chain: {e}");
                ExitCode::from(2)
            }
        }
    }

    async fn drive(&self, app: &App, tokens: &Tokens) -> Result<bool, Failure> {
        let base = format!("http://{}", app.addr);
        let client = bench_client(64, Duration::from_secs(30))?;
        wait_until_leading(&client, &base).await?;
        let admin = tokens.mint("ops", vec![Role::Admin])?;
        let sec = tokens.mint("US-SEC", vec![Role::Regulator])?;

        let anvil = Anvil::start(31337, None).await.context("anvil")?;
        let owner = Connection::open(&anvil.url(), dev_key(0), Some(31337))
            .await
            .context("node")?;
        let agent = dev_key(1);
        let suite = deploy::deploy_suite(
            &owner,
            &deploy::default_artifacts(),
            &SuiteSpec {
                name: "Bench Bond".into(),
                symbol: "BB".into(),
                decimals: 0,
                agents: vec![agent.address()],
                holders: vec![],
            },
        )
        .await
        .context("deploy")?;
        let _: serde_json::Value = owner
            .provider
            .raw_request("evm_setIntervalMining".into(), (self.block_time,))
            .await
            .context("interval mining")?;
        client
            .put(format!("{base}/v1/assets/{CHAIN}/{ASSET}"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"issuer_jurisdiction": "US", "asset_class": "security"}))
            .send()
            .await
            .context("register")?;

        let dir =
            std::env::temp_dir().join(format!("regulator-bench-chain-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).context("temp dir")?;
        std::fs::write(dir.join("agent.key"), hex::encode(agent.to_bytes())).context("key")?;
        std::fs::write(
            dir.join("chain.jwt"),
            tokens.mint(CHAIN, vec![Role::Chain])?,
        )
        .context("token")?;
        let config = AdapterConfig {
            chain: ChainId::parse(CHAIN).context("chain")?,
            rpc_url: anvil.url(),
            chain_id: 31337,
            finality: Finality::Confirmations {
                confirmations: self.confirmations,
            },
            key_file: dir.join("agent.key"),
            state_file: dir.join("state.json"),
            // No resync during the lag phase: it measures applying decisions.
            resync_seconds: 3600,
            stuck_after_seconds: 30,
            engine: EngineConfig {
                url: base.clone(),
                token_file: dir.join("chain.jwt"),
                checkpoint_key_file: None,
                checkpoint_key: None,
            },
            assets: [(AssetId::parse(ASSET).context("asset")?, suite.token)].into(),
            custody: Default::default(),
            anchor: None,
        };
        let adapter = Adapter::open(config.clone()).await.context("adapter")?;
        let running = tokio::spawn(adapter.run());

        // Lag: paced freezes, each on a holder of its own.
        let total = u64::from(self.rate) * self.duration_secs;
        let mut sends = JoinSet::new();
        let started = Instant::now();
        for n in 0..total {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(self.rate));
            tokio::time::sleep_until(due.into()).await;
            let (client, base, sec) = (client.clone(), base.clone(), sec.clone());
            sends.spawn(async move {
                let body = serde_json::json!({
                    "target": {"chain": CHAIN, "asset": ASSET, "holder": holder(n + 1)},
                    "legal_basis": {"instrument": "court_order", "reference": "bench"},
                    "instruction": {"kind": "FREEZE"},
                });
                client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(sec)
                    .header("Idempotency-Key", format!("bench-chain-{n}"))
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
        }
        let mut accepted = 0u64;
        while let Some(ok) = sends.join_next().await {
            accepted += u64::from(matches!(ok, Ok(true)));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let converged = loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT holder) FROM chain_observations
                  WHERE chain = $1 AND holder <> '' AND status = 'converged'",
            )
            .bind(CHAIN)
            .fetch_one(&app.pool)
            .await
            .context("count")?;
            if n as u64 >= accepted || Instant::now() >= deadline {
                break n as u64;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let rows = sqlx::query(
            "SELECT (extract(epoch FROM (min(o.received_at) - d.decided_at)) * 1000)::float8
               FROM decisions d JOIN chain_observations o
                 ON o.chain = d.chain AND o.asset = d.asset AND o.holder = d.holder
              WHERE d.chain = $1 AND o.status = 'converged'
              GROUP BY d.seq, d.decided_at",
        )
        .bind(CHAIN)
        .fetch_all(&app.pool)
        .await
        .context("lag")?;
        let mut lag = Histogram::<u64>::new(3).context("histogram")?;
        for r in rows {
            let ms: f64 = r.try_get::<f64, _>(0).context("lag row")?;
            let _ = lag.record(ms.max(0.0) as u64);
        }
        running.abort();
        let sent_txs = owner
            .provider
            .get_transaction_count(agent.address())
            .await
            .context("nonce")?;
        println!(
            "regulator-bench chain: anvil {}s blocks, finality {} confirmations",
            self.block_time, self.confirmations
        );
        println!(
            "lag phase: {total} freezes at {}/s, {accepted} applied by the engine, {converged} converged on chain, {sent_txs} transactions",
            self.rate
        );
        println!(
            "apply lag decided → final observation (ms): p50 {} p90 {} p99 {} max {} (n = {})",
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.9),
            lag.value_at_quantile(0.99),
            lag.max(),
            lag.len()
        );
        print_stages(&regulator::app::metrics_handle().render());
        let lag_ok = converged >= accepted && lag.value_at_quantile(0.99) <= self.target_p99_ms;
        println!(
            "{} p99 ≤ {} ms",
            if lag_ok { "PASS" } else { "FAIL" },
            self.target_p99_ms
        );

        // Resync: every known target read at the final block and reported.
        let mut durable = Durable::load(&config.state_file).context("state")?;
        let holders = durable
            .targets
            .entry(AssetId::parse(ASSET).context("asset")?)
            .or_default();
        for n in 1..=self.resync_targets {
            holders.insert(HolderAddress::parse(holder(n)).context("holder")?);
        }
        let known = holders.len();
        durable.save(&config.state_file).context("state")?;
        let mut adapter = Adapter::open(config).await.context("adapter")?;
        let started = Instant::now();
        let resync = adapter.resync_now().await.context("resync")?;
        let took = started.elapsed();
        println!(
            "resync: {} targets ({known} holders and the asset) read at the final block and reported in {} ms (reading {} ms, reporting {} ms)",
            resync.targets,
            took.as_millis(),
            resync.read.as_millis(),
            resync.report.as_millis()
        );
        let resync_ok = took <= Duration::from_millis(self.target_resync_ms);
        println!(
            "{} resync ≤ {} ms",
            if resync_ok { "PASS" } else { "FAIL" },
            self.target_resync_ms
        );
        drop(anvil);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(lag_ok && resync_ok)
    }
}

/// The adapter's own account of where the lag went (`adapter_apply_stage_seconds`, a summary
/// per stage): mean, p50 and p99 of each stage over the lag phase.
fn print_stages(metrics: &str) {
    let name = "adapter_apply_stage_seconds";
    let value = |stage: &str, what: &str| -> Option<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("chain=\"{CHAIN}\"")))
            .filter(|l| l.contains(&format!("stage=\"{stage}\"")))
            .find(|l| match what {
                "sum" => l.starts_with(&format!("{name}_sum")),
                "count" => l.starts_with(&format!("{name}_count")),
                q => l.contains(&format!("quantile=\"{q}\"")),
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let mut line = String::from("lag by stage (ms, mean / p50 / p99):");
    for stage in regulator::chain::stages::STAGES {
        let mean = match (value(stage, "sum"), value(stage, "count")) {
            (Some(s), Some(c)) if c > 0.0 => s / c,
            _ => f64::NAN,
        };
        let ms = |v: Option<f64>| v.map_or(f64::NAN, |v| v * 1000.0);
        line.push_str(&format!(
            " {stage} {:.0} / {:.0} / {:.0};",
            mean * 1000.0,
            ms(value(stage, "0.5")),
            ms(value(stage, "0.99"))
        ));
    }
    println!("{}", line.trim_end_matches(';'));
}

/// The `n`th bench holder: a plain address, no identity needed to be frozen.
fn holder(n: u64) -> String {
    format!("{:#x}", Address::from_word(U256::from(n).into()))
}
