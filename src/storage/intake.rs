//! Intake: orders written durably, each (issuer, idempotency key) once, before anything decides
//! them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{corrupt, registered, PendingOrder, StorageError};
use crate::domain::{Instruction, IssuerId, LegalBasis, Order, OrderId, OrderKind, Target};

/// An order to accept, before the database stamps its intake time.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: OrderId,
    pub issuer: IssuerId,
    pub idempotency_key: String,
    pub request_hash: [u8; 32],
    pub target: Target,
    pub body: OrderBody,
}

/// The part of an order stored as JSON: what it asks and on what legal basis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    pub legal_basis: LegalBasis,
    pub instruction: Instruction,
}

/// What intake did with one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Written durably and queued for the sequencer.
    Accepted {
        order: Box<Order>,
    },
    /// The issuer already used this idempotency key; `same_request` tells whether with this body.
    Existing {
        order_id: OrderId,
        same_request: bool,
    },
    /// An earlier item of the same call took this idempotency key with another body, and was not
    /// written either.
    KeyTaken,
    UnknownAsset,
    /// A RELEASE that names no order it could release: nothing is written.
    ReleaseRefused {
        releases: OrderId,
        why: String,
    },
}

/// Intake holds this advisory lock (shared) from before it reads the clock until it commits;
/// the sequencer takes it exclusively to read a clock that no uncommitted intake is behind.
pub(crate) const INTAKE_GATE: i64 = 0x5245_4749_4E54;

/// Whether an intake announces the orders it queued to every replica.
///
/// Announcing is a `NOTIFY regulator_intake`, and Postgres serializes every transaction that
/// notifies with one lock, held from before its commit until its WAL is flushed. The
/// sequencer's commit notifies too (the followers wait for it), so an intake that announced
/// put its commit in series with the sequencer's: neither could share the other's WAL flush.
/// On the leading replica, intake wakes its own sequencer in process instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// `NOTIFY regulator_intake` at commit, for a leader on another replica.
    Everyone,
    /// No notification: the accepting replica leads and wakes its sequencer in process. If it
    /// has just lost the lead, the new leader finds the orders on its next fetch (a new leader
    /// fetches at once, an idle one at least every `SequencerConfig::poll`).
    Nobody,
}

impl Announce {
    /// [`Announce::Nobody`] when this replica leads, else [`Announce::Everyone`].
    pub fn unless_leading(leading: bool) -> Self {
        if leading {
            Announce::Nobody
        } else {
            Announce::Everyone
        }
    }
}

/// Accepts `orders` in one transaction, all stamped with one database time, announcing them
/// as `announce` says when any is queued.
///
/// Orders whose asset is not registered, whose (issuer, idempotency key) was used before, or
/// that release an order they cannot release (none such, another target's, a RELEASE) are not
/// written; the result says which, item by item, in input order.
///
/// When several orders of one call share an (issuer, key), the first is the one intake
/// judges, always: the later copies get its result when their body is the same, and
/// [`Intake::Existing`] with `same_request: false` (or [`Intake::KeyTaken`]) when it is not.
/// Only the first is sent to the database, so which copy wins never depends on the plan.
pub async fn intake(
    pool: &PgPool,
    orders: &[NewOrder],
    announce: Announce,
) -> Result<Vec<Intake>, StorageError> {
    let mut conn = pool.acquire().await?;
    intake_on(&mut conn, orders, announce).await
}

/// [`intake`] on `conn`: in its own transaction, or in the one `conn` has open, where the
/// orders become durable only when it commits.
pub async fn intake_on(
    conn: &mut PgConnection,
    orders: &[NewOrder],
    announce: Announce,
) -> Result<Vec<Intake>, StorageError> {
    Ok(judge(conn, orders, announce, true).await?.0)
}

