//! Bearer tokens (SPEC §6): who is calling, and with which roles.
//!
//! Production verifies RS256/ES256/EdDSA signatures with configured public keys (a PEM file or a
//! JWKS file). Development uses HS256 with a secret generated into a 0600 file, and
//! `regulator token` mints tokens with it. A verifier accepts exactly the algorithms of its keys,
//! so a token cannot pick a weaker one (`alg: none`, or HS256 signed with a public key).
//!
//! Every token must carry `sub`, `iss`, `aud` (a string or an array naming this audience), `exp`
//! and `iat`; `nbf` is checked when present. `iat` is required because the lifetime cap is
//! `exp - iat`: without it a token minted for a year would pass once its last day came. A token
//! is refused when it is longer than [`MAX_TOKEN_BYTES`], lives longer than the configured cap,
//! or says it was issued in the future (beyond the clock leeway).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// API roles a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits orders as itself (its `sub` is the issuing authority).
    Regulator,
    /// A transaction coordinator: takes and releases preemptive leases.
    Coordinator,
    PolicyAuthor,
    /// Reads everything.
    Auditor,
    /// A chain's adapter: reads the feed and targets of its own chain (its `sub`).
    Chain,
    Admin,
    /// Scrapes `/metrics` when the service requires a token for it; reads nothing else.
    Monitor,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!("unknown role {s:?}; roles are regulator, coordinator, policy_author, auditor, chain, admin, monitor")
        })
    }
}

/// The claims of a token the engine mints (`regulator token`); see the module for what it checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<Role>,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iat: i64,
}

/// What the engine reads from a verified token; `iss`, `aud`, `exp` and `nbf` are checked by
/// the signature validation (which reads `aud` as a string or an array).
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    #[serde(default)]
    roles: Vec<Role>,
    exp: i64,
    iat: i64,
}

/// The longest token accepted, in bytes: a real one is well under 2 KB, and a bigger one only
/// costs parsing time.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The longest lifetime (`exp - iat`) accepted unless configured otherwise.
pub const DEFAULT_MAX_TOKEN_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub roles: HashSet<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid for this audience")]
    WrongAudience,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Development: HS256 with the secret in this file, created (mode 0600) if missing.
    DevSecret(PathBuf),
    /// A PEM public key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    PublicKeyPem(PathBuf),
    /// A JWKS file; tokens pick a key by `kid`.
    Jwks(PathBuf),
}

impl KeySource {
    pub fn is_development(&self) -> bool {
        matches!(self, KeySource::DevSecret(_))
    }
}

struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Checks bearer tokens against the configured keys, issuer and audience.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    max_lifetime: std::time::Duration,
}

