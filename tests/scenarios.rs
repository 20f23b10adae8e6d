//! The collisions of the design notes, as a regulator would tell them, decided by the shipped
//! jurisdiction policies and the resolve phase together.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, TimeZone, Utc};
use regulator::decide::decide_group;
use regulator::domain::*;
use regulator::policy::{PolicyBundle, PolicyEngine};

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
        match PolicyBundle::load_dir(dir.as_ref()) {
            Ok(bundle) => PolicyEngine::new(bundle),
            Err(e) => panic!("shipped policies must load: {e:#?}"),
        }
    })
}

fn monday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 14, 30, 0).unwrap()
}

fn asset(chain: &str, id: &str, jurisdiction: &str, class: &str) -> RegisteredAsset {
    RegisteredAsset {
        key: AssetKey {
            chain: ChainId::parse(chain).unwrap(),
            asset: AssetId::parse(id).unwrap(),
        },
        issuer_jurisdiction: JurisdictionCode::parse(jurisdiction).unwrap(),
        asset_class: AssetClass::parse(class).unwrap(),
    }
}

/// A tokenized bond of a U.S. issuer under SEC enforcement.
fn acme_bond() -> RegisteredAsset {
    asset("ethereum", "0xACME-BOND-2031", "US", "security")
}

/// A Singapore-issued stablecoin.
fn sgd_coin() -> RegisteredAsset {
    asset("polygon", "0x5GD-COIN", "SG", "stablecoin")
}

/// An order on `asset`, received `after_ms` into the window that opens at `monday()`.
fn order(
    issuer: &str,
    asset: &RegisteredAsset,
    holder: Option<&str>,
    instrument: &str,
    reference: &str,
    instruction: Instruction,
    after_ms: i64,
) -> Order {
    Order {
        id: OrderId::new(),
        issuer: IssuerId::parse(issuer).unwrap(),
        target: Target {
            asset: asset.key.clone(),
            holder: holder.map(|h| HolderAddress::parse(h).unwrap()),
        },
        legal_basis: LegalBasis {
            instrument: Instrument::parse(instrument).unwrap(),
            reference: reference.into(),
        },
        instruction,
        intake_at: monday() + Duration::milliseconds(after_ms),
    }
}

fn decide(
    asset: &RegisteredAsset,
    state: &AssetState,
    orders: Vec<Order>,
    now: DateTime<Utc>,
) -> Resolution {
    decide_group(engine(), asset, state, orders, now).unwrap()
}

fn decision_for<'a>(resolution: &'a Resolution, order: &Order) -> &'a Decision {
    resolution
        .decisions
        .iter()
        .find(|d| d.subject == Subject::Order { order_id: order.id })
        .expect("every order has a decision")
}

fn ids(list: &[&str]) -> Vec<PolicyId> {
    list.iter().map(|s| PolicyId::parse(*s).unwrap()).collect()
}

/// (a) The SEC's court-ordered freeze and the DOJ's seizure warrant reach the same U.S. bond
/// within 40 ms. Whichever arrives first, the DOJ's seizure (850) is sequenced before the SEC's
/// freeze (700); both holds stand, the bond is PERM_LOCKED, and the DOJ has custody.
#[test]
fn sec_freeze_and_doj_seizure_in_one_window_decide_the_same_in_both_arrival_orders() {
    let bond = acme_bond();
    let freeze = order(
        "US-SEC",
        &bond,
        None,
        "court_order",
        "SEC v. Acme Corp., 26-cv-0142 (S.D.N.Y.)",
        Instruction::Freeze { amount: None },
        0,
    );
    let seize = order(
        "US-DOJ",
        &bond,
        None,
        "warrant",
        "26-MAG-0913",
        Instruction::Seize { amount: None },
        40,
    );
    let now = monday() + Duration::milliseconds(100);

    let sec_first = decide(
        &bond,
        &AssetState::default(),
        vec![freeze.clone(), seize.clone()],
        now,
    );
    let doj_first = decide(
        &bond,
        &AssetState::default(),
        vec![seize.clone(), freeze.clone()],
        now,
    );
    assert_eq!(sec_first, doj_first);

    let sequence: Vec<Subject> = sec_first.decisions.iter().map(|d| d.subject).collect();
    assert_eq!(
        sequence,
        vec![
            Subject::Order { order_id: seize.id },
            Subject::Order {
                order_id: freeze.id
            }
        ]
    );
    let seized = decision_for(&sec_first, &seize);
    assert_eq!(
        (seized.outcome, seized.priority.value()),
        (Outcome::Applied, 850)
    );
    assert_eq!(seized.determining, ids(&["us-doj-seize-warrant"]));
    let frozen = decision_for(&sec_first, &freeze);
    assert_eq!(
        (frozen.outcome, frozen.priority.value()),
        (Outcome::Applied, 700)
    );
    assert_eq!(frozen.determining, ids(&["us-sec-freeze-court-order"]));

    let state = &sec_first.state;
    assert_eq!(state.effective_level(None), LockLevel::PermLocked);
    assert_eq!(
        state.holds().count(),
        2,
        "one hold per order, never an overwritten status"
    );
    assert_eq!(state.frozen(None), Frozen::All);
}

