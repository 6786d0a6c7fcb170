//! Start-up recovery: sessions a previous run left mid-bootstrap finish it; sessions
//! left dispatched or compacting by this node (or under an expired lease) get an
//! interrupt fact (`kernel restarted`) and return to idle. Context is rebuilt lazily by
//! the context engine, so nothing else needs repair.

use std::sync::Arc;

use aos_sdk::protocol::{
    DispatchStatus, ErrorBody, ErrorCode, Origin, PartBody, Role, SessionPhase, SessionStatus,
    Timestamp,
};
use serde_json::json;

use super::bootstrap;
use crate::hooks::EventName;
use crate::kernel::Kernel;
use crate::store::ListQuery;
use crate::syscall::{AppendRequest, SyscallError, append_message};

/// Ends the dispatch records a previous run left `running` or `queued`: a dispatch
/// does not survive a kernel restart (its session gets the interrupt fact below).
async fn settle_dispatches(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    for status in [DispatchStatus::Running, DispatchStatus::Queued] {
        loop {
            let page = kernel
                .store
                .list_dispatches(
                    None,
                    Some(status),
                    &ListQuery {
                        after: None,
                        limit: 500,
                    },
                )
                .await?;
            if page.is_empty() {
                break;
            }
            for mut dispatch in page {
                dispatch.status = DispatchStatus::Interrupted;
                dispatch.ended_at = Some(Timestamp::now());
                dispatch.error = Some(ErrorBody::new(
                    ErrorCode::Internal,
                    format!(
                        "the kernel restarted while this dispatch was {}",
                        status.as_str()
                    ),
                ));
                kernel.store.save_dispatch(&dispatch).await?;
            }
        }
    }
    Ok(())
}

/// Recovers every unsettled session. A session that cannot be recovered is reported
/// (`session.error`, source `recovery`) and left as it is; it never blocks start-up.
pub async fn recover(kernel: &Arc<Kernel>) -> Result<(), SyscallError> {
    settle_dispatches(kernel).await?;
    let sessions = kernel.store.sessions_needing_recovery().await?;
    let now = Timestamp::now();
    for session in sessions {
        let id = session.session_id.clone();
        let result = if session.status == SessionStatus::Initializing {
            bootstrap::run(kernel, &id, None, "recovery")
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
                release(kernel, &session.agent_id, &id, session.phase).await
            } else {
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::error!(session_id = %id, %error, "session recovery failed");
            kernel.emit(
                EventName::SessionError,
                Some(&session.agent_id),
                Some(&id),
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
    Ok(())
}

async fn release(
    kernel: &Arc<Kernel>,
    agent_id: &str,
    session_id: &str,
    phase: SessionPhase,
) -> Result<(), SyscallError> {
    if kernel.get_session(session_id).await?.status != SessionStatus::Archived {
        let previous = serde_json::to_value(phase).unwrap_or_default();
        let (message, _) = append_message(
            kernel,
            AppendRequest {
                agent_id,
                session_id,
                role: Role::User,
                origin: Origin::Aos,
                parts: vec![PartBody::Interrupt {
                    reason: "kernel restarted".into(),
                    payload: Some(json!({"previousPhase": previous})),
                }],
                dispatch_id: None,
                kernel_parts: true,
            },
        )
        .await?;
        kernel.emit(
            EventName::SessionInterrupted,
            Some(agent_id),
            Some(session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "reason": "kernel restarted", "seq": message.seq, "by": "aos"}),
        );
    }
    kernel
        .update_session(session_id, |s| {
            s.phase = SessionPhase::Idle;
            s.lease = None;
            Ok(())
        })
        .await?;
    Ok(())
}
