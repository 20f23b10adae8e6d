//! A policy bundle: the schema, the policies and the entities that decide orders, loaded from
//! `policies/` (or from a draft), checked completely before it may decide anything.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Effect, Entities, Policy, PolicyId as CedarPolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};

use super::error::{line_and_column, PolicyError, PolicyErrors, SourceFile};
use super::limits::{self, Grammar};
use crate::domain::{PolicyId, Priority};

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ENTITIES_FILE: &str = "entities.json";
pub const TESTS_DIR: &str = "tests";
/// The entity type of registered assets, which `entities.json` does not list.
const ASSET_TYPE: &str = "Asset";
/// The stack of the thread that runs Cedar over a bundle.
const COMPILE_STACK: usize = 64 * 1024 * 1024;

/// The files of a bundle, before they are checked.
#[derive(Debug, Clone)]
pub struct PolicySources {
    pub schema: SourceFile,
    /// `*.cedar` files, in name order.
    pub policies: Vec<SourceFile>,
    pub entities: SourceFile,
}

impl PolicySources {
    /// Reads `schema.cedarschema`, `entities.json` and every `*.cedar` file of `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self, PolicyErrors> {
        #[expect(clippy::result_large_err, reason = "cold path, errors are collected")]
        let read = |name: &str| -> Result<SourceFile, PolicyError> {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|text| SourceFile::new(name, text))
                .map_err(|e| PolicyError::io("policy::io", &path, format!("cannot read: {e}")))
        };
        let mut errors = Vec::new();
        let schema = read(SCHEMA_FILE).map_err(|e| errors.push(e)).ok();
        let entities = read(ENTITIES_FILE).map_err(|e| errors.push(e)).ok();
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".cedar"))
                .collect(),
            Err(e) => {
                errors.push(PolicyError::io(
                    "policy::io",
                    dir,
                    format!("cannot list the policy directory: {e}"),
                ));
                Vec::new()
            }
        };
        names.sort();
        let policies: Vec<SourceFile> = names
            .iter()
            .filter_map(|n| read(n).map_err(|e| errors.push(e)).ok())
            .collect();
        match (schema, entities) {
            (Some(schema), Some(entities)) if errors.is_empty() => Ok(Self {
                schema,
                policies,
                entities,
            }),
            _ => Err(PolicyErrors { errors }),
        }
    }
}

/// Where a policy was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOrigin {
    pub file: String,
    pub line: usize,
}

/// A checked bundle: every policy has a unique `@id`, every permit a valid `@priority`, the set
/// validates strictly against the schema, and the entities conform to it.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    pub(crate) entities: Entities,
    priorities: HashMap<CedarPolicyId, Priority>,
    origins: HashMap<String, PolicyOrigin>,
}

impl PolicyBundle {
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyErrors> {
        Self::compile(&PolicySources::read_dir(dir)?)
    }

