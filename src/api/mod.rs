//! The HTTP API (SPEC §5): thin handlers over storage, the intake queue and the hub.
//!
//! Every error leaves through [`problem::ApiError`] as an RFC 9457 problem document.

pub mod audit;
pub mod chains;
pub mod console;
pub mod edge;
pub mod extract;
pub mod feed;
pub mod ops;
pub mod orders;
pub mod policies;
pub mod problem;
pub mod sign_in;
pub mod simulations;
pub mod state;
pub mod targets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

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
    /// Signs checkpoints, of trees it has recomputed from the records.
    pub notary: Arc<crate::audit::notary::Notary>,
    /// The development sign-in, when tokens are verified with the development secret.
    pub dev_sign_in: Option<Arc<sign_in::DevSignIn>>,
    /// This replica's simulation jobs.
    pub simulations: Arc<simulations::Simulations>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Who may use which routes at all; handlers decide the finer rules.
mod roles {
    use crate::auth::Role::{self, *};
    pub const SUBMITTERS: &[Role] = &[Regulator, Coordinator];
    pub const ORDER_READERS: &[Role] = &[Regulator, Coordinator, Auditor, Admin];
    pub const ADMINS: &[Role] = &[Admin];
    pub const TARGET_READERS: &[Role] = &[Regulator, Coordinator, Chain, Auditor, Admin];
    pub const FEED_READERS: &[Role] = &[Chain, Auditor, Admin];
    pub const AUDITORS: &[Role] = &[Auditor, Admin];
    /// Signed checkpoints, the key and consistency proofs are public evidence, not secrets: a
    /// chain's adapter reads them to anchor checkpoints on its chain.
    pub const CHECKPOINT_READERS: &[Role] = &[Chain, Auditor, Admin];
    pub const POLICY_READERS: &[Role] = &[PolicyAuthor, Auditor, Admin];
    pub const POLICY_AUTHORS: &[Role] = &[PolicyAuthor];
    pub const MONITORS: &[Role] = &[Monitor, Admin];
    pub const CHAINS: &[Role] = &[Chain];
    pub const RECONCILIATION_READERS: &[Role] = &[Chain, Regulator, Auditor, Admin];
}

