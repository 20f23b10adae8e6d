//! Single orders handed by the leading replica's intake to its own sequencer, to be taken in
//! by the transaction that decides them.
//!
//! A single order taken in on its own costs two durable commits one after the other: intake's
//! (the order and its queue entry), then the round's (its decision). On the leader, intake
//! (`crate::intake`) gathers concurrent orders as before but hands them here instead of
//! writing them; the sequencer's next round takes them in on its own connection, in its own
//! transaction, as part of its fetch ([`storage::fetch_work`]), decides them (queueing only
//! those it cannot decide yet), and the round's commit makes them durable together with their
//! decisions. Each request is answered only after that commit, as before, so nothing
//! acknowledged can be lost.
//!
//! Nothing here may depend on the sequencer being prompt. A round that overlaps the next
//! (a backlog of batches) does not claim, and a leader may stop or step down: orders left
//! unclaimed for [`CLAIM_WITHIN`] are taken back and written by intake itself, as on a replica
//! that does not lead, and so are the orders of a round that failed. Taking back is safe even
//! when it is not known whether a failed round's commit landed: intake then finds each order's
//! idempotency key taken with the same body, and the request waits for that order's decision.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::storage::{Intake, NewOrder, StorageError};

/// How long orders handed to the sequencer wait to be claimed before intake takes them back.
/// A round of single orders takes a few ms; a round claims only when it is not overlapping the
/// next one, which under a backlog of batches can be seconds.
pub const CLAIM_WITHIN: Duration = Duration::from_millis(100);

/// Most orders one round takes in: the rest wait for the next round (or are taken back).
const MOST_PER_ROUND: usize = 2_000;

/// Where one order's intake result goes: the request that submitted it.
pub type Reply = oneshot::Sender<Result<Intake, Arc<StorageError>>>;

/// Orders gathered by intake, each with the request waiting for it.
pub struct Gathered {
    pub orders: Vec<NewOrder>,
    pub replies: Vec<Reply>,
}

