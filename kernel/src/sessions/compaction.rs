//! Compaction: the mechanism of seed §5.6; the policy (range, prompt, which skills come
//! back) is the context engine's, through `context.compact`.
//!
//! 1. phase `compacting` (a manual compaction takes the session's lease first);
//! 2. `session.compaction.before` admits the proposed range (after the last boundary
//!    to the newest message);
//! 3. `context.compact` answers `{mode, fromSeq, toSeq, summaryPrompt?, summaryText?,
//!    reinjectSkills}`; no engine → `unavailable`;
//! 4. `instruct` without `summaryText`: the model writes the summary (no tools, through
//!    the compute gate) — before anything is written, so a failure changes nothing;
//! 5. the marker (`compaction-marker`) and the summary (`compaction-summary`, pointing
//!    at the marker) are appended; `managed` engines wrote their own and skip this;
//! 6. skills are reinjected after the boundary (`session.reinject.before/after`);
//! 7. the phase goes back, `session.compaction.after`.
//!
//! History is never rewritten: the boundary only tells engines where the context
//! starts.

use std::sync::Arc;

use aos_sdk::protocol::{
    ErrorCode, Origin, PartBody, Role, SessionCb, SessionPhase, SkillLoadCause, Usage,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::hooks::{Admission, EventName, HookScope, Transform};
use crate::kernel::Kernel;
use crate::syscall::{AppendRequest, SyscallError, append_message};

/// The system prompt of the summary call.
const SUMMARY_SYSTEM: &str = "You summarize a working session so it can continue from the summary alone. Answer with the summary only.";

/// What to compact.
pub struct Compaction<'a> {
    pub session_id: &'a str,
    /// True when the engine's budget triggered it (a turn of a dispatch).
    pub auto: bool,
    /// Inside a running dispatch: its id, priority and cancellation. None for
    /// `session.compact`, which takes the session's lease itself.
    pub dispatch: Option<(&'a str, i32, &'a CancellationToken)>,
}

/// A finished compaction.
#[derive(Debug, Clone)]
pub struct Compacted {
    pub from_seq: u64,
    pub to_seq: u64,
    pub marker_seq: Option<u64>,
    pub summary_seq: Option<u64>,
    pub reinjected: Vec<String>,
    /// The summary call's tokens (zero when the engine wrote the summary).
    pub usage: Usage,
    /// The newest seq after the compaction.
    pub last_seq: u64,
    pub mode: String,
}

impl Compacted {
    pub fn to_json(&self, session_id: &str) -> Value {
        json!({
            "sessionId": session_id,
            "mode": self.mode,
            "fromSeq": self.from_seq,
            "toSeq": self.to_seq,
            "markerSeq": self.marker_seq,
            "summarySeq": self.summary_seq,
            "reinjected": self.reinjected,
            "usage": self.usage,
        })
    }
}

/// Compacts a session's context.
pub async fn compact(
    kernel: &Arc<Kernel>,
    request: Compaction<'_>,
) -> Result<Compacted, SyscallError> {
    let session_id = request.session_id;
    let own_lease = match request.dispatch {
        Some(_) => None,
        None => Some(crate::react::take_lease(kernel, session_id).await?),
    };
    let before = if own_lease.is_some() {
        SessionPhase::Dispatched
    } else {
        kernel.get_session(session_id).await?.phase
    };
    kernel
        .update_session(session_id, |s| {
            s.phase = SessionPhase::Compacting;
            Ok(())
        })
        .await?;
    let local_cancel = CancellationToken::new();
    let (dispatch_id, priority, cancel) = match request.dispatch {
        Some((id, priority, cancel)) => (Some(id), priority, cancel),
        None => (None, 0, &local_cancel),
    };
    let result = run(
        kernel,
        session_id,
        request.auto,
        dispatch_id,
        priority,
        cancel,
    )
    .await;
    // The phase goes back whatever happened.
    let restored = kernel
        .update_session(session_id, |s| {
            if s.phase == SessionPhase::Compacting {
                s.phase = before;
            }
            Ok(())
        })
        .await;
    if let Err(error) = restored {
        tracing::error!(session_id, %error, "restoring the phase after compaction failed");
    }
    if let Some(lease) = own_lease {
        crate::react::release_lease(kernel, session_id, &lease.id).await;
    }
    if let (Ok(done), None) = (&result, dispatch_id)
        && done.usage.total_tokens > 0
        && let Err(error) = kernel.store.add_usage(session_id, &done.usage).await
    {
        tracing::warn!(session_id, %error, "recording the summary call's usage failed");
    }
    result
}

