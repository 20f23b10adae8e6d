//! Regulator action engine: decides authorities' orders against tokenized assets with Cedar
//! jurisdiction policies, and turns the decisions into lock transitions.
//!
//! - [`domain`]: the pure core (levels, holds, transitions, conflict resolution).
//! - [`policy`]: loading, validating and evaluating the Cedar jurisdiction policies.

pub mod domain;
pub mod policy;
