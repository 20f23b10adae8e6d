//! The hub: wakes the requests waiting for decisions, on every replica.
//!
//! A committed group announces its last sequence number with `NOTIFY`. Each replica listens,
//! moves its view of the ledger head (which long-polls and streams watch), and fetches the
//! decisions of the orders its own requests wait for. The sequencer also hands its records
//! straight to its own replica's hub, which saves the round trip. A periodic check of the head
//! covers notifications lost while the listening connection reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{oneshot, watch, Notify};

use crate::domain::ledger::SealedRecord;
use crate::domain::OrderId;
use crate::storage::{self, StorageError, DECISIONS_CHANNEL, INTAKE_CHANNEL};

/// A decision's exact record text, shared between the requests waiting for it.
pub type RecordText = Arc<str>;

pub struct Hub {
    waiters: Mutex<HashMap<OrderId, Vec<oneshot::Sender<RecordText>>>>,
    head: watch::Sender<u64>,
    /// This replica's sequencer leads: every decision reaches the hub through `deliver_local`,
    /// so notifications need no catching up.
    leading: AtomicBool,
}

impl Hub {
    pub fn new(head: u64) -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            head: watch::Sender::new(head),
            leading: AtomicBool::new(false),
        }
    }

    /// The last sequence number this replica knows to be committed; changes wake feed readers.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Registers interest in `order`'s decision. Register *before* the order can be decided
    /// (before intake, or before checking the database), so the decision cannot slip past.
    pub fn wait_for(self: &Arc<Self>, order: OrderId) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().entry(order).or_default().push(tx);
        Waiter {
            hub: Arc::clone(self),
            order,
            rx,
        }
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<OrderId, Vec<oneshot::Sender<RecordText>>>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resolve(&self, order: OrderId, record: &str) {
        let senders = self.lock_waiters().remove(&order);
        if let Some(senders) = senders {
            let record: RecordText = Arc::from(record);
            for tx in senders {
                let _ = tx.send(Arc::clone(&record));
            }
        }
    }

    fn advance(&self, seq: u64) {
        self.head.send_if_modified(|head| {
            let moved = seq > *head;
            *head = (*head).max(seq);
            moved
        });
    }

    /// This replica's sequencer has just taken the lead on `conn`. Taking it waited for the
    /// previous leader's last commit, so one catch-up now delivers everything decided before;
    /// from here on, every decision comes through [`Hub::deliver_local`].
    pub async fn lead(&self, conn: &mut sqlx::PgConnection, head: u64) -> Result<(), StorageError> {
        self.deliver_waiting(&mut *conn).await?;
        self.advance(head);
        self.leading.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Hands every waiting request whose order is decided its record.
    async fn deliver_waiting<'c>(&self, db: impl sqlx::PgExecutor<'c>) -> Result<(), StorageError> {
        let wanted: Vec<uuid::Uuid> = self.lock_waiters().keys().map(|o| o.as_uuid()).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for d in storage::decisions_for_orders(db, &wanted).await? {
            if let Some(order) = d.order_id {
                self.resolve(order, &d.record);
            }
        }
        Ok(())
    }

    /// This replica's sequencer no longer leads: decisions come from another replica again.
    pub fn follow(&self) {
        self.leading.store(false, Ordering::SeqCst);
    }

    /// Records committed by this replica's own sequencer.
    pub fn deliver_local(&self, records: &[SealedRecord]) {
        for s in records {
            if let crate::domain::Subject::Order { order_id } = s.record.subject {
                self.resolve(order_id, &s.text);
            }
        }
        if let Some(last) = records.last() {
            self.advance(last.record.seq);
        }
    }

    /// Ledger events committed by this replica's own sequencer: no order waits for them, but
    /// the head moved.
    pub fn recorded_events(&self, seq: u64) {
        self.advance(seq);
    }

    /// The ledger reached `seq` (announced by any replica): deliver what our waiters need.
    async fn catch_up(&self, pool: &PgPool, seq: u64) -> Result<(), StorageError> {
        if self.leading.load(Ordering::SeqCst) || seq <= *self.head.borrow() {
            // Our own sequencer's commit, already delivered by `deliver_local`.
            return Ok(());
        }
        self.deliver_waiting(pool).await?;
        self.advance(seq);
        Ok(())
    }

    /// Listens for intake and decision notifications until `shutdown`; wakes `intake` for the
    /// sequencer and catches up on decisions.
    pub async fn listen(
        self: Arc<Self>,
        pool: PgPool,
        intake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut listener = loop {
            match connect_listener(&pool).await {
                Ok(l) => break l,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for notifications; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                n = listener.recv() => match n {
                    Ok(n) if n.channel() == INTAKE_CHANNEL => intake.notify_one(),
                    Ok(n) => {
                        if let Ok(seq) = n.payload().parse::<u64>() {
                            if let Err(error) = self.catch_up(&pool, seq).await {
                                tracing::warn!(%error, "catching up on decisions failed");
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "notification connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tick.tick() => {
                    // Orders may have arrived, or decisions been made, while notifications
                    // were lost: look again.
                    intake.notify_one();
                    match storage::ledger_head(&pool).await {
                        Ok(head) if head.seq > *self.head.borrow() => {
                            if let Err(error) = self.catch_up(&pool, head.seq).await {
                                tracing::warn!(%error, "catching up on decisions failed");
                            }
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "reading the ledger head failed"),
                    }
                }
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([INTAKE_CHANNEL, DECISIONS_CHANNEL])
        .await?;
    Ok(listener)
}

/// Interest in one order's decision; dropping it withdraws the interest.
pub struct Waiter {
    hub: Arc<Hub>,
    order: OrderId,
    rx: oneshot::Receiver<RecordText>,
}

impl Waiter {
    /// The decision's record text, or `None` if it did not come within `bound`.
    pub async fn wait(mut self, bound: Duration) -> Option<RecordText> {
        tokio::time::timeout(bound, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        let mut waiters = self.hub.lock_waiters();
        if let Some(list) = waiters.get_mut(&self.order) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(&self.order);
            }
        }
    }
}
