//! What changed between two bundles, policy by policy (by `@id`), for legal teams reviewing a
//! draft before it decides anything.

use std::collections::BTreeMap;

use cedar_policy::{Effect, Policy};
use serde::{Deserialize, Serialize};

use super::bundle::{ENTITIES_FILE, SCHEMA_FILE};
use super::Compiled;

/// One policy as a diff shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicySummary {
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: String,
    /// A permit's `@priority`.
    pub priority: Option<u16>,
    pub file: String,
    pub line: usize,
    /// The policy's Cedar text.
    pub text: String,
}

/// A policy present in both bundles whose meaning (conditions, scope, annotations) differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyChange {
    pub id: String,
    pub from: PolicySummary,
    pub to: PolicySummary,
}

/// The difference from one bundle to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyDiff {
    pub added: Vec<PolicySummary>,
    pub removed: Vec<PolicySummary>,
    pub changed: Vec<PolicyChange>,
    /// Policies whose meaning is the same (moving a policy or reformatting it changes nothing).
    pub unchanged: usize,
    pub schema_changed: bool,
    pub entities_changed: bool,
    /// Test suites added, removed or edited, by file name.
    pub tests_changed: Vec<String>,
}

/// Compares `from` with `to`. Policies are matched by id and compared by their parsed form, so
/// whitespace, comments and the file a policy sits in do not count as changes.
pub fn diff(from: &Compiled, to: &Compiled) -> PolicyDiff {
    let before = policies(from);
    let after = policies(to);
    let mut diff = PolicyDiff {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
        schema_changed: from.files.get(SCHEMA_FILE) != to.files.get(SCHEMA_FILE),
        entities_changed: from.files.get(ENTITIES_FILE) != to.files.get(ENTITIES_FILE),
        tests_changed: tests_changed(from, to),
    };
    for (id, (old, old_meaning)) in &before {
        match after.get(id) {
            None => diff.removed.push(old.clone()),
            Some((new, new_meaning)) if new_meaning != old_meaning => {
                diff.changed.push(PolicyChange {
                    id: id.clone(),
                    from: old.clone(),
                    to: new.clone(),
                })
            }
            Some(_) => diff.unchanged += 1,
        }
    }
    diff.added = after
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .map(|(_, (summary, _))| summary.clone())
        .collect();
    diff
}

/// Each policy by id: how it reads, and its meaning (Cedar's JSON form, which has no layout).
fn policies(compiled: &Compiled) -> BTreeMap<String, (PolicySummary, String)> {
    compiled
        .engine
        .bundle()
        .policy_set()
        .policies()
        .map(|policy| {
            let id = policy.id().to_string();
            let origin = compiled.engine.bundle().origin(&id);
            let summary = PolicySummary {
                id: id.clone(),
                effect: match policy.effect() {
                    Effect::Permit => "permit".into(),
                    Effect::Forbid => "forbid".into(),
                },
                priority: compiled
                    .engine
                    .bundle()
                    .priority(policy.id())
                    .map(|p| p.value()),
                file: origin.map(|o| o.file.clone()).unwrap_or_default(),
                line: origin.map_or(0, |o| o.line),
                text: policy.to_string(),
            };
            (id, (summary, meaning(policy)))
        })
        .collect()
}

fn meaning(policy: &Policy) -> String {
    policy
        .to_json()
        .map(|json| json.to_string())
        .unwrap_or_else(|_| policy.to_string())
}

fn tests_changed(from: &Compiled, to: &Compiled) -> Vec<String> {
    let tests = |c: &Compiled| -> BTreeMap<String, String> {
        c.files
            .tests()
            .into_iter()
            .map(|f| (f.name.clone(), f.text.to_string()))
            .collect()
    };
    let (a, b) = (tests(from), tests(to));
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|name| a.get(*name) != b.get(*name))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}
