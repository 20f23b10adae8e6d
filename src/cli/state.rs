//! `regulator state rebuild`: recompute the state tables from the log, check the result
//! against the signed and recorded state roots, and repair what differs.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sqlx::postgres::PgPoolOptions;

use regulator::state_commit::{rebuild, RebuildError};

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Replay the whole log's effects, check them against every signed state root and the
    /// last recorded one, and write the replayed state over every asset whose tables differ.
    /// Run with no replica leading. Exits 0 when the tables are (now) the log's, 1 when they
    /// differ and `--dry-run` left them, or the log itself does not give its signed state, 2
    /// if it cannot run.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator"
    )]
    database_url: String,
    /// Say what differs, change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl StateCommand {
    pub fn run(self) -> ExitCode {
        let StateCommand::Rebuild(args) = self;
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        runtime.block_on(async move {
            let pool = match PgPoolOptions::new()
                .max_connections(2)
                .connect(&args.database_url)
                .await
            {
                Ok(pool) => pool,
                Err(e) => {
                    eprintln!("error: cannot connect to the database: {e}");
                    return ExitCode::from(2);
                }
            };
            match rebuild(&pool, !args.dry_run).await {
                Ok(done) => {
                    println!(
                        "replayed {} records: {} assets with a state, state root {} ({} signed \
                         state roots checked)",
                        done.records,
                        done.assets,
                        hex::encode(done.state_root),
                        done.checkpoints_checked
                    );
                    for (asset, how) in &done.differences {
                        println!("differs: {asset}: {how}");
                    }
                    if done.differences.is_empty() {
                        println!("the state tables are the log's: nothing to repair");
                        ExitCode::SUCCESS
                    } else if done.repaired {
                        println!(
                            "repaired {} assets: their state tables now hold the log's state",
                            done.differences.len()
                        );
                        ExitCode::SUCCESS
                    } else {
                        println!("--dry-run: nothing was written");
                        ExitCode::from(1)
                    }
                }
                Err(e @ RebuildError::Log(_)) => {
                    println!("{e}");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        })
    }
}
