//! The policy commands that read or move a server's state: `versions`, `status`, and the
//! `rollback` guard.

use std::process::ExitCode;

use regulator::api::policies::{ActivationList, VersionList};
use regulator::policy::PolicyFiles;
use serde_json::json;

use super::{activation, required_server, Outcome, RollbackArgs, StatusArgs, FAILED};

pub(super) async fn versions(args: StatusArgs) -> Outcome {
    let server = required_server(&args.server, "versions")?;
    let list: VersionList = server
        .call(reqwest::Method::GET, "/v1/policies/versions", None)
        .await?;
    let active = list.active.as_ref().map(|a| a.version);
    for v in &list.versions {
        println!(
            "{} {:>4}  {}  {}  {}  {}",
            if Some(v.version) == active { "*" } else { " " },
            v.version,
            &v.hash[..v.hash.len().min(12)],
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            v.author,
            v.message
        );
    }
    println!("{} versions; * is active", list.versions.len());
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn status(args: StatusArgs) -> Outcome {
    let server = required_server(&args.server, "status")?;
    let list: VersionList = server
        .call(reqwest::Method::GET, "/v1/policies/versions", None)
        .await?;
    let Some(active) = list.active else {
        println!("no version is active yet on {}", server.base);
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "active: version {} (hash {}), deciding from seq {}, activated by {} at {}",
        active.version, active.hash, active.seq, active.actor, active.recorded_at
    );
    let history: ActivationList = server
        .call(reqwest::Method::GET, "/v1/policies/activations", None)
        .await?;
    for a in history.activations.iter().skip(1).take(5) {
        println!(
            "  before: version {} from seq {}, by {} at {}",
            a.version, a.seq, a.actor, a.recorded_at
        );
    }
    match PolicyFiles::read_dir(&args.policies) {
        Ok(files) if files.content_hash() == active.hash => {
            println!("{} is the active version", args.policies.display())
        }
        Ok(_) => println!(
            "{} differs from the active version: `regulator policy diff --server {} live {}`",
            args.policies.display(),
            server.base,
            args.policies.display()
        ),
        Err(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// A rollback without `--to` goes back to the version the current one replaced. Right after a
/// rollback (the active version is one that was active before the one it replaced), that is
/// the version just rolled away from: refused unless asked for by `--to`.
pub(super) async fn rollback(args: RollbackArgs) -> Outcome {
    if args.to.is_none() {
        let server = required_server(&args.server, "rollback")?;
        let history: ActivationList = server
            .call(reqwest::Method::GET, "/v1/policies/activations", None)
            .await?;
        if let [current, replaced, earlier, ..] = history.activations.as_slice() {
            if current.version == earlier.version {
                eprintln!(
                    "error: version {} is active again since seq {}, replacing version {}: a \
                     rollback would re-activate version {}, the one rolled away from; give \
                     --to {} if that is meant, or --to another version",
                    current.version,
                    current.seq,
                    replaced.version,
                    replaced.version,
                    replaced.version
                );
                return Err(FAILED);
            }
        }
    }
    let body = json!({ "to": args.to });
    activation(&args.server, "/v1/policies/rollback", Some(body)).await
}
