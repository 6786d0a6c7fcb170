//! Several kernel nodes on one PostgreSQL database (DESIGN §12).
//!
//! The database already makes the durable state shared: history, control blocks and
//! leases (a compare-and-set on the session's revision). This module adds what nodes
//! need from each other at run time:
//!
//! - **Membership.** Each node writes its id, advertised URL and a heartbeat to `nodes`;
//!   a node whose heartbeat is older than a lease lifetime is presumed dead.
//! - **Events.** Every local event is published on the `aos_events` channel
//!   (`NOTIFY`); every node listens and republishes the others' events on its own bus,
//!   so a client of node A sees what node B did. A payload too large for `NOTIFY` is
//!   written to `event_spill` and only its id is sent; receivers fetch it by id.
//!   Interrupts travel the same way: a node that sees `session.interrupted` for a
//!   session it runs stops that dispatch.
//! - **Recovery.** Every node sweeps for sessions whose lease expired (their node died
//!   or hung): it takes the session over, writes the interrupt fact, settles the dead
//!   node's dispatch records and returns the session to idle. Dispatches other nodes
//!   queued for such a session then run on the node that next takes its lease.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aos_sdk::protocol::{Event, NodeInfo, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::Published;
use crate::kernel::Kernel;
use crate::react::StopReason;

/// The `LISTEN/NOTIFY` channel events travel on.
const CHANNEL: &str = "aos_events";
/// Largest payload sent inline: PostgreSQL refuses `NOTIFY` payloads of 8000 bytes or
/// more.
const INLINE_MAX: usize = 7000;
/// Events sent in one round trip at most.
const BATCH: usize = 256;
/// How long spilled payloads are kept for slow receivers.
const SPILL_KEEP: Duration = Duration::from_secs(600);

/// One node's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pool: PgPool,
    node_id: String,
    url: OnceLock<String>,
    /// Ends the relay once the kernel has emitted its last event.
    stop: CancellationToken,
}

/// What travels on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    /// Sending node.
    n: String,
    /// Per-sender counter: keeps payloads distinct (PostgreSQL folds identical
    /// payloads sent in one transaction into one).
    q: u64,
    /// The event itself, or the `event_spill` row holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<i64>,
}

impl Cluster {
    pub fn new(pool: PgPool, node_id: &str) -> Self {
        Self {
            pool,
            node_id: node_id.to_owned(),
            url: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The URL this node advertised.
    pub fn url(&self) -> Option<&str> {
        self.url.get().map(String::as_str)
    }

    /// Registers this node (at `url`) and starts its heartbeat, event relay, listener
    /// and recovery sweep. Events emitted from now on reach the other nodes.
    pub async fn join(kernel: &Arc<Kernel>, url: String) -> Result<(), sqlx::Error> {
        let Some(cluster) = kernel.cluster.as_ref() else {
            return Ok(());
        };
        let _ = cluster.url.set(url.clone());
        let now = Timestamp::now().as_millis();
        sqlx::query(
            "INSERT INTO nodes (node_id, url, started_at, heartbeat_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (node_id) DO UPDATE SET url = $2, started_at = $3, heartbeat_at = $3",
        )
        .bind(&cluster.node_id)
        .bind(&url)
        .bind(now)
        .execute(&cluster.pool)
        .await?;
        // Listen before relaying anything, so no event of another node that follows
        // one of ours is missed.
        let mut listener = PgListener::connect_with(&cluster.pool).await?;
        listener.listen(CHANNEL).await?;
        let (out, queue) = mpsc::unbounded_channel();
        kernel.events.set_relay(&cluster.node_id, out);
        let tasks = &kernel.tasks;
        tasks.spawn(relay(kernel.clone(), queue));
        tasks.spawn(listen(kernel.clone(), listener));
        tasks.spawn(heartbeat(kernel.clone()));
        tasks.spawn(sweep(kernel.clone()));
        tracing::info!(node = %cluster.node_id, %url, "joined the cluster");
        Ok(())
    }

    /// Every registered node, this one included.
    pub async fn nodes(&self, lease_ttl: Duration) -> Result<Vec<NodeInfo>, sqlx::Error> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT node_id, url, started_at, heartbeat_at FROM nodes ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let alive_after = Timestamp::now().as_millis() - lease_ttl.as_millis() as i64;
        Ok(rows
            .into_iter()
            .map(|(node_id, url, started, heartbeat)| NodeInfo {
                node_id,
                url,
                started_at: Timestamp::from_millis(started),
                heartbeat_at: Timestamp::from_millis(heartbeat),
                alive: heartbeat > alive_after,
            })
            .collect())
    }

    /// One node, if it is registered.
    pub async fn node(
        &self,
        node_id: &str,
        lease_ttl: Duration,
    ) -> Result<Option<NodeInfo>, sqlx::Error> {
        Ok(self
            .nodes(lease_ttl)
            .await?
            .into_iter()
            .find(|n| n.node_id == node_id))
    }

    /// Marks this node gone (clean shutdown), so others stop routing to it at once,
    /// and ends the relay after sending what is queued.
    pub async fn leave(&self) {
        self.stop.cancel();
        let result = sqlx::query("UPDATE nodes SET heartbeat_at = 0 WHERE node_id = $1")
            .bind(&self.node_id)
            .execute(&self.pool)
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "could not deregister this node");
        }
    }
}

