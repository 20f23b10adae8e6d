//! Jurisdiction policies in Cedar: loading and checking a bundle, building each order's request,
//! and evaluating it (through the scope index) into a domain [`Verdict`].

pub mod bundle;
pub mod context;
pub mod diff;
pub mod error;
pub mod files;
pub mod index;
pub mod limits;
pub mod suite;
pub mod vocabulary;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{Decision, Entities, Response};

pub use bundle::{PolicyBundle, PolicyOrigin, PolicySources};
pub use context::{ContextError, PolicyInput};
pub use error::{PolicyError, PolicyErrors, SourceFile};
pub use files::{FilesError, PolicyFiles};
pub use index::PolicyIndex;

use crate::domain::{PolicyId, Priority, RegisteredAsset, Verdict};

/// How many assets' entity sets are kept built; past that the cache starts over.
const ASSET_CACHE_CAPACITY: usize = 10_000;

/// A bundle's files, checked and ready to decide: a draft under review, or a stored version.
#[derive(Debug)]
pub struct Compiled {
    pub files: PolicyFiles,
    pub engine: PolicyEngine,
    hash: String,
}

impl Compiled {
    /// Checks every file; all the errors, or a bundle that can decide.
    pub fn compile(files: PolicyFiles) -> Result<Self, PolicyErrors> {
        let bundle = PolicyBundle::compile(&files.sources()?)?;
        Ok(Self {
            hash: files.content_hash(),
            files,
            engine: PolicyEngine::new(bundle),
        })
    }

    /// The version hash (over every file, tests included), which decisions record.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Runs the bundle's own test suites against it.
    pub fn run_tests(&self) -> Result<Vec<suite::CaseResult>, PolicyErrors> {
        suite::run_files(&self.engine, &self.files.tests())
    }
}

/// A checked bundle ready to decide orders.
#[derive(Debug)]
pub struct PolicyEngine {
    bundle: PolicyBundle,
    index: PolicyIndex,
    /// The bundle's entities with one registered asset added, per asset. Adding an entity
    /// recomputes the hierarchy (a third of an evaluation), and an asset is decided on many times.
    with_asset: Mutex<HashMap<RegisteredAsset, Arc<Entities>>>,
}

impl PolicyEngine {
    pub fn new(bundle: PolicyBundle) -> Self {
        let index = PolicyIndex::new(bundle.policy_set());
        Self {
            bundle,
            index,
            with_asset: Mutex::new(HashMap::new()),
        }
    }

    pub fn bundle(&self) -> &PolicyBundle {
        &self.bundle
    }

    /// The policies' verdict on one order. An order that cannot be put to the policies (a
    /// release of an unknown hold, a principal the action does not accept) is denied, with why.
    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Verdict {
        let cached = self
            .with_asset
            .lock()
            .ok()
            .and_then(|built| built.get(input.asset).cloned());
        let entities = match cached {
            Some(entities) => entities,
            None => match with_asset(self.bundle.entities(), input.asset) {
                Ok(entities) => {
                    let entities = Arc::new(entities);
                    if let Ok(mut built) = self.with_asset.lock() {
                        if built.len() >= ASSET_CACHE_CAPACITY {
                            built.clear();
                        }
                        built.insert(input.asset.clone(), entities.clone());
                    }
                    entities
                }
                Err(refused) => return refused,
            },
        };
        self.evaluate_with_asset(input, &entities)
    }

    /// Like [`Self::evaluate`], against other entities (a test case's overrides).
    pub fn evaluate_in(&self, input: &PolicyInput<'_>, entities: &Entities) -> Verdict {
        match with_asset(entities, input.asset) {
            Ok(entities) => self.evaluate_with_asset(input, &entities),
            Err(refused) => refused,
        }
    }

    /// `entities` must already hold the order's asset.
    fn evaluate_with_asset(&self, input: &PolicyInput<'_>, entities: &Entities) -> Verdict {
        match context::request(input, self.bundle.schema(), entities) {
            Ok(request) => self.verdict(&self.index.is_authorized(&request, entities)),
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

/// `entities` plus the asset an order targets, or the deny verdict that says why not.
fn with_asset(entities: &Entities, asset: &RegisteredAsset) -> Result<Entities, Verdict> {
    entities
        .clone()
        .upsert_entities([context::asset_entity(asset)], None)
        .map_err(|e| Verdict::deny(Vec::new(), vec![format!("asset entity: {e}")]))
}
