//! Policy index benchmark: µs per decision for plain Cedar over the whole set and for the scope
//! index, at 100 and 1,000 generated policies: a realistic mix (1.5% broad-scope rules) and a
//! stress mix (10%). The index's gain is set by how many policies a request's scopes admit, which
//! the last column reports.
//!
//! Run: `cargo bench --bench policy_index`

#[path = "../tests/support/synthetic.rs"]
mod synthetic;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cedar_policy::{Authorizer, Request};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use regulator::policy::PolicyIndex;
use synthetic::{summary, Synthetic, REALISTIC_BROAD, STRESS_BROAD};

const REQUESTS: usize = 2_000;
const ROUNDS: usize = 5;

/// The median over rounds of the mean time per request, in µs.
fn per_decision(requests: &[Request], mut decide: impl FnMut(&Request)) -> f64 {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for r in requests {
                decide(r);
            }
            start.elapsed()
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2].as_secs_f64() * 1e6 / requests.len() as f64
}

fn main() {
    println!("mix        policies   whole set (µs/decision)   index (µs/decision)   speed-up   mean candidates");
    for (mix, broad, n) in [
        ("realistic", REALISTIC_BROAD, 100),
        ("realistic", REALISTIC_BROAD, 1_000),
        ("stress", STRESS_BROAD, 100),
        ("stress", STRESS_BROAD, 1_000),
    ] {
        let set = Synthetic::generate(n, broad, 42);
        let index = PolicyIndex::new(set.bundle.policy_set());
        let authorizer = Authorizer::new();
        let mut rng = SmallRng::seed_from_u64(9);
        let requests: Vec<Request> = (0..REQUESTS).map(|_| set.request(&mut rng)).collect();

        // The index must agree with the whole set on every benchmarked request.
        for r in &requests {
            let whole = authorizer.is_authorized(r, set.bundle.policy_set(), &set.entities);
            assert_eq!(
                summary(&whole),
                summary(&index.is_authorized(r, &set.entities))
            );
        }

        let whole = per_decision(&requests, |r| {
            black_box(authorizer.is_authorized(r, set.bundle.policy_set(), &set.entities));
        });
        let indexed = per_decision(&requests, |r| {
            black_box(index.is_authorized(r, &set.entities));
        });
        let candidates = requests
            .iter()
            .map(|r| index.candidates(r, &set.entities).count_ones(..))
            .sum::<usize>() as f64
            / requests.len() as f64;
        println!(
            "{mix:<9}  {n:>8}   {whole:>23.2}   {indexed:>19.2}   {:>7.1}×   {candidates:>15.1}",
            whole / indexed
        );
    }
}
