//! The state commitment on the write path: the leader's state map, built from the state tables
//! when it takes the lead and checked against the recorded and signed state roots before it
//! decides anything (docs/audit.md, "The state map").

use sqlx::PgConnection;

use crate::domain::ledger::Head;
use crate::domain::state_leaves::{Delta, StateTree};
use crate::domain::state_map::EMPTY;
use crate::domain::AssetKey;
use crate::storage::state::{self as store, StateRound};
use crate::storage::{audit as audit_store, StorageError};

/// The state map of the state tables, if they give the last recorded state root and, walked
/// back through the recorded deltas, the state root of the last signed checkpoint. On a log
/// that has state but no recorded root yet (a database from before migration 0016), records
/// the tables' root as a baseline.
pub async fn lead_check(conn: &mut PgConnection, head: Head) -> Result<StateTree, StorageError> {
    let states = store::all_states_on(conn).await?;
    let tree = StateTree::from_states(states.iter());
    let root = tree.root();
    match store::latest_round(&mut *conn).await? {
        Some(last) if last.new_root != root => {
            return Err(StorageError::StateMismatch(format!(
                "the state tables give state root {}, the last round (seqs {}–{}) recorded {}",
                hex::encode(root),
                last.from_seq,
                last.to_seq,
                hex::encode(last.new_root)
            )));
        }
        Some(_) => {}
        None if root != EMPTY && head.seq > 0 => {
            tracing::info!(
                seq = head.seq,
                root = %hex::encode(root),
                "no state root recorded yet: the state tables' root is recorded as a baseline"
            );
            store::insert_round(
                conn,
                &StateRound {
                    from_seq: 1,
                    to_seq: head.seq,
                    prev_root: EMPTY,
                    new_root: root,
                    baseline: true,
                    delta: Delta::default(),
                },
            )
            .await?;
        }
        None => {}
    }
    if let Some((size, signed)) = audit_store::latest_state_checkpoint(&mut *conn).await? {
        let mut map = tree.map().clone();
        for round in store::rounds_after_desc(&mut *conn, size).await? {
            if map.root() != round.new_root || round.baseline {
                return Err(StorageError::StateMismatch(format!(
                    "the recorded round of seqs {}–{} does not continue from the signed \
                     checkpoint of tree size {size}",
                    round.from_seq, round.to_seq
                )));
            }
            for (key, (old, _)) in &round.delta.changes {
                match old {
                    Some(h) => {
                        map.insert(*key, *h, None);
                    }
                    None => {
                        map.remove(key);
                    }
                }
            }
            if map.root() != round.prev_root {
                return Err(StorageError::StateMismatch(format!(
                    "the recorded delta of seqs {}–{} does not lead from its previous root to \
                     its new one",
                    round.from_seq, round.to_seq
                )));
            }
        }
        if map.root() != signed {
            return Err(StorageError::StateMismatch(format!(
                "the checkpoint of tree size {size} signed state root {}, the state tables \
                 walked back to it give {}",
                hex::encode(signed),
                hex::encode(map.root())
            )));
        }
    }
    Ok(tree)
}

/// Records read per query while replaying.
const PAGE: i64 = 10_000;

