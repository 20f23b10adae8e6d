//! A leading replica takes its own single orders in with the round that decides them: one
//! durable commit per order instead of two, with nothing lost when that round fails.

mod service;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use service::ledger::{assert_ledger_sound, scalar};
use service::{bond_freeze, on_the_first_insert, TestApp};
use sqlx::PgPool;

async fn register_bonds(app: &TestApp, n: usize) {
    for i in 0..n {
        app.register("ethereum", &format!("0xBOND-{i}"), "US", "security")
            .await;
    }
}

/// Waits until exactly one of `apps` leads; its index.
async fn leader_of(apps: &[&TestApp]) -> usize {
    for _ in 0..200 {
        let mut leading = Vec::new();
        for (i, app) in apps.iter().enumerate() {
            if app.leading().await {
                leading.push(i);
            }
        }
        if let [one] = leading[..] {
            return one;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no single replica took the lead within 5 s");
}

/// A replica with a conflict window of `window_ms` and `bonds` bonds registered, once it leads.
async fn leading_app(pool: &PgPool, window_ms: i64, bonds: usize) -> TestApp {
    let app = TestApp::spawn_with(pool.clone(), window_ms).await;
    register_bonds(&app, bonds).await;
    leader_of(&[&app]).await;
    app
}

/// Submits the freezes of `holders` on `assets` bonds through `app`, all at once; each answer.
async fn submit_all(app: &TestApp, prefix: &str, holders: usize, assets: usize) -> Vec<Value> {
    let token = app.regulator("US-SEC");
    let submissions = (0..holders).map(|i| {
        let body = bond_freeze(i % assets, &format!("0x{prefix}{i}"));
        let key = format!("{prefix}-{i}");
        let token = &token;
        async move { app.submit(token, &key, &body).await }
    });
    futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|(status, v)| {
            assert_eq!(status, StatusCode::CREATED, "{v}");
            v
        })
        .collect()
}

/// Waits (up to 5 s) until some order has a decision.
async fn wait_for_a_decision(pool: &PgPool) {
    for _ in 0..200 {
        if scalar(
            pool,
            "SELECT count(*) FROM decisions WHERE order_id IS NOT NULL",
        )
        .await
            > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no order was decided within 5 s");
}

/// How many of the orders whose holder starts with `prefix` were written by the same
/// transaction as their decision (`xmin`, the inserting transaction), and how many not.
async fn written_with_their_decision(pool: &PgPool, prefix: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE o.xmin::text = d.xmin::text),
                count(*) FILTER (WHERE o.xmin::text <> d.xmin::text)
         FROM orders o JOIN decisions d USING (order_id)
         WHERE o.holder LIKE $1 || '%'",
    )
    .bind(format!("0x{prefix}"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The leader's single orders are written by the transaction that records their decisions,
/// so each is one durable commit; a follower's are written by intake first, and the leader
/// decides them from the queue. Either way the answer is the decision, and a resubmission
/// with the same key is the same order.
#[sqlx::test]
async fn a_leaders_single_orders_are_written_with_their_decisions(pool: PgPool) {
    let a = TestApp::spawn_with(pool.clone(), 0).await;
    let b = TestApp::spawn_with(pool.clone(), 0).await;
    register_bonds(&a, 3).await;
    let apps = [&a, &b];
    let leader = leader_of(&apps).await;
    let (leader, follower) = (apps[leader], apps[1 - leader]);

    let answers = submit_all(leader, "L", 24, 3).await;
    assert!(answers
        .iter()
        .all(|v| v["decision"]["outcome"] == "APPLIED"));
    assert_eq!(
        written_with_their_decision(&pool, "L").await,
        (24, 0),
        "every order the leader took in was written by its decision's transaction"
    );
    submit_all(follower, "F", 8, 3).await;
    assert_eq!(
        written_with_their_decision(&pool, "F").await,
        (0, 8),
        "a follower's intake writes its orders before the leader decides them"
    );

    // The same key and body again: the same order, decided once.
    let token = leader.regulator("US-SEC");
    let (status, again) = leader.submit(&token, "L-0", &bond_freeze(0, "0xL0")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["order_id"], answers[0]["order_id"]);
    // The same key with another body: refused, nothing written.
    let (status, refused) = leader.submit(&token, "L-0", &bond_freeze(1, "0xL0")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["type"],
        "urn:regulator:problem:idempotency-key-reused"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM orders").await, 32);

    assert_eq!(scalar(&pool, "SELECT count(*) FROM intake_queue").await, 0);
    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 32);
    a.app.stop().await;
    b.app.stop().await;
}

/// A round that took orders in and then fails to commit writes none of them; intake takes
/// them back and writes them itself, and they are decided once, by the leader that stands
/// again. The request is answered with its decision as if nothing had happened.
#[sqlx::test]
async fn a_round_that_fails_gives_the_orders_it_took_in_back_to_intake(pool: PgPool) {
    let app = leading_app(&pool, 0, 1).await;
    // The first commit that records the poisoned holder fails; a sequence counts the tries,
    // outside the rollback.
    on_the_first_insert(
        &pool,
        "decisions",
        "0xPOISON",
        "RAISE EXCEPTION 'the commit of this round fails';",
    )
    .await;

    let token = app.regulator("US-SEC");
    let (status, answer) = app
        .submit(&token, "poison", &bond_freeze(0, "0xPOISON"))
        .await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
        "{status} {answer}"
    );
    for _ in 0..200 {
        if scalar(
            &pool,
            "SELECT count(*) FROM decisions WHERE order_id IS NOT NULL",
        )
        .await
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        scalar(&pool, "SELECT last_value FROM first_inserts").await,
        2,
        "the round failed once, then the order was decided"
    );
    assert_eq!(
        scalar(&pool, "SELECT epoch FROM ledger_head").await,
        2,
        "the leader stepped down after the failed commit and led again"
    );
    assert_eq!(
        written_with_their_decision(&pool, "POISON").await,
        (0, 1),
        "intake wrote the order the failed round had taken in"
    );
    let taken_back = app
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("regulator_intake_taken_back_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(taken_back >= 1.0, "taken back: {taken_back}");

    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 1, "decided exactly once");
    assert_eq!(records[0].outcome.as_str(), "APPLIED");
    assert_eq!(
        records[0].order.as_ref().map(|o| o.id.to_string()),
        answer["order_id"].as_str().map(str::to_owned)
    );
    app.app.stop().await;
}

/// With a conflict window, the round that takes the leader's orders in cannot decide them yet
/// (their window has just opened): it queues them in its own transaction and commits them, and
/// a later round decides them from the queue, each once, within the window's group.
#[sqlx::test]
async fn orders_a_round_takes_in_but_cannot_decide_yet_wait_in_the_queue(pool: PgPool) {
    let app = leading_app(&pool, 200, 1).await;

    let answers = submit_all(&app, "W", 6, 1).await;
    assert!(answers
        .iter()
        .all(|v| v["decision"]["outcome"] == "APPLIED"));
    assert_eq!(
        written_with_their_decision(&pool, "W").await,
        (0, 6),
        "taken in and committed before their window closed, decided after"
    );
    let groups: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (record::jsonb->>'group')::bigint AS g, count(*)
         FROM decisions WHERE order_id IS NOT NULL GROUP BY g ORDER BY g",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        groups.len() < 6,
        "orders inside one window are decided together: {groups:?}"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM intake_queue").await, 0);
    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 6, "each decided once");
    app.app.stop().await;
}

/// A leader deposed while its round holds orders it took in (a newer epoch is recorded while
/// the round is under way) writes nothing of that round: its compare-and-set fails, the orders
/// go back to intake, and the leader that stands next decides each once.
#[sqlx::test]
async fn a_leader_deposed_mid_round_writes_none_of_the_orders_it_took_in(pool: PgPool) {
    let app = leading_app(&pool, 0, 1).await;
    // The first insert of the marked order (the round taking it in) waits, so that the test
    // can move the epoch on meanwhile; a sequence counts the inserts, outside any rollback.
    on_the_first_insert(&pool, "orders", "0xDEPOSED", "PERFORM pg_sleep(0.6);").await;
    let epoch = scalar(&pool, "SELECT epoch FROM ledger_head").await;

    let token = app.regulator("US-SEC");
    let move_the_epoch_on = async {
        for _ in 0..100 {
            if scalar(&pool, "SELECT last_value FROM first_inserts").await >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another leader's epoch, as a standby that took over would record it.
        sqlx::query("UPDATE ledger_head SET epoch = epoch + 1")
            .execute(&pool)
            .await
            .unwrap();
    };
    let marked = bond_freeze(0, "0xDEPOSED");
    let ((status, answer), ()) =
        tokio::join!(app.submit(&token, "deposed", &marked), move_the_epoch_on);
    assert!(
        status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
        "{status} {answer}"
    );
    wait_for_a_decision(&pool).await;
    assert!(
        scalar(&pool, "SELECT epoch FROM ledger_head").await > epoch + 1,
        "the deposed leader stood again in a newer epoch"
    );
    assert_eq!(
        written_with_their_decision(&pool, "DEPOSED").await,
        (0, 1),
        "the deposed round wrote nothing; intake wrote the order"
    );
    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 1, "decided exactly once");
    assert_eq!(
        records[0].order.as_ref().map(|o| o.id.to_string()),
        answer["order_id"].as_str().map(str::to_owned)
    );
    app.app.stop().await;
}
