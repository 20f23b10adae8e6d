//! Identifiers and values that arrive from outside: each is parsed once, at the edge, into a type
//! that cannot hold an invalid value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a value from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct InvalidValue {
    pub what: &'static str,
    pub why: String,
}

impl InvalidValue {
    fn new(what: &'static str, why: impl Into<String>) -> Self {
        Self {
            what,
            why: why.into(),
        }
    }
}

/// Declares a string newtype whose constructor runs `$check` and that (de)serializes through it.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
                let raw = raw.into();
                let check: fn(&str) -> Result<(), String> = $check;
                check(&raw).map_err(|why| InvalidValue::new($what, why))?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($what)
            }
        }

        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The OpenAPI schema of a string-encoded value.
fn string_schema(what: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(what))
        .into()
}

/// Gives a type that serializes as a string the schema of one.
macro_rules! string_schema {
    ($name:ident, $what:literal) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($what)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

string_schema!(OrderId, "order id (UUID v7)");
string_schema!(Amount, "amount in base units, as a decimal string");

/// Whether free text may run over several lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// One line: no control character at all.
    One,
    /// Line breaks and tabs allowed; every other control character refused.
    Many,
}

/// Checks free text that people write (a legal reference, a description, a message) before it
/// is stored: at most `max_chars` characters, and no NUL or other control characters, which
/// Postgres refuses (NUL) or which hide what a log or a reviewer shows. The error names
/// `field`, so a client can tell which one to fix.
pub fn check_text(field: &str, text: &str, max_chars: usize, lines: Lines) -> Result<(), String> {
    let count = text.chars().count();
    if count > max_chars {
        return Err(format!(
            "{field} holds at most {max_chars} characters; this one holds {count}"
        ));
    }
    let allowed = |c: char| lines == Lines::Many && matches!(c, '\n' | '\r' | '\t');
    if let Some((at, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed(*c))
    {
        return Err(format!(
            "{field} contains the control character U+{:04X} at character {}; {}",
            u32::from(c),
            at + 1,
            match lines {
                Lines::One => "it must be one line of printable text",
                Lines::Many => "only line breaks and tabs are allowed",
            }
        ));
    }
    Ok(())
}

fn bounded(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > max {
        return Err(format!("must be at most {max} bytes"));
    }
    Ok(())
}

fn charset(s: &str, allowed: impl Fn(char) -> bool, described: &str) -> Result<(), String> {
    match s.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!("{c:?} is not allowed; use {described}")),
        None => Ok(()),
    }
}

checked_string!(
    /// Who issues an order: an authority such as `US-SEC`, or a service such as a transaction
    /// coordinator. It is the `sub` of the caller's token and the Cedar principal's id.
    IssuerId,
    "issuer id",
    |s| {
        bounded(s, 64)?;
        charset(
            s,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.',
            "letters, digits, '-', '_' or '.'",
        )
    }
);

checked_string!(
    /// A blockchain, e.g. `ethereum` or `polygon-pos`.
    ChainId,
    "chain id",
    |s| {
        bounded(s, 64)?;
        charset(
            s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
            "lowercase letters, digits, '-' or '_'",
        )
    }
);

checked_string!(
    /// A token id or contract address on a chain.
    AssetId,
    "asset id",
    |s| {
        bounded(s, 256)?;
        charset(s, |c| c.is_ascii_graphic() && c != '/', "printable ASCII without '/'")
    }
);

checked_string!(
    /// A holder's address on a chain.
    HolderAddress,
    "holder address",
    |s| {
        bounded(s, 256)?;
        charset(s, |c| c.is_ascii_graphic() && c != '/', "printable ASCII without '/'")
    }
);

checked_string!(
    /// A jurisdiction code as the policies know it, e.g. `US`, `EU`, `DE`.
    JurisdictionCode,
    "jurisdiction code",
    |s| {
        bounded(s, 32)?;
        charset(
            s,
            |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-',
            "uppercase letters, digits or '-'",
        )
    }
);

checked_string!(
    /// The class of a registered asset, e.g. `security`, `stablecoin`.
    AssetClass,
    "asset class",
    |s| {
        bounded(s, 64)?;
        charset(
            s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
            "lowercase letters, digits or '_'",
        )
    }
);

checked_string!(
    /// The legal instrument behind an order, e.g. `court_order`, `warrant`, `designation`,
    /// `licence`. Policies decide which instruments they accept; the engine only checks the form.
    Instrument,
    "legal instrument",
    |s| {
        bounded(s, 64)?;
        charset(
            s,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
            "lowercase letters, digits or '_'",
        )
    }
);

