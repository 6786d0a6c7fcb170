//! Hot reload: a file watcher on the skill root. Changes are debounced (200 ms) and
//! then rebuild the index through [`super::reload::reload`]; changes only under
//! ignored paths (see [`super::index::is_ignored`]) do nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::mpsc;

use super::index::is_ignored;
use crate::kernel::Kernel;

/// Quiet time after the last change before the index is rebuilt.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: Debouncer<RecommendedWatcher>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// Starts watching the kernel's skill root. Returns `None` (with a warning) when the
/// root does not exist or cannot be watched; the index then changes only on
/// `skill.index.refresh`.
pub fn start(kernel: &Arc<Kernel>) -> Option<Watcher> {
    let root: PathBuf = kernel.skills.root().to_owned();
    if !root.is_dir() {
        tracing::warn!(root = %root.display(), "the skill root does not exist; hot reload is off");
        return None;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watched = root.clone();
    let debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let relevant = events.iter().any(|event| {
                event
                    .path
                    .strip_prefix(&watched)
                    .map(|relative| !is_ignored(relative))
                    .unwrap_or(false)
            });
            if relevant {
                let _ = tx.send(());
            }
        }
        Err(error) => tracing::warn!(%error, "skill watcher error"),
    });
    let mut debouncer = match debouncer {
        Ok(debouncer) => debouncer,
        Err(error) => {
            tracing::warn!(%error, "cannot create the skill watcher; hot reload is off");
            return None;
        }
    };
    if let Err(error) = debouncer.watcher().watch(&root, RecursiveMode::Recursive) {
        tracing::warn!(root = %root.display(), %error, "cannot watch the skill root; hot reload is off");
        return None;
    }
    let kernel_for_task = kernel.clone();
    kernel.tasks.spawn(async move {
        let kernel = kernel_for_task;
        loop {
            tokio::select! {
                () = kernel.shutdown.cancelled() => return,
                changed = rx.recv() => {
                    if changed.is_none() {
                        return;
                    }
                }
            }
            while rx.try_recv().is_ok() {}
            if let Err(error) = super::reload::reload(&kernel, "files changed", false).await {
                tracing::warn!(%error, "hot reload was refused");
            }
        }
    });
    tracing::info!(root = %root.display(), "watching the skill root for changes");
    Some(Watcher {
        _debouncer: debouncer,
    })
}
