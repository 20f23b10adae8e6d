//! Failover of a frozen leader (issue 15, item 11), with two real replicas (processes of the
//! `regulator` binary) on one database: the leader is stopped with SIGSTOP, which keeps its
//! connection and its advisory lock; the standby must see its lease expire, terminate its
//! session and decide the orders submitted meanwhile, within a bound. When the old leader
//! wakes it must not write: no decision is lost or doubled, and `audit verify` is clean.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regulator::auth::{mint_dev_token, Role};
use serde_json::{json, Value};

/// The lease given to both replicas.
const LEASE: Duration = Duration::from_secs(2);
/// Failover must complete within the lease plus this (generous for a loaded 2-core machine:
/// the standby polls every 250 ms and termination waits for the backend to end).
const SLACK: Duration = Duration::from_secs(12);

struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        signal(&self.child, "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path, database_url: &str, name: &str) -> Replica {
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", database_url])
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .arg("--dev-secret-file")
        .arg(dir.join("dev-secret"))
        .arg("--checkpoint-key")
        .arg(dir.join("checkpoint-key.pem"))
        .args(["--leader-lease", &format!("{}ms", LEASE.as_millis())])
        .args(["--conflict-window-ms", "0", "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn ready(client: &reqwest::Client, replica: &Replica) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", replica.base)).send().await {
            if r.status() == 200 {
                return r.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never got ready",
            replica.base
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit(client: &reqwest::Client, replica: &Replica, token: &str, i: usize) -> String {
    let body = json!({
        "target": {"chain": "ethereum", "asset": "0xACME-BOND-2031", "holder": format!("0xH{i}")},
        "legal_basis": {"instrument": "court_order", "reference": "SEC v. Acme"},
        "instruction": {"kind": "FREEZE"},
    });
    let response = client
        .post(format!("{}/v1/orders", replica.base))
        .bearer_auth(token)
        .header("Idempotency-Key", format!("failover-{i}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert!(status == 201 || status == 202, "{status}: {answer}");
    answer["order_id"].as_str().unwrap().to_owned()
}

async fn decided(client: &reqwest::Client, replica: &Replica, token: &str, id: &str) -> bool {
    let Ok(response) = client
        .get(format!("{}/v1/orders/{id}", replica.base))
        .bearer_auth(token)
        .send()
        .await
    else {
        return false;
    };
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    answer["status"] == "decided"
}

#[tokio::test]
async fn a_frozen_leader_is_deposed_and_nothing_is_lost_or_doubled() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("failover-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("failover_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let a = start(&dir, &url, "a");
    // Ready is not yet leading: the first replica takes the lock a moment after it serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&client, &a).await["sequencer_leading"] != true {
        assert!(Instant::now() < deadline, "the first replica never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = start(&dir, &url, "b");
    assert_eq!(ready(&client, &b).await["sequencer_leading"], false);
    let secret = dir.join("dev-secret");
    let token = |sub: &str, role| {
        mint_dev_token(
            &secret,
            "regulator",
            "regulator",
            sub,
            vec![role],
            chrono::Duration::minutes(10),
        )
        .unwrap()
    };
    let (admin, sec) = (token("ops", Role::Admin), token("US-SEC", Role::Regulator));
    let registered = client
        .put(format!("{}/v1/assets/ethereum/0xACME-BOND-2031", b.base))
        .bearer_auth(&admin)
        .json(&json!({"issuer_jurisdiction": "US", "asset_class": "security"}))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    let mut orders = vec![submit(&client, &b, &sec, 0).await];
    assert!(decided(&client, &b, &sec, &orders[0]).await, "A decides");

    signal(&a.child, "STOP");
    let frozen_at = Instant::now();
    for i in 1..6 {
        orders.push(submit(&client, &b, &sec, i).await);
    }
    loop {
        let mut all = true;
        for id in &orders {
            all &= decided(&client, &b, &sec, id).await;
        }
        if all {
            break;
        }
        assert!(
            frozen_at.elapsed() < LEASE + SLACK,
            "orders still undecided {:?} after the leader froze",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = frozen_at.elapsed();
    eprintln!("failover: all orders decided {failover:?} after the leader froze");
    assert_eq!(ready(&client, &b).await["sequencer_leading"], true);

    // The old leader wakes: it finds its session gone and stands by; orders sent to it are
    // decided by the new leader.
    signal(&a.child, "CONT");
    let woken = Instant::now();
    orders.push(submit(&client, &a, &sec, 6).await);
    while !decided(&client, &a, &sec, &orders[6]).await {
        assert!(
            woken.elapsed() < SLACK,
            "the woken replica's order is decided"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready(&client, &a).await["sequencer_leading"], false);

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (decisions, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT order_id) FROM decisions WHERE order_id IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((decisions, distinct), (7, 7), "one decision per order");
    let epochs: i64 = sqlx::query_scalar("SELECT epoch FROM ledger_head")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(epochs >= 2, "a second leadership began");
    pool.close().await;

    let verify = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["audit", "verify", "--database-url", &url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains("hash chain sound"), "{out}");

    drop(a);
    drop(b);
    let admin_pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&admin_pool)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
