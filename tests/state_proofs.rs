//! The state map: state roots recorded by the sequencer and signed in checkpoints, proofs of a
//! target's state (presence and absence) from the API, snapshots verified chunk by chunk, and
//! a leader that refuses state tables that do not give the signed root, until a rebuild.

mod service;

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use regulator::api::state::{SnapshotChunk, TargetProof};
use regulator::audit::signer::{public_key_from_pem, verify_checkpoint};
use regulator::domain::state_leaves::{target_key, verify_chunk, verify_leaf, LeafValue};
use regulator::domain::state_map::{Hash, Proof};
use regulator::domain::{AssetKey, Hold};
use regulator::storage::audit::Checkpoint;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use service::{order, TestApp, BOND};

/// A service with the bond registered, holders `0..holders` frozen, and a checkpoint signed.
async fn bond_with_signed_holders(pool: &PgPool, holders: usize) -> TestApp {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..holders).await;
    publish(&app).await;
    app
}

async fn publish(app: &TestApp) -> Value {
    let (status, cp) = app
        .post(&app.auditor(), "/v1/audit/checkpoints", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cp}");
    cp
}

/// Deletes `holder`'s rows from `holds` behind the service's back, as an insider could; how
/// many went.
async fn drop_holds_of(pool: &PgPool, holder: &str) -> u64 {
    sqlx::query("DELETE FROM holds WHERE hold->'target'->>'holder' = $1")
        .bind(holder)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected()
}

