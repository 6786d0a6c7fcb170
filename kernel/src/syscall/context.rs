//! `session.context.*` and `session.compact`: the context a model would get, folds,
//! rebuilds and compaction. The kernel provides the mechanism (the hook calls, the
//! lease, the history writes); the context engine skill decides (`aos-context` by
//! default). Without an engine, `get`/`rebuild` show the neutral projection and
//! `fold`, `unfold` and `compact` answer `unavailable`, naming the skill to start.

use aos_sdk::protocol::{
    ContextRefParams, ContextView, ErrorCode, PartBody, SessionCompactParams, SessionIdParams,
};
use serde_json::{Value, json};

use super::{Access, Ctx, OpKind, OpSpec, Out, SyscallError, op};
use crate::react::context::{self, Neutral};
use crate::sessions::compaction::{self, Compaction};

pub(super) fn ops() -> Vec<OpSpec> {
    let session = |write| Access::Session {
        field: "sessionId",
        write,
    };
    vec![
        op(
            "session.context.get",
            OpKind::Query,
            session(false),
            "The context the model would get next (after `context.assemble`), without the system prompt: messages, their provenance from the engine, token estimate.",
            get,
        ),
        op(
            "session.context.rebuild",
            OpKind::Query,
            session(false),
            "Rebuild the context from history (`context.assemble`, trigger `rebuild`) and show it.",
            rebuild,
        ),
        op(
            "session.context.fold",
            OpKind::Command,
            session(true),
            "Replace a history message (`ref.historyMessageId`) or one part (`ref.historyPartId`) with a placeholder in the context; history is unchanged. Needs a context engine.",
            fold,
        ),
        op(
            "session.context.unfold",
            OpKind::Command,
            session(true),
            "Restore a folded message or part in the context (stored content comes back in full). Needs a context engine.",
            unfold,
        ),
        op(
            "session.compact",
            OpKind::Command,
            session(true),
            "Compact the session's context: the engine's summary of the conversation so far becomes a marker/summary boundary, skills are reinjected after it. History keeps everything. The session must be idle.",
            compact,
        ),
        op(
            "session.context.compact",
            OpKind::Command,
            session(true),
            "Same as session.compact.",
            compact,
        ),
    ]
}

async fn view(
    ctx: &Ctx,
    session_id: &str,
    trigger: &str,
    data: Option<Value>,
) -> Result<(ContextView, Option<Value>), SyscallError> {
    let kernel = &ctx.kernel;
    let session = kernel.get_session(session_id).await?;
    let system = kernel.system().await?;
    let agent = kernel.get_agent(&session.agent_id).await?;
    let model = crate::react::default_model(kernel, &system, &agent, &session);
    let started = std::time::Instant::now();
    let assembly = context::assemble(
        kernel,
        context::Request {
            session: &session,
            dispatch_id: None,
            trigger,
            trigger_data: data,
            model: model.as_deref(),
            token_budget: system.compaction_threshold,
            recent: &[],
        },
        &mut Neutral::default(),
    )
    .await?;
    let assemble_us = started.elapsed().as_micros() as u64;
    let output = assembly.engine_output.clone();
    let field = |name: &str| {
        output
            .as_ref()
            .and_then(|o| o.get(name))
            .and_then(Value::as_u64)
    };
    Ok((
        ContextView {
            session_id: session.session_id.clone(),
            message_count: assembly.messages.len() as u64,
            messages: assembly.messages,
            provenance: assembly.provenance,
            estimated_tokens: assembly.estimated_tokens,
            last_seq: session.last_seq,
            engine: assembly.by_engine,
            context_revision: field("contextRevision"),
            folded_ref_count: field("foldedRefCount"),
            boundary_seq: field("boundarySeq"),
            assemble_us,
        },
        output,
    ))
}

async fn get(ctx: Ctx, params: SessionIdParams) -> Result<Out<ContextView>, SyscallError> {
    Ok(Out::new(
        view(&ctx, &params.session_id, "incremental", None).await?.0,
    ))
}

async fn rebuild(ctx: Ctx, params: SessionIdParams) -> Result<Out<ContextView>, SyscallError> {
    Ok(Out::new(
        view(&ctx, &params.session_id, "rebuild", None).await?.0,
    ))
}

async fn fold(ctx: Ctx, params: ContextRefParams) -> Result<Out<Value>, SyscallError> {
    fold_or_unfold(ctx, params, "fold").await
}

async fn unfold(ctx: Ctx, params: ContextRefParams) -> Result<Out<Value>, SyscallError> {
    fold_or_unfold(ctx, params, "unfold").await
}

/// Checks the ref against history, then lets the engine apply it.
async fn fold_or_unfold(
    ctx: Ctx,
    params: ContextRefParams,
    trigger: &str,
) -> Result<Out<Value>, SyscallError> {
    let r = &params.r#ref;
    let message = ctx
        .kernel
        .store
        .get_message(&params.session_id, &r.history_message_id)
        .await?
        .ok_or_else(|| {
            SyscallError::new(
                ErrorCode::NotFound,
                format!(
                    "session {} has no message `{}`",
                    params.session_id, r.history_message_id
                ),
            )
        })?;
    if let Some(part_id) = &r.history_part_id {
        let Some(part) = message.parts.iter().find(|p| &p.id == part_id) else {
            return Err(SyscallError::invalid(
                "ref.historyPartId",
                format!(
                    "message {} has no part `{part_id}`; its parts: {}",
                    message.id,
                    message
                        .parts
                        .iter()
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if !matches!(part.body, PartBody::Bash(_) | PartBody::Text { .. }) {
            return Err(SyscallError::invalid(
                "ref.historyPartId",
                format!(
                    "`{part_id}` is a `{}` part; parts that fold are bash results and text",
                    part.body.kind()
                ),
            ));
        }
    }
    let data = json!({"ref": {"historyMessageId": r.history_message_id, "historyPartId": r.history_part_id}});
    let (view, output) = view(&ctx, &params.session_id, trigger, Some(data)).await?;
    let Some(output) = output.filter(|_| view.engine) else {
        return Err(SyscallError::new(
            ErrorCode::Unavailable,
            format!(
                "no context engine is running, and folding is its job: start one — `aos-context` is the default (`aos skill start aos-context`); `{trigger}` changed nothing"
            ),
        ));
    };
    if output.get("applied").and_then(Value::as_bool) == Some(false) {
        let reason = output
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("the engine did not apply it");
        return Err(SyscallError::invalid("ref", reason.to_owned()));
    }
    let session = ctx.kernel.get_session(&params.session_id).await?;
    Ok(Out::new(json!({
        "sessionId": view.session_id,
        "ref": data_ref(&params),
        "contextRevision": view.context_revision,
        "messageCount": view.message_count,
        "foldedRefCount": view.folded_ref_count,
        "estimatedTokens": view.estimated_tokens,
    }))
    .session(&session.agent_id, &session.session_id)
    .targets(json!({"ref": data_ref(&params)})))
}

fn data_ref(params: &ContextRefParams) -> Value {
    json!({"historyMessageId": params.r#ref.history_message_id, "historyPartId": params.r#ref.history_part_id})
}

async fn compact(ctx: Ctx, params: SessionCompactParams) -> Result<Out<Value>, SyscallError> {
    let session = ctx.kernel.get_session(&params.session_id).await?;
    let done = compaction::compact(
        &ctx.kernel,
        Compaction {
            session_id: &params.session_id,
            auto: params.auto.unwrap_or(false),
            dispatch: None,
        },
    )
    .await?;
    Ok(Out::new(done.to_json(&params.session_id)).session(&session.agent_id, &session.session_id))
}
