//! Subcommands. Each returns the process exit code: 0 on success, 1 when what it checked is
//! wrong (an invalid policy, a failed test case), 2 when it could not run.

mod adapter;
mod audit;
mod bench;
mod bench_audit;
mod bench_chain;
mod bench_simulate;
mod bench_webhooks;
mod openapi;
mod policy;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "regulator", version, about = "Regulator action engine")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with jurisdiction policies: validate, test, diff, simulate (offline or --server).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Check the ledger in the database: `regulator audit verify`.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run a replica: HTTP API, sequencer, notifications.
    Serve(serve::ServeArgs),
    /// Mint a development token (HS256) with the local development secret.
    Token(serve::TokenCommand),
    /// Print the OpenAPI document.
    Openapi,
    /// Run a chain adapter: `regulator adapter evm --config FILE`.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// Chain tooling: `regulator chain deploy-trex` deploys an ERC-3643 suite to a node.
    #[command(subcommand)]
    Chain(adapter::ChainCommand),
    /// Load-test the real service in-process over loopback HTTP on a fresh bench database
    /// (dropped and recreated): single orders, batches, or both; prints decisions/s, latency
    /// percentiles, outcomes and where the CPU went.
    Bench(bench::BenchArgs),
    /// Measure webhook delivery lag (decided → received) to a loopback receiver under a paced
    /// load of single orders on a fresh bench database (dropped and recreated); prints lag
    /// percentiles, deliveries, duplicates and ordering, PASS/FAIL against the p99 target.
    BenchWebhooks(bench_webhooks::BenchWebhooksArgs),
    /// Measure audit query and proof latency on a large log: seeds a fresh bench database
    /// (dropped and recreated) with 1,000,000 decisions over loopback HTTP, publishes
    /// checkpoints, then prints p50/p90/p99/max per audit filter and per proof kind, PASS/FAIL
    /// against the targets, table and index sizes and the query plans.
    BenchAudit(bench_audit::BenchAuditArgs),
    /// Measure impact analysis: seeds a fresh bench database (dropped and recreated) with a
    /// history of OFAC blocks, SEC freezes and releases over loopback HTTP, then simulates the
    /// active version and a draft that loosens the OFAC release rule through the API; prints
    /// orders replayed per second and the changes found, PASS/FAIL against 10,000/s.
    BenchSimulate(bench_simulate::BenchSimulateArgs),
    /// Measure reconciliation on a real anvil node with a real T-REX token: apply lag (decided →
    /// final observation) under paced SEC freezes, and the time of a full resync of many targets;
    /// PASS/FAIL against p99 ≤ 4 s and resync ≤ 10 s. Needs `npm ci --prefix chain`.
    BenchChain(bench_chain::BenchChainArgs),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Policy(cmd) => cmd.run(),
            Command::Audit(cmd) => cmd.run(),
            Command::Serve(args) => args.run(),
            Command::Token(cmd) => cmd.run(),
            Command::Openapi => openapi::run(),
            Command::Adapter(cmd) => cmd.run(),
            Command::Chain(cmd) => cmd.run(),
            Command::Bench(args) => args.run(),
            Command::BenchWebhooks(args) => args.run(),
            Command::BenchAudit(args) => args.run(),
            Command::BenchSimulate(args) => args.run(),
            Command::BenchChain(args) => args.run(),
        }
    }
}
