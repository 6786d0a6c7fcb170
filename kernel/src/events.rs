//! The runtime event bus: every event goes to live subscribers (SSE clients, services)
//! and into a bounded in-memory ring, so a client that reconnects with `Last-Event-ID`
//! gets what it missed.
//!
//! Event ids increase for the life of the data directory in practice: the first id of
//! each boot is the boot time in microseconds, so ids from an earlier boot are always
//! smaller and a stale `Last-Event-ID` resumes from the oldest event still held.
//!
//! Each event is serialized once, when published; subscribers send that text as is.
//! The ring is bounded both by count and by bytes, so large payloads cannot make it
//! hold more than its byte budget.
//!
//! With several kernel nodes on one database, each event happens on one node: the bus
//! stamps local events with this node's id and hands them to a relay (`cluster`),
//! which publishes them to the other nodes; events relayed from other nodes come in
//! through [`EventBus::publish_remote`] and get an id from this node's sequence.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aos_sdk::protocol::service::{EventParams, encode_notification};
use aos_sdk::protocol::{Event, Timestamp};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

/// Live events a slow subscriber may fall behind by before it is told it lagged.
const LIVE_BUFFER: usize = 1024;

/// An event with its JSON text, serialized once when published.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    pub json: String,
    // The `event` notification for services, encoded on first use and shared by every
    // subscribed service.
    service_frame: OnceLock<String>,
}

impl Published {
    /// The event as a service protocol `event` notification.
    pub fn service_frame(&self) -> &str {
        self.service_frame
            .get_or_init(|| encode_notification("event", &EventParams::from(&self.event)))
    }
}

impl std::ops::Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

#[derive(Debug)]
struct Ring {
    next_id: u64,
    events: VecDeque<Arc<Published>>,
    capacity: usize,
    bytes: usize,
    max_bytes: usize,
}

/// Fan-out of runtime events. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct EventBus {
    // Locked only to append or to snapshot; never held across an `.await`.
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Published>>,
    /// Set when this kernel is one of several nodes: its id and where local events go.
    relay: OnceLock<Relay>,
}

#[derive(Debug)]
struct Relay {
    node: String,
    out: mpsc::UnboundedSender<Arc<Published>>,
}

/// A new subscription: what was missed, and the live feed from there on.
#[derive(Debug)]
pub struct Subscription {
    /// Held events newer than the requested id, oldest first.
    pub replay: Vec<Arc<Published>>,
    /// Set when events after the requested id were already dropped from the ring.
    pub gap: Option<Gap>,
    pub live: broadcast::Receiver<Arc<Published>>,
}

/// Events a resuming subscriber can no longer get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub requested_after: u64,
    pub oldest_available: u64,
}

impl EventBus {
    /// A bus holding the newest `ring_capacity` events, and at most `ring_bytes` of
    /// their JSON, for resumption.
    pub fn new(ring_capacity: usize, ring_bytes: usize) -> Self {
        let boot_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            ring: Mutex::new(Ring {
                next_id: boot_micros.max(1),
                events: VecDeque::with_capacity(ring_capacity.min(4096)),
                capacity: ring_capacity.max(1),
                bytes: 0,
                max_bytes: ring_bytes,
            }),
            live,
            relay: OnceLock::new(),
        }
    }

    /// Makes this bus one node's: local events carry `node` and are sent to `out` as
    /// well. Returns false if a relay was already set.
    pub fn set_relay(&self, node: &str, out: mpsc::UnboundedSender<Arc<Published>>) -> bool {
        self.relay
            .set(Relay {
                node: node.to_owned(),
                out,
            })
            .is_ok()
    }

    /// Publishes an event and returns it.
    pub fn emit(
        &self,
        name: &str,
        agent_id: Option<&str>,
        session_id: Option<&str>,
        payload: Value,
    ) -> Arc<Published> {
        let relay = self.relay.get();
        let event = Event {
            id: 0,
            name: name.to_owned(),
            ts: Timestamp::now(),
            agent_id: agent_id.map(str::to_owned),
            session_id: session_id.map(str::to_owned),
            payload,
            node: relay.map(|r| r.node.clone()),
        };
        let published = self.publish(event);
        if let Some(relay) = relay {
            let _ = relay.out.send(published.clone());
        }
        published
    }

    /// Publishes an event that happened on another node (never relayed again). It
    /// gets the next id of this node's sequence; its time and node stay as they were.
    pub fn publish_remote(&self, event: Event) -> Arc<Published> {
        self.publish(event)
    }

    fn publish(&self, mut event: Event) -> Arc<Published> {
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        event.id = ring.next_id;
        let json = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_owned());
        let published = Arc::new(Published {
            event,
            json,
            service_frame: OnceLock::new(),
        });
        ring.next_id += 1;
        ring.bytes += published.json.len();
        ring.events.push_back(published.clone());
        while ring.events.len() > ring.capacity
            || (ring.bytes > ring.max_bytes && ring.events.len() > 1)
        {
            if let Some(dropped) = ring.events.pop_front() {
                ring.bytes -= dropped.json.len();
            }
        }
        // Sending under the lock keeps the ring and the live feed in one order, so a
        // subscriber never sees an event twice or out of order at the seam.
        let _ = self.live.send(published.clone());
        published
    }

    /// Subscribes, replaying held events after `after` (all held events when `None`
    /// and `replay_all`, none when `None` otherwise).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = self.live.subscribe();
        let Some(after) = after else {
            return Subscription {
                replay: Vec::new(),
                gap: None,
                live,
            };
        };
        let oldest = ring.events.front().map(|e| e.id);
        let gap = match oldest {
            Some(oldest) if after.saturating_add(1) < oldest => Some(Gap {
                requested_after: after,
                oldest_available: oldest,
            }),
            _ => None,
        };
        let replay = ring
            .events
            .iter()
            .filter(|e| e.id > after)
            .cloned()
            .collect();
        Subscription { replay, gap, live }
    }

    /// The newest event id handed out so far (0 before the first event).
    pub fn last_id(&self) -> u64 {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.events.back().map(|e| e.id).unwrap_or(0)
    }
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    /// Exact names or `prefix.*` patterns; empty means all.
    pub names: Vec<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        if let Some(agent) = &self.agent_id
            && event.agent_id.as_deref() != Some(agent)
        {
            return false;
        }
        if let Some(session) = &self.session_id
            && event.session_id.as_deref() != Some(session)
        {
            return false;
        }
        self.names.is_empty() || self.names.iter().any(|p| name_matches(p, &event.name))
    }
}

