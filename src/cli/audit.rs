//! `regulator audit verify`: recompute the ledger's hash chain in the database and name the
//! first bad entry.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sqlx::postgres::PgPoolOptions;

use regulator::audit::{verify_chain, ChainCheck};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every record's hash and every link of the chain, and check the head. Exits 0
    /// if the ledger is sound, 1 naming the first bad entry, 2 if it cannot run.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The engine's database (read only).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator"
    )]
    database_url: String,
}

impl AuditCommand {
    pub fn run(self) -> ExitCode {
        let AuditCommand::Verify(args) = self;
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        runtime.block_on(async move {
            let pool = match PgPoolOptions::new()
                .max_connections(1)
                .connect(&args.database_url)
                .await
            {
                Ok(pool) => pool,
                Err(e) => {
                    eprintln!("error: cannot connect to the database: {e}");
                    return ExitCode::from(2);
                }
            };
            match verify_chain(&pool).await {
                Ok(ChainCheck::Sound { decisions, head }) => {
                    println!(
                        "ledger sound: {decisions} decisions, head seq {} hash {}",
                        head.seq,
                        hex::encode(head.hash)
                    );
                    ExitCode::SUCCESS
                }
                Ok(ChainCheck::Broken { seq, reason }) => {
                    println!("first bad entry: seq {seq}: {reason}");
                    ExitCode::from(1)
                }
                Ok(ChainCheck::HeadMismatch { head, last }) => {
                    println!(
                        "first bad entry: the ledger head names seq {} ({}) but the last record is seq {} ({})",
                        head.seq,
                        hex::encode(head.hash),
                        last.seq,
                        hex::encode(last.hash)
                    );
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