/// (b) OFAC blocks a designated person's stablecoin balance. A federal court's release naming the
/// block is rejected; only OFAC's licence lifts it.
#[test]
fn only_an_ofac_licence_lifts_an_ofac_block() {
    let coin = sgd_coin();
    let holder = Some("0xD351GNATED");
    let block = order(
        "US-OFAC",
        &coin,
        holder,
        "designation",
        "SDN-2026-0457",
        Instruction::Freeze { amount: None },
        0,
    );
    let blocked = decide(
        &coin,
        &AssetState::default(),
        vec![block.clone()],
        monday() + Duration::milliseconds(100),
    );
    assert_eq!(decision_for(&blocked, &block).outcome, Outcome::Applied);
    assert_eq!(decision_for(&blocked, &block).priority.value(), 900);

    let later = monday() + Duration::days(30);
    let court = order(
        "US-SDNY",
        &coin,
        holder,
        "court_order",
        "In re Claimant, 26-mc-0077",
        Instruction::Release { releases: block.id },
        0,
    );
    let court = Order {
        intake_at: later,
        ..court
    };
    let refused = decide(&coin, &blocked.state, vec![court.clone()], later);
    let decision = decision_for(&refused, &court);
    assert_eq!(decision.outcome, Outcome::Rejected);
    assert_eq!(
        decision.determining,
        ids(&["us-ofac-block-lifted-only-by-ofac-licence"])
    );
    assert!(decision
        .reason
        .to_string()
        .contains("us-ofac-block-lifted-only-by-ofac-licence"));
    assert_eq!(
        refused.state, blocked.state,
        "a rejected order changes nothing"
    );

    let licence = Order {
        intake_at: later + Duration::days(1),
        ..order(
            "US-OFAC",
            &coin,
            holder,
            "licence",
            "GL-2026-13",
            Instruction::Release { releases: block.id },
            0,
        )
    };
    let lifted = decide(
        &coin,
        &refused.state,
        vec![licence.clone()],
        later + Duration::days(1),
    );
    let decision = decision_for(&lifted, &licence);
    assert_eq!(decision.outcome, Outcome::Applied);
    assert!(decision
        .determining
        .contains(&PolicyId::parse("us-ofac-licence-release").unwrap()));
    let holder = HolderAddress::parse("0xD351GNATED").unwrap();
    assert_eq!(
        lifted.state.effective_level(Some(&holder)),
        LockLevel::Unlocked
    );
    assert_eq!(lifted.state.version(), blocked.state.version() + 1);
}

/// (c) A "seizure" sent in FATF's name is refused, and the decision cites the policy that says
/// why; FATF may still flag the asset for monitoring.
#[test]
fn fatf_cannot_seize_but_may_monitor() {
    let bond = acme_bond();
    let seize = order(
        "FATF",
        &bond,
        None,
        "recommendation",
        "R.38 follow-up",
        Instruction::Seize { amount: None },
        0,
    );
    let monitor = order(
        "FATF",
        &bond,
        None,
        "recommendation",
        "Grey-list review 2026-02",
        Instruction::Monitor { amount: None },
        10,
    );
    let r = decide(
        &bond,
        &AssetState::default(),
        vec![seize.clone(), monitor.clone()],
        monday() + Duration::milliseconds(100),
    );

    let refused = decision_for(&r, &seize);
    assert_eq!(refused.outcome, Outcome::Rejected);
    assert_eq!(
        refused.determining,
        ids(&["fatf-standard-setter-cannot-freeze-or-seize"])
    );
    assert_eq!(refused.priority, Priority::ZERO);
    assert!(
        matches!(&refused.reason, Reason::PolicyDenied { forbids, .. } if forbids == &ids(&["fatf-standard-setter-cannot-freeze-or-seize"]))
    );

    let flagged = decision_for(&r, &monitor);
    assert_eq!(flagged.outcome, Outcome::Applied);
    assert_eq!(flagged.determining, ids(&["fatf-monitor-only"]));
    assert_eq!(r.state.effective_level(None), LockLevel::SoftLocked);
    assert_eq!(
        r.state.frozen(None),
        Frozen::Nothing,
        "monitoring flags, it does not freeze"
    );
}

