//! The console in a real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `console/node_modules`) walks the legal team's flow and the auditor's
//! against the real service, on its own database and a free port. The flows are
//! `console/tests/*.mjs`; this test seeds what they need, runs them, and checks in the database
//! and over the API what they cannot see from the page (which version decides the next order).
//! They take screenshots of the main pages: into the test's temporary directory, or, with
//! `REGULATOR_UPDATE_SCREENSHOTS=1`, into `docs/console/` (how the docs' pictures are refreshed;
//! an ordinary run leaves the work tree as it was).
//!
//! Needs `node`, `npm ci --prefix console` and `/usr/bin/chromium` (or `CHROMIUM`): it fails,
//! saying which is missing, without them.

mod service;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use regulator::auth::Role;
use serde_json::{json, Value};
use sqlx::PgPool;

use service::{order, TestApp};

/// A flow gets this long; the slowest (the legal team's) takes well under a minute.
const FLOW_TIMEOUT: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Node and the console's pinned packages (the driver, the bundler), or a panic naming what to
/// install.
fn node_modules() {
    let console = root().join("console");
    assert!(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the console's tests need node on PATH (Node.js 20 or later)"
    );
    for package in ["playwright-core", "esbuild"] {
        assert!(
            console
                .join("node_modules")
                .join(package)
                .join("package.json")
                .exists(),
            "the console's tests need {package}: run `npm ci --prefix console`"
        );
    }
}

/// The browser, or a panic naming what to install.
fn chromium() -> String {
    node_modules();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the console's browser tests need Chromium at {chromium}: `apt-get install -y chromium` (or set CHROMIUM)"
    );
    chromium
}

/// Where the flows save their screenshots.
fn screenshots() -> PathBuf {
    if std::env::var("REGULATOR_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root().join("docs/console")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
    }
}

