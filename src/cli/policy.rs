//! `regulator policy …`: the legal team's tools. `validate`, `test`, `diff` and `simulate` work
//! offline on a policy directory (and, for `simulate`, the engine's database), or against a
//! running server with `--server`; `push`, `activate` and `rollback` change a server's policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use regulator::api::policies::{TestReport, Validated, VersionDetail, VersionList};
use regulator::api::problem::Problem;
use regulator::policy::bundle::{ENTITIES_FILE, SCHEMA_FILE};
use regulator::policy::diff::{diff, PolicyDiff};
use regulator::policy::{Compiled, PolicyErrors, PolicyFiles};

use super::line_diff;

mod server;
mod simulate;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use server::{rollback, status, versions};
use simulate::simulate_command;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check the schema, every policy (strictly, against the schema) and the entities; print each
    /// error with its place in the source.
    Validate(DraftArgs),
    /// Run the test suites in `<policies>/tests/*.toml` against the policies.
    Test(DraftArgs),
    /// What changed between two bundles, policy by policy: two directories, or with `--server`
    /// two version numbers.
    Diff(DiffArgs),
    /// Replay the recorded orders against the draft (or a stored version) and list every
    /// decision whose outcome, priority or determining policies would change.
    Simulate(SimulateArgs),
    /// Store the directory as a new version on the server (`--server`; it must validate).
    Push(PushArgs),
    /// Activate a stored version on the server: a ledger event; prints the seq from which it
    /// decides.
    Activate(ActivateArgs),
    /// Roll back on the server to the version the current one replaced (or `--to`).
    Rollback(RollbackArgs),
    /// List the server's stored versions, newest first, marking the active one.
    Versions(StatusArgs),
    /// Which version decides on the server, since which seq, and the activations before it;
    /// whether the local directory is that version.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The policy directory to store.
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// What the change is for (kept with the version).
    #[arg(long, short)]
    message: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The version number.
    version: u32,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The local policy directory, compared with the active version (`status`).
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// A version that was active before (default: the one the current activation replaced).
    #[arg(long)]
    to: Option<u32>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Ask this running server (e.g. http://127.0.0.1:8080) instead of working offline.
    #[arg(long, env = "REGULATOR_SERVER")]
    server: Option<String>,
    /// A token with the policy_author role (or auditor, for diff), for --server.
    #[arg(long, env = "REGULATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
pub struct DraftArgs {
    /// The policy directory (the draft).
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// From: a policy directory, or with --server a version number or `live` (the active
    /// version).
    from: String,
    /// To: a policy directory, or with --server a version number or `live`.
    to: String,
    /// Print the diff as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The draft's policy directory.
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Simulate a stored version instead of the directory.
    #[arg(long)]
    version: Option<u32>,
    /// Offline: the engine's database (read only), whose recorded history is replayed.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/regulator"
    )]
    database_url: String,
    /// The range of decisions (default: the whole log): seqs from..=to.
    #[arg(long)]
    from_seq: Option<u64>,
    #[arg(long)]
    to_seq: Option<u64>,
    /// By decision time instead (RFC 3339): from_time <= t < to_time.
    #[arg(long)]
    from_time: Option<DateTime<Utc>>,
    #[arg(long)]
    to_time: Option<DateTime<Utc>>,
    /// Changed decisions to list (the counts are always whole).
    #[arg(long, default_value_t = 1_000)]
    max_changes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Exit codes: 0 fine, 1 what was checked is wrong, 2 could not run.
const WRONG: u8 = 1;
const FAILED: u8 = 2;

impl PolicyCommand {
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(FAILED);
            }
        };
        let result = runtime.block_on(async {
            match self {
                PolicyCommand::Validate(args) => validate(args).await,
                PolicyCommand::Test(args) => test(args).await,
                PolicyCommand::Diff(args) => diff_command(args).await,
                PolicyCommand::Simulate(args) => simulate_command(args).await,
                PolicyCommand::Push(args) => push(args).await,
                PolicyCommand::Activate(args) => {
                    let path = format!("/v1/policies/versions/{}/activate", args.version);
                    activation(&args.server, &path, None).await
                }
                PolicyCommand::Rollback(args) => rollback(args).await,
                PolicyCommand::Versions(args) => versions(args).await,
                PolicyCommand::Status(args) => status(args).await,
            }
        });
        result.unwrap_or_else(ExitCode::from)
    }
}

type Outcome = Result<ExitCode, u8>;

fn report(errors: PolicyErrors) -> u8 {
    for error in errors.errors {
        eprintln!("{:?}", miette::Report::new(error));
    }
    WRONG
}

