//! What a chain adapter reports about a target: the observed projection, where on the chain it
//! was read, how final that block was, and the version the adapter believed in force.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{AssetId, HolderAddress, InvalidValue};
use super::projection::Observed;

/// A 32-byte hash as `0x` + 64 lowercase hex digits (a block or transaction hash).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash32(String);

impl Hash32 {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hash32 {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0x").unwrap_or("");
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidValue {
                what: "hash",
                why: "must be 0x followed by 64 hex digits".into(),
            });
        }
        Ok(Hash32(format!("0x{}", digits.to_ascii_lowercase())))
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Hash32 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("0x-prefixed 32-byte hex hash"))
            .into()
    }
}

impl utoipa::ToSchema for Hash32 {}

/// A block, by number and hash: a reorg changes the hash at a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockRef {
    pub number: u64,
    pub hash: Hash32,
}

/// How final the block an observation was read at is. Only `final` observations count for the
/// reconciler; the others are stored for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finality {
    /// Accepted by the chain's finality rule (N confirmations or the `finalized` tag).
    Final,
    /// The head or near it: may still be reorged out.
    Unsafe,
}

impl Finality {
    pub fn as_str(self) -> &'static str {
        match self {
            Finality::Final => "final",
            Finality::Unsafe => "unsafe",
        }
    }
}

/// Longest failure reason stored.
pub const MAX_FAILURE: usize = 2048;
/// Most transaction hashes one observation may carry.
pub const MAX_TX_HASHES: usize = 64;

/// One target's observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    pub asset: AssetId,
    /// Absent: the asset as a whole (its pause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
    pub observed: Observed,
    pub block: BlockRef,
    pub finality: Finality,
    /// The asset version the adapter believed in force when it read the chain.
    pub version: u64,
    /// The transactions the adapter sent for that version, if any.
    #[serde(default)]
    pub tx_hashes: Vec<Hash32>,
    /// Why the adapter could not apply that version (e.g. the contract's revert reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Observation {
    /// Checks what types cannot: bounds and the target's kind.
    pub fn check(&self) -> Result<(), String> {
        if self.tx_hashes.len() > MAX_TX_HASHES {
            return Err(format!("at most {MAX_TX_HASHES} tx_hashes per observation"));
        }
        if let Some(f) = &self.failure {
            if f.is_empty() || f.len() > MAX_FAILURE {
                return Err(format!("failure must be 1 to {MAX_FAILURE} bytes"));
            }
        }
        match (&self.holder, &self.observed) {
            (None, Observed::Asset { .. }) | (Some(_), Observed::Holder { .. }) => Ok(()),
            (None, _) => Err("an asset-wide observation reports {\"kind\": \"asset\"}".into()),
            (Some(_), _) => Err("a holder's observation reports {\"kind\": \"holder\"}".into()),
        }
    }
}

/// A batch of observations from one chain's adapter.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationBatch {
    pub observations: Vec<Observation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_normalised_and_checked() {
        let h: Hash32 = format!("0x{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(h.as_str(), format!("0x{}", "ab".repeat(32)));
        for bad in [
            "",
            "0x",
            "ab".repeat(32).as_str(),
            &format!("0x{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Hash32>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_observation_must_match_its_target() {
        let json = serde_json::json!({
            "asset": "BOND",
            "observed": {"kind": "holder", "frozen": true, "frozen_tokens": "0", "balance": "5"},
            "block": {"number": 7, "hash": format!("0x{}", "0".repeat(64))},
            "finality": "final",
            "version": 1
        });
        let obs: Observation = serde_json::from_value(json).unwrap();
        assert!(obs.check().is_err());
    }
}