async fn run(
    kernel: &Arc<Kernel>,
    session_id: &str,
    auto: bool,
    dispatch_id: Option<&str>,
    priority: i32,
    cancel: &CancellationToken,
) -> Result<Compacted, SyscallError> {
    let session = kernel.get_session(session_id).await?;
    let agent_id = session.agent_id.clone();
    let scope = HookScope::session(&agent_id, session_id);
    let proposed = (1, session.last_seq);
    kernel
        .hooks
        .admit(Admission::SessionCompactionBefore, scope, || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "fromSeq": proposed.0, "toSeq": proposed.1, "auto": auto}),
                json!({}),
            )
        })
        .await?;
    let reason = if auto { "threshold" } else { "manual" };
    let system = kernel.system().await?;
    let agent = kernel.get_agent(&agent_id).await?;
    let model = crate::react::default_model(kernel, &system, &agent, &session);
    let budget = system.compaction_threshold;
    let plan = kernel
        .hooks
        .transform(Transform::ContextCompact, scope, || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "reason": reason, "proposedFromSeq": proposed.0, "proposedToSeq": proposed.1, "model": model, "tokenBudget": budget}),
                json!({}),
            )
        })
        .await
        .filter(|out| out.get("mode").is_some())
        .ok_or_else(|| {
            SyscallError::new(
                ErrorCode::Unavailable,
                "no context engine handles compaction (`context.compact`): start one — `aos-context` is the default (`aos skill start aos-context`)",
            )
        })?;
    let seq = |field: &str| -> Result<u64, SyscallError> {
        plan.get(field).and_then(Value::as_u64).ok_or_else(|| {
            SyscallError::new(
                ErrorCode::ServiceFailed,
                format!("the context engine's `context.compact` answer lacks `{field}` (a seq)"),
            )
        })
    };
    let (from_seq, to_seq) = (seq("fromSeq")?, seq("toSeq")?);
    if from_seq > to_seq || to_seq > session.last_seq {
        return Err(SyscallError::new(
            ErrorCode::ServiceFailed,
            format!(
                "the context engine proposed the range {from_seq}–{to_seq}; it must lie within 1–{}",
                session.last_seq
            ),
        ));
    }
    let mode = plan["mode"].as_str().unwrap_or_default().to_owned();
    let mut usage = Usage::default();
    let (mut marker_seq, mut summary_seq) = (None, None);
    match mode.as_str() {
        "instruct" => {
            let summary = match plan.get("summaryText").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => {
                    let prompt = plan.get("summaryPrompt").and_then(Value::as_str).ok_or_else(|| {
                        SyscallError::new(
                            ErrorCode::ServiceFailed,
                            "the context engine's `instruct` answer has neither `summaryText` nor `summaryPrompt`",
                        )
                    })?;
                    let messages = vec![
                        json!({"role": "system", "content": SUMMARY_SYSTEM}),
                        json!({"role": "user", "content": prompt}),
                    ];
                    let (text, used) = crate::react::complete(
                        kernel,
                        &session,
                        dispatch_id,
                        priority,
                        messages,
                        cancel,
                    )
                    .await?;
                    usage = used;
                    text
                }
            };
            if summary.trim().is_empty() {
                return Err(SyscallError::new(
                    ErrorCode::ProviderUnavailable,
                    "the model returned an empty summary; nothing was compacted",
                ));
            }
            let write = |role: Role, parts: Vec<PartBody>| {
                append_message(
                    kernel,
                    AppendRequest {
                        agent_id: &agent_id,
                        session_id,
                        role,
                        origin: Origin::Aos,
                        parts,
                        dispatch_id: dispatch_id.map(str::to_owned),
                        kernel_parts: true,
                    },
                )
            };
            let (marker, _) = write(
                Role::User,
                vec![PartBody::CompactionMarker {
                    auto,
                    from_seq,
                    to_seq,
                }],
            )
            .await?;
            let (summary, _) = write(
                Role::Assistant,
                vec![PartBody::CompactionSummary {
                    text: summary,
                    marker_id: Some(marker.id.clone()),
                }],
            )
            .await?;
            marker_seq = Some(marker.seq);
            summary_seq = Some(summary.seq);
        }
        "managed" => {}
        other => {
            return Err(SyscallError::new(
                ErrorCode::ServiceFailed,
                format!(
                    "the context engine answered mode `{other}`; accepted: `instruct`, `managed`"
                ),
            ));
        }
    }
    let reinjected = reinject(kernel, &session, plan.get("reinjectSkills"), dispatch_id).await?;
    let last_seq = kernel.get_session(session_id).await?.last_seq;
    kernel.emit(
        EventName::SessionCompactionAfter,
        Some(&agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "compactionSeq": marker_seq, "summarySeq": summary_seq, "fromSeq": from_seq, "toSeq": to_seq, "auto": auto, "mode": mode}),
    );
    Ok(Compacted {
        from_seq,
        to_seq,
        marker_seq,
        summary_seq,
        reinjected,
        usage,
        last_seq,
        mode,
    })
}

