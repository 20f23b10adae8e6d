//! `regulator policy simulate`: replay the recorded orders against a draft, offline on the
//! engine's database or as a job on a server, with a progress bar on a terminal.

use std::process::ExitCode;
use std::sync::Arc;

use regulator::api::simulations::{JobStatus, SimulationStatus};
use regulator::policy::Compiled;
use regulator::simulate::{self, Progress, Range, Report};
use serde_json::{json, Value};

use super::{read, report, Outcome, Server, SimulateArgs, FAILED};

pub(super) async fn simulate_command(args: SimulateArgs) -> Outcome {
    let range = Range {
        from_seq: args.from_seq,
        to_seq: args.to_seq,
        from_time: args.from_time,
        to_time: args.to_time,
    };
    // Refused here as the API refuses it, whether or not a server is asked.
    if let Some(why) = range.inverted() {
        eprintln!("error: {why}");
        return Err(FAILED);
    }
    let report = match Server::from(&args.server)? {
        Some(server) => {
            let mut body = json!({
                "from_seq": range.from_seq, "to_seq": range.to_seq,
                "from_time": range.from_time, "to_time": range.to_time,
                "max_changes": args.max_changes,
            });
            match args.version {
                Some(v) => body["version"] = json!(v),
                None => body["files"] = json!(read(&args.policies)?),
            }
            simulate_on(&server, body).await?
        }
        None => simulate_offline(&args, &range).await?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for c in &report.changes {
        let target = match &c.target.holder {
            Some(h) => format!(
                "{}/{} holder {}",
                c.target.asset.chain, c.target.asset.asset, h
            ),
            None => format!("{}/{}", c.target.asset.chain, c.target.asset.asset),
        };
        println!(
            "seq {:>8}  {} {} on {}: {} -> {}, priority {} -> {}, policies [{}] -> [{}]",
            c.seq,
            c.issuer,
            c.kind.as_str(),
            target,
            c.recorded.outcome.as_str(),
            c.simulated.outcome.as_str(),
            c.recorded.priority.value(),
            c.simulated.priority.value(),
            join(&c.recorded.determining_policies),
            join(&c.simulated.determining_policies),
        );
    }
    let counts = &report.counts;
    println!(
        "\nseq {}..={}: {} orders replayed in {} ms ({:.0}/s); {} would change (outcome {}, priority {}, determining policies {}){}",
        report.from_seq,
        report.to_seq,
        report.orders,
        report.elapsed_ms,
        report.orders_per_second,
        counts.changed,
        counts.outcome,
        counts.priority,
        counts.determining_policies,
        if report.truncated { "; list truncated, see --max-changes" } else { "" }
    );
    for (transition, n) in &counts.transitions {
        println!("  {transition}: {n}");
    }
    Ok(ExitCode::SUCCESS)
}

fn join(ids: &[regulator::domain::PolicyId]) -> String {
    ids.iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn simulate_offline(args: &SimulateArgs, range: &Range) -> Result<Report, u8> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .map_err(|e| {
            eprintln!("error: cannot connect to {}: {e}", args.database_url);
            FAILED
        })?;
    let files = match args.version {
        Some(v) => match regulator::storage::policy::version(&pool, v).await {
            Ok(Some(stored)) => stored.files,
            Ok(None) => {
                eprintln!("error: there is no policy version {v}");
                return Err(FAILED);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Err(FAILED);
            }
        },
        None => read(&args.policies)?,
    };
    let compiled = Compiled::compile(files).map_err(report)?;
    let progress = Arc::new(Progress::default());
    let bar = crate::cli::progress::bar("orders", 0);
    bar.set_message("replaying");
    let shown = Arc::clone(&progress);
    let drawn = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            drawn.set_length(shown.total());
            drawn.set_position(shown.replayed());
            tokio::time::sleep(POLL).await;
        }
    });
    let result = simulate::run_with_progress(
        &pool,
        Arc::new(compiled.engine),
        range,
        args.max_changes,
        progress,
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    result.map_err(|e| {
        eprintln!("error: {e}");
        FAILED
    })
}

/// How often a simulation's progress is read.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs a simulation on the server as a job, drawing its progress until it is done.
async fn simulate_on(server: &Server, body: Value) -> Result<Report, u8> {
    let mut job: SimulationStatus = server
        .call(
            reqwest::Method::POST,
            "/v1/policies/simulations",
            Some(body),
        )
        .await?;
    let bar = crate::cli::progress::bar("orders", 0);
    bar.set_message("replaying");
    let path = format!("/v1/policies/simulations/{}", job.id);
    loop {
        bar.set_length(job.total);
        bar.set_position(job.replayed);
        match job.status {
            JobStatus::Running => {}
            JobStatus::Done => {
                bar.finish_and_clear();
                return match job.report {
                    Some(report) => Ok(Arc::unwrap_or_clone(report)),
                    None => {
                        eprintln!("error: simulation {} is done but has no report", job.id);
                        Err(FAILED)
                    }
                };
            }
            JobStatus::Failed => {
                bar.finish_and_clear();
                match job.error {
                    Some(problem) => eprintln!(
                        "error: the simulation failed: {} ({}): {}",
                        problem.status, problem.kind, problem.detail
                    ),
                    None => eprintln!("error: simulation {} failed", job.id),
                }
                return Err(FAILED);
            }
        }
        tokio::time::sleep(POLL).await;
        job = server.call(reqwest::Method::GET, &path, None).await?;
    }
}