/// The API's routes with the edge's checks (see [`edge`]), each error a problem document.
pub fn router(state: AppState, http: &edge::HttpConfig) -> Router {
    use edge::json;
    use roles::*;
    let gate = |roles: &'static [crate::auth::Role]| {
        axum::middleware::from_fn_with_state((state.clone(), roles), extract::check_gate)
    };
    let v1 = Router::new()
        .route(
            "/orders",
            json(post(orders::submit), orders::ORDER_BODY_LIMIT).route_layer(gate(SUBMITTERS)),
        )
        .route(
            "/orders/batch",
            json(post(orders::batch), orders::BATCH_BODY_LIMIT).route_layer(gate(SUBMITTERS)),
        )
        .route(
            "/orders/{order_id}",
            get(orders::get).route_layer(gate(ORDER_READERS)),
        )
        .route(
            "/assets/{chain}/{asset}",
            json(put(targets::put_asset), targets::ASSET_BODY_LIMIT).route_layer(gate(ADMINS)),
        )
        .route(
            "/targets/{chain}/{asset}",
            get(targets::get_target).route_layer(gate(TARGET_READERS)),
        )
        .route(
            "/targets/{chain}/{asset}/history",
            get(targets::history).route_layer(gate(TARGET_READERS)),
        )
        .route(
            "/targets/{chain}/{asset}/proof",
            get(state::proof).route_layer(gate(TARGET_READERS)),
        )
        .route(
            "/snapshots",
            get(state::snapshot).route_layer(gate(TARGET_READERS)),
        )
        .route(
            "/decisions",
            get(feed::poll).route_layer(gate(FEED_READERS)),
        )
        .route(
            "/decisions/stream",
            get(feed::stream).route_layer(gate(FEED_READERS)),
        )
        .route(
            "/webhooks/subscriptions",
            json(post(webhooks::create), webhooks::ROUTE_BODY_LIMIT)
                .get(webhooks::list)
                .route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}",
            get(webhooks::get)
                .delete(webhooks::delete)
                .route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}/enable",
            post(webhooks::enable).route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}/disable",
            post(webhooks::disable).route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}/replay",
            json(post(webhooks::replay), webhooks::ROUTE_BODY_LIMIT).route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}/rotate-secret",
            json(post(webhooks::rotate_secret), webhooks::ROUTE_BODY_LIMIT)
                .route_layer(gate(ADMINS)),
        )
        .route(
            "/webhooks/subscriptions/{id}/attempts",
            get(webhooks::attempts).route_layer(gate(ADMINS)),
        )
        .route(
            "/audit/checkpoints",
            post(audit::publish)
                .route_layer(gate(AUDITORS))
                .merge(get(audit::checkpoints).route_layer(gate(CHECKPOINT_READERS))),
        )
        .route(
            "/audit/checkpoints/latest",
            get(audit::latest).route_layer(gate(CHECKPOINT_READERS)),
        )
        .route(
            "/audit/public-key",
            get(audit::public_key).route_layer(gate(CHECKPOINT_READERS)),
        )
        .route(
            "/audit/proofs/inclusion",
            get(audit::inclusion).route_layer(gate(AUDITORS)),
        )
        .route(
            "/audit/proofs/consistency",
            get(audit::consistency).route_layer(gate(CHECKPOINT_READERS)),
        )
        .route(
            "/audit/decisions",
            get(audit::query).route_layer(gate(AUDITORS)),
        )
        .route(
            "/audit/export",
            get(audit::export).route_layer(gate(AUDITORS)),
        )
        .route(
            "/audit/events",
            get(audit::events).route_layer(gate(AUDITORS)),
        )
        .route(
            "/policies/validate",
            json(post(policies::validate), policies::DRAFT_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/test",
            json(post(policies::test), policies::DRAFT_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/simulate",
            json(post(simulations::simulate), policies::DRAFT_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/simulations",
            json(post(simulations::start), policies::DRAFT_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/simulations/{id}",
            get(simulations::status).route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/versions",
            json(post(policies::create), policies::DRAFT_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS))
                .merge(get(policies::list).route_layer(gate(POLICY_READERS))),
        )
        .route(
            "/policies/versions/{version}",
            get(policies::get).route_layer(gate(POLICY_READERS)),
        )
        .route(
            "/policies/versions/{version}/activate",
            post(policies::activate).route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/rollback",
            json(post(policies::rollback), policies::ROLLBACK_BODY_LIMIT)
                .route_layer(gate(POLICY_AUTHORS)),
        )
        .route(
            "/policies/activations",
            get(policies::activations).route_layer(gate(POLICY_READERS)),
        )
        .route(
            "/policies/requests/{request}",
            get(policies::request_status).route_layer(gate(POLICY_READERS)),
        )
        .route(
            "/policies/diff",
            get(policies::version_diff)
                .route_layer(gate(POLICY_READERS))
                .merge(
                    json(post(policies::draft_diff), policies::DRAFT_BODY_LIMIT)
                        .route_layer(gate(POLICY_AUTHORS)),
                ),
        )
        .route(
            "/chains/{chain}/observations",
            json(post(chains::observe), chains::OBSERVATIONS_BODY_LIMIT).route_layer(gate(CHAINS)),
        )
        .route("/console/config", get(sign_in::config))
        .route(
            "/dev/sign-in",
            json(post(sign_in::sign_in), sign_in::SIGN_IN_BODY_LIMIT),
        )
        .route(
            "/reconciliation",
            get(chains::reconciliation).route_layer(gate(RECONCILIATION_READERS)),
        )
        .route(
            "/chains/{chain}",
            json(put(chains::put_settings), chains::CHAIN_SETTINGS_BODY_LIMIT)
                .route_layer(gate(ADMINS))
                .merge(get(chains::get_settings).route_layer(gate(TARGET_READERS))),
        );
    let metrics = if http.metrics_need_token {
        get(ops::metrics).route_layer(gate(MONITORS))
    } else {
        get(ops::metrics)
    };
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", metrics)
        .route("/openapi.json", get(ops::openapi))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::file))
        .fallback(|| async { problem::ApiError::NotFound("this route".into()) })
        .method_not_allowed_fallback(|| async { problem::ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::middleware::from_fn(problem::problems_only))
        .layer(axum::middleware::from_fn_with_state(
            http.body_timeout,
            edge::body_deadline,
        ))
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
        targets::put_asset, targets::get_target, targets::history, state::proof, state::snapshot,
        feed::poll, feed::stream,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete,
        webhooks::enable, webhooks::disable, webhooks::replay, webhooks::rotate_secret,
        webhooks::attempts,
        audit::latest, audit::checkpoints, audit::publish, audit::public_key, audit::inclusion, audit::consistency,
        audit::query, audit::export, audit::events,
        policies::validate, policies::test, policies::create, policies::list, policies::get,
        policies::version_diff, policies::draft_diff, policies::activate, policies::rollback, policies::activations,
        simulations::simulate, simulations::start, simulations::status, policies::request_status,
        chains::observe, chains::reconciliation, chains::get_settings, chains::put_settings,
        ops::healthz, ops::readyz, ops::metrics,
        console::index, console::file, sign_in::config, sign_in::sign_in,
    ),
    components(schemas(crate::auth::Role, audit::ExportFormat, orders::Detail)),
    modifiers(&BearerAuth, &EdgeResponses, &OperationIds, &IdPatterns),
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
        (name = "console", description = "The web console's page and files (no token: the console signs in through the API)"),
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

/// Every operation's methods, for the modifiers below.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> Vec<&mut utoipa::openapi::path::Operation> {
    openapi
        .paths
        .paths
        .values_mut()
        .flat_map(|item| {
            [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
        })
        .flatten()
        .collect()
}

/// Documents, on every operation they apply to, the answers the edge gives before a handler
/// runs (see [`edge`] and [`extract::check_gate`]); an operation's own description of the same
/// status wins. Responses without a description get the status's reason phrase.
struct EdgeResponses;

impl utoipa::Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "Problem",
                        ))))
                        .build(),
                )
                .build()
        };
        let v1: Vec<String> = openapi
            .paths
            .paths
            .keys()
            .filter(|p| p.starts_with("/v1/"))
            .cloned()
            .collect();
        for path in v1 {
            if let Some(item) = openapi.paths.paths.get_mut(&path) {
                for op in [
                    &mut item.get,
                    &mut item.put,
                    &mut item.post,
                    &mut item.delete,
                ]
                .into_iter()
                .flatten()
                {
                    op.responses
                        .responses
                        .entry("503".to_owned())
                        .or_insert_with(|| {
                            RefOr::T(problem("Not ready: the database cannot be reached"))
                        });
                }
            }
        }
        for op in operations(openapi) {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let has_body = op.request_body.is_some();
            let params = op.parameters.clone().unwrap_or_default();
            let has_in = |place: ParameterIn| {
                params
                    .iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
            };
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::T(problem(description)));
            };
            if secured {
                add("401", "Missing, invalid or expired token");
                add("403", "The token lacks a role this operation needs");
            }
            if has_in(ParameterIn::Path) {
                add("400", "A path segment that does not parse");
            }
            if has_in(ParameterIn::Query) {
                add("422", "A query parameter that does not parse");
            }
            if has_body {
                add("400", "Malformed JSON");
                add("408", "The body did not arrive within the body timeout");
                add("413", "The body exceeds this operation's limit");
                add("415", "The body is not application/json");
                add("422", "JSON of the wrong shape");
            }
            for (status, response) in op.responses.responses.iter_mut() {
                if let RefOr::T(response) = response {
                    if response.description.is_empty() {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Response")
                            .to_owned();
                    }
                }
            }
        }
    }
}

