//! The HTTP API (SPEC §5): thin handlers over storage, the intake queue and the hub.
//!
//! Every error leaves through [`problem::ApiError`] as an RFC 9457 problem document.

pub mod audit;
pub mod chains;
pub mod extract;
pub mod feed;
pub mod ops;
pub mod orders;
pub mod policies;
pub mod problem;
pub mod targets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

use crate::auth::Verifier;
use crate::hub::Hub;
use crate::intake::IntakeQueue;
use crate::webhooks::{Changes, WebhookConfig};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    pub intake: IntakeQueue,
    /// Wakes this replica's sequencer when a batch is accepted.
    pub intake_signal: Arc<Notify>,
    pub verifier: Arc<Verifier>,
    /// How long a submission waits for its decision before answering 202.
    pub submit_wait: Duration,
    pub metrics: PrometheusHandle,
    pub leading: watch::Receiver<bool>,
    pub webhooks: Arc<WebhookConfig>,
    /// Wakes this replica's webhook worker when a subscription needs delivering.
    pub webhook_wake: Arc<Changes>,
    pub checkpoint_key: Arc<crate::audit::signer::CheckpointKey>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/orders",
            post(orders::submit).layer(DefaultBodyLimit::max(orders::ORDER_BODY_LIMIT)),
        )
        .route(
            "/orders/batch",
            post(orders::batch).layer(DefaultBodyLimit::max(orders::BATCH_BODY_LIMIT)),
        )
        .route("/orders/{order_id}", get(orders::get))
        .route("/assets/{chain}/{asset}", put(targets::put_asset))
        .route("/targets/{chain}/{asset}", get(targets::get_target))
        .route("/targets/{chain}/{asset}/history", get(targets::history))
        .route("/decisions", get(feed::poll))
        .route("/decisions/stream", get(feed::stream))
        .route(
            "/webhooks/subscriptions",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/webhooks/subscriptions/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route(
            "/webhooks/subscriptions/{id}/enable",
            post(webhooks::enable),
        )
        .route(
            "/webhooks/subscriptions/{id}/disable",
            post(webhooks::disable),
        )
        .route(
            "/webhooks/subscriptions/{id}/replay",
            post(webhooks::replay),
        )
        .route(
            "/webhooks/subscriptions/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/webhooks/subscriptions/{id}/attempts",
            get(webhooks::attempts),
        )
        .route("/audit/checkpoints", post(audit::publish))
        .route("/audit/checkpoints/latest", get(audit::latest))
        .route("/audit/public-key", get(audit::public_key))
        .route("/audit/proofs/inclusion", get(audit::inclusion))
        .route("/audit/proofs/consistency", get(audit::consistency))
        .route("/audit/decisions", get(audit::query))
        .route("/audit/export", get(audit::export))
        .route("/audit/events", get(audit::events))
        .route(
            "/policies/validate",
            post(policies::validate).layer(DefaultBodyLimit::max(policies::DRAFT_BODY_LIMIT)),
        )
        .route(
            "/policies/test",
            post(policies::test).layer(DefaultBodyLimit::max(policies::DRAFT_BODY_LIMIT)),
        )
        .route(
            "/policies/simulate",
            post(policies::simulate).layer(DefaultBodyLimit::max(policies::DRAFT_BODY_LIMIT)),
        )
        .route(
            "/policies/versions",
            post(policies::create)
                .layer(DefaultBodyLimit::max(policies::DRAFT_BODY_LIMIT))
                .get(policies::list),
        )
        .route("/policies/versions/{version}", get(policies::get))
        .route(
            "/policies/versions/{version}/activate",
            post(policies::activate),
        )
        .route("/policies/rollback", post(policies::rollback))
        .route("/policies/activations", get(policies::activations))
        .route(
            "/policies/requests/{request}",
            get(policies::request_status),
        )
        .route("/policies/diff", get(policies::version_diff))
        .route(
            "/chains/{chain}/observations",
            post(chains::observe).layer(DefaultBodyLimit::max(chains::OBSERVATIONS_BODY_LIMIT)),
        )
        .route("/reconciliation", get(chains::reconciliation));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { problem::ApiError::NotFound("this route".into()) })
        .method_not_allowed_fallback(|| async { problem::ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!(
                    "request",
                    request_id = %id,
                    method = %request.method(),
                    path = %request.uri().path(),
                )
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Regulator action engine",
        description = "Decides authorities' orders against tokenized assets with Cedar jurisdiction policies, and publishes the ordered decision log.",
    ),
    paths(
        orders::submit, orders::batch, orders::get,
        targets::put_asset, targets::get_target, targets::history,
        feed::poll, feed::stream,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete,
        webhooks::enable, webhooks::disable, webhooks::replay, webhooks::rotate_secret,
        webhooks::attempts,
        audit::latest, audit::publish, audit::public_key, audit::inclusion, audit::consistency,
        audit::query, audit::export, audit::events,
        policies::validate, policies::test, policies::create, policies::list, policies::get,
        policies::version_diff, policies::activate, policies::rollback, policies::activations,
        policies::simulate, policies::request_status,
        chains::observe, chains::reconciliation,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(crate::auth::Role)),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Submit orders and read their decisions"),
        (name = "assets", description = "Register the assets orders may target"),
        (name = "targets", description = "Lock state and history of assets and balances"),
        (name = "feed", description = "The ordered decision log, for chains and reconcilers"),
        (name = "webhooks", description = "Subscriptions that push the decision log to chains (admin)"),
        (name = "audit", description = "Signed checkpoints of the Merkle tree over the log, and proofs (auditor)"),
        (name = "policies", description = "Policy versions: validate, test, diff, simulate, activate, roll back (policy_author)"),
        (name = "chains", description = "Observations from chain adapters and the reconciler's status per target"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as checked in at `openapi/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make every release rewrite the file; the API has its own.
    doc.info.version = "1".into();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
