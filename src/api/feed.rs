//! The decision feed: a cursor over the log, by long-poll or Server-Sent Events.
//!
//! Both read the committed log itself (never a replica's memory), so every reader sees the same
//! records in the same order; the hub's view of the head only tells them when to look again.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::Deserialize;

use super::extract::{require, ApiQuery};
use super::problem::{ApiError, Problem};
use super::targets::{may_read_chain, page_limit, DecisionPage};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::storage;

/// Longest long-poll wait.
const MAX_WAIT_SECS: u64 = 30;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Decisions after this sequence number (default 0: from the start).
    pub after: Option<u64>,
    /// At most this many (1 to 1,000; default 100).
    pub limit: Option<u32>,
    /// Seconds to wait for a decision when there is none yet (0 to 30; default 0).
    pub wait: Option<u64>,
    /// Only this chain's decisions. A chain token always reads its own chain.
    pub chain: Option<String>,
}

/// The chain filter the caller gets: a chain token is pinned to its own chain.
fn chain_filter(principal: &Principal, asked: Option<String>) -> Result<Option<String>, ApiError> {
    require(principal, &[Role::Chain, Role::Auditor, Role::Admin])?;
    // Checked like every chain id, before it reaches a query (a NUL would be a database error).
    if let Some(chain) = &asked {
        crate::domain::ChainId::parse(chain.as_str())
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    if principal.has_any(&[Role::Auditor, Role::Admin]) {
        return Ok(asked);
    }
    let own = asked.unwrap_or_else(|| principal.sub.clone());
    may_read_chain(principal, &own)?;
    Ok(Some(own))
}

/// Decisions after a sequence number, optionally waiting for new ones.
#[utoipa::path(
    get, path = "/v1/decisions", tag = "feed",
    params(FeedQuery),
    responses(
        (status = 200, description = "A page of decisions; empty if none came within `wait`", body = DecisionPage),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn poll(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Json<DecisionPage>, ApiError> {
    let chain = chain_filter(&principal, query.chain)?;
    let limit = page_limit(query.limit)?;
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::InvalidRequest(format!(
            "wait must be at most {MAX_WAIT_SECS} seconds"
        )));
    }
    let after = query.after.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut head = state.hub.head();
    loop {
        head.borrow_and_update();
        let decisions =
            storage::decisions_after(&state.pool, after, limit, chain.as_deref()).await?;
        if !decisions.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(DecisionPage::new(decisions, after)?));
        }
        if tokio::time::timeout_at(deadline, head.changed())
            .await
            .is_err()
        {
            // One last look happens on the next turn; then the deadline ends it.
            continue;
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start after this sequence number; `Last-Event-ID` takes precedence when present.
    pub after: Option<u64>,
    pub chain: Option<String>,
}

/// Decisions as Server-Sent Events: `id` is the sequence number, `data` the record.
/// Reconnect with `Last-Event-ID` to resume exactly after the last event received.
#[utoipa::path(
    get, path = "/v1/decisions/stream", tag = "feed",
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence number")),
    responses(
        (status = 200, description = "text/event-stream of `decision` events", content_type = "text/event-stream", body = String),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let chain = chain_filter(&principal, query.chain)?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::InvalidRequest("Last-Event-ID must be a sequence number".into())
            })?,
        None => query.after.unwrap_or(0),
    };
    let pool = state.pool.clone();
    let head = state.hub.head();
    let events = futures::stream::unfold(
        (after, head, VecDeque::<storage::StoredDecision>::new()),
        move |(mut cursor, mut head, mut buffered)| {
            let pool = pool.clone();
            let chain = chain.clone();
            async move {
                loop {
                    if let Some(d) = buffered.pop_front() {
                        cursor = d.seq;
                        let event = Event::default()
                            .id(d.seq.to_string())
                            .event("decision")
                            .data(d.record);
                        return Some((Ok(event), (cursor, head, buffered)));
                    }
                    head.borrow_and_update();
                    match storage::decisions_after(&pool, cursor, 500, chain.as_deref()).await {
                        Ok(found) if !found.is_empty() => buffered = found.into(),
                        Ok(_) => {
                            if head.changed().await.is_err() {
                                return None;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "decision stream read failed");
                            return None;
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