fn read(dir: &Path) -> Result<PolicyFiles, u8> {
    PolicyFiles::read_dir(dir).map_err(report)
}

fn compile(dir: &Path) -> Result<Compiled, u8> {
    Compiled::compile(read(dir)?).map_err(report)
}

/// A running server, for `--server`.
struct Server {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Server {
    fn from(args: &ServerArgs) -> Result<Option<Self>, u8> {
        let Some(base) = &args.server else {
            return Ok(None);
        };
        let Some(token) = &args.token else {
            eprintln!("error: --server needs a token (--token or REGULATOR_TOKEN); mint one with `regulator token --sub <you> --roles policy_author`");
            return Err(FAILED);
        };
        Ok(Some(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.clone(),
            client: reqwest::Client::new(),
        }))
    }

    /// Sends a request; a problem document is printed (with every located error) and is `WRONG`
    /// for a 422 and `FAILED` otherwise.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, u8> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            eprintln!("error: {}: {e}", self.base);
            FAILED
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            eprintln!("error: reading the answer: {e}");
            FAILED
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                eprintln!("error: unexpected answer ({e}): {text}");
                FAILED
            });
        }
        match serde_json::from_str::<Problem>(&text) {
            Ok(problem) => {
                eprintln!(
                    "error: {} ({}): {}",
                    problem.status, problem.kind, problem.detail
                );
                for e in problem.errors.iter().flatten() {
                    let place = match (e.line, e.column) {
                        (Some(l), Some(c)) => format!("{}:{l}:{c}", e.file),
                        _ => e.file.clone(),
                    };
                    eprintln!("  {place}: [{}] {}", e.code, e.message);
                    if let Some(hint) = &e.hint {
                        eprintln!("      hint: {hint}");
                    }
                }
                Err(if status.as_u16() == 422 {
                    WRONG
                } else {
                    FAILED
                })
            }
            Err(_) => {
                eprintln!("error: {status}: {text}");
                Err(FAILED)
            }
        }
    }
}

async fn validate(args: DraftArgs) -> Outcome {
    let validated = match Server::from(&args.server)? {
        Some(server) => {
            let files = read(&args.policies)?;
            server
                .call::<Validated>(
                    reqwest::Method::POST,
                    "/v1/policies/validate",
                    Some(json!({ "files": files })),
                )
                .await?
        }
        None => {
            let compiled = compile(&args.policies)?;
            Validated {
                hash: compiled.hash().to_owned(),
                policies: compiled.engine.bundle().policy_count(),
                test_suites: compiled.files.tests().len(),
            }
        }
    };
    println!(
        "ok: {} policies and {} test suites in {}, version hash {}",
        validated.policies,
        validated.test_suites,
        args.policies.display(),
        validated.hash
    );
    Ok(ExitCode::SUCCESS)
}

async fn test(args: DraftArgs) -> Outcome {
    let report = match Server::from(&args.server)? {
        Some(server) => {
            let files = read(&args.policies)?;
            server
                .call::<TestReport>(
                    reqwest::Method::POST,
                    "/v1/policies/test",
                    Some(json!({ "files": files })),
                )
                .await?
        }
        None => {
            let compiled = compile(&args.policies)?;
            let results = compiled.run_tests().map_err(report)?;
            let failed = results.iter().filter(|r| !r.passed).count();
            TestReport {
                passed: failed == 0,
                cases: results.len(),
                failed,
                results,
            }
        }
    };
    for r in &report.results {
        let mark = if r.passed { "pass" } else { "FAIL" };
        println!("{mark}  {} › {}", r.file, r.name);
        for why in &r.failures {
            println!("        {why}");
        }
    }
    println!(
        "\n{} cases: {} passed, {} failed",
        report.cases,
        report.cases - report.failed,
        report.failed
    );
    Ok(if report.failed == 0 && report.cases > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(WRONG)
    })
}

/// One side of a diff: a directory, or on a server a version number or `live`.
async fn side(server: Option<&Server>, side: &str) -> Result<Compiled, u8> {
    let Some(server) = server else {
        return compile(Path::new(side));
    };
    let version = match side {
        "live" | "active" => {
            let list: VersionList = server
                .call(reqwest::Method::GET, "/v1/policies/versions", None)
                .await?;
            match list.active {
                Some(active) => active.version,
                None => {
                    eprintln!("error: no version is active on {} yet", server.base);
                    return Err(FAILED);
                }
            }
        }
        v => match v.parse::<u32>() {
            Ok(v) => v,
            Err(_) => return compile(Path::new(side)),
        },
    };
    let detail: VersionDetail = server
        .call(
            reqwest::Method::GET,
            &format!("/v1/policies/versions/{version}"),
            None,
        )
        .await?;
    Compiled::compile(detail.files).map_err(report)
}

