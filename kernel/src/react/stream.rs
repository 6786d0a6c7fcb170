//! The event stream of one dispatch: kept from its start (so a client that connects
//! late misses nothing) and followed by every reader at its own pace, ending with
//! `done`.
//!
//! Each event has a position; a reader asks for the first event at or after its own,
//! so no reader can fall behind and lose an event, and a stream costs only what it
//! holds. Once the dispatch is done its token deltas are dropped (the written messages
//! carry the same text); readers still following simply skip them.

use std::sync::{Arc, Mutex};

use aos_sdk::protocol::StreamEvent;
use tokio::sync::watch;

/// Token deltas kept per dispatch at most; later ones go only to readers that are
/// already following closely.
const KEPT_DELTAS: usize = 20_000;

#[derive(Debug, Default)]
struct Kept {
    events: Vec<(u64, StreamEvent)>,
    deltas: usize,
    next: u64,
    done: bool,
}

/// One dispatch's stream.
#[derive(Debug)]
pub struct DispatchStream {
    // Locked to append or to read one event, never across an `.await`.
    kept: Mutex<Kept>,
    /// The next position; readers wait for it to move.
    pushed: watch::Sender<u64>,
}

impl Default for DispatchStream {
    fn default() -> Self {
        Self {
            kept: Mutex::new(Kept::default()),
            pushed: watch::channel(0).0,
        }
    }
}

impl DispatchStream {
    /// Appends an event.
    pub fn push(&self, event: StreamEvent) {
        let next = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let position = kept.next;
            kept.next += 1;
            match &event {
                StreamEvent::Delta { .. } if kept.deltas >= KEPT_DELTAS => {}
                StreamEvent::Delta { .. } => {
                    kept.deltas += 1;
                    kept.events.push((position, event));
                }
                StreamEvent::Done(_) => {
                    kept.events
                        .retain(|(_, e)| !matches!(e, StreamEvent::Delta { .. }));
                    kept.deltas = 0;
                    kept.done = true;
                    kept.events.push((position, event));
                }
                _ => kept.events.push((position, event)),
            }
            kept.next
        };
        self.pushed.send_replace(next);
    }

    /// A reader from the first event on.
    pub fn reader(self: &Arc<Self>) -> StreamReader {
        StreamReader {
            stream: self.clone(),
            position: 0,
            pushed: self.pushed.subscribe(),
        }
    }
}

/// One reader's place in a stream.
pub struct StreamReader {
    stream: Arc<DispatchStream>,
    position: u64,
    pushed: watch::Receiver<u64>,
}

impl StreamReader {
    /// The next event, waiting for it; `None` after `done`.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            self.pushed.borrow_and_update();
            {
                let kept = self.stream.kept.lock().unwrap_or_else(|p| p.into_inner());
                let index = kept.events.partition_point(|(p, _)| *p < self.position);
                if let Some((position, event)) = kept.events.get(index) {
                    self.position = position + 1;
                    return Some(event.clone());
                }
                if kept.done {
                    return None;
                }
            }
            if self.pushed.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aos_sdk::protocol::{DispatchStatus, StreamDone, Timestamp, Usage};

    fn done() -> StreamEvent {
        StreamEvent::Done(StreamDone {
            dispatch_id: "dsp_1".into(),
            status: DispatchStatus::Done,
            usage: Usage::default(),
            turns: 1,
            final_message_seq: None,
            answer: None,
            error: None,
            ended_at: Timestamp::from_millis(0),
        })
    }

    #[tokio::test]
    async fn readers_get_everything_in_order_whenever_they_join() {
        let stream = Arc::new(DispatchStream::default());
        stream.push(StreamEvent::Delta { text: "a".into() });
        let mut early = stream.reader();
        let writer = stream.clone();
        let task = tokio::spawn(async move {
            for i in 0..100 {
                writer.push(StreamEvent::Delta {
                    text: i.to_string(),
                });
                tokio::task::yield_now().await;
            }
            writer.push(done());
        });
        let mut seen = Vec::new();
        while let Some(event) = early.next().await {
            seen.push(event);
        }
        task.await.unwrap();
        assert_eq!(seen.len(), 102, "every delta and the done");
        assert!(matches!(seen.last(), Some(StreamEvent::Done(_))));
        // A reader that comes after the end gets the done without the deltas.
        let mut late = stream.reader();
        assert!(matches!(late.next().await, Some(StreamEvent::Done(_))));
        assert!(late.next().await.is_none());
    }
}
