//! The pure decision core: lock levels, holds, transitions and conflict resolution.
//!
//! Nothing here does I/O, reads a clock or awaits: time comes in as arguments, so every function
//! is deterministic and can be replayed from the log.

pub mod detect;
pub mod event;
pub mod ids;
pub mod ledger;
pub mod merkle;
pub mod observation;
pub mod order;
pub mod projection;
pub mod resolve;
pub mod state;
pub mod state_leaves;
pub mod state_map;

pub use ids::{
    check_text, Amount, AssetClass, AssetId, ChainId, HolderAddress, Instrument, InvalidValue,
    IssuerId, JurisdictionCode, Lines, OrderId, PolicyId, Priority,
};
pub use order::{
    AssetKey, Instruction, LeaseTtl, LegalBasis, LockLevel, Order, OrderKind, RegisteredAsset,
    Target, TargetWire,
};
pub use resolve::{
    resolve, Candidate, ConflictGroup, Decision, GroupError, Outcome, Reason, Resolution, Subject,
    Verdict,
};
pub use state::{AssetState, Coverage, Effect, FencingToken, Frozen, Hold, LiftCause};
