//! `regulator-bench state`: the state map at scale, in-process (no database): builds the map of
//! `--targets` targets (holders of `--assets` assets, one FREEZE each, plus each asset's leaf),
//! then measures what a replica does with it: proof documents for random holders (the API's
//! own `target_proof`, both proofs and the JSON), their sizes, and the cost of applying one
//! decision's effects (the sequencer's per-record work on the write path).

use std::process::ExitCode;
use std::time::Instant;

use chrono::Utc;
use clap::Args;
use hdrhistogram::Histogram;
use rand::Rng;

use regulator::api::state::target_proof;
use regulator::domain::state_leaves::{Delta, Overlay, StateTree};
use regulator::domain::{
    AssetId, AssetKey, AssetState, ChainId, Effect, Hold, HolderAddress, Instrument, IssuerId,
    OrderId, OrderKind, Priority, Target,
};
use regulator::storage::audit::Checkpoint;

#[derive(Debug, Args)]
pub struct BenchStateArgs {
    /// Targets in the map (holder leaves plus one leaf per asset).
    #[arg(long, default_value_t = 1_000_000)]
    targets: usize,
    /// Assets the holders are spread over.
    #[arg(long, default_value_t = 1_000)]
    assets: usize,
    /// Proof documents generated (random holders: half present, half absent).
    #[arg(long, default_value_t = 20_000)]
    proofs: usize,
    /// Decisions' effects applied (a FREEZE of a random new holder each).
    #[arg(long, default_value_t = 20_000)]
    updates: usize,
    /// Decisions per round when they are applied the sequencer's way (staged, written at once).
    #[arg(long, default_value_t = 1_000)]
    round: usize,
}

fn asset(i: usize) -> AssetKey {
    AssetKey {
        chain: ChainId::parse("ethereum").unwrap_or_else(|_| unreachable!()),
        asset: AssetId::parse(format!("0xASSET-{i}")).unwrap_or_else(|_| unreachable!()),
    }
}

fn holder(i: usize) -> HolderAddress {
    HolderAddress::parse(format!("0x{i:040x}")).unwrap_or_else(|_| unreachable!())
}

fn freeze(on: &AssetKey, who: HolderAddress) -> Hold {
    Hold {
        order_id: OrderId::new(),
        issuer: IssuerId::parse("US-SEC").unwrap_or_else(|_| unreachable!()),
        kind: OrderKind::Freeze,
        target: Target {
            asset: on.clone(),
            holder: Some(who),
        },
        amount: None,
        instrument: Instrument::parse("court_order").unwrap_or_else(|_| unreachable!()),
        priority: Priority::new(100).unwrap_or_else(|_| unreachable!()),
        placed_at: Utc::now(),
        expires_at: None,
        fencing_token: None,
    }
}

fn percentiles(name: &str, unit: &str, h: &Histogram<u64>, scale: f64) {
    println!(
        "{name}: n={} p50={:.1}{unit} p90={:.1}{unit} p99={:.1}{unit} max={:.1}{unit}",
        h.len(),
        h.value_at_quantile(0.5) as f64 / scale,
        h.value_at_quantile(0.9) as f64 / scale,
        h.value_at_quantile(0.99) as f64 / scale,
        h.max() as f64 / scale
    );
}

