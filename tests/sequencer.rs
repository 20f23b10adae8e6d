//! The sequencer's guarantees on a real database: one writer at a time, a deposed leader cannot
//! write, a killed leader is replaced with nothing lost or duplicated, the sequence is gapless,
//! the hash chain holds, and the state tables equal a replay of the log.

mod service;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regulator::domain::ledger::Head;
use regulator::domain::AssetKey;
use regulator::storage;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::ledger::{assert_ledger_sound, scalar};
use service::{bond_freeze, on_the_first_insert, TestApp};
use sqlx::PgPool;

/// Freezes of distinct holders on `assets` bonds, so that each is APPLIED and many groups form.
fn freeze(asset: usize, holder: usize) -> Value {
    bond_freeze(asset, &format!("0xH{holder}"))
}

async fn register_bonds(app: &TestApp, n: usize) {
    for i in 0..n {
        app.register("ethereum", &format!("0xBOND-{i}"), "US", "security")
            .await;
    }
}

/// Submits `count` orders through `app`, 16 at a time; returns the order ids.
async fn submit_many(app: &TestApp, prefix: &str, count: usize, assets: usize) -> Vec<String> {
    submit_many_with_status(app, prefix, count, assets)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Like [`submit_many`], with each answer's status.
async fn submit_many_with_status(
    app: &TestApp,
    prefix: &str,
    count: usize,
    assets: usize,
) -> Vec<(String, StatusCode)> {
    let token = app.regulator("US-SEC");
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    for i in 0..count {
        let client = app.client.clone();
        let url = app.url("/v1/orders");
        let token = token.clone();
        let body = freeze(i % assets, i);
        let key = format!("{prefix}-{i}");
        handles.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(
                status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
                "{status} {v}"
            );
            (v["order_id"].as_str().unwrap().to_owned(), status)
        }));
        if handles.len() >= 16 {
            for h in handles.drain(..) {
                ids.push(h.await.unwrap());
            }
        }
    }
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids
}

