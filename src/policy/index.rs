//! An index over a policy set's scopes: a request is evaluated against only the policies whose
//! principal, action and resource scopes can match it, which gives exactly the answer of the whole
//! set, because Cedar evaluates a policy's scope before its conditions and a policy whose scope
//! does not match is neither satisfied nor in error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Authorizer, Entities, EntityTypeName, EntityUid, Policy, PolicySet,
    PrincipalConstraint, Request, ResourceConstraint, Response,
};
use fixedbitset::FixedBitSet;

/// How many distinct candidate sets are kept built; past that the cache starts over.
const CACHE_CAPACITY: usize = 4096;

/// The policies that each form of scope constraint admits, as bitsets over the policy list.
#[derive(Debug, Default)]
struct ScopeIndex {
    any: FixedBitSet,
    eq: HashMap<EntityUid, FixedBitSet>,
    within: HashMap<EntityUid, FixedBitSet>,
    is: HashMap<EntityTypeName, FixedBitSet>,
    /// `is T in E`, keyed by `E` so that a lookup borrows instead of building a key.
    is_within: HashMap<EntityUid, Vec<(EntityTypeName, FixedBitSet)>>,
}

/// A scope constraint, whichever of principal, action or resource it constrains.
enum Scope {
    Any,
    Eq(EntityUid),
    In(Vec<EntityUid>),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for Scope {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Scope::Any,
            PrincipalConstraint::Eq(u) => Scope::Eq(u),
            PrincipalConstraint::In(u) => Scope::In(vec![u]),
            PrincipalConstraint::Is(t) => Scope::Is(t),
            PrincipalConstraint::IsIn(t, u) => Scope::IsIn(t, u),
        }
    }
}

impl From<ResourceConstraint> for Scope {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Scope::Any,
            ResourceConstraint::Eq(u) => Scope::Eq(u),
            ResourceConstraint::In(u) => Scope::In(vec![u]),
            ResourceConstraint::Is(t) => Scope::Is(t),
            ResourceConstraint::IsIn(t, u) => Scope::IsIn(t, u),
        }
    }
}

impl From<ActionConstraint> for Scope {
    fn from(c: ActionConstraint) -> Self {
        match c {
            ActionConstraint::Any => Scope::Any,
            ActionConstraint::Eq(u) => Scope::Eq(u),
            ActionConstraint::In(us) => Scope::In(us),
        }
    }
}

impl ScopeIndex {
    fn new(len: usize) -> Self {
        Self {
            any: FixedBitSet::with_capacity(len),
            ..Self::default()
        }
    }

    fn insert(&mut self, policy: usize, scope: Scope, len: usize) {
        let set = |map_entry: &mut FixedBitSet| map_entry.insert(policy);
        let fresh = || FixedBitSet::with_capacity(len);
        match scope {
            Scope::Any => self.any.insert(policy),
            Scope::Eq(u) => set(self.eq.entry(u).or_insert_with(fresh)),
            Scope::In(us) => {
                for u in us {
                    set(self.within.entry(u).or_insert_with(fresh));
                }
            }
            Scope::Is(t) => set(self.is.entry(t).or_insert_with(fresh)),
            Scope::IsIn(t, u) => {
                let by_type = self.is_within.entry(u).or_default();
                match by_type.iter_mut().find(|(have, _)| *have == t) {
                    Some((_, bits)) => set(bits),
                    None => {
                        let mut bits = fresh();
                        bits.insert(policy);
                        by_type.push((t, bits));
                    }
                }
            }
        }
    }

    /// The policies whose constraint `uid` satisfies. `in` is reflexive and follows the entity
    /// hierarchy; an entity that does not exist is only `in` itself.
    fn matching(&self, uid: &EntityUid, entities: &Entities) -> FixedBitSet {
        let mut out = self.any.clone();
        let type_name = uid.type_name();
        if let Some(s) = self.eq.get(uid) {
            out.union_with(s);
        }
        if let Some(s) = self.is.get(type_name) {
            out.union_with(s);
        }
        let ancestors = entities.ancestors(uid).into_iter().flatten();
        for a in std::iter::once(uid).chain(ancestors) {
            if let Some(s) = self.within.get(a) {
                out.union_with(s);
            }
            for (t, s) in self.is_within.get(a).into_iter().flatten() {
                if t == type_name {
                    out.union_with(s);
                }
            }
        }
        out
    }
}

/// A policy set with its scope index.
#[derive(Debug)]
pub struct PolicyIndex {
    policies: Vec<Policy>,
    principals: ScopeIndex,
    actions: ScopeIndex,
    resources: ScopeIndex,
    authorizer: Authorizer,
    /// Sub-sets already built, keyed by which policies they hold.
    built: Mutex<HashMap<FixedBitSet, Arc<PolicySet>>>,
}

impl PolicyIndex {
    pub fn new(set: &PolicySet) -> Self {
        let policies: Vec<Policy> = set.policies().cloned().collect();
        let len = policies.len();
        let mut principals = ScopeIndex::new(len);
        let mut actions = ScopeIndex::new(len);
        let mut resources = ScopeIndex::new(len);
        for (i, p) in policies.iter().enumerate() {
            principals.insert(i, p.principal_constraint().into(), len);
            actions.insert(i, p.action_constraint().into(), len);
            resources.insert(i, p.resource_constraint().into(), len);
        }
        Self {
            policies,
            principals,
            actions,
            resources,
            authorizer: Authorizer::new(),
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The policies that can apply to `request`.
    pub fn candidates(&self, request: &Request, entities: &Entities) -> FixedBitSet {
        let (Some(p), Some(a), Some(r)) =
            (request.principal(), request.action(), request.resource())
        else {
            // A partial request (unknown scope variable) could match anything.
            let mut all = FixedBitSet::with_capacity(self.policies.len());
            all.insert_range(..);
            return all;
        };
        let mut set = self.principals.matching(p, entities);
        set.intersect_with(&self.actions.matching(a, entities));
        set.intersect_with(&self.resources.matching(r, entities));
        set
    }

    /// Authorizes `request` exactly as `Authorizer::is_authorized` on the whole set would.
    pub fn is_authorized(&self, request: &Request, entities: &Entities) -> Response {
        let candidates = self.candidates(request, entities);
        let subset = self.subset(candidates);
        self.authorizer.is_authorized(request, &subset, entities)
    }

    fn subset(&self, candidates: FixedBitSet) -> Arc<PolicySet> {
        let cached = self
            .built
            .lock()
            .ok()
            .and_then(|built| built.get(&candidates).cloned());
        if let Some(set) = cached {
            return set;
        }
        let mut subset = PolicySet::new();
        for i in candidates.ones() {
            // Ids are unique in the source set, so adding cannot collide.
            let _ = subset.add(self.policies[i].clone());
        }
        let subset = Arc::new(subset);
        if let Ok(mut built) = self.built.lock() {
            if built.len() >= CACHE_CAPACITY {
                built.clear();
            }
            built.insert(candidates, subset.clone());
        }
        subset
    }
}
