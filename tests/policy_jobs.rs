//! The policy workspace's long and draft-side requests over real HTTP: simulation as a job
//! with its progress and its bound, and the diff of a draft against a stored version.

mod service;

use std::collections::BTreeMap;
use std::time::Duration;

use regulator::auth::Role;
use regulator::policy::PolicyFiles;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{TestApp, BOND};
use sqlx::PgPool;

const SEC_FREEZE_PRIORITY: &str = "@id(\"us-sec-freeze-court-order\")\n@priority(\"700\")";

fn shipped() -> BTreeMap<String, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicyFiles::read_dir(&dir).unwrap().into()
}

/// The shipped bundle with the SEC's court-ordered freezes at priority 650 instead of 700.
fn reprioritised() -> BTreeMap<String, String> {
    let mut files = shipped();
    let us = files.get_mut("us.cedar").unwrap();
    assert!(us.contains(SEC_FREEZE_PRIORITY));
    *us = us.replace(
        SEC_FREEZE_PRIORITY,
        "@id(\"us-sec-freeze-court-order\")\n@priority(\"650\")",
    );
    files
}

fn author(app: &TestApp) -> String {
    app.token("legal-team", &[Role::PolicyAuthor])
}

/// Polls a job until it is no longer running.
async fn wait_for(app: &TestApp, location: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = app.get(&author(app), location).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["status"] != "running" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A report without its timings, which differ from run to run.
fn timeless(mut report: Value) -> Value {
    let object = report.as_object_mut().unwrap();
    assert!(object.remove("elapsed_ms").is_some());
    assert!(object.remove("orders_per_second").is_some());
    report
}

async fn start_job(app: &TestApp, body: &Value) -> (StatusCode, String, Value) {
    let response = app
        .client
        .post(app.url("/v1/policies/simulations"))
        .bearer_auth(author(app))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, location, response.json().await.unwrap())
}

#[sqlx::test]
async fn a_simulation_job_reports_progress_then_the_report_simulate_gives(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..5).await;
    let body = json!({"files": reprioritised()});

    let (status, location, started) = start_job(&app, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/policies/simulations/{id}"));
    assert!(
        ["running", "done"].contains(&started["status"].as_str().unwrap()),
        "{started}"
    );

    let job = wait_for(&app, &location).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["id"], id);
    assert_eq!(job["total"], 5, "{job}");
    assert_eq!(job["replayed"], 5, "{job}");
    assert!(job.get("error").is_none());
    let report = job["report"].clone();
    assert_eq!(report["orders"], 5);
    assert_eq!(report["counts"]["changed"], 5);
    assert_eq!(report["counts"]["priority"], 5);
    assert_eq!(report["counts"]["outcome"], 0);

    let (status, direct) = app
        .post(&author(&app), "/v1/policies/simulate", body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{direct}");
    assert_eq!(timeless(report), timeless(direct));

    // A job's range is the simulate range: two orders of the five.
    let (_, location, _) = start_job(
        &app,
        &json!({"files": reprioritised(), "from_seq": 3, "to_seq": 4}),
    )
    .await;
    let job = wait_for(&app, &location).await;
    assert_eq!(
        (job["total"].as_u64(), job["replayed"].as_u64()),
        (Some(2), Some(2)),
        "{job}"
    );
    assert_eq!(job["report"]["counts"]["changed"], 2);
}

#[sqlx::test]
async fn bad_simulation_jobs_are_refused_before_they_start(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut broken = shipped();
    broken.insert("us.cedar".into(), "permit (".into());
    let cases = [
        (
            json!({"files": broken}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy-invalid",
        ),
        (json!({"version": 99}), StatusCode::NOT_FOUND, "not-found"),
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"version": 1, "from_seq": 9, "to_seq": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
        (
            json!({"version": 1, "max_changes": 100_001}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
    ];
    for (body, expected, kind) in cases {
        let (status, location, problem) = start_job(&app, &body).await;
        assert_eq!(status, expected, "{body} {problem}");
        assert_eq!(problem["type"], format!("urn:regulator:problem:{kind}"));
        assert!(location.is_empty());
    }
    for path in [
        "/v1/policies/simulations/00000000-0000-4000-8000-000000000000".to_owned(),
        "/v1/policies/simulations/not-a-job".to_owned(),
    ] {
        let (status, problem) = app.get(&author(&app), &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(problem["type"], "urn:regulator:problem:not-found");
    }

    // Roles as simulate: an auditor neither starts nor reads one.
    let (_, location, _) = start_job(&app, &json!({"version": 1})).await;
    let auditor = app.auditor();
    let (status, _) = app.get(&auditor, &location).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(&auditor, "/v1/policies/simulations", json!({"version": 1}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Jobs held up by a lock on the log stay running; past four, a fifth is refused with 429
/// until they end.
#[sqlx::test]
async fn at_most_four_simulations_run_at_once(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..2).await;
    // A draft: starting it needs no database connection, which the held jobs keep busy.
    let body = json!({"files": shipped()});

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let (status, location, job) = start_job(&app, &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        held.push(location);
    }
    let (status, location, problem) = start_job(&app, &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:regulator:problem:too-many-simulations"
    );
    assert!(location.is_empty());
    for location in &held {
        let (_, job) = app.get(&author(&app), location).await;
        assert_eq!(job["status"], "running", "{job}");
        assert_eq!(job["replayed"], 0, "{job}");
    }

    lock.rollback().await.unwrap();
    for location in &held {
        let job = wait_for(&app, location).await;
        assert_eq!(job["status"], "done", "{job}");
        assert_eq!(job["replayed"], 2);
    }
    let (status, _, job) = start_job(&app, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
}

#[sqlx::test]
async fn a_draft_is_diffed_against_the_active_version_like_a_stored_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let author = author(&app);
    let draft = reprioritised();

    let (status, against_active) = app
        .post(&author, "/v1/policies/diff", json!({"files": draft}))
        .await;
    assert_eq!(status, StatusCode::OK, "{against_active}");
    let changed: Vec<&str> = against_active["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["us-sec-freeze-court-order"], "{against_active}");
    assert_eq!(against_active["added"], json!([]));
    assert_eq!(against_active["removed"], json!([]));
    let (_, against_one) = app
        .post(
            &author,
            "/v1/policies/diff",
            json!({"files": draft, "from": 1}),
        )
        .await;
    assert_eq!(against_one, against_active);

    // Stored, the same draft diffs the same way through GET.
    let (status, created) = app
        .post(
            &author,
            "/v1/policies/versions",
            json!({"files": draft, "message": "SEC freezes at 650"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, stored) = app.get(&author, "/v1/policies/diff?from=1&to=2").await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored, against_active);

    // A version carries its files' text: the source of the policies that decided under it.
    let (status, version) = app.get(&app.auditor(), "/v1/policies/versions/1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["files"]["us.cedar"], json!(shipped()["us.cedar"]));

    let mut broken = shipped();
    broken.insert("us.cedar".into(), "permit (".into());
    for (body, expected, kind) in [
        (
            json!({"files": draft, "from": 99}),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            json!({"files": broken}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy-invalid",
        ),
        (
            json!({"files": draft, "to": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        ),
    ] {
        let (status, problem) = app.post(&author, "/v1/policies/diff", body).await;
        assert_eq!(status, expected, "{problem}");
        assert_eq!(problem["type"], format!("urn:regulator:problem:{kind}"));
    }
    let (status, _) = app
        .post(&app.auditor(), "/v1/policies/diff", json!({"files": draft}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