/// Sends local events to the channel, batching whatever is queued into one round
/// trip; large payloads go to `event_spill` first.
async fn relay(kernel: Arc<Kernel>, mut queue: mpsc::UnboundedReceiver<Arc<Published>>) {
    let Some(cluster) = kernel.cluster.as_ref() else {
        return;
    };
    let mut counter: u64 = 0;
    let mut batch: Vec<Arc<Published>> = Vec::with_capacity(BATCH);
    let mut last_cleanup = tokio::time::Instant::now();
    loop {
        tokio::select! {
            received = queue.recv() => match received {
                Some(first) => batch.push(first),
                None => return,
            },
            () = cluster.stop.cancelled() => {
                // Flush what is already queued (the kernel's own shutdown events).
                while let Ok(event) = queue.try_recv() {
                    batch.push(event);
                }
                if !batch.is_empty() {
                    send_batch(cluster, &mut counter, &batch).await;
                }
                return;
            }
        }
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        send_batch(cluster, &mut counter, &batch).await;
        batch.clear();
        if last_cleanup.elapsed() > Duration::from_secs(60) {
            last_cleanup = tokio::time::Instant::now();
            let before = Timestamp::now().as_millis() - SPILL_KEEP.as_millis() as i64;
            if let Err(error) = sqlx::query("DELETE FROM event_spill WHERE created_at < $1")
                .bind(before)
                .execute(&cluster.pool)
                .await
            {
                tracing::warn!(%error, "cleaning up spilled events failed");
            }
        }
    }
}

async fn send_batch(cluster: &Cluster, counter: &mut u64, batch: &[Arc<Published>]) {
    let mut payloads = Vec::with_capacity(batch.len());
    for published in batch {
        *counter += 1;
        let mut notice = Notice {
            n: cluster.node_id.clone(),
            q: *counter,
            e: Some(published.event.clone()),
            s: None,
        };
        let mut text = serde_json::to_string(&notice).unwrap_or_default();
        if text.len() > INLINE_MAX {
            let spilled: Result<(i64,), _> = sqlx::query_as(
                "INSERT INTO event_spill (created_at, body) VALUES ($1, $2) RETURNING spill_id",
            )
            .bind(Timestamp::now().as_millis())
            .bind(&published.json)
            .fetch_one(&cluster.pool)
            .await;
            match spilled {
                Ok((id,)) => {
                    notice.e = None;
                    notice.s = Some(id);
                    text = serde_json::to_string(&notice).unwrap_or_default();
                }
                Err(error) => {
                    tracing::warn!(%error, event = %published.name, "could not spill a large event; other nodes miss it");
                    continue;
                }
            }
        }
        payloads.push(text);
    }
    if payloads.is_empty() {
        return;
    }
    // One statement, so the notifications arrive in this order.
    let sent = sqlx::query(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i",
    )
    .bind(CHANNEL)
    .bind(&payloads)
    .execute(&cluster.pool)
    .await;
    if let Err(error) = sent {
        tracing::warn!(%error, events = payloads.len(), "relaying events to other nodes failed");
    }
}