pub use aos_sdk::protocol::name_matches;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_replays_exactly_what_was_missed() {
        let bus = EventBus::new(10, 1 << 20);
        let first = bus.emit("a.one", None, None, json!(1));
        let second = bus.emit("a.two", None, Some("ses_1"), json!(2));
        let sub = bus.subscribe(Some(first.id));
        assert_eq!(sub.replay.len(), 1);
        assert_eq!(sub.replay[0].id, second.id);
        assert!(sub.gap.is_none());
        assert_eq!(bus.subscribe(Some(second.id)).replay.len(), 0);
    }

    #[test]
    fn a_resume_older_than_the_ring_reports_the_gap() {
        let bus = EventBus::new(3, 1 << 20);
        let first = bus.emit("x", None, None, json!(0));
        for i in 1..10 {
            bus.emit("x", None, None, json!(i));
        }
        let sub = bus.subscribe(Some(first.id));
        assert_eq!(sub.replay.len(), 3);
        let gap = sub.gap.unwrap();
        assert_eq!(gap.requested_after, first.id);
        assert_eq!(gap.oldest_available, sub.replay[0].id);
        // An id from before this boot is older than everything held.
        assert!(bus.subscribe(Some(5)).gap.is_some());
    }

    #[tokio::test]
    async fn live_subscribers_get_events_in_order() {
        let bus = EventBus::new(8, 1 << 20);
        let mut sub = bus.subscribe(None);
        let a = bus.emit("n", None, None, json!("a"));
        let b = bus.emit("n", None, None, json!("b"));
        assert_eq!(sub.live.recv().await.unwrap().id, a.id);
        assert_eq!(sub.live.recv().await.unwrap().id, b.id);
    }

    #[test]
    fn local_events_are_relayed_with_the_node_and_remote_ones_are_not() {
        let bus = EventBus::new(8, 1 << 20);
        let before = bus.emit("a", None, None, json!(0));
        assert_eq!(before.node, None, "a lone kernel stamps no node");
        let (out, mut relayed) = mpsc::unbounded_channel();
        assert!(bus.set_relay("node_a", out));
        let local = bus.emit("b", None, None, json!(1));
        assert_eq!(local.node.as_deref(), Some("node_a"));
        let mut remote = local.event.clone();
        remote.node = Some("node_b".into());
        let republished = bus.publish_remote(remote);
        assert!(
            republished.id > local.id,
            "remote events get this node's next id"
        );
        assert_eq!(republished.node.as_deref(), Some("node_b"));
        assert_eq!(relayed.try_recv().unwrap().id, local.id);
        assert!(
            relayed.try_recv().is_err(),
            "remote events are not relayed again"
        );
        let held: Vec<u64> = bus.subscribe(Some(0)).replay.iter().map(|e| e.id).collect();
        assert_eq!(held, vec![before.id, local.id, republished.id]);
    }

    #[test]
    fn the_ring_stays_within_its_byte_budget() {
        let bus = EventBus::new(1000, 10_000);
        for _ in 0..100 {
            bus.emit("big", None, None, json!("x".repeat(1000)));
        }
        let held = bus.subscribe(Some(0)).replay;
        let bytes: usize = held.iter().map(|e| e.json.len()).sum();
        assert!(bytes <= 10_000, "{bytes} bytes held");
        assert!(held.len() >= 5, "still holds the newest events");
        assert_eq!(held.last().unwrap().id, bus.last_id());
    }

    #[test]
    fn filters_by_owner_and_name_pattern() {
        let bus = EventBus::new(8, 1 << 20);
        let event = bus.emit("session.started", Some("agt_1"), Some("ses_1"), json!({}));
        let mut filter = EventFilter::default();
        assert!(filter.matches(&event));
        filter.names = vec!["session.*".into()];
        assert!(filter.matches(&event));
        filter.names = vec!["agent.*".into(), "session.started".into()];
        assert!(filter.matches(&event));
        filter.names = vec!["session".into()];
        assert!(!filter.matches(&event));
        filter.names.clear();
        filter.session_id = Some("ses_2".into());
        assert!(!filter.matches(&event));
        filter.session_id = None;
        filter.agent_id = Some("agt_1".into());
        assert!(filter.matches(&event));
    }
}
