//! The checked-in OpenAPI document is the one the code generates, and the one it serves.
//! After an API change, regenerate it with `cargo run -- openapi > openapi/openapi.json`.

mod service;

use std::collections::HashSet;
use std::path::PathBuf;

fn checked_in() -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    (path, text)
}

#[test]
fn the_checked_in_document_matches_the_code() {
    let generated = regulator::api::openapi_json();
    let (path, on_disk) = checked_in();
    assert!(
        on_disk == generated,
        "{} is out of date; regenerate it with `cargo run -- openapi > openapi/openapi.json`",
        path.display()
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/orders",
        "/v1/orders/batch",
        "/v1/orders/{order_id}",
        "/v1/assets/{chain}/{asset}",
        "/v1/targets/{chain}/{asset}",
        "/v1/targets/{chain}/{asset}/history",
        "/v1/decisions",
        "/v1/decisions/stream",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}

#[sqlx::test]
async fn the_service_serves_the_document(pool: sqlx::PgPool) {
    let app = service::TestApp::spawn(pool).await;
    let served = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, checked_in().1);
    app.app.stop().await;
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", serde_json::Value::String(target)) => out.push(target),
                    _ => refs(item, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
        _ => {}
    }
}

fn operations(doc: &serde_json::Value) -> Vec<(String, String, &serde_json::Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

#[test]
fn the_document_passes_an_openapi_3_1_validator() {
    let (path, _) = checked_in();
    let validator =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-fuzz/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "{} is missing: python3 -m venv .venv-fuzz && .venv-fuzz/bin/pip install -r fuzz/requirements.txt (.ci/run does this)",
        validator.display()
    );
    let output = std::process::Command::new(&validator)
        .arg(&path)
        .output()
        .expect("the validator runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn refs_resolve_operation_ids_are_unique_and_query_parameters_are_in_the_query() {
    let doc: serde_json::Value = serde_json::from_str(&regulator::api::openapi_json()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    for target in found {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or(target);
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    let mut ids = HashSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            ids.insert(id.to_owned()),
            "{method} {path}: operationId {id} repeats"
        );
        for param in op["parameters"].as_array().into_iter().flatten() {
            let name = param["name"].as_str().unwrap();
            if param["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{method} {path}: {name} is not in the path"
                );
            }
        }
    }
}

#[test]
fn every_error_the_edge_can_give_is_documented_as_a_problem() {
    let doc: serde_json::Value = serde_json::from_str(&regulator::api::openapi_json()).unwrap();
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        let mut expected: Vec<&str> = Vec::new();
        if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
            expected.extend(["401", "403"]);
        }
        if op.get("requestBody").is_some() {
            expected.extend(["400", "408", "413", "415", "422"]);
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        if params.iter().any(|p| p["in"] == "path") {
            expected.push("400");
        }
        if params.iter().any(|p| p["in"] == "query") {
            expected.push("422");
        }
        for status in expected {
            assert!(
                responses.contains_key(status),
                "{method} {path} lacks {status}"
            );
        }
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status}"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    response["content"]
                        .get("application/problem+json")
                        .is_some(),
                    "{method} {path} {status} is not a problem document"
                );
            }
        }
    }
}

/// The documented patterns accept what the parsers accept, and refuse what they refuse.
#[test]
fn identifier_and_amount_patterns_match_their_parsers() {
    use regulator::domain::{
        AssetClass, AssetId, ChainId, HolderAddress, Instrument, IssuerId, JurisdictionCode,
        PolicyId,
    };
    let doc: serde_json::Value = serde_json::from_str(&regulator::api::openapi_json()).unwrap();
    let pattern = |name: &str| {
        doc["components"]["schemas"][name]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no pattern"))
            .to_owned()
    };
    // A tiny matcher for the patterns' one shape: ^[class]{min,max}$ (enough to check them).
    fn matches(pattern: &str, text: &str) -> bool {
        let inner = pattern
            .strip_prefix("^[")
            .and_then(|p| p.strip_suffix('$'))
            .unwrap();
        let (class, counts) = inner.split_once("]{").unwrap();
        let (min, max) = counts.trim_end_matches('}').split_once(',').unwrap();
        let (min, max): (usize, usize) = (min.parse().unwrap(), max.parse().unwrap());
        let chars: Vec<char> = class.chars().collect();
        let allowed = |c: char| {
            let mut i = 0;
            while i < chars.len() {
                if i + 2 < chars.len() && chars[i + 1] == '-' {
                    if chars[i] <= c && c <= chars[i + 2] {
                        return true;
                    }
                    i += 3;
                } else {
                    if chars[i] == c {
                        return true;
                    }
                    i += 1;
                }
            }
            false
        };
        let n = text.chars().count();
        n >= min && n <= max && text.chars().all(allowed)
    }
    let samples = [
        "US-SEC",
        "ethereum",
        "polygon-pos",
        "0xACME-BOND-2031",
        "US",
        "security",
        "court_order",
        "sec.freeze-1",
        "",
        "a/b",
        "UK GB",
        "x\u{0}",
        "ÄÖ",
        "Upper",
        "a_b",
        "a.b",
        "~!",
        &"x".repeat(65),
        &"y".repeat(257),
    ];
    type Parse = fn(&str) -> bool;
    let parsers: [(&str, Parse); 8] = [
        ("IssuerId", |s| IssuerId::parse(s).is_ok()),
        ("ChainId", |s| ChainId::parse(s).is_ok()),
        ("AssetId", |s| AssetId::parse(s).is_ok()),
        ("HolderAddress", |s| HolderAddress::parse(s).is_ok()),
        ("JurisdictionCode", |s| JurisdictionCode::parse(s).is_ok()),
        ("AssetClass", |s| AssetClass::parse(s).is_ok()),
        ("Instrument", |s| Instrument::parse(s).is_ok()),
        ("PolicyId", |s| PolicyId::parse(s).is_ok()),
    ];
    for (name, parses) in parsers {
        let pattern = pattern(name);
        for sample in samples {
            assert_eq!(
                matches(&pattern, sample),
                parses(sample),
                "{name} {pattern} on {sample:?}"
            );
        }
    }
    assert!(pattern("Amount").starts_with('^'));
    assert!(pattern("OrderId").starts_with('^'));
}