    /// Checks every file and builds the bundle, or returns every error found.
    ///
    /// Cedar runs on a thread of its own with a known stack: the shape bounds of
    /// [`limits`](super::limits) are measured against a 2 MiB stack, and this leaves a wide
    /// margin whatever thread (a tokio worker, `main`) asks.
    pub fn compile(sources: &PolicySources) -> Result<Self, PolicyErrors> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("policy-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || Self::compile_here(sources))
                .map_err(|e| PolicyErrors {
                    errors: vec![PolicyError::new(
                        "policy::internal",
                        &sources.schema,
                        format!("cannot start the policy compiler thread: {e}"),
                    )],
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(PolicyErrors {
                        errors: vec![PolicyError::new(
                            "policy::internal",
                            &sources.schema,
                            "the policy compiler failed; the bundle is refused",
                        )],
                    })
                })
        })
    }

    fn compile_here(sources: &PolicySources) -> Result<Self, PolicyErrors> {
        let mut errors = Vec::new();
        let schema = match limits::check(&sources.schema, Grammar::Schema) {
            Err(e) => {
                errors.push(e);
                None
            }
            Ok(()) => Self::parse_schema(&sources.schema, &mut errors),
        };

        let mut policies = PolicySet::new();
        let mut priorities = HashMap::new();
        let mut origins: HashMap<String, PolicyOrigin> = HashMap::new();
        // Each policy with its file and place, for the checks that need the entities.
        let mut named: Vec<(Policy, &SourceFile, usize, usize)> = Vec::new();
        for file in &sources.policies {
            if let Err(e) = limits::check(file, Grammar::Policy) {
                errors.push(e);
                continue;
            }
            for parsed in parse_file(file, &mut errors) {
                let ParsedPolicy {
                    policy,
                    offset,
                    len,
                } = parsed;
                let (line, _) = line_and_column(&file.text, offset);
                // A policy whose @id is refused is still checked in full under its place
                // (`us.cedar:12`, which no @id can spell), so every error of it is reported;
                // the bundle is refused anyway.
                let id = match checked_id(&policy, file, offset, len, &origins, &mut errors) {
                    Some(id) => id.as_str().to_owned(),
                    None => format!("{}:{line}", file.name),
                };
                let cedar_id = CedarPolicyId::new(id.as_str());
                match checked_priority(&policy, &id, file, offset, len) {
                    Ok(Some(p)) => {
                        priorities.insert(cedar_id.clone(), p);
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
                origins.insert(
                    id.clone(),
                    PolicyOrigin {
                        file: file.name.clone(),
                        line,
                    },
                );
                named.push((policy.clone(), file, offset, len));
                if let Err(e) = policies.add(policy.new_id(cedar_id)) {
                    errors.push(PolicyError::new("policy::set", file, e.to_string()));
                }
            }
        }

        let entities = schema.as_ref().and_then(|schema| {
            let parsed = Entities::from_json_str(&sources.entities.text, Some(schema));
            // Actions are entities too: `action in …` needs the schema's action hierarchy.
            let with_actions = match (parsed, schema.action_entities()) {
                (Ok(entities), Ok(actions)) => entities.add_entities(actions, None),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            with_actions
                .map_err(|e| {
                    errors.push(PolicyError::from_cedar(
                        "entities::invalid",
                        &sources.entities,
                        &e,
                    ))
                })
                .ok()
        });

        if let Some(entities) = &entities {
            for (policy, file, offset, len) in &named {
                errors.extend(unknown_entities(policy, entities, file, *offset, *len));
            }
        }

        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            for e in result.validation_errors() {
                let id = e.policy_id().to_string();
                let file = origins
                    .get(&id)
                    .and_then(|o| sources.policies.iter().find(|f| f.name == o.file))
                    .unwrap_or(&sources.schema);
                errors.push(
                    PolicyError::from_cedar("policy::validation", file, e)
                        .hint_if_missing(format!("in policy `{id}`")),
                );
            }
        }

        match (schema, entities) {
            (Some(schema), Some(entities)) if errors.is_empty() => Ok(Self {
                schema,
                policies,
                entities,
                priorities,
                origins,
            }),
            _ => Err(PolicyErrors { errors }),
        }
    }

    fn parse_schema(file: &SourceFile, errors: &mut Vec<PolicyError>) -> Option<Schema> {
        match Schema::from_cedarschema_str(&file.text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                errors.push(PolicyError::from_cedar("schema::invalid", file, &e));
                None
            }
        }
    }

    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn policy_set(&self) -> &PolicySet {
        &self.policies
    }

    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    pub fn origin(&self, id: &str) -> Option<&PolicyOrigin> {
        self.origins.get(id)
    }

    /// The declared priority of a permit policy.
    pub fn priority(&self, id: &CedarPolicyId) -> Option<Priority> {
        self.priorities.get(id).copied()
    }
}

impl PolicyError {
    fn hint_if_missing(self, hint: String) -> Self {
        if self.hint.is_some() {
            self
        } else {
            self.hint(hint)
        }
    }
}

struct ParsedPolicy {
    policy: Policy,
    /// Where the policy's text starts in its file, and its length.
    offset: usize,
    len: usize,
}

/// Parses one file into its policies, in source order, each with its place in the file.
fn parse_file(file: &SourceFile, errors: &mut Vec<PolicyError>) -> Vec<ParsedPolicy> {
    let set = match PolicySet::from_str(&file.text) {
        Ok(set) => set,
        Err(parse_errors) => {
            errors.extend(
                parse_errors
                    .iter()
                    .map(|e| PolicyError::from_cedar("policy::syntax", file, e)),
            );
            return Vec::new();
        }
    };
    if let Some(template) = set.templates().next() {
        errors.push(
            PolicyError::new(
                "policy::template",
                file,
                format!("templates are not supported (template {})", template.id()),
            )
            .hint("write a static policy with concrete entities instead of ?principal/?resource"),
        );
    }
    // Cedar names the policies of one text policy0, policy1, … in source order.
    let mut policies: Vec<(usize, Policy)> = set
        .policies()
        .filter_map(|p| {
            let n = p.id().to_string().strip_prefix("policy")?.parse().ok()?;
            Some((n, p.clone()))
        })
        .collect();
    policies.sort_by_key(|(n, _)| *n);
    let mut cursor = 0;
    policies
        .into_iter()
        .map(|(_, policy)| {
            let text = policy.to_cedar().unwrap_or_default();
            let (offset, len) = match file.text[cursor..].find(text.as_str()) {
                Some(found) if !text.is_empty() => (cursor + found, text.len()),
                _ => (cursor, 0),
            };
            cursor = offset + len;
            ParsedPolicy {
                policy,
                offset,
                len,
            }
        })
        .collect()
}

