//! Regulator action engine: decides authorities' orders against tokenized assets with Cedar
//! jurisdiction policies, and turns the decisions into lock transitions.
//!
//! - [`domain`]: the pure core (levels, holds, transitions, conflict resolution).
//! - [`policy`]: loading, validating and evaluating the Cedar jurisdiction policies.
//! - [`decide`]: a conflict group put to the policies, then resolved by the core.
//! - [`simulate`]: impact analysis, a draft replayed over the recorded history.
//! - [`storage`], [`intake`], [`sequencer`], [`hub`]: the decision service on Postgres (SPEC §4).
//! - [`api`], [`auth`], [`app`]: the HTTP API, its tokens, and start-up (SPEC §5–§6).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod decide;
pub mod domain;
pub mod hub;
pub mod intake;
pub mod policy;
pub mod reconcile;
pub mod sequencer;
pub mod simulate;
pub mod state_commit;
pub mod state_sync;
pub mod storage;
pub mod webhooks;