impl Verifier {
    pub fn new(source: &KeySource, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            v.leeway = LEEWAY_SECS;
            v
        };
        let keys = match source {
            KeySource::DevSecret(path) => vec![VerifyingKey {
                kid: None,
                key: DecodingKey::from_secret(&dev_secret(path)?),
                validation: validation(Algorithm::HS256),
            }],
            KeySource::PublicKeyPem(path) => {
                let pem = read(path)?;
                let (key, alg) = DecodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                    .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (k, Algorithm::EdDSA)))
                    .map_err(|e| KeyError::Bad {
                        path: path.clone(),
                        why: format!("not an RSA, EC P-256 or Ed25519 public key: {e}"),
                    })?;
                vec![VerifyingKey {
                    kid: None,
                    key,
                    validation: validation(alg),
                }]
            }
            KeySource::Jwks(path) => {
                let bad = |why: String| KeyError::Bad {
                    path: path.clone(),
                    why,
                };
                let set: JwkSet = serde_json::from_slice(&read(path)?)
                    .map_err(|e| bad(format!("not a JWKS: {e}")))?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let alg = match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        _ => {
                            return Err(bad(
                                "only RSA, EC and OKP public keys are accepted; symmetric keys are for development only".into(),
                            ))
                        }
                    };
                    let key =
                        DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("bad key: {e}")))?;
                    keys.push(VerifyingKey {
                        kid: jwk.common.key_id.clone(),
                        key,
                        validation: validation(alg),
                    });
                }
                if keys.is_empty() {
                    return Err(bad("the JWKS holds no keys".into()));
                }
                keys
            }
        };
        Ok(Self {
            keys,
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        })
    }

    /// Refuses tokens whose `exp - iat` exceeds `max` (default [`DEFAULT_MAX_TOKEN_LIFETIME`]).
    pub fn with_max_lifetime(mut self, max: std::time::Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Verifies `token` (without the `Bearer ` prefix).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let candidates = self.keys.iter().filter(|k| match (&k.kid, &header.kid) {
            (Some(own), Some(asked)) => own == asked,
            _ => true,
        });
        let mut last = AuthError::Invalid("no key matches the token".into());
        for k in candidates {
            match jsonwebtoken::decode::<VerifiedClaims>(token, &k.key, &k.validation) {
                Ok(data) => {
                    self.check_lifetime(&data.claims)?;
                    check_sub(&data.claims.sub)?;
                    return Ok(Principal {
                        sub: data.claims.sub,
                        roles: data.claims.roles.into_iter().collect(),
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::InvalidAudience => AuthError::WrongAudience,
                        _ => AuthError::Invalid(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }

    /// The signature is good; now the times the signature cannot judge.
    fn check_lifetime(&self, claims: &VerifiedClaims) -> Result<(), AuthError> {
        let now = chrono::Utc::now().timestamp();
        if claims.iat > now.saturating_add(LEEWAY_SECS as i64) {
            return Err(AuthError::Invalid(
                "the token's iat is in the future".into(),
            ));
        }
        let max = i64::try_from(self.max_lifetime.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_sub(claims.iat) > max {
            return Err(AuthError::Invalid(format!(
                "the token lives longer than the {max} s this service accepts (exp - iat)"
            )));
        }
        Ok(())
    }
}

/// Most characters of a token's `sub`.
const MAX_SUB_CHARS: usize = 256;

/// A `sub` becomes an order's issuer, a version's author, a ledger event's actor: one line of
/// printable text, checked here so that no signed token can carry a NUL to the database.
/// Whatever mints tokens checks a subject with this before it signs one.
pub fn check_sub(sub: &str) -> Result<(), AuthError> {
    if sub.is_empty() {
        return Err(AuthError::Invalid("the token's sub is empty".into()));
    }
    crate::domain::check_text(
        "the token's sub",
        sub,
        MAX_SUB_CHARS,
        crate::domain::Lines::One,
    )
    .map_err(AuthError::Invalid)
}

/// Mints a development token (HS256) with the secret in `path`.
pub fn mint_dev_token(
    path: &Path,
    issuer: &str,
    audience: &str,
    sub: &str,
    roles: Vec<Role>,
    ttl: chrono::Duration,
) -> Result<String, KeyError> {
    let now = chrono::Utc::now().timestamp();
    sign_dev_claims(
        path,
        &Claims {
            sub: sub.to_owned(),
            roles,
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            exp: now + ttl.num_seconds(),
            nbf: None,
            iat: now,
        },
    )
}

/// Signs `claims` (HS256) with the development secret in `path`, as they are: the caller
/// knows the expiry it promises.
pub fn sign_dev_claims(path: &Path, claims: &Claims) -> Result<String, KeyError> {
    let secret = dev_secret(path)?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(&secret),
    )
    .map_err(|e| KeyError::Bad {
        path: path.to_owned(),
        why: format!("cannot sign: {e}"),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads the development secret, generating it (32 random bytes, hex, mode 0600) if missing.
/// A secret file others can read is refused rather than trusted.
pub fn dev_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let secret: [u8; 32] = rand::random();
            file.write_all(hex::encode(secret).as_bytes()).map_err(io)?;
            tracing::info!(path = %path.display(), "generated a development signing secret");
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Bad {
            path: path.to_owned(),
            why: format!(
                "mode {:o} lets others read the secret; chmod 600 it",
                mode & 0o777
            ),
        });
    }
    let secret = std::fs::read_to_string(path).map_err(io)?;
    let secret = secret.trim();
    if secret.len() < 32 {
        return Err(KeyError::Bad {
            path: path.to_owned(),
            why: "the secret is shorter than 32 characters".into(),
        });
    }
    Ok(secret.as_bytes().to_vec())
}