/// Runs `node console/tests/<script> <args>` with `env`; panics with its output unless it
/// exits 0.
async fn flow(app: &TestApp, script: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let chromium = chromium();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(root().join("console/tests").join(script))
        .args(args)
        .current_dir(root().join("console"))
        .env("REGULATOR_BASE", &app.base)
        .env("CHROMIUM", chromium)
        .env("REGULATOR_SCREENSHOTS", screenshots())
        .env("REGULATOR_FAILURE_DIR", env!("CARGO_TARGET_TMPDIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("node starts");
    let output = tokio::time::timeout(FLOW_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} did not finish within {FLOW_TIMEOUT:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- {script} {args:?}\n{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the browser flow {script} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

fn sec_freeze(chain: &str, asset: &str, holder: &str) -> Value {
    let mut body = order(
        chain,
        asset,
        "court_order",
        "SEC v. Acme",
        json!({"kind": "FREEZE"}),
    );
    body["target"]["holder"] = json!(holder);
    body
}

const DE_BOND: (&str, &str) = ("polygon-pos", "0xDE-BUND-2030");

#[sqlx::test]
async fn the_legal_teams_flow_changes_what_decides_the_next_order(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.register(DE_BOND.0, DE_BOND.1, "DE", "security").await;
    let sec = app.regulator("US-SEC");
    // The recorded history the simulation replays: three SEC freezes of a German bond that no
    // policy permits today, and U.S. freezes the change leaves alone.
    for i in 0..3 {
        let (status, answer) = app
            .submit(
                &sec,
                &format!("de-{i}"),
                &sec_freeze(DE_BOND.0, DE_BOND.1, &format!("0xD{i}")),
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(answer["decision"]["outcome"], "REJECTED");
    }
    app.freeze_holders(0..4).await;

    let author = app.token("alice", &[Role::PolicyAuthor]);
    let env = [
        ("REGULATOR_AUTHOR_TOKEN", author.clone()),
        ("REGULATOR_EXPECT_CHANGED", "3".into()),
    ];
    let out = flow(&app, "legal.mjs", &[], &env).await;
    let reported: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the flow reports the version it activated");
    assert_eq!(reported["version"], 2);

    // The engine, not the page, says what is active now and who made it so.
    let (_, versions) = app.get(&author, "/v1/policies/versions").await;
    assert_eq!(versions["active"]["version"], 2);
    assert_eq!(versions["active"]["actor"], "alice");
    assert_eq!(versions["versions"][0]["author"], "alice");
    let hash = versions["active"]["hash"].as_str().unwrap().to_owned();

    // The next order is decided by the version the browser activated.
    let (status, answer) = app
        .submit(&sec, "de-next", &sec_freeze(DE_BOND.0, DE_BOND.1, "0xD9"))
        .await;
    assert_eq!(status, 201);
    let decision = &answer["decision"];
    assert_eq!(decision["outcome"], "APPLIED", "{decision}");
    assert_eq!(
        decision["determining_policies"],
        json!(["us-sec-freeze-foreign-security"])
    );
    assert_eq!(decision["priority"], 500);
    assert_eq!(decision["policy_version"], hash.as_str());

    // Rolled back from the versions page: version 1 decides again.
    flow(&app, "legal.mjs", &["rollback"], &env).await;
    let (_, versions) = app.get(&author, "/v1/policies/versions").await;
    assert_eq!(versions["active"]["version"], 1);
    assert_eq!(versions["active"]["actor"], "bob");
    let first = versions["versions"][1]["hash"].as_str().unwrap().to_owned();
    let (status, answer) = app
        .submit(
            &sec,
            "de-after-rollback",
            &sec_freeze(DE_BOND.0, DE_BOND.1, "0xD8"),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(answer["decision"]["outcome"], "REJECTED");
    assert_eq!(answer["decision"]["policy_version"], first.as_str());
}

#[sqlx::test]
async fn the_auditors_flow_verifies_a_decision_and_sees_a_tampered_one_fail(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    // 55 applied SEC freezes: more than a page of 50.
    app.freeze_holders(0..55).await;
    let (status, _) = app
        .submit(&app.regulator("US-DOJ"), "doj-1", &service::doj_seize())
        .await;
    assert_eq!(status, 201);
    let auditor = app.auditor();
    let (_, found) = app
        .get(
            &auditor,
            "/v1/audit/decisions?chain=ethereum&asset=0xACME-BOND-2031&holder=0xH3",
        )
        .await;
    let seq = found["records"][0]["seq"]
        .as_u64()
        .expect("holder 0xH3's freeze");
    let (status, _) = app.post(&auditor, "/v1/audit/checkpoints", json!({})).await;
    assert_eq!(status, 201);

    let env = [
        ("REGULATOR_AUDITOR_TOKEN", auditor.clone()),
        ("REGULATOR_REGULATOR_TOKEN", app.regulator("US-SEC")),
        ("REGULATOR_SEQ", seq.to_string()),
        ("REGULATOR_EXPECT_ROWS", "55".into()),
    ];
    flow(&app, "auditor.mjs", &["pass"], &env).await;

    // An insider rewrites the decision's text in place, triggers off, leaving its hash.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE decisions DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    let changed = sqlx::query(
        "UPDATE decisions SET record = replace(record::text, 'SEC v. Acme', 'SEC v. Acne')::json WHERE seq = $1",
    )
    .bind(seq as i64)
    .execute(&mut *tx)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    sqlx::query("ALTER TABLE decisions ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (_, after) = app
        .get(
            &auditor,
            &format!("/v1/audit/decisions?from_seq={seq}&to_seq={seq}"),
        )
        .await;
    assert_eq!(
        after["records"][0]["decision"]["order"]["legal_basis"]["reference"], "SEC v. Acne",
        "the API serves the rewritten record"
    );

    flow(&app, "auditor.mjs", &["fail"], &env).await;
}

/// The binary embeds `console/dist`, which is committed: it must be exactly what the source in
/// `console/src` builds to, or a change to the source would never reach a user.
#[test]
fn the_committed_dist_is_what_the_source_builds() {
    node_modules();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-dist-{}", uuid::Uuid::new_v4()));
    let built = std::process::Command::new("node")
        .arg("build.mjs")
        .arg("--outdir")
        .arg(&out)
        .current_dir(root().join("console"))
        .output()
        .expect("node runs the build");
    assert!(
        built.status.success(),
        "the console build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let committed = root().join("console/dist");
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&out), names(&committed), "the files of console/dist");
    for name in names(&committed) {
        assert!(
            std::fs::read(out.join(&name)).unwrap() == std::fs::read(committed.join(&name)).unwrap(),
            "console/dist/{name} is not what console/src builds to: run `npm --prefix console run build` and commit console/dist"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
