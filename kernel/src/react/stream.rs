//! The event stream of one dispatch: kept from its start (so a client that connects
//! late misses nothing) and sent live to every reader, ending with `done`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use aos_sdk::protocol::StreamEvent;
use tokio::sync::broadcast;

/// Events kept per dispatch; beyond that, token deltas are sent live only.
const KEPT_EVENTS: usize = 20_000;

/// One dispatch's stream.
#[derive(Debug)]
pub struct DispatchStream {
    // Locked to append or to snapshot, never across an `.await`.
    events: Mutex<Vec<StreamEvent>>,
    live: broadcast::Sender<StreamEvent>,
    done: AtomicBool,
}

impl Default for DispatchStream {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            live: broadcast::channel(4096).0,
            done: AtomicBool::new(false),
        }
    }
}

impl DispatchStream {
    /// Appends an event and sends it to live readers.
    pub fn push(&self, event: StreamEvent) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(event, StreamEvent::Done(_)) {
            self.done.store(true, Ordering::SeqCst);
        }
        if events.len() < KEPT_EVENTS || !matches!(event, StreamEvent::Delta { .. }) {
            events.push(event.clone());
        }
        // Under the lock, so a subscriber's replay and live feed meet without a gap.
        let _ = self.live.send(event);
    }

    /// What happened so far, and the live feed from there on.
    pub fn subscribe(&self) -> (Vec<StreamEvent>, broadcast::Receiver<StreamEvent>) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        (events.clone(), self.live.subscribe())
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}
