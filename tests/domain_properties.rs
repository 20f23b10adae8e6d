//! Properties of the pure decision core (SPEC §2, §4), over random histories of orders.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use regulator::domain::*;
use uuid::Uuid;

const ISSUERS: [&str; 4] = ["US-SEC", "US-DOJ", "US-OFAC", "GB-NCA"];
const HOLDERS: [&str; 2] = ["0xaaa", "0xbbb"];
/// Few distinct priorities, so ties (and custody contests) are common.
const PRIORITIES: [u16; 3] = [100, 500, 900];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
}

fn asset() -> AssetKey {
    AssetKey {
        chain: ChainId::parse("ethereum").unwrap(),
        asset: AssetId::parse("0xACME").unwrap(),
    }
}

/// A generated order before ids and times are fixed: which of the earlier orders a release
/// names is an index into the history so far.
#[derive(Debug, Clone)]
struct Spec {
    kind: OrderKind,
    issuer: usize,
    holder: Option<usize>,
    amount: Option<u128>,
    releases: usize,
    ttl_ms: u32,
    suspend_minutes: i64,
    allowed: bool,
    priority: usize,
    intake_offset_ms: i64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(OrderKind::ALL.to_vec()),
        0..ISSUERS.len(),
        prop::option::of(0..HOLDERS.len()),
        prop::option::of(1u128..1_000),
        any::<usize>(),
        1u32..120_000,
        -5i64..180,
        prop::bool::weighted(0.85),
        0..PRIORITIES.len(),
        0i64..100,
    )
        .prop_map(
            |(
                kind,
                issuer,
                holder,
                amount,
                releases,
                ttl_ms,
                suspend_minutes,
                allowed,
                priority,
                intake_offset_ms,
            )| Spec {
                kind,
                issuer,
                holder,
                amount,
                releases,
                ttl_ms,
                suspend_minutes,
                allowed,
                priority,
                intake_offset_ms,
            },
        )
}

/// A history: groups of order specs, resolved one group per minute.
fn history() -> impl Strategy<Value = Vec<Vec<Spec>>> {
    prop::collection::vec(prop::collection::vec(spec(), 0..7), 1..8)
}

fn build(spec: &Spec, seq: u128, start: DateTime<Utc>, earlier: &[OrderId]) -> Candidate {
    let amount = spec.amount.map(|a| Amount::new(a).unwrap());
    let instruction = match spec.kind {
        OrderKind::Monitor => Instruction::Monitor { amount },
        OrderKind::Preempt => Instruction::Preempt {
            lease_ttl_ms: LeaseTtl::from_millis(spec.ttl_ms).unwrap(),
        },
        OrderKind::Suspend => Instruction::Suspend {
            expires_at: start + Duration::minutes(spec.suspend_minutes),
            amount,
        },
        OrderKind::Freeze => Instruction::Freeze { amount },
        OrderKind::Seize => Instruction::Seize { amount },
        OrderKind::Confiscate => Instruction::Confiscate { amount },
        OrderKind::Release => Instruction::Release {
            releases: if earlier.is_empty() {
                OrderId::from_uuid(Uuid::from_u128(u128::MAX))
            } else {
                earlier[spec.releases % earlier.len()]
            },
        },
    };
    let order = Order {
        id: OrderId::from_uuid(Uuid::from_u128(seq)),
        issuer: IssuerId::parse(ISSUERS[spec.issuer]).unwrap(),
        target: Target {
            asset: asset(),
            holder: spec
                .holder
                .map(|h| HolderAddress::parse(HOLDERS[h]).unwrap()),
        },
        legal_basis: LegalBasis {
            instrument: Instrument::parse("court_order").unwrap(),
            reference: format!("ref-{seq}"),
        },
        instruction,
        intake_at: start + Duration::milliseconds(spec.intake_offset_ms),
    };
    let verdict = if spec.allowed {
        Verdict::allow(
            vec![PolicyId::parse(format!("permit-{}", spec.priority)).unwrap()],
            Priority::new(PRIORITIES[spec.priority]).unwrap(),
            vec![],
        )
    } else {
        Verdict::deny(vec![PolicyId::parse("forbid-x").unwrap()], vec![])
    };
    Candidate { order, verdict }
}

