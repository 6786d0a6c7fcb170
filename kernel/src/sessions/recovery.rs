//! Recovery of sessions whose dispatch died with its kernel.
//!
//! At start-up ([`recover`]): sessions a previous run left mid-bootstrap finish it;
//! sessions left dispatched or compacting by this node (or under an expired lease) get
//! an interrupt fact (`kernel restarted`) and return to idle. With several nodes on one
//! database, every node also sweeps ([`sweep`]) for sessions whose lease expired under
//! another node: that node died or hung, and its sessions get the interrupt fact
//! (`node <id> stopped`) and return to idle. Context is rebuilt lazily by the context
//! engine, so nothing else needs repair.
//!
//! Taking a session over is itself a compare-and-set: the recovering node replaces the
//! stale lease with one of its own before it writes anything, so two nodes sweeping at
//! once never both write the fact, and a dispatch that starts meanwhile is never
//! interrupted by mistake.

use std::sync::Arc;

use aos_sdk::protocol::{
    Dispatch, DispatchStatus, ErrorBody, ErrorCode, Lease, Origin, PartBody, Role, SessionCb,
    SessionPhase, SessionStatus, Timestamp,
};
use serde_json::json;

use super::bootstrap;
use crate::hooks::EventName;
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::store::ListQuery;
use crate::syscall::{AppendRequest, SyscallError, append_message};

/// Dispatch records of one status, every page.
async fn all_dispatches(
    kernel: &Kernel,
    session_id: Option<&str>,
    status: DispatchStatus,
) -> Result<Vec<Dispatch>, SyscallError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = kernel
            .store
            .list_dispatches(
                session_id,
                Some(status),
                &ListQuery {
                    after: after.clone(),
                    limit: 500,
                },
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        after = Some(last.dispatch_id.clone());
        all.extend(page);
    }
}

/// Ends dispatch records that died with `node`: running ones, and ones queued in its
/// memory. Dispatches waiting in the database (`request` set) are not tied to a node
/// and stay queued.
async fn settle_dispatches(
    kernel: &Kernel,
    session_id: Option<&str>,
    node: &str,
    why: &str,
) -> Result<(), SyscallError> {
    for status in [DispatchStatus::Running, DispatchStatus::Queued] {
        for mut dispatch in all_dispatches(kernel, session_id, status).await? {
            // Records from before nodes were recorded belong to whoever recovers them.
            let ours = dispatch.node.as_deref().is_none_or(|n| n == node);
            if !ours || dispatch.request.is_some() {
                continue;
            }
            dispatch.status = DispatchStatus::Interrupted;
            dispatch.ended_at = Some(Timestamp::now());
            dispatch.error = Some(ErrorBody::new(
                ErrorCode::Internal,
                format!("{why} while this dispatch was {}", status.as_str()),
            ));
            kernel.store.save_dispatch(&dispatch).await?;
        }
    }
    Ok(())
}

/// Recovers every unsettled session at start-up. A session that cannot be recovered
/// is reported (`session.error`, source `recovery`) and left as it is; it never blocks
/// start-up.
pub async fn recover(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    settle_dispatches(kernel, None, &kernel.node_id, "the kernel restarted").await?;
    let sessions = kernel.store.sessions_needing_recovery().await?;
    let now = Timestamp::now();
    for session in sessions {
        let result = if session.status == SessionStatus::Initializing {
            bootstrap::run(kernel, &session.session_id, None, "recovery")
                .await
                .map(|_| ())
        } else if session.phase == SessionPhase::Idle
            || session.phase == SessionPhase::Bootstrapping
        {
            Ok(())
        } else {
            let ours_or_expired = session
                .lease
                .as_ref()
                .is_none_or(|l| l.holder == kernel.node_id || l.expires_at <= now);
            if ours_or_expired {
                take_over(kernel, &session, "kernel restarted").await
            } else {
                Ok(())
            }
        };
        report(kernel, &session, result);
    }
    Ok(())
}

