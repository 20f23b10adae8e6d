//! The ledger's invariants, read back from the database: what every test that runs the
//! sequencer checks when it is done.

use std::collections::{BTreeMap, HashSet};

use regulator::domain::event::{EventRecord, LedgerEvent};
use regulator::domain::ledger::{first_broken_link, DecisionRecord, Head};
use regulator::domain::{AssetKey, AssetState};
use regulator::storage;
use sqlx::{PgPool, Row};

/// Every committed record, in sequence order.
pub async fn log(pool: &PgPool) -> Vec<(u64, String, [u8; 32])> {
    sqlx::query("SELECT seq, record::text, hash FROM ledger ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let hash: Vec<u8> = r.get(2);
            (seq as u64, r.get(1), hash.try_into().unwrap())
        })
        .collect()
}

/// One `bigint` a query returns (a count, a seq, an epoch).
pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The ledger's invariants: seqs 1..=n without a gap, the chain unbroken, the head at the last
/// record, each order decided at most once, and the state tables equal to a replay.
pub async fn assert_ledger_sound(pool: &PgPool) -> Vec<DecisionRecord> {
    let log = log(pool).await;
    let seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "gapless");
    assert_eq!(
        first_broken_link(
            Head::GENESIS,
            log.iter().map(|(s, t, h)| (*s, t.as_str(), *h))
        ),
        None,
        "hash chain"
    );
    let head = storage::ledger_head(pool).await.unwrap();
    assert_eq!(head.seq, log.len() as u64);
    if let Some((_, _, hash)) = log.last() {
        assert_eq!(&head.hash, hash);
    }

    // Every decision names the version the last activation before it made active.
    let mut active: Option<String> = None;
    let mut records: Vec<DecisionRecord> = Vec::new();
    for (_, text, _) in &log {
        if let Ok(event) = serde_json::from_str::<EventRecord>(text) {
            if let LedgerEvent::PolicyActivated {
                active: version, ..
            } = event.event
            {
                active = Some(version.hash);
            }
            continue;
        }
        let record: DecisionRecord = serde_json::from_str(text).unwrap();
        assert_eq!(
            Some(&record.policy_version),
            active.as_ref(),
            "seq {} was decided by the active version",
            record.seq
        );
        records.push(record);
    }
    let mut seen = HashSet::new();
    for r in &records {
        if let Some(o) = &r.order {
            assert!(seen.insert(o.id), "order {} decided twice", o.id);
        }
    }

    let mut replay: BTreeMap<AssetKey, AssetState> = BTreeMap::new();
    for r in &records {
        replay
            .entry(r.target.asset.clone())
            .or_default()
            .apply(&r.effects);
    }
    replay.retain(|_, s| *s != AssetState::default());
    let stored: BTreeMap<AssetKey, AssetState> = storage::all_states(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(stored, replay, "state tables equal a replay of the log");
    records
}
