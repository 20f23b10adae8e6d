//! Issue 15, items 1, 2, 4, 5 and 6, over real HTTP against the spawned service: no input takes
//! the process down or gets a 5xx, a batch judges each item on its own and credits a repeated
//! key to its first item, what cannot be decided is refused instead of recorded, and input the
//! policies will never match is refused with the values they know.

mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regulator::auth::Role;
use regulator::policy::PolicyFiles;
use reqwest::StatusCode;
use serde_json::{json, Value};
use service::{order, table_counts, TestApp, BOND};
use sqlx::PgPool;

async fn setup(pool: &PgPool) -> TestApp {
    let app = TestApp::spawn(pool.clone()).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app
}

fn author(app: &TestApp) -> String {
    app.token("legal", &[Role::PolicyAuthor])
}

fn shipped() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicyFiles::read_dir(&dir).unwrap().into()
}

/// The shipped bundle plus one file.
fn draft_with(name: &str, text: String) -> BTreeMap<String, String> {
    let mut files = shipped();
    files.insert(name.to_owned(), text);
    files
}

fn monitor_policy(condition: &str) -> String {
    format!(
        "@id(\"probe\")\n@priority(\"1\")\npermit (principal, action == Action::\"MONITOR\", resource)\nwhen {{ {condition} }};\n"
    )
}

/// Asserts a problem document of `status` and `slug`; returns its detail.
fn assert_problem(status: StatusCode, body: &Value, expected: u16, slug: &str) -> String {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:regulator:problem:{slug}"),
        "{body}"
    );
    body["detail"].as_str().unwrap_or_default().to_owned()
}

async fn assert_alive(app: &TestApp) {
    let (status, _) = app.get("", "/healthz").await;
    assert_eq!(status, StatusCode::OK, "the service answers afterwards");
}

// ---------------------------------------------------------------------------------------------
// 1. No input takes the process down

/// A few KB of each kind of nesting that used to overflow the stack and abort the process.
fn deep_drafts() -> Vec<(&'static str, BTreeMap<String, String>, &'static str)> {
    let n = 2_000;
    let parens = format!("{}true{}", "(".repeat(n), ")".repeat(n));
    let sets = format!("{}1{}.contains(1)", "[".repeat(n), "]".repeat(n));
    let records = format!("{}1{} has a", "{a: ".repeat(n), "}".repeat(n));
    let ifs = format!(
        "{}true{}",
        "if true then ".repeat(n),
        " else false".repeat(n)
    );
    let sums = format!("{} == 0", vec!["1"; 20_000].join(" + "));
    let mut schema = shipped();
    let deep_type = format!(
        "\ntype Deep = {}Long{};\n",
        "Set<{ a: ".repeat(n),
        " }>".repeat(n)
    );
    if let Some(text) = schema.get_mut("schema.cedarschema") {
        text.push_str(&deep_type);
    }
    vec![
        (
            "parentheses",
            draft_with("deep.cedar", monitor_policy(&parens)),
            "deep.cedar",
        ),
        (
            "sets",
            draft_with("deep.cedar", monitor_policy(&sets)),
            "deep.cedar",
        ),
        (
            "records",
            draft_with("deep.cedar", monitor_policy(&records)),
            "deep.cedar",
        ),
        (
            "if chain",
            draft_with("deep.cedar", monitor_policy(&ifs)),
            "deep.cedar",
        ),
        (
            "operator chain",
            draft_with("deep.cedar", monitor_policy(&sums)),
            "deep.cedar",
        ),
        ("schema types", schema, "schema.cedarschema"),
    ]
}

fn assert_located(body: &Value, file: &str, what: &str) {
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    let error = errors
        .iter()
        .find(|e| e["file"] == file)
        .unwrap_or_else(|| panic!("{what}: no error in {file}: {body}"));
    assert!(
        error["code"]
            .as_str()
            .is_some_and(|c| c.ends_with("::too_deep")),
        "{what}: {error}"
    );
    assert!(
        error["line"].as_u64().is_some() && error["column"].as_u64().is_some(),
        "{what}: {error}"
    );
}

