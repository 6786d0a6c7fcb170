//! Rebuilding the skill index and letting services follow: the one path taken by
//! `skill.index.refresh` and by the file watcher.
//!
//! A removed (or newly broken) skill's services stop; a changed skill's running
//! services restart with the new files; a new skill is started wherever the defaults
//! ask for it. History is never rewritten: the next load, bootstrap or reinject reads
//! the new text.

use std::sync::Arc;

use serde_json::json;

use super::{Changes, Snapshot};
use crate::hooks::{Admission, EventName, HookScope};
use crate::kernel::Kernel;
use crate::services::reconcile;
use crate::syscall::SyscallError;

/// Rescans the skill root (after `skill.index.refresh.before` admits it), announces
/// the result, and applies it to services. `announce_unchanged` also announces a
/// rescan that found nothing new (explicit refreshes do; the watcher does not).
pub async fn reload(
    kernel: &Arc<Kernel>,
    cause: &str,
    announce_unchanged: bool,
) -> Result<(Arc<Snapshot>, Changes), SyscallError> {
    let _serial = kernel.services.reload.lock().await;
    let root = kernel.skills.root().display().to_string();
    kernel
        .hooks
        .admit(
            Admission::SkillIndexRefreshBefore,
            HookScope::default(),
            || (json!({"skillRoot": root, "cause": cause}), json!({})),
        )
        .await?;
    let (snapshot, changes) = kernel.refresh_skills().await;
    if changes.is_empty() && !announce_unchanged {
        return Ok((snapshot, changes));
    }
    tracing::info!(
        cause,
        added = ?changes.added,
        changed = ?changes.changed,
        removed = ?changes.removed,
        "skill index refreshed"
    );
    kernel.emit(
        EventName::SkillIndexRefreshAfter,
        None,
        None,
        json!({
            "indexedCount": snapshot.usable_count(),
            "errorCount": snapshot.error_count(),
            "added": changes.added,
            "changed": changes.changed,
            "removed": changes.removed,
            "cause": cause,
        }),
    );
    let services = &kernel.services;
    for name in &changes.removed {
        services.remove_skill(kernel, name).await;
    }
    for name in &changes.changed {
        services.restart_skill(name, "its files changed");
    }
    if !changes.added.is_empty() {
        let kernel = kernel.clone();
        kernel.tasks.clone().spawn(async move {
            if let Err(error) = reconcile::everything(&kernel).await {
                tracing::warn!(%error, "service reconcile after a skill appeared failed");
            }
        });
    }
    Ok((snapshot, changes))
}