/// Republishes other nodes' events here, and stops local dispatches they interrupt.
async fn listen(kernel: Arc<Kernel>, mut listener: PgListener) {
    let Some(cluster) = kernel.cluster.as_ref() else {
        return;
    };
    loop {
        let received = tokio::select! {
            received = listener.recv() => received,
            () = kernel.shutdown.cancelled() => return,
        };
        let notification = match received {
            Ok(notification) => notification,
            Err(error) => {
                // `recv` reconnects by itself; events sent meanwhile are lost.
                tracing::warn!(%error, "the event listener lost its connection; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let notice: Notice = match serde_json::from_str(notification.payload()) {
            Ok(notice) => notice,
            Err(error) => {
                tracing::warn!(%error, "ignoring an unreadable cluster notification");
                continue;
            }
        };
        if notice.n == cluster.node_id {
            continue;
        }
        let event = match (notice.e, notice.s) {
            (Some(event), _) => event,
            (None, Some(spill_id)) => match fetch_spilled(cluster, spill_id).await {
                Some(event) => event,
                None => continue,
            },
            (None, None) => continue,
        };
        if event.name == "session.interrupted"
            && let Some(session_id) = event.session_id.as_deref()
        {
            let reason = event
                .payload
                .get("reason")
                .and_then(|r| r.as_str())
                .unwrap_or("interrupted")
                .to_owned();
            if let Some(dispatch_id) = kernel
                .dispatcher
                .interrupt(session_id, StopReason::Interrupt(reason))
            {
                tracing::info!(%session_id, %dispatch_id, from = %notice.n, "interrupted by another node");
            }
        }
        kernel.events.publish_remote(event);
    }
}

async fn fetch_spilled(cluster: &Cluster, spill_id: i64) -> Option<Event> {
    let row: Result<Option<(String,)>, _> =
        sqlx::query_as("SELECT body FROM event_spill WHERE spill_id = $1")
            .bind(spill_id)
            .fetch_optional(&cluster.pool)
            .await;
    match row {
        Ok(Some((body,))) => serde_json::from_str(&body)
            .inspect_err(|error| tracing::warn!(%error, spill_id, "unreadable spilled event"))
            .ok(),
        Ok(None) => {
            tracing::warn!(spill_id, "a spilled event was already cleaned up");
            None
        }
        Err(error) => {
            tracing::warn!(%error, spill_id, "fetching a spilled event failed");
            None
        }
    }
}

/// Keeps this node's heartbeat fresh.
async fn heartbeat(kernel: Arc<Kernel>) {
    let Some(cluster) = kernel.cluster.as_ref() else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(kernel.config.lease_renew()) => {}
            () = kernel.shutdown.cancelled() => return,
        }
        let result = sqlx::query("UPDATE nodes SET heartbeat_at = $2 WHERE node_id = $1")
            .bind(&cluster.node_id)
            .bind(Timestamp::now().as_millis())
            .execute(&cluster.pool)
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, "the node heartbeat failed");
        }
    }
}

/// Recovers sessions whose lease expired, and starts dispatches queued in the
/// database that no node has taken.
async fn sweep(kernel: Arc<Kernel>) {
    let period = kernel.config.lease_renew().max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = kernel.shutdown.cancelled() => return,
        }
        if let Err(error) = crate::sessions::recovery::sweep(&kernel).await {
            tracing::warn!(%error, "the lease sweep failed");
        }
    }
}