#[sqlx::test]
async fn deeply_nested_drafts_are_refused_through_every_route_and_the_service_lives(pool: PgPool) {
    let app = setup(&pool).await;
    let token = author(&app);
    for (what, files, file) in deep_drafts() {
        for path in [
            "/v1/policies/validate",
            "/v1/policies/test",
            "/v1/policies/simulate",
        ] {
            let (status, body) = app.post(&token, path, json!({"files": files})).await;
            assert_problem(status, &body, 422, "policy-invalid");
            assert_located(&body, file, what);
        }
        let (status, body) = app
            .post(
                &token,
                "/v1/policies/versions",
                json!({"files": files, "message": format!("deep {what}")}),
            )
            .await;
        assert_problem(status, &body, 422, "policy-invalid");
        assert_located(&body, file, what);
        assert_alive(&app).await;
    }
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(versions, 1, "only the shipped version is stored");
}

#[sqlx::test]
async fn readable_nesting_still_validates(pool: PgPool) {
    let app = setup(&pool).await;
    let condition = format!(
        "{}resource.asset_class == \"security\"{} && (if context.partial then true else false)",
        "(".repeat(10),
        ")".repeat(10)
    );
    let files = draft_with("nested.cedar", monitor_policy(&condition));
    let (status, body) = app
        .post(
            &author(&app),
            "/v1/policies/validate",
            json!({"files": files}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[sqlx::test]
async fn a_deep_policy_on_disk_stops_start_up_with_its_place(pool: PgPool) {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deep-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in shipped() {
        if !name.starts_with("tests/") {
            std::fs::write(dir.join(&name), text).unwrap();
        }
    }
    let deep = monitor_policy(&format!("{}true{}", "(".repeat(3_000), ")".repeat(3_000)));
    std::fs::write(dir.join("deep.cedar"), deep).unwrap();
    let mut config = service::config(service::secret_file(), 100);
    config.policies = dir;
    let errors = match regulator::app::App::start_with_pool(config, pool).await {
        Err(regulator::app::StartError::Policies { errors, .. }) => errors.errors,
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("a bundle that cannot be parsed safely must not start"),
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].code, errors[0].file.as_str(), errors[0].line),
        ("policy::too_deep", "deep.cedar", Some(4))
    );
}

// ---------------------------------------------------------------------------------------------
// 2. No 5xx from client input

fn freeze_with_reference(reference: &str) -> Value {
    order(
        BOND.0,
        BOND.1,
        "court_order",
        reference,
        json!({"kind": "FREEZE"}),
    )
}

#[sqlx::test]
async fn nul_control_characters_and_long_references_are_422_naming_the_field(pool: PgPool) {
    let app = setup(&pool).await;
    let before = table_counts(&pool).await;
    let sec = app.regulator("US-SEC");
    for (n, reference) in [
        "SEC v. Acme\u{0}".to_owned(),
        "SEC v. Acme\nline two".to_owned(),
        "SEC v. Acme \u{1b}[2J".to_owned(),
        "x".repeat(501),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = app
            .submit(
                &sec,
                &format!("k-text-{n}"),
                &freeze_with_reference(reference),
            )
            .await;
        let detail = assert_problem(status, &body, 422, "invalid-request");
        assert!(detail.contains("legal_basis.reference"), "{detail}");
    }
    assert_eq!(table_counts(&pool).await, before, "nothing written");

    let (status, body) = app
        .submit(&sec, "k-text-ok", &freeze_with_reference(&"é".repeat(500)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "500 characters pass: {body}");
}

#[sqlx::test]
async fn nul_in_a_subscription_or_a_version_message_is_422_naming_the_field(pool: PgPool) {
    let app = setup(&pool).await;
    let admin = app.admin();
    for (description, field) in [
        ("chain A\u{0}".to_owned(), "description"),
        ("x".repeat(501), "description"),
    ] {
        let (status, body) = app
            .post(
                &admin,
                "/v1/webhooks/subscriptions",
                json!({"chain": "ethereum", "url": "https://hooks.example.com/a", "description": description}),
            )
            .await;
        let detail = assert_problem(status, &body, 422, "invalid-request");
        assert!(detail.contains(field), "{detail}");
    }
    let (status, body) = app
        .post(
            &admin,
            "/v1/webhooks/subscriptions",
            json!({"chain": "ethereum", "url": "https://hooks.example.com/a\u{0}b"}),
        )
        .await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(detail.contains("url"), "{detail}");
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_subscriptions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(subscriptions, 0);

    let mut files = shipped();
    if let Some(text) = files.get_mut("us.cedar") {
        text.push_str("\n// reviewed\n");
    }
    let (status, body) = app
        .post(
            &author(&app),
            "/v1/policies/versions",
            json!({"files": files, "message": "tighten\u{0}"}),
        )
        .await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(detail.contains("message"), "{detail}");
    let (status, body) = app
        .post(
            &author(&app),
            "/v1/policies/versions",
            json!({"files": files, "message": "Tighten the SEC rules.\n\nReviewed by legal."}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a multi-line message is fine: {body}"
    );
}

#[sqlx::test]
async fn nul_in_a_query_string_is_422_not_a_database_error(pool: PgPool) {
    let app = setup(&pool).await;
    let path = format!("/v1/targets/{}/{}/history?holder=0x%00", BOND.0, BOND.1);
    let (status, body) = app.get(&app.admin(), &path).await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(detail.contains("holder"), "{detail}");
    let (status, body) = app
        .get(&app.admin(), "/v1/webhooks/subscriptions?chain=eth%00")
        .await;
    assert_problem(status, &body, 422, "invalid-request");
    let (status, body) = app.get(&app.auditor(), "/v1/decisions?chain=eth%00").await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(detail.contains("chain"), "{detail}");
    let (status, body) = app
        .get(&app.auditor(), "/v1/audit/decisions?issuer=US%00SEC")
        .await;
    assert_problem(status, &body, 422, "invalid-request");
    assert_alive(&app).await;
}

async fn post_batch(app: &TestApp, token: &str, items: Vec<Value>) -> Value {
    let (status, body) = app
        .post(token, "/v1/orders/batch", json!({"orders": items}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn item(key: &str, order: Value) -> Value {
    json!({"idempotency_key": key, "order": order})
}

#[sqlx::test]
async fn a_bad_item_in_a_batch_fails_alone(pool: PgPool) {
    let app = setup(&pool).await;
    app.register(BOND.0, "0xOTHER", "US", "security").await;
    let sec = app.regulator("US-SEC");
    let mut other = freeze_with_reference("SEC v. Other, 26-cv-2");
    other["target"]["asset"] = json!("0xOTHER");
    let body = post_batch(
        &app,
        &sec,
        vec![
            item("b-nul", freeze_with_reference("SEC v. Acme\u{0}")),
            item("b-good", other),
            item("b-long", freeze_with_reference(&"x".repeat(60_000))),
        ],
    )
    .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 422, "{body}");
    assert!(results[0]["problem"]["detail"]
        .as_str()
        .unwrap()
        .contains("legal_basis.reference"));
    assert_eq!(results[1]["status"], 201, "{body}");
    assert_eq!(results[1]["decision"]["outcome"], "APPLIED", "{body}");
    assert_eq!(results[2]["status"], 422, "{body}");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 1, "only the valid item is stored");
}

// ---------------------------------------------------------------------------------------------
// 4. A repeated key in a batch is credited to the first item

#[sqlx::test]
async fn a_repeated_key_with_the_same_body_answers_every_copy_with_the_first(pool: PgPool) {
    let app = setup(&pool).await;
    let sec = app.regulator("US-SEC");
    for round in 0..10 {
        let key = format!("dup-same-{round}");
        let reference = format!("SEC v. Acme, round {round}");
        let body = post_batch(
            &app,
            &sec,
            vec![
                item(&key, freeze_with_reference(&reference)),
                item(&key, freeze_with_reference(&reference)),
                item(&key, freeze_with_reference(&reference)),
            ],
        )
        .await;
        let results = body["results"].as_array().unwrap();
        let first = &results[0]["order_id"];
        assert!(first.is_string(), "{body}");
        assert!(
            matches!(results[0]["status"].as_u64(), Some(201) | Some(202)),
            "{body}"
        );
        for copy in &results[1..] {
            assert_eq!(&copy["order_id"], first, "{body}");
            assert!(
                matches!(copy["status"].as_u64(), Some(200) | Some(202)),
                "{body}"
            );
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 10);
}

#[sqlx::test]
async fn a_repeated_key_with_another_body_stores_the_first_and_refuses_the_rest(pool: PgPool) {
    let app = setup(&pool).await;
    let sec = app.regulator("US-SEC");
    for round in 0..10 {
        let key = format!("dup-other-{round}");
        let first = format!("SEC v. First, round {round}");
        let body = post_batch(
            &app,
            &sec,
            vec![
                item(&key, freeze_with_reference(&first)),
                item(
                    &key,
                    freeze_with_reference(&format!("SEC v. Second, round {round}")),
                ),
            ],
        )
        .await;
        let results = body["results"].as_array().unwrap();
        assert!(
            matches!(results[0]["status"].as_u64(), Some(201) | Some(202)),
            "{body}"
        );
        assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            &results[1]["problem"],
            422,
            "idempotency-key-reused",
        );
        let stored: String = sqlx::query_scalar(
            "SELECT body->'legal_basis'->>'reference' FROM orders WHERE idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(stored, first, "the first item's body is the one stored");
    }
}

#[sqlx::test]
async fn a_key_refused_on_its_first_item_is_not_taken_by_a_later_one(pool: PgPool) {
    let app = setup(&pool).await;
    let sec = app.regulator("US-SEC");
    let body = post_batch(
        &app,
        &sec,
        vec![
            item("dup-bad", freeze_with_reference("bad\u{0}")),
            item("dup-bad", freeze_with_reference("SEC v. Acme")),
        ],
    )
    .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 422, "{body}");
    assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        &results[1]["problem"],
        422,
        "idempotency-key-reused",
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Refuse what cannot be decided

fn suspend(expires_at: &str) -> Value {
    order(
        BOND.0,
        BOND.1,
        "court_order",
        "SEC v. Acme, TRO",
        json!({"kind": "SUSPEND", "expires_at": expires_at}),
    )
}

#[sqlx::test]
async fn a_suspension_already_expired_or_absurdly_far_is_refused_and_writes_nothing(pool: PgPool) {
    let app = setup(&pool).await;
    let before = table_counts(&pool).await;
    let sec = app.regulator("US-SEC");
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let far = (chrono::Utc::now() + chrono::Duration::days(11 * 366)).to_rfc3339();
    for (n, at) in [past, far, "9999-12-31T23:59:59Z".to_owned()]
        .iter()
        .enumerate()
    {
        let (status, body) = app
            .submit(&sec, &format!("k-suspend-{n}"), &suspend(at))
            .await;
        let detail = assert_problem(status, &body, 422, "invalid-request");
        assert!(detail.contains("expires_at"), "{detail}");
    }
    assert_eq!(
        table_counts(&pool).await,
        before,
        "no intake row, no decision"
    );
}

fn release(asset: &str, releases: &Value) -> Value {
    order(
        BOND.0,
        asset,
        "court_order",
        "SEC v. Acme, order lifting the freeze",
        json!({"kind": "RELEASE", "releases": releases}),
    )
}

#[sqlx::test]
async fn a_release_of_nothing_releasable_is_refused_and_writes_nothing(pool: PgPool) {
    let app = setup(&pool).await;
    app.register(BOND.0, "0xOTHER", "US", "security").await;
    let sec = app.regulator("US-SEC");
    let (status, frozen) = app
        .submit(&sec, "k-freeze", &freeze_with_reference("SEC v. Acme"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{frozen}");
    let freeze_id = frozen["order_id"].clone();
    let (status, released) = app
        .submit(&sec, "k-release", &release(BOND.1, &freeze_id))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{released}");
    assert_eq!(released["decision"]["outcome"], "APPLIED", "{released}");
    let release_id = released["order_id"].clone();
    let before = table_counts(&pool).await;

    let nowhere = json!(uuid::Uuid::now_v7().to_string());
    let cases = [
        ("k-r-missing", release(BOND.1, &nowhere), "does not exist"),
        ("k-r-other-asset", release("0xOTHER", &freeze_id), "not on"),
        ("k-r-release", release(BOND.1, &release_id), "is a RELEASE"),
    ];
    for (key, body, why) in cases {
        let (status, answer) = app.submit(&sec, key, &body).await;
        let detail = assert_problem(status, &answer, 422, "release-refused");
        assert!(detail.contains(why), "{key}: {detail}");
    }
    // The same refusals item by item in a batch, next to an order that goes through.
    let batch = post_batch(
        &app,
        &sec,
        vec![
            item("b-r-missing", release(BOND.1, &nowhere)),
            item("b-freeze", freeze_with_reference("SEC v. Acme II")),
        ],
    )
    .await;
    assert_eq!(
        batch["results"][0]["problem"]["type"], "urn:regulator:problem:release-refused",
        "{batch}"
    );
    assert_eq!(batch["results"][1]["status"], 201, "{batch}");
    let after = table_counts(&pool).await;
    let orders = |counts: &[(String, i64)]| counts.iter().find(|(t, _)| t == "orders").map(|c| c.1);
    assert_eq!(
        orders(&after),
        orders(&before).map(|n| n + 1),
        "only the freeze is written"
    );
}

#[sqlx::test]
async fn expiries_are_told_apart_from_suspensions_in_audit_queries(pool: PgPool) {
    let app = setup(&pool).await;
    app.register("polygon", "0xSG-TOKEN", "SG", "security")
        .await;
    let mas = app.regulator("SG-MAS");
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1_500)).to_rfc3339();
    let suspension = order(
        "polygon",
        "0xSG-TOKEN",
        "direction",
        "MAS direction 2026/17",
        json!({"kind": "SUSPEND", "expires_at": soon}),
    );
    let (status, body) = app.submit(&mas, "k-soon", &suspension).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["decision"]["outcome"], "APPLIED", "{body}");
    let auditor = app.auditor();
    let mut expiries = Value::Null;
    for _ in 0..100 {
        let (status, page) = app
            .get(&auditor, "/v1/audit/decisions?kind=SUSPEND&subject=expiry")
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["records"].as_array().is_some_and(|r| !r.is_empty()) {
            expiries = page;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = expiries["records"]
        .as_array()
        .expect("the expiry is decided");
    assert_eq!(records.len(), 1, "{expiries}");
    assert_eq!(
        records[0]["decision"]["subject"]["subject"], "expiry",
        "{expiries}"
    );
    assert_eq!(
        records[0]["decision"]["subject"]["hold"], body["order_id"],
        "{expiries}"
    );
    assert_eq!(records[0]["decision"]["kind"], "SUSPEND", "{expiries}");

    let (_, orders) = app
        .get(&auditor, "/v1/audit/decisions?kind=SUSPEND&subject=order")
        .await;
    let records = orders["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{orders}");
    assert_eq!(
        records[0]["decision"]["subject"]["subject"], "order",
        "{orders}"
    );
    assert_eq!(
        records[0]["decision"]["subject"]["order_id"], body["order_id"],
        "{orders}"
    );

    let (_, all) = app.get(&auditor, "/v1/audit/decisions?kind=SUSPEND").await;
    assert_eq!(all["records"].as_array().unwrap().len(), 2, "{all}");
    let (status, bad) = app.get(&auditor, "/v1/audit/decisions?subject=hold").await;
    assert_problem(status, &bad, 422, "invalid-request");
}

// ---------------------------------------------------------------------------------------------
// 6. Input the policies will never match

#[sqlx::test]
async fn an_asset_the_policies_cannot_match_is_refused_with_the_known_values(pool: PgPool) {
    let app = setup(&pool).await;
    let before = table_counts(&pool).await;
    let put = |asset: &'static str, jurisdiction: &'static str, class: &'static str| {
        let app = &app;
        async move {
            let response = app
                .client
                .put(app.url(&format!("/v1/assets/ethereum/{asset}")))
                .bearer_auth(app.admin())
                .json(&json!({"issuer_jurisdiction": jurisdiction, "asset_class": class}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = put("0xUK", "UK", "security").await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(
        detail.contains("\"UK\"") && detail.contains("GB") && detail.contains("US"),
        "{detail}"
    );
    let (status, body) = put("0xBOND", "US", "bond").await;
    let detail = assert_problem(status, &body, 422, "invalid-request");
    assert!(
        detail.contains("\"bond\"") && detail.contains("security") && detail.contains("stablecoin"),
        "{detail}"
    );
    assert_eq!(table_counts(&pool).await, before, "nothing registered");
    let (status, body) = put("0xGB", "GB", "stablecoin").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[sqlx::test]
async fn a_policy_naming_an_unknown_entity_is_invalid_with_every_error_located(pool: PgPool) {
    let app = setup(&pool).await;
    let text = "@id(\"typo\")\n@priority(\"700\")\npermit (\n  principal == Authority::\"US-SECC\",\n  action == Action::\"FREEZE\",\n  resource\n)\nwhen { resource.issuer_jurisdiction in Jurisdiction::\"UK\" && context.nope && resource.nada };\n";
    let files = draft_with("typo.cedar", text.to_owned());
    let (status, body) = app
        .post(
            &author(&app),
            "/v1/policies/validate",
            json!({"files": files}),
        )
        .await;
    assert_problem(status, &body, 422, "policy-invalid");
    let errors = body["errors"].as_array().unwrap();
    let find = |needle: &str| {
        errors
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no error about {needle}: {body}"))
    };
    let secc = find("Authority::\"US-SECC\"");
    assert_eq!(secc["code"], "policy::unknown_entity");
    assert_eq!(
        (secc["file"].as_str(), secc["line"].as_u64()),
        (Some("typo.cedar"), Some(4))
    );
    let uk = find("Jurisdiction::\"UK\"");
    assert_eq!(uk["line"], 8);
    // The validator's errors of the same policy are all there too, not only the first.
    find("nope");
    find("nada");
}

#[sqlx::test]
async fn a_policy_with_a_refused_id_still_gets_all_its_other_errors(pool: PgPool) {
    let app = setup(&pool).await;
    let text = "permit (principal, action == Action::\"FREEZE\", resource)\nwhen { context.nope };\n\n@id(\"bad id!\")\n@priority(\"2000\")\npermit (principal, action == Action::\"FREEZE\", resource)\nwhen { resource.nada == 1 };\n";
    let files = draft_with("noid.cedar", text.to_owned());
    let (status, body) = app
        .post(
            &author(&app),
            "/v1/policies/validate",
            json!({"files": files}),
        )
        .await;
    assert_problem(status, &body, 422, "policy-invalid");
    let codes: Vec<(&str, u64)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["file"] == "noid.cedar")
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap_or(0)))
        .collect();
    for expected in [
        ("policy::missing_id", 1),
        ("policy::missing_priority", 1),
        ("policy::bad_id", 4),
        ("policy::bad_priority", 5),
    ] {
        assert!(codes.contains(&expected), "{expected:?} in {codes:?}");
    }
    let validation: Vec<&(&str, u64)> = codes
        .iter()
        .filter(|(c, _)| *c == "policy::validation")
        .collect();
    assert_eq!(validation.len(), 2, "both policies' type errors: {codes:?}");
}
