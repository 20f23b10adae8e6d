//! The checked-in OpenAPI document is the one the code generates, and the one it serves.
//! After an API change, regenerate it with `cargo run -- openapi > openapi/openapi.json`.

mod service;

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
