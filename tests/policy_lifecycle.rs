//! The policy lifecycle as a legal team lives it: draft, validate, test, simulate against the
//! recorded history, store, activate in the middle of live traffic, roll back; and the ledger
//! shows, seq by seq, which version decided what.

mod service;

use std::collections::BTreeMap;

use regulator::audit::{verify_chain, ChainCheck};
use regulator::auth::Role;
use regulator::policy::PolicyFiles;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{order, TestApp, BOND};
use sqlx::PgPool;

/// The OFAC rule as shipped: only an OFAC licence lifts an OFAC block.
const OFAC_RULE: &str =
    r#"!(principal == Authority::"US-OFAC" && context.legal_basis.instrument == "licence")"#;
/// The loosened rule: the federal court may lift one too.
const LOOSENED_RULE: &str = r#"!((principal == Authority::"US-OFAC" && context.legal_basis.instrument == "licence") || principal == Authority::"US-SDNY")"#;
const COURT_CASE: &str = r#"name = "A court release cannot lift an OFAC block"
principal = "US-SDNY"
action = "RELEASE"
asset = "us_stablecoin"
instrument = "court_order"
released = { issuer = "US-OFAC", kind = "FREEZE", instrument = "designation", priority = 900 }
[case.expect]
decision = "deny"
determining = ["us-ofac-block-lifted-only-by-ofac-licence"]"#;
const LOOSENED_CASE: &str = r#"name = "A court release lifts an OFAC block"
principal = "US-SDNY"
action = "RELEASE"
asset = "us_stablecoin"
instrument = "court_order"
released = { issuer = "US-OFAC", kind = "FREEZE", instrument = "designation", priority = 900 }
[case.expect]
decision = "allow"
determining = ["us-court-release"]
priority = 800"#;

/// The shipped `policies/` directory as a draft's files.
fn shipped() -> BTreeMap<String, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicyFiles::read_dir(&dir).unwrap().into()
}

/// The shipped bundle with the OFAC release rule loosened, and its test case updated to match.
fn loosened() -> BTreeMap<String, String> {
    let mut files = shipped();
    let us = files.get_mut("us.cedar").unwrap();
    assert!(us.contains(OFAC_RULE));
    *us = us.replace(OFAC_RULE, LOOSENED_RULE);
    let tests = files.get_mut("tests/us.toml").unwrap();
    assert!(tests.contains(COURT_CASE));
    *tests = tests.replace(COURT_CASE, LOOSENED_CASE);
    files
}

fn author(app: &TestApp) -> String {
    app.token("legal-team", &[Role::PolicyAuthor])
}

fn holder_order(holder: &str, instrument: &str, reference: &str, instruction: Value) -> Value {
    let mut body = order(BOND.0, BOND.1, instrument, reference, instruction);
    body["target"]["holder"] = json!(holder);
    body
}

/// Submits and returns the decision record.
async fn decide(app: &TestApp, issuer: &str, key: &str, body: &Value) -> Value {
    let (status, answer) = app.submit(&app.regulator(issuer), key, body).await;
    assert!(status.is_success(), "{status} {answer}");
    answer["decision"].clone()
}

async fn ofac_block(app: &TestApp, holder: &str) -> String {
    let d = decide(
        app,
        "US-OFAC",
        &format!("block-{holder}"),
        &holder_order(
            holder,
            "designation",
            "SDN List 2026-11",
            json!({"kind": "FREEZE"}),
        ),
    )
    .await;
    assert_eq!(d["outcome"], "APPLIED", "{d}");
    d["order"]["id"].as_str().unwrap().to_owned()
}

async fn release(app: &TestApp, issuer: &str, instrument: &str, holder: &str, hold: &str) -> Value {
    decide(
        app,
        issuer,
        &format!("release-{issuer}-{hold}"),
        &holder_order(
            holder,
            instrument,
            "release order",
            json!({"kind": "RELEASE", "releases": hold}),
        ),
    )
    .await
}