/// (d) The DOJ and the UK's NCA both serve seizure warrants on a Singapore-issued stablecoin in
/// the same window. Neither is domestic, both rank 600: custody cannot go to either without a
/// human (mutual legal assistance), so both are escalated and nothing changes, in any order.
#[test]
fn equal_priority_seizures_from_two_jurisdictions_are_escalated() {
    let coin = sgd_coin();
    let doj = order(
        "US-DOJ",
        &coin,
        None,
        "warrant",
        "26-MAG-1207",
        Instruction::Seize { amount: None },
        5,
    );
    let nca = order(
        "GB-NCA",
        &coin,
        None,
        "warrant",
        "NCA/AFW/2026/311",
        Instruction::Seize { amount: None },
        60,
    );
    let now = monday() + Duration::milliseconds(100);
    let one = decide(
        &coin,
        &AssetState::default(),
        vec![doj.clone(), nca.clone()],
        now,
    );
    let other = decide(
        &coin,
        &AssetState::default(),
        vec![nca.clone(), doj.clone()],
        now,
    );
    assert_eq!(one, other);

    for (mine, rival) in [(&doj, &nca), (&nca, &doj)] {
        let d = decision_for(&one, mine);
        assert_eq!(d.outcome, Outcome::Escalated);
        assert_eq!(d.priority.value(), 600);
        assert_eq!(
            d.reason,
            Reason::CustodyTie {
                rivals: vec![rival.id]
            }
        );
        assert!(d.effects.is_empty());
    }
    assert_eq!(
        one.state,
        AssetState::default(),
        "escalation records, it does not lock"
    );

    // A domestic seizure outranks a foreign one: MAS is not law enforcement, but a later
    // domestic-priority seizure would win; here the DOJ on a U.S. bond against the NCA abroad.
    let bond = acme_bond();
    let doj = order(
        "US-DOJ",
        &bond,
        None,
        "warrant",
        "26-MAG-1300",
        Instruction::Seize { amount: None },
        0,
    );
    let nca = order(
        "GB-NCA",
        &bond,
        None,
        "warrant",
        "NCA/AFW/2026/400",
        Instruction::Seize { amount: None },
        1,
    );
    let r = decide(
        &bond,
        &AssetState::default(),
        vec![nca.clone(), doj.clone()],
        now,
    );
    assert_eq!(decision_for(&r, &doj).outcome, Outcome::Applied);
    assert_eq!(decision_for(&r, &nca).outcome, Outcome::Superseded);
    assert_eq!(
        decision_for(&r, &nca).reason,
        Reason::OutrankedInCustodyContest { winner: doj.id }
    );
}

