//! Evidence that holds against an insider (issue 15, item 9): a suffix of the log rewritten
//! with its chain recomputed, the checkpoints that covered it dropped, is neither signed by
//! the engine nor passed by `audit verify`; the checkpoint key is a PKCS#8 v1 file OpenSSL
//! reads; past checkpoints are listed.

mod insider;
mod service;

use std::process::Command;

use insider::{drop_evidence, rewrite_suffix, verify_cli};
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::TestApp;
use sqlx::PgPool;

async fn publish(app: &TestApp) -> (StatusCode, Value) {
    app.post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await
}

async fn checkpoint_sizes(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT tree_size FROM checkpoints ORDER BY tree_size")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Seqs 2.. are freezes; checkpoints at 6, 11 and 16. Records from seq 9 are rewritten, the
/// checkpoints of 11 and 16 dropped, and the stored tree cut back to 12 leaves.
#[sqlx::test]
async fn a_rewritten_suffix_is_neither_signed_nor_verified(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..5).await;
    assert_eq!(publish(&app).await.0, StatusCode::CREATED);
    app.freeze_holders(5..10).await;
    assert_eq!(publish(&app).await.0, StatusCode::CREATED);
    app.freeze_holders(10..15).await;
    assert_eq!(publish(&app).await.0, StatusCode::CREATED);
    assert_eq!(checkpoint_sizes(&pool).await, [6, 11, 16]);
    let (code, out) = verify_cli(&pool, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stored Merkle tree sound: 16 leaves"), "{out}");

    rewrite_suffix(&pool, 9).await;
    drop_evidence(&pool, 6, 12).await;

    // The running engine verified checkpoint 16: it is gone, and nothing is signed.
    let (status, problem) = publish(&app).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("refusing to sign") && detail.contains("tree size 16"),
        "{detail}"
    );
    app.app.stop().await;

    // A replica that never saw it recomputes from seq 1: the stored tree's leaves 9 to 12
    // are not the records'. Nothing is signed, and the stored tree is left as it was found.
    let fresh = TestApp::spawn_with(pool.clone(), 0).await;
    let (status, problem) = publish(&fresh).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("the stored Merkle tree of 12 leaves"),
        "{problem}"
    );
    fresh.app.stop().await;
    assert_eq!(checkpoint_sizes(&pool).await, [6]);
    let size: i64 = sqlx::query_scalar("SELECT size FROM merkle_head")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(size, 12);

    // Verify names the first rewritten record, though the chain links and checkpoint 6 holds.
    let (code, out) = verify_cli(&pool, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hash chain sound"), "{out}");
    assert!(out.contains("checkpoints sound: 1 roots"), "{out}");
    assert!(
        out.contains("first bad entry: seq 9: the stored Merkle tree holds leaf"),
        "{out}"
    );
}

/// The forger also drops the stored tree back to the rewrite: the database alone now holds a
/// consistent history, but the engine that verified checkpoint 16 still refuses to sign.
#[sqlx::test]
async fn a_consistent_forgery_is_not_signed_by_an_engine_that_saw_the_original(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..10).await;
    assert_eq!(publish(&app).await.0, StatusCode::CREATED);
    rewrite_suffix(&pool, 5).await;
    drop_evidence(&pool, 4, 4).await;
    let (status, problem) = publish(&app).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("tree size 11"),
        "{problem}"
    );
    assert!(checkpoint_sizes(&pool).await.is_empty());
    app.app.stop().await;
}

