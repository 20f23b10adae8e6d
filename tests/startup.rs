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
fn the_token_command_mints_with_the_servers_secret_that_the_server_accepts() {
    let secret = service::secret_file();
    // No secret yet: `token` says so rather than sign with a new one no server knows.
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["token", "--sub", "US-SEC", "--roles", "regulator"])
        .arg("--dev-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there is no development secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!secret.exists(), "no secret was created");

    // The secret as `serve` creates it on first start: mode 0600.
    regulator::auth::dev_secret(&secret).unwrap();
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Roles with spaces after the commas, quoted or not.
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args([
            "token",
            "--sub",
            "US-SEC",
            "--roles",
            "regulator,",
            "auditor",
        ])
        .arg("--dev-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = Verifier::new(
        &KeySource::DevSecret(secret.clone()),
        service::ISSUER,
        service::AUDIENCE,
    )
    .unwrap();
    let principal = verifier.verify(token.trim()).unwrap();
    assert_eq!(principal.sub, "US-SEC");
    assert!(principal.has(regulator::auth::Role::Auditor));
    assert!(principal.has(regulator::auth::Role::Regulator));
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args([
            "token",
            "--sub",
            "US-SEC",
            "--roles",
            "regulator, policy_author",
        ])
        .arg("--dev-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    let principal = verifier
        .verify(String::from_utf8(out.stdout).unwrap().trim())
        .unwrap();
    assert!(principal.has(regulator::auth::Role::PolicyAuthor));
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
    let secret = service::secret_file();
    regulator::auth::dev_secret(&secret).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regulator"))
        .args(["token", "--sub", "US-SEC", "--roles", "overlord"])
        .arg("--dev-secret-file")
        .arg(secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[test]
fn a_jwks_file_verifies_rs256_tokens_by_kid_and_refuses_symmetric_keys() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let private = std::fs::read(fixtures.join("rsa-test-private.pem")).unwrap();
    let signing = EncodingKey::from_rsa_pem(&private).unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let path = service::secret_file().with_file_name("jwks.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();

    let verifier = Verifier::new(
        &KeySource::Jwks(path.clone()),
        service::ISSUER,
        service::AUDIENCE,
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = regulator::auth::Claims {
        sub: "US-SEC".into(),
        roles: vec![regulator::auth::Role::Regulator],
        iss: service::ISSUER.into(),
        aud: service::AUDIENCE.into(),
        exp: now + 600,
        nbf: None,
        iat: now,
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().sub, "US-SEC");

    header.kid = Some("other".into());
    let unknown_kid = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    assert!(verifier.verify(&unknown_kid).is_err());

    std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    let refused = Verifier::new(&KeySource::Jwks(path), service::ISSUER, service::AUDIENCE);
    assert!(refused.err().unwrap().to_string().contains("symmetric"));
}
