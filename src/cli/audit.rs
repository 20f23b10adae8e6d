//! `regulator audit verify`: recompute the ledger's hash chain in the database and name the
//! first bad entry, and with `--anchors` compare it with the checkpoints anchored on chains;
//! `regulator audit verify-proof`: check a proof offline ([`super::verify_proof`]);
//! `regulator audit export`: a server's export to a file ([`super::audit_export`]).

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sqlx::postgres::PgPoolOptions;

use regulator::audit::anchors::{self, AnchorCheck};
use regulator::audit::signer::public_key_from_pem;
use regulator::audit::{verify_with_roots, ChainCheck, CheckpointCheck, TreeCheck};
use regulator::chain::anchor::{self as anchor, AnchorSource, AnchorsFile};
use regulator::domain::merkle::Hash;

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
    /// A TOML file of chains whose CheckpointAnchor contracts to check the log against
    /// (`[[chains]]` with `name`, `rpc_url`, `contract`): every anchored root must be the root
    /// of the log's records at that size. Exits 1 naming the first contradicted checkpoint.
    #[arg(long)]
    anchors: Option<std::path::PathBuf>,
}

/// One chain's anchors, read before the pass over the log.
struct ChainAnchors {
    source: AnchorSource,
    anchored: Vec<(u64, Hash)>,
}

async fn read_anchors(file: &AnchorsFile) -> Result<Vec<ChainAnchors>, String> {
    let mut out = Vec::new();
    for source in &file.chains {
        let context = |e: regulator::chain::ChainError| {
            format!(
                "chain {} ({}), anchor {}: {e}",
                source.name, source.rpc_url, source.contract
            )
        };
        let provider = anchor::reader(&source.rpc_url).map_err(context)?;
        let anchored = anchor::anchored(&provider, source.contract)
            .await
            .map_err(context)?;
        out.push(ChainAnchors {
            source: source.clone(),
            anchored: anchored.iter().map(|a| (a.tree_size, a.root)).collect(),
        });
    }
    Ok(out)
}

/// Prints what one chain's anchors say of the log; answers whether they agree with it.
fn report_anchors(chain: &ChainAnchors, check: &AnchorCheck) -> bool {
    let name = &chain.source.name;
    match check {
        AnchorCheck::Sound { anchors, latest } => {
            match latest {
                Some(latest) => println!(
                    "anchors on {name} sound: {anchors} checkpoints anchored (latest tree size \
                     {latest}), each root the log's"
                ),
                None => println!("anchors on {name}: nothing anchored yet"),
            }
            true
        }
        AnchorCheck::Contradicted {
            tree_size,
            anchored,
            database,
            records,
        } => {
            let database = match database {
                Some(root) => format!(
                    "the database's root {} (recomputed from its log)",
                    hex::encode(root)
                ),
                None => format!("the database's log holds only {records} records"),
            };
            println!(
                "anchors on {name}: first contradicted checkpoint: tree size {tree_size}: \
                 anchored root {}, {database}",
                hex::encode(anchored)
            );
            false
        }
    }
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
        let anchors_file = match &args.anchors {
            None => None,
            Some(path) => match AnchorsFile::load(path) {
                Ok(file) => Some(file),
                Err(e) => {
                    eprintln!("error: --anchors {e}");
                    return ExitCode::from(2);
                }
            },
        };
        runtime.block_on(async move {
            // The chains first: an unreachable node or a wrong contract is known before the
            // (long) pass over the log.
            let chains = match &anchors_file {
                None => Vec::new(),
                Some(file) => match read_anchors(file).await {
                    Ok(chains) => chains,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let sizes: BTreeSet<u64> = chains
                .iter()
                .flat_map(|c| c.anchored.iter().map(|(size, _)| *size))
                .collect();
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
            let verified = verify_with_roots(&pool, key.as_ref(), &sizes, |checked, total| {
                bar.set_length(total.max(checked));
                bar.set_position(checked);
            })
            .await;
            bar.finish_and_clear();
            let (verification, roots) = match verified {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut sound = true;
            let records = match &verification.chain {
                ChainCheck::Sound { records, .. } => Some(*records),
                ChainCheck::HeadMismatch { last, .. } => Some(last.seq),
                ChainCheck::Broken { .. } => None,
            };
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
            for chain in &chains {
                match records {
                    Some(records) => {
                        let check = anchors::check(&chain.anchored, &roots, records);
                        sound &= report_anchors(chain, &check);
                    }
                    None => println!(
                        "anchors on {} not checked: the hash chain is broken",
                        chain.source.name
                    ),
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
