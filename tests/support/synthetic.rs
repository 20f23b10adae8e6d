//! A generated jurisdiction policy set of any size, over the shipped schema, and random orders
//! against it: for the index's differential test and benchmark. Seeded, so runs are repeatable.

use cedar_policy::{Entities, Request};
use chrono::{Duration, TimeZone, Utc};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use regulator::domain::*;
use regulator::policy::context::{asset_entity, request, PolicyInput};
use regulator::policy::{PolicyBundle, PolicySources, SourceFile};
use serde_json::json;

const JURISDICTIONS: usize = 30;
const REGIONS: usize = 5;
const AUTHORITIES: usize = 300;
const SERVICES: usize = 5;
const ASSETS: usize = 100;
const BODIES: [&str; 5] = [
    "securities_regulator",
    "law_enforcement",
    "sanctions_authority",
    "court",
    "financial_supervisor",
];
const CLASSES: [&str; 4] = ["security", "stablecoin", "payment_token", "nft"];
const INSTRUMENTS: [&str; 6] = [
    "court_order",
    "warrant",
    "designation",
    "licence",
    "administrative_order",
    "direction",
];
/// Kinds whose context is the plain order context, so one policy may name several of them.
const PLAIN: [OrderKind; 4] = [
    OrderKind::Monitor,
    OrderKind::Freeze,
    OrderKind::Seize,
    OrderKind::Confiscate,
];

pub struct Synthetic {
    pub bundle: PolicyBundle,
    /// The bundle's entities plus every generated asset.
    pub entities: Entities,
    assets: Vec<RegisteredAsset>,
}

fn jurisdiction(i: usize) -> String {
    format!("J{i}")
}

fn authority(i: usize) -> String {
    format!("A{i}")
}

fn entities_json(rng: &mut SmallRng) -> (String, Vec<RegisteredAsset>) {
    let mut out = Vec::new();
    for j in 0..JURISDICTIONS {
        let parents = if j < REGIONS {
            vec![]
        } else {
            vec![json!({"type": "Jurisdiction", "id": jurisdiction(rng.gen_range(0..REGIONS))})]
        };
        out.push(json!({"uid": {"type": "Jurisdiction", "id": jurisdiction(j)}, "attrs": {"name": jurisdiction(j)}, "parents": parents}));
    }
    for a in 0..AUTHORITIES {
        let j = jurisdiction(rng.gen_range(REGIONS..JURISDICTIONS));
        out.push(json!({
            "uid": {"type": "Authority", "id": authority(a)},
            "attrs": {"name": authority(a), "body": *BODIES.choose(rng).unwrap(), "jurisdiction": {"__entity": {"type": "Jurisdiction", "id": j}}},
            "parents": [{"type": "Jurisdiction", "id": j}],
        }));
    }
    for s in 0..SERVICES {
        out.push(json!({"uid": {"type": "Service", "id": format!("svc-{s}")}, "attrs": {"name": "svc", "role": if s == 0 { "auditor" } else { "coordinator" }}, "parents": []}));
    }
    let assets = (0..ASSETS)
        .map(|i| RegisteredAsset {
            key: AssetKey {
                chain: ChainId::parse(if i % 2 == 0 { "ethereum" } else { "polygon" }).unwrap(),
                asset: AssetId::parse(format!("0xA{i}")).unwrap(),
            },
            issuer_jurisdiction: JurisdictionCode::parse(jurisdiction(
                rng.gen_range(0..JURISDICTIONS),
            ))
            .unwrap(),
            asset_class: AssetClass::parse(*CLASSES.choose(rng).unwrap()).unwrap(),
        })
        .collect();
    (serde_json::to_string_pretty(&out).unwrap(), assets)
}

fn kinds(list: &[OrderKind]) -> String {
    let names: Vec<String> = list.iter().map(|k| format!("Action::\"{k}\"")).collect();
    if names.len() == 1 {
        format!("action == {}", names[0])
    } else {
        format!("action in [{}]", names.join(", "))
    }
}

