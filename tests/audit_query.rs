//! The audit query API and export: an auditor's filters give exactly the decisions a filter over
//! the whole log would, pages stay put while decisions are added, and exports round-trip.

mod service;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use service::{doj_seize, order, sec_freeze, TestApp, BOND};

/// A day at the regulators: freezes by the SEC on two bonds and another chain, the DOJ's
/// seizure, a seizure FATF may not make, and its monitoring request.
async fn a_day_of_orders(app: &TestApp) {
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.register("ethereum", "0xOTHER", "US", "security").await;
    app.register("polygon", "0xPOLY", "US", "security").await;
    let sec = app.regulator("US-SEC");
    let doj = app.regulator("US-DOJ");
    let fatf = app.regulator("FATF");
    let mut n = 0;
    let mut submit = |token: String, body: Value| {
        n += 1;
        let key = format!("k{n}");
        async move {
            let (status, answer) = app.submit(&token, &key, &body).await;
            assert!(status.is_success(), "{answer}");
        }
    };
    for (chain, asset) in [BOND, ("ethereum", "0xOTHER"), ("polygon", "0xPOLY")] {
        for holder in ["0xA", "0xB"] {
            let mut body = order(
                chain,
                asset,
                "court_order",
                "SEC v. X",
                json!({"kind": "FREEZE"}),
            );
            body["target"]["holder"] = json!(holder);
            submit(sec.clone(), body).await;
        }
    }
    submit(sec.clone(), sec_freeze()).await;
    submit(doj.clone(), doj_seize()).await;
    submit(
        fatf.clone(),
        order(
            BOND.0,
            BOND.1,
            "recommendation",
            "R.38",
            json!({"kind": "SEIZE"}),
        ),
    )
    .await;
    submit(
        fatf.clone(),
        order(
            BOND.0,
            BOND.1,
            "recommendation",
            "R.38",
            json!({"kind": "MONITOR"}),
        ),
    )
    .await;
}

/// Every decision, from the feed.
async fn everything(app: &TestApp) -> Vec<Value> {
    let (_, page) = app
        .get(&app.auditor(), "/v1/decisions?after=0&limit=1000")
        .await;
    page["decisions"].as_array().unwrap().clone()
}

/// Every page of an audit query, following the cursor.
async fn query_all(app: &TestApp, filter: &str, limit: u32) -> Vec<Value> {
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let (status, page) = app
            .get(
                &app.auditor(),
                &format!("/v1/audit/decisions?{filter}&after={after}&limit={limit}"),
            )
            .await;
        assert_eq!(status, 200, "{filter}: {page}");
        let records = page["records"].as_array().unwrap();
        if records.is_empty() {
            assert_eq!(page["next_after"], after);
            return all;
        }
        all.extend(records.iter().cloned());
        after = page["next_after"].as_u64().unwrap();
    }
}

fn seqs(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["seq"].as_u64().unwrap()).collect()
}

