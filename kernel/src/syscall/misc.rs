//! Operations that fit no single domain: hooks, events, usage, the RuntimeLog.

use serde_json::{Value, json};

use aos_sdk::protocol::{
    EventPublishParams, HookListParams, HookRegistration, LogEntry, LogListParams, OwnerType,
    UsageParams, UsageResult,
};

use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::auth::Scope;
use crate::store::LogQuery;

/// Largest custom event payload, serialized.
const MAX_EVENT_PAYLOAD_BYTES: usize = 256 * 1024;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "hook.list",
            OpKind::Query,
            Access::Anyone,
            "Who listens to which hook, in call order (owner level, priority, registration).",
            hook_list,
        ),
        op(
            "event.publish",
            OpKind::Command,
            Access::Scoped,
            "Publish a custom event `skill.<your-skill>.<name>` (services: their own skill only), optionally about a session in the caller's scope.",
            event_publish,
        ),
        op(
            "usage.get",
            OpKind::Query,
            Access::Scoped,
            "Model usage totals (tokens, cost, turns, dispatches) of a session, an agent, or the whole system.",
            usage_get,
        ),
        op(
            "log.list",
            OpKind::Query,
            Access::System,
            "Read RuntimeLog entries (one per command: caller, op, targets, outcome, duration), oldest first.",
            log_list,
        ),
    ]
}

async fn hook_list(
    ctx: Ctx,
    params: HookListParams,
) -> Result<Out<Vec<HookRegistration>>, SyscallError> {
    let hook = params.hook.as_deref();
    let mut registrations = ctx.kernel.hooks.registrations(hook);
    registrations.extend(ctx.kernel.services.event_subscriptions(hook));
    // Confined callers see what fires for them: system registrations and their own.
    let caller = &ctx.caller;
    registrations.retain(|r| match (r.owner_type, r.owner_id.as_deref()) {
        (OwnerType::System, _) => true,
        (_, _) if caller.confined_agent().is_none() => true,
        (OwnerType::Agent, Some(agent)) => {
            caller.confined_session().is_none() && caller.can_read_agent(agent)
        }
        (OwnerType::Session, Some(session)) => caller.confined_session() == Some(session),
        _ => false,
    });
    Ok(Out::new(registrations))
}

async fn event_publish(ctx: Ctx, params: EventPublishParams) -> Result<Out<Value>, SyscallError> {
    let name = params.name.as_str();
    let rest = name.strip_prefix("skill.").ok_or_else(|| {
        SyscallError::invalid(
            "name",
            "must be `skill.<skill>.<event>`; other names belong to the kernel",
        )
    })?;
    let (skill, event) = rest.split_once('.').unwrap_or((rest, ""));
    let valid_event = !event.is_empty()
        && event.len() <= 64
        && event.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    crate::skills::manifest::check_name(skill).map_err(|m| SyscallError::invalid("name", m))?;
    if !valid_event {
        return Err(SyscallError::invalid(
            "name",
            "the part after `skill.<skill>.` must be 1–64 of `a-z0-9-_.`",
        ));
    }
    match &ctx.caller.scope {
        Scope::Service { skill: own, .. } if own != skill => {
            return Err(ctx.caller.deny(format_args!(
                "publish events of skill `{skill}` (only `skill.{own}.*`)"
            )));
        }
        Scope::Service { .. } | Scope::Kernel | Scope::Admin => {}
        Scope::Agent { .. } | Scope::Session { .. } => {
            return Err(ctx.caller.deny("publish events (services and admin only)"));
        }
    }
    let size = serde_json::to_vec(&params.payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_EVENT_PAYLOAD_BYTES {
        return Err(SyscallError::invalid(
            "payload",
            format!(
                "is {size} bytes; at most {MAX_EVENT_PAYLOAD_BYTES} (put large data in content.put and send its id)"
            ),
        ));
    }
    let (agent_id, session_id) = match params.session_id.as_deref() {
        Some(session_id) => {
            let agent_id = ctx.kernel.session_agent(session_id).await?;
            if !ctx.caller.can_write_session(&agent_id, session_id) {
                return Err(ctx
                    .caller
                    .deny(format_args!("publish events about session {session_id}")));
            }
            (Some(agent_id), Some(session_id.to_owned()))
        }
        None => (ctx.caller.confined_agent().map(str::to_owned), None),
    };
    let published = ctx.kernel.events.emit(
        name,
        agent_id.as_deref(),
        session_id.as_deref(),
        params.payload,
    );
    let mut out = Out::new(json!({"id": published.id, "name": name}));
    out.agent_id = agent_id;
    out.session_id = session_id;
    Ok(out)
}

async fn usage_get(ctx: Ctx, params: UsageParams) -> Result<Out<UsageResult>, SyscallError> {
    let caller = &ctx.caller;
    let result = match (params.session_id, params.agent_id) {
        (Some(session_id), _) => {
            let session = ctx.kernel.get_session(&session_id).await?;
            if !caller.can_read_agent(&session.agent_id) {
                return Err(caller.deny(format_args!("read usage of session {session_id}")));
            }
            UsageResult {
                scope: "session".into(),
                id: Some(session_id),
                usage: session.usage,
            }
        }
        (None, Some(agent_id)) => {
            if !caller.can_read_agent(&agent_id) {
                return Err(caller.deny(format_args!("read usage of agent {agent_id}")));
            }
            let agent = ctx.kernel.get_agent(&agent_id).await?;
            UsageResult {
                scope: "agent".into(),
                id: Some(agent_id),
                usage: agent.usage,
            }
        }
        (None, None) => {
            if !caller.is_system() {
                return Err(caller.deny("read system-wide usage (pass agentId or sessionId)"));
            }
            UsageResult {
                scope: "system".into(),
                id: None,
                usage: ctx.kernel.store.system_usage().await?,
            }
        }
    };
    Ok(Out::new(result))
}

async fn log_list(ctx: Ctx, params: LogListParams) -> Result<Out<Vec<LogEntry>>, SyscallError> {
    let limit = validate::page_limit(params.limit, 100)?;
    // Rows are written in the background; make this caller's earlier commands visible.
    ctx.kernel.log.flush().await;
    Ok(Out::new(
        ctx.kernel
            .store
            .list_log(&LogQuery {
                op: params.operation,
                agent_id: params.agent_id,
                session_id: params.session_id,
                after_seq: params.after_seq,
                limit,
            })
            .await?,
    ))
}
