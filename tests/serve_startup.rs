//! `regulator serve` tells the truth at start-up and shutdown (issue 15, item 10): an
//! unreachable database is named once with a hint, a missing policy directory is named, a port
//! in use is reported before anything is migrated, shutdown is logged, and with no database
//! given and none running it starts (and stops) a private PostgreSQL of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn serve(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regulator"));
    c.current_dir(dir)
        .arg("serve")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "text",
        ])
        .env("REGULATOR_POLICIES", policies())
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1");
    c
}

fn output_within(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_database_is_named_once_with_a_hint() {
    let dir = scratch("unreachable");
    let child = serve(&dir, free_port())
        .args([
            "--database-url",
            "postgres://postgres:hunter2@127.0.0.1:1/regulator",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(30));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot use the database at postgres://postgres:***@127.0.0.1:1/regulator"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2") && !stdout.contains("hunter2"));
    assert_eq!(
        stderr.matches("hint: is PostgreSQL running").count(),
        1,
        "{stderr}"
    );
    assert!(
        !stdout.contains("cannot use the database"),
        "said once: {stdout}"
    );
}

#[sqlx::test]
async fn a_missing_policy_directory_is_named(pool: PgPool) {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let dir = scratch("no-policies");
    let child = serve(&dir, free_port())
        .args([
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ])
        .args(["--policies", "no-such-dir"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(60));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("there is no policy directory no-such-dir"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn policy_errors_are_listed_one_by_one(pool: PgPool) {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let dir = scratch("bad-policies");
    let bundle = dir.join("policies");
    std::fs::create_dir_all(&bundle).unwrap();
    for entry in std::fs::read_dir(policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, bundle.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        bundle.join("broken.cedar"),
        "permit(principal, action, resource) when {",
    )
    .unwrap();
    let child = serve(&dir, free_port())
        .args([
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ])
        .arg("--policies")
        .arg(&bundle)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(60));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("do not load:\n  broken.cedar"), "{stderr}");
}

#[test]
fn a_port_in_use_is_reported_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let db = format!("never_created_{}", uuid::Uuid::new_v4().simple());
    let dir = scratch("port-in-use");
    let child = serve(&dir, port)
        .args([
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    let exists = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-tAc"])
        .arg(format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{db}'"
        ))
        .output();
    if let Ok(exists) = exists {
        assert_eq!(
            String::from_utf8_lossy(&exists.stdout).trim(),
            "0",
            "nothing was created"
        );
    }
}

#[test]
fn without_server_binaries_the_package_to_install_is_named() {
    let dir = scratch("no-binaries");
    let child = serve(&dir, free_port())
        .env(
            "REGULATOR_DEFAULT_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/regulator",
        )
        .env("REGULATOR_POSTGRES_INSTALL_ROOT", dir.join("nothing-here"))
        .env("PATH", dir.join("no-bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("install the `postgresql` package"),
        "{stderr}"
    );
    assert!(!dir.join(".regulator/pg").exists());
}

/// The tests run as root, where PostgreSQL refuses to run: `serve` then makes and runs the
/// cluster as the `postgres` user. Skipped where no server binaries are installed.
#[tokio::test]
async fn with_no_database_serve_runs_a_private_postgres_and_stops_it_on_sigterm() {
    if !Path::new("/usr/lib/postgresql").is_dir() {
        eprintln!("skipped: no PostgreSQL server binaries under /usr/lib/postgresql");
        return;
    }
    let dir = scratch("private-pg");
    let port = free_port();
    let child = serve(&dir, port)
        .env(
            "REGULATOR_DEFAULT_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/regulator",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready: serde_json::Value = loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break r.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the private PostgreSQL never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ready["active_version"], 1);
    let data = dir.join(".regulator/pg/data");
    assert!(
        data.join("postmaster.pid").exists(),
        "the cluster runs in .regulator/pg"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = output_within(child, Duration::from_secs(60));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("started a private PostgreSQL"), "{stdout}");
    assert!(
        stdout.contains("shutting down") && stdout.contains("SIGTERM"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stopped the private PostgreSQL"),
        "{stdout}"
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the cluster was stopped"
    );
    let _ = std::fs::remove_dir_all(dir);
}