/// Entities that the policy names and the bundle's entities lack: Cedar's validator checks
/// only their types, and a policy naming `Authority::"US-SECC"` would silently never match.
/// Assets are exempt: they are registered over the API, not listed in `entities.json`.
fn unknown_entities(
    policy: &Policy,
    entities: &Entities,
    file: &SourceFile,
    offset: usize,
    len: usize,
) -> Vec<PolicyError> {
    let mut seen = std::collections::HashSet::new();
    let end = (offset + len).min(file.text.len());
    policy
        .entity_literals()
        .into_iter()
        .filter(|uid| uid.type_name().to_string() != ASSET_TYPE)
        .filter(|uid| entities.get(uid).is_none())
        .filter(|uid| seen.insert(uid.clone()))
        .map(|uid| {
            let text = uid.to_string();
            let (at, at_len) = match file.text[offset..end].find(text.as_str()) {
                Some(i) => (offset + i, text.len()),
                None => (offset, first_line_len(&file.text[offset..])),
            };
            let id = policy.annotation("id").unwrap_or("?");
            PolicyError::new(
                "policy::unknown_entity",
                file,
                format!("policy `{id}` names {text}, which is not in {ENTITIES_FILE}"),
            )
            .at(at, at_len, "unknown entity")
            .hint(format!(
                "add {text} to {ENTITIES_FILE}, or name an entity it holds (ids are case-sensitive)"
            ))
        })
        .collect()
}

/// The policy's `@id`, if it is present, well-formed and not taken.
fn checked_id(
    policy: &Policy,
    file: &SourceFile,
    offset: usize,
    len: usize,
    taken: &HashMap<String, PolicyOrigin>,
    errors: &mut Vec<PolicyError>,
) -> Option<PolicyId> {
    let Some(raw) = policy.annotation("id") else {
        errors.push(
            PolicyError::new("policy::missing_id", file, "a policy has no @id annotation")
                .at(offset, len.min(first_line_len(&file.text[offset..])), "this policy")
                .hint("name every policy, e.g. @id(\"us-sec-freeze-court-order\"), so decisions can cite it"),
        );
        return None;
    };
    let (at, at_len) = annotation_span(&file.text, offset, len, "id");
    let id = match PolicyId::parse(raw) {
        Ok(id) => id,
        Err(e) => {
            errors.push(
                PolicyError::new("policy::bad_id", file, e.to_string()).at(at, at_len, "this id"),
            );
            return None;
        }
    };
    if let Some(first) = taken.get(raw) {
        errors.push(
            PolicyError::new(
                "policy::duplicate_id",
                file,
                format!(
                    "@id(\"{raw}\") is already used at {}:{}",
                    first.file, first.line
                ),
            )
            .at(at, at_len, "second use")
            .hint("policy ids must be unique across all policy files"),
        );
        return None;
    }
    Some(id)
}

/// A permit's `@priority`; a forbid must not have one.
#[expect(clippy::result_large_err, reason = "cold path, errors are collected")]
fn checked_priority(
    policy: &Policy,
    id: &str,
    file: &SourceFile,
    offset: usize,
    len: usize,
) -> Result<Option<Priority>, PolicyError> {
    let raw = policy.annotation("priority");
    let (at, at_len) = annotation_span(&file.text, offset, len, "priority");
    match (policy.effect(), raw) {
        (Effect::Permit, None) => Err(PolicyError::new(
            "policy::missing_priority",
            file,
            format!("permit policy `{id}` has no @priority"),
        )
        .at(
            offset,
            len.min(first_line_len(&file.text[offset..])),
            "this permit",
        )
        .hint("declare how strongly it ranks, e.g. @priority(\"700\"); see docs/policies.md")),
        (Effect::Permit, Some(raw)) => raw.parse::<Priority>().map(Some).map_err(|_| {
            PolicyError::new(
                "policy::bad_priority",
                file,
                format!("@priority(\"{raw}\") of `{id}` is not an integer from 0 to 1000"),
            )
            .at(at, at_len, "out of range")
        }),
        (Effect::Forbid, Some(_)) => Err(PolicyError::new(
            "policy::priority_on_forbid",
            file,
            format!("forbid policy `{id}` declares a @priority, which has no effect"),
        )
        .at(at, at_len, "remove this")
        .hint("a forbid always beats every permit; priorities rank permits only")),
        (Effect::Forbid, None) => Ok(None),
    }
}

/// Where `@name("…")` is inside a policy's text (offset, length), or the policy's start.
fn annotation_span(text: &str, offset: usize, len: usize, name: &str) -> (usize, usize) {
    let end = (offset + len).min(text.len());
    let Some(start) = text[offset..end]
        .find(&format!("@{name}("))
        .map(|i| offset + i)
    else {
        return (offset, 0);
    };
    let len = text[start..end].find(')').map_or(0, |i| i + 1);
    (start, len)
}

fn first_line_len(text: &str) -> usize {
    text.find('\n').unwrap_or(text.len())
}
