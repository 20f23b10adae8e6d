//! The policy CLI against a running server (issue 15, item 10): `status` and `versions`, a
//! draft diffed against the live version line by line, `push` of a version whose tests fail
//! exits 1, and `simulate` refuses an inverted range as the API does.

mod service;

use std::path::{Path, PathBuf};

use regulator::auth::Role;
use service::TestApp;
use sqlx::PgPool;

async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regulator"))
            .args(&args)
            .env_remove("REGULATOR_POLICIES")
            .env_remove("REGULATOR_SERVER")
            .env_remove("REGULATOR_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the shipped bundle, edited by `edit`.
fn draft(edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-draft-{}", uuid::Uuid::new_v4()));
    copy(&shipped(), &dir);
    edit(&dir);
    dir
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[sqlx::test]
async fn status_versions_diff_and_push_tell_the_truth(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let token = app.token("legal-team", &[Role::PolicyAuthor]);
    let with_server = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--server".into(),
            app.base.clone(),
            "--token".into(),
            token.clone(),
        ]);
        all
    };
    let shipped = shipped();
    let shipped = shipped.to_str().unwrap();

    let (code, out, err) = cli(with_server(&["policy", "status", "--policies", shipped])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("active: version 1 (hash "), "{out}");
    assert!(out.contains("is the active version"), "{out}");

    // A draft that renames a jurisdiction: the entities' one changed line, shown as such.
    let renamed = draft(|dir| {
        let path = dir.join("entities.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen(
            "\"name\": \"United States\"",
            "\"name\": \"United States of America\"",
            1,
        );
        assert_ne!(text, edited);
        std::fs::write(path, edited).unwrap();
    });
    let renamed = renamed.to_str().unwrap();
    let (code, out, err) = cli(with_server(&["policy", "diff", "live", renamed])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("changed  entities.json"), "{out}");
    assert!(
        out.contains("    - \"name\": \"United States\"")
            || out.contains("-       \"name\": \"United States\""),
        "{out}"
    );
    assert!(
        out.contains("\"name\": \"United States of America\""),
        "{out}"
    );
    let changed_lines = out
        .lines()
        .filter(|l| l.trim_start().starts_with("- ") || l.trim_start().starts_with("+ "))
        .count();
    assert_eq!(
        changed_lines, 2,
        "only the changed line, not the whole file: {out}"
    );
    assert!(out.contains("entities changed"), "{out}");
    let (code, out, _) = cli(with_server(&["policy", "status", "--policies", renamed])).await;
    assert_eq!(code, 0);
    assert!(out.contains("differs from the active version"), "{out}");

    // A draft whose suite fails: stored, but push exits 1.
    let failing = draft(|dir| {
        std::fs::write(
            dir.join("tests/wrong.toml"),
            r#"
[assets.bond]
chain = "ethereum"
asset = "0xB"
issuer_jurisdiction = "US"
asset_class = "security"

[[case]]
name = "the SEC may seize (wrong on purpose)"
principal = "US-SEC"
action = "SEIZE"
asset = "bond"
instrument = "warrant"
[case.expect]
decision = "allow"
determining = []
priority = 700
"#,
        )
        .unwrap();
    });
    let (code, out, err) = cli(with_server(&[
        "policy",
        "push",
        "--policies",
        failing.to_str().unwrap(),
        "--message",
        "wrong on purpose",
    ]))
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("stored as version 2"), "{out}");
    assert!(err.contains("its tests fail"), "{err}");

    let (code, out, err) = cli(with_server(&["policy", "versions"])).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("     2  "), "{out}");
    assert!(lines[1].starts_with("*    1  "), "{out}");
    assert!(out.contains("wrong on purpose"), "{out}");

    // An inverted range, with or without a server.
    for args in [
        with_server(&[
            "policy",
            "simulate",
            "--version",
            "1",
            "--from-seq",
            "9",
            "--to-seq",
            "3",
        ]),
        vec![
            "policy".into(),
            "simulate".into(),
            "--from-seq".into(),
            "9".into(),
            "--to-seq".into(),
            "3".into(),
        ],
    ] {
        let (code, _, err) = cli(args).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("from_seq 9 is after to_seq 3"), "{err}");
    }
    app.app.stop().await;
}

/// A second rollback would silently re-activate the version just rolled away from: refused
/// unless `--to` asks for it.
#[sqlx::test]
async fn a_second_rollback_does_not_silently_undo_the_first(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    let token = app.token("legal-team", &[Role::PolicyAuthor]);
    let with_server = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--server".into(),
            app.base.clone(),
            "--token".into(),
            token.clone(),
        ]);
        all
    };
    let renamed = draft(|dir| {
        let path = dir.join("entities.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            path,
            text.replacen("\"name\": \"United States\"", "\"name\": \"USA\"", 1),
        )
        .unwrap();
    });
    let (code, _, err) = cli(with_server(&[
        "policy",
        "push",
        "--policies",
        renamed.to_str().unwrap(),
        "--message",
        "rename",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(with_server(&["policy", "activate", "2"])).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(with_server(&["policy", "rollback"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("version 1 active"), "{out}");

    let (code, _, err) = cli(with_server(&["policy", "rollback"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would re-activate version 2"), "{err}");
    let (code, out, _) = cli(with_server(&["policy", "status"])).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("active: version 1 "),
        "still version 1: {out}"
    );
    let (code, out, err) = cli(with_server(&["policy", "rollback", "--to", "2"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("version 2 active"), "{out}");
    app.app.stop().await;
}
