//! The scope index gives exactly the answer of plain Cedar over the whole set: same decision,
//! same determining policies, same errors, on a generated 1,000-policy set with many broad scopes.

mod support;

use std::sync::OnceLock;

use cedar_policy::{Authorizer, Context, EntityUid};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use regulator::domain::HolderAddress;
use regulator::policy::context::{context, context_json, PolicyInput};
use regulator::policy::PolicyIndex;
use support::synthetic::{summary, Synthetic, STRESS_BROAD};

fn set() -> &'static (Synthetic, PolicyIndex) {
    static SET: OnceLock<(Synthetic, PolicyIndex)> = OnceLock::new();
    SET.get_or_init(|| {
        let synthetic = Synthetic::generate(1_000, STRESS_BROAD, 7);
        let index = PolicyIndex::new(synthetic.bundle.policy_set());
        (synthetic, index)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn the_index_answers_exactly_as_the_whole_set(seed in any::<u64>()) {
        let (synthetic, index) = set();
        let request = synthetic.request(&mut SmallRng::seed_from_u64(seed));
        let whole = Authorizer::new().is_authorized(&request, synthetic.bundle.policy_set(), &synthetic.entities);
        let indexed = index.is_authorized(&request, &synthetic.entities);
        prop_assert_eq!(summary(&whole), summary(&indexed));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The sequencer builds each request's context as Cedar values; it must be exactly the
    /// record Cedar parses from the documented JSON form, checked against the schema, for
    /// every kind of order, on a holder or the whole asset.
    #[test]
    fn the_context_built_directly_is_the_one_parsed_from_json(seed in any::<u64>(), on_holder in any::<bool>()) {
        let (synthetic, _) = set();
        let (mut order, asset, hold) = synthetic.input(&mut SmallRng::seed_from_u64(seed));
        if on_holder {
            order.target.holder = Some(HolderAddress::parse("0xH1").unwrap());
        }
        let input = PolicyInput { order: &order, asset, released: Some(&hold) };
        let action: EntityUid = format!("Action::\"{}\"", order.kind().as_str()).parse().unwrap();
        let parsed = Context::from_json_value(
            context_json(&input).unwrap(),
            Some((synthetic.bundle.schema(), &action)),
        )
        .unwrap();
        prop_assert_eq!(context(&input).unwrap(), parsed);
    }
}

/// The differential test would pass trivially if the index kept every policy; it must prune.
#[test]
fn the_index_keeps_a_small_fraction_of_the_policies() {
    let (synthetic, index) = set();
    let mut rng = SmallRng::seed_from_u64(11);
    let sizes: Vec<usize> = (0..500)
        .map(|_| {
            index
                .candidates(&synthetic.request(&mut rng), &synthetic.entities)
                .count_ones(..)
        })
        .collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!(mean < 60.0, "mean candidates {mean} of 1000");
}

/// Answers of every kind occur, so the comparison covers allows, forbids and errors.
#[test]
fn generated_requests_cover_allow_deny_and_errors() {
    let (synthetic, index) = set();
    let mut rng = SmallRng::seed_from_u64(3);
    let (mut allow, mut forbid, mut errors) = (0, 0, 0);
    for _ in 0..2_000 {
        let (decision, reasons, errs) =
            summary(&index.is_authorized(&synthetic.request(&mut rng), &synthetic.entities));
        match decision {
            cedar_policy::Decision::Allow => allow += 1,
            cedar_policy::Decision::Deny if !reasons.is_empty() => forbid += 1,
            _ => {}
        }
        errors += usize::from(!errs.is_empty());
    }
    assert!(
        allow > 20 && forbid > 5 && errors > 5,
        "allow {allow}, forbid {forbid}, errors {errors}"
    );
}