/// One pass of the multi-node sweep: sessions whose lease expired under any node and
/// that this node does not run are taken over; then dispatches waiting in the database
/// for an idle session are started.
pub async fn sweep(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    let now = Timestamp::now();
    for session in kernel.store.sessions_needing_recovery().await? {
        let expired = session.lease.as_ref().is_some_and(|l| l.expires_at <= now);
        if !expired
            || session.status != SessionStatus::Ready
            || kernel.dispatcher.running(&session.session_id).is_some()
        {
            continue;
        }
        let holder = session
            .lease
            .as_ref()
            .map(|l| l.holder.clone())
            .unwrap_or_default();
        let reason = format!("node {holder} stopped");
        let result = take_over(kernel, &session, &reason).await;
        report(kernel, &session, result);
    }
    // Dispatches queued in the memory of a node that is gone (it stopped while they
    // waited) end; ones waiting in the database get a node.
    let alive: std::collections::BTreeSet<String> = match &kernel.cluster {
        Some(cluster) => cluster
            .nodes(kernel.config.lease_ttl)
            .await
            .map_err(|e| {
                SyscallError::new(
                    ErrorCode::StorageUnavailable,
                    format!("reading the node list: {e}"),
                )
            })?
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| n.node_id)
            .collect(),
        None => std::iter::once(kernel.node_id.clone()).collect(),
    };
    let mut idle = std::collections::BTreeSet::new();
    for mut dispatch in all_dispatches(kernel, None, DispatchStatus::Queued).await? {
        match dispatch.node.clone() {
            None if dispatch.request.is_some() => {
                idle.insert(dispatch.session_id);
            }
            Some(node) if !alive.contains(&node) && node != kernel.node_id => {
                dispatch.status = DispatchStatus::Interrupted;
                dispatch.ended_at = Some(Timestamp::now());
                dispatch.error = Some(ErrorBody::new(
                    ErrorCode::Internal,
                    format!("node {node} stopped while this dispatch was queued"),
                ));
                kernel.store.save_dispatch(&dispatch).await?;
            }
            _ => {}
        }
    }
    for session_id in idle {
        kernel.dispatcher.kick(kernel, &session_id).await;
    }
    Ok(())
}

fn report(kernel: &Kernel, session: &SessionCb, result: Result<(), SyscallError>) {
    if let Err(error) = result {
        let id = &session.session_id;
        tracing::error!(session_id = %id, %error, "session recovery failed");
        kernel.emit(
            EventName::SessionError,
            Some(&session.agent_id),
            Some(id),
            json!({
                "agentId": session.agent_id,
                "sessionId": id,
                "source": "recovery",
                "recoverable": false,
                "message": error.message,
            }),
        );
    }
}

/// Takes `seen` (a session left dispatched or compacting) over: its stale lease is
/// replaced by this node's, the interrupt fact is written, the dead node's dispatch
/// records are settled, and the session returns to idle. Does nothing if the session
/// changed hands meanwhile.
async fn take_over(
    kernel: &Arc<Kernel>,
    seen: &SessionCb,
    reason: &str,
) -> Result<(), SyscallError> {
    let session_id = seen.session_id.as_str();
    let stale = seen.lease.clone();
    let ours = Lease {
        id: new_id("lse_"),
        holder: kernel.node_id.clone(),
        expires_at: Timestamp::now().plus_millis(kernel.config.lease_ttl.as_millis() as i64),
    };
    let mut taken = true;
    kernel
        .update_session(session_id, |s| {
            taken = s.phase == seen.phase
                && s.lease.as_ref().map(|l| &l.id) == stale.as_ref().map(|l| &l.id);
            if taken {
                s.lease = Some(ours.clone());
            }
            Ok(())
        })
        .await?;
    if !taken {
        return Ok(());
    }
    let previous = serde_json::to_value(seen.phase).unwrap_or_default();
    let holder = stale.as_ref().map(|l| l.holder.clone());
    let archived = kernel.get_session(session_id).await?.status == SessionStatus::Archived;
    let fact = if archived {
        None
    } else {
        Some(
            append_message(
                kernel,
                AppendRequest {
                    agent_id: &seen.agent_id,
                    session_id,
                    role: Role::User,
                    origin: Origin::Aos,
                    parts: vec![PartBody::Interrupt {
                        reason: reason.to_owned(),
                        payload: Some(json!({"previousPhase": previous, "node": holder})),
                    }],
                    dispatch_id: None,
                    kernel_parts: true,
                },
            )
            .await?
            .0,
        )
    };
    let dead = holder.as_deref().unwrap_or(&kernel.node_id);
    let why = if dead == kernel.node_id {
        "the kernel restarted".to_owned()
    } else {
        format!("node {dead} stopped")
    };
    settle_dispatches(kernel, Some(session_id), dead, &why).await?;
    kernel
        .update_session(session_id, |s| {
            if s.lease.as_ref().is_some_and(|l| l.id == ours.id) {
                s.lease = None;
                s.phase = SessionPhase::Idle;
            }
            Ok(())
        })
        .await?;
    if let Some(message) = fact {
        kernel.emit(
            EventName::SessionInterrupted,
            Some(&seen.agent_id),
            Some(session_id),
            json!({"agentId": seen.agent_id, "sessionId": session_id, "reason": reason, "seq": message.seq, "by": "aos"}),
        );
    }
    kernel.emit(
        EventName::SessionUpdated,
        Some(&seen.agent_id),
        Some(session_id),
        json!({"agentId": seen.agent_id, "sessionId": session_id, "changed": ["phase"], "phase": "idle"}),
    );
    Ok(())
}