checked_string!(
    /// The id a policy declares with `@id("…")`.
    PolicyId,
    "policy id",
    |s| {
        bounded(s, 128)?;
        charset(
            s,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.',
            "letters, digits, '-', '_' or '.'",
        )
    }
);

/// An order's identity, assigned at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    /// A new id whose byte order follows creation time (UUIDv7), so ids sort roughly by intake.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| InvalidValue::new("order id", e.to_string()))
    }
}

/// A positive token amount in the asset's base units. Token supplies exceed `u64` (18 decimals),
/// so it is a `u128`, carried as a decimal string in JSON to survive JavaScript clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

impl Amount {
    pub fn new(units: u128) -> Result<Self, InvalidValue> {
        if units == 0 {
            return Err(InvalidValue::new("amount", "must be greater than zero"));
        }
        Ok(Self(units))
    }

    pub fn units(&self) -> u128 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Amount {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidValue::new(
                "amount",
                "must be a decimal integer of base units, e.g. \"1000000\"",
            ));
        }
        let units = s
            .parse::<u128>()
            .map_err(|_| InvalidValue::new("amount", "exceeds 2^128 - 1 base units"))?;
        Self::new(units)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A policy priority, `0..=1000`. An order's priority is the highest priority among the permit
/// policies that allowed it; a denied order has priority 0.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(try_from = "u16", into = "u16")]
#[schema(value_type = u16, minimum = 0, maximum = 1000)]
pub struct Priority(u16);

impl Priority {
    pub const MAX: Priority = Priority(1000);
    pub const ZERO: Priority = Priority(0);

    pub fn new(value: u16) -> Result<Self, InvalidValue> {
        if value > Self::MAX.0 {
            return Err(InvalidValue::new("priority", "must be between 0 and 1000"));
        }
        Ok(Self(value))
    }

    pub fn value(&self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Priority {
    type Error = InvalidValue;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Priority> for u16 {
    fn from(p: Priority) -> u16 {
        p.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Priority {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s
            .parse::<u16>()
            .map_err(|_| InvalidValue::new("priority", "must be an integer between 0 and 1000"))?;
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_decimal_strings() {
        assert_eq!("1000".parse::<Amount>().map(|a| a.units()), Ok(1000));
        assert!("0".parse::<Amount>().is_err());
        assert!("-5".parse::<Amount>().is_err());
        assert!("1e3".parse::<Amount>().is_err());
        assert!("".parse::<Amount>().is_err());
        let big = u128::MAX.to_string();
        assert_eq!(big.parse::<Amount>().map(|a| a.units()), Ok(u128::MAX));
        assert!(format!("{big}0").parse::<Amount>().is_err());
    }

    #[test]
    fn priorities_stop_at_one_thousand() {
        assert!(Priority::new(1000).is_ok());
        assert!(Priority::new(1001).is_err());
        assert!("abc".parse::<Priority>().is_err());
    }

    #[test]
    fn identifiers_refuse_what_would_break_a_path_or_a_policy() {
        assert!(IssuerId::parse("US-SEC").is_ok());
        assert!(IssuerId::parse("").is_err());
        assert!(IssuerId::parse("US SEC").is_err());
        assert!(AssetId::parse("0xA0b8/../x").is_err());
        assert!(ChainId::parse("Ethereum").is_err());
        assert!(Instrument::parse("court_order").is_ok());
        assert!(Instrument::parse("Court Order").is_err());
    }

    #[test]
    fn free_text_refuses_nul_control_characters_and_length() {
        assert!(check_text(
            "f",
            "SEC v. Acme Corp., 26-cv-0142 (S.D.N.Y.) – §981",
            100,
            Lines::One
        )
        .is_ok());
        let nul = check_text("legal_basis.reference", "a\u{0}b", 100, Lines::One).unwrap_err();
        assert!(
            nul.contains("legal_basis.reference") && nul.contains("U+0000"),
            "{nul}"
        );
        assert!(check_text("f", "a\nb", 100, Lines::One).is_err());
        assert!(check_text("f", "a\nb\tc", 100, Lines::Many).is_ok());
        assert!(check_text("f", "a\u{1b}[31m", 100, Lines::Many).is_err());
        assert!(check_text("f", "a\u{7f}", 100, Lines::Many).is_err());
        assert!(check_text("f", &"é".repeat(100), 100, Lines::One).is_ok());
        assert!(check_text("f", &"é".repeat(101), 100, Lines::One).is_err());
    }

    #[test]
    fn serde_goes_through_the_checks() {
        assert!(serde_json::from_str::<ChainId>("\"ETH\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"0\"").is_err());
        assert!(serde_json::from_str::<Priority>("1001").is_err());
        assert_eq!(
            serde_json::to_string(&Amount::new(7).unwrap()).unwrap(),
            "\"7\""
        );
    }
}
