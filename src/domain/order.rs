//! Orders from authorities, the lock levels they impose, and what they target.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{
    check_text, Amount, AssetClass, AssetId, ChainId, HolderAddress, Instrument, InvalidValue,
    IssuerId, JurisdictionCode, Lines, OrderId,
};

/// The six lock levels of the design notes. Ordered: a higher level restricts more.
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
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockLevel {
    #[default]
    Unlocked = 0,
    SoftLocked = 1,
    PreemptiveLocked = 2,
    TempLocked = 3,
    HardLocked = 4,
    PermLocked = 5,
}

impl LockLevel {
    pub fn number(self) -> u8 {
        self as u8
    }

    /// Holds at this level or above block transfers and revoke preemptive leases.
    pub const BLOCKING: LockLevel = LockLevel::TempLocked;
}

/// Every kind of order an authority or coordinator can send.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderKind {
    Monitor,
    Preempt,
    Suspend,
    Freeze,
    Seize,
    Confiscate,
    Release,
}

impl OrderKind {
    pub const ALL: [OrderKind; 7] = [
        OrderKind::Monitor,
        OrderKind::Preempt,
        OrderKind::Suspend,
        OrderKind::Freeze,
        OrderKind::Seize,
        OrderKind::Confiscate,
        OrderKind::Release,
    ];

    /// The level a hold of this kind imposes while active; a release imposes none.
    pub fn level(self) -> LockLevel {
        match self {
            OrderKind::Monitor => LockLevel::SoftLocked,
            OrderKind::Preempt => LockLevel::PreemptiveLocked,
            OrderKind::Suspend => LockLevel::TempLocked,
            OrderKind::Freeze => LockLevel::HardLocked,
            OrderKind::Seize | OrderKind::Confiscate => LockLevel::PermLocked,
            OrderKind::Release => LockLevel::Unlocked,
        }
    }

    /// Seizure and confiscation move custody to the issuer; there is one custodian at a time.
    pub fn takes_custody(self) -> bool {
        matches!(self, OrderKind::Seize | OrderKind::Confiscate)
    }

    /// The name used in the API, in Cedar (`Action::"FREEZE"`) and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::Monitor => "MONITOR",
            OrderKind::Preempt => "PREEMPT",
            OrderKind::Suspend => "SUSPEND",
            OrderKind::Freeze => "FREEZE",
            OrderKind::Seize => "SEIZE",
            OrderKind::Confiscate => "CONFISCATE",
            OrderKind::Release => "RELEASE",
        }
    }
}

impl fmt::Display for OrderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderKind {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| InvalidValue {
                what: "order kind",
                why: format!(
                    "{s:?} is not one of MONITOR, PREEMPT, SUSPEND, FREEZE, SEIZE, CONFISCATE, RELEASE"
                ),
            })
    }
}

/// An asset on a chain: the unit the sequencer orders decisions for.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AssetKey {
    pub chain: ChainId,
    pub asset: AssetId,
}

impl fmt::Display for AssetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.chain, self.asset)
    }
}

/// What an order applies to: a whole asset (every holder), or one holder's balance of it.
///
/// On the wire it is flat: `{"chain": …, "asset": …, "holder": …}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "TargetWire", into = "TargetWire")]
pub struct Target {
    pub asset: AssetKey,
    pub holder: Option<HolderAddress>,
}

/// The flat wire form of a [`Target`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetWire {
    pub chain: ChainId,
    pub asset: AssetId,
    /// Absent: the order applies to the whole asset, every holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderAddress>,
}

impl utoipa::PartialSchema for Target {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        TargetWire::schema()
    }
}

impl utoipa::ToSchema for Target {}

impl From<TargetWire> for Target {
    fn from(w: TargetWire) -> Self {
        Target {
            asset: AssetKey {
                chain: w.chain,
                asset: w.asset,
            },
            holder: w.holder,
        }
    }
}

impl From<Target> for TargetWire {
    fn from(t: Target) -> Self {
        TargetWire {
            chain: t.asset.chain,
            asset: t.asset.asset,
            holder: t.holder,
        }
    }
}

impl Target {
    /// Two scopes overlap when either covers the whole asset or both name the same holder.
    pub fn overlaps(&self, other: &Target) -> bool {
        // Holders first: within one asset's state they are what differs.
        let holders_meet = match (&self.holder, &other.holder) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        holders_meet && self.asset == other.asset
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.holder {
            Some(h) => write!(f, "{}?holder={h}", self.asset),
            None => write!(f, "{}", self.asset),
        }
    }
}

/// A registered asset and the attributes policies read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegisteredAsset {
    pub key: AssetKey,
    pub issuer_jurisdiction: JurisdictionCode,
    pub asset_class: AssetClass,
}

/// The legal basis an authority cites: the instrument and its reference (docket, warrant number,
/// designation id, licence number).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalBasis {
    pub instrument: Instrument,
    /// One line of printable text, at most 500 characters (no control characters).
    #[schema(max_length = 500, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    pub reference: String,
}

impl LegalBasis {
    /// The longest reference (a docket, a warrant number, a designation id), in characters.
    pub const MAX_REFERENCE_CHARS: usize = 500;

