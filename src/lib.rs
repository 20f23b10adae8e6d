//! Regulator action engine: decides authorities' orders against tokenized assets with Cedar
//! jurisdiction policies, and turns the decisions into lock transitions.
//!
//! - [`domain`]: the pure core (levels, holds, transitions, conflict resolution).
//! - [`policy`]: loading, validating and evaluating the Cedar jurisdiction policies.
//! - [`decide`]: a conflict group put to the policies, then resolved by the core.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod decide;
pub mod domain;
pub mod policy;