/// One policy. Every rule names its action, except a share of broad ones; most name their
/// authority or jurisdiction. `broad` is the share of policies whose principal scope admits any
/// authority (`principal is Authority`, or any action at all): cross-cutting rules, which in a real
/// set stay few as jurisdictions are added. Every form of scope constraint occurs, so the
/// differential test exercises each branch of the index.
fn policy(rng: &mut SmallRng, i: usize, broad: f64) -> String {
    let permit = rng.gen_bool(0.85);
    let mut conditions: Vec<String> = Vec::new();
    let (principal, action) = if rng.gen_bool(0.01) {
        // A coordinator's lease rule: a set has few of them, whatever its size.
        conditions.push(format!(
            "context.lease_ms <= {}",
            rng.gen_range(1..60) * 1000
        ));
        if rng.gen_bool(0.5) {
            conditions.push("principal.role == \"coordinator\"".to_owned());
        }
        let p = if rng.gen_bool(0.5) {
            "principal is Service".to_owned()
        } else {
            format!(
                "principal == Service::\"svc-{}\"",
                rng.gen_range(0..SERVICES)
            )
        };
        (p, "action == Action::\"PREEMPT\"".to_owned())
    } else if rng.gen_bool(broad * 0.2) {
        // A rule for every order kind.
        conditions.push(format!(
            "resource.asset_class == \"{}\"",
            CLASSES.choose(rng).unwrap()
        ));
        ("principal is Authority".to_owned(), "action".to_owned())
    } else {
        let kind_roll: f64 = rng.gen();
        let (action, extra) = if kind_roll < 0.15 {
            (
                kinds(&[OrderKind::Suspend]),
                format!("context.duration_hours <= {}", rng.gen_range(1..1000)),
            )
        } else if kind_roll < 0.35 {
            let c = if rng.gen_bool(0.5) {
                "context.released.same_issuer".to_owned()
            } else {
                format!(
                    "context.released.issuer == Authority::\"{}\"",
                    authority(rng.gen_range(0..AUTHORITIES))
                )
            };
            (kinds(&[OrderKind::Release]), c)
        } else {
            let how_many = rng.gen_range(1..=2);
            let mut set: Vec<OrderKind> = PLAIN.choose_multiple(rng, how_many).copied().collect();
            set.sort();
            (
                kinds(&set),
                format!(
                    "context.legal_basis.instrument == \"{}\"",
                    INSTRUMENTS.choose(rng).unwrap()
                ),
            )
        };
        conditions.push(extra);
        let principal = if rng.gen_bool(broad * 0.8) {
            if action.contains("RELEASE") && rng.gen_bool(0.5) {
                "principal".to_owned()
            } else {
                // Reads an attribute of any authority: errors at run time for an unknown one.
                conditions.push(format!(
                    "principal.body == \"{}\"",
                    BODIES.choose(rng).unwrap()
                ));
                "principal is Authority".to_owned()
            }
        } else {
            let p: f64 = rng.gen();
            if p < 0.75 {
                format!(
                    "principal == Authority::\"{}\"",
                    authority(rng.gen_range(0..AUTHORITIES))
                )
            } else if p < 0.92 {
                format!(
                    "principal in Jurisdiction::\"{}\"",
                    jurisdiction(rng.gen_range(0..JURISDICTIONS))
                )
            } else {
                format!(
                    "principal is Authority in Jurisdiction::\"{}\"",
                    jurisdiction(rng.gen_range(0..JURISDICTIONS))
                )
            }
        };
        if rng.gen_bool(0.4) {
            conditions.push(format!(
                "resource.issuer_jurisdiction in Jurisdiction::\"{}\"",
                jurisdiction(rng.gen_range(0..JURISDICTIONS))
            ));
        }
        (principal, action)
    };
    let resource = match rng.gen_range(0..10) {
        0 => "resource is Asset".to_owned(),
        1 => format!(
            "resource == Asset::\"{}/0xA{}\"",
            if rng.gen_bool(0.5) {
                "ethereum"
            } else {
                "polygon"
            },
            rng.gen_range(0..ASSETS)
        ),
        _ => "resource".to_owned(),
    };
    let annotations = if permit {
        format!(
            "@id(\"syn-{i}\")\n@priority(\"{}\")\n",
            rng.gen_range(0..=1000)
        )
    } else {
        format!("@id(\"syn-{i}\")\n")
    };
    format!(
        "{annotations}{} ({principal}, {action}, {resource})\nwhen {{ {} }};\n",
        if permit { "permit" } else { "forbid" },
        conditions.join(" && ")
    )
}

/// The share of broad-scope policies in a realistic set, and in a stress set.
pub const REALISTIC_BROAD: f64 = 0.015;
pub const STRESS_BROAD: f64 = 0.10;

