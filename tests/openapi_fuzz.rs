//! Schemathesis generates requests from the served OpenAPI document and sends them to a real
//! service: no answer may be a 5xx, carry a status the document does not list for its
//! operation, or a content type it does not declare. Bounded in count and time.
//!
//! Schemathesis is pinned in `fuzz/requirements.txt`; `.ci/run` installs it into `.venv-fuzz/`.
//! Without it this test fails (it is not skipped).

mod service;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use regulator::auth::Role;
use service::TestApp;
use sqlx::PgPool;

/// How long schemathesis may run; CI allows 3 minutes for the whole test.
const MAX_SECONDS: &str = "120";
/// Generated cases per operation and phase.
const MAX_EXAMPLES: &str = "25";

pub fn venv_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv-fuzz/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: install the fuzzing tools with\n  \
         python3 -m venv .venv-fuzz && .venv-fuzz/bin/pip install -r fuzz/requirements.txt\n\
         (.ci/run does this)",
        path.display()
    );
    path
}

#[sqlx::test]
async fn schemathesis_finds_no_5xx_and_no_undocumented_status(pool: PgPool) {
    let schemathesis = venv_tool("schemathesis");
    let mut config = service::config(service::secret_file(), 0);
    // Generated subscriptions name hosts that do not exist; nothing needs to call them.
    config.webhooks.deliver = false;
    config.submit_wait = std::time::Duration::from_millis(500);
    let app = TestApp::start(config, pool).await;
    app.register(service::BOND.0, service::BOND.1, "US", "security")
        .await;
    let token = app.token(
        "US-SEC",
        &[
            Role::Regulator,
            Role::Coordinator,
            Role::PolicyAuthor,
            Role::Auditor,
            Role::Chain,
            Role::Admin,
            Role::Monitor,
        ],
    );
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let started = Instant::now();
    let mut command = Command::new(&schemathesis);
    command
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--url", &app.base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", MAX_SECONDS])
        .args(["--request-timeout", "40"])
        .args(["--seed", "15"])
        .args(["--workers", "2"])
        .args(["--suppress-health-check", "all"])
        // The SSE stream never ends by design, so no request to it can complete; its errors
        // are the feed's, which the long-poll `/v1/decisions` covers with the same extractors.
        .args(["--exclude-path", "/v1/decisions/stream"])
        .arg("--no-color")
        .arg("--report-dir")
        .arg(&report);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "schemathesis took {:?}\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(
        output.status.success(),
        "schemathesis found failures (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    app.app.stop().await;
}
