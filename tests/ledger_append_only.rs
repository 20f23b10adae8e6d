//! The database itself keeps the ledger append-only: UPDATE, DELETE and TRUNCATE on the
//! decision log and the orders are refused, and the refused statement changes nothing.

mod service;

use serde_json::Value;
use service::{sec_freeze, TestApp, BOND};
use sqlx::PgPool;

async fn refused(pool: &PgPool, sql: &str) -> String {
    let error = sqlx::query(sql)
        .execute(pool)
        .await
        .expect_err("the ledger refuses it");
    error.to_string()
}

/// The SEC's freeze of the bond, decided APPLIED by a service that is then stopped.
async fn one_freeze_decided(pool: &PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    let (_, decided) = app
        .submit(&app.regulator("US-SEC"), "sec-1", &sec_freeze())
        .await;
    assert_eq!(decided["decision"]["outcome"], "APPLIED");
    app.app.stop().await;
}

#[sqlx::test]
async fn the_decision_log_and_the_orders_refuse_update_delete_and_truncate(pool: PgPool) {
    one_freeze_decided(&pool).await;
    let record_before: String = sqlx::query_scalar("SELECT record::text FROM decisions")
        .fetch_one(&pool)
        .await
        .unwrap();

    for sql in [
        "UPDATE decisions SET outcome = 'REJECTED'",
        "DELETE FROM decisions",
        "TRUNCATE decisions CASCADE",
        "UPDATE orders SET issuer = 'US-DOJ'",
        "DELETE FROM orders",
        "TRUNCATE orders CASCADE",
    ] {
        let message = refused(&pool, sql).await;
        assert!(message.contains("append-only"), "{sql}: {message}");
    }

    let record_after: String = sqlx::query_scalar("SELECT record::text FROM decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(record_after, record_before);
    let issuer: String = sqlx::query_scalar("SELECT issuer FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(issuer, "US-SEC");
    let record: Value = serde_json::from_str(&record_after).unwrap();
    assert_eq!(record["outcome"], "APPLIED");
}

/// Orders and decisions refer to their asset without a foreign key (it cost a row lock per row
/// on the write path): an asset is never removed instead, so no reference can dangle.
#[sqlx::test]
async fn a_registered_asset_is_never_removed(pool: PgPool) {
    one_freeze_decided(&pool).await;

    for sql in ["DELETE FROM assets", "TRUNCATE assets CASCADE"] {
        let message = refused(&pool, sql).await;
        assert!(message.contains("never removed"), "{sql}: {message}");
    }
    let assets: i64 = sqlx::query_scalar("SELECT count(*) FROM assets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(assets, 1);
}

/// The record is stored as text (migration 0018), but a record that is not JSON is still
/// refused by the database, and a refused insert adds nothing to the policy index either.
#[sqlx::test]
async fn a_decision_record_that_is_not_json_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.app.stop().await;
    let error = refused(
        &pool,
        "INSERT INTO decisions (seq, expired_hold, chain, asset, kind, issuer, outcome,
                                reason_code, priority, policy_version, target_version,
                                decided_at, record, hash, policies_indexed)
         SELECT 1, gen_random_uuid(), 'ethereum', '0xBOND', 'FREEZE', 'US-SEC', 'APPLIED',
                'expired', 0, hash, 0, now(), '{\"determining_policies\": [\"p\"], oops', '\\x00',
                true
         FROM policy_versions",
    )
    .await;
    assert!(error.contains("json"), "{error}");
    let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM decision_policies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(indexed, 0);
}

/// A sequencer of an older release, still leading after migration 0022, left a decision's
/// policy index to a trigger that is gone: its insert (which does not say the index was
/// written) is refused, so an auditor's `policy=` query cannot silently miss a decision.
#[sqlx::test]
async fn a_decision_whose_policy_index_was_not_written_is_refused(pool: PgPool) {
    one_freeze_decided(&pool).await;
    // A copy of the last decision for the next seq, under the active version, inserted with
    // `extra` more columns set to `values`.
    let next = |extra: &str, values: &str| {
        format!(
            "INSERT INTO decisions (seq, order_id, expired_hold, chain, asset, holder, kind,
                                    issuer, outcome, reason_code, priority, policy_version,
                                    target_version, decided_at, record, hash{extra})
             SELECT seq + 1, NULL, gen_random_uuid(), chain, asset, holder, kind, issuer,
                    outcome, reason_code, priority, policy_version, target_version,
                    decided_at, record, hash{values}
             FROM decisions ORDER BY seq DESC LIMIT 1"
        )
    };
    // The older release's insert does not name the column.
    let error = refused(&pool, &next("", "")).await;
    assert!(error.contains("policies_indexed"), "{error}");
    let error = refused(&pool, &next(", policies_indexed", ", false")).await;
    assert!(error.contains("decisions_policies_indexed"), "{error}");
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(decisions, 1);
}
