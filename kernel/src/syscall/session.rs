//! `session.*`: create (with bootstrap), read, update, append, interrupt, archive.
//! Also the one function that writes history, [`append_message`], so every write
//! passes `session.message.beforeWrite` and announces itself with `context.ingest`.

use aos_sdk::protocol::{
    Appended, BashState, ErrorCode, Message, MessageInput, MessageMeta, Origin, Page, Part,
    PartBody, Role, SessionAppendParams, SessionCb, SessionCreateParams, SessionIdParams,
    SessionInterruptParams, SessionListParams, SessionPhase, SessionStatus, SessionUpdateParams,
    Timestamp,
};
use serde_json::{Value, json};

use super::validate::{self, Layer};
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::auth::Owner;
use crate::hooks::{Admission, EventName, HookScope};
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::services::reconcile;
use crate::sessions::bootstrap;
use crate::store::{ListQuery, NewMessage};

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "session.create",
            OpKind::Command,
            Access::Agent {
                field: "agentId",
                write: true,
            },
            "Create a session for an agent and bootstrap it: begin marker, default skills (pinned first), done marker. Returns the ready session.",
            create,
        ),
        op(
            "session.get",
            OpKind::Query,
            Access::Session {
                field: "sessionId",
                write: false,
            },
            "Read a session control block.",
            get,
        ),
        op(
            "session.list",
            OpKind::Query,
            Access::Scoped,
            "List sessions in creation order, optionally of one agent; agent- and session-scoped tokens see their own agent's sessions.",
            list,
        ),
        op(
            "session.update",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Change a session's title, defaults, priority, model, fold threshold or metadata. Session-scoped tokens may change title and metadata only.",
            update,
        ),
        op(
            "session.append",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Append a message to history without running the agent. The kernel assigns id, seq, origin and time.",
            append,
        ),
        op(
            "session.interrupt",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Record an interrupt fact in history (a running dispatch stops at once).",
            interrupt,
        ),
        op(
            "session.archive",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Archive a session: history stays readable, changes are refused. Refused while a dispatch holds the lease.",
            archive,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// The history write path
// ---------------------------------------------------------------------------------------

/// A message to write to a session's history.
#[derive(Debug)]
pub struct AppendRequest<'a> {
    pub agent_id: &'a str,
    pub session_id: &'a str,
    pub role: Role,
    pub origin: Origin,
    pub parts: Vec<PartBody>,
    pub dispatch_id: Option<String>,
    /// Kernel-only part types (bootstrap, skill loads) are allowed.
    pub kernel_parts: bool,
}

/// Writes one message to history: validation, `session.message.beforeWrite`, the
/// append itself, and the `context.ingest` event. Returns the stored message and the
/// session's new revision.
pub async fn append_message(
    kernel: &Kernel,
    request: AppendRequest<'_>,
) -> Result<(Message, u64), SyscallError> {
    let AppendRequest {
        agent_id,
        session_id,
        role,
        origin,
        mut parts,
        dispatch_id,
        kernel_parts,
    } = request;
    let limit = kernel.config.limits.max_part_chars;
    validate_parts(&parts, kernel_parts, limit)?;
    let mut role = role;
    let scope = HookScope::session(agent_id, session_id);
    let rewritten = kernel
        .hooks
        .admit(Admission::SessionMessageBeforeWrite, scope, || {
            let message = json!({"role": role, "origin": origin, "parts": parts});
            (
                json!({"agentId": agent_id, "sessionId": session_id, "message": message}),
                json!({"message": {"role": role, "parts": parts}}),
            )
        })
        .await?;
    if let Some(output) = rewritten {
        let replacement: MessageInput = super::decode(
            "session.message.beforeWrite output",
            output.get("message").cloned().unwrap_or(Value::Null),
        )
        .map_err(|e| {
            SyscallError::new(
                ErrorCode::HookRejected,
                format!(
                    "a `session.message.beforeWrite` handler returned an invalid message: {}",
                    e.message
                ),
            )
        })?;
        validate_parts(&replacement.parts, kernel_parts, limit)?;
        role = replacement.role;
        parts = replacement.parts;
    }
    let message = NewMessage {
        id: new_id("msg_"),
        session_id: session_id.to_owned(),
        role,
        origin,
        parts: parts
            .into_iter()
            .map(|body| Part {
                id: new_id("prt_"),
                body,
            })
            .collect(),
        dispatch_id,
        created_at: Timestamp::now(),
    };
    let outcome = kernel.store.append_message(&message).await?;
    let stored = Message {
        id: message.id,
        session_id: message.session_id,
        seq: outcome.seq,
        role: message.role,
        origin: message.origin,
        parts: message.parts,
        dispatch_id: message.dispatch_id,
        created_at: message.created_at,
    };
    kernel.emit(
        EventName::ContextIngest,
        Some(agent_id),
        Some(session_id),
        ingest_payload(agent_id, &stored),
    );
    Ok((stored, outcome.session_revision))
}

