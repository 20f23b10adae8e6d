//! Spawning the real service for a test: its own database, a real HTTP port, real Cedar.
#![allow(dead_code)]

pub mod ledger;

use std::path::PathBuf;
use std::time::Duration;

use regulator::app::{App, Config};
use regulator::auth::{mint_dev_token, KeySource, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

pub const ISSUER: &str = "regulator";
pub const AUDIENCE: &str = "regulator";

/// A running replica on port 0, with a development secret of its own.
pub struct TestApp {
    pub app: App,
    pub base: String,
    pub client: reqwest::Client,
    pub secret: PathBuf,
}

/// A fresh development secret path, under cargo's scratch directory for integration tests.
pub fn secret_file() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dev-secret-{}", uuid::Uuid::new_v4()))
        .join("dev-secret")
}

pub fn config(secret: PathBuf, window_ms: i64) -> Config {
    let checkpoint_key = secret.with_file_name("checkpoint-key.pem");
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: String::new(),
        policies: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies"),
        window: chrono::Duration::milliseconds(window_ms),
        submit_wait: Duration::from_secs(5),
        keys: KeySource::DevSecret(secret),
        jwt_issuer: ISSUER.into(),
        jwt_audience: AUDIENCE.into(),
        max_connections: 8,
        db_acquire_timeout: regulator::storage::DEFAULT_ACQUIRE_TIMEOUT,
        leader_lease: regulator::sequencer::DEFAULT_LEASE_TTL,
        webhooks: regulator::webhooks::WebhookConfig::default(),
        checkpoint_key,
        checkpoint_interval: Duration::from_secs(3600),
        http: Default::default(),
    }
}

impl TestApp {
    /// A replica with the default 100 ms conflict window.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, 100).await
    }

    pub async fn spawn_with(pool: PgPool, window_ms: i64) -> Self {
        let secret = secret_file();
        Self::start(config(secret, window_ms), pool).await
    }

    pub async fn start(config: Config, pool: PgPool) -> Self {
        let secret = match &config.keys {
            KeySource::DevSecret(p) => p.clone(),
            _ => secret_file(),
        };
        let app = App::start_with_pool(config, pool)
            .await
            .expect("app starts");
        Self {
            base: format!("http://{}", app.addr),
            app,
            client: reqwest::Client::new(),
            secret,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        mint_dev_token(
            &self.secret,
            ISSUER,
            AUDIENCE,
            sub,
            roles.to_vec(),
            chrono::Duration::minutes(10),
        )
        .expect("token")
    }

    pub fn admin(&self) -> String {
        self.token("ops", &[Role::Admin])
    }

    pub fn auditor(&self) -> String {
        self.token("audit", &[Role::Auditor])
    }

    pub fn regulator(&self, sub: &str) -> String {
        self.token(sub, &[Role::Regulator])
    }

    pub async fn register(&self, chain: &str, asset: &str, jurisdiction: &str, class: &str) {
        let response = self
            .client
            .put(self.url(&format!("/v1/assets/{chain}/{asset}")))
            .bearer_auth(self.admin())
            .json(&json!({"issuer_jurisdiction": jurisdiction, "asset_class": class}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// SEC freezes of holders `0xH<i>` of the Acme bond, one for each `i` of `range`, each
    /// decided (201) before the next is sent, so their seqs follow `range`.
    pub async fn freeze_holders(&self, range: std::ops::Range<usize>) {
        for i in range {
            let mut body = order(
                "ethereum",
                "0xACME-BOND-2031",
                "court_order",
                "SEC v. Acme",
                json!({"kind": "FREEZE"}),
            );
            body["target"]["holder"] = json!(format!("0xH{i}"));
            let (status, _) = self
                .submit(&self.regulator("US-SEC"), &format!("k{i}"), &body)
                .await;
            assert_eq!(status, 201);
        }
    }

    /// Submits `body` with `key` as `token`; returns the status and the JSON answer.
    pub async fn submit(&self, token: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs `body` as JSON with `token`; returns the status and the JSON answer.
    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .put(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// What `/metrics` shows now (open to anyone in the tests' configuration).
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Whether this replica's sequencer leads, as `/readyz` says.
    pub async fn leading(&self) -> bool {
        let (_, ready) = self.get("", "/readyz").await;
        ready["sequencer_leading"].as_bool().unwrap_or(false)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// An order body in the API's shape.
pub fn order(
    chain: &str,
    asset: &str,
    instrument: &str,
    reference: &str,
    instruction: Value,
) -> Value {
    json!({
        "target": {"chain": chain, "asset": asset},
        "legal_basis": {"instrument": instrument, "reference": reference},
        "instruction": instruction,
    })
}

/// An SEC court-ordered freeze of `holder`'s balance of bond `0xBOND-<asset>` on ethereum.
pub fn bond_freeze(asset: usize, holder: &str) -> Value {
    let mut o = order(
        "ethereum",
        &format!("0xBOND-{asset}"),
        "court_order",
        "SEC v. Many",
        json!({"kind": "FREEZE"}),
    );
    o["target"]["holder"] = json!(holder);
    o
}

/// The ACME bond of the foundation's scenarios: a U.S. security.
pub const BOND: (&str, &str) = ("ethereum", "0xACME-BOND-2031");

pub fn sec_freeze() -> Value {
    order(
        BOND.0,
        BOND.1,
        "court_order",
        "SEC v. Acme Corp., 26-cv-0142 (S.D.N.Y.)",
        json!({"kind": "FREEZE"}),
    )
}

pub fn doj_seize() -> Value {
    order(
        BOND.0,
        BOND.1,
        "warrant",
        "26-MAG-0913",
        json!({"kind": "SEIZE"}),
    )
}

/// Row counts of the tables a request could write.
pub async fn table_counts(pool: &PgPool) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in [
        "assets",
        "orders",
        "intake_queue",
        "decisions",
        "asset_state",
        "holds",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        counts.push((table.to_owned(), n));
    }
    counts
}

/// Makes the first insert into `table` of a row for `holder` run `action` (PL/pgSQL: a
/// `pg_sleep`, a `RAISE EXCEPTION`) before it goes on. The sequence `first_inserts` counts the
/// tries, outside any rollback: `SELECT last_value FROM first_inserts`.
pub async fn on_the_first_insert(pool: &PgPool, table: &str, holder: &str, action: &str) {
    sqlx::raw_sql(&format!(
        "CREATE SEQUENCE first_inserts;
         CREATE FUNCTION on_the_first_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.holder = '{holder}' AND nextval('first_inserts') = 1 THEN
                 {action}
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER on_the_first_insert BEFORE INSERT ON {table}
             FOR EACH ROW EXECUTE FUNCTION on_the_first_insert();"
    ))
    .execute(pool)
    .await
    .unwrap();
}
