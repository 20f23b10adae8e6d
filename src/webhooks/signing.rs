//! Standard Webhooks signing: `whsec_` secrets and `v1,` HMAC-SHA256 signatures.
//!
//! A signature covers `{webhook-id}.{webhook-timestamp}.{body}`, so a receiver that checks it
//! also knows the message was not replayed under another id or at another time. While a secret
//! is being rotated, a message carries one signature per live secret, separated by spaces; a
//! receiver accepts the message if any of them verifies with the secret it holds.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix Standard Webhooks gives every secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How many random bytes a new secret holds (Standard Webhooks allows 24 to 64).
const SECRET_BYTES: usize = 32;

/// A signing secret. `Debug` never shows the key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    /// HMAC keyed once with `key`; each signature starts from a copy.
    mac: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Secret {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with `whsec_`")]
    MissingPrefix,
    #[error("a webhook secret is `whsec_` and base64: {0}")]
    NotBase64(String),
    #[error("a webhook secret holds 24 to 64 bytes, not {0}")]
    WrongLength(usize),
}

impl Secret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_key(key.to_vec())
    }

    fn from_key(key: Vec<u8>) -> Self {
        // HMAC takes keys of any length (long ones are hashed first): nothing to refuse here.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        Self { key, mac }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| SecretError::NotBase64(e.to_string()))?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::WrongLength(key.len()));
        }
        Ok(Self::from_key(key))
    }

    /// The `whsec_…` text, as shown once to the subscriber and stored for signing.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// The `webhook-signature` header value: one signature per secret, separated by spaces.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|s| s.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference libraries.
    #[test]
    fn matches_the_standard_webhooks_reference_signature() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_generated_secret_round_trips_and_differs_each_time() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(Secret::parse(&a.expose()).unwrap(), a);
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(Secret::parse("abc"), Err(SecretError::MissingPrefix));
        assert!(matches!(
            Secret::parse("whsec_!!!"),
            Err(SecretError::NotBase64(_))
        ));
        assert_eq!(
            Secret::parse("whsec_AAAA"),
            Err(SecretError::WrongLength(3))
        );
    }

    #[test]
    fn rotation_signs_with_every_live_secret() {
        let old = Secret::generate();
        let new = Secret::generate();
        let header = signature_header([&old, &new], "msg_1", 1, b"{}");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(
            parts,
            [old.sign("msg_1", 1, b"{}"), new.sign("msg_1", 1, b"{}")]
        );
    }
}
