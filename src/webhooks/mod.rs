//! Webhooks to chains (SPEC §8): every chain learns every decision that concerns it, in order,
//! exactly as the ledger has it.
//!
//! - [`signing`]: Standard Webhooks secrets and signatures.
//! - [`guard`]: which URLs and addresses a delivery may reach (SSRF).
//! - [`retry`]: the backoff schedule and `Retry-After`.
//! - [`worker`]: the delivery worker; one per replica, one deliverer per subscription.
//! - [`series`]: the per-subscription metrics, and dropping those of deleted subscriptions.
//!
//! The decision log is the outbox: a subscription is only a cursor into it (see
//! [`crate::storage::webhooks`]), so a notification can never disagree with the decision.

pub mod guard;
pub mod payload;
pub mod retry;
pub mod series;
pub mod signing;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

pub use guard::UrlGuard;
pub use retry::RetrySchedule;

/// How a replica delivers webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub guard: UrlGuard,
    /// The whole HTTP request, connection included.
    pub timeout: Duration,
    pub schedule: RetrySchedule,
    /// How long a worker's claim on a subscription lasts without renewal; a killed worker's
    /// subscriptions are taken over after this.
    pub lease: Duration,
    /// How long the old secret keeps signing after a rotation, unless the request says.
    pub rotation_grace: Duration,
    /// How long delivery attempts stay in the log.
    pub attempts_retention: Duration,
    /// Whether this replica runs a delivery worker.
    pub deliver: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            guard: UrlGuard::default(),
            timeout: Duration::from_secs(10),
            schedule: RetrySchedule::default(),
            lease: Duration::from_secs(30),
            rotation_grace: Duration::from_secs(24 * 3600),
            attempts_retention: Duration::from_secs(7 * 24 * 3600),
            deliver: true,
        }
    }
}

impl WebhookConfig {
    /// A lease must outlast a request with room to renew, or two workers could overlap.
    pub fn check(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("the webhook timeout must be positive".into());
        }
        if self.lease < self.timeout * 2 + LEASE_MARGIN {
            return Err(format!(
                "the webhook lease ({:?}) must be at least twice the timeout ({:?}) plus {:?}",
                self.lease, self.timeout, LEASE_MARGIN
            ));
        }
        Ok(())
    }
}

/// Time kept in hand on a lease beyond the request timeout, for the renewal itself.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// The `webhook-id` of a decision's notification to a subscription: the same on every retry and
/// replay, so a receiver can deduplicate.
pub fn webhook_id(subscription: Uuid, seq: u64) -> String {
    format!("msg_{}_{seq}", subscription.simple())
}

/// The `type` of a decision notification.
pub const DECISION_EVENT: &str = "decision.recorded";

/// Admin changes to subscriptions made through this replica's API. Delivery tasks compare the
/// count before each send, so a rotation or replay takes effect at this replica's next
/// delivery; waiting tasks and the claim loop are woken. (Another replica's tasks learn of a
/// change when their next write is refused by its fence.)
#[derive(Debug, Default)]
pub struct Changes {
    count: AtomicU64,
    notify: Notify,
}

impl Changes {
    pub fn announce(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn seen(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}
