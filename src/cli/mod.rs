//! Subcommands. Each returns the process exit code: 0 on success, 1 when what it checked is
//! wrong (an invalid policy, a failed test case), 2 when it could not run.

mod adapter;
mod audit;
mod audit_export;
mod line_diff;
mod openapi;
mod policy;
mod private_pg;
mod progress;
mod serve;
mod state;
mod verify_proof;

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
    /// Check the ledger in the database (`audit verify`), or a proof offline (`audit verify-proof`).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The state tables: `regulator state rebuild` recomputes them from the log and repairs
    /// what differs.
    #[command(subcommand)]
    State(state::StateCommand),
    /// Run a replica: HTTP API, sequencer, notifications.
    Serve(Box<serve::ServeArgs>),
    /// Mint a development token (HS256) with the local development secret.
    Token(serve::TokenCommand),
    /// Print the OpenAPI document.
    Openapi,
    /// Run a chain adapter: `regulator adapter evm --config FILE`.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// Chain tooling: `regulator chain deploy-trex` deploys an ERC-3643 suite to a node,
    /// `regulator chain deploy-anchor` the checkpoint anchor.
    #[command(subcommand)]
    Chain(adapter::ChainCommand),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Policy(cmd) => cmd.run(),
            Command::Audit(cmd) => cmd.run(),
            Command::State(cmd) => cmd.run(),
            Command::Serve(args) => (*args).run(),
            Command::Token(cmd) => cmd.run(),
            Command::Openapi => openapi::run(),
            Command::Adapter(cmd) => cmd.run(),
            Command::Chain(cmd) => cmd.run(),
        }
    }
}
