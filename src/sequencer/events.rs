//! What a leader decides with, and the ledger events it records: the policy version the ledger
//! says is active (loaded, or the first activation recorded), and the queued requests for
//! activations and subscription changes, settled as events in a round of their own.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{ActivePolicy, Leader, Sequencer, REQUESTS_PER_ROUND};
use crate::domain::event::{seal_event, EventRequest, LedgerEvent, SealedEvent, ENGINE_ACTOR};
use crate::domain::ledger::Head;
use crate::policy::Compiled;
use crate::storage::policy::Settled;
use crate::storage::{self, StorageError};

impl Sequencer {
    /// The version the ledger says is active, loaded. A ledger with no activation yet gets its
    /// first: the earliest stored version (the `policies/` directory `serve` imported).
    pub(super) async fn active_policy(
        &self,
        conn: &mut PgConnection,
        epoch: i64,
        head: Head,
        last_stamp: DateTime<Utc>,
    ) -> Result<(ActivePolicy, Head, DateTime<Utc>), StorageError> {
        if let Some(active) = storage::policy::active(&mut *conn).await? {
            let policy = self
                .load(conn, active.version)
                .await?
                .map_err(StorageError::NoPolicy)?;
            if policy.version.hash != active.hash {
                return Err(StorageError::Corrupt(format!(
                    "version {} hashes to {}, the ledger activated {}",
                    active.version, policy.version.hash, active.hash
                )));
            }
            return Ok((policy, head, last_stamp));
        }
        let policy = self.load(conn, 1).await?.map_err(|why| {
            StorageError::NoPolicy(format!(
                "{why} (`regulator serve` stores policies/ as version 1 on a new database)"
            ))
        })?;
        let mut to = head;
        let now = storage::db_now(&mut *conn).await?.max(last_stamp);
        let event = seal_event(
            LedgerEvent::PolicyActivated {
                active: policy.version.clone(),
                previous: None,
                rollback: false,
            },
            ENGINE_ACTOR,
            now,
            &mut to,
        )
        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let head = storage::policy::commit_events(conn, epoch, head, &[event], &[]).await?;
        tracing::info!(seq = head.seq, "first policy activation recorded");
        Ok((policy, head, now))
    }

    /// Version `version` compiled, or why it cannot decide.
    pub(super) async fn load(
        &self,
        conn: &mut PgConnection,
        version: u32,
    ) -> Result<Result<ActivePolicy, String>, StorageError> {
        let cached = self
            .loaded
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .filter(|p| p.version.version == version);
        if let Some(policy) = cached {
            return Ok(Ok(policy));
        }
        let Some(stored) = storage::policy::version(&mut *conn, version).await? else {
            return Ok(Err(format!("version {version} does not exist")));
        };
        let compiled = match Compiled::compile(stored.files) {
            Ok(compiled) => compiled,
            Err(errors) => return Ok(Err(format!("version {version} does not compile: {errors}"))),
        };
        if compiled.hash() != stored.info.hash {
            return Err(StorageError::Corrupt(format!(
                "version {version} is stored with hash {} but its files hash to {}",
                stored.info.hash,
                compiled.hash()
            )));
        }
        let policy = ActivePolicy {
            version: stored.info.reference(),
            engine: Arc::new(compiled.engine),
        };
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = Some(policy.clone());
        }
        Ok(Ok(policy))
    }

    /// Turns the queued requests into ledger events, in request order, in one commit.
    pub(super) async fn settle_requests(
        &self,
        leader: &mut Leader,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let pending =
            storage::policy::pending_requests(&mut leader.conn, REQUESTS_PER_ROUND).await?;
        let mut head = leader.head;
        let mut policy = leader.policy.clone();
        let mut events: Vec<SealedEvent> = Vec::new();
        let mut settled = Vec::new();
        for request in pending {
            let event = match request.request {
                Err(why) => Err(format!("the request does not parse: {why}")),
                Ok(EventRequest::Activate { version, rollback }) => {
                    if version == policy.version.version {
                        Err(format!("version {version} is already active"))
                    } else {
                        match self.load(&mut leader.conn, version).await? {
                            Ok(next) => {
                                let event = LedgerEvent::PolicyActivated {
                                    active: next.version.clone(),
                                    previous: Some(policy.version.clone()),
                                    rollback,
                                };
                                policy = next;
                                Ok(event)
                            }
                            Err(why) => Err(why),
                        }
                    }
                }
                Ok(EventRequest::Subscription {
                    subscription,
                    chain,
                    change,
                }) => Ok(LedgerEvent::SubscriptionChanged {
                    subscription,
                    chain,
                    change,
                }),
                Ok(EventRequest::Divergence(divergence)) => {
                    Ok(LedgerEvent::DivergenceDetected(divergence))
                }
            };
            match event {
                Ok(event) => {
                    metrics::counter!("regulator_ledger_events_total", "kind" => event.kind())
                        .increment(1);
                    let sealed = seal_event(event, &request.actor, now, &mut head)
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    settled.push((request.id, Settled::Recorded(events.len())));
                    events.push(sealed);
                }
                Err(why) => settled.push((request.id, Settled::Refused(why))),
            }
        }
        leader.head = storage::policy::commit_events(
            &mut leader.conn,
            leader.epoch,
            leader.head,
            &events,
            &settled,
        )
        .await?;
        if policy.version != leader.policy.version {
            tracing::info!(
                version = policy.version.version,
                hash = %policy.version.hash,
                "policy version activated"
            );
            if let Ok(mut loaded) = self.loaded.lock() {
                *loaded = Some(policy.clone());
            }
        }
        leader.policy = policy;
        self.hub.recorded_events(leader.head.seq);
        Ok(())
    }
}
