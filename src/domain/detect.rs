//! Detect: which pending orders form a conflict group, and when the next group will be ready.
//!
//! Orders on the same asset whose intake times (database clock) fall within the conflict window
//! `W` of the asset's earliest pending order form one group. A group is ready once the database
//! clock has passed the end of its window, so that every order stamped inside it has been seen.

use chrono::{DateTime, Duration, Utc};

use super::order::AssetKey;

/// An order waiting at intake, as the sequencer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<T> {
    pub asset: AssetKey,
    pub intake_at: DateTime<Utc>,
    pub item: T,
}

/// The groups that can be decided now, and when to look again for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection<T> {
    /// Ready groups, ordered by the intake time of their first order, then by asset; one asset's
    /// consecutive windows come in time order, each its own group.
    pub groups: Vec<(AssetKey, Vec<T>)>,
    /// The earliest moment a group that is not ready yet will be; `None` if nothing waits.
    pub next_ready_at: Option<DateTime<Utc>>,
}

/// Splits `pending` into ready conflict groups at `now`.
///
/// `horizon` is the intake time of the last order fetched when the fetch was cut short by a
/// limit: a window reaching past it may hold orders not fetched yet, so it is not ready. Orders
/// in `pending` need not be sorted; the result does not depend on their order.
pub fn detect<T>(
    pending: Vec<Pending<T>>,
    now: DateTime<Utc>,
    window: Duration,
    horizon: Option<DateTime<Utc>>,
) -> Detection<T> {
    let mut by_asset: std::collections::BTreeMap<AssetKey, Vec<Pending<T>>> = Default::default();
    for p in pending {
        by_asset.entry(p.asset.clone()).or_default().push(p);
    }

    let mut ready = Vec::new();
    let mut next_ready_at: Option<DateTime<Utc>> = None;
    for (asset, mut orders) in by_asset {
        orders.sort_by_key(|p| p.intake_at);
        // Consecutive windows of one asset may all be closed: take each, in order.
        while let Some(first) = orders.first().map(|p| p.intake_at) {
            let closes_at = first + window;
            let complete = horizon.is_none_or(|h| closes_at < h);
            if now < closes_at || !complete {
                if complete {
                    next_ready_at = Some(next_ready_at.map_or(closes_at, |n| n.min(closes_at)));
                }
                break;
            }
            let split = orders.partition_point(|p| p.intake_at <= closes_at);
            let rest = orders.split_off(split);
            let group = std::mem::replace(&mut orders, rest);
            ready.push((
                first,
                asset.clone(),
                group.into_iter().map(|p| p.item).collect(),
            ));
        }
    }
    ready.sort_by(|a: &(DateTime<Utc>, AssetKey, Vec<T>), b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Detection {
        groups: ready.into_iter().map(|(_, a, items)| (a, items)).collect(),
        next_ready_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AssetId, ChainId};

    fn key(asset: &str) -> AssetKey {
        AssetKey {
            chain: ChainId::parse("ethereum").unwrap(),
            asset: AssetId::parse(asset).unwrap(),
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn p(asset: &str, ms: i64, item: u32) -> Pending<u32> {
        Pending {
            asset: key(asset),
            intake_at: at(ms),
            item,
        }
    }

    #[test]
    fn a_window_is_decided_only_after_it_closes() {
        let w = Duration::milliseconds(100);
        let pending = || vec![p("a", 0, 1), p("a", 60, 2), p("a", 150, 3)];
        let early = detect(pending(), at(99), w, None);
        assert!(early.groups.is_empty());
        assert_eq!(early.next_ready_at, Some(at(100)));

        let closed = detect(pending(), at(100), w, None);
        assert_eq!(closed.groups, vec![(key("a"), vec![1, 2])]);
    }

    #[test]
    fn consecutive_closed_windows_of_one_asset_are_separate_groups_in_order() {
        let w = Duration::milliseconds(10);
        let pending = vec![p("a", 30, 4), p("a", 0, 1), p("a", 5, 2), p("a", 20, 3)];
        let d = detect(pending, at(100), w, None);
        assert_eq!(
            d.groups,
            vec![(key("a"), vec![1, 2]), (key("a"), vec![3, 4])],
            "[0, 10] then [20, 30]"
        );
    }

    #[test]
    fn a_zero_window_groups_only_equal_intake_times() {
        let pending = vec![p("a", 5, 1), p("a", 5, 2), p("a", 6, 3), p("b", 1, 4)];
        let d = detect(pending, at(10), Duration::zero(), None);
        assert_eq!(
            d.groups,
            vec![
                (key("b"), vec![4]),
                (key("a"), vec![1, 2]),
                (key("a"), vec![3])
            ]
        );
        assert_eq!(d.next_ready_at, None);
    }

    #[test]
    fn a_window_reaching_past_a_truncated_fetch_waits() {
        let w = Duration::milliseconds(100);
        let pending = vec![p("a", 0, 1), p("b", 50, 2)];
        let d = detect(pending, at(1_000), w, Some(at(50)));
        assert!(d.groups.is_empty(), "both windows reach past the horizon");
        let pending = vec![p("a", 0, 1), p("b", 150, 2)];
        let d = detect(pending, at(1_000), w, Some(at(150)));
        assert_eq!(d.groups, vec![(key("a"), vec![1])]);
    }

    #[test]
    fn groups_do_not_depend_on_the_fetch_order() {
        let w = Duration::milliseconds(10);
        let mut pending = vec![p("a", 0, 1), p("b", 3, 2), p("a", 7, 3), p("c", 1, 4)];
        let forward = detect(pending.clone(), at(50), w, None);
        pending.reverse();
        let backward = detect(pending, at(50), w, None);
        let sorted = |d: Detection<u32>| {
            d.groups
                .into_iter()
                .map(|(a, mut v)| {
                    v.sort();
                    (a, v)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sorted(forward), sorted(backward));
    }
}