    /// Checks the reference an order brings: one line of printable text of at most
    /// [`Self::MAX_REFERENCE_CHARS`]. It is checked where an order arrives, not when a stored one
    /// is read, so orders accepted before the bound existed still read back.
    pub fn check(&self) -> Result<(), InvalidValue> {
        check_text(
            "legal_basis.reference",
            &self.reference,
            Self::MAX_REFERENCE_CHARS,
            Lines::One,
        )
        .map_err(|why| InvalidValue {
            what: "legal basis",
            why,
        })
    }
}

/// How long a preemptive lease lasts: short by design, between 1 ms and 5 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "u32", into = "u32")]
#[schema(value_type = u32, minimum = 1, maximum = 300000)]
pub struct LeaseTtl(u32);

impl LeaseTtl {
    pub const MAX_MS: u32 = 300_000;

    pub fn from_millis(ms: u32) -> Result<Self, InvalidValue> {
        if ms == 0 || ms > Self::MAX_MS {
            return Err(InvalidValue {
                what: "lease ttl",
                why: format!("must be between 1 and {} ms", Self::MAX_MS),
            });
        }
        Ok(Self(ms))
    }

    pub fn millis(self) -> u32 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::milliseconds(i64::from(self.0))
    }
}

impl TryFrom<u32> for LeaseTtl {
    type Error = InvalidValue;
    fn try_from(ms: u32) -> Result<Self, Self::Error> {
        Self::from_millis(ms)
    }
}

impl From<LeaseTtl> for u32 {
    fn from(t: LeaseTtl) -> u32 {
        t.0
    }
}

/// What an order asks for. Each kind carries exactly the fields it needs, so a SUSPEND without an
/// expiry or a RELEASE without the order it releases cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum Instruction {
    Monitor {
        amount: Option<Amount>,
    },
    Preempt {
        lease_ttl_ms: LeaseTtl,
    },
    Suspend {
        expires_at: DateTime<Utc>,
        amount: Option<Amount>,
    },
    Freeze {
        amount: Option<Amount>,
    },
    Seize {
        amount: Option<Amount>,
    },
    Confiscate {
        amount: Option<Amount>,
    },
    Release {
        releases: OrderId,
    },
}

impl Instruction {
    pub fn kind(&self) -> OrderKind {
        match self {
            Instruction::Monitor { .. } => OrderKind::Monitor,
            Instruction::Preempt { .. } => OrderKind::Preempt,
            Instruction::Suspend { .. } => OrderKind::Suspend,
            Instruction::Freeze { .. } => OrderKind::Freeze,
            Instruction::Seize { .. } => OrderKind::Seize,
            Instruction::Confiscate { .. } => OrderKind::Confiscate,
            Instruction::Release { .. } => OrderKind::Release,
        }
    }

    /// How far ahead a SUSPEND may expire. A suspension is temporary by nature; a longer hold is a
    /// FREEZE, which lasts until released.
    pub const MAX_SUSPENSION_YEARS: i64 = 10;

    /// Refuses what cannot be decided as asked, judged at `now`: a SUSPEND that has already
    /// expired, or that expires more than [`Self::MAX_SUSPENSION_YEARS`] ahead.
    pub fn check_at(&self, now: DateTime<Utc>) -> Result<(), InvalidValue> {
        if let Instruction::Suspend { expires_at, .. } = self {
            if *expires_at <= now {
                return Err(InvalidValue {
                    what: "instruction.expires_at",
                    why: format!("{expires_at} is not in the future (now is {now}); a SUSPEND must expire after it is received"),
                });
            }
            let horizon = now + Duration::days(365 * Self::MAX_SUSPENSION_YEARS + 3);
            if *expires_at > horizon {
                return Err(InvalidValue {
                    what: "instruction.expires_at",
                    why: format!(
                        "{expires_at} is more than {} years ahead; use a FREEZE for a hold until release",
                        Self::MAX_SUSPENSION_YEARS
                    ),
                });
            }
        }
        Ok(())
    }

    /// A partial order's amount; `None` means the whole balance.
    pub fn amount(&self) -> Option<Amount> {
        match self {
            Instruction::Monitor { amount }
            | Instruction::Suspend { amount, .. }
            | Instruction::Freeze { amount }
            | Instruction::Seize { amount }
            | Instruction::Confiscate { amount } => *amount,
            Instruction::Preempt { .. } | Instruction::Release { .. } => None,
        }
    }
}

/// An order as accepted at intake: who, on what, why, and when the database received it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub id: OrderId,
    pub issuer: IssuerId,
    pub target: Target,
    pub legal_basis: LegalBasis,
    pub instruction: Instruction,
    /// Stamped by the database clock at intake, never by a replica.
    pub intake_at: DateTime<Utc>,
}

impl Order {
    pub fn kind(&self) -> OrderKind {
        self.instruction.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspension_must_expire_ahead_and_within_ten_years() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T00:00:00Z")
            .unwrap()
            .to_utc();
        let suspend = |at: DateTime<Utc>| Instruction::Suspend {
            expires_at: at,
            amount: None,
        };
        assert!(suspend(now + Duration::hours(1)).check_at(now).is_ok());
        assert!(suspend(now + Duration::days(3650)).check_at(now).is_ok());
        assert!(suspend(now).check_at(now).is_err());
        assert!(suspend(now - Duration::seconds(1)).check_at(now).is_err());
        let far = DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
            .unwrap()
            .to_utc();
        let e = suspend(far).check_at(now).unwrap_err();
        assert_eq!(e.what, "instruction.expires_at");
        assert!(Instruction::Freeze { amount: None }.check_at(now).is_ok());
    }
}