/// Operation ids are `<tag>_<handler>`: handler names repeat across modules (`get`, `list`).
struct OperationIds;

impl utoipa::Modify for OperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for op in operations(openapi) {
            let tag = op
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .cloned()
                .unwrap_or_default();
            if let Some(id) = op.operation_id.as_mut() {
                if !tag.is_empty() && !id.starts_with(&format!("{tag}_")) {
                    *id = format!("{tag}_{id}");
                }
            }
        }
    }
}

/// The patterns of the identifiers and amounts, as their parsers in [`crate::domain::ids`]
/// accept them (`tests/openapi.rs` checks the two agree on samples).
pub const ID_PATTERNS: &[(&str, &str)] = &[
    ("IssuerId", "^[A-Za-z0-9._-]{1,64}$"),
    ("ChainId", "^[a-z0-9_-]{1,64}$"),
    ("AssetId", "^[!-.0-~]{1,256}$"),
    ("HolderAddress", "^[!-.0-~]{1,256}$"),
    ("JurisdictionCode", "^[A-Z0-9-]{1,32}$"),
    ("AssetClass", "^[a-z0-9_]{1,64}$"),
    ("Instrument", "^[a-z0-9_]{1,64}$"),
    ("PolicyId", "^[A-Za-z0-9._-]{1,128}$"),
    ("Amount", "^0*[1-9][0-9]{0,37}$"),
    (
        "OrderId",
        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    ),
];

struct IdPatterns;

impl utoipa::Modify for IdPatterns {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::RefOr;
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (name, pattern) in ID_PATTERNS {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*name) {
                object.pattern = Some((*pattern).to_owned());
            }
        }
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
