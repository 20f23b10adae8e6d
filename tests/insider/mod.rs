//! The insider of the audit stories: a superuser who turns the append-only triggers off,
//! rewrites a suffix of the log with a consistent hash chain, and drops the stored tree and
//! checkpoints that would betray it; and `regulator audit verify` run as a process.
#![allow(dead_code)]

use std::process::Command;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub fn database_url(pool: &PgPool) -> String {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

pub fn verify_cli(pool: &PgPool, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["audit", "verify", "--database-url", &database_url(pool)])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// As a superuser with the append-only triggers off: rewrites every record from `from` on
/// (another court reference), recomputing each hash and `prev_hash` link and the head, so
/// that the chain is consistent again.
pub async fn rewrite_suffix(pool: &PgPool, from: i64) {
    let mut tx = pool.begin().await.unwrap();
    for table in ["decisions", "merkle_nodes", "checkpoints"] {
        sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let mut prev: Vec<u8> = sqlx::query_scalar("SELECT hash FROM ledger WHERE seq = $1")
        .bind(from - 1)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, record::text, hash FROM decisions WHERE seq >= $1 ORDER BY seq",
    )
    .bind(from)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut old_prev: Option<Vec<u8>> = None;
    for (seq, text, hash) in rows {
        let mut forged = text.replace("SEC v. Acme", "SEC v. Acne");
        if let Some(old) = &old_prev {
            forged = forged.replace(&hex::encode(old), &hex::encode(&prev));
        }
        assert_ne!(forged, text);
        let new_hash = Sha256::digest(forged.as_bytes()).to_vec();
        sqlx::query("UPDATE decisions SET record = $1::json, hash = $2 WHERE seq = $3")
            .bind(&forged)
            .bind(&new_hash)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .unwrap();
        old_prev = Some(hash);
        prev = new_hash;
    }
    sqlx::query("UPDATE ledger_head SET hash = $1")
        .bind(&prev)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Drops the checkpoints of trees larger than `checkpoints_upto`, and the stored subtrees
/// reaching beyond leaf `tree_upto`, setting the tree's size there.
pub async fn drop_evidence(pool: &PgPool, checkpoints_upto: i64, tree_upto: i64) {
    let mut tx = pool.begin().await.unwrap();
    for table in ["merkle_nodes", "checkpoints"] {
        sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("DELETE FROM checkpoints WHERE tree_size > $1")
        .bind(checkpoints_upto)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM merkle_nodes WHERE (idx + 1) << level > $1")
        .bind(tree_upto)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE merkle_head SET size = $1")
        .bind(tree_upto)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
