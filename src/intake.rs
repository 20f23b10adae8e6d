//! Intake for single orders: concurrent submissions share one insert and one commit.
//!
//! Each request still gets its answer only after its order is durable; while one insert is in
//! flight, the next requests gather behind it. Under load this turns hundreds of commits per
//! second into a few dozen, without adding delay when the engine is idle.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::storage::{self, Intake, NewOrder};

/// Most orders per shared insert.
const MAX_BATCH: usize = 1_000;

type Reply = oneshot::Sender<Result<Intake, Arc<storage::StorageError>>>;

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
    /// Starts the writer task. `accepted` is woken after every commit that queued orders;
    /// while `leading` says this replica leads, that is the only wake-up (see
    /// [`storage::Announce`]).
    pub fn spawn(pool: PgPool, accepted: Arc<Notify>, leading: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(pool, rx, accepted, leading));
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
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (orders, replies): (Vec<NewOrder>, Vec<Reply>) = batch.drain(..).unzip();
        let announce = storage::Announce::unless_leading(*leading.borrow());
        match storage::intake(&pool, &orders, announce).await {
            Ok(outcomes) => {
                if outcomes
                    .iter()
                    .any(|o| matches!(o, Intake::Accepted { .. }))
                {
                    accepted.notify_one();
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(Arc::clone(&error)));
                }
            }
        }
    }
}
