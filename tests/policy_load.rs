//! A bundle is refused, with every error and its place, when a policy has no or a duplicate
//! `@id`, a permit lacks a valid `@priority`, a forbid has one, or anything fails strict
//! validation; the shipped bundle loads.

use regulator::policy::{PolicyBundle, PolicyErrors, PolicySources, SourceFile};

fn shipped() -> PolicySources {
    PolicySources::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies").as_ref()).unwrap()
}

fn with_policy_file(text: &str) -> Result<PolicyBundle, PolicyErrors> {
    let mut sources = shipped();
    sources.policies.push(SourceFile::new("draft.cedar", text));
    PolicyBundle::compile(&sources)
}

fn errors(text: &str) -> Vec<(String, String, Option<usize>)> {
    match with_policy_file(text) {
        Ok(_) => panic!("the draft must be refused"),
        Err(e) => e
            .errors
            .into_iter()
            .map(|e| (e.code.to_owned(), e.file, e.line))
            .collect(),
    }
}

#[test]
fn the_shipped_bundle_loads_and_has_a_stable_hash() {
    let a = PolicyBundle::compile(&shipped()).unwrap();
    assert!(a.policy_count() >= 20);
    let origin = a
        .origin("fatf-standard-setter-cannot-freeze-or-seize")
        .unwrap();
    assert_eq!(origin.file, "fatf.cedar");
    assert!(origin.line > 1);
}

#[test]
fn the_version_hash_is_stable_and_any_change_changes_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let a = regulator::policy::PolicyFiles::read_dir(&dir).unwrap();
    let b = regulator::policy::PolicyFiles::read_dir(&dir).unwrap();
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(a.content_hash().len(), 64);
    let mut files: std::collections::BTreeMap<String, String> = a.clone().into();
    files.insert(
        "x.cedar".into(),
        "@id(\"x\")\n@priority(\"1\")\npermit (principal, action == Action::\"MONITOR\", resource);".into(),
    );
    let changed = regulator::policy::PolicyFiles::try_from(files).unwrap();
    assert_ne!(a.content_hash(), changed.content_hash());
}

#[test]
fn a_policy_without_an_id_is_refused_with_its_line() {
    let found = errors("\n\npermit (principal, action == Action::\"MONITOR\", resource);");
    // Every error of the policy, not only the first: it has no @priority either.
    assert_eq!(
        found,
        vec![
            ("policy::missing_id".into(), "draft.cedar".into(), Some(3)),
            (
                "policy::missing_priority".into(),
                "draft.cedar".into(),
                Some(3)
            ),
        ]
    );
}

#[test]
fn a_duplicate_id_is_refused_and_points_at_the_first_use() {
    let text = "@id(\"us-sec-freeze-court-order\")\n@priority(\"1\")\npermit (principal, action == Action::\"MONITOR\", resource);";
    let err = with_policy_file(text).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    let e = &err.errors[0];
    assert_eq!(
        (e.code, e.file.as_str(), e.line),
        ("policy::duplicate_id", "draft.cedar", Some(1))
    );
    assert!(e.message.contains("us.cedar:"), "{}", e.message);
}

#[test]
fn priorities_are_required_on_permits_bounded_and_refused_on_forbids() {
    let text = "@id(\"a\")\npermit (principal, action == Action::\"MONITOR\", resource);\n\
                @id(\"b\")\n@priority(\"1001\")\npermit (principal, action == Action::\"MONITOR\", resource);\n\
                @id(\"c\")\n@priority(\"high\")\npermit (principal, action == Action::\"MONITOR\", resource);\n\
                @id(\"d\")\n@priority(\"5\")\nforbid (principal, action == Action::\"MONITOR\", resource);";
    let found = errors(text);
    let codes: Vec<(&str, Option<usize>)> =
        found.iter().map(|(c, _, l)| (c.as_str(), *l)).collect();
    assert_eq!(
        codes,
        vec![
            ("policy::missing_priority", Some(1)),
            ("policy::bad_priority", Some(4)),
            ("policy::bad_priority", Some(7)),
            ("policy::priority_on_forbid", Some(10)),
        ]
    );
}

#[test]
fn strict_validation_errors_carry_the_span_and_a_hint() {
    let err = with_policy_file(
        "@id(\"typo\")\n@priority(\"1\")\npermit (principal, action == Action::\"FREEZE\", resource)\nwhen { resource.asset_klass == \"security\" };",
    )
    .unwrap_err();
    let e = &err.errors[0];
    assert_eq!(
        (e.code, e.line, e.column),
        ("policy::validation", Some(4), Some(8))
    );
    assert!(e.hint.as_deref().unwrap_or("").contains("asset_class"));
}

#[test]
fn syntax_errors_and_bad_entities_are_reported_too() {
    assert_eq!(
        errors("@id(\"x\") permit (principal, action, resource) when {")[0].0,
        "policy::syntax"
    );
    let mut sources = shipped();
    sources.entities = SourceFile::new(
        "entities.json",
        r#"[{"uid":{"type":"Authority","id":"X"},"attrs":{},"parents":[]}]"#,
    );
    let err = PolicyBundle::compile(&sources).unwrap_err();
    assert_eq!(err.errors[0].code, "entities::invalid");
}
