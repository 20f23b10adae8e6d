//! Verification of state proofs and snapshot chunks without the engine: `regulator audit
//! verify-proof` offline, and an independent Python verifier (tests/verifier/verify_state.py,
//! standard library only, Ed25519 included) written from docs/audit.md, sharing no code.

mod service;

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use service::{order, TestApp, BOND};

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-fuzz/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: python3 -m venv .venv-fuzz (.ci/run does this)",
        venv.display()
    );
    venv
}

/// Runs the Python verifier: its exit code and the JSON line it printed.
fn python_verify(key: &Path, doc: &Path) -> (i32, Value) {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifier/verify_state.py"))
        .arg(key)
        .arg(doc)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), line)
}

/// Runs `regulator audit verify-proof`: its exit code and output.
fn cli_verify(key: &Path, doc: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["audit", "verify-proof", "--proof"])
        .arg(doc)
        .arg("--public-key")
        .arg(key)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn save(dir: &Path, name: &str, doc: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    path
}

#[sqlx::test]
async fn state_proofs_and_chunks_verify_offline_and_independently(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..3).await;
    // A partial freeze of one holder (an amount).
    let mut partial = order(
        BOND.0,
        BOND.1,
        "court_order",
        "SEC v. Acme",
        json!({"kind": "FREEZE", "amount": "1500"}),
    );
    partial["target"]["holder"] = json!("0xH7");
    let (status, answer) = app
        .submit(&app.regulator("US-SEC"), "partial", &partial)
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, cp) = app
        .post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cp}");

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("state-verifier-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key["pem"].as_str().unwrap()).unwrap();

    let proof = |holder: Option<&str>| {
        let path = match holder {
            Some(h) => format!("/v1/targets/{}/{}/proof?holder={h}", BOND.0, BOND.1),
            None => format!("/v1/targets/{}/{}/proof", BOND.0, BOND.1),
        };
        let app = &app;
        async move {
            let (status, doc) = app.get(&app.auditor(), &path).await;
            assert_eq!(status, StatusCode::OK, "{doc}");
            doc
        }
    };
    let frozen = save(&dir, "frozen.json", &proof(Some("0xH1")).await);
    let suspended = proof(Some("0xH7")).await;
    let suspended_path = save(&dir, "suspended.json", &suspended);
    let absent = save(&dir, "absent.json", &proof(Some("0xNOBODY")).await);
    let whole = save(&dir, "asset.json", &proof(None).await);

    let (code, out) = python_verify(&key_path, &frozen);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (out["level_number"].as_u64(), out["frozen"].as_str()),
        (Some(4), Some("all"))
    );
    let (code, out) = python_verify(&key_path, &suspended_path);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (out["level_number"].as_u64(), out["frozen"].as_str()),
        (Some(4), Some("1500"))
    );
    let (code, out) = python_verify(&key_path, &absent);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["frozen"], "none");
    let (code, out) = python_verify(&key_path, &whole);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["version"], 4);

    for path in [&frozen, &suspended_path, &absent, &whole] {
        let (code, out) = cli_verify(&key_path, path);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("state proof verified"), "{out}");
    }

    // Forgeries fail both: a smaller frozen amount, a dropped hold, another state root.
    let mut forged = suspended.clone();
    forged["holds"][0]["amount"] = json!("1");
    forged["state"]["frozen"] = json!("1");
    let forged_amount = save(&dir, "forged-amount.json", &forged);
    let mut forged = suspended.clone();
    forged["holds"] = json!([]);
    forged["state"] = json!({"version": forged["state"]["version"], "level": "UNLOCKED", "level_number": 0, "frozen": "none", "holds": []});
    let forged_drop = save(&dir, "forged-drop.json", &forged);
    let mut forged = suspended.clone();
    forged["checkpoint"]["state_root"] = json!("00".repeat(32));
    let forged_root = save(&dir, "forged-root.json", &forged);
    for path in [&forged_amount, &forged_drop, &forged_root] {
        let (code, out) = python_verify(&key_path, path);
        assert_eq!(code, 1, "{}: {out}", path.display());
        let (code, out) = cli_verify(&key_path, path);
        assert_eq!(code, 1, "{}: {out}", path.display());
    }

    // Every snapshot chunk of the chain verifies on its own.
    let (status, chunk) = app
        .get(&app.auditor(), "/v1/snapshots?chain=ethereum")
        .await;
    assert_eq!(status, StatusCode::OK, "{chunk}");
    let chunk_path = save(&dir, "chunk.json", &chunk);
    let (code, out) = python_verify(&key_path, &chunk_path);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["targets"], 5, "the asset leaf and four holders");
    let (code, out) = cli_verify(&key_path, &chunk_path);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("snapshot chunk verified"), "{out}");
    let mut forged = chunk.clone();
    forged["leaves"][1]["holds"] = json!([]);
    let forged_chunk = save(&dir, "forged-chunk.json", &forged);
    assert_eq!(python_verify(&key_path, &forged_chunk).0, 1);
    assert_eq!(cli_verify(&key_path, &forged_chunk).0, 1);
    std::fs::remove_dir_all(dir).unwrap();
}