/// Takes the leading replica's own single orders in for the round open on `conn`, as
/// [`intake_on`] would but without queueing them: the round decides them from what this
/// returns beside each result (every accepted order, with its asset's attributes), and queues
/// only those it does not decide ([`queue_taken`]).
pub(crate) async fn take_in(
    conn: &mut PgConnection,
    orders: &[NewOrder],
) -> Result<(Vec<Intake>, Vec<PendingOrder>), StorageError> {
    // The leader wakes its own sequencer: this is that sequencer.
    let (outcomes, mut attributes) = judge(conn, orders, Announce::Nobody, false).await?;
    let mut accepted = Vec::new();
    for outcome in &outcomes {
        if let Intake::Accepted { order } = outcome {
            let (jurisdiction, class) = attributes
                .remove(&order.id.as_uuid())
                .ok_or_else(|| corrupt("an order taken in came back without its asset"))?;
            accepted.push(PendingOrder {
                asset: registered(order.target.asset.clone(), jurisdiction, class)?,
                order: (**order).clone(),
            });
        }
    }
    Ok((outcomes, accepted))
}

/// Queues orders `take_in` accepted that their round did not decide (their window is still
/// open, or the fetch limit cut it), in the round's transaction.
pub async fn queue_taken(conn: &mut PgConnection, orders: &[&Order]) -> Result<(), StorageError> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id.as_uuid()).collect();
    let chains: Vec<&str> = orders
        .iter()
        .map(|o| o.target.asset.chain.as_str())
        .collect();
    let assets: Vec<&str> = orders
        .iter()
        .map(|o| o.target.asset.asset.as_str())
        .collect();
    let stamps: Vec<DateTime<Utc>> = orders.iter().map(|o| o.intake_at).collect();
    sqlx::query(
        "INSERT INTO intake_queue (order_id, chain, asset, intake_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])",
    )
    .bind(&ids)
    .bind(&chains)
    .bind(&assets)
    .bind(&stamps)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every order's result, first of each (issuer, key) judged. Accepted orders are queued if
