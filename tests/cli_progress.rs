//! The long CLI commands against a running server: `policy simulate --server` runs a job and
//! prints the report simulate gives, `audit export` writes exactly the served export to a file,
//! and neither draws a thing when stderr is not a terminal (scripts see clean output); on a
//! terminal, the progress bar is drawn on stderr.

mod service;

use std::path::{Path, PathBuf};

use regulator::auth::Role;
use serde_json::{json, Value};
use service::{TestApp, BOND};
use sqlx::PgPool;

async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regulator"))
            .args(&args)
            .env_remove("REGULATOR_POLICIES")
            .env_remove("REGULATOR_SERVER")
            .env_remove("REGULATOR_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-progress-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The shipped bundle with the SEC's court-ordered freezes at priority 650, as a directory.
fn reprioritised() -> PathBuf {
    let dir = scratch("policies");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &dir,
    );
    let us = dir.join("us.cedar");
    let text = std::fs::read_to_string(&us).unwrap();
    let from = "@id(\"us-sec-freeze-court-order\")\n@priority(\"700\")";
    assert!(text.contains(from));
    let edited = text.replace(
        from,
        "@id(\"us-sec-freeze-court-order\")\n@priority(\"650\")",
    );
    std::fs::write(&us, edited).unwrap();
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn without_timings(mut report: Value) -> Value {
    let object = report.as_object_mut().unwrap();
    object.remove("elapsed_ms");
    object.remove("orders_per_second");
    report
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

#[sqlx::test]
async fn simulate_on_a_server_runs_a_job_and_prints_the_report(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..3).await;
    let token = app.token("legal-team", &[Role::PolicyAuthor]);
    let draft = reprioritised();
    let draft = draft.to_str().unwrap();
    let server = ["--server", &app.base, "--token", &token];

    let mut json_args = args(&["policy", "simulate", "--policies", draft, "--json"]);
    json_args.extend(args(&server));
    let (code, out, err) = cli(json_args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "nothing is drawn when stderr is not a terminal");
    let report: Value = serde_json::from_str(&out).unwrap();
    let files: std::collections::BTreeMap<String, String> =
        regulator::policy::PolicyFiles::read_dir(Path::new(draft))
            .unwrap()
            .into();
    let (_, direct) = app
        .post(
            &token,
            "/v1/policies/simulate",
            json!({"files": files, "max_changes": 1000}),
        )
        .await;
    assert_eq!(without_timings(report), without_timings(direct));

    let mut text_args = args(&["policy", "simulate", "--policies", draft]);
    text_args.extend(args(&server));
    let (code, out, err) = cli(text_args).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(out.contains("3 orders replayed"), "{out}");
    assert!(
        out.contains("3 would change (outcome 0, priority 3"),
        "{out}"
    );
    assert_eq!(out.matches("priority 700 -> 650").count(), 3, "{out}");
}

#[sqlx::test]
async fn audit_export_writes_the_served_export_to_a_file(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..4).await;
    let auditor = app.auditor();
    let server = ["--server", app.base.as_str(), "--token", auditor.as_str()];

    for (format, filters) in [
        ("ndjson", vec![]),
        (
            "csv",
            vec!["--filter", "kind=FREEZE", "--filter", "holder=0xH2"],
        ),
    ] {
        let output = scratch(&format!("export.{format}"));
        let mut list = args(&["audit", "export", "--format", format, "--output"]);
        list.push(output.to_str().unwrap().to_owned());
        list.extend(args(&filters));
        list.extend(args(&server));
        let (code, out, err) = cli(list).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(err, "", "nothing is drawn when stderr is not a terminal");

        let mut query = format!("/v1/audit/export?format={format}");
        for pair in filters.chunks(2) {
            query.push_str(&format!("&{}", pair[1]));
        }
        let served = app
            .client
            .get(app.url(&query))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        assert!(served.status().is_success());
        let served = served.bytes().await.unwrap();
        let written = std::fs::read(&output).unwrap();
        assert_eq!(written, served.as_ref(), "{format}");
        let lines = written.iter().filter(|b| **b == b'\n').count();
        assert!(lines >= 2, "{format}: {lines}");
        assert_eq!(
            out,
            format!(
                "exported {lines} lines ({} bytes) to {}\n",
                written.len(),
                output.display()
            )
        );
        // No partial file is left beside it.
        let siblings = std::fs::read_dir(output.parent().unwrap()).unwrap().count();
        assert_eq!(siblings, 1);
    }

    // A refused export leaves no file.
    let output = scratch("refused.ndjson");
    let mut list = args(&["audit", "export", "--filter", "kind=NOPE", "--output"]);
    list.push(output.to_str().unwrap().to_owned());
    list.extend(args(&server));
    let (code, _, err) = cli(list).await;
    assert_eq!(code, 2);
    assert!(err.contains("422"), "{err}");
    assert_eq!(
        std::fs::read_dir(output.parent().unwrap()).unwrap().count(),
        0
    );
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), `audit verify` draws its bar
/// on stderr and clears it; the report lines are the same.
#[sqlx::test]
async fn audit_verify_draws_its_bar_only_on_a_terminal(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..2).await;
    let options = pool.connect_options();
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        options.get_database().unwrap()
    );
    let (code, plain, err) = cli(args(&["audit", "verify", "--database-url", &url])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(plain.starts_with("hash chain sound: "), "{plain}");

    let command = format!(
        "{} audit verify --database-url {url}",
        env!("CARGO_BIN_EXE_regulator")
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let on_terminal = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(on_terminal.contains("verifying"), "{on_terminal:?}");
    assert!(on_terminal.contains("records"), "{on_terminal:?}");
    // Cleared before the report, which reads as it does off a terminal.
    for line in plain.lines() {
        assert!(on_terminal.contains(line), "{line:?} in {on_terminal:?}");
    }
}
