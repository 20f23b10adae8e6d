//! `regulator-bench`: the load generators. Each drives the real service (the `regulator`
//! library, started in-process on a fresh bench database that it drops and recreates) over
//! loopback HTTP and prints what it measured. They live outside the product binary: an
//! operator's `regulator` has nothing that drops databases.
//!
//! Each command exits 0 when it ran (and, where it has targets, met them), 1 when a target
//! was missed, 2 when it could not run.

mod audit;
mod ceilings;
mod chain;
mod harness;
mod orders;
mod simulate;
mod state;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The product binary's allocator (`src/main.rs`), so that the service measured here runs as
/// `regulator serve` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "regulator-bench",
    about = "Load generators for the regulator action engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decision throughput: single orders, batches, or both; prints decisions/s, latency
    /// percentiles, outcomes and where the CPU went.
    Orders(orders::BenchArgs),
    /// Webhook delivery lag (decided → received) to a loopback receiver under a paced load of
    /// single orders; prints lag percentiles, deliveries, duplicates and ordering, PASS/FAIL
    /// against the p99 target.
    Webhooks(webhooks::BenchWebhooksArgs),
    /// Audit query and proof latency on a large log: seeds 1,000,000 decisions, publishes
    /// checkpoints, then prints p50/p90/p99/max per audit filter and per proof kind, PASS/FAIL
    /// against the targets, table and index sizes and the query plans.
    Audit(audit::BenchAuditArgs),
    /// Impact analysis: seeds a history of OFAC blocks, SEC freezes and releases, then
    /// simulates the active version and a draft that loosens the OFAC release rule through the
    /// API; prints orders replayed per second and the changes found, PASS/FAIL against 10,000/s.
    Simulate(simulate::BenchSimulateArgs),
    /// Reconciliation on a real anvil node with a real T-REX token: apply lag (decided → final
    /// observation) under paced SEC freezes, and the time of a full resync of many targets;
    /// PASS/FAIL against p99 ≤ 4 s and resync ≤ 10 s. Needs `npm ci --prefix chain`.
    Chain(chain::BenchChainArgs),
    /// The state map at scale, in-process: builds 1,000,000 targets, then prints proof
    /// document generation p50/p90/p99/max, proof sizes and the cost of applying a decision's
    /// effects; PASS/FAIL against p99 ≤ 5 ms and ≤ 1.5 KB per proof.
    State(state::BenchStateArgs),
}

fn main() -> ExitCode {
    // The service's warnings, quietly: the report is the output.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    match Cli::parse().command {
        Command::Orders(args) => args.run(),
        Command::Webhooks(args) => args.run(),
        Command::Audit(args) => args.run(),
        Command::Simulate(args) => args.run(),
        Command::Chain(args) => args.run(),
        Command::State(args) => args.run(),
    }
}
