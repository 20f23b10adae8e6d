//! Intake for single orders: concurrent submissions share one insert and one commit.
//!
//! Each request still gets its answer only after its order is durable; while one insert is in
//! flight, the next requests gather behind it. Under load this turns hundreds of commits per
//! second into a few dozen, without adding delay when the engine is idle.
//!
//! On the leading replica the gathered orders are not written here: they are handed to its
//! sequencer, whose next round takes them in and decides them in one transaction (see
//! [`Handoff`]); what the sequencer does not take in time, or gives back, is written here.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::sequencer::{Gathered, Handoff, Reply};
use crate::storage::{self, Intake, NewOrder};

/// Most orders per shared insert.
const MAX_BATCH: usize = 1_000;

#[derive(Clone)]
pub struct IntakeQueue {
    tx: mpsc::Sender<(NewOrder, Reply)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Storage(#[from] Arc<storage::StorageError>),
    #[error("intake is shutting down")]
    Closed,
}

impl IntakeQueue {
    /// Starts the writer task. While `leading` says this replica leads, gathered orders go to
    /// its sequencer through `handoff` (and `accepted` wakes it); otherwise they are written
    /// here, and `accepted` is woken after every commit that queued orders, with the other
    /// replicas told (see [`storage::Announce`]).
    pub fn spawn(
        pool: PgPool,
        accepted: Arc<Notify>,
        leading: watch::Receiver<bool>,
        handoff: Arc<Handoff>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(pool, rx, accepted, leading, handoff));
        Self { tx }
    }

    /// Writes `order` durably (or finds why not) and returns what intake did.
    pub async fn submit(&self, order: NewOrder) -> Result<Intake, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((order, reply))
            .await
            .map_err(|_| IntakeError::Closed)?;
        answer
            .await
            .map_err(|_| IntakeError::Closed)?
            .map_err(IntakeError::from)
    }
}

async fn write_batches(
    pool: PgPool,
    mut rx: mpsc::Receiver<(NewOrder, Reply)>,
    accepted: Arc<Notify>,
    leading: watch::Receiver<bool>,
    handoff: Arc<Handoff>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let due = handoff.next_due();
        tokio::select! {
            received = rx.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    break;
                }
                let (orders, replies): (Vec<NewOrder>, Vec<Reply>) = batch.drain(..).unzip();
                let gathered = Gathered { orders, replies };
                if *leading.borrow() {
                    handoff.hand(gathered);
                    accepted.notify_one();
                } else {
                    // A leader elsewhere waits for the announcement.
                    write(&pool, gathered, storage::Announce::Everyone, &accepted).await;
                }
            }
            () = handoff.returned() => {}
            () = sleep_until(due), if due.is_some() => {}
        }
        // Whatever the sequencer did not take in time, or gave back: its replica may have just
        // lost the lead, so every replica is told.
        if let Some(back) = handoff.take_back(std::time::Instant::now()) {
            metrics::counter!("regulator_intake_taken_back_total")
                .increment(back.orders.len() as u64);
            write(&pool, back, storage::Announce::Everyone, &accepted).await;
        }
    }
}

async fn sleep_until(due: Option<std::time::Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Writes `gathered` in one intake statement and answers each request.
async fn write(pool: &PgPool, gathered: Gathered, announce: storage::Announce, accepted: &Notify) {
    match storage::intake(pool, &gathered.orders, announce).await {
        Ok(outcomes) => {
            if outcomes
                .iter()
                .any(|o| matches!(o, Intake::Accepted { .. }))
            {
                accepted.notify_one();
            }
            gathered.answer(outcomes);
        }
        Err(error) => gathered.fail(error),
    }
}
