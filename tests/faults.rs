//! Faults are reported, not waited out (issue 15, item 11): with the database unreachable,
//! readiness answers within a second and requests fail fast with 503 `not-ready`.
//!
//! The database "goes down" behind a TCP proxy that the replica connects through: the proxy
//! cuts every open connection and then accepts new ones without ever answering, the worst case
//! (a host that vanished), where only the engine's own timeouts can give an answer.

mod service;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regulator::app::App;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to Postgres that can be cut off (and restored).
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (flag, cuts) = (Arc::clone(&up), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let up = flag.load(Ordering::SeqCst);
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    if !up {
                        // Accept and never answer, like a host that is gone.
                        let _ = cut.changed().await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let response = client
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[sqlx::test]
async fn with_the_database_gone_readiness_and_requests_answer_503_fast(pool: PgPool) {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let proxy = Proxy::start().await;
    let secret = service::secret_file();
    let mut config = service::config(secret.clone(), 100);
    config.database_url = format!("postgres://postgres@127.0.0.1:{}/{database}", proxy.port);
    config.db_acquire_timeout = Duration::from_secs(2);
    let app = App::start(config).await.expect("starts through the proxy");
    let base = format!("http://{}", app.addr);
    let client = reqwest::Client::new();
    let auditor = regulator::auth::mint_dev_token(
        &secret,
        service::ISSUER,
        service::AUDIENCE,
        "audit",
        vec![regulator::auth::Role::Auditor],
        chrono::Duration::minutes(10),
    )
    .unwrap();

    let (status, _, _) = get(&client, &format!("{base}/readyz"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&client, &format!("{base}/v1/decisions"), &auditor).await;
    assert_eq!(status, StatusCode::OK);

    proxy.down();
    for _ in 0..3 {
        let (status, body, took) = get(&client, &format!("{base}/readyz"), "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["type"], "urn:regulator:problem:not-ready");
        assert!(
            took < Duration::from_millis(1_000),
            "readiness took {took:?}"
        );
    }
    for path in [
        "/v1/decisions",
        "/v1/audit/decisions",
        "/v1/audit/checkpoints/latest",
    ] {
        let (status, body, took) = get(&client, &format!("{base}{path}"), &auditor).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["type"], "urn:regulator:problem:not-ready", "{path}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains("pool"),
            "no database detail leaks: {detail}"
        );
        // The 2 s acquire timeout, not sqlx's 30 s default.
        assert!(took < Duration::from_secs(4), "{path} took {took:?}");
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = get(&client, &format!("{base}/readyz"), "").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "readiness comes back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}
