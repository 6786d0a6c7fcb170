//! Operations that fit no single domain: hooks, events, usage, the RuntimeLog.

use aos_sdk::protocol::{
    EventPublishParams, HookListParams, HookRegistration, LogEntry, LogListParams, UsageParams,
    UsageResult,
};

use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, not_yet, op};
use crate::store::LogQuery;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "hook.list",
            OpKind::Query,
            Access::Anyone,
            "Who listens to which hook, in call order (owner level, priority, registration).",
            hook_list,
        ),
        not_yet::<EventPublishParams>(
            "event.publish",
            OpKind::Command,
            Access::Scoped,
            "A service publishes a custom event under its own namespace `skill.<name>.*`.",
            "the skills-and-services part (supervisor, protocol v1)",
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
    Ok(Out::new(
        ctx.kernel.hooks.registrations(params.hook.as_deref()),
    ))
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