fn unhex(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn checkpoint_of(view: &Value) -> Checkpoint {
    Checkpoint {
        tree_size: view["tree_size"].as_u64().unwrap(),
        root: unhex(view["root"].as_str().unwrap()),
        signed_at: serde_json::from_value(view["signed_at"].clone()).unwrap(),
        key_id: view["key_id"].as_str().unwrap().to_owned(),
        signature: STANDARD
            .decode(view["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
        state_root: view["state_root"].as_str().map(unhex),
    }
}

async fn public_key(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    let (_, key) = app.get(&app.auditor(), "/v1/audit/public-key").await;
    public_key_from_pem(key["pem"].as_str().unwrap()).unwrap()
}

/// The leaf a proof document says a target has: the asset leaf from its asset-wide holds and
/// version, the holder leaf from the holder's own holds.
fn leaf(doc: &TargetProof, holder_leaf: bool) -> Option<LeafValue> {
    let asset = AssetKey {
        chain: doc.chain.clone(),
        asset: doc.asset.clone(),
    };
    let holder = if holder_leaf {
        doc.holder.clone()
    } else {
        None
    };
    let holds: BTreeMap<_, _> = doc
        .holds
        .iter()
        .filter(|h| h.target.holder == holder)
        .map(|h: &Hold| (h.order_id, std::sync::Arc::new(h.clone())))
        .collect();
    let present = if holder_leaf {
        doc.holder_proof.as_ref().unwrap().present
    } else {
        doc.asset_proof.present
    };
    present.then_some(LeafValue {
        asset,
        holder,
        holds,
        version: if holder_leaf { 0 } else { doc.state.version },
        last_fencing_token: if holder_leaf {
            0
        } else {
            doc.last_fencing_token
        },
    })
}

/// Checks a proof document as an outside verifier would (with the library's domain code): the
/// checkpoint's signature, then each leaf against its state root. Returns the proofs' sizes.
fn check_proof(doc: &TargetProof, key: &ed25519_dalek::VerifyingKey) -> Vec<usize> {
    let cp = checkpoint_of(&serde_json::to_value(&doc.checkpoint).unwrap());
    assert!(verify_checkpoint(key, &cp), "the checkpoint is signed");
    let root = cp.state_root.expect("a v2 checkpoint");
    let asset = AssetKey {
        chain: doc.chain.clone(),
        asset: doc.asset.clone(),
    };
    let mut sizes = Vec::new();
    let mut check = |p: &regulator::api::state::LeafProof, holder_leaf: bool| {
        let k = target_key(
            &asset,
            if holder_leaf {
                doc.holder.as_ref()
            } else {
                None
            },
        );
        assert_eq!(hex::encode(k), p.key);
        let bytes = STANDARD.decode(&p.proof).unwrap();
        sizes.push(p.proof.len());
        let proof = Proof::from_bytes(&bytes).unwrap();
        verify_leaf(&root, &k, &proof, leaf(doc, holder_leaf).as_ref()).unwrap();
    };
    check(&doc.asset_proof, false);
    if let Some(p) = &doc.holder_proof {
        check(p, true);
    }
    sizes
}

#[sqlx::test]
async fn state_roots_are_recorded_signed_and_proven(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.freeze_holders(0..4).await;
    let cp = publish(&app).await;
    let state_root = cp["state_root"]
        .as_str()
        .expect("the checkpoint signs a state root");
    assert!(cp["signed_text"]
        .as_str()
        .unwrap()
        .contains(&format!("\nstate_root {state_root}\n")));

    // One row per state-changing round, chained, the last one's root signed.
    type Row = (i64, i64, Vec<u8>, Vec<u8>, i32);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT from_seq, to_seq, prev_root, new_root, cardinality(keys) FROM state_roots ORDER BY to_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4, "one round per freeze");
    for pair in rows.windows(2) {
        assert_eq!(pair[0].3, pair[1].2, "each round continues from the last");
    }
    assert_eq!(
        rows[0].2,
        vec![0u8; 32],
        "the first starts from the empty map"
    );
    // A freeze of one holder changes two leaves: the holder's and the asset's.
    assert!(rows.iter().all(|r| r.4 == 2), "{rows:?}");
    assert_eq!(hex::encode(&rows[3].3), state_root);

    let key = public_key(&app).await;
    // A frozen holder: both leaves present.
    let (status, doc) = app
        .get(
            &app.auditor(),
            &format!("/v1/targets/{}/{}/proof?holder=0xH2", BOND.0, BOND.1),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let doc: TargetProof = serde_json::from_value(doc).unwrap();
    assert_eq!(doc.state.level_number, 4, "{:?}", doc.state);
    assert_eq!(doc.state.frozen, "all");
    assert_eq!(doc.state.version, 4);
    assert_eq!(doc.holds.len(), 1);
    assert!(doc.asset_proof.present && doc.holder_proof.as_ref().unwrap().present);
    let sizes = check_proof(&doc, &key);
    assert!(sizes.iter().all(|s| *s <= 1536), "{sizes:?}");

    // A holder with nothing: its leaf is proven absent.
    let (_, doc) = app
        .get(
            &app.auditor(),
            &format!("/v1/targets/{}/{}/proof?holder=0xNOBODY", BOND.0, BOND.1),
        )
        .await;
    let doc: TargetProof = serde_json::from_value(doc).unwrap();
    assert!(!doc.holder_proof.as_ref().unwrap().present);
    assert_eq!(doc.state.frozen, "none");
    check_proof(&doc, &key);

    // A forged state does not verify: the holder claims no hold.
    let (_, forged) = app
        .get(
            &app.auditor(),
            &format!("/v1/targets/{}/{}/proof?holder=0xH1", BOND.0, BOND.1),
        )
        .await;
    let mut forged: TargetProof = serde_json::from_value(forged).unwrap();
    forged.holds.clear();
    let root = unhex(forged.checkpoint.state_root.as_deref().unwrap());
    let asset = AssetKey {
        chain: forged.chain.clone(),
        asset: forged.asset.clone(),
    };
    let k = target_key(&asset, forged.holder.as_ref());
    let proof = Proof::from_bytes(
        &STANDARD
            .decode(&forged.holder_proof.as_ref().unwrap().proof)
            .unwrap(),
    )
    .unwrap();
    let mut emptied = leaf(&forged, true).unwrap();
    emptied.holds.clear();
    assert!(verify_leaf(&root, &k, &proof, Some(&emptied)).is_err());
    assert!(verify_leaf(&root, &k, &proof, None).is_err());

    // The whole log checks out, state roots included.
    let checked = regulator::audit::verify(&pool, Some(&key)).await.unwrap();
    assert!(
        matches!(
            checked.checkpoints,
            regulator::audit::CheckpointCheck::Sound { .. }
        ),
        "{checked:?}"
    );

    // A proof against an older checkpoint this replica verified.
    app.freeze_holders(4..6).await;
    let newer = publish(&app).await;
    assert_ne!(newer["state_root"], cp["state_root"]);
    let (status, old) = app
        .get(
            &app.auditor(),
            &format!(
                "/v1/targets/{}/{}/proof?holder=0xH5&tree_size={}",
                BOND.0, BOND.1, cp["tree_size"]
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let old: TargetProof = serde_json::from_value(old).unwrap();
    assert!(
        !old.holder_proof.as_ref().unwrap().present,
        "0xH5 was frozen later"
    );
    check_proof(&old, &key);
    let (status, problem) = app
        .get(
            &app.auditor(),
            &format!("/v1/targets/{}/{}/proof?tree_size=3", BOND.0, BOND.1),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

#[sqlx::test]
async fn a_snapshot_verifies_chunk_by_chunk(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), 0).await;
    app.register(BOND.0, BOND.1, "US", "security").await;
    app.register("polygon", "0xOTHER", "US", "security").await;
    app.freeze_holders(0..5).await;
    let mut other = order(
        "polygon",
        "0xOTHER",
        "court_order",
        "x",
        json!({"kind": "FREEZE"}),
    );
    other["target"]["holder"] = json!("0xP1");
    let (status, _) = app.submit(&app.regulator("US-SEC"), "p1", &other).await;
    assert_eq!(status, 201);
    let cp = publish(&app).await;
    let root = unhex(cp["state_root"].as_str().unwrap());

    let mut chunk = 0;
    let mut ethereum = Vec::new();
    loop {
        let (status, body) = app
            .get(
                &app.auditor(),
                &format!("/v1/snapshots?chain=ethereum&chunk={chunk}"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let c: SnapshotChunk = serde_json::from_value(body).unwrap();
        assert_eq!(c.checkpoint.tree_size, cp["tree_size"].as_u64().unwrap());
        let leaves = c
            .leaves
            .iter()
            .map(|l| {
                let value = l.asset.as_ref().map(|a| LeafValue {
                    asset: AssetKey {
                        chain: c.chain.clone(),
                        asset: a.clone(),
                    },
                    holder: l.holder.clone(),
                    holds: l
                        .holds
                        .iter()
                        .flatten()
                        .map(|h| (h.order_id, std::sync::Arc::new(h.clone())))
                        .collect(),
                    version: l.version.unwrap_or(0),
                    last_fencing_token: l.last_fencing_token.unwrap_or(0),
                });
                (unhex(&l.key), unhex(&l.value_hash), value)
            })
            .collect::<Vec<_>>();
        let siblings: Vec<Hash> = c.siblings.iter().map(|s| unhex(s)).collect();
        // A tampered chunk fails on arrival.
        let mut tampered = leaves.clone();
        if let Some((_, vh, _)) = tampered.first_mut() {
            vh[0] ^= 1;
            assert!(verify_chunk(&root, c.depth, c.chunk, &siblings, tampered).is_err());
        }
        ethereum.extend(verify_chunk(&root, c.depth, c.chunk, &siblings, leaves).unwrap());
        match c.next_chunk {
            Some(n) => chunk = n,
            None => break,
        }
    }
    // The asset leaf and five holders of the bond; the other chain's leaves are hashes only.
    assert_eq!(ethereum.len(), 6, "{ethereum:?}");
    assert!(ethereum
        .iter()
        .all(|l| l.asset.chain.as_str() == "ethereum"));
}

#[sqlx::test]
async fn a_tampered_holds_row_stops_the_leader_until_a_rebuild(pool: PgPool) {
    let app = bond_with_signed_holders(&pool, 3).await;
    app.app.stop().await;

    // An insider drops one holder's freeze from the state tables.
    assert_eq!(drop_holds_of(&pool, "0xH1").await, 1);

    // A replica taking the lead checks the tables against the roots, and refuses.
    let mut conn = pool.acquire().await.unwrap();
    let head = regulator::storage::ledger_head(&pool).await.unwrap();
    let refused = regulator::state_commit::lead_check(&mut conn, head).await;
    assert!(
        matches!(
            refused,
            Err(regulator::storage::StorageError::StateMismatch(_))
        ),
        "{:?}",
        refused.map(|t| t.root())
    );
    drop(conn);
    let replica = TestApp::spawn_with(pool.clone(), 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        !replica.leading().await,
        "it does not lead on mismatching state"
    );
    assert!(replica
        .metrics()
        .await
        .contains("regulator_state_mismatch_total"));
    replica.app.stop().await;

    // The rebuild names the asset, repairs it, and the next replica leads.
    let dry = regulator::state_commit::rebuild(&pool, false)
        .await
        .unwrap();
    assert_eq!(dry.differences.len(), 1, "{dry:?}");
    assert!(dry.differences[0].1.contains("missing"), "{dry:?}");
    assert!(!dry.repaired);
    let done = regulator::state_commit::rebuild(&pool, true).await.unwrap();
    assert!(done.repaired && done.checkpoints_checked >= 1, "{done:?}");
    let again = regulator::state_commit::rebuild(&pool, false)
        .await
        .unwrap();
    assert!(again.differences.is_empty(), "{again:?}");
    let replica = TestApp::spawn_with(pool.clone(), 0).await;
    let mut led = false;
    for _ in 0..40 {
        if replica.leading().await {
            led = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(led, "after the rebuild a replica leads again");
    let (_, target) = replica
        .get(
            &replica.auditor(),
            &format!("/v1/targets/{}/{}?holder=0xH1", BOND.0, BOND.1),
        )
        .await;
    assert_eq!(target["state"]["frozen"], "all", "{target}");
}

/// A holds row dropped behind a leading replica's back: the replica's cache still has the hold,
/// so it decides the release that lifts it, but the commit finds no row to delete and writes
/// nothing (a row left behind, or a lift of nothing, would break "the state tables equal a
/// replay"). The leader steps down and, on the tables that no longer give the signed roots,
/// does not lead again: the release waits, undecided, for a rebuild.
#[sqlx::test]
async fn a_release_whose_holds_row_is_gone_is_not_committed(pool: PgPool) {
    let app = bond_with_signed_holders(&pool, 2).await;
    let frozen: String = sqlx::query_scalar(
        "SELECT order_id::text FROM orders WHERE holder = '0xH1' AND kind = 'FREEZE'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let head = regulator::storage::ledger_head(&pool).await.unwrap();
    assert_eq!(drop_holds_of(&pool, "0xH1").await, 1);

    let mut release = order(
        BOND.0,
        BOND.1,
        "court_order",
        "SEC v. Acme",
        serde_json::json!({"kind": "RELEASE", "releases": frozen}),
    );
    release["target"]["holder"] = serde_json::json!("0xH1");
    let (status, answer) = app
        .submit(&app.regulator("US-SEC"), "release-h1", &release)
        .await;
    assert_eq!(status, 202, "not decided: {answer}");
    let after = regulator::storage::ledger_head(&pool).await.unwrap();
    assert_eq!(after, head, "nothing was committed");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM intake_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 1, "the release waits in the queue");
    assert!(
        !app.leading().await,
        "the leader stepped down and stays down"
    );
    app.app.stop().await;
}