/// The key file is PKCS#8 v1 (RFC 8410 §7): exactly the 48-byte document with the seed and no
/// public key; OpenSSL, when installed, reads it and derives the public key the engine serves.
#[test]
fn the_checkpoint_key_is_pkcs8_v1_and_openssl_reads_it() {
    use base64::Engine;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cp-key-{}", uuid::Uuid::new_v4()));
    let path = dir.join("checkpoint-key.pem");
    let key = regulator::audit::signer::CheckpointKey::load_or_create(&path).unwrap();
    let pem = std::fs::read_to_string(&path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    // SEQUENCE { INTEGER 0 (v1), SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
    assert_eq!(der.len(), 48);
    assert_eq!(hex::encode(&der[..16]), "302e020100300506032b657004220420");

    if let Ok(out) = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&path)
        .output()
    {
        assert!(
            out.status.success(),
            "openssl refuses the key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), key.public_pem());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--public-key` takes the PEM as served, with whatever whitespace a copy adds around it.
#[sqlx::test]
async fn verify_takes_a_public_key_pem_with_surrounding_whitespace(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..2).await;
    assert_eq!(publish(&app).await.0, StatusCode::CREATED);
    let (_, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    app.app.stop().await;
    let path = app.secret.with_file_name("public.pem");
    std::fs::write(
        &path,
        format!("\n  {}\n\n \t\n", key["pem"].as_str().unwrap()),
    )
    .unwrap();
    let (code, out) = verify_cli(&pool, &["--public-key", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signatures verified"), "{out}");
}

/// Past checkpoints are listed, a page at a time, smallest tree first, each with the text it
/// signed.
#[sqlx::test]
async fn past_checkpoints_are_listed_in_pages(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    let mut sizes = Vec::new();
    for i in 0..3 {
        app.freeze_holders(i..i + 1).await;
        let (status, cp) = publish(&app).await;
        assert_eq!(status, StatusCode::CREATED);
        sizes.push(cp["tree_size"].as_u64().unwrap());
    }
    assert_eq!(sizes, [2, 3, 4]);
    let auditor = app.auditor();
    let (status, page) = app.get(&auditor, "/v1/audit/checkpoints?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<u64> = page["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tree_size"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [2, 3]);
    assert_eq!(page["next_after"], 3);
    let text = page["checkpoints"][0]["signed_text"].as_str().unwrap();
    assert!(
        text.starts_with("regulator checkpoint v2\ntree_size 2\nroot "),
        "{text}"
    );
    let state_root = page["checkpoints"][0]["state_root"].as_str().unwrap();
    assert!(
        text.contains(&format!("\nstate_root {state_root}\n")),
        "{text}"
    );
    let (_, page) = app.get(&auditor, "/v1/audit/checkpoints?after=3").await;
    assert_eq!(page["checkpoints"][0]["tree_size"], 4);
    assert_eq!(page["checkpoints"].as_array().unwrap().len(), 1);
    let (_, page) = app.get(&auditor, "/v1/audit/checkpoints?after=4").await;
    assert!(page["checkpoints"].as_array().unwrap().is_empty());
    assert_eq!(page["next_after"], 4);
    let (status, _) = app
        .get(&app.regulator("US-SEC"), "/v1/audit/checkpoints")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.app.stop().await;
}

fn verify_proof(args: &[std::ffi::OsString]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["audit", "verify-proof"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Proofs saved from the API check offline against the saved checkpoints and key; a proof,
/// checkpoint or record altered by one byte does not.
#[sqlx::test]
async fn verify_proof_checks_saved_proofs_offline(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..3).await;
    let (_, old) = publish(&app).await;
    app.freeze_holders(3..7).await;
    let (_, new) = publish(&app).await;
    let auditor = app.auditor();
    let (_, key) = app.get(&auditor, "/v1/audit/public-key").await;
    let (status, inclusion) = app
        .get(&auditor, "/v1/audit/proofs/inclusion?seq=3&tree_size=8")
        .await;
    assert_eq!(status, StatusCode::OK, "{inclusion}");
    let (status, consistency) = app
        .get(&auditor, "/v1/audit/proofs/consistency?from=4&to=8")
        .await;
    assert_eq!(status, StatusCode::OK, "{consistency}");
    app.app.stop().await;
    let record: String = sqlx::query_scalar("SELECT record::text FROM ledger WHERE seq = 3")
        .fetch_one(&pool)
        .await
        .unwrap();

    let dir = app.secret.parent().unwrap().to_owned();
    let save = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let key = save("key.pem", key["pem"].as_str().unwrap().to_owned());
    let old_cp = save("old.json", old.to_string());
    let new_cp = save("new.json", new.to_string());
    let inclusion_file = save("inclusion.json", inclusion.to_string());
    let consistency_file = save("consistency.json", consistency.to_string());
    let record_file = save("record.json", record.clone());
    let os = |p: &std::path::PathBuf| p.as_os_str().to_owned();
    let flag = |f: &str| std::ffi::OsString::from(f);

    let inclusion_args = |proof: &std::path::PathBuf, cp: &std::path::PathBuf| {
        vec![
            flag("--proof"),
            os(proof),
            flag("--checkpoint"),
            os(cp),
            flag("--public-key"),
            os(&key),
            flag("--record"),
            os(&record_file),
        ]
    };
    let (code, out) = verify_proof(&inclusion_args(&inclusion_file, &new_cp));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("inclusion proof verified: record seq 3"),
        "{out}"
    );

    // Against the older checkpoint: another tree.
    let (code, out) = verify_proof(&inclusion_args(&inclusion_file, &old_cp));
    assert_eq!(code, 1, "{out}");
    // A sibling hash altered.
    let mut bad = inclusion.clone();
    let first = bad["audit_path"][0].as_str().unwrap().to_owned();
    let flipped = if first.starts_with('0') { "1" } else { "0" };
    bad["audit_path"][0] = json!(format!("{flipped}{}", &first[1..]));
    let bad_file = save("bad-inclusion.json", bad.to_string());
    let (code, out) = verify_proof(&inclusion_args(&bad_file, &new_cp));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another root"), "{out}");
    // A checkpoint whose root was changed: its signature no longer verifies.
    let mut forged = new.clone();
    forged["root"] = json!("ab".repeat(32));
    forged.as_object_mut().unwrap().remove("signed_text");
    let forged_cp = save("forged.json", forged.to_string());
    let (code, out) = verify_proof(&inclusion_args(&inclusion_file, &forged_cp));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not verify"), "{out}");
    // Another record.
    std::fs::write(&record_file, record.replace("SEC v. Acme", "SEC v. Acne")).unwrap();
    let (code, out) = verify_proof(&inclusion_args(&inclusion_file, &new_cp));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hashes to"), "{out}");

    let consistency_args = |old: &std::path::PathBuf| {
        vec![
            flag("--proof"),
            os(&consistency_file),
            flag("--checkpoint"),
            os(&new_cp),
            flag("--old-checkpoint"),
            os(old),
            flag("--public-key"),
            os(&key),
        ]
    };
    let (code, out) = verify_proof(&consistency_args(&old_cp));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the signed tree of 8 leaves") && out.contains("extends the signed tree of 4"),
        "{out}"
    );
    let (code, out) = verify_proof(&consistency_args(&forged_cp));
    assert_eq!(code, 1, "{out}");
    // Unreadable input is exit 2.
    let (code, _) = verify_proof(&[
        flag("--proof"),
        os(&key),
        flag("--checkpoint"),
        os(&new_cp),
        flag("--public-key"),
        os(&key),
    ]);
    assert_eq!(code, 2);
}