#[sqlx::test]
async fn each_filter_selects_exactly_its_decisions(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    a_day_of_orders(&app).await;
    let all = everything(&app).await;
    assert_eq!(all.len(), 10);
    let rejected = all
        .iter()
        .find(|d| d["outcome"] == "REJECTED")
        .expect("FATF's seizure");
    let policy = all[0]["determining_policies"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let from_time = all[4]["decided_at"].as_str().unwrap().to_owned();
    let to_time = all[8]["decided_at"].as_str().unwrap().to_owned();

    let expect = |keep: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        all.iter()
            .filter(|d| keep(d))
            .map(|d| d["seq"].as_u64().unwrap())
            .collect()
    };
    let cases: Vec<(String, Vec<u64>)> = vec![
        (
            format!("chain={}&asset={}", BOND.0, BOND.1),
            expect(&|d| d["target"]["asset"] == BOND.1),
        ),
        (
            format!("chain={}&asset={}&holder=0xA", BOND.0, BOND.1),
            expect(&|d| d["target"]["asset"] == BOND.1 && d["target"]["holder"] == "0xA"),
        ),
        (
            "chain=polygon".into(),
            expect(&|d| d["target"]["chain"] == "polygon"),
        ),
        ("issuer=US-DOJ".into(), expect(&|d| d["issuer"] == "US-DOJ")),
        ("kind=FREEZE".into(), expect(&|d| d["kind"] == "FREEZE")),
        (
            "outcome=REJECTED".into(),
            vec![rejected["seq"].as_u64().unwrap()],
        ),
        (
            format!("policy={policy}"),
            expect(&|d| {
                d["determining_policies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p == policy.as_str())
            }),
        ),
        (
            format!(
                "from_time={}&to_time={}",
                urlencode(&from_time),
                urlencode(&to_time)
            ),
            expect(&|d| {
                let t = d["decided_at"].as_str().unwrap();
                t >= from_time.as_str() && t < to_time.as_str()
            }),
        ),
        ("from_seq=3&to_seq=7".into(), (3..=7).collect()),
        (
            "issuer=US-SEC&kind=FREEZE&chain=ethereum".into(),
            expect(&|d| {
                d["issuer"] == "US-SEC"
                    && d["kind"] == "FREEZE"
                    && d["target"]["chain"] == "ethereum"
            }),
        ),
        ("issuer=NOBODY".into(), vec![]),
    ];
    for (filter, expected) in cases {
        let found = query_all(&app, &filter, 3).await;
        assert_eq!(seqs(&found), expected, "{filter}");
        // Each item carries the record (order, decision, policies, priority, policy version)
        // and its hash.
        for item in &found {
            let d = &item["decision"];
            assert_eq!(d["seq"], item["seq"]);
            for field in [
                "determining_policies",
                "priority",
                "policy_version",
                "outcome",
            ] {
                assert!(!d[field].is_null(), "{field}");
            }
            let text: String =
                sqlx::query_scalar("SELECT record::text FROM decisions WHERE seq = $1")
                    .bind(item["seq"].as_i64().unwrap())
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(item["hash"], hex::encode(Sha256::digest(text.as_bytes())));
        }
    }
}

/// The policy index the `policy=` filter reads is written by the sequencer, not derived by the
/// database: it holds exactly one row per policy each record names, and nothing else.
#[sqlx::test]
async fn the_policy_index_is_exactly_what_the_records_name(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    a_day_of_orders(&app).await;
    let index: Vec<(String, i64)> =
        sqlx::query_as("SELECT policy, seq FROM decision_policies ORDER BY seq, policy")
            .fetch_all(&pool)
            .await
            .unwrap();
    let named: Vec<(String, i64)> = sqlx::query_as(
        "SELECT DISTINCT p.policy, d.seq
         FROM decisions d, json_array_elements_text(d.record::json -> 'determining_policies')
              AS p(policy)
         ORDER BY d.seq, p.policy",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(index, named);
    let decided: i64 = sqlx::query_scalar("SELECT count(DISTINCT seq) FROM decision_policies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(decided >= 8, "{index:?}");
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

/// An auditor pages through FREEZE decisions while the SEC keeps freezing: every page
/// continues exactly where the last ended, and the pages together are the whole answer.
#[sqlx::test]
async fn pages_stay_put_while_decisions_are_added(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    a_day_of_orders(&app).await;
    let sec = app.regulator("US-SEC");
    let mut after = 0;
    let mut collected = Vec::new();
    for round in 0..20 {
        let (_, page) = app
            .get(
                &app.auditor(),
                &format!("/v1/audit/decisions?kind=FREEZE&after={after}&limit=2"),
            )
            .await;
        let records = page["records"].as_array().unwrap().clone();
        collected.extend(records);
        after = page["next_after"].as_u64().unwrap();
        // New decisions arrive between pages.
        let mut body = order(
            BOND.0,
            BOND.1,
            "court_order",
            "SEC v. Y",
            json!({"kind": "FREEZE"}),
        );
        body["target"]["holder"] = json!(format!("0xNEW{round}"));
        let (status, _) = app.submit(&sec, &format!("new-{round}"), &body).await;
        assert_eq!(status, 201);
    }
    // Drain what is left.
    collected.extend(query_all(&app, &format!("kind=FREEZE&from_seq={}", after + 1), 5).await);
    let all = everything(&app).await;
    let expected: Vec<u64> = all
        .iter()
        .filter(|d| d["kind"] == "FREEZE")
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs(&collected),
        expected,
        "no decision missed or seen twice"
    );
}

#[sqlx::test]
async fn exports_round_trip(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    a_day_of_orders(&app).await;
    let texts: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, record::text FROM decisions ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let export = |query: &str| {
        app.client
            .get(app.url(&format!("/v1/audit/export?{query}")))
            .bearer_auth(app.auditor())
            .send()
    };

    // NDJSON: one item per line, the record exactly as stored.
    let response = export("").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), texts.len());
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        seq: i64,
        hash: String,
        #[serde(borrow)]
        decision: &'a serde_json::value::RawValue,
    }
    for (line, (seq, text)) in lines.iter().zip(&texts) {
        let item: Line<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(item.seq, *seq);
        assert_eq!(
            item.decision.get(),
            text,
            "the record round-trips byte for byte"
        );
        assert_eq!(item.hash, hex::encode(Sha256::digest(text.as_bytes())));
    }
    // Filtered and resumed: the same rows a query gives.
    let body = export("issuer=US-SEC&after=2")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: Vec<u64> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        exported,
        seqs(&query_all(&app, "issuer=US-SEC&from_seq=3", 100).await)
    );

    // CSV: a header, then one row per decision, with the record exactly in its last column.
    let response = export("format=csv").await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header.first().map(String::as_str), Some("seq"));
    assert_eq!(header.last().map(String::as_str), Some("record"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), texts.len());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (row, (seq, text)) in rows.iter().zip(&texts) {
        assert_eq!(row[col("seq")], seq.to_string());
        assert_eq!(&row[col("record")], text);
        assert_eq!(
            row[col("hash")],
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        let record: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            row[col("outcome")],
            record["outcome"].as_str().unwrap().to_owned()
        );
        assert_eq!(
            row[col("issuer")],
            record["issuer"].as_str().unwrap().to_owned()
        );
    }
    // An empty CSV export is still a CSV: the header alone.
    let body = export("format=csv&issuer=NOBODY")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 1);
}