/// `queue`; if not, their assets' attributes (issuer jurisdiction, class) come back by order id.
async fn judge(
    conn: &mut PgConnection,
    orders: &[NewOrder],
    announce: Announce,
    queue: bool,
) -> Result<(Vec<Intake>, HashMap<Uuid, (String, String)>), StorageError> {
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut copy_of: Vec<Option<usize>> = Vec::with_capacity(orders.len());
    let mut firsts: Vec<&NewOrder> = Vec::with_capacity(orders.len());
    for (i, o) in orders.iter().enumerate() {
        match first_of.entry((o.issuer.as_str(), o.idempotency_key.as_str())) {
            std::collections::hash_map::Entry::Occupied(first) => copy_of.push(Some(*first.get())),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(i);
                copy_of.push(None);
                firsts.push(o);
            }
        }
    }
    let (judged, attributes) = intake_distinct(conn, &firsts, announce, queue).await?;
    let mut judged = judged.into_iter();
    let mut outcomes: Vec<Intake> = Vec::with_capacity(orders.len());
    for (i, copy) in copy_of.iter().enumerate() {
        let outcome = match copy {
            None => judged
                .next()
                .ok_or_else(|| corrupt("intake returned fewer outcomes than orders"))?,
            Some(first) => {
                let same = orders[*first].request_hash == orders[i].request_hash;
                match &outcomes[*first] {
                    Intake::Accepted { order } => Intake::Existing {
                        order_id: order.id,
                        same_request: same,
                    },
                    Intake::Existing {
                        order_id,
                        same_request,
                    } => Intake::Existing {
                        order_id: *order_id,
                        same_request: *same_request && same,
                    },
                    refused if same => refused.clone(),
                    _ => Intake::KeyTaken,
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok((outcomes, attributes))
}

/// [`judge`] of orders with distinct (issuer, key).
async fn intake_distinct(
    conn: &mut PgConnection,
    orders: &[&NewOrder],
    announce: Announce,
    queue: bool,
) -> Result<(Vec<Intake>, HashMap<Uuid, (String, String)>), StorageError> {
    let mut ids = Vec::with_capacity(orders.len());
    let mut issuers = Vec::with_capacity(orders.len());
    let mut keys = Vec::with_capacity(orders.len());
    let mut hashes = Vec::with_capacity(orders.len());
    let mut chains = Vec::with_capacity(orders.len());
    let mut assets = Vec::with_capacity(orders.len());
    let mut holders = Vec::with_capacity(orders.len());
    let mut kinds = Vec::with_capacity(orders.len());
    let mut bodies = Vec::with_capacity(orders.len());
    let mut releases = Vec::with_capacity(orders.len());
    for o in orders {
        ids.push(o.id.as_uuid());
        issuers.push(o.issuer.as_str().to_owned());
        keys.push(o.idempotency_key.clone());
        hashes.push(o.request_hash.to_vec());
        chains.push(o.target.asset.chain.as_str().to_owned());
        assets.push(o.target.asset.asset.as_str().to_owned());
        holders.push(o.target.holder.as_ref().map(|h| h.as_str().to_owned()));
        kinds.push(o.body.instruction.kind().as_str().to_owned());
        bodies.push(serde_json::to_string(&o.body).map_err(corrupt)?);
        releases.push(released(o).map(|r| r.as_uuid()));
    }
    let rows = sqlx::query(
        "WITH gate AS (SELECT pg_advisory_xact_lock_shared($10)),
         stamp AS (SELECT clock_timestamp() AS t FROM gate),
         input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $11::uuid[])
                 AS i(order_id, issuer, idempotency_key, request_hash, chain, asset, holder, kind,
                      body, releases)
         ),
         accepted AS (
             INSERT INTO orders (order_id, issuer, idempotency_key, request_hash, chain, asset,
                                 holder, kind, intake_at, body)
             SELECT i.order_id, i.issuer, i.idempotency_key, i.request_hash, i.chain, i.asset,
                    i.holder, i.kind, stamp.t, i.body::json
             FROM input i CROSS JOIN stamp
             WHERE EXISTS (SELECT 1 FROM assets a WHERE a.chain = i.chain AND a.asset = i.asset)
               -- A release must name an order on its own target that placed a hold.
               AND (i.releases IS NULL OR EXISTS (
                   SELECT 1 FROM orders r
                   WHERE r.order_id = i.releases AND r.chain = i.chain AND r.asset = i.asset
                     AND r.holder IS NOT DISTINCT FROM i.holder AND r.kind <> 'RELEASE'))
             ON CONFLICT (issuer, idempotency_key) DO NOTHING
             RETURNING order_id, chain, asset, intake_at
         ),
         queued AS (
             INSERT INTO intake_queue (order_id, chain, asset, intake_at)
             SELECT order_id, chain, asset, intake_at FROM accepted WHERE $14
         ),
         -- Read below only when an order was accepted (an uncorrelated subquery runs on the
         -- first row it is needed for), so nothing queued, nothing announced.
         announced AS (SELECT pg_notify($12, '') WHERE $13)
         -- The assets' attributes only for orders not queued (a round decides them from
         -- this); a queued order's are read with it when it is fetched.
         SELECT a.order_id, a.intake_at, (SELECT count(*) FROM announced),
                x.issuer_jurisdiction, x.asset_class
         FROM accepted a
         LEFT JOIN LATERAL (
             SELECT issuer_jurisdiction, asset_class FROM assets
             WHERE NOT $14 AND chain = a.chain AND asset = a.asset LIMIT 1) x ON true",
    )
    .bind(&ids)
    .bind(&issuers)
    .bind(&keys)
    .bind(&hashes)
    .bind(&chains)
    .bind(&assets)
    .bind(&holders)
    .bind(&kinds)
    .bind(&bodies)
    .bind(INTAKE_GATE)
    .bind(&releases)
    .bind(super::INTAKE_CHANNEL)
    .bind(announce == Announce::Everyone)
    .bind(queue)
    .fetch_all(&mut *conn)
    .await?;
    let accepted: HashMap<Uuid, DateTime<Utc>> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut attributes: HashMap<Uuid, (String, String)> = HashMap::new();
    if !queue {
        for r in &rows {
            let (jurisdiction, class): (Option<String>, Option<String>) =
                (r.try_get(3)?, r.try_get(4)?);
            if let (Some(jurisdiction), Some(class)) = (jurisdiction, class) {
                attributes.insert(r.try_get(0)?, (jurisdiction, class));
            }
        }
    }

    let mut outcomes = Vec::with_capacity(orders.len());
    let mut refused = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        match accepted.get(&o.id.as_uuid()) {
            Some(at) => outcomes.push(Intake::Accepted {
                order: Box::new(Order {
                    id: o.id,
                    issuer: o.issuer.clone(),
                    target: o.target.clone(),
                    legal_basis: o.body.legal_basis.clone(),
                    instruction: o.body.instruction.clone(),
                    intake_at: *at,
                }),
            }),
            None => {
                outcomes.push(Intake::UnknownAsset);
                refused.push(i);
            }
        }
    }
    if refused.is_empty() {
        return Ok((outcomes, attributes));
    }

    // Not written: the key was used before, the asset is unknown, or the release names
    // nothing it can release. Look the keys up, then the rest, to tell which.
    let issuers: Vec<&str> = refused.iter().map(|&i| orders[i].issuer.as_str()).collect();
    let keys: Vec<&str> = refused
        .iter()
        .map(|&i| orders[i].idempotency_key.as_str())
        .collect();
    let existing = sqlx::query(
        "SELECT o.issuer, o.idempotency_key, o.order_id, o.request_hash
         FROM orders o
         JOIN UNNEST($1::text[], $2::text[]) AS k(issuer, idempotency_key)
           ON o.issuer = k.issuer AND o.idempotency_key = k.idempotency_key",
    )
    .bind(&issuers)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let existing: HashMap<(String, String), (Uuid, Vec<u8>)> = existing
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    let mut unexplained = Vec::new();
    for i in refused {
        let o = orders[i];
        let key = (o.issuer.as_str().to_owned(), o.idempotency_key.clone());
        match existing.get(&key) {
            Some((id, hash)) => {
                outcomes[i] = Intake::Existing {
                    order_id: OrderId::from_uuid(*id),
                    same_request: hash.as_slice() == o.request_hash.as_slice(),
                }
            }
            None => unexplained.push(i),
        }
    }
    for i in unexplained {
        if let Some(releases) = released(orders[i]) {
            if let Some(why) = release_refusal(conn, orders[i], releases).await? {
                outcomes[i] = Intake::ReleaseRefused { releases, why };
            }
        }
    }
    Ok((outcomes, attributes))
}

