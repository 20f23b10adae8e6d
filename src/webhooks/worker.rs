//! The delivery worker: each replica runs one; each subscription has at most one deliverer.
//!
//! The worker claims the leases of active subscriptions nobody holds and runs one task per
//! subscription. A task reads the chain's decisions after the subscription's cursor, sends them
//! one at a time, writing each attempt's row (`in_flight`) before it sends it; after the
//! attempt it records the outcome and moves the cursor (or schedules the retry) in one
//! statement that also renews the lease. A worker killed mid-stream so leaves a row for every
//! request it made, and its successor's resends are rows of their own. Every write is fenced on the lease and on the
//! cursor the task started from, so a takeover or an admin's replay stops it cleanly.
//!
//! The lease is what keeps two workers from delivering one subscription at once: a task sends
//! a request only while its lease has more time left than the request's timeout, and another
//! worker may claim only an expired lease. The cursor moves only after a 2xx, so a worker killed
//! mid-request leaves that decision to be delivered again by its successor: at least once, in
//! order, never skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics::{counter, gauge, histogram};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::payload::payload;
use super::retry::parse_retry_after;
use super::signing::{signature_header, Secret};
use super::{webhook_id, Changes, WebhookConfig, LEASE_MARGIN};
use crate::storage::webhooks::delivery::{self as store, NewAttempt, Pending, Settle};
use crate::storage::webhooks::{AttemptOutcome, Subscription, SubscriptionStatus};
use crate::storage::StorageError;

/// Decisions read from the log at a time.
const FETCH: i64 = 256;
/// Subscriptions one worker claims at a time.
const CLAIM_LIMIT: i64 = 64;
/// The most of a response body read (and logged, up to 200 characters) before it is dropped.
const RESPONSE_LIMIT: usize = 16 * 1024;
/// Most deliveries written to the database in one statement.
const SAVE_BATCH: usize = 128;
/// Longest a delivered attempt waits to be written, while deliveries continue.
const SAVE_EVERY: Duration = Duration::from_millis(20);
/// Lag in decisions is counted up to this many.
const BACKLOG_CAP: i64 = 1_000_000;

/// One replica's delivery worker.
pub struct Worker {
    pool: PgPool,
    client: reqwest::Client,
    config: WebhookConfig,
    /// This worker's identity on the leases it holds.
    owner: Uuid,
    /// The replica's view of the ledger head: wakes idle tasks when decisions are committed.
    head: watch::Receiver<u64>,
    /// Rung by this replica's API when a subscription is created, enabled or replayed.
    wake: Arc<Changes>,
}

/// A subscription as its delivery task last read it, and when.
struct Held {
    sub: Subscription,
    /// When the last write that renewed the lease was sent.
    renewed_at: Instant,
    /// When the next attempt may start (backoff).
    retry_at: Instant,
    /// The count of this replica's admin changes when `sub` was read.
    seen: u64,
}

