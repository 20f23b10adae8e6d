//! Signed checkpoints of the Merkle tree over the decision log, and proofs from the API that an
//! auditor verifies on their own: every decision is in the signed tree, and the older signed
//! tree is a prefix of the newer one.

mod service;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use regulator::audit::{verify, CheckpointCheck};
use regulator::auth::Role;
use regulator::domain::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use service::TestApp;

async fn publish(app: &TestApp) -> Value {
    let response = app
        .client
        .post(app.url("/v1/audit/checkpoints"))
        .bearer_auth(app.auditor())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

fn unhex(v: &Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(unhex).collect()
}

/// The record hashes as the database holds the records (the first policy activation, then the
/// decisions): SHA-256 of each record's text.
async fn record_hashes(pool: &PgPool) -> Vec<Hash> {
    let texts: Vec<String> = sqlx::query_scalar("SELECT record::text FROM ledger ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap();
    texts
        .iter()
        .map(|t| Sha256::digest(t.as_bytes()).into())
        .collect()
}

#[sqlx::test]
async fn proofs_from_the_api_verify_against_signed_checkpoints(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..5).await;
    let first = publish(&app).await;
    app.freeze_holders(5..11).await;
    let second = publish(&app).await;
    // The log opens with the first policy activation.
    assert_eq!(
        (first["tree_size"].as_u64(), second["tree_size"].as_u64()),
        (Some(6), Some(12))
    );

    // The checkpoints are signed by the key the API publishes.
    let (status, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["algorithm"], "Ed25519");
    let raw: [u8; 32] = STANDARD
        .decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = VerifyingKey::from_bytes(&raw).unwrap();
    for cp in [&first, &second] {
        let signature: [u8; 64] = STANDARD
            .decode(cp["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let text = cp["signed_text"].as_str().unwrap();
        public
            .verify(text.as_bytes(), &Signature::from_bytes(&signature))
            .expect("the checkpoint's signature verifies");
        assert!(text.contains(&format!("tree_size {}\n", cp["tree_size"])));
        assert!(text.contains(&format!("root {}\n", cp["root"].as_str().unwrap())));
        assert_eq!(cp["key_id"], key["key_id"]);
    }
    let (_, latest) = app
        .get(&app.auditor(), "/v1/audit/checkpoints/latest")
        .await;
    assert_eq!(latest, second);

    // Every record is in both trees, by proofs the auditor checks with their own data.
    let records = record_hashes(&pool).await;
    let (root6, root12) = (unhex(&first["root"]), unhex(&second["root"]));
    for (i, record) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        for (size, root) in [(6u64, root6), (12, root12)] {
            if seq > size {
                continue;
            }
            let (status, proof) = app
                .get(
                    &app.auditor(),
                    &format!("/v1/audit/proofs/inclusion?seq={seq}&tree_size={size}"),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{proof}");
            assert_eq!(unhex(&proof["record_hash"]), *record);
            let path = hashes(&proof["audit_path"]);
            verify_inclusion(seq - 1, size, &leaf_hash(record), &path, &root)
                .unwrap_or_else(|e| panic!("seq {seq} in {size}: {e}"));
            // A tampered path does not.
            if let Some(first_hash) = path.first() {
                let mut tampered = path.clone();
                tampered[0] = Sha256::digest(first_hash).into();
                assert!(
                    verify_inclusion(seq - 1, size, &leaf_hash(record), &tampered, &root).is_err()
                );
            }
        }
    }
    // The default tree is the latest checkpoint's.
    let (_, proof) = app
        .get(&app.auditor(), "/v1/audit/proofs/inclusion?seq=3")
        .await;
    assert_eq!(proof["tree_size"], 12);

    let (status, proof) = app
        .get(&app.auditor(), "/v1/audit/proofs/consistency?from=6&to=12")
        .await;
    assert_eq!(status, StatusCode::OK);
    verify_consistency(6, 12, &root6, &root12, &hashes(&proof["proof"]))
        .expect("the older signed tree is a prefix of the newer");
    assert!(verify_consistency(6, 12, &root12, &root6, &hashes(&proof["proof"])).is_err());

    // And the database check agrees, signatures included.
    let verification = verify(&pool, Some(&public)).await.unwrap();
    assert_eq!(
        verification.checkpoints,
        CheckpointCheck::Sound {
            checkpoints: 2,
            signatures_checked: true
        }
    );
}

#[sqlx::test]
async fn proof_requests_are_checked(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    let (status, _) = app
        .get(&app.auditor(), "/v1/audit/checkpoints/latest")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing published yet");
    app.freeze_holders(0..3).await;
    publish(&app).await;
    for (path, status) in [
        ("/v1/audit/proofs/inclusion?seq=4&tree_size=3", 422),
        ("/v1/audit/proofs/inclusion?seq=0", 422),
        ("/v1/audit/proofs/inclusion?seq=1&tree_size=100", 422),
        ("/v1/audit/proofs/consistency?from=0&to=3", 422),
        ("/v1/audit/proofs/consistency?from=3&to=2", 422),
        ("/v1/audit/proofs/inclusion?seq=x", 422),
    ] {
        let (got, problem) = app.get(&app.auditor(), path).await;
        assert_eq!(got.as_u16(), status, "{path}: {problem}");
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:regulator:problem:"));
    }
    let (status, _) = app
        .get(
            &app.token("US-SEC", &[Role::Regulator]),
            "/v1/audit/public-key",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A checkpoint whose root was rewritten, as a superuser could: verify names it.
#[sqlx::test]
async fn a_forged_checkpoint_is_named(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    app.freeze_holders(0..4).await;
    publish(&app).await;
    let (_, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    let raw: [u8; 32] = STANDARD
        .decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = VerifyingKey::from_bytes(&raw).unwrap();
    app.app.stop().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE checkpoints DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE checkpoints SET signed_at = signed_at + interval '1 day'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE checkpoints ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let verification = verify(&pool, Some(&public)).await.unwrap();
    assert!(
        matches!(
            &verification.checkpoints,
            CheckpointCheck::Bad { tree_size: 5, reason } if reason.contains("signature")
        ),
        "{verification:?}"
    );
}