impl BenchStateArgs {
    pub fn run(self) -> ExitCode {
        let assets = self.assets.max(1);
        let holders = self.targets.saturating_sub(assets);
        let per_asset = holders.div_ceil(assets).max(1);
        let started = Instant::now();
        let mut states = Vec::with_capacity(assets);
        for a in 0..assets {
            let key = asset(a);
            let n = per_asset.min(holders.saturating_sub(a * per_asset));
            let holds: Vec<Hold> = (0..n)
                .map(|h| freeze(&key, holder(a * per_asset + h)))
                .collect();
            states.push((key, AssetState::from_parts(holds, n as u64, 0)));
        }
        let made = started.elapsed();
        let started = Instant::now();
        let mut tree = StateTree::from_states(states.iter().map(|(k, s)| (k, s)));
        let built = started.elapsed();
        println!(
            "state map: {} leaves ({} assets, {} holders) built in {:.2} s (states made in {:.2} s), root {}",
            tree.map().len(),
            assets,
            holders,
            built.as_secs_f64(),
            made.as_secs_f64(),
            hex::encode(tree.root())
        );

        let cp = Checkpoint {
            tree_size: 1,
            root: [0; 32],
            signed_at: Utc::now(),
            key_id: "0000000000000000".into(),
            signature: [0; 64],
            state_root: Some(tree.root()),
        };
        let mut rng = rand::thread_rng();
        let mut latency = match Histogram::<u64>::new_with_bounds(1, 60_000_000, 3) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let mut proof_bytes = latency.clone();
        let mut doc_bytes = latency.clone();
        let map = tree.map().clone();
        for i in 0..self.proofs {
            let a = rng.gen_range(0..assets);
            // Even: a holder with a freeze; odd: one with nothing (a proof of absence).
            let h = if i % 2 == 0 {
                a * per_asset + rng.gen_range(0..per_asset)
            } else {
                holders + 1 + rng.gen_range(0..holders.max(1))
            };
            let t = Instant::now();
            let doc = target_proof(&map, cp.clone(), asset(a), Some(holder(h)));
            let json = serde_json::to_vec(&doc).unwrap_or_default();
            let _ = latency.record(t.elapsed().as_nanos() as u64);
            for p in [Some(&doc.asset_proof), doc.holder_proof.as_ref()]
                .into_iter()
                .flatten()
            {
                let _ = proof_bytes.record(p.proof.len() as u64);
            }
            let _ = doc_bytes.record(json.len() as u64);
        }
        percentiles("proof document generation", " µs", &latency, 1_000.0);
        percentiles("one proof (base64 text)", " B", &proof_bytes, 1.0);
        percentiles("whole proof document (JSON)", " B", &doc_bytes, 1.0);
        let proof_p99_ms = latency.value_at_quantile(0.99) as f64 / 1e6;
        let size_max = proof_bytes.max();

        let mut update = latency.clone();
        update.reset();
        let mut delta = Delta::default();
        for i in 0..self.updates {
            let a = rng.gen_range(0..assets);
            let key = asset(a);
            let effects = [Effect::Place {
                hold: freeze(&key, holder(holders + 10_000_000 + i)),
            }];
            let t = Instant::now();
            if let Err(e) = tree.apply(&key, &effects, &mut delta) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let _ = update.record(t.elapsed().as_nanos() as u64);
            delta.changes.clear();
        }
        percentiles(
            "one decision's effects applied (2 leaves)",
            " µs",
            &update,
            1_000.0,
        );

        // The sequencer's way: a round's decisions staged, then written into the map at once,
        // against the same decisions applied one by one, each from the same tree.
        let mut one_by_one = latency.clone();
        one_by_one.reset();
        let mut at_once = one_by_one.clone();
        let round = self.round.max(1);
        let mut written = 0;
        while written < self.updates {
            let n = round.min(self.updates - written);
            let decisions: Vec<(AssetKey, [Effect; 1])> = (0..n)
                .map(|j| {
                    let key = asset(rng.gen_range(0..assets));
                    let who = holder(holders + 20_000_000 + written + j);
                    let effects = [Effect::Place {
                        hold: freeze(&key, who),
                    }];
                    (key, effects)
                })
                .collect();
            let mut single = tree.clone();
            let t = Instant::now();
            for (key, effects) in &decisions {
                if let Err(e) = single.apply(key, effects, &mut delta) {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            let _ = one_by_one.record(t.elapsed().as_nanos() as u64 / n as u64);
            delta.changes.clear();
            let mut staged = tree.clone();
            let t = Instant::now();
            let mut overlay = Overlay::default();
            for (key, effects) in &decisions {
                if let Err(e) = staged.stage(&mut overlay, key, effects) {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            staged.write(overlay, &mut delta);
            let _ = at_once.record(t.elapsed().as_nanos() as u64 / n as u64);
            delta.changes.clear();
            if staged.root() != single.root() {
                eprintln!("error: a round written at once gives another root than one by one");
                return ExitCode::from(2);
            }
            written += n;
        }
        percentiles(
            &format!("per decision, a round of {round} applied one by one"),
            " µs",
            &one_by_one,
            1_000.0,
        );
        percentiles(
            &format!("per decision, a round of {round} staged and written at once"),
            " µs",
            &at_once,
            1_000.0,
        );
        let pass = proof_p99_ms <= 5.0 && size_max <= 1536;
        println!(
            "{}: proof generation p99 {:.3} ms (target ≤ 5 ms), largest proof {} B (target ≤ 1,536 B)",
            if pass { "PASS" } else { "FAIL" },
            proof_p99_ms,
            size_max
        );
        if pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}
