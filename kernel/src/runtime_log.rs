//! The RuntimeLog writer: commands hand their log rows to a background task that writes
//! them in batches, so logging costs a command one channel send rather than a database
//! transaction of its own.
//!
//! Trade-off: a row is durable a few milliseconds after its command returns; a crash
//! in that window loses the row but never a history fact (history writes are
//! synchronous). `flush` gives read-your-writes for `log.list`.

use std::sync::Arc;
use std::time::Duration;

use aos_sdk::protocol::LogEntry;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::Store;

/// Rows written per transaction at most.
const BATCH: usize = 512;
/// Rows queued before commands wait for the writer.
const QUEUE: usize = 16_384;
/// How long the writer waits for more rows before writing a batch, so a steady stream
/// of commands costs one transaction per few milliseconds instead of one per command.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

enum Item {
    Entry(Box<LogEntry>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task. Cloning shares the task.
#[derive(Debug, Clone)]
pub struct RuntimeLog {
    tx: mpsc::Sender<Item>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Entry(e) => write!(f, "Entry({})", e.op),
            Item::Flush(_) => f.write_str("Flush"),
            Item::Close(_) => f.write_str("Close"),
        }
    }
}

impl RuntimeLog {
    /// Starts the writer on `tracker`. It stops once every handle is dropped and the
    /// queue is drained.
    pub fn start(store: Arc<dyn Store>, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(write_loop(store, rx));
        Self { tx }
    }

    /// Queues a row. Waits only when the queue is full (the database is slower than
    /// the command rate), which pushes back on callers instead of growing memory.
    pub async fn record(&self, entry: LogEntry) {
        if self.tx.send(Item::Entry(Box::new(entry))).await.is_err() {
            tracing::warn!("runtime log writer has stopped; a log row was dropped");
        }
    }

    /// Writes what is queued and stops the writer; later rows are dropped with a warning.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Waits until every row queued before this call is written (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Item>) {
    let mut batch: Vec<LogEntry> = Vec::with_capacity(BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let linger_until = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Entry(entry) => batch.push(*entry),
                Item::Flush(done) => {
                    // Someone is waiting: write now.
                    waiters.push(done);
                    break;
                }
                Item::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = tokio::time::timeout_at(linger_until, rx.recv())
                    .await
                    .ok()
                    .flatten();
            }
        }
        write_batch(&*store, &mut batch).await;
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
        if let Some(done) = closing.take() {
            rx.close();
            // Rows that raced with the close are still written.
            while let Ok(Item::Entry(entry)) = rx.try_recv() {
                batch.push(*entry);
            }
            write_batch(&*store, &mut batch).await;
            let _ = done.send(());
            return;
        }
    }
}

async fn write_batch(store: &dyn Store, batch: &mut Vec<LogEntry>) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match store.append_log(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(error) => {
                tracing::error!(%error, attempt, rows = batch.len(), "writing the runtime log failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    tracing::error!(
        rows = batch.len(),
        "giving up on runtime log rows after 5 attempts; they are lost"
    );
    batch.clear();
}
