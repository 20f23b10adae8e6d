//! Where a target's apply lag goes: for the oldest decision not yet observed on each target, when
//! the adapter saw it in the feed, sent its last transaction, saw the receipts, saw the block
//! final and had the observation accepted by the engine. Recorded per stage in the histogram
//! `adapter_apply_stage_seconds{chain, stage}` (stages `feed`, `send`, `mine`, `finality`,
//! `report`), which is what the chain benchmark prints and what an operator looks at when the
//! end-to-end lag (`regulator_reconciliation_apply_lag_seconds`) grows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::adapter::TargetKey;
use crate::domain::ChainId;

/// The stages, in order, as the metric labels them.
pub const STAGES: [&str; 5] = ["feed", "send", "mine", "finality", "report"];

#[derive(Debug, Clone)]
struct Stamps {
    decided: DateTime<Utc>,
    seen: DateTime<Utc>,
    sent: Option<DateTime<Utc>>,
    mined: Option<DateTime<Utc>>,
    finalized: Option<DateTime<Utc>>,
}

/// The stamps of every target with a decision on its way.
#[derive(Debug, Default)]
pub struct Stages {
    open: HashMap<TargetKey, Stamps>,
}

impl Stages {
    /// A decision of `decided` on `key` was read from the feed now. A target that already has
    /// one on its way keeps the older: the lag is the oldest decision's.
    pub fn seen(&mut self, key: &TargetKey, decided: DateTime<Utc>) {
        self.open.entry(key.clone()).or_insert_with(|| Stamps {
            decided,
            seen: Utc::now(),
            sent: None,
            mined: None,
            finalized: None,
        });
    }

    /// Everything the target needs was sent (or nothing was needed).
    pub fn sent(&mut self, key: &TargetKey) {
        if let Some(s) = self.open.get_mut(key) {
            s.sent.get_or_insert_with(Utc::now);
        }
    }

    /// Every transaction sent for the target is mined.
    pub fn mined(&mut self, key: &TargetKey) {
        if let Some(s) = self.open.get_mut(key) {
            s.mined.get_or_insert_with(Utc::now);
        }
    }

    /// The block holding them is final by the chain's rule.
    pub fn finalized(&mut self, key: &TargetKey) {
        if let Some(s) = self.open.get_mut(key) {
            s.finalized.get_or_insert_with(Utc::now);
        }
    }

    /// The target will not converge by itself (it failed or was escalated): nothing to record.
    pub fn forget(&mut self, key: &TargetKey) {
        self.open.remove(key);
    }

    /// The engine accepted the target's final observation: its stages are recorded.
    pub fn reported(&mut self, chain: &ChainId, key: &TargetKey) {
        let Some(s) = self.open.remove(key) else {
            return;
        };
        let now = Utc::now();
        let sent = s.sent.unwrap_or(s.seen);
        let mined = s.mined.unwrap_or(sent);
        let finalized = s.finalized.unwrap_or(mined);
        let points = [s.decided, s.seen, sent, mined, finalized, now];
        for (stage, pair) in STAGES.iter().zip(points.windows(2)) {
            let secs = (pair[1] - pair[0]).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            metrics::histogram!("adapter_apply_stage_seconds", "chain" => chain.to_string(), "stage" => *stage)
                .record(secs);
        }
    }
}
