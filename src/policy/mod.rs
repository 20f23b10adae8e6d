//! Jurisdiction policies in Cedar: loading and checking a bundle, building each order's request,
//! and evaluating it (through the scope index) into a domain [`Verdict`].

pub mod bundle;
pub mod context;
pub mod error;
pub mod index;
pub mod suite;

use cedar_policy::{Decision, Entities, Response};

pub use bundle::{PolicyBundle, PolicyOrigin, PolicySources};
pub use context::{ContextError, PolicyInput};
pub use error::{PolicyError, PolicyErrors, SourceFile};
pub use index::PolicyIndex;

use crate::domain::{PolicyId, Priority, Verdict};

/// A checked bundle ready to decide orders.
#[derive(Debug)]
pub struct PolicyEngine {
    bundle: PolicyBundle,
    index: PolicyIndex,
}

impl PolicyEngine {
    pub fn new(bundle: PolicyBundle) -> Self {
        let index = PolicyIndex::new(bundle.policy_set());
        Self { bundle, index }
    }

    pub fn bundle(&self) -> &PolicyBundle {
        &self.bundle
    }

    /// The policies' verdict on one order. An order that cannot be put to the policies (a
    /// release of an unknown hold, a principal the action does not accept) is denied, with why.
    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Verdict {
        self.evaluate_in(input, self.bundle.entities())
    }

    /// Like [`Self::evaluate`], against other entities (a test case's overrides).
    pub fn evaluate_in(&self, input: &PolicyInput<'_>, entities: &Entities) -> Verdict {
        let entities = match entities
            .clone()
            .upsert_entities([context::asset_entity(input.asset)], None)
        {
            Ok(entities) => entities,
            Err(e) => return Verdict::deny(Vec::new(), vec![format!("asset entity: {e}")]),
        };
        match context::request(input, self.bundle.schema(), &entities) {
            Ok(request) => self.verdict(&self.index.is_authorized(&request, &entities)),
            Err(e) => Verdict::deny(Vec::new(), vec![e.to_string()]),
        }
    }

    /// Turns Cedar's answer into a verdict: the determining policies (sorted) and, for an
    /// allow, the highest priority among them.
    pub fn verdict(&self, response: &Response) -> Verdict {
        let mut determining: Vec<PolicyId> = response
            .diagnostics()
            .reason()
            .filter_map(|id| PolicyId::parse(id.to_string()).ok())
            .collect();
        determining.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        match response.decision() {
            Decision::Allow => {
                let priority = response
                    .diagnostics()
                    .reason()
                    .filter_map(|id| self.bundle.priority(id))
                    .max()
                    .unwrap_or(Priority::ZERO);
                Verdict::allow(determining, priority, errors)
            }
            Decision::Deny => Verdict::deny(determining, errors),
        }
    }
}