/// (e) MAS suspends dealings in a Singapore stablecoin for 48 hours. The suspension ends by
/// itself, as a decision of its own, exactly when it expires.
#[test]
fn a_suspension_expires_as_a_sequenced_decision() {
    let coin = sgd_coin();
    let until = monday() + Duration::hours(48);
    let suspend = order(
        "SG-MAS",
        &coin,
        None,
        "direction",
        "MAS/DIR/2026/08",
        Instruction::Suspend {
            expires_at: until,
            amount: None,
        },
        0,
    );
    let placed = decide(
        &coin,
        &AssetState::default(),
        vec![suspend.clone()],
        monday() + Duration::milliseconds(100),
    );
    assert_eq!(decision_for(&placed, &suspend).outcome, Outcome::Applied);
    assert_eq!(
        decision_for(&placed, &suspend).determining,
        ids(&["sg-mas-suspend-14-days"])
    );
    assert_eq!(placed.state.effective_level(None), LockLevel::TempLocked);

    let before = decide(&coin, &placed.state, vec![], until - Duration::seconds(1));
    assert!(before.decisions.is_empty());
    assert_eq!(before.state, placed.state);

    let at = decide(&coin, &placed.state, vec![], until);
    assert_eq!(at.decisions.len(), 1);
    let expiry = &at.decisions[0];
    assert_eq!(expiry.subject, Subject::Expiry { hold: suspend.id });
    assert_eq!(
        (expiry.outcome, &expiry.reason),
        (Outcome::Applied, &Reason::Expired)
    );
    assert_eq!(at.state.effective_level(None), LockLevel::Unlocked);
    assert_eq!(at.state.version(), placed.state.version() + 1);

    // A suspension beyond the 14 days MAS may impose is refused by policy; a SUSPEND whose
    // expiry has already passed is refused as an invalid transition.
    let long = order(
        "SG-MAS",
        &coin,
        None,
        "direction",
        "MAS/DIR/2026/09",
        Instruction::Suspend {
            expires_at: monday() + Duration::days(15),
            amount: None,
        },
        0,
    );
    let stale = order(
        "SG-MAS",
        &coin,
        None,
        "direction",
        "MAS/DIR/2026/10",
        Instruction::Suspend {
            expires_at: monday() + Duration::milliseconds(50),
            amount: None,
        },
        1,
    );
    let r = decide(
        &coin,
        &AssetState::default(),
        vec![long.clone(), stale.clone()],
        monday() + Duration::milliseconds(100),
    );
    assert!(matches!(
        decision_for(&r, &long).reason,
        Reason::PolicyDenied { .. }
    ));
    assert!(matches!(
        decision_for(&r, &stale).reason,
        Reason::ExpiryNotInFuture { .. }
    ));
}

/// (f) A settlement coordinator takes a 10-second lease on a holder's bond balance before
/// settling a trade. The SEC's court-ordered freeze lands mid-settlement: the freeze applies, the
/// lease is revoked in the same decision, and no new lease can be taken while the freeze stands.
#[test]
fn a_freeze_revokes_a_preemptive_lease() {
    let bond = acme_bond();
    let holder = Some("0xHOLDER01");
    let lease = order(
        "settlement-coordinator",
        &bond,
        holder,
        "settlement",
        "trade T-88121",
        Instruction::Preempt {
            lease_ttl_ms: LeaseTtl::from_millis(10_000).unwrap(),
        },
        0,
    );
    let leased = decide(
        &bond,
        &AssetState::default(),
        vec![lease.clone()],
        monday() + Duration::milliseconds(100),
    );
    let granted = decision_for(&leased, &lease);
    assert_eq!(granted.outcome, Outcome::Applied);
    assert_eq!(
        granted.determining,
        ids(&["coordinator-preempt-short-lease"])
    );
    assert_eq!(
        leased.state.hold(&lease.id).and_then(|h| h.fencing_token),
        Some(FencingToken(1))
    );
    let h = HolderAddress::parse("0xHOLDER01").unwrap();
    assert_eq!(
        leased.state.effective_level(Some(&h)),
        LockLevel::PreemptiveLocked
    );

    let t = monday() + Duration::seconds(3);
    let freeze = Order {
        intake_at: t,
        ..order(
            "US-SEC",
            &bond,
            None,
            "court_order",
            "SEC v. Acme Corp., TRO",
            Instruction::Freeze { amount: None },
            0,
        )
    };
    let frozen = decide(&bond, &leased.state, vec![freeze.clone()], t);
    let d = decision_for(&frozen, &freeze);
    assert_eq!(d.outcome, Outcome::Applied);
    assert!(d.effects.contains(&Effect::Lift {
        order_id: lease.id,
        cause: LiftCause::Revoked { by: freeze.id }
    }));
    assert!(frozen.state.hold(&lease.id).is_none());
    assert_eq!(
        frozen.state.effective_level(Some(&h)),
        LockLevel::HardLocked
    );

    let retry = Order {
        intake_at: t + Duration::seconds(1),
        ..order(
            "settlement-coordinator",
            &bond,
            holder,
            "settlement",
            "trade T-88121",
            Instruction::Preempt {
                lease_ttl_ms: LeaseTtl::from_millis(10_000).unwrap(),
            },
            0,
        )
    };
    let r = decide(
        &bond,
        &frozen.state,
        vec![retry.clone()],
        t + Duration::seconds(1),
    );
    assert_eq!(
        decision_for(&r, &retry).reason,
        Reason::TargetLocked {
            by: freeze.id,
            level: LockLevel::HardLocked
        }
    );

    // Without the freeze the lease would have ended by itself after its TTL.
    let expired = decide(
        &bond,
        &leased.state,
        vec![],
        monday() + Duration::milliseconds(100) + Duration::seconds(10),
    );
    assert_eq!(
        expired.decisions[0].subject,
        Subject::Expiry { hold: lease.id }
    );
}