impl Gathered {
    /// Answers each request with its order's result (`outcomes` in the orders' order).
    pub fn answer(self, outcomes: Vec<Intake>) {
        for (reply, outcome) in self.replies.into_iter().zip(outcomes) {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Answers every request with `error`.
    pub fn fail(self, error: StorageError) {
        let error = Arc::new(error);
        for reply in self.replies {
            let _ = reply.send(Err(Arc::clone(&error)));
        }
    }

    fn append(&mut self, mut other: Gathered) {
        self.orders.append(&mut other.orders);
        self.replies.append(&mut other.replies);
    }
}

/// The orders handed to this replica's sequencer and not yet claimed, oldest first.
#[derive(Default)]
pub struct Handoff {
    waiting: Mutex<Vec<(Instant, Gathered)>>,
    /// Wakes intake when orders come back (a failed round, a leader stepping down).
    returned: Notify,
}

impl Handoff {
    /// Hands `gathered` to the sequencer; the caller wakes it.
    pub fn hand(&self, gathered: Gathered) {
        self.lock().push((Instant::now() + CLAIM_WITHIN, gathered));
    }

    /// What the sequencer's round takes in: everything waiting, oldest first, up to
    /// `MOST_PER_ROUND` orders (a gathering is never split).
    pub fn claim(&self) -> Option<Gathered> {
        let mut waiting = self.lock();
        let mut count = 0;
        let mut taken = 0;
        for (_, gathered) in waiting.iter() {
            if taken > 0 && count + gathered.orders.len() > MOST_PER_ROUND {
                break;
            }
            count += gathered.orders.len();
            taken += 1;
        }
        merged(waiting.drain(..taken))
    }

    /// Gives orders the sequencer claimed but did not commit back to intake, at once.
    pub fn give_back(&self, gathered: Gathered) {
        self.lock().insert(0, (Instant::now(), gathered));
        self.returned.notify_one();
    }

    /// Gives everything still waiting back to intake (the replica no longer leads).
    pub fn give_all_back(&self) {
        let now = Instant::now();
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for (due, _) in waiting.iter_mut() {
            *due = now;
        }
        drop(waiting);
        self.returned.notify_one();
    }

    /// The orders intake takes back at `now`: those unclaimed past their time, or given back.
    pub fn take_back(&self, now: Instant) -> Option<Gathered> {
        let mut waiting = self.lock();
        let due = waiting.iter().take_while(|(due, _)| *due <= now).count();
        merged(waiting.drain(..due))
    }

    /// When the oldest waiting orders are due to be taken back.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().first().map(|(due, _)| *due)
    }

    /// Resolves when orders are given back.
    pub async fn returned(&self) {
        self.returned.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Gathered)>> {
        // A panic while holding this lock leaves a list of plain values, still sound.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The gatherings of `waiting`, in order, as one (`None` if there are none).
fn merged(waiting: impl Iterator<Item = (Instant, Gathered)>) -> Option<Gathered> {
    waiting
        .map(|(_, gathered)| gathered)
        .reduce(|mut all, gathered| {
            all.append(gathered);
            all
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer = oneshot::Receiver<Result<Intake, Arc<StorageError>>>;

    fn gathered(n: usize) -> (Gathered, Vec<Answer>) {
        let mut replies = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = oneshot::channel();
            replies.push(tx);
            answers.push(rx);
        }
        let orders = (0..n).map(order).collect();
        (Gathered { orders, replies }, answers)
    }

    fn order(i: usize) -> NewOrder {
        use crate::domain::{
            AssetId, AssetKey, ChainId, Instruction, Instrument, IssuerId, LegalBasis, OrderId,
            Target,
        };
        NewOrder {
            id: OrderId::new(),
            issuer: IssuerId::parse("US-SEC").unwrap(),
            idempotency_key: format!("k-{i}"),
            request_hash: [0; 32],
            target: Target {
                asset: AssetKey {
                    chain: ChainId::parse("ethereum").unwrap(),
                    asset: AssetId::parse("0xBOND").unwrap(),
                },
                holder: None,
            },
            body: crate::storage::OrderBody {
                legal_basis: LegalBasis {
                    instrument: Instrument::parse("court_order").unwrap(),
                    reference: "SEC v. Many".into(),
                },
                instruction: Instruction::Freeze { amount: None },
            },
        }
    }

    #[test]
    fn a_round_claims_whole_gatherings_oldest_first_up_to_its_limit() {
        let handoff = Handoff::default();
        let (a, _) = gathered(1_500);
        let (b, _) = gathered(600);
        let (c, _) = gathered(10);
        handoff.hand(a);
        handoff.hand(b);
        handoff.hand(c);
        assert_eq!(handoff.claim().map(|g| g.orders.len()), Some(1_500));
        assert_eq!(handoff.claim().map(|g| g.orders.len()), Some(610));
        assert!(handoff.claim().is_none());
    }

    #[test]
    fn a_gathering_larger_than_the_limit_is_still_claimed_whole() {
        let handoff = Handoff::default();
        let (a, _) = gathered(MOST_PER_ROUND + 1);
        handoff.hand(a);
        assert_eq!(
            handoff.claim().map(|g| g.orders.len()),
            Some(MOST_PER_ROUND + 1)
        );
    }

    #[test]
    fn unclaimed_orders_come_back_once_due_and_given_back_ones_at_once() {
        let handoff = Handoff::default();
        let (a, _) = gathered(2);
        handoff.hand(a);
        let now = Instant::now();
        assert!(handoff.take_back(now).is_none(), "not due yet");
        let due = handoff.next_due().expect("waiting");
        assert!(due > now && due <= now + CLAIM_WITHIN);
        assert_eq!(handoff.take_back(due).map(|g| g.orders.len()), Some(2));
        assert!(handoff.next_due().is_none());

        let (b, _) = gathered(3);
        handoff.give_back(b);
        assert_eq!(
            handoff.take_back(Instant::now()).map(|g| g.orders.len()),
            Some(3)
        );

        let (c, _) = gathered(4);
        handoff.hand(c);
        handoff.give_all_back();
        assert_eq!(
            handoff.take_back(Instant::now()).map(|g| g.orders.len()),
            Some(4)
        );
    }

    #[test]
    fn each_request_gets_its_own_orders_result() {
        let (g, mut answers) = gathered(2);
        g.answer(vec![Intake::UnknownAsset, Intake::KeyTaken]);
        assert!(matches!(
            answers[0].try_recv(),
            Ok(Ok(Intake::UnknownAsset))
        ));
        assert!(matches!(answers[1].try_recv(), Ok(Ok(Intake::KeyTaken))));
    }
}
