//! The policy CLI: exit codes and output, run as a user would.

use std::process::Command;

fn regulator(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("REGULATOR_POLICIES")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_shipped_policies() {
    let (code, out, _) = regulator(&["policy", "validate"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn the_shipped_suites_pass() {
    let (code, out, _) = regulator(&["policy", "test"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn validate_reports_spans_and_fails_on_a_broken_bundle() {
    let dir = std::env::temp_dir().join(format!("regulator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["schema.cedarschema", "entities.json"] {
        std::fs::copy(format!("policies/{f}"), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("bad.cedar"),
        "\npermit (principal, action == Action::\"MONITOR\", resource);\n",
    )
    .unwrap();
    let (code, _, err) = regulator(&["policy", "validate", "--policies", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 1);
    assert!(err.contains("policy::missing_id"), "{err}");
    assert!(err.contains("bad.cedar:2:1"), "{err}");
}

#[test]
fn a_failing_case_fails_the_run() {
    let dir = std::env::temp_dir().join(format!("regulator-cli-suite-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    for f in ["schema.cedarschema", "entities.json", "us.cedar"] {
        std::fs::copy(format!("policies/{f}"), dir.join(f)).unwrap();
    }
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
    let (code, out, _) = regulator(&["policy", "test", "--policies", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  tests/wrong.toml › the SEC may seize"),
        "{out}"
    );
    assert!(out.contains("us-sec-cannot-seize"), "{out}");
}