#[sqlx::test]
async fn bad_audit_queries_are_refused(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    for (path, status, kind) in [
        ("/v1/audit/decisions?asset=0xX", 422, "invalid-request"),
        ("/v1/audit/decisions?kind=SNOOZE", 422, "invalid-request"),
        ("/v1/audit/decisions?outcome=MAYBE", 422, "invalid-request"),
        (
            "/v1/audit/decisions?from_time=yesterday",
            422,
            "invalid-request",
        ),
        ("/v1/audit/decisions?colour=red", 422, "invalid-request"),
        ("/v1/audit/decisions?limit=0", 422, "invalid-request"),
        ("/v1/audit/decisions?format=csv", 422, "invalid-request"),
        ("/v1/audit/export?limit=10", 422, "invalid-request"),
        ("/v1/audit/export?format=xml", 422, "invalid-request"),
    ] {
        let (got, problem) = app.get(&app.auditor(), path).await;
        assert_eq!(got.as_u16(), status, "{path}: {problem}");
        assert_eq!(
            problem["type"],
            format!("urn:regulator:problem:{kind}"),
            "{path}"
        );
    }
    let (got, _) = app
        .get(&app.regulator("US-SEC"), "/v1/audit/decisions")
        .await;
    assert_eq!(got.as_u16(), 403);
}

/// A log upgraded from a release before policy activations: its old decisions kept the
/// database's clock, which once stepped back. A time range there is not a seq range, and the
/// query falls back to filtering by time: it still finds exactly the decisions of the range.
#[sqlx::test]
async fn a_time_range_over_decisions_from_before_activations_is_still_exact(pool: PgPool) {
    use regulator::storage::audit::{audit_page, AuditFilter};
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE decisions DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    // Seqs 1..=4 at 10:00:05, 10:00:03 (the clock went back), 10:00:06, 10:00:07.
    for (seq, second) in [(1, 5), (2, 3), (3, 6), (4, 7)] {
        sqlx::query(
            "INSERT INTO decisions (seq, expired_hold, chain, asset, kind, issuer, outcome,
                                    reason_code, priority, policy_version, target_version,
                                    decided_at, record, hash, policies_indexed)
             VALUES ($1, gen_random_uuid(), 'ethereum', '0xOLD', 'FREEZE', 'US-SEC', 'APPLIED',
                     'applied', 700, 'old', 1,
                     timestamptz '2026-01-01 10:00:00+00' + make_interval(secs => $2),
                     '{}'::json, '\\x00', true)",
        )
        .bind(seq)
        .bind(f64::from(second))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query("ALTER TABLE decisions ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO policy_versions (version, hash, author, message, files)
         VALUES (1, 'v1', 'regulator', 'imported', '{}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ledger_events (seq, kind, policy_version, actor, recorded_at, record, hash)
         VALUES (5, 'policy_activated', 1, 'regulator', now(),
                 '{\"event\": {\"active\": {\"version\": 1, \"hash\": \"v1\"}}}', '\\x00')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let at = |second: i64| {
        chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::Duration::seconds(second)
    };
    let filter = AuditFilter {
        from_time: Some(at(4)),
        to_time: Some(at(7)),
        ..AuditFilter::default()
    };
    let page = audit_page(&pool, &filter, 0, 100).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        [1, 3],
        "10:00:05 and 10:00:06; not 10:00:03, not 10:00:07"
    );
}
