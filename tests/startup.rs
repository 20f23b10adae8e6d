//! Start-up rules of SPEC §6: development mode's secret, and no public listening without keys.

mod service;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use regulator::app::{App, StartError};
use regulator::auth::{KeySource, Verifier};
use sqlx::PgPool;

#[sqlx::test]
async fn a_non_loopback_address_is_refused_without_keys(pool: PgPool) {
    let mut config = service::config(service::secret_file(), 100);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = App::start_with_pool(config, pool).await;
    assert!(matches!(refused, Err(StartError::InsecureListen(_))));
}

#[test]
fn the_token_command_mints_with_a_fresh_0600_secret_that_the_server_accepts() {
    let secret = service::secret_file();
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["token", "--sub", "US-SEC", "--roles", "regulator,auditor"])
        .arg("--dev-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = Verifier::new(
        &KeySource::DevSecret(secret),
        service::ISSUER,
        service::AUDIENCE,
    )
    .unwrap();
    let principal = verifier.verify(token.trim()).unwrap();
    assert_eq!(principal.sub, "US-SEC");
    assert!(principal.has(regulator::auth::Role::Auditor));
}

#[test]
fn a_secret_others_can_read_is_refused() {
    let secret = service::secret_file();
    regulator::auth::dev_secret(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = regulator::auth::dev_secret(&secret);
    assert!(refused.unwrap_err().to_string().contains("chmod 600"));
}

#[test]
fn an_unknown_role_is_refused_by_the_token_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["token", "--sub", "US-SEC", "--roles", "overlord"])
        .arg("--dev-secret-file")
        .arg(service::secret_file())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}
