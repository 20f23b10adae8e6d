//! Subcommands. Each returns the process exit code: 0 on success, 1 when what it checked is
//! wrong (an invalid policy, a failed test case), 2 when it could not run.

mod policy;

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
    /// Work with jurisdiction policies: validate them, run their test suites.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Policy(cmd) => cmd.run(),
        }
    }
}