/// Messages up to this size travel whole in `context.ingest`; larger ones by reference.
const INGEST_INLINE_BYTES: usize = 64 * 1024;

fn ingest_payload(agent_id: &str, message: &Message) -> Value {
    let value = serde_json::to_value(message).unwrap_or(Value::Null);
    let size = serde_json::to_vec(&value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    let mut payload = json!({
        "agentId": agent_id,
        "sessionId": message.session_id,
        "messageId": message.id,
        "seq": message.seq,
    });
    if size <= INGEST_INLINE_BYTES {
        payload["message"] = value;
    } else {
        payload["large"] = json!(true);
        payload["partTypes"] = json!(
            message
                .parts
                .iter()
                .map(|p| p.body.kind())
                .collect::<Vec<_>>()
        );
    }
    payload
}

/// Checks parts before they are written.
fn validate_parts(
    parts: &[PartBody],
    kernel_parts: bool,
    max_chars: usize,
) -> Result<(), SyscallError> {
    if parts.is_empty() || parts.len() > 64 {
        return Err(SyscallError::invalid(
            "message.parts",
            format!("must hold 1 to 64 parts, got {}", parts.len()),
        ));
    }
    for (i, part) in parts.iter().enumerate() {
        let at = |field: &str| format!("message.parts[{i}].{field}");
        let size = |field: &str, text: &str, max: usize| -> Result<(), SyscallError> {
            let chars = text.chars().count();
            if chars > max {
                return Err(SyscallError::invalid(
                    &at(field),
                    format!(
                        "has {chars} characters; at most {max} fit in history (store larger content with `content.put` and reference it)"
                    ),
                ));
            }
            Ok(())
        };
        match part {
            PartBody::Bootstrap { .. }
            | PartBody::SkillLoad { .. }
            | PartBody::SkillUnload { .. }
                if !kernel_parts =>
            {
                return Err(SyscallError::invalid(
                    &at("type"),
                    format!(
                        "`{}` parts are written by the kernel only; use `skill.load` / `skill.unload`",
                        part.kind()
                    ),
                ));
            }
            PartBody::Text { text } => size("text", text, max_chars)?,
            PartBody::SkillLoad { text, .. } => size("text", text, max_chars)?,
            PartBody::CompactionSummary { text, .. } => size("text", text, max_chars)?,
            PartBody::Interrupt { reason, .. } => validate::text(&at("reason"), reason, 1, 2000)?,
            PartBody::Error { source, message } => {
                validate::text(&at("source"), source, 1, 200)?;
                size("message", message, max_chars)?;
            }
            PartBody::Meta(meta) => validate_meta(&format!("message.parts[{i}]"), meta)?,
            PartBody::CompactionMarker {
                from_seq, to_seq, ..
            } if from_seq > to_seq => {
                return Err(SyscallError::invalid(
                    &at("fromSeq"),
                    format!("({from_seq}) must not be after `toSeq` ({to_seq})"),
                ));
            }
            PartBody::Bash(call) => {
                validate::text(&at("toolCallId"), &call.tool_call_id, 1, 200)?;
                size("command", &call.command, 64 * 1024)?;
                if let Some(output) = &call.output {
                    if let Some(visible) = &output.visible_result {
                        size("output.visibleResult", visible, max_chars)?;
                    }
                    if output.content_id.is_some() && output.visible_result.is_some() {
                        return Err(SyscallError::invalid(
                            &at("output.visibleResult"),
                            "must be null when `contentId` references the full result",
                        ));
                    }
                }
                if let Some(error) = &call.error_text {
                    size("errorText", error, max_chars)?;
                }
                match call.state {
                    BashState::InputAvailable if call.output.is_some() => {
                        return Err(SyscallError::invalid(
                            &at("output"),
                            "must be absent while the state is `input-available`",
                        ));
                    }
                    BashState::OutputAvailable if call.output.is_none() => {
                        return Err(SyscallError::invalid(
                            &at("output"),
                            "is required when the state is `output-available`",
                        ));
                    }
                    BashState::OutputError
                        if call.output.is_none() && call.error_text.is_none() =>
                    {
                        return Err(SyscallError::invalid(
                            &at("errorText"),
                            "is required when the state is `output-error` and there is no output",
                        ));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Largest `data` of a `meta` part, serialised.
const MAX_META_BYTES: usize = 8 * 1024;

/// Checks a `meta` part (`field` names where it is, for the error).
pub(crate) fn validate_meta(field: &str, meta: &MessageMeta) -> Result<(), SyscallError> {
    validate::text(&format!("{field}.source"), &meta.source, 1, 64)?;
    if !meta.data.is_object() {
        return Err(SyscallError::invalid(
            &format!("{field}.data"),
            "must be a JSON object",
        ));
    }
    let bytes = meta.data.to_string().len();
    if bytes > MAX_META_BYTES {
        return Err(SyscallError::invalid(
            &format!("{field}.data"),
            format!("has {bytes} bytes serialised; at most {MAX_META_BYTES} are accepted"),
        ));
    }
    Ok(())
}

/// Refuses changes to archived sessions and sessions still bootstrapping.
pub(super) fn require_ready(session: &SessionCb) -> Result<(), SyscallError> {
    match session.status {
        SessionStatus::Archived => Err(SyscallError::new(
            ErrorCode::SessionArchived,
            format!(
                "session `{}` is archived: it can be read but not changed",
                session.session_id
            ),
        )),
        SessionStatus::Initializing => Err(SyscallError::new(
            ErrorCode::SessionNotReady,
            format!(
                "session `{}` is still bootstrapping; retry when it is ready",
                session.session_id
            ),
        )),
        SessionStatus::Ready => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

async fn create(ctx: Ctx, params: SessionCreateParams) -> Result<Out<SessionCb>, SyscallError> {
    if let Some(title) = &params.title {
        validate::text("title", title, 1, 200)?;
    }
    if let Some(rules) = &params.default_skills {
        validate::default_skills("defaultSkills", rules, Layer::Session)?;
    }
    if let Some(p) = params.priority {
        validate::priority("priority", p)?;
    }
    if let Some(model) = &params.model {
        validate::model("model", model)?;
    }
    if let Some(t) = params.auto_fold_threshold {
        validate::auto_fold_threshold("autoFoldThreshold", t)?;
    }
    if let Some(m) = &params.metadata {
        validate::metadata("metadata", m)?;
    }
    let session = bootstrap::create(&ctx.kernel, &ctx.caller, params).await?;
    Ok(Out::new(session.clone())
        .revision(session.revision)
        .session(&session.agent_id, &session.session_id))
}

async fn get(ctx: Ctx, params: SessionIdParams) -> Result<Out<SessionCb>, SyscallError> {
    Ok(Out::new(ctx.kernel.get_session(&params.session_id).await?))
}

async fn list(ctx: Ctx, params: SessionListParams) -> Result<Out<Page<SessionCb>>, SyscallError> {
    let limit = validate::page_limit(params.limit, 100)?;
    let agent_id = match (ctx.caller.confined_agent(), params.agent_id.as_deref()) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(ctx
                .caller
                .deny(format_args!("list the sessions of agent {asked}")));
        }
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked.map(str::to_owned),
    };
    let items = ctx
        .kernel
        .store
        .list_sessions(
            agent_id.as_deref(),
            params.status,
            &ListQuery {
                after: params.cursor.clone(),
                limit,
            },
        )
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|s| s.session_id.clone()))
        .flatten();
    Ok(Out::new(Page { items, next_cursor }))
}

async fn update(ctx: Ctx, params: SessionUpdateParams) -> Result<Out<SessionCb>, SyscallError> {
    let settings_change = params.default_skills.is_some()
        || params.priority.is_some()
        || params.model.is_some()
        || params.auto_fold_threshold.is_some();
    if settings_change && ctx.caller.confined_session().is_some() {
        return Err(ctx.caller.deny(
            "change a session's defaults, priority, model or fold threshold (title and metadata only)",
        ));
    }
    if let Some(Some(title)) = &params.title {
        validate::text("title", title, 1, 200)?;
    }
    if let Some(rules) = &params.default_skills {
        validate::default_skills("defaultSkills", rules, Layer::Session)?;
    }
    if let Some(Some(p)) = params.priority {
        validate::priority("priority", p)?;
    }
    if let Some(Some(model)) = &params.model {
        validate::model("model", model)?;
    }
    if let Some(Some(t)) = params.auto_fold_threshold {
        validate::auto_fold_threshold("autoFoldThreshold", t)?;
    }
    if let Some(m) = &params.metadata {
        validate::metadata("metadata", m)?;
    }
    let mut changed: Vec<&str> = Vec::new();
    let session = ctx
        .kernel
        .update_session(&params.session_id, |s| {
            if s.status == SessionStatus::Archived {
                return Err(SyscallError::new(
                    ErrorCode::SessionArchived,
                    format!(
                        "session `{}` is archived: it can be read but not changed",
                        s.session_id
                    ),
                ));
            }
            changed.clear();
            if let Some(title) = &params.title {
                s.title = title.clone();
                changed.push("title");
            }
            if let Some(rules) = &params.default_skills {
                s.default_skills = rules.clone();
                changed.push("defaultSkills");
            }
            if let Some(p) = params.priority {
                s.priority = p;
                changed.push("priority");
            }
            if let Some(model) = &params.model {
                s.model = model.clone();
                changed.push("model");
            }
            if let Some(t) = params.auto_fold_threshold {
                s.auto_fold_threshold = t;
                changed.push("autoFoldThreshold");
            }
            if let Some(m) = &params.metadata {
                s.metadata = m.clone();
                changed.push("metadata");
            }
            Ok(())
        })
        .await?;
    ctx.kernel.emit(
        EventName::SessionUpdated,
        Some(&session.agent_id),
        Some(&session.session_id),
        json!({"agentId": session.agent_id, "sessionId": session.session_id, "revision": session.revision, "changed": changed}),
    );
    if changed.contains(&"defaultSkills") {
        reconcile::session(&ctx.kernel, &session.session_id).await?;
    }
    Ok(Out::new(session.clone())
        .revision(session.revision)
        .session(&session.agent_id, &session.session_id))
}

async fn append(ctx: Ctx, params: SessionAppendParams) -> Result<Out<Appended>, SyscallError> {
    let session = ctx.kernel.get_session(&params.session_id).await?;
    require_ready(&session)?;
    let (message, revision) = append_message(
        &ctx.kernel,
        AppendRequest {
            agent_id: &session.agent_id,
            session_id: &session.session_id,
            role: params.message.role,
            origin: ctx.caller.origin(),
            parts: params.message.parts,
            dispatch_id: None,
            kernel_parts: false,
        },
    )
    .await?;
    Ok(Out::new(Appended {
        session_id: session.session_id.clone(),
        message_id: message.id.clone(),
        seq: message.seq,
    })
    .revision(revision)
    .session(&session.agent_id, &session.session_id)
    .targets(json!({"messageId": message.id, "seq": message.seq})))
}

async fn interrupt(
    ctx: Ctx,
    params: SessionInterruptParams,
) -> Result<Out<Appended>, SyscallError> {
    validate::text("reason", &params.reason, 1, 2000)?;
    if let Some(payload) = &params.payload {
        validate::object("payload", payload)?;
    }
    let session = ctx.kernel.get_session(&params.session_id).await?;
    if session.status == SessionStatus::Archived {
        return Err(SyscallError::new(
            ErrorCode::SessionArchived,
            format!(
                "session `{}` is archived: it can be read but not changed",
                session.session_id
            ),
        ));
    }
    let (message, revision) = append_message(
        &ctx.kernel,
        AppendRequest {
            agent_id: &session.agent_id,
            session_id: &session.session_id,
            role: Role::User,
            origin: Origin::Aos,
            parts: vec![PartBody::Interrupt {
                reason: params.reason.clone(),
                payload: params.payload.clone(),
            }],
            dispatch_id: None,
            kernel_parts: false,
        },
    )
    .await?;
    // The fact first, then the stop: the loop ends without writing anything more.
    let stopped = ctx.kernel.dispatcher.interrupt(
        &session.session_id,
        crate::react::StopReason::Interrupt(params.reason.clone()),
    );
    ctx.kernel.emit(
        EventName::SessionInterrupted,
        Some(&session.agent_id),
        Some(&session.session_id),
        json!({
            "agentId": session.agent_id,
            "sessionId": session.session_id,
            "reason": params.reason,
            "seq": message.seq,
            "by": ctx.caller.identity(),
            "dispatchId": stopped,
        }),
    );
    Ok(Out::new(Appended {
        session_id: session.session_id.clone(),
        message_id: message.id,
        seq: message.seq,
    })
    .revision(revision)
    .session(&session.agent_id, &session.session_id))
}

async fn archive(ctx: Ctx, params: SessionIdParams) -> Result<Out<SessionCb>, SyscallError> {
    if ctx.caller.confined_session().is_some() {
        return Err(ctx.caller.deny("archive sessions"));
    }
    let session = archive_session(&ctx.kernel, &params.session_id).await?;
    Ok(Out::new(session.clone())
        .revision(session.revision)
        .session(&session.agent_id, &session.session_id))
}

/// Archives one session (also used when its agent is archived).
pub(super) async fn archive_session(
    kernel: &Kernel,
    session_id: &str,
) -> Result<SessionCb, SyscallError> {
    // Its services must be allowed to stop (`skill.stop.before`) before it is archived.
    let current = kernel.get_session(session_id).await?;
    if current.status != SessionStatus::Archived {
        let owner = Owner::Session {
            agent_id: current.agent_id,
            session_id: current.session_id,
        };
        kernel.services.admit_owner_stops(kernel, &owner).await?;
    }
    let now = Timestamp::now();
    let session = kernel
        .update_session(session_id, |s| {
            if s.status == SessionStatus::Archived {
                return Err(SyscallError::new(
                    ErrorCode::SessionArchived,
                    format!("session `{}` is already archived", s.session_id),
                ));
            }
            if let Some(lease) = &s.lease
                && lease.expires_at > now
                && s.phase != SessionPhase::Idle
            {
                return Err(SyscallError::new(
                    ErrorCode::SessionBusy,
                    format!(
                        "session `{}` is {} (lease held by {} until {}); interrupt it first",
                        s.session_id,
                        serde_json::to_value(s.phase)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        lease.holder,
                        lease.expires_at
                    ),
                ));
            }
            s.status = SessionStatus::Archived;
            s.phase = SessionPhase::Idle;
            s.lease = None;
            s.archived_at = Some(now);
            Ok(())
        })
        .await?;
    kernel.emit(
        EventName::SessionArchived,
        Some(&session.agent_id),
        Some(&session.session_id),
        json!({"agentId": session.agent_id, "sessionId": session.session_id}),
    );
    kernel
        .services
        .stop_owned_by(&session.agent_id, Some(&session.session_id))
        .await;
    Ok(session)
}