async fn diff_command(args: DiffArgs) -> Outcome {
    let server = Server::from(&args.server)?;
    let numbers = args.from.parse::<u32>().is_ok() && args.to.parse::<u32>().is_ok();
    let mut bundles = None;
    let changes = match server {
        Some(server) if numbers => {
            let version = |v: &str| {
                v.parse::<u32>().map_err(|_| {
                    eprintln!("error: with --server, compare version numbers ({v:?} is not one)");
                    FAILED
                })
            };
            let path = format!(
                "/v1/policies/diff?from={}&to={}",
                version(&args.from)?,
                version(&args.to)?
            );
            server
                .call::<PolicyDiff>(reqwest::Method::GET, &path, None)
                .await?
        }
        server => {
            let from = side(server.as_ref(), &args.from).await?;
            let to = side(server.as_ref(), &args.to).await?;
            let changes = diff(&from, &to);
            bundles = Some((from, to));
            changes
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&changes).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &changes.added {
        println!("added    {}  ({}:{})", p.id, p.file, p.line);
    }
    for p in &changes.removed {
        println!("removed  {}  ({}:{})", p.id, p.file, p.line);
    }
    for c in &changes.changed {
        println!("changed  {}  ({}:{})", c.id, c.to.file, c.to.line);
        line_diff::print(&line_diff::line_diff(&c.from.text, &c.to.text), "    ", 2);
    }
    if let Some((from, to)) = &bundles {
        for file in [SCHEMA_FILE, ENTITIES_FILE] {
            let (a, b) = (from.files.get(file), to.files.get(file));
            if a != b {
                println!("changed  {file}");
                let d = line_diff::line_diff(a.unwrap_or_default(), b.unwrap_or_default());
                line_diff::print(&d, "    ", 2);
            }
        }
    }
    let yes_no = |b: bool| if b { "changed" } else { "unchanged" };
    println!(
        "{} added, {} removed, {} changed, {} unchanged; schema {}, entities {}, tests changed: {}",
        changes.added.len(),
        changes.removed.len(),
        changes.changed.len(),
        changes.unchanged,
        yes_no(changes.schema_changed),
        yes_no(changes.entities_changed),
        if changes.tests_changed.is_empty() {
            "none".to_owned()
        } else {
            changes.tests_changed.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A server, which these commands cannot do without.
fn required_server(args: &ServerArgs, what: &str) -> Result<Server, u8> {
    Server::from(args)?.ok_or_else(|| {
        eprintln!("error: `policy {what}` changes a running server's policies: give --server (and --token)");
        FAILED
    })
}

async fn push(args: PushArgs) -> Outcome {
    let server = required_server(&args.server, "push")?;
    let files = read(&args.policies)?;
    let created: Value = server
        .call(
            reqwest::Method::POST,
            "/v1/policies/versions",
            Some(json!({ "files": files, "message": args.message })),
        )
        .await?;
    let new = if created["created"] == true {
        "stored as"
    } else {
        "already"
    };
    println!(
        "{} {new} version {}, hash {}; its tests: {} cases, {} failed",
        args.policies.display(),
        created["version"],
        created["hash"].as_str().unwrap_or_default(),
        created["tests"]["cases"],
        created["tests"]["failed"]
    );
    // Stored, but not fit to activate: the exit code says so, as `policy test` would.
    if created["tests"]["failed"].as_u64().unwrap_or(0) > 0 {
        eprintln!(
            "error: version {} is stored but its tests fail; run `regulator policy test` on it",
            created["version"]
        );
        return Ok(ExitCode::from(WRONG));
    }
    Ok(ExitCode::SUCCESS)
}

async fn activation(args: &ServerArgs, path: &str, body: Option<Value>) -> Outcome {
    let server = required_server(args, "activate/rollback")?;
    let answer: Value = server.call(reqwest::Method::POST, path, body).await?;
    match answer["seq"].as_u64() {
        Some(seq) => println!(
            "version {} active from seq {seq} (replacing version {}){}",
            answer["active"]["version"],
            answer["previous"]["version"],
            if answer["rollback"] == true {
                ", a rollback"
            } else {
                ""
            }
        ),
        None => println!(
            "queued, not yet recorded: request {} (GET /v1/policies/requests/{})",
            answer["request"], answer["request"]
        ),
    }
    Ok(ExitCode::SUCCESS)
}