impl Synthetic {
    /// `n` policies over the shipped schema, `broad` of them cross-cutting (see [`policy`]);
    /// panics if they do not validate strictly.
    pub fn generate(n: usize, broad: f64, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let schema = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/schema.cedarschema"
        ))
        .unwrap();
        let (entities, assets) = entities_json(&mut rng);
        let text: String = (0..n)
            .map(|i| policy(&mut rng, i, broad))
            .collect::<Vec<_>>()
            .join("\n");
        let sources = PolicySources {
            schema: SourceFile::new("schema.cedarschema", schema),
            policies: vec![SourceFile::new("synthetic.cedar", text)],
            entities: SourceFile::new("entities.json", entities),
        };
        let bundle = match PolicyBundle::compile(&sources) {
            Ok(b) => b,
            Err(e) => panic!("synthetic policies must validate: {:#?}", e.errors.first()),
        };
        let entities = bundle
            .entities()
            .clone()
            .add_entities(assets.iter().map(asset_entity), None)
            .unwrap();
        Self {
            bundle,
            entities,
            assets,
        }
    }

    /// A random order as a Cedar request, built by the production request builder.
    pub fn request(&self, rng: &mut SmallRng) -> Request {
        let (order, asset, hold) = self.input(rng);
        let input = PolicyInput {
            order: &order,
            asset,
            released: Some(&hold),
        };
        request(&input, self.bundle.schema(), &self.entities).unwrap()
    }

    /// A random order of a random kind on one of the assets, and the hold a RELEASE names.
    pub fn input(&self, rng: &mut SmallRng) -> (Order, &RegisteredAsset, Hold) {
        let kind = *OrderKind::ALL.choose(rng).unwrap();
        let issuer = match kind {
            OrderKind::Preempt => format!("svc-{}", rng.gen_range(0..SERVICES)),
            _ if rng.gen_bool(0.05) => format!("UNKNOWN-{}", rng.gen_range(0..3)),
            _ => authority(rng.gen_range(0..AUTHORITIES)),
        };
        let asset = self.assets.choose(rng).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
        let amount = rng
            .gen_bool(0.3)
            .then(|| Amount::new(rng.gen_range(1..1_000_000)).unwrap());
        let released_id = OrderId::new();
        let instruction = match kind {
            OrderKind::Monitor => Instruction::Monitor { amount },
            OrderKind::Freeze => Instruction::Freeze { amount },
            OrderKind::Seize => Instruction::Seize { amount },
            OrderKind::Confiscate => Instruction::Confiscate { amount },
            OrderKind::Suspend => Instruction::Suspend {
                expires_at: at + Duration::hours(rng.gen_range(1..1200)),
                amount,
            },
            OrderKind::Preempt => Instruction::Preempt {
                lease_ttl_ms: LeaseTtl::from_millis(rng.gen_range(1..60_000)).unwrap(),
            },
            OrderKind::Release => Instruction::Release {
                releases: released_id,
            },
        };
        let order = Order {
            id: OrderId::new(),
            issuer: IssuerId::parse(issuer).unwrap(),
            target: Target {
                asset: asset.key.clone(),
                holder: None,
            },
            legal_basis: LegalBasis {
                instrument: Instrument::parse(*INSTRUMENTS.choose(rng).unwrap()).unwrap(),
                reference: "ref".into(),
            },
            instruction,
            intake_at: at,
        };
        let released_issuer = if rng.gen_bool(0.3) {
            order.issuer.clone()
        } else {
            IssuerId::parse(authority(rng.gen_range(0..AUTHORITIES))).unwrap()
        };
        let hold = Hold {
            order_id: released_id,
            issuer: released_issuer,
            kind: *PLAIN.choose(rng).unwrap(),
            target: order.target.clone(),
            amount: None,
            instrument: order.legal_basis.instrument.clone(),
            priority: Priority::new(rng.gen_range(0..=1000)).unwrap(),
            placed_at: at,
            expires_at: None,
            fencing_token: None,
        };
        (order, asset, hold)
    }
}

/// A comparable summary of a Cedar response: decision, determining ids, errors by policy.
pub fn summary(r: &cedar_policy::Response) -> (cedar_policy::Decision, Vec<String>, Vec<String>) {
    let mut reasons: Vec<String> = r.diagnostics().reason().map(|p| p.to_string()).collect();
    reasons.sort();
    let mut errors: Vec<String> = r.diagnostics().errors().map(|e| e.to_string()).collect();
    errors.sort();
    (r.decision(), reasons, errors)
}