struct Run {
    groups: Vec<Vec<Candidate>>,
    resolutions: Vec<Resolution>,
    final_state: AssetState,
}

/// Resolves a history group by group, a minute apart, from the empty state.
fn run(history: &[Vec<Spec>]) -> Run {
    let mut state = AssetState::default();
    let mut seq = 0u128;
    let mut earlier = Vec::new();
    let mut groups = Vec::new();
    let mut resolutions = Vec::new();
    for (i, specs) in history.iter().enumerate() {
        let start = t0() + Duration::minutes(i as i64);
        let candidates: Vec<Candidate> = specs
            .iter()
            .map(|s| {
                seq += 1;
                build(s, seq, start, &earlier)
            })
            .collect();
        earlier.extend(candidates.iter().map(|c| c.order.id));
        let group = ConflictGroup::new(asset(), candidates.clone()).unwrap();
        let resolution = resolve(&state, &group, start + Duration::milliseconds(150));
        state = resolution.state.clone();
        groups.push(candidates);
        resolutions.push(resolution);
    }
    Run {
        groups,
        resolutions,
        final_state: state,
    }
}

fn holder_scopes() -> Vec<Option<HolderAddress>> {
    std::iter::once(None)
        .chain(
            HOLDERS
                .iter()
                .map(|h| Some(HolderAddress::parse(*h).unwrap())),
        )
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// SPEC §4: for any set of orders in one window, every arrival permutation yields the same
    /// decisions and final state.
    #[test]
    fn every_arrival_permutation_gives_the_same_decisions(
        (prefix, group, shuffled) in (history(), prop::collection::vec(spec(), 1..8))
            .prop_flat_map(|(prefix, group)| {
                let n = group.len();
                (Just(prefix), Just(group), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            })
    ) {
        let before = run(&prefix);
        let earlier: Vec<OrderId> = before.groups.iter().flatten().map(|c| c.order.id).collect();
        let start = t0() + Duration::hours(1);
        let base = 10_000u128;
        let candidates: Vec<Candidate> = group
            .iter()
            .enumerate()
            .map(|(i, s)| build(s, base + i as u128, start, &earlier))
            .collect();
        let permuted: Vec<Candidate> = shuffled.iter().map(|&i| candidates[i].clone()).collect();
        let now = start + Duration::milliseconds(150);
        let a = resolve(&before.final_state, &ConflictGroup::new(asset(), candidates).unwrap(), now);
        let b = resolve(&before.final_state, &ConflictGroup::new(asset(), permuted).unwrap(), now);
        prop_assert_eq!(a, b);
    }

    /// Every order gets exactly one decision; expiries are the only other decisions.
    #[test]
    fn every_order_gets_exactly_one_decision(history in history()) {
        let run = run(&history);
        for (group, resolution) in run.groups.iter().zip(&run.resolutions) {
            let decided: Vec<OrderId> = resolution.decisions.iter().filter_map(|d| match d.subject {
                Subject::Order { order_id } => Some(order_id),
                Subject::Expiry { .. } => None,
            }).collect();
            let unique: BTreeSet<OrderId> = decided.iter().copied().collect();
            let submitted: BTreeSet<OrderId> = group.iter().map(|c| c.order.id).collect();
            prop_assert_eq!(decided.len(), group.len());
            prop_assert_eq!(unique, submitted);
        }
    }

    /// SPEC §2: the effective level is the maximum over the active holds that cover the scope.
    #[test]
    fn effective_level_is_the_maximum_over_active_holds(history in history()) {
        let state = run(&history).final_state;
        for scope in holder_scopes() {
            let levels: Vec<LockLevel> = state
                .holds()
                .filter(|h| h.covers(scope.as_ref()))
                .map(|h| h.kind.level())
                .collect();
            let expected = levels.iter().copied().max().unwrap_or(LockLevel::Unlocked);
            prop_assert_eq!(state.effective_level(scope.as_ref()), expected);
            // A holder is never less locked than the asset as a whole.
            prop_assert!(state.effective_level(scope.as_ref()) >= state.effective_level(None));
        }
    }

    /// A target's coverage (what each record states before and after its decision) is, in one
    /// pass, what the holds covering it give one by one: the maximum level, the covering holds in
    /// order-id order, and the frozen amount (everything if a freezing hold has no amount, else
    /// the sum of the freezing holds' amounts).
    #[test]
    fn a_targets_coverage_is_what_its_covering_holds_add_up_to(history in history()) {
        let state = run(&history).final_state;
        for scope in holder_scopes() {
            let covering: Vec<&Hold> = state.holds().filter(|h| h.covers(scope.as_ref())).collect();
            let coverage = state.coverage(scope.as_ref());
            prop_assert_eq!(
                coverage.level,
                covering.iter().map(|h| h.level()).max().unwrap_or(LockLevel::Unlocked)
            );
            prop_assert_eq!(&coverage.holds, &covering.iter().map(|h| h.order_id).collect::<Vec<_>>());
            let freezing: Vec<&&Hold> =
                covering.iter().filter(|h| h.level() >= LockLevel::PreemptiveLocked).collect();
            let expected = if freezing.iter().any(|h| h.amount.is_none()) {
                Frozen::All
            } else if freezing.is_empty() {
                Frozen::Nothing
            } else {
                Frozen::Partial(freezing.iter().filter_map(|h| h.amount).fold(0u128, |s, a| s.saturating_add(a.units())))
            };
            prop_assert_eq!(coverage.frozen, expected);
        }
    }

    /// The state's narrowed scans (each hold's holder, kind and expiry kept beside it, so a scan
    /// follows a pointer only for the holds that may match) give exactly what a scan of every
    /// hold gives, in the same order; and a state rebuilt from its holds equals the one that
    /// decisions built hold by hold.
    #[test]
    fn the_states_narrowed_scans_are_full_scans(history in history()) {
        let state = run(&history).final_state;
        let all: Vec<&Hold> = state.holds().collect();
        let ids = |holds: Vec<&Hold>| holds.iter().map(|h| h.order_id).collect::<Vec<_>>();
        for scope in holder_scopes() {
            let target = Target { asset: asset(), holder: scope.clone() };
            prop_assert_eq!(
                ids(state.overlapping(&target).collect()),
                ids(all.iter().copied().filter(|h| h.target.overlaps(&target)).collect())
            );
            prop_assert_eq!(
                ids(state.holds_covering(scope.as_ref()).collect()),
                ids(all.iter().copied().filter(|h| h.covers(scope.as_ref())).collect())
            );
        }
        for kind in OrderKind::ALL {
            prop_assert_eq!(
                ids(state.holds_of_kind(|k| k == kind).collect()),
                ids(all.iter().copied().filter(|h| h.kind == kind).collect())
            );
        }
        prop_assert_eq!(
            ids(state.expiring().collect()),
            ids(all.iter().copied().filter(|h| h.expires_at.is_some()).collect())
        );
        prop_assert_eq!(state.next_expiry(), all.iter().filter_map(|h| h.expires_at).min());
        let rebuilt = AssetState::from_parts(
            state.holds().cloned(),
            state.version(),
            state.last_fencing_token(),
        );
        prop_assert_eq!(rebuilt, state);
    }

    /// SPEC §2: an applied RELEASE removes exactly the hold it names and nothing else.
    #[test]
    fn a_release_removes_only_the_hold_it_names(history in history(), pick in any::<usize>(), issuer in 0..ISSUERS.len()) {
        let before = run(&history).final_state;
        let holds: Vec<Hold> = before.holds().cloned().collect();
        prop_assume!(!holds.is_empty());
        let named = &holds[pick % holds.len()];
        // Release at the moment of the last group, so that nothing else expires meanwhile.
        let now = t0() + Duration::minutes(history.len() as i64 - 1) + Duration::milliseconds(150);
        let release = Candidate {
            order: Order {
                id: OrderId::from_uuid(Uuid::from_u128(99_999)),
                issuer: IssuerId::parse(ISSUERS[issuer]).unwrap(),
                target: named.target.clone(),
                legal_basis: LegalBasis { instrument: Instrument::parse("court_order").unwrap(), reference: "r".into() },
                instruction: Instruction::Release { releases: named.order_id },
                intake_at: now,
            },
            verdict: Verdict::allow(vec![PolicyId::parse("permit-release").unwrap()], Priority::new(500).unwrap(), vec![]),
        };
        let after = resolve(&before, &ConflictGroup::new(asset(), vec![release]).unwrap(), now);
        let released = after.decisions.iter().find(|d| matches!(d.subject, Subject::Order { .. })).unwrap();
        let ids = |s: &AssetState| s.holds().map(|h| h.order_id).collect::<BTreeSet<_>>();
        let expired: BTreeSet<OrderId> = after.decisions.iter().filter_map(|d| match d.subject {
            Subject::Expiry { hold } => Some(hold),
            _ => None,
        }).collect();
        let mut expected = ids(&before);
        expected.retain(|id| !expired.contains(id));
        if named.kind == OrderKind::Confiscate || expired.contains(&named.order_id) {
            prop_assert_ne!(released.outcome, Outcome::Applied);
        } else {
            prop_assert_eq!(released.outcome, Outcome::Applied);
            expected.remove(&named.order_id);
        }
        prop_assert_eq!(ids(&after.state), expected);
    }

    /// The state is a function of the decision log: replaying every decision's effects from the
    /// empty state reproduces it, version and lease counter included.
    #[test]
    fn replaying_the_decisions_reproduces_the_state(history in history()) {
        let run = run(&history);
        let mut replayed = AssetState::default();
        for decision in run.resolutions.iter().flat_map(|r| &r.decisions) {
            replayed.apply(&decision.effects);
        }
        prop_assert_eq!(replayed, run.final_state);
    }

    /// Invariants of the lock model that must hold after any history.
    #[test]
    fn the_lock_model_invariants_hold(history in history()) {
        let run = run(&history);
        let mut confiscations = BTreeSet::new();
        for resolution in &run.resolutions {
            let state = &resolution.state;
            let holds: Vec<&Hold> = state.holds().collect();
            for a in &holds {
                for b in &holds {
                    if a.target.overlaps(&b.target) {
                        // One custodian at a time.
                        prop_assert!(!(a.kind.takes_custody() && b.kind.takes_custody() && a.issuer != b.issuer));
                        // No preemptive lease survives under a blocking hold.
                        prop_assert!(!(a.kind == OrderKind::Preempt && b.kind.level() >= LockLevel::TempLocked));
                    }
                }
            }
            // Confiscation is final: once placed, it stays.
            let now: BTreeSet<OrderId> = holds.iter().filter(|h| h.kind == OrderKind::Confiscate).map(|h| h.order_id).collect();
            prop_assert!(confiscations.is_subset(&now));
            confiscations = now;
            // Applied decisions change the state; the others never do.
            for d in &resolution.decisions {
                prop_assert_eq!(d.outcome == Outcome::Applied, !d.effects.is_empty());
            }
        }
    }
}

/// A hold of order `n` on holder `holder` (`None`: asset-wide), of `kind`, expiring if `expires`.
fn plain_hold(n: u8, holder: Option<usize>, kind: OrderKind, expires: bool) -> Hold {
    Hold {
        order_id: OrderId::from_uuid(Uuid::from_u128(u128::from(n) + 1)),
        issuer: IssuerId::parse(ISSUERS[usize::from(n) % ISSUERS.len()]).unwrap(),
        kind,
        target: Target {
            asset: asset(),
            holder: holder.map(|h| HolderAddress::parse(HOLDERS[h]).unwrap()),
        },
        amount: None,
        instrument: Instrument::parse("court_order").unwrap(),
        priority: Priority::new(500).unwrap(),
        placed_at: t0(),
        expires_at: expires.then(|| t0() + Duration::minutes(i64::from(n))),
        fencing_token: None,
    }
}

/// One step on a state: place (or place again) the hold of order `n`, or lift it.
fn step() -> impl Strategy<Value = (u8, Option<Option<usize>>, OrderKind, bool)> {
    (
        0u8..80,
        prop::option::weighted(0.7, prop::option::of(0..HOLDERS.len())),
        prop::sample::select(OrderKind::ALL.to_vec()),
        any::<bool>(),
    )
}

fn effect_of((n, place, kind, expires): (u8, Option<Option<usize>>, OrderKind, bool)) -> Effect {
    match place {
        Some(holder) => Effect::Place {
            hold: plain_hold(n, holder, kind, expires),
        },
        None => Effect::Lift {
            order_id: OrderId::from_uuid(Uuid::from_u128(u128::from(n) + 1)),
            cause: LiftCause::Expired,
        },
    }
}

/// What a state must hold after `effects`: a map by order id, as the SPEC's hold set is.
fn model(
    mut holds: std::collections::BTreeMap<OrderId, Hold>,
    effects: &[Effect],
) -> std::collections::BTreeMap<OrderId, Hold> {
    for effect in effects {
        match effect {
            Effect::Place { hold } => {
                holds.insert(hold.order_id, hold.clone());
            }
            Effect::Lift { order_id, .. } => {
                holds.remove(order_id);
            }
        }
    }
    holds
}

fn assert_holds(
    state: &AssetState,
    expected: &std::collections::BTreeMap<OrderId, Hold>,
) -> Result<(), TestCaseError> {
    let holds: Vec<&Hold> = state.holds().collect();
    prop_assert_eq!(holds, expected.values().collect::<Vec<_>>());
    for n in 0u8..80 {
        let id = OrderId::from_uuid(Uuid::from_u128(u128::from(n) + 1));
        prop_assert_eq!(state.hold(&id), expected.get(&id));
    }
    let rebuilt = AssetState::from_parts(expected.values().cloned(), state.version(), 0);
    prop_assert_eq!(&rebuilt, state);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A state is a shared base and the changes since (folded in past a bound): whatever the
    /// steps, and however copies share a base while both change, each copy holds exactly what a
    /// map by order id would, in order-id order, and equals a state rebuilt from those holds.
    #[test]
    fn a_state_and_its_copies_hold_what_their_own_steps_gave(
        first in prop::collection::vec(step(), 0..150),
        left in prop::collection::vec(step(), 0..100),
        right in prop::collection::vec(step(), 0..100),
    ) {
        let first: Vec<Effect> = first.into_iter().map(effect_of).collect();
        let mut state = AssetState::default();
        for effect in &first {
            state.apply(std::slice::from_ref(effect));
        }
        let shared = model(Default::default(), &first);
        assert_holds(&state, &shared)?;

        let mut copy = state.clone();
        let left: Vec<Effect> = left.into_iter().map(effect_of).collect();
        let right: Vec<Effect> = right.into_iter().map(effect_of).collect();
        for effect in &left {
            state.apply(std::slice::from_ref(effect));
        }
        for effect in &right {
            copy.apply(std::slice::from_ref(effect));
        }
        assert_holds(&state, &model(shared.clone(), &left))?;
        assert_holds(&copy, &model(shared, &right))?;
    }
}
