//! Session creation and bootstrap: begin marker, default skills (pinned first), done
//! marker, then `ready`/`idle`.
//!
//! Bootstrap is resumable: it reads what history already holds (begin marker, default
//! skill loads, done marker) and does only what is missing, so start-up recovery can
//! finish a bootstrap a crash interrupted.

use std::sync::Arc;

use aos_sdk::protocol::{
    AgentStatus, BootstrapPhase, ErrorCode, Origin, PartBody, Role, SessionCb, SessionCreateParams,
    SessionPhase, SessionStatus, SkillLoadCause, SkippedSkill, Timestamp, Usage,
};
use serde_json::json;

use super::defaults::resolve;
use crate::auth::Caller;
use crate::hooks::{Admission, EventName, HookScope};
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::store::HistoryQuery;
use crate::syscall::{AppendRequest, SyscallError, append_message};

/// Creates and bootstraps a session.
pub async fn create(
    kernel: &Arc<Kernel>,
    caller: &Caller,
    params: SessionCreateParams,
) -> Result<SessionCb, SyscallError> {
    let agent = kernel.get_agent(&params.agent_id).await?;
    if agent.status == AgentStatus::Archived {
        return Err(SyscallError::new(
            ErrorCode::AgentArchived,
            format!("agent `{}` is archived: no new sessions", agent.agent_id),
        ));
    }
    let now = Timestamp::now();
    let session = SessionCb {
        session_id: new_id("ses_"),
        agent_id: agent.agent_id.clone(),
        title: params.title,
        status: SessionStatus::Initializing,
        phase: SessionPhase::Bootstrapping,
        lease: None,
        default_skills: params.default_skills.unwrap_or_default(),
        priority: params.priority,
        model: params.model,
        auto_fold_threshold: params.auto_fold_threshold,
        metadata: params.metadata.unwrap_or_default(),
        last_seq: 0,
        usage: Usage::default(),
        created_by: caller.identity(),
        revision: 1,
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    let planned = default_names(kernel, &session).await?;
    let scope = HookScope::session(&session.agent_id, &session.session_id);
    // Admission runs before anything is stored, so a refusal leaves no trace but the
    // RuntimeLog row.
    kernel
        .hooks
        .admit(Admission::SkillDefaultResolveBefore, scope, || {
            (
                json!({"agentId": session.agent_id, "sessionId": session.session_id, "plannedNames": planned}),
                json!({}),
            )
        })
        .await?;
    kernel.emit(
        EventName::SkillDefaultResolveAfter,
        Some(&session.agent_id),
        Some(&session.session_id),
        json!({"agentId": session.agent_id, "sessionId": session.session_id, "resolvedNames": planned}),
    );
    kernel
        .hooks
        .admit(Admission::SessionBootstrapBefore, scope, || {
            (
                json!({"agentId": session.agent_id, "sessionId": session.session_id, "plannedNames": planned}),
                json!({}),
            )
        })
        .await?;
    kernel.store.insert_session(&session).await?;
    if session.default_skills.iter().any(|r| r.start.is_some()) {
        // Session-owned services start before the bootstrap, so their hooks see it.
        crate::services::reconcile::session(kernel, &session.session_id).await?;
    }
    run(kernel, &session.session_id, Some(planned), "create")
        .await
        .map_err(|error| {
            // The session exists now; say which, and what state it is left in.
            let id = &session.session_id;
            SyscallError {
                message: format!(
                    "session `{id}` was created but its bootstrap failed: {}; it stays `initializing` \
                     (the next start retries the bootstrap, or archive it)",
                    error.message
                ),
                details: Some(json!({"sessionId": id, "cause": error.details})),
                ..error
            }
        })
}

/// The default skills a session would load now.
pub(crate) async fn default_names(
    kernel: &Kernel,
    session: &SessionCb,
) -> Result<Vec<String>, SyscallError> {
    let system = kernel.system().await?;
    let agent = kernel.get_agent(&session.agent_id).await?;
    Ok(resolve(&[
        &system.default_skills,
        &agent.default_skills,
        &session.default_skills,
    ])
    .load)
}

/// Brings an `initializing` session to `ready`, doing whatever its history shows is
/// still missing. `planned` is the resolved default list for a fresh session; a
/// resumed one takes it from its begin marker.
pub async fn run(
    kernel: &Arc<Kernel>,
    session_id: &str,
    planned: Option<Vec<String>>,
    cause: &str,
) -> Result<SessionCb, SyscallError> {
    let session = kernel.get_session(session_id).await?;
    if session.status != SessionStatus::Initializing {
        return Ok(session);
    }
    let agent_id = session.agent_id.clone();
    let history = kernel
        .store
        .list_messages(
            session_id,
            &HistoryQuery {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await?;
    let mut begun: Option<Vec<String>> = None;
    let mut loaded: Vec<String> = Vec::new();
    let mut done = false;
    for part in history.iter().flat_map(|m| m.parts.iter()) {
        match &part.body {
            PartBody::Bootstrap {
                phase: BootstrapPhase::Begin,
                planned_names,
                ..
            } => begun = Some(planned_names.clone()),
            PartBody::Bootstrap {
                phase: BootstrapPhase::Done,
                ..
            } => done = true,
            PartBody::SkillLoad {
                name,
                cause: SkillLoadCause::Default,
                ..
            } => loaded.push(name.clone()),
            _ => {}
        }
    }
    let write = |parts: Vec<PartBody>| {
        append_message(
            kernel,
            AppendRequest {
                agent_id: &agent_id,
                session_id,
                role: Role::User,
                origin: Origin::Aos,
                parts,
                dispatch_id: None,
                kernel_parts: true,
            },
        )
    };
    let mut skipped: Vec<SkippedSkill> = Vec::new();
    if !done {
        let planned = match (begun, planned) {
            (Some(from_history), _) => from_history,
            (None, given) => {
                let planned = match given {
                    Some(p) => p,
                    None => default_names(kernel, &session).await?,
                };
                write(vec![PartBody::Bootstrap {
                    phase: BootstrapPhase::Begin,
                    planned_names: planned.clone(),
                    loaded: Vec::new(),
                    skipped: Vec::new(),
                }])
                .await?;
                planned
            }
        };
        let snapshot = kernel.skills.snapshot();
        let missing: Vec<String> = planned
            .iter()
            .filter(|n| !loaded.contains(n))
            .cloned()
            .collect();
        for name in &missing {
            let Some(skill) = snapshot.get(name) else {
                let reason = match snapshot.all.iter().find(|s| &s.manifest.name == name) {
                    Some(broken) => format!(
                        "the skill is broken: {}",
                        broken
                            .manifest
                            .error
                            .as_ref()
                            .map(|e| e.message.as_str())
                            .unwrap_or("unknown error")
                    ),
                    None => format!("no skill `{name}` in the skill index"),
                };
                tracing::warn!(session_id, skill = %name, %reason, "default skill skipped");
                skipped.push(SkippedSkill {
                    name: name.clone(),
                    reason,
                });
                continue;
            };
            let text = skill.text.as_deref().unwrap_or_default().to_owned();
            if let Err(rejection) = kernel
                .hooks
                .admit(
                    Admission::SkillLoadBefore,
                    HookScope::session(&agent_id, session_id),
                    || {
                        (
                            json!({"agentId": agent_id, "sessionId": session_id, "name": name, "cause": "default"}),
                            json!({}),
                        )
                    },
                )
                .await
            {
                skipped.push(SkippedSkill {
                    name: name.clone(),
                    reason: rejection.to_string(),
                });
                continue;
            }
            let (message, _) = write(vec![PartBody::SkillLoad {
                name: name.clone(),
                cause: SkillLoadCause::Default,
                text,
            }])
            .await?;
            kernel.emit(
                EventName::SkillLoadAfter,
                Some(&agent_id),
                Some(session_id),
                json!({"agentId": agent_id, "sessionId": session_id, "name": name, "cause": "default", "seq": message.seq}),
            );
            loaded.push(name.clone());
        }
        write(vec![PartBody::Bootstrap {
            phase: BootstrapPhase::Done,
            planned_names: Vec::new(),
            loaded: loaded.clone(),
            skipped: skipped.clone(),
        }])
        .await?;
    }
    kernel.emit(
        EventName::SessionBootstrapAfter,
        Some(&agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "injectedNames": loaded, "skipped": skipped}),
    );
    let ready = kernel
        .update_session(session_id, |s| {
            if s.status == SessionStatus::Initializing {
                s.status = SessionStatus::Ready;
                s.phase = SessionPhase::Idle;
            }
            Ok(())
        })
        .await?;
    kernel.emit(
        EventName::SessionStarted,
        Some(&agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "cause": cause}),
    );
    Ok(ready)
}
