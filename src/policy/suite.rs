//! Policy test suites: `policies/tests/*.toml`, each a list of cases in the terms of the domain
//! (who orders what on which asset, on what legal basis) with the expected verdict. Cases go
//! through the same request builder as live orders, so a suite tests what production decides.
//!
//! The format is documented in `docs/policies.md`.

use std::collections::BTreeMap;
use std::path::Path;

use cedar_policy::Entities;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::error::{PolicyError, PolicyErrors, SourceFile};
use super::{PolicyEngine, PolicyInput};
use crate::domain::{
    Amount, AssetClass, AssetId, AssetKey, ChainId, Hold, HolderAddress, Instruction, Instrument,
    IssuerId, JurisdictionCode, LeaseTtl, LegalBasis, Order, OrderId, OrderKind, PolicyId,
    Priority, RegisteredAsset, Target, Verdict,
};

/// One suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    #[serde(default)]
    pub description: Option<String>,
    /// Named assets the cases refer to.
    #[serde(default)]
    pub assets: BTreeMap<String, AssetFixture>,
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetFixture {
    pub chain: ChainId,
    pub asset: AssetId,
    pub issuer_jurisdiction: JurisdictionCode,
    pub asset_class: AssetClass,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The issuing authority or service, e.g. `US-SEC`.
    pub principal: IssuerId,
    /// The order kind, e.g. `FREEZE`.
    pub action: String,
    /// The name of an asset in the suite's `[assets]`.
    pub asset: String,
    #[serde(default)]
    pub holder: Option<HolderAddress>,
    pub instrument: Instrument,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub amount: Option<Amount>,
    /// SUSPEND: hours from intake to expiry.
    #[serde(default)]
    pub duration_hours: Option<u32>,
    /// PREEMPT: the lease's length.
    #[serde(default)]
    pub lease_ms: Option<u32>,
    /// RELEASE: the hold being released.
    #[serde(default)]
    pub released: Option<ReleasedFixture>,
    /// Entities (Cedar JSON entity format) that replace or add to the bundle's for this case.
    #[serde(default)]
    pub entities: Vec<serde_json::Value>,
    pub expect: Expectation,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedFixture {
    pub issuer: IssuerId,
    pub kind: String,
    pub instrument: Instrument,
    pub priority: Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedDecision {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub decision: ExpectedDecision,
    /// The permits behind an allow, or the forbids behind a deny (empty: no permit matched).
    pub determining: Vec<PolicyId>,
    /// Required for an allow; a deny's priority is always 0.
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    /// What differed, or why the case could not run.
    pub failures: Vec<String>,
}

/// Reads and runs every `*.toml` suite in `dir`, in name order.
pub fn run_dir(engine: &PolicyEngine, dir: &Path) -> Result<Vec<CaseResult>, PolicyErrors> {
    let mut files: Vec<SourceFile> = Vec::new();
    let mut errors = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| PolicyErrors {
        errors: vec![PolicyError::io(
            "suite::io",
            dir,
            format!("cannot list the test suites: {e}"),
        )],
    })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = format!(
            "tests/{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(SourceFile::new(name, text)),
            Err(e) => errors.push(PolicyError::io(
                "suite::io",
                &path,
                format!("cannot read: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors { errors });
    }
    run_files(engine, &files)
}

/// Runs suites given as files; a file that is not a valid suite is an error, a case that does
/// not get its expected verdict is a failed result.
pub fn run_files(
    engine: &PolicyEngine,
    files: &[SourceFile],
) -> Result<Vec<CaseResult>, PolicyErrors> {
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for file in files {
        match toml::from_str::<Suite>(&file.text) {
            Ok(suite) => results.extend(
                suite
                    .cases
                    .iter()
                    .map(|case| run_case(engine, &suite, case, &file.name)),
            ),
            Err(e) => {
                let mut err = PolicyError::new("suite::invalid", file, e.message().to_string());
                if let Some(span) = e.span() {
                    err = err.at(span.start, span.len(), "here");
                }
                errors.push(err);
            }
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(PolicyErrors { errors })
    }
}

/// The moment every case is set at; cases must not depend on the wall clock.
fn case_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn run_case(engine: &PolicyEngine, suite: &Suite, case: &Case, file: &str) -> CaseResult {
    let result = |failures: Vec<String>| CaseResult {
        file: file.to_owned(),
        name: case.name.clone(),
        passed: failures.is_empty(),
        failures,
    };
    match evaluate_case(engine, suite, case) {
        Ok(verdict) => result(compare(&case.expect, &verdict)),
        Err(why) => result(vec![why]),
    }
}

fn evaluate_case(engine: &PolicyEngine, suite: &Suite, case: &Case) -> Result<Verdict, String> {
    let fixture = suite
        .assets
        .get(&case.asset)
        .ok_or_else(|| format!("asset {:?} is not defined in [assets]", case.asset))?;
    let asset = RegisteredAsset {
        key: AssetKey {
            chain: fixture.chain.clone(),
            asset: fixture.asset.clone(),
        },
        issuer_jurisdiction: fixture.issuer_jurisdiction.clone(),
        asset_class: fixture.asset_class.clone(),
    };
    let kind: OrderKind = case.action.parse().map_err(|e| format!("{e}"))?;
    let at = case_time();
    let released_id = OrderId::new();
    let instruction = match kind {
        OrderKind::Monitor => Instruction::Monitor {
            amount: case.amount,
        },
        OrderKind::Freeze => Instruction::Freeze {
            amount: case.amount,
        },
        OrderKind::Seize => Instruction::Seize {
            amount: case.amount,
        },
        OrderKind::Confiscate => Instruction::Confiscate {
            amount: case.amount,
        },
        OrderKind::Suspend => Instruction::Suspend {
            expires_at: at
                + Duration::hours(i64::from(
                    case.duration_hours
                        .ok_or("a SUSPEND case needs duration_hours")?,
                )),
            amount: case.amount,
        },
        OrderKind::Preempt => Instruction::Preempt {
            lease_ttl_ms: LeaseTtl::from_millis(
                case.lease_ms.ok_or("a PREEMPT case needs lease_ms")?,
            )
            .map_err(|e| e.to_string())?,
        },
        OrderKind::Release => Instruction::Release {
            releases: released_id,
        },
    };
    let target = Target {
        asset: asset.key.clone(),
        holder: case.holder.clone(),
    };
    let order = Order {
        id: OrderId::new(),
        issuer: case.principal.clone(),
        target: target.clone(),
        legal_basis: LegalBasis {
            instrument: case.instrument.clone(),
            reference: case.reference.clone().unwrap_or_default(),
        },
        instruction,
        intake_at: at,
    };
    let released = match (&case.released, kind) {
        (Some(r), OrderKind::Release) => Some(Hold {
            order_id: released_id,
            issuer: r.issuer.clone(),
            kind: r.kind.parse().map_err(|e| format!("released.kind: {e}"))?,
            target,
            amount: None,
            instrument: r.instrument.clone(),
            priority: r.priority,
            placed_at: at - Duration::days(1),
            expires_at: None,
            fencing_token: None,
        }),
        (None, OrderKind::Release) => return Err("a RELEASE case needs [released]".into()),
        (Some(_), _) => return Err("only a RELEASE case may have [released]".into()),
        (None, _) => None,
    };
    let input = PolicyInput {
        order: &order,
        asset: &asset,
        released: released.as_ref(),
    };
    if case.entities.is_empty() {
        return Ok(engine.evaluate(&input));
    }
    let overrides = Entities::from_json_value(
        serde_json::Value::Array(case.entities.clone()),
        Some(engine.bundle().schema()),
    )
    .map_err(|e| format!("entities: {e}"))?;
    let entities = engine
        .bundle()
        .entities()
        .clone()
        .upsert_entities(overrides.iter().cloned(), Some(engine.bundle().schema()))
        .map_err(|e| format!("entities: {e}"))?;
    Ok(engine.evaluate_in(&input, &entities))
}

fn compare(expect: &Expectation, verdict: &Verdict) -> Vec<String> {
    let mut failures = Vec::new();
    let got = if verdict.allowed() {
        ExpectedDecision::Allow
    } else {
        ExpectedDecision::Deny
    };
    if got != expect.decision {
        failures.push(format!("expected {:?}, got {:?}", expect.decision, got));
    }
    let mut want = expect.determining.clone();
    want.sort();
    if want != verdict.determining() {
        failures.push(format!(
            "expected determining {:?}, got {:?}",
            names(&want),
            names(verdict.determining())
        ));
    }
    match (expect.decision, expect.priority) {
        (ExpectedDecision::Allow, None) => {
            failures.push("an allow case must give its expected priority".into())
        }
        (_, Some(p)) if p != verdict.priority() => {
            failures.push(format!("expected priority {p}, got {}", verdict.priority()))
        }
        _ => {}
    }
    if !verdict.errors().is_empty() {
        failures.push(format!(
            "evaluation errors: {}",
            verdict.errors().join("; ")
        ));
    }
    failures
}

fn names(ids: &[PolicyId]) -> Vec<&str> {
    ids.iter().map(PolicyId::as_str).collect()
}
