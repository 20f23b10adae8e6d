//! `regulator audit verify`: recompute the ledger's hash chain in the database and name the
//! first bad entry; `regulator audit verify-proof`: check a proof offline
//! ([`super::verify_proof`]); `regulator audit export`: a server's export to a file
//! ([`super::audit_export`]).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sqlx::postgres::PgPoolOptions;

use regulator::audit::signer::public_key_from_pem;
use regulator::audit::{verify_with_progress, ChainCheck, CheckpointCheck, TreeCheck};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every record's hash and every link of the chain, and check the head. Exits 0
    /// if the ledger is sound, 1 naming the first bad entry, 2 if it cannot run.
    Verify(VerifyArgs),
    /// Check an inclusion or consistency proof offline, as the API served it, against signed
    /// checkpoints and the public key: no database, no engine. Exits 0 if it verifies, 1 if
    /// it does not, 2 if it cannot run (unreadable input).
    VerifyProof(super::verify_proof::VerifyProofArgs),
    /// Export the decisions a filter selects from a server (`GET /v1/audit/export`) to a file,
    /// NDJSON or CSV. Exits 0 once the file is complete, 2 otherwise (no file is left).
    Export(super::audit_export::ExportArgs),
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
    /// The checkpoint key's public half (PEM, as `GET /v1/audit/public-key` serves it), to
    /// check the checkpoints' signatures. Without it, roots are checked but not signatures.
    #[arg(long)]
    public_key: Option<std::path::PathBuf>,
}

impl AuditCommand {
    pub fn run(self) -> ExitCode {
        match self {
            AuditCommand::Verify(args) => args.run(),
            AuditCommand::VerifyProof(args) => args.run(),
            AuditCommand::Export(args) => args.run(),
        }
    }
}

impl VerifyArgs {
    fn run(self) -> ExitCode {
        let args = self;
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
        let key = match &args.public_key {
            None => None,
            Some(path) => match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| public_key_from_pem(&pem))
            {
                Ok(key) => Some(key),
                Err(e) => {
                    eprintln!(
                        "error: {} is not an Ed25519 public key PEM: {e}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            },
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
            let bar = super::progress::bar("records", 0);
            bar.set_message("verifying");
            let verified = verify_with_progress(&pool, key.as_ref(), |checked, total| {
                bar.set_length(total.max(checked));
                bar.set_position(checked);
            })
            .await;
            bar.finish_and_clear();
            let verification = match verified {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut sound = true;
            match verification.chain {
                ChainCheck::Sound { records, head } => println!(
                    "hash chain sound: {records} records, head seq {} hash {}",
                    head.seq,
                    hex::encode(head.hash)
                ),
                ChainCheck::Broken { seq, reason } => {
                    sound = false;
                    println!("first bad entry: seq {seq}: {reason}");
                }
                ChainCheck::HeadMismatch { head, last } => {
                    sound = false;
                    println!(
                        "first bad entry: the ledger head names seq {} ({}) but the last record is seq {} ({})",
                        head.seq,
                        hex::encode(head.hash),
                        last.seq,
                        hex::encode(last.hash)
                    );
                }
            }
            match verification.checkpoints {
                CheckpointCheck::Sound {
                    checkpoints,
                    signatures_checked,
                } => println!(
                    "checkpoints sound: {checkpoints} roots recomputed from the log{}",
                    if signatures_checked {
                        ", signatures verified"
                    } else {
                        "; signatures not checked (pass --public-key)"
                    }
                ),
                CheckpointCheck::Bad { tree_size, reason } => {
                    sound = false;
                    println!("first bad checkpoint: tree size {tree_size}: {reason}");
                }
                CheckpointCheck::Skipped => {
                    println!("checkpoints not checked: the hash chain is broken");
                }
            }
            match verification.tree {
                TreeCheck::Sound { size } => println!(
                    "stored Merkle tree sound: {size} leaves, every leaf its record's, the root at its head recomputed"
                ),
                TreeCheck::Bad {
                    seq: Some(seq),
                    reason,
                } => {
                    sound = false;
                    println!("first bad entry: seq {seq}: {reason}");
                }
                TreeCheck::Bad { seq: None, reason } => {
                    sound = false;
                    println!("stored Merkle tree bad: {reason}");
                }
                TreeCheck::Skipped => {
                    println!("stored Merkle tree not checked: the hash chain is broken");
                }
            }
            if sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        })
    }
}