async fn wait_until_decided(pool: &PgPool, orders: usize) {
    for _ in 0..200 {
        let decided = scalar(
            pool,
            "SELECT count(*) FROM decisions WHERE order_id IS NOT NULL",
        )
        .await;
        if decided as usize >= orders {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not every order was decided within 10 s");
}

/// Registers bond `n` in storage directly (no service running); its key.
async fn register_bond_in(pool: &PgPool, n: usize) -> AssetKey {
    use regulator::domain::{AssetClass, AssetId, ChainId, JurisdictionCode, RegisteredAsset};
    let key = AssetKey {
        chain: ChainId::parse("ethereum").unwrap(),
        asset: AssetId::parse(format!("0xBOND-{n}")).unwrap(),
    };
    storage::upsert_asset(
        pool,
        &RegisteredAsset {
            key: key.clone(),
            issuer_jurisdiction: JurisdictionCode::parse("US").unwrap(),
            asset_class: AssetClass::parse("security").unwrap(),
        },
    )
    .await
    .unwrap();
    key
}

/// An SEC court-ordered freeze of `holder` on `key`, ready for [`storage::intake`].
fn freeze_order(key: &AssetKey, holder: &str, idempotency_key: String) -> storage::NewOrder {
    use regulator::domain::{
        HolderAddress, Instruction, Instrument, IssuerId, LegalBasis, OrderId, Target,
    };
    storage::NewOrder {
        id: OrderId::new(),
        issuer: IssuerId::parse("US-SEC").unwrap(),
        idempotency_key,
        request_hash: [0; 32],
        target: Target {
            asset: key.clone(),
            holder: Some(HolderAddress::parse(holder).unwrap()),
        },
        body: storage::OrderBody {
            legal_basis: LegalBasis {
                instrument: Instrument::parse("court_order").unwrap(),
                reference: "SEC v. Many".into(),
            },
            instruction: Instruction::Freeze { amount: None },
        },
    }
}

/// Takes in `n` freezes of holders `0xH0`… on `key` in one intake statement (one arrival
/// time), keyed `<prefix>-<i>`: the orders, in input order.
async fn take_in_freezes(
    pool: &PgPool,
    key: &AssetKey,
    n: usize,
    prefix: &str,
) -> Vec<storage::NewOrder> {
    let orders: Vec<storage::NewOrder> = (0..n)
        .map(|i| freeze_order(key, &format!("0xH{i}"), format!("{prefix}-{i}")))
        .collect();
    storage::intake(pool, &orders, storage::Announce::Everyone)
        .await
        .unwrap();
    orders
}

/// Runs a bare sequencer (no HTTP service) with `config` on the policies of `policies/` until
/// `orders` orders are decided, then stops it.
async fn sequence_until_decided(
    pool: &PgPool,
    config: regulator::sequencer::SequencerConfig,
    orders: usize,
) {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    regulator::app::import_policies(pool, &policies)
        .await
        .unwrap();
    let sequencer = regulator::sequencer::Sequencer::new(
        pool.clone(),
        std::sync::Arc::new(regulator::hub::Hub::new(0)),
        config,
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(sequencer.run(stopped));
    wait_until_decided(pool, orders).await;
    stop.send_replace(true);
    running.await.unwrap();
}

/// Two replicas on one database: both take orders, exactly one sequences them, and the log is
/// one gapless, unbroken chain.
#[sqlx::test]
async fn two_sequencers_on_one_database_never_both_write(pool: PgPool) {
    let a = TestApp::spawn_with(pool.clone(), 5).await;
    let b = TestApp::spawn_with(pool.clone(), 5).await;
    register_bonds(&a, 8).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        [a.leading().await, b.leading().await]
            .iter()
            .filter(|l| **l)
            .count(),
        1,
        "exactly one leader"
    );

    let (ids_a, ids_b) = tokio::join!(submit_many(&a, "a", 150, 8), submit_many(&b, "b", 150, 8));
    wait_until_decided(&pool, 300).await;
    let records = assert_ledger_sound(&pool).await;
    let decided: HashSet<String> = records
        .iter()
        .filter_map(|r| r.order.as_ref().map(|o| o.id.to_string()))
        .collect();
    for id in ids_a.iter().chain(&ids_b) {
        assert!(decided.contains(id), "order {id} has a decision");
    }
    let epochs = scalar(&pool, "SELECT epoch FROM ledger_head").await;
    assert_eq!(epochs, 1, "leadership never changed hands");
    a.app.stop().await;
    b.app.stop().await;
}

/// The queue is inserted into and deleted from all day, and between two vacuums its dead rows
/// make the planner think it is large. The fetch must still look each pending order and its
/// asset up by key, never read the whole of `orders` (which only grows) or `assets`: with
/// 150,000 dead queue rows, 2,000 assets and 20,000 orders, a plan free to choose scanned every
/// asset (and with a bench's tables, hashed every order) to fetch three.
#[sqlx::test]
async fn the_fetch_reads_no_more_of_the_orders_than_it_fetches(pool: PgPool) {
    let key = register_bond_in(&pool, 0).await;
    sqlx::raw_sql(
        "INSERT INTO assets (chain, asset, issuer_jurisdiction, asset_class)
         SELECT 'ethereum', '0xOTHER-' || i, 'US', 'security' FROM generate_series(1, 2000) i;
         INSERT INTO orders (order_id, issuer, idempotency_key, request_hash, chain, asset,
                             holder, kind, intake_at, body)
         SELECT gen_random_uuid(), 'US-SEC', 'old-' || i, '\\x00', 'ethereum', '0xBOND-0',
                '0xOLD', 'FREEZE', now() - interval '1 day', '{}'
         FROM generate_series(1, 20000) i;
         INSERT INTO intake_queue (order_id, chain, asset, intake_at)
         SELECT gen_random_uuid(), 'ethereum', '0xBOND-0', now() - interval '1 hour'
         FROM generate_series(1, 150000);
         DELETE FROM intake_queue;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let orders = take_in_freezes(&pool, &key, 3, "pending").await;

    // The transaction's own scan counters: nothing to wait for the statistics to be flushed.
    let mut tx = pool.begin().await.unwrap();
    let work = storage::fetch_work(&mut tx, 5_000, false, &[], None)
        .await
        .unwrap();
    let fetched: Vec<_> = work.pending.iter().map(|p| p.order.id).collect();
    assert_eq!(
        fetched,
        orders.iter().map(|o| o.id).collect::<Vec<_>>(),
        "the pending orders, in arrival order"
    );
    for table in ["orders", "assets"] {
        let scans: i64 = sqlx::query_scalar("SELECT pg_stat_get_xact_numscans($1::regclass)")
            .bind(table)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(scans, 0, "no sequential scan of {table}");
    }
}

/// The leader vacuums the intake queue itself, every second: autovacuum comes by once a
/// minute, and until then every fetch reads past the queue's dead rows.
#[sqlx::test]
async fn the_leader_vacuums_the_intake_queue(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    register_bonds(&app, 2).await;
    submit_many(&app, "vacuumed", 4, 2).await;
    let mut vacuums = 0;
    for _ in 0..100 {
        vacuums = scalar(
            &pool,
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'intake_queue'",
        )
        .await;
        if vacuums >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vacuums >= 2, "vacuumed {vacuums} times in 10 s");
    app.app.stop().await;
}

/// Only a role that owns the queue (or a superuser) may vacuum it; Postgres would answer
/// anyone else's VACUUM with a warning, so the leader asks first, once.
#[sqlx::test]
async fn only_the_queues_owner_may_vacuum_it(pool: PgPool) {
    assert!(storage::may_vacuum_intake_queue(&pool).await.unwrap());
    // Roles are the cluster's, not the test database's: a name of this test's own.
    let role = format!("queue_reader_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&pool)
        .await
        .unwrap();
    let options = (*pool.connect_options()).clone().username(&role);
    let reader = PgPool::connect_with(options).await.unwrap();
    let may = storage::may_vacuum_intake_queue(&reader).await;
    reader.close().await;
    sqlx::raw_sql(&format!("DROP ROLE {role}"))
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        !may.unwrap(),
        "a role that does not own the queue may not vacuum it"
    );
}

/// Intake announces new orders (`NOTIFY regulator_intake`) only from a replica that does not
/// lead. The leader's own sequencer is woken in process; an intake that notified would wait
/// for the sequencer's commit, WAL flush and all (Postgres serializes notifying commits). An
/// order taken in by a follower is announced, so the leader does not wait for its poll.
#[sqlx::test]
async fn only_a_follower_announces_the_orders_it_takes_in(pool: PgPool) {
    let a = TestApp::spawn_with(pool.clone(), 0).await;
    let b = TestApp::spawn_with(pool.clone(), 0).await;
    register_bonds(&a, 2).await;
    let mut leader = None;
    for _ in 0..100 {
        match (a.leading().await, b.leading().await) {
            (true, false) => leader = Some((&a, &b)),
            (false, true) => leader = Some((&b, &a)),
            _ => {}
        }
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, follower) = leader.expect("one replica leads");
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("regulator_intake").await.unwrap();

    submit_many(leader, "at-leader", 3, 2).await;
    // Notifications arrive in commit order: had the leader's intake announced, its empty
    // payload would come before this one.
    sqlx::query("SELECT pg_notify('regulator_intake', 'after the leader took orders')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        next_payload(&mut listener).await,
        "after the leader took orders",
        "the leader's intake announced nothing"
    );

    submit_many(follower, "at-follower", 3, 2).await;
    assert_eq!(
        next_payload(&mut listener).await,
        "",
        "the follower's intake is announced"
    );
    wait_until_decided(&pool, 6).await;
    assert_ledger_sound(&pool).await;
    a.app.stop().await;
    b.app.stop().await;
}

/// The payload of the next notification on `listener`, which must come within 10 s.
async fn next_payload(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap()
        .payload()
        .to_owned()
}

/// A leader that lost its lock (its connection died) still believes it leads; its commit is
/// refused by the compare-and-set on the ledger head and writes nothing.
#[sqlx::test]
async fn a_deposed_leader_cannot_write(pool: PgPool) {
    let mut old = pool.acquire().await.unwrap().detach();
    let (old_epoch, old_head) = storage::try_lead(&mut old).await.unwrap().unwrap();
    let mut rival = pool.acquire().await.unwrap().detach();
    assert!(
        storage::try_lead(&mut rival).await.unwrap().is_none(),
        "the lock is exclusive"
    );
    drop(old); // the old leader's connection dies, and its lock with it
    let (new_epoch, _) = take_the_lead(&mut rival).await;
    assert_eq!(new_epoch, old_epoch + 1);

    // The old leader, on any connection, tries to commit a record.
    let app = TestApp::spawn_with(pool.clone(), 0).await; // only to register and build a record
    app.register("ethereum", "0xBOND-0", "US", "security").await;
    app.app.stop().await;
    let sealed = active_expiry_record(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let refused = commit_alone(&mut conn, old_epoch, old_head, &sealed).await;
    assert!(
        matches!(refused, Err(storage::StorageError::Deposed { .. })),
        "{refused:?}"
    );
    let written = scalar(&pool, "SELECT count(*) FROM decisions").await;
    assert_eq!(written, 0);

    // A leader records seq 1 (a fresh one: the app deposed the rival, whose lease nobody
    // renewed). The old leader's commit of its own seq 1 is still refused as deposed, before
    // its insert could meet the new leader's row.
    let mut newest = pool.acquire().await.unwrap().detach();
    let (newest_epoch, newest_head) = take_the_lead(&mut newest).await;
    assert!(newest_epoch > new_epoch);
    commit_alone(&mut newest, newest_epoch, newest_head, &sealed)
        .await
        .unwrap();
    let refused = commit_alone(&mut conn, old_epoch, old_head, &sealed).await;
    assert!(
        matches!(refused, Err(storage::StorageError::Deposed { .. })),
        "{refused:?}"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM decisions").await, 1);
    assert_eq!(scalar(&pool, "SELECT seq FROM ledger_head").await, 1);
}

/// Takes the lead on `conn` once the lock is free (within 10 s): its epoch and head.
async fn take_the_lead(conn: &mut sqlx::PgConnection) -> (i64, Head) {
    for _ in 0..500 {
        if let Some(lead) = storage::try_lead(conn).await.unwrap() {
            return lead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lock stayed taken for 10 s");
}

/// Commits `sealed` alone, changing no state row and with no state map round.
async fn commit_alone(
    conn: &mut sqlx::PgConnection,
    epoch: i64,
    from: Head,
    sealed: &regulator::domain::ledger::SealedRecord,
) -> Result<Head, storage::StorageError> {
    let commit = storage::Commit {
        epoch,
        from,
        records: std::slice::from_ref(sealed),
        states: &[],
        holds: &storage::HoldWrites::default(),
        taken_in: &HashSet::new(),
    };
    storage::commit(conn, commit, async { Ok(None) }).await
}

/// A leader's connection, epoch and head on a database with `ethereum/0xBOND-0` registered, and
/// [`expiry_record`] under the active policy version.
async fn leading_with_an_expiry(
    pool: &PgPool,
) -> (
    sqlx::PgConnection,
    i64,
    Head,
    regulator::domain::ledger::SealedRecord,
) {
    let app = TestApp::spawn_with(pool.clone(), 0).await; // only to register and build a record
    app.register("ethereum", "0xBOND-0", "US", "security").await;
    app.app.stop().await;
    let mut conn = pool.acquire().await.unwrap().detach();
    let (epoch, head) = storage::try_lead(&mut conn).await.unwrap().unwrap();
    (conn, epoch, head, active_expiry_record(pool).await)
}

/// [`expiry_record`] under the policy version the database holds.
async fn active_expiry_record(pool: &PgPool) -> regulator::domain::ledger::SealedRecord {
    let active: String = sqlx::query_scalar("SELECT hash FROM policy_versions")
        .fetch_one(pool)
        .await
        .unwrap();
    expiry_record(&active)
}

/// A record of seq 1 (an expiry on `ethereum/0xBOND-0` that changes nothing), sealed.
fn expiry_record(policy_version: &str) -> regulator::domain::ledger::SealedRecord {
    let text = "{}".to_owned();
    regulator::domain::ledger::SealedRecord {
        record: serde_json::from_value(json!({
            "seq": 1, "subject": {"subject": "expiry", "hold": uuid::Uuid::now_v7()},
            "target": {"chain": "ethereum", "asset": "0xBOND-0"}, "kind": "FREEZE",
            "issuer": "US-SEC", "outcome": "APPLIED", "reason_code": "expired", "reason": "x",
            "reason_detail": {"code": "expired"}, "priority": 0, "determining_policies": [],
            "policy_version": policy_version,
            "asset_attributes": {"issuer_jurisdiction": "US", "asset_class": "security"},
            "order": null, "decided_at": chrono::Utc::now(),
            "state_before": {"version": 0, "level": "UNLOCKED", "level_number": 0, "frozen": "none", "holds": []},
            "state_after": {"version": 0, "level": "UNLOCKED", "level_number": 0, "frozen": "none", "holds": []},
            "effects": [], "prev_hash": "00"
        }))
        .unwrap(),
        hash: regulator::domain::ledger::record_hash(&text),
        text,
    }
}

/// The state map's round is computed while the commit's first statements run, and awaited
/// before the last: if it fails then (a record the map cannot apply), the commit writes
/// nothing, although the records were already inserted in its transaction; the head does not
/// move, and the same records commit once the round succeeds.
#[sqlx::test]
async fn a_commit_whose_state_round_fails_writes_nothing(pool: PgPool) {
    let (mut conn, epoch, head, sealed) = leading_with_an_expiry(&pool).await;
    let no_holds = storage::HoldWrites::default();
    let none_taken_in = HashSet::new();
    let commit = || storage::Commit {
        epoch,
        from: head,
        records: std::slice::from_ref(&sealed),
        states: &[],
        holds: &no_holds,
        taken_in: &none_taken_in,
    };
    let failed = storage::commit(&mut conn, commit(), async {
        Err(storage::StorageError::Corrupt(
            "seq 1: hold x is lifted but not active".into(),
        ))
    })
    .await;
    assert!(
        matches!(&failed, Err(storage::StorageError::Corrupt(why)) if why.contains("not active")),
        "{failed:?}"
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM decisions").await,
        0,
        "nothing of the round is written"
    );
    let at = scalar(&pool, "SELECT seq FROM ledger_head").await;
    assert_eq!(at as u64, head.seq, "the head did not move");

    let to = storage::commit(&mut conn, commit(), async { Ok(None) })
        .await
        .unwrap();
    assert_eq!(to.seq, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM decisions").await, 1);
}

/// A commit whose records lift a hold that is not in the holds table (a state that drifted from
/// the log) is refused whole: the round's writes are one statement, and its other parts (the
/// decision, the asset's version row) are not written either.
#[sqlx::test]
async fn a_commit_that_lifts_a_hold_not_in_the_table_writes_nothing(pool: PgPool) {
    let (mut conn, epoch, head, mut sealed) = leading_with_an_expiry(&pool).await;
    sealed.record.effects = vec![regulator::domain::Effect::Lift {
        order_id: serde_json::from_value(json!(uuid::Uuid::now_v7())).unwrap(),
        cause: regulator::domain::LiftCause::Expired,
    }];
    let holds = storage::HoldWrites::of(std::slice::from_ref(&sealed)).unwrap();
    let states = [storage::StateChange {
        key: sealed.record.target.asset.clone(),
        version: 1,
        last_fencing_token: 0,
        next_expiry: None,
    }];
    let commit = storage::Commit {
        epoch,
        from: head,
        records: std::slice::from_ref(&sealed),
        states: &states,
        holds: &holds,
        taken_in: &HashSet::new(),
    };
    let refused = storage::commit(&mut conn, commit, async { Ok(None) }).await;
    assert!(
        matches!(&refused, Err(storage::StorageError::Corrupt(why))
            if why.contains("0 of the 1 lifted holds were in the holds table")),
        "{refused:?}"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM decisions").await, 0);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM asset_state WHERE version > 0").await,
        0,
        "the asset's version row is not written"
    );
    let at = scalar(&pool, "SELECT seq FROM ledger_head").await;
    assert_eq!(at as u64, head.seq, "the head did not move");
}

/// A commit whose decided order is not in the intake queue (never queued, or already taken
/// out by another writer) is refused whole: nothing of its transaction is written.
#[sqlx::test]
async fn a_commit_of_an_order_missing_from_the_queue_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register("ethereum", "0xBOND-0", "US", "security").await;
    let (status, _) = app
        .submit(&app.regulator("US-SEC"), "first", &freeze(0, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.app.stop().await;

    // The decided record again, one seq on, for an order that was never queued.
    let decided = storage::ledger_head(&pool).await.unwrap();
    let text: String = sqlx::query_scalar("SELECT record FROM decisions WHERE seq = $1")
        .bind(decided.seq as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&text).unwrap();
    let unqueued = uuid::Uuid::now_v7();
    record["seq"] = json!(decided.seq + 1);
    record["subject"]["order_id"] = json!(unqueued);
    record["order"]["id"] = json!(unqueued);
    let text = record.to_string();
    let sealed = regulator::domain::ledger::SealedRecord {
        record: serde_json::from_value(record).unwrap(),
        hash: regulator::domain::ledger::record_hash(&text),
        text,
    };
    let mut conn = pool.acquire().await.unwrap().detach();
    let (epoch, head) = storage::try_lead(&mut conn).await.unwrap().unwrap();
    assert_eq!(head, decided);
    let refused = commit_alone(&mut conn, epoch, head, &sealed).await;
    assert!(
        matches!(&refused, Err(storage::StorageError::Corrupt(why))
            if why.contains("0 of the 1 decided orders were in the intake queue")),
        "{refused:?}"
    );
    let decisions = scalar(&pool, "SELECT count(*) FROM decisions").await;
    assert_eq!(decisions, 1, "the refused record is not written");
    let at = scalar(&pool, "SELECT seq FROM ledger_head").await;
    assert_eq!(at as u64, decided.seq, "the head did not move");
}

/// The leader dies mid-stream (its tasks aborted, its connections dropped, as in a crash).
/// The standby takes over; every order gets exactly one decision and the log stays gapless.
#[sqlx::test]
async fn a_killed_leader_is_replaced_with_nothing_lost_or_duplicated(pool: PgPool) {
    let first = TestApp::spawn_with(pool.clone(), 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.leading().await);
    let standby = TestApp::spawn_with(pool.clone(), 0).await;
    register_bonds(&standby, 4).await;

    let before = submit_many(&standby, "before", 60, 4).await;
    let stream = {
        let pool = pool.clone();
        async move {
            // Orders keep arriving (through the standby's API) while the leader dies.
            let during = submit_many(&standby, "during", 120, 4).await;
            wait_until_decided(&pool, 180).await;
            (standby, during)
        }
    };
    // Killed once a quarter of the stream is decided, however fast the machine decides: the
    // rest must be decided by the standby.
    let killer = async {
        loop {
            let decided = scalar(&pool, "SELECT count(*) FROM decisions").await;
            if decided >= 60 + 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        first.app.kill();
    };
    let ((standby, during), ()) = tokio::join!(stream, killer);
    assert!(standby.leading().await, "the standby took over");

    let records = assert_ledger_sound(&pool).await;
    let decided: HashMap<String, u64> = records
        .iter()
        .filter_map(|r| r.order.as_ref().map(|o| (o.id.to_string(), r.seq)))
        .collect();
    assert_eq!(decided.len(), 180);
    for id in before.iter().chain(&during) {
        assert!(decided.contains_key(id), "order {id} lost");
    }
    let epoch = scalar(&pool, "SELECT epoch FROM ledger_head").await;
    assert_eq!(epoch, 2, "one change of leader");
    standby.app.stop().await;
}

/// A burst larger than the sequencer's fetch limit lands inside one window on one asset: the
/// window is completed on its own and decided as one group, instead of waiting forever for a
/// fetch that would return the same rows.
#[sqlx::test]
async fn a_window_larger_than_the_fetch_limit_is_decided_whole(pool: PgPool) {
    let key = register_bond_in(&pool, 0).await;
    take_in_freezes(&pool, &key, 30, "burst").await;
    sequence_until_decided(
        &pool,
        regulator::sequencer::SequencerConfig {
            window: chrono::Duration::milliseconds(200),
            fetch_limit: 10,
            poll: Duration::from_millis(50),
            ..Default::default()
        },
        30,
    )
    .await;

    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 30);
    assert!(
        records
            .iter()
            .all(|r| r.decided_at == records[0].decided_at),
        "one group, one commit"
    );
    assert!(records.iter().all(|r| r.outcome.as_str() == "APPLIED"));
}

/// With a window W > 0, an order stamped inside a group's window is always decided in that
/// group, even when its intake transaction commits after the window's end has passed on the
/// database clock (the sequencer waits for in-flight intake before reading the clock).
#[sqlx::test]
async fn no_order_stamped_inside_a_window_is_left_out_of_its_group(pool: PgPool) {
    let window_ms = 20;
    let app = TestApp::spawn_with(pool.clone(), window_ms).await;
    register_bonds(&app, 5).await;
    let token = app.regulator("US-SEC");
    let mut senders = Vec::new();
    for sender in 0..8 {
        let client = app.client.clone();
        let url = app.url("/v1/orders/batch");
        let token = token.clone();
        senders.push(tokio::spawn(async move {
            for batch in 0..6 {
                let orders: Vec<Value> = (0..60)
                    .map(|i| {
                        let n = (sender * 10_000 + batch * 1_000 + i) as usize;
                        json!({"idempotency_key": format!("k-{n}"), "order": freeze(n % 5, n)})
                    })
                    .collect();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "orders": orders }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    wait_until_decided(&pool, 8 * 6 * 60).await;
    assert_ledger_sound(&pool).await;

    let late: i64 = sqlx::query_scalar(
        "WITH d AS (
             SELECT chain, asset, decided_at,
                    (record::jsonb -> 'order' ->> 'intake_at')::timestamptz AS intake_at
             FROM decisions WHERE order_id IS NOT NULL),
         g AS (SELECT chain, asset, decided_at, min(intake_at) AS opened FROM d GROUP BY 1, 2, 3)
         SELECT count(*) FROM d JOIN g USING (chain, asset)
         WHERE d.decided_at > g.decided_at
           AND d.intake_at BETWEEN g.opened AND g.opened + make_interval(secs => $1 / 1000.0)",
    )
    .bind(window_ms as f64)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        late, 0,
        "orders decided after the group whose window they fell in"
    );
    app.app.stop().await;
}

/// Rounds overlap under a backlog: round N+1 is fetched and decided while round N commits.
/// Here round N's commit fails (a trigger refuses it, once, after N+1 had time to be decided):
/// N+1 was chained to N's records and decided against the states N leaves, so it must be
/// dropped with it. The leader steps down, stands again, and every order is decided exactly
/// once, the log gapless, the chain unbroken, the state tables equal to a replay.
#[sqlx::test]
async fn a_commit_that_fails_while_the_next_round_was_decided_drops_both(pool: PgPool) {
    let metrics = regulator::app::metrics_handle();
    let mut keys = Vec::new();
    for n in 0..3 {
        keys.push(register_bond_in(&pool, n).await);
    }
    // The first commit that records the poisoned holder waits (so that the next round is
    // decided meanwhile) and then fails; a sequence counts the tries, outside the rollback.
    on_the_first_insert(
        &pool,
        "decisions",
        "0xPOISON",
        "PERFORM pg_sleep(0.5); RAISE EXCEPTION 'the commit of this round fails';",
    )
    .await;
    // Five intake statements of ten orders: five arrival times, a backlog of several rounds.
    for batch in 0..5 {
        let orders: Vec<storage::NewOrder> = (0..10)
            .map(|i| {
                let holder = if batch == 0 && i == 0 {
                    "0xPOISON".to_owned()
                } else {
                    format!("0xH{batch}-{i}")
                };
                freeze_order(
                    &keys[i % keys.len()],
                    &holder,
                    format!("backlog-{batch}-{i}"),
                )
            })
            .collect();
        storage::intake(&pool, &orders, storage::Announce::Everyone)
            .await
            .unwrap();
    }
    sequence_until_decided(
        &pool,
        regulator::sequencer::SequencerConfig {
            window: chrono::Duration::zero(),
            // A fetch sees one arrival time whole and part of the next: one batch a round.
            fetch_limit: 15,
            poll: Duration::from_millis(50),
            pipeline_from: 1,
            ..Default::default()
        },
        50,
    )
    .await;

    let tries = scalar(&pool, "SELECT last_value FROM first_inserts").await;
    assert_eq!(tries, 2, "the poisoned round failed once, then committed");
    let epoch = scalar(&pool, "SELECT epoch FROM ledger_head").await;
    assert_eq!(
        epoch, 2,
        "the leader stepped down after the failed commit and led again"
    );
    let rendered = metrics.render();
    let overlapped: f64 = rendered
        .lines()
        .find_map(|l| l.strip_prefix("regulator_sequencer_overlapped_rounds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(overlapped >= 2.0, "rounds overlapped: {overlapped}");

    let records = assert_ledger_sound(&pool).await;
    assert_eq!(records.len(), 50, "every order decided exactly once");
    assert!(records.iter().all(|r| r.outcome.as_str() == "APPLIED"));
    assert_eq!(
        records
            .iter()
            .filter(|r| r.target.holder.as_ref().map(|h| h.as_str()) == Some("0xPOISON"))
            .count(),
        1
    );
}