/// What `regulator state rebuild` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// Records replayed: the whole log, `1..=records`.
    pub records: u64,
    /// Assets with a state after the replay.
    pub assets: usize,
    /// The state root the records' effects give.
    pub state_root: [u8; 32],
    /// Signed checkpoints whose state root was compared with the replay.
    pub checkpoints_checked: usize,
    /// Assets whose stored state differed from the replay, and how.
    pub differences: Vec<(AssetKey, String)>,
    /// Whether the differences were written over.
    pub repaired: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a sequencer leads: stop every replica (or let the mismatch keep them from leading) and run again")]
    LeaderRunning,
    /// The log itself does not give what was signed or recorded: no state tables can fix it.
    #[error("the log does not replay to its signed state: {0}; run `regulator audit verify`")]
    Log(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Replays the whole log's effects, checks the result against every signed state root and the
/// last recorded one, compares it with the state tables and, with `repair`, writes the replayed
/// state over every asset that differs. Holds the sequencer's lock meanwhile.
pub async fn rebuild(pool: &sqlx::PgPool, repair: bool) -> Result<Rebuild, RebuildError> {
    use sqlx::Connection;
    use std::collections::BTreeMap;

    use crate::domain::state_leaves::effects_of;
    use crate::domain::AssetState;

    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(StorageError::from)?;
    let Some((_, head)) = crate::storage::try_lead(&mut conn).await? else {
        return Err(RebuildError::LeaderRunning);
    };
    let checkpoints = audit_store::all_checkpoints(pool).await?;
    let mut pending = checkpoints
        .iter()
        .filter(|cp| cp.state_root.is_some())
        .peekable();
    let mut checked = 0;
    let mut states: BTreeMap<AssetKey, AssetState> = BTreeMap::new();
    let mut tree = StateTree::default();
    let mut scratch = Delta::default();
    let mut seq = 0;
    while seq < head.seq {
        let page = crate::storage::chain_links(pool, seq, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for (at, text, hash) in page {
            if at != seq + 1 || crate::domain::ledger::record_hash(&text) != hash {
                return Err(RebuildError::Log(format!(
                    "record {at} does not continue the log"
                )));
            }
            seq = at;
            if let Some((asset, effects)) =
                effects_of(&text).map_err(|e| RebuildError::Log(format!("record {at}: {e}")))?
            {
                tree.apply(&asset, &effects, &mut scratch)
                    .map_err(|e| RebuildError::Log(format!("record {at}: {e}")))?;
                scratch.changes.clear();
                if !effects.is_empty() {
                    states.entry(asset).or_default().apply(&effects);
                }
            }
            while let Some(cp) = pending.next_if(|cp| cp.tree_size == seq) {
                checked += 1;
                if cp.state_root != Some(tree.root()) {
                    return Err(RebuildError::Log(format!(
                        "the checkpoint of tree size {} signed state root {}, the records give {}",
                        cp.tree_size,
                        cp.state_root.map(hex::encode).unwrap_or_default(),
                        hex::encode(tree.root())
                    )));
                }
            }
            if seq == head.seq {
                break;
            }
        }
    }
    let recorded = store::root_at(&mut conn, head.seq).await?;
    let has_rounds = store::latest_round(&mut conn).await?.is_some();
    if has_rounds && recorded != tree.root() {
        return Err(RebuildError::Log(format!(
            "the state root recorded at seq {} is {}, the records give {}",
            head.seq,
            hex::encode(recorded),
            hex::encode(tree.root())
        )));
    }
    let stored = store::all_states_on(&mut conn).await?;
    let mut differences = Vec::new();
    let mut writes = Vec::new();
    let keys: std::collections::BTreeSet<&AssetKey> = states.keys().chain(stored.keys()).collect();
    for key in keys {
        let (replayed, table) = (states.get(key), stored.get(key));
        if replayed == table {
            continue;
        }
        let how = match (replayed, table) {
            (Some(r), Some(t)) => describe(r, t),
            (Some(_), None) => "the tables lack its state".to_owned(),
            _ => "the tables hold a state the log never made".to_owned(),
        };
        differences.push((key.clone(), how));
        writes.push((key.clone(), replayed.cloned()));
    }
    if repair && !writes.is_empty() {
        store::replace_states(&mut conn, &writes).await?;
    }
    crate::storage::release_lead(&mut conn).await?;
    Ok(Rebuild {
        records: seq,
        assets: states.len(),
        state_root: tree.root(),
        checkpoints_checked: checked,
        repaired: repair && !differences.is_empty(),
        differences,
    })
}

fn describe(replayed: &crate::domain::AssetState, table: &crate::domain::AssetState) -> String {
    let mut what = Vec::new();
    if replayed.version() != table.version() {
        what.push(format!(
            "version {} (log) vs {} (tables)",
            replayed.version(),
            table.version()
        ));
    }
    if replayed.last_fencing_token() != table.last_fencing_token() {
        what.push("last fencing token".to_owned());
    }
    for hold in replayed.holds() {
        match table.hold(&hold.order_id) {
            None => what.push(format!("hold {} missing", hold.order_id)),
            Some(t) if t != hold => what.push(format!("hold {} altered", hold.order_id)),
            Some(_) => {}
        }
    }
    for hold in table.holds() {
        if replayed.hold(&hold.order_id).is_none() {
            what.push(format!("hold {} not in the log", hold.order_id));
        }
    }
    what.join("; ")
}
