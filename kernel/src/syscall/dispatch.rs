//! `session.dispatch`, `dispatch.*` and the context views: running the agent.

use aos_sdk::protocol::{
    Dispatch, DispatchIdParams, DispatchListParams, DispatchStarted, ErrorCode, IfBusy, Page, Role,
    SessionDispatchParams,
};
use serde_json::json;

use super::session::require_ready;
use super::validate;
use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::hooks::{Admission, HookScope};
use crate::react::{Work, llm, new_record};
use crate::store::ListQuery;

/// Largest user message of a dispatch, in characters.
const MAX_MESSAGE_CHARS: usize = 256 * 1024;

pub(super) fn ops() -> Vec<OpSpec> {
    vec![
        op(
            "session.dispatch",
            OpKind::Command,
            Access::Session {
                field: "sessionId",
                write: true,
            },
            "Run the agent on a user message: returns a dispatchId at once (stream it at GET /dispatches/{id}/stream). A busy session refuses, or queues with `ifBusy: queue`.",
            dispatch,
        ),
        op(
            "dispatch.get",
            OpKind::Query,
            Access::Scoped,
            "Read a dispatch record: status, turns, usage, error, and where it waits (session queue or compute gate).",
            get,
        ),
        op(
            "dispatch.list",
            OpKind::Query,
            Access::Scoped,
            "List dispatches, newest last, optionally of one session or status; scoped tokens see their own agent's.",
            list,
        ),
    ]
}

async fn dispatch(
    ctx: Ctx,
    params: SessionDispatchParams,
) -> Result<Out<DispatchStarted>, SyscallError> {
    if params.message.role != Role::User {
        return Err(SyscallError::invalid(
            "message.role",
            "must be `user`: a dispatch starts from a user message",
        ));
    }
    validate::text(
        "message.content",
        &params.message.content,
        1,
        MAX_MESSAGE_CHARS,
    )?;
    if let Some(meta) = &params.message.meta {
        super::session::validate_meta("message.meta", meta)?;
    }
    if let Some(p) = params.priority {
        validate::priority("priority", p)?;
    }
    let kernel = &ctx.kernel;
    let system = kernel.system().await?;
    if let Some(ms) = params.deadline_ms {
        validate::range("deadlineMs", ms, 1000, system.dispatch_timeout_ms.max(1000))?;
    }
    if llm::providers(&system, kernel.dispatcher.env_provider.as_ref()).is_empty() {
        return Err(SyscallError::new(
            ErrorCode::ProviderUnavailable,
            "no LLM provider is configured: add `providers` and `defaultModel` to aoscb.json, or start the daemon with \
             AOS_LLM_BASE_URL and AOS_LLM_MODEL (e.g. AOS_LLM_BASE_URL=http://127.0.0.1:11434/v1 AOS_LLM_MODEL=qwen2.5 for Ollama); \
             docs/deployment.md has examples for OpenRouter, OpenAI, Ollama, LM Studio and llama.cpp",
        ));
    }
    let session = kernel.get_session(&params.session_id).await?;
    require_ready(&session)?;
    let agent = kernel.get_agent(&session.agent_id).await?;
    let priority = params
        .priority
        .or(session.priority)
        .unwrap_or(agent.priority);
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    kernel
        .hooks
        .admit(
            Admission::SessionDispatchBefore,
            HookScope::session(agent_id, session_id),
            || {
                (
                    json!({
                        "agentId": agent_id,
                        "sessionId": session_id,
                        "userMessage": {"role": "user", "content": params.message.content},
                        "priority": priority,
                    }),
                    json!({}),
                )
            },
        )
        .await?;
    let deadline = std::time::Duration::from_millis(
        params
            .deadline_ms
            .unwrap_or(system.dispatch_timeout_ms)
            .min(system.dispatch_timeout_ms),
    );
    let work = Work {
        dispatch: new_record(&session, priority),
        content: params.message.content.clone(),
        meta: params.message.meta.clone(),
        origin: ctx.caller.origin(),
        deadline,
    };
    let queue = params.if_busy == Some(IfBusy::Queue);
    let started = kernel
        .dispatcher
        .submit(kernel, &session, work, queue)
        .await?;
    let id = started.dispatch_id.clone();
    Ok(Out::new(started)
        .session(agent_id, session_id)
        .targets(json!({"dispatchId": id})))
}

async fn readable(ctx: &Ctx, dispatch: &Dispatch) -> Result<(), SyscallError> {
    if ctx.caller.can_read_agent(&dispatch.agent_id) {
        Ok(())
    } else {
        Err(ctx
            .caller
            .deny(format_args!("read dispatch {}", dispatch.dispatch_id)))
    }
}

async fn get(ctx: Ctx, params: DispatchIdParams) -> Result<Out<Dispatch>, SyscallError> {
    let dispatch = ctx
        .kernel
        .store
        .get_dispatch(&params.dispatch_id)
        .await?
        .ok_or_else(|| SyscallError::not_found("dispatch", &params.dispatch_id))?;
    readable(&ctx, &dispatch).await?;
    Ok(Out::new(ctx.kernel.dispatcher.enrich(dispatch)))
}

async fn list(ctx: Ctx, params: DispatchListParams) -> Result<Out<Page<Dispatch>>, SyscallError> {
    let limit = validate::page_limit(params.limit, 100)?;
    if let Some(session_id) = &params.session_id {
        let agent = ctx.kernel.session_agent(session_id).await?;
        if !ctx.caller.can_read_agent(&agent) {
            return Err(ctx
                .caller
                .deny(format_args!("list the dispatches of session {session_id}")));
        }
    } else if ctx.caller.confined_agent().is_some() {
        return Err(SyscallError::invalid(
            "sessionId",
            "is required for scoped tokens (list the dispatches of one of your sessions)",
        ));
    }
    let items = ctx
        .kernel
        .store
        .list_dispatches(
            params.session_id.as_deref(),
            params.status,
            &ListQuery {
                after: params.cursor.clone(),
                limit,
            },
        )
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|d| d.dispatch_id.clone()))
        .flatten();
    let items = items
        .into_iter()
        .map(|d| ctx.kernel.dispatcher.enrich(d))
        .collect();
    Ok(Out::new(Page { items, next_cursor }))
}
