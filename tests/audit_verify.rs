//! `regulator audit verify` against a ledger that someone with superuser rights altered behind
//! the engine's back, with the append-only triggers disabled: it names the altered entry.

mod service;

use std::process::Command;

use regulator::audit::{verify_chain, ChainCheck};
use regulator::domain::event::Contradiction;
use regulator::domain::ledger::BrokenLink;
use serde_json::json;
use service::{order, TestApp};
use sqlx::PgPool;

/// Five decisions on five holders of the ACME bond: seqs 2 to 6, after the first policy
/// activation at seq 1.
async fn five_decisions(pool: &PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xACME-BOND-2031", "US", "security")
        .await;
    for i in 0..5 {
        let mut body = order(
            "ethereum",
            "0xACME-BOND-2031",
            "court_order",
            "SEC v. Acme",
            json!({"kind": "FREEZE"}),
        );
        body["target"]["holder"] = json!(format!("0xH{i}"));
        let (status, _) = app
            .submit(&app.regulator("US-SEC"), &format!("k{i}"), &body)
            .await;
        assert_eq!(status, 201);
    }
    app.app.stop().await;
}

/// Runs `sql` as the superuser with the ledger's triggers off, as an insider could.
async fn tamper(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE decisions DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE decisions ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn database_url(pool: &PgPool) -> String {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

fn verify_cli(pool: &PgPool) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["audit", "verify", "--database-url", &database_url(pool)])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[sqlx::test]
async fn an_untouched_ledger_verifies(pool: PgPool) {
    five_decisions(&pool).await;
    let check = verify_chain(&pool).await.unwrap();
    assert!(
        matches!(check, ChainCheck::Sound { records: 6, .. }),
        "{check:?}"
    );
    let (code, out) = verify_cli(&pool);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hash chain sound: 6 records"), "{out}");
}

/// An outcome rewritten in place: the record no longer hashes to its stored hash.
#[sqlx::test]
async fn a_rewritten_record_is_named(pool: PgPool) {
    five_decisions(&pool).await;
    tamper(
        &pool,
        "UPDATE decisions SET record = replace(record::text, '\"APPLIED\"', '\"REJECTED\"')::json
         WHERE seq = 3",
    )
    .await;
    let check = verify_chain(&pool).await.unwrap();
    assert!(
        matches!(
            check,
            ChainCheck::Broken {
                seq: 3,
                reason: BrokenLink::HashMismatch { .. }
            }
        ),
        "{check:?}"
    );
    let (code, out) = verify_cli(&pool);
    assert_eq!(code, 1);
    assert!(out.starts_with("first bad entry: seq 3:"), "{out}");
}

/// A record rewritten with its hash recomputed, as a careful forger would: the next record's
/// `prev_hash` no longer names it.
#[sqlx::test]
async fn a_rewritten_record_with_a_fresh_hash_breaks_the_next_link(pool: PgPool) {
    five_decisions(&pool).await;
    tamper(
        &pool,
        "UPDATE decisions
         SET record = replace(record::text, '\"APPLIED\"', '\"REJECTED\"')::json,
             hash = sha256(convert_to(replace(record::text, '\"APPLIED\"', '\"REJECTED\"'), 'UTF8'))
         WHERE seq = 2",
    )
    .await;
    let check = verify_chain(&pool).await.unwrap();
    assert!(
        matches!(
            check,
            ChainCheck::Broken {
                seq: 3,
                reason: BrokenLink::WrongPredecessor { .. }
            }
        ),
        "{check:?}"
    );
}

/// A decision removed from the middle, and one removed from the end.
#[sqlx::test]
async fn removed_records_are_named(pool: PgPool) {
    five_decisions(&pool).await;
    tamper(&pool, "DELETE FROM decisions WHERE seq = 6").await;
    let check = verify_chain(&pool).await.unwrap();
    assert!(
        matches!(&check, ChainCheck::HeadMismatch { head, last } if head.seq == 6 && last.seq == 5),
        "{check:?}"
    );
    tamper(&pool, "DELETE FROM decisions WHERE seq = 3").await;
    let check = verify_chain(&pool).await.unwrap();
    assert_eq!(
        check,
        ChainCheck::Broken {
            seq: 4,
            reason: BrokenLink::Gap { expected: 3 }
        }
    );
    let (code, out) = verify_cli(&pool);
    assert_eq!(code, 1);
    assert!(out.contains("seq 4: expected seq 3"), "{out}");
}

/// The last decision rewritten to name another policy version, its hash and the ledger head
/// recomputed so that the chain still links: the activation trail names it.
#[sqlx::test]
async fn a_decision_claiming_another_policy_version_is_named(pool: PgPool) {
    five_decisions(&pool).await;
    let forged = "replace(record::text, d.policy_version, repeat('f', 64))";
    tamper(
        &pool,
        &format!(
            "UPDATE decisions d SET record = {forged}::json,
                 hash = sha256(convert_to({forged}, 'UTF8'))
             WHERE seq = 6"
        ),
    )
    .await;
    sqlx::query("UPDATE ledger_head SET hash = (SELECT hash FROM decisions WHERE seq = 6)")
        .execute(&pool)
        .await
        .unwrap();
    let check = verify_chain(&pool).await.unwrap();
    assert!(
        matches!(
            &check,
            ChainCheck::Broken {
                seq: 6,
                reason: BrokenLink::Contradicts(Contradiction::Policy { recorded, .. })
            } if *recorded == "f".repeat(64)
        ),
        "{check:?}"
    );
    let (code, out) = verify_cli(&pool);
    assert_eq!(code, 1);
    assert!(
        out.contains("seq 6: decided by policy version fff"),
        "{out}"
    );
}