async fn store_version(app: &TestApp, files: &BTreeMap<String, String>, message: &str) -> Value {
    let (status, created) = app
        .post(
            &author(app),
            "/v1/policies/versions",
            json!({"files": files, "message": message}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn activate(app: &TestApp, version: u64) -> (StatusCode, Value) {
    app.post(
        &author(app),
        &format!("/v1/policies/versions/{version}/activate"),
        json!({}),
    )
    .await
}

/// A history of OFAC blocks and releases; a draft that lets the federal court lift OFAC blocks
/// is simulated against it: exactly the court's refused releases of OFAC blocks would change,
/// and the version in force reproduces the history exactly.
#[sqlx::test]
async fn loosening_the_ofac_release_rule_shows_exactly_the_decisions_it_would_change(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let h1 = ofac_block(&app, "0xH1").await;
    let h2 = ofac_block(&app, "0xH2").await;
    let h3 = ofac_block(&app, "0xH3").await;
    let sec = decide(
        &app,
        "US-SEC",
        "sec-h4",
        &holder_order(
            "0xH4",
            "court_order",
            "SEC v. Acme",
            json!({"kind": "FREEZE"}),
        ),
    )
    .await;
    let sec = sec["order"]["id"].as_str().unwrap().to_owned();

    let court_on_h1 = release(&app, "US-SDNY", "court_order", "0xH1", &h1).await;
    let sec_on_h2 = release(&app, "US-SEC", "court_order", "0xH2", &h2).await;
    let court_on_sec = release(&app, "US-SDNY", "court_order", "0xH4", &sec).await;
    let licence_on_h3 = release(&app, "US-OFAC", "licence", "0xH3", &h3).await;
    let court_on_h2 = release(&app, "US-SDNY", "court_order", "0xH2", &h2).await;
    for refused in [&court_on_h1, &sec_on_h2, &court_on_h2] {
        assert_eq!(refused["outcome"], "REJECTED", "{refused}");
    }
    for applied in [&court_on_sec, &licence_on_h3] {
        assert_eq!(applied["outcome"], "APPLIED", "{applied}");
    }

    let (status, report) = app
        .post(
            &author(&app),
            "/v1/policies/simulate",
            json!({"files": loosened()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["orders"], 9);
    let changed: Vec<u64> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        changed,
        [&court_on_h1, &court_on_h2].map(|d| d["seq"].as_u64().unwrap()),
        "{report}"
    );
    for change in report["changes"].as_array().unwrap() {
        assert_eq!(change["issuer"], "US-SDNY");
        assert_eq!(change["recorded"]["outcome"], "REJECTED");
        assert_eq!(
            change["recorded"]["determining_policies"],
            json!(["us-ofac-block-lifted-only-by-ofac-licence"])
        );
        assert_eq!(change["simulated"]["outcome"], "APPLIED");
        assert_eq!(
            change["simulated"]["determining_policies"],
            json!(["us-court-release"])
        );
        assert_eq!(change["simulated"]["priority"], 800);
        assert_eq!(
            change["differs"],
            json!(["outcome", "priority", "determining_policies"])
        );
    }
    assert_eq!(report["counts"]["changed"], 2);
    assert_eq!(report["counts"]["outcome"], 2);
    assert_eq!(
        report["counts"]["transitions"],
        json!({"REJECTED -> APPLIED": 2})
    );
    assert_eq!(report["truncated"], false);

    // The version in force decides the history again exactly as it was decided.
    let (status, same) = app
        .post(
            &author(&app),
            "/v1/policies/simulate",
            json!({"version": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["orders"], 9);
    assert_eq!(same["counts"]["changed"], 0, "{same}");

    // A range that starts mid-history rebuilds the state the bond had from the decisions
    // before it: only the second court release is in it.
    let from = court_on_sec["seq"].as_u64().unwrap();
    let (status, tail) = app
        .post(
            &author(&app),
            "/v1/policies/simulate",
            json!({"files": loosened(), "from_seq": from, "max_changes": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tail}");
    assert_eq!(tail["orders"], 3);
    assert_eq!(tail["counts"]["changed"], 1);
    assert_eq!(tail["changes"], json!([]));
    assert_eq!(tail["truncated"], true);

    // And by time: everything decided up to now.
    let (status, by_time) = app
        .post(
            &author(&app),
            "/v1/policies/simulate",
            json!({"files": loosened(), "to_time": chrono::Utc::now()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{by_time}");
    assert_eq!(by_time["counts"]["changed"], 2);
}

/// The court keeps sending releases of OFAC blocks while the legal team activates the loosened
/// version: every release decided before the activation's seq is refused under version 1,
/// every one after it is applied under version 2.
#[sqlx::test]
async fn an_activation_in_the_middle_of_a_stream_takes_effect_at_its_seq(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let mut blocks = Vec::new();
    for i in 0..30 {
        let holder = format!("0xS{i}");
        blocks.push((holder.clone(), ofac_block(&app, &holder).await));
    }
    let v2 = store_version(&app, &loosened(), "Court may lift OFAC blocks (test)").await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["tests"]["failed"], 0);
    let v1_hash: String = sqlx::query_scalar("SELECT hash FROM policy_versions WHERE version = 1")
        .fetch_one(&pool)
        .await
        .unwrap();

    let stream = {
        let base = app.base.clone();
        let token = app.regulator("US-SDNY");
        let blocks = blocks.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut decided = Vec::new();
            for (holder, hold) in blocks {
                let body = holder_order(
                    &holder,
                    "court_order",
                    "In re Acme",
                    json!({"kind": "RELEASE", "releases": hold}),
                );
                let answer: Value = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("stream-{hold}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                decided.push(answer["decision"].clone());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            decided
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, activated) = activate(&app, 2).await;
    assert_eq!(status, StatusCode::OK, "{activated}");
    assert_eq!(activated["active"]["version"], 2);
    assert_eq!(activated["previous"]["version"], 1);
    assert_eq!(activated["rollback"], false);
    assert_eq!(activated["actor"], "legal-team");
    let at = activated["seq"].as_u64().unwrap();

    let decided = stream.await.unwrap();
    let (before, after): (Vec<&Value>, Vec<&Value>) = decided
        .iter()
        .partition(|d| d["seq"].as_u64().unwrap() < at);
    assert!(
        !before.is_empty() && !after.is_empty(),
        "the stream straddles the activation"
    );
    for d in &before {
        assert_eq!(d["outcome"], "REJECTED", "{d}");
        assert_eq!(d["policy_version"], v1_hash.as_str());
    }
    for d in &after {
        assert_eq!(d["outcome"], "APPLIED", "{d}");
        assert_eq!(d["policy_version"], v2["hash"]);
        assert_eq!(d["determining_policies"], json!(["us-court-release"]));
    }

    let (_, ready) = app.get(&app.auditor(), "/readyz").await;
    assert_eq!(ready["active_version"], 2);
    assert_eq!(ready["active_since_seq"], at);
    // The log proves it: the chain links, and every decision names the version in force.
    assert!(matches!(
        verify_chain(&pool).await.unwrap(),
        ChainCheck::Sound { .. }
    ));
}

/// Version 2 goes live, a rollback restores version 1 (an activation too, marked as a
/// rollback), and the activations list tells the story.
#[sqlx::test]
async fn a_rollback_restores_the_previous_version(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let token = author(&app);

    let (status, problem) = app.post(&token, "/v1/policies/rollback", json!({})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "only version 1 was ever active: {problem}"
    );

    store_version(&app, &loosened(), "Court may lift OFAC blocks").await;
    let (status, _) = activate(&app, 2).await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = activate(&app, 2).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["type"], "urn:regulator:problem:conflict");

    let block = ofac_block(&app, "0xR1").await;
    let under_v2 = release(&app, "US-SDNY", "court_order", "0xR1", &block).await;
    assert_eq!(under_v2["outcome"], "APPLIED");

    let response = app
        .client
        .post(app.url("/v1/policies/rollback"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rolled: Value = response.json().await.unwrap();
    assert_eq!(rolled["active"]["version"], 1);
    assert_eq!(rolled["previous"]["version"], 2);
    assert_eq!(rolled["rollback"], true);

    let block = ofac_block(&app, "0xR2").await;
    let under_v1 = release(&app, "US-SDNY", "court_order", "0xR2", &block).await;
    assert_eq!(under_v1["outcome"], "REJECTED");
    assert_eq!(under_v1["policy_version"], rolled["active"]["hash"]);

    let (status, list) = app.get(&token, "/v1/policies/activations").await;
    assert_eq!(status, StatusCode::OK);
    let story: Vec<(u64, &str)> = list["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["version"].as_u64().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        story,
        [(1, "legal-team"), (2, "legal-team"), (1, "regulator")]
    );
    let (status, problem) = app
        .post(&token, "/v1/policies/rollback", json!({"to": 7}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    // The ledger's events say the same, hash-chained with the decisions.
    let (status, events) = app.get(&app.auditor(), "/v1/audit/events").await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<(&str, bool)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"]["event"]["type"].as_str().unwrap(),
                e["event"]["event"]["rollback"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("policy_activated", false),
            ("policy_activated", false),
            ("policy_activated", true)
        ]
    );
}

/// A draft with a policy that has no `@id` and one that reads an attribute the schema does not
/// have: both refused, each pointed at its file, line and column, and nothing is stored.
#[sqlx::test]
async fn an_invalid_draft_is_refused_with_spans(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let mut files = shipped();
    files.insert(
        "draft.cedar".into(),
        "// A draft.\n\npermit (principal, action, resource);\n\n@id(\"draft-reads-nothing\")\n@priority(\"10\")\npermit (principal, action == Action::\"FREEZE\", resource)\nwhen { resource.no_such_attribute == \"x\" };\n".into(),
    );
    let (status, problem) = app
        .post(
            &author(&app),
            "/v1/policies/validate",
            json!({"files": files}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:regulator:problem:policy-invalid");
    let errors = problem["errors"].as_array().unwrap();
    let missing = errors
        .iter()
        .find(|e| e["code"] == "policy::missing_id")
        .unwrap_or_else(|| panic!("{problem}"));
    assert_eq!(missing["file"], "draft.cedar");
    assert_eq!(
        (missing["line"].as_u64(), missing["column"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(missing["hint"].as_str().unwrap().contains("@id"));
    let unknown = errors
        .iter()
        .find(|e| e["code"] == "policy::validation")
        .unwrap_or_else(|| panic!("{problem}"));
    assert_eq!(unknown["file"], "draft.cedar");
    assert_eq!(unknown["line"], 8);
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("no_such_attribute"),
        "{unknown}"
    );

    let (status, _) = app
        .post(
            &author(&app),
            "/v1/policies/versions",
            json!({"files": files, "message": "should not be stored"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(versions, 1, "only the imported version");

    // A file a policy directory cannot hold is refused before anything is compiled.
    let mut odd = shipped();
    odd.insert("../escape.cedar".into(), String::new());
    let (status, problem) = app
        .post(
            &author(&app),
            "/v1/policies/validate",
            json!({"files": odd}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "urn:regulator:problem:invalid-request");
}

/// Several legal teams activate at once: the sequencer records the activations one after
/// another, each naming the one it replaced, and refuses those that would change nothing.
#[sqlx::test]
async fn concurrent_activations_are_serialized(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    store_version(&app, &loosened(), "loosened").await;
    let mut reworded = shipped();
    reworded
        .get_mut("common.cedar")
        .unwrap()
        .push_str("\n// Reviewed 2026-11.\n");
    store_version(&app, &reworded, "reviewed, no change in meaning").await;

    let attempts = [2, 3, 2, 3, 2, 3, 1, 2];
    let answers = futures::future::join_all(attempts.iter().map(|v| activate(&app, *v))).await;
    let mut recorded: Vec<(u64, u64, u64)> = Vec::new();
    for (status, answer) in &answers {
        match *status {
            StatusCode::OK => recorded.push((
                answer["seq"].as_u64().unwrap(),
                answer["active"]["version"].as_u64().unwrap(),
                answer["previous"]["version"].as_u64().unwrap(),
            )),
            StatusCode::CONFLICT => {
                assert!(answer["detail"]
                    .as_str()
                    .unwrap()
                    .contains("already active"))
            }
            other => panic!("{other} {answer}"),
        }
    }
    assert!(!recorded.is_empty());
    recorded.sort();
    // One after another: each replaced the one recorded just before it.
    let mut active = 1;
    for (_, version, previous) in &recorded {
        assert_eq!(*previous, active, "{recorded:?}");
        assert_ne!(*version, active);
        active = *version;
    }
    let seqs: Vec<u64> = recorded.iter().map(|r| r.0).collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "one seq each");
    let (_, ready) = app.get(&app.auditor(), "/readyz").await;
    assert_eq!(ready["active_version"], active);
    assert!(matches!(
        verify_chain(&pool).await.unwrap(),
        ChainCheck::Sound { .. }
    ));
}

/// Versions, diffs and tests through the API; who may do what.
#[sqlx::test]
async fn versions_diffs_tests_and_roles(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let token = author(&app);
    for path in [
        "/v1/policies/validate",
        "/v1/policies/test",
        "/v1/policies/versions",
    ] {
        let (status, _) = app
            .post(&app.regulator("US-SEC"), path, json!({"files": shipped()}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, _) = app
        .post(
            &app.auditor(),
            "/v1/policies/versions/1/activate",
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "auditors read, they do not activate"
    );

    let (status, valid) = app
        .post(
            &token,
            "/v1/policies/validate",
            json!({"files": loosened()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{valid}");
    assert_eq!(valid["hash"].as_str().unwrap().len(), 64);

    // The shipped tests fail against the loosened rule: the suite says which case.
    let mut untested = shipped();
    untested.insert("us.cedar".into(), loosened()["us.cedar"].clone());
    let (status, report) = app
        .post(&token, "/v1/policies/test", json!({"files": untested}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["passed"], false);
    assert_eq!(report["failed"], 1);
    let failed: Vec<&Value> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["passed"] == false)
        .collect();
    assert_eq!(
        failed[0]["name"],
        "A court release cannot lift an OFAC block"
    );

    // Stored, it cannot be activated while its own tests fail.
    let stored = store_version(&app, &untested, "loosened without its test").await;
    assert_eq!(stored["tests"]["failed"], 1);
    let (status, problem) = activate(&app, 2).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("fails 1"));

    // The same content is the same version.
    let (status, again) = app
        .post(
            &token,
            "/v1/policies/versions",
            json!({"files": untested, "message": "again"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (again["version"].as_u64(), again["created"].as_bool()),
        (Some(2), Some(false))
    );
    let (status, problem) = app
        .post(
            &token,
            "/v1/policies/versions",
            json!({"files": loosened(), "message": "  "}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    let v3 = store_version(&app, &loosened(), "Court may lift OFAC blocks").await;
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["author"], "legal-team");
    let (status, diff) = app
        .get(&app.auditor(), "/v1/policies/diff?from=1&to=3")
        .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(diff["added"], json!([]));
    assert_eq!(diff["removed"], json!([]));
    let changed: Vec<&str> = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["us-ofac-block-lifted-only-by-ofac-licence"]);
    assert!(diff["changed"][0]["to"]["text"]
        .as_str()
        .unwrap()
        .contains("US-SDNY"));
    assert_eq!(diff["tests_changed"], json!(["tests/us.toml"]));
    assert_eq!(diff["schema_changed"], false);
    let (status, _) = app.get(&token, "/v1/policies/diff?from=1&to=9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, list) = app.get(&app.auditor(), "/v1/policies/versions").await;
    assert_eq!(status, StatusCode::OK);
    let numbers: Vec<u64> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(list["active"]["version"], 1);
    let (status, one) = app.get(&token, "/v1/policies/versions/3").await;
    assert_eq!(status, StatusCode::OK);
    let files: BTreeMap<String, String> = serde_json::from_value(one["files"].clone()).unwrap();
    assert_eq!(files, loosened());
    let (status, _) = app.get(&token, "/v1/policies/versions/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            &token,
            "/v1/policies/simulate",
            json!({"files": loosened(), "version": 1}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "one of files and version"
    );
}

/// An admin's webhook subscription changes are ledger events, with the admin as actor.
#[sqlx::test]
async fn subscription_changes_are_ledger_events(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let (status, created) = app
        .post(
            &app.admin(),
            "/v1/webhooks/subscriptions",
            json!({"chain": "ethereum", "url": "https://hooks.chain.example/x"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, _) = app
        .post(
            &app.admin(),
            &format!("/v1/webhooks/subscriptions/{id}/disable"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut events = Vec::new();
    for _ in 0..100 {
        let (_, page) = app.get(&app.auditor(), "/v1/audit/events").await;
        events = page["events"].as_array().unwrap().clone();
        if events.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let changes: Vec<(&str, &str)> = events[1..]
        .iter()
        .map(|e| {
            (
                e["event"]["event"]["change"]["action"].as_str().unwrap(),
                e["event"]["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes, [("created", "ops"), ("disabled", "ops")]);
    assert_eq!(events[1]["event"]["event"]["subscription"], id);
    assert!(
        !events[1].to_string().contains("whsec_"),
        "no secret in the log"
    );
    assert!(matches!(
        verify_chain(&pool).await.unwrap(),
        ChainCheck::Sound { records: 3, .. }
    ));
}

/// Two replicas. The legal team activates through the standby's API; the leader records it and
/// decides with it at once. Then the leader dies: the standby takes over and decides with the
/// version the ledger says is active (never with its own `policies/` files).
#[sqlx::test]
async fn every_replica_decides_with_the_version_the_ledger_says_is_active(pool: PgPool) {
    let leader = TestApp::spawn_with(pool.clone(), 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(leader.leading().await);
    let standby = TestApp::spawn_with(pool.clone(), 0).await;
    assert!(!standby.leading().await);
    standby.register(BOND.0, BOND.1, "US", "security").await;
    let v2 = store_version(&standby, &loosened(), "Court may lift OFAC blocks").await;
    let (status, activated) = activate(&standby, 2).await;
    assert_eq!(status, StatusCode::OK, "{activated}");

    let block = ofac_block(&standby, "0xA1").await;
    let released = release(&standby, "US-SDNY", "court_order", "0xA1", &block).await;
    assert_eq!(
        released["outcome"], "APPLIED",
        "decided by the leader with version 2"
    );
    assert_eq!(released["policy_version"], v2["hash"]);

    leader.app.kill();
    let mut took_over = false;
    for _ in 0..100 {
        if standby.leading().await {
            took_over = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(took_over, "the standby leads");
    let block = ofac_block(&standby, "0xA2").await;
    let released = release(&standby, "US-SDNY", "court_order", "0xA2", &block).await;
    assert_eq!(
        released["outcome"], "APPLIED",
        "the new leader loaded version 2"
    );
    assert_eq!(released["policy_version"], v2["hash"]);
    assert!(matches!(
        verify_chain(&pool).await.unwrap(),
        ChainCheck::Sound { .. }
    ));
    standby.app.stop().await;
}

/// The DOJ and the UK's NCA seize one coin in the same window: a tie, both ESCALATED, decided
/// as one group. A range that starts (or ends) inside the group still replays it whole, so the
/// version in force finds nothing to change.
#[sqlx::test]
async fn a_range_that_cuts_a_conflict_group_replays_it_whole(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 1_000).await;
    app.register("polygon", "0x5GD-COIN", "SG", "stablecoin")
        .await;
    let seize = |reference: &str| {
        order(
            "polygon",
            "0x5GD-COIN",
            "warrant",
            reference,
            json!({"kind": "SEIZE"}),
        )
    };
    let (doj_order, nca_order) = (seize("26-MAG-1207"), seize("NCA/AFW/2026/311"));
    let (doj, nca) = tokio::join!(
        decide(&app, "US-DOJ", "doj", &doj_order),
        decide(&app, "GB-NCA", "nca", &nca_order),
    );
    let mut seqs = [doj["seq"].as_u64().unwrap(), nca["seq"].as_u64().unwrap()];
    seqs.sort();
    for d in [&doj, &nca] {
        assert_eq!(d["outcome"], "ESCALATED", "{d}");
        assert_eq!(d["group"], seqs[0], "both name the group's first seq");
    }
    for range in [json!({"from_seq": seqs[1]}), json!({"to_seq": seqs[0]})] {
        let mut body = range.clone();
        body["version"] = json!(1);
        let (status, report) = app.post(&author(&app), "/v1/policies/simulate", body).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["orders"], 2, "{range}: the whole group");
        assert!(
            report["from_seq"].as_u64().unwrap() <= seqs[0]
                && report["to_seq"].as_u64().unwrap() >= seqs[1],
            "{range}: widened to {report}"
        );
        assert_eq!(report["counts"]["changed"], 0, "{report}");
    }
}

/// The database itself refuses a decision that names another policy version than the active
/// one, whoever writes it.
#[sqlx::test]
async fn the_database_refuses_a_decision_by_an_inactive_version(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    ofac_block(&app, "0xD1").await;
    app.app.stop().await;
    let forged = sqlx::query(
        "INSERT INTO decisions (seq, order_id, expired_hold, chain, asset, holder, kind, issuer,
                                outcome, reason_code, priority, policy_version, target_version,
                                decided_at, record, hash, policies_indexed)
         SELECT seq + 1, NULL, gen_random_uuid(), chain, asset, holder, kind, issuer, outcome,
                reason_code, priority, repeat('f', 64), target_version, decided_at, record, hash,
                true
         FROM decisions ORDER BY seq DESC LIMIT 1",
    )
    .execute(&pool)
    .await;
    let error = forged.unwrap_err().to_string();
    assert!(error.contains("active policy version"), "{error}");
}

/// Paths that do not name a version are 404 problems; a queued activation can be looked up.
#[sqlx::test]
async fn version_paths_and_requests_are_checked(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let token = author(&app);
    for path in [
        "/v1/policies/versions/abc",
        "/v1/policies/versions/0",
        "/v1/policies/requests/x",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    let (status, _) = app
        .post(&token, "/v1/policies/versions/abc/activate", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    store_version(&app, &loosened(), "loosened").await;
    let (status, _) = activate(&app, 2).await;
    assert_eq!(status, StatusCode::OK);
    let id: i64 = sqlx::query_scalar("SELECT id FROM ledger_requests WHERE kind = 'activate'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (status, request) = app
        .get(&token, &format!("/v1/policies/requests/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request["status"], "recorded");
    assert!(request["seq"].as_u64().is_some());
}

/// Runs the `regulator` binary off the runtime (the server under test shares it).
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

/// Writes `files` as a policy directory.
fn directory(files: &BTreeMap<String, String>) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("draft-{}", uuid::Uuid::new_v4()));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// The legal team's whole workflow from the command line, against a running server.
#[sqlx::test]
async fn the_cli_drives_the_workflow_against_a_server(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let server = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--server".into(),
            app.base.clone(),
            "--token".into(),
            author(&app),
        ]);
        all
    };
    let draft = directory(&loosened());
    let draft = draft.to_str().unwrap();

    let (code, out, err) = cli(server(&["policy", "validate", "--policies", draft])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: 24 policies"), "{out}");
    let (code, out, _) = cli(server(&["policy", "test", "--policies", draft])).await;
    assert_eq!(code, 0);
    assert!(out.contains("62 cases: 62 passed, 0 failed"), "{out}");
    let (code, out, err) = cli(server(&[
        "policy",
        "push",
        "--policies",
        draft,
        "--message",
        "Court may lift OFAC blocks",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored as version 2"), "{out}");
    let (code, out, _) = cli(server(&["policy", "diff", "1", "2"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("changed  us-ofac-block-lifted-only-by-ofac-licence"),
        "{out}"
    );
    assert!(
        out.contains("0 added, 0 removed, 1 changed, 23 unchanged"),
        "{out}"
    );
    let (code, out, _) = cli(server(&["policy", "simulate", "--version", "2"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("0 would change"), "{out}");
    let (code, out, err) = cli(server(&["policy", "activate", "2"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("version 2 active from seq"), "{out}");
    let (code, out, _) = cli(server(&["policy", "rollback"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("version 1 active from seq") && out.contains("a rollback"),
        "{out}"
    );

    // An invalid draft: exit 1, every error located.
    let mut broken = loosened();
    broken.insert(
        "draft.cedar".into(),
        "permit (principal, action, resource);\n".into(),
    );
    let broken = directory(&broken);
    let (code, _, err) = cli(server(&[
        "policy",
        "validate",
        "--policies",
        broken.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("draft.cedar:1:1: [policy::missing_id]"),
        "{err}"
    );
    // Changing a server's policies needs a server.
    let (code, _, err) = cli(vec!["policy".into(), "activate".into(), "2".into()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--server"), "{err}");
}

/// Bad requests to the lifecycle API are problem documents, and none of them queues anything
/// for the ledger or stores a version.
#[sqlx::test]
async fn bad_lifecycle_requests_are_refused_and_write_nothing(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let token = author(&app);
    for (path, body, status) in [
        (
            "/v1/policies/simulate",
            json!({"version": 1, "from_seq": 9, "to_seq": 3}),
            422,
        ),
        (
            "/v1/policies/simulate",
            json!({"version": 1, "from_time": "2026-02-01T00:00:00Z", "to_time": "2026-01-01T00:00:00Z"}),
            422,
        ),
        (
            "/v1/policies/simulate",
            json!({"version": 1, "max_changes": 100_001}),
            422,
        ),
        ("/v1/policies/simulate", json!({"version": 9}), 404),
        (
            "/v1/policies/simulate",
            json!({"version": 1, "extra": true}),
            422,
        ),
        ("/v1/policies/versions/99/activate", json!({}), 404),
        ("/v1/policies/versions/1/activate", json!({}), 409),
        ("/v1/policies/rollback", json!({"to": "one"}), 422),
        ("/v1/policies/versions", json!({"files": shipped()}), 422),
        (
            "/v1/policies/validate",
            json!({"files": {"us.cedar": 5}}),
            422,
        ),
    ] {
        let (got, problem) = app.post(&token, path, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{path} {body}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:regulator:problem:"),
            "{problem}"
        );
    }
    let malformed = app
        .client
        .post(app.url("/v1/policies/validate"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (requests, versions),
        (0, 1),
        "nothing queued, nothing stored"
    );
}