/// The writes a delivery task makes; each also renews its lease.
enum Write<'a> {
    Renew,
    /// Deliveries answered 2xx, moving the cursor to the seq given.
    Delivered(&'a [NewAttempt], u64),
    /// A failed attempt (after any unsaved deliveries) and where it leaves the subscription.
    Failed(&'a [NewAttempt], Settle),
}

/// What became of one attempt.
enum Verdict {
    Delivered,
    Gone,
    Failed { retry_after: Option<Duration> },
}

impl Worker {
    pub fn new(
        pool: PgPool,
        config: WebhookConfig,
        head: watch::Receiver<u64>,
        wake: Arc<Changes>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect could lead anywhere, including past the address guard.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(config.guard.resolver())
            .no_proxy()
            .user_agent(concat!("regulator-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            pool,
            client,
            config,
            owner: Uuid::new_v4(),
            head,
            wake,
        })
    }

    /// This worker's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Claims and delivers subscriptions until `shutdown`; then gives its leases up so another
    /// replica takes over at once. Dropping the future (a crash) aborts every delivery and
    /// leaves the leases to expire.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let worker = Arc::new(self);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        let tick = (worker.config.lease / 3).min(Duration::from_secs(1));
        let mut pruned_at: Option<Instant> = None;
        let mut lag_at: Option<Instant> = None;
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                running.remove(&finished(done));
            }
            let busy: Vec<Uuid> = running.values().copied().collect();
            match store::claim(
                &worker.pool,
                worker.owner,
                worker.config.lease,
                &busy,
                CLAIM_LIMIT,
            )
            .await
            {
                Ok(claimed) => {
                    for subscription in claimed {
                        let task = Arc::clone(&worker).deliver(subscription, shutdown.clone());
                        let handle = tasks.spawn(task);
                        running.insert(handle.id(), subscription);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim webhook subscriptions"),
            }
            if pruned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
                pruned_at = Some(Instant::now());
                // Its own task: a long prune must not hold up claiming.
                tasks.spawn(Arc::clone(&worker).prune());
            }
            if lag_at.is_none_or(|at| at.elapsed() > LAG_INTERVAL) {
                lag_at = Some(Instant::now());
                worker.report_lags().await;
            }
            if stopping(&shutdown) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = worker.wake.notified() => {}
                _ = shutdown.changed() => {}
                // A task that stopped for an admin's change is claimed again at once.
                Some(done) = tasks.join_next_with_id() => {
                    running.remove(&finished(done));
                }
            }
        }
        // Tasks see the shutdown too and stop between attempts. An attempt in flight gets a
        // little time, within the replica's shutdown grace, so the leases can be given up.
        let deadline =
            tokio::time::Instant::now() + worker.config.timeout.min(Duration::from_secs(3));
        while tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_ok_and(|next| next.is_some())
        {}
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Err(error) = store::release(&worker.pool, worker.owner).await {
            tracing::warn!(%error, "cannot release webhook leases; they will expire");
        }
    }

    /// Sets the lag gauges of every subscription from the database, whoever delivers it, so a
    /// paused or disabled subscription shows how far behind it is.
    async fn report_lags(&self) {
        match store::lags(&self.pool, BACKLOG_CAP).await {
            Ok(lags) => {
                super::series::keep_only(&lags.iter().map(|l| l.id).collect());
                for lag in lags {
                    let label = lag.id.to_string();
                    gauge!("regulator_webhook_lag_decisions", "subscription" => label.clone())
                        .set(lag.decisions as f64);
                    gauge!("regulator_webhook_lag_seconds", "subscription" => label)
                        .set(lag.seconds);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot measure webhook lag"),
        }
    }

    async fn prune(self: Arc<Self>) {
        let retention = chrono::Duration::from_std(self.config.attempts_retention)
            .unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        match store::prune_attempts(&self.pool, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned old webhook attempts"),
            Err(error) => tracing::warn!(%error, "cannot prune webhook attempts"),
        }
    }

    async fn deliver(self: Arc<Self>, subscription: Uuid, shutdown: watch::Receiver<bool>) {
        if let Err(error) = self.deliver_until_stopped(subscription, shutdown).await {
            tracing::warn!(%subscription, %error, "webhook delivery interrupted; it resumes at the next claim");
            // Not straight back: the claim loop retries at once when a task ends.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Delivers one subscription while this worker holds its lease and it stays active.
    ///
    /// 2xx answers are written to the database in batches (up to [`SAVE_BATCH`] of them, or
    /// every [`SAVE_EVERY`], and always before idling, backing off or renewing), so the
    /// database round trip does not cap the delivery rate. Until a batch is written, the
    /// cursor in the database trails what was delivered; a crash then re-sends at most that
    /// batch, in order, with the same ids: at least once.
    async fn deliver_until_stopped(
        &self,
        id: Uuid,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let label = id.to_string();
        super::series::labelled(id);
        let lease = self.config.lease;
        let mut head = self.head.clone();
        let Some(mut held) = self.first_hold(id).await? else {
            return Ok(());
        };
        let mut queue: VecDeque<Pending> = VecDeque::new();
        // The last seq delivered: the queue continues after it.
        let mut queued_after = held.sub.cursor_seq;
        let mut backlog: u64 = 0;
        // Deliveries answered 2xx whose attempts and cursor are not written yet.
        let mut unsaved: Vec<NewAttempt> = Vec::new();
        let mut unsaved_since = Instant::now();
        loop {
            if stopping(&shutdown) {
                if !unsaved.is_empty() {
                    self.write(id, &mut held, Write::Delivered(&unsaved, queued_after))
                        .await?;
                }
                return Ok(());
            }
            // An admin's replay moves the cursor under us: start again from where it points.
            // (`held` is read afresh only when nothing is unsaved.)
            if unsaved.is_empty() && held.sub.cursor_seq != queued_after {
                queue.clear();
                queued_after = held.sub.cursor_seq;
            }
            if queue.is_empty() {
                if !unsaved.is_empty() {
                    let saved = Write::Delivered(&unsaved, queued_after);
                    if !self.write(id, &mut held, saved).await? {
                        return Ok(());
                    }
                    unsaved.clear();
                    continue;
                }
                head.borrow_and_update();
                queue = store::pending(&self.pool, &held.sub.chain, queued_after, FETCH)
                    .await?
                    .into();
                backlog = if (queue.len() as i64) < FETCH {
                    queue.len() as u64
                } else {
                    store::backlog(&self.pool, &held.sub.chain, queued_after, BACKLOG_CAP).await?
                };
                gauge!("regulator_webhook_lag_decisions", "subscription" => label.clone())
                    .set(backlog as f64);
                if queue.is_empty() {
                    gauge!("regulator_webhook_lag_seconds", "subscription" => label.clone())
                        .set(0.0);
                    // Idle until a decision is committed. A new decision goes straight to
                    // delivery; anything else (an admin's change, time passing) renews first,
                    // which also reads the change.
                    let decided = tokio::select! {
                        changed = head.changed() => changed.is_ok(),
                        _ = tokio::time::sleep(lease / 3) => false,
                        _ = self.wake.notified() => false,
                        _ = shutdown.changed() => false,
                    };
                    if (!decided || held.renewed_at.elapsed() > lease / 3)
                        && !self.write(id, &mut held, Write::Renew).await?
                    {
                        return Ok(());
                    }
                    continue;
                }
            }
            let Some(next) = queue.front() else {
                continue;
            };
            let lag = (Utc::now() - next.decided_at).to_std().unwrap_or_default();
            gauge!("regulator_webhook_lag_seconds", "subscription" => label.clone())
                .set(lag.as_secs_f64());

            // Backoff after a failure (which wrote everything before it), measured on this
            // machine's monotonic clock from the wait the database computed: the two hosts'
            // wall clocks may disagree.
            let backoff = held.retry_at.saturating_duration_since(Instant::now());
            if !backoff.is_zero() && unsaved.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.min(lease / 3)) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                if !self.write(id, &mut held, Write::Renew).await? {
                    return Ok(());
                }
                continue;
            }

            // The request must end while the lease is still ours, and be signed and addressed
            // as the subscription now stands after an admin's change on this replica.
            if held.renewed_at.elapsed() + self.config.timeout + LEASE_MARGIN > lease
                || self.wake.seen() != held.seen
            {
                let write = if unsaved.is_empty() {
                    Write::Renew
                } else {
                    Write::Delivered(&unsaved, queued_after)
                };
                if !self.write(id, &mut held, write).await? {
                    return Ok(());
                }
                unsaved.clear();
                continue;
            }
            let lease_left = lease.saturating_sub(held.renewed_at.elapsed() + LEASE_MARGIN);
            let attempt = held.sub.attempts + 1;
            let (logged, verdict) = self
                .attempt(
                    &held.sub,
                    next,
                    attempt,
                    self.config.timeout.min(lease_left),
                )
                .await?;
            counter!("regulator_webhook_attempts_total",
                "subscription" => label.clone(), "outcome" => logged.outcome.as_str())
            .increment(1);

            if let Verdict::Delivered = verdict {
                histogram!("regulator_webhook_delivery_lag_seconds")
                    .record((Utc::now() - next.decided_at).as_seconds_f64().max(0.0));
                queued_after = next.seq;
                // The next decision starts counting afresh (the database learns at the save).
                held.sub.attempts = 0;
                queue.pop_front();
                backlog = backlog.saturating_sub(1);
                if unsaved.is_empty() {
                    unsaved_since = Instant::now();
                }
                unsaved.push(logged);
                if unsaved.len() >= SAVE_BATCH || unsaved_since.elapsed() >= SAVE_EVERY {
                    let saved = Write::Delivered(&unsaved, queued_after);
                    if !self.write(id, &mut held, saved).await? {
                        return Ok(());
                    }
                    unsaved.clear();
                }
                continue;
            }

            counter!("regulator_webhook_failures_total", "subscription" => label.clone())
                .increment(1);
            tracing::info!(subscription = %id, seq = next.seq, attempt,
                outcome = logged.outcome.as_str(), error = logged.error.as_deref().unwrap_or(""),
                "webhook attempt failed");
            let (status, status_reason, failed_seq, retry_in) = match verdict {
                Verdict::Gone => (
                    SubscriptionStatus::Disabled,
                    Some(format!(
                        "the receiver answered 410 Gone to the delivery of seq {}",
                        next.seq
                    )),
                    None,
                    Duration::ZERO,
                ),
                _ if logged.outcome == AttemptOutcome::Exhausted => (
                    SubscriptionStatus::Paused,
                    Some(format!(
                        "the delivery of seq {} failed {attempt} times; the last attempt: {}",
                        next.seq,
                        logged.error.as_deref().unwrap_or("no answer")
                    )),
                    Some(next.seq),
                    Duration::ZERO,
                ),
                Verdict::Failed { retry_after } => (
                    SubscriptionStatus::Active,
                    None,
                    None,
                    self.config
                        .schedule
                        .next_delay(attempt, retry_after, rand::thread_rng().gen())
                        .unwrap_or_default(),
                ),
                Verdict::Delivered => continue,
            };
            unsaved.push(logged);
            let settle = Settle {
                from_cursor: held.sub.cursor_seq,
                generation: held.sub.generation,
                cursor: queued_after,
                attempts: attempt,
                retry_in,
                status,
                status_reason,
                failed_seq,
            };
            let still_ours = self
                .write(id, &mut held, Write::Failed(&unsaved, settle))
                .await?;
            unsaved.clear();
            if !still_ours || held.sub.status != SubscriptionStatus::Active {
                return Ok(());
            }
        }
    }

    /// Takes up a claimed subscription: renews its lease and reads it.
    async fn first_hold(&self, id: Uuid) -> Result<Option<Held>, StorageError> {
        let (started, seen) = (Instant::now(), self.wake.seen());
        let fresh = store::renew(&self.pool, id, self.owner, self.config.lease).await?;
        Ok(fresh.map(|sub| Held {
            retry_at: Instant::now() + sub.retry_wait,
            sub,
            renewed_at: started,
            seen,
        }))
    }

    /// Makes one write (each renews the lease) and holds the subscription it returns; `false`
    /// when the subscription is no longer this task's to deliver.
    async fn write(
        &self,
        id: Uuid,
        held: &mut Held,
        write: Write<'_>,
    ) -> Result<bool, StorageError> {
        let lease = self.config.lease;
        let (started, seen) = (Instant::now(), self.wake.seen());
        let fresh = match write {
            Write::Renew => store::renew(&self.pool, id, self.owner, lease).await?,
            Write::Delivered(delivered, cursor) => {
                self.save_delivered(id, &held.sub, delivered, cursor)
                    .await?
            }
            Write::Failed(attempts, settle) => {
                store::settle(&self.pool, id, self.owner, lease, attempts, &settle).await?
            }
        };
        let Some(sub) = fresh else {
            return Ok(false);
        };
        held.retry_at = Instant::now() + sub.retry_wait;
        held.sub = sub;
        held.renewed_at = started;
        held.seen = seen;
        Ok(true)
    }

    /// Writes delivered attempts and moves the cursor to `cursor`.
    ///
    /// If an admin changed the subscription meanwhile without moving its cursor (a rotation,
    /// say), the write is refused by its fence; the deliveries stand, so it is made again
    /// against the changed subscription rather than sending them twice.
    async fn save_delivered(
        &self,
        id: Uuid,
        sub: &Subscription,
        delivered: &[NewAttempt],
        cursor: u64,
    ) -> Result<Option<Subscription>, StorageError> {
        let lease = self.config.lease;
        let mut settle = Settle {
            from_cursor: sub.cursor_seq,
            generation: sub.generation,
            cursor,
            attempts: 0,
            retry_in: Duration::ZERO,
            status: SubscriptionStatus::Active,
            status_reason: None,
            failed_seq: None,
        };
        if let Some(saved) =
            store::settle(&self.pool, id, self.owner, lease, delivered, &settle).await?
        {
            return Ok(Some(saved));
        }
        match store::renew(&self.pool, id, self.owner, lease).await? {
            Some(now) if now.cursor_seq == sub.cursor_seq => {
                settle.generation = now.generation;
                // The attempts were logged by the refused write already.
                store::settle(&self.pool, id, self.owner, lease, &[], &settle).await
            }
            _ => Ok(None),
        }
    }

    /// Sends one decision once, and says what came of it.
    async fn attempt(
        &self,
        sub: &Subscription,
        decision: &Pending,
        attempt: u32,
        timeout: Duration,
    ) -> Result<(NewAttempt, Verdict), StorageError> {
        let webhook_id = webhook_id(sub.id, decision.seq);
        let attempted_at = Utc::now();
        // Logged before it is sent: a worker killed during the request, or before it saves the
        // outcome, still leaves its row (`in_flight`).
        let row = store::begin_attempt(
            &self.pool,
            sub.id,
            self.owner,
            &webhook_id,
            decision.seq,
            attempt,
            attempted_at,
        )
        .await?;
        let started = Instant::now();
        // A record that cannot be sent fails like an unanswered request, so it is retried,
        // logged, and finally pauses the subscription instead of stalling it unseen.
        let outcome = match payload(decision) {
            Ok(body) => self.send(sub, &webhook_id, body, timeout).await,
            Err(e) => (
                Verdict::Failed { retry_after: None },
                None,
                Some(format!("the stored record cannot be sent: {e}")),
            ),
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        histogram!("regulator_webhook_attempt_duration_seconds").record(latency_ms / 1000.0);
        let (verdict, response_status, error) = outcome;
        let outcome = match verdict {
            Verdict::Delivered => AttemptOutcome::Delivered,
            Verdict::Gone => AttemptOutcome::Gone,
            Verdict::Failed { .. } if attempt >= self.config.schedule.attempts() => {
                AttemptOutcome::Exhausted
            }
            Verdict::Failed { .. } => AttemptOutcome::Failed,
        };
        Ok((
            NewAttempt {
                row,
                webhook_id,
                seq: decision.seq,
                attempt,
                attempted_at,
                outcome,
                response_status,
                latency_ms,
                error,
            },
            verdict,
        ))
    }

    async fn send(
        &self,
        sub: &Subscription,
        webhook_id: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> (Verdict, Option<u16>, Option<String>) {
        let failed = |error: String| (Verdict::Failed { retry_after: None }, None, Some(error));
        // The allowlist may have changed since the subscription was created.
        let url = match self.config.guard.check(&sub.url) {
            Ok(url) => url,
            Err(refused) => return failed(format!("refused by the URL guard: {refused}")),
        };
        let mut secrets = Vec::with_capacity(2);
        // `sub` may have been read a while ago: the grace period can end in between.
        let previous = sub.previous_secret.as_ref().filter(|_| {
            sub.previous_secret_expires_at
                .is_some_and(|t| t > Utc::now())
        });
        for text in std::iter::once(&sub.secret).chain(previous) {
            match Secret::parse(text) {
                Ok(secret) => secrets.push(secret),
                Err(e) => return failed(format!("the stored secret does not parse: {e}")),
            }
        }
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(&secrets, webhook_id, timestamp, &body);
        let response = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return failed(error_chain(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // Read a little of the body so the connection can be reused, and for the log.
        let mut text = Vec::new();
        while text.len() < RESPONSE_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let code = Some(status.as_u16());
        if status.is_success() {
            (Verdict::Delivered, code, None)
        } else if status == reqwest::StatusCode::GONE {
            (Verdict::Gone, code, Some("HTTP 410 Gone".into()))
        } else {
            let snippet: String = String::from_utf8_lossy(&text).chars().take(200).collect();
            let error = if snippet.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", snippet.trim())
            };
            (Verdict::Failed { retry_after }, code, Some(error))
        }
    }
}

/// The id of a finished task, which the running map is keyed by.
fn finished(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => id,
        Err(e) => {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "a webhook delivery task failed");
            }
            e.id()
        }
    }
}

/// Shutting down: asked to, or the replica that owns the signal is gone.
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// How often every subscription's lag is measured from the database.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// The error and its causes, which is where reqwest says "connection refused" or "timed out".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