/// One authority's release never lifts another's hold; confiscation is final.
#[test]
fn releases_lift_only_what_policy_lets_them() {
    let bond = acme_bond();
    let freeze = order(
        "US-SEC",
        &bond,
        None,
        "court_order",
        "TRO",
        Instruction::Freeze { amount: None },
        0,
    );
    let confiscate = order(
        "US-DOJ",
        &bond,
        Some("0xFORFEIT"),
        "forfeiture_order",
        "Final order of forfeiture",
        Instruction::Confiscate {
            amount: Some(Amount::new(5_000).unwrap()),
        },
        1,
    );
    let s = decide(
        &bond,
        &AssetState::default(),
        vec![freeze.clone(), confiscate.clone()],
        monday() + Duration::milliseconds(100),
    )
    .state;

    let t = monday() + Duration::hours(1);
    let doj_lifts_sec = Order {
        intake_at: t,
        ..order(
            "US-DOJ",
            &bond,
            None,
            "warrant",
            "x",
            Instruction::Release {
                releases: freeze.id,
            },
            0,
        )
    };
    let sec_lifts_own = Order {
        intake_at: t,
        ..order(
            "US-SEC",
            &bond,
            None,
            "court_order",
            "TRO dissolved",
            Instruction::Release {
                releases: freeze.id,
            },
            1,
        )
    };
    let court_lifts_confiscation = Order {
        intake_at: t,
        ..order(
            "US-SDNY",
            &bond,
            Some("0xFORFEIT"),
            "court_order",
            "x",
            Instruction::Release {
                releases: confiscate.id,
            },
            2,
        )
    };
    let refused = decide(&bond, &s, vec![doj_lifts_sec.clone()], t);
    assert_eq!(
        decision_for(&refused, &doj_lifts_sec).reason,
        Reason::PolicyDenied {
            forbids: vec![],
            errors: vec![]
        }
    );
    assert_eq!(refused.state, s);

    // Told apart from the DOJ's attempt: in one window, that denied release (priority 0) would be
    // sequenced after the SEC's own (500) and find the freeze already lifted.
    let r = decide(
        &bond,
        &s,
        vec![sec_lifts_own.clone(), court_lifts_confiscation.clone()],
        t,
    );
    assert_eq!(decision_for(&r, &sec_lifts_own).outcome, Outcome::Applied);
    assert_eq!(
        decision_for(&r, &court_lifts_confiscation).reason,
        Reason::ConfiscationIsFinal {
            hold: confiscate.id
        }
    );
    let forfeit = HolderAddress::parse("0xFORFEIT").unwrap();
    assert_eq!(r.state.effective_level(None), LockLevel::Unlocked);
    assert_eq!(
        r.state.effective_level(Some(&forfeit)),
        LockLevel::PermLocked
    );
    assert_eq!(r.state.frozen(Some(&forfeit)), Frozen::Partial(5_000));
}

/// The policies judge an asset on its registration as it is now: re-registering the same token
/// under another issuer jurisdiction changes the verdict, however often it was decided before.
#[test]
fn policies_see_an_assets_current_registration() {
    let us = acme_bond();
    let moved = RegisteredAsset {
        issuer_jurisdiction: JurisdictionCode::parse("GB").unwrap(),
        ..acme_bond()
    };
    let freeze = order(
        "US-SEC",
        &us,
        None,
        "court_order",
        "TRO",
        Instruction::Freeze { amount: None },
        0,
    );
    let now = monday() + Duration::milliseconds(100);
    for _ in 0..3 {
        let r = decide(&us, &AssetState::default(), vec![freeze.clone()], now);
        assert_eq!(decision_for(&r, &freeze).outcome, Outcome::Applied);
    }
    let r = decide(&moved, &AssetState::default(), vec![freeze.clone()], now);
    assert_eq!(decision_for(&r, &freeze).outcome, Outcome::Rejected);
}