fn released(order: &NewOrder) -> Option<OrderId> {
    match order.body.instruction {
        Instruction::Release { releases } => Some(releases),
        _ => None,
    }
}

/// Why `order` cannot release `releases`, or `None` when it could (its asset is then unknown).
async fn release_refusal(
    conn: &mut PgConnection,
    order: &NewOrder,
    releases: OrderId,
) -> Result<Option<String>, StorageError> {
    let asset_known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM assets WHERE chain = $1 AND asset = $2)")
            .bind(order.target.asset.chain.as_str())
            .bind(order.target.asset.asset.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if !asset_known {
        return Ok(None);
    }
    let named = sqlx::query("SELECT chain, asset, holder, kind FROM orders WHERE order_id = $1")
        .bind(releases.as_uuid())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(named) = named else {
        return Ok(Some(format!("order {releases} does not exist")));
    };
    let kind: String = named.try_get(3)?;
    if kind == OrderKind::Release.as_str() {
        return Ok(Some(format!(
            "order {releases} is a RELEASE, which places no hold; name the hold it released"
        )));
    }
    let (chain, asset, holder): (String, String, Option<String>) =
        (named.try_get(0)?, named.try_get(1)?, named.try_get(2)?);
    let target = match holder {
        Some(h) => format!("{chain}/{asset}?holder={h}"),
        None => format!("{chain}/{asset}"),
    };
    Ok(Some(format!(
        "order {releases} is on {target}, not on {}; a release names its hold's own target",
        order.target
    )))
}