/// Loads skills again after the boundary: the names the engine gave, or the session's
/// default set for `true`; `aos` always comes first when it is indexed.
async fn reinject(
    kernel: &Arc<Kernel>,
    session: &SessionCb,
    wanted: Option<&Value>,
    dispatch_id: Option<&str>,
) -> Result<Vec<String>, SyscallError> {
    let mut names: Vec<String> = match wanted {
        Some(Value::Bool(true)) => super::bootstrap::default_names(kernel, session).await?,
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => return Ok(Vec::new()),
    };
    let snapshot = kernel.skills.snapshot();
    if snapshot.get("aos").is_some() {
        names.retain(|n| n != "aos");
        names.insert(0, "aos".to_owned());
    }
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    let scope = HookScope::session(agent_id, session_id);
    kernel
        .hooks
        .admit(Admission::SessionReinjectBefore, scope, || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "plannedNames": names}),
                json!({}),
            )
        })
        .await?;
    let mut injected = Vec::new();
    for name in &names {
        let Some(skill) = snapshot.get(name) else {
            tracing::warn!(session_id, skill = %name, "a skill to reinject is no longer indexed; skipped");
            continue;
        };
        let (message, _) = append_message(
            kernel,
            AppendRequest {
                agent_id,
                session_id,
                role: Role::User,
                origin: Origin::Aos,
                parts: vec![PartBody::SkillLoad {
                    name: name.clone(),
                    cause: SkillLoadCause::Reinject,
                    text: skill.text.as_deref().unwrap_or_default().to_owned(),
                }],
                dispatch_id: dispatch_id.map(str::to_owned),
                kernel_parts: true,
            },
        )
        .await?;
        kernel.emit(
            EventName::SkillLoadAfter,
            Some(agent_id),
            Some(session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "name": name, "cause": "reinject", "seq": message.seq}),
        );
        injected.push(name.clone());
    }
    kernel.emit(
        EventName::SessionReinjectAfter,
        Some(agent_id),
        Some(session_id),
        json!({"agentId": agent_id, "sessionId": session_id, "injectedNames": injected}),
    );
    Ok(injected)
}
