//! The HTTP edge: the connection loop and what it refuses before a handler runs.
//!
//! A client that is slow to send its headers is cut off by hyper's header read timeout, which
//! also ends idle keep-alive connections; a body that has not fully arrived within the body
//! timeout ends the request with 408; a body whose declared `Content-Length` exceeds its
//! route's limit is refused with 413 before a byte of it is read; a JSON route refuses another
//! `Content-Type` with 415. Only HTTP/1.1 is served: it is what every client of the API speaks,
//! and hyper's automatic HTTP/2 detection would read the first bytes with no timeout at all.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::problem::ApiError;
use super::AppState;

/// How the HTTP edge treats slow or oversized requests, and who may scrape `/metrics`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A connection must deliver a request's complete headers within this; it is also how
    /// long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// A request's body must have arrived completely within this, counted from its headers.
    pub body_timeout: Duration,
    /// Whether `/metrics` needs a token with the `monitor` or `admin` role.
    pub metrics_need_token: bool,
    /// A token that lives longer than this (`exp - iat`) is refused.
    pub max_token_lifetime: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            metrics_need_token: false,
            max_token_lifetime: crate::auth::DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish; dropping
/// the returned future cuts every connection still open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: back off instead of spinning, and keep
                // serving the connections already open.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for the routes that exist only for a caller on this machine.
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Sets the body deadline of every request, counted from when its headers were read.
pub async fn body_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    next.run(request.map(|body| Body::new(DeadlineBody::new(body, deadline))))
        .await
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: tokio::time::Instant) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
        }
    }
}

/// The body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body timeout")]
pub struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // The timer exists only for bodies that make a reader wait.
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (a body read failure as axum reports it) is the body timeout.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A route that takes a JSON body of at most `limit` bytes.
pub fn json(route: MethodRouter<AppState>, limit: usize) -> MethodRouter<AppState> {
    route
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(limit, check_json_body))
}

/// Refuses, before reading it, a body that declares more than the route's limit or that is
/// not JSON. A request without a body passes: some routes take an optional one.
async fn check_json_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    match refuse_body(request.headers(), limit) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    }
}

fn refuse_body(headers: &HeaderMap, limit: usize) -> Option<ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Some(ApiError::PayloadTooLarge(limit));
    }
    let has_body =
        declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return None;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match content_type {
        Some(ct) if is_json(ct) => None,
        other => Some(ApiError::UnsupportedMediaType(
            other.unwrap_or("none").to_owned(),
        )),
    }
}

/// `application/json` or any `application/*+json`, parameters (`; charset=utf-8`) allowed.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("application/jsonx"));
    }

    #[test]
    fn declared_length_and_type_are_judged_before_the_body() {
        let cl = header::CONTENT_LENGTH;
        let ct = header::CONTENT_TYPE;
        assert!(refuse_body(&headers(&[]), 10).is_none());
        assert!(refuse_body(&headers(&[(cl.clone(), "0")]), 10).is_none());
        assert!(matches!(
            refuse_body(
                &headers(&[(cl.clone(), "11"), (ct.clone(), "application/json")]),
                10
            ),
            Some(ApiError::PayloadTooLarge(10))
        ));
        assert!(matches!(
            refuse_body(
                &headers(&[(cl.clone(), "5"), (ct.clone(), "text/plain")]),
                10
            ),
            Some(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            refuse_body(&headers(&[(cl.clone(), "5")]), 10),
            Some(ApiError::UnsupportedMediaType(_))
        ));
        assert!(refuse_body(&headers(&[(cl, "5"), (ct, "application/json")]), 10).is_none());
    }
}
