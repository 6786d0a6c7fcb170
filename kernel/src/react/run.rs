//! The ReAct loop of one dispatch, and the loop over a session's run queue.
//!
//! Each turn: build the context (the neutral projection, then `context.assemble`),
//! the system prompt (`session.system.transform`), the messages
//! (`session.messages.transform`), the model (`compute.model.resolve`) and the request
//! (`compute.params.transform`); admit it (`compute.before`); wait for the compute
//! gate; call the model, streaming its tokens. A final answer ends the dispatch. Each
//! bash call passes `tool.env` and `tool.before`, runs, passes `tool.after`, and is
//! written to history before the next model call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_sdk::protocol::{
    BashCall, BashOutput, BashState, Dispatch, DispatchStatus, ErrorBody, ErrorCode, Lease,
    LogEntry, Message, Origin, PartBody, Role, StreamDone, StreamEvent, StreamMessage,
    StreamToolCall, StreamToolResult, SystemCb, Timestamp, Usage,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::bash::{self, BashRequest};
use super::context::{self, Neutral};
use super::stream::DispatchStream;
use super::{
    StopReason, Stopper, Work, llm, release_lease, renew_lease, session_caller, take_lease,
};
use crate::hooks::{Admission, EventName, HookScope, Transform};
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::syscall::{AppendRequest, SyscallError, append_message};

/// Longest deadline a bash call may ask for.
const MAX_BASH_TIMEOUT_MS: u64 = 3_600_000;
/// Characters of a stored result shown inline.
const PREVIEW_CHARS: usize = 2000;

/// A dispatch about to run or running.
pub(crate) struct Run {
    pub record: Dispatch,
    pub stream: Arc<DispatchStream>,
    pub stopper: Stopper,
    pub user_message: Message,
}

/// How a dispatch ended.
struct Outcome {
    status: DispatchStatus,
    error: Option<ErrorBody>,
    answer: Option<String>,
}

impl Outcome {
    fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: DispatchStatus::Failed,
            error: Some(ErrorBody::new(code, message)),
            answer: None,
        }
    }
}

/// Runs a session's dispatches one after the other while its run queue has work, then
/// releases the lease.
pub(super) async fn session_loop(
    kernel: Arc<Kernel>,
    agent_id: String,
    session_id: String,
    lease: Lease,
    first: Run,
) {
    let mut lease = lease;
    let mut next = Some(first);
    loop {
        let current: Arc<Mutex<Option<Stopper>>> = Arc::new(Mutex::new(None));
        let renewal = renew_while_running(&kernel, &session_id, &lease.id, current.clone());
        // The end of the last dispatch is announced only once the session is free
        // again, so a client that reacts to `done` with a new dispatch is not refused.
        let mut ended: Option<Ended> = None;
        let mut released = false;
        while let Some(mut run) = next.take() {
            *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.stopper.clone());
            let outcome = execute(&kernel, &agent_id, &session_id, &mut run).await;
            if kernel.cluster.is_some() {
                // Dispatches other nodes queued for this session run here, in turn.
                kernel.dispatcher.adopt_waiting(&kernel, &session_id).await;
            }
            let queued = kernel.dispatcher.next_queued(&session_id);
            if queued.is_none() {
                // The lease goes back in the same group commit as the dispatch's end.
                renewal.cancel();
                released = true;
                let lease_id = lease.id.as_str();
                ended = Some(
                    finish(
                        &kernel,
                        &agent_id,
                        &session_id,
                        run,
                        outcome,
                        Some(lease_id),
                    )
                    .await,
                );
                break;
            }
            finish(&kernel, &agent_id, &session_id, run, outcome, None)
                .await
                .announce(&kernel, &agent_id, &session_id);
            next = start_queued(&kernel, &agent_id, &session_id, queued).await;
        }
        renewal.cancel();
        if !released {
            release_lease(&kernel, &session_id, &lease.id).await;
        }
        kernel.emit(
            EventName::SessionUpdated,
            Some(&agent_id),
            Some(&session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "changed": ["phase"], "phase": "idle"}),
        );
        // Work queued while the lease was being released runs under a new lease.
        let more = kernel.dispatcher.finish_session(&session_id);
        if let Some(end) = ended {
            end.announce(&kernel, &agent_id, &session_id);
        }
        let Some(work) = more else {
            // Another node may have queued a dispatch in the database just before the
            // lease went back; after releasing, look once more.
            if let Some((taken, work)) = kernel.dispatcher.take_waiting(&kernel, &session_id).await
            {
                lease = taken;
                next = start_queued(&kernel, &agent_id, &session_id, Some(work)).await;
                if next.is_none() {
                    release_lease(&kernel, &session_id, &lease.id).await;
                    kernel.dispatcher.finish_session(&session_id);
                    return;
                }
                continue;
            }
            return;
        };
        match take_lease(&kernel, &session_id).await {
            Ok(taken) => {
                lease = taken;
                next = start_queued(&kernel, &agent_id, &session_id, Some(work)).await;
            }
            Err(error) => {
                fail_work(&kernel, work, error.into_body()).await;
                next = None;
            }
        }
    }
}

/// Renews the lease every third of its lifetime; stops the running dispatch if the
/// lease was lost. Cancel the returned token to stop renewing.
fn renew_while_running(
    kernel: &Arc<Kernel>,
    session_id: &str,
    lease_id: &str,
    current: Arc<Mutex<Option<Stopper>>>,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (kernel, session_id, lease_id, done) = (
        kernel.clone(),
        session_id.to_owned(),
        lease_id.to_owned(),
        stop.clone(),
    );
    kernel.tasks.clone().spawn(async move {
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(kernel.config.lease_renew()) => {}
            }
            if let Err(error) = renew_lease(&kernel, &session_id, &lease_id).await {
                tracing::error!(%session_id, %error, "lost the session lease; stopping its dispatch");
                if let Some(stopper) = current.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    stopper.stop(StopReason::LeaseLost);
                }
                return;
            }
        }
    });
    stop
}

/// Begins the next queued dispatch; work that cannot begin is failed and the next
/// one tried.
pub(super) async fn start_queued(
    kernel: &Arc<Kernel>,
    agent_id: &str,
    session_id: &str,
    first: Option<Work>,
) -> Option<Run> {
    let mut work = first;
    while let Some(item) = work {
        match kernel
            .dispatcher
            .begin(kernel, agent_id, session_id, item.clone())
            .await
        {
            Ok((_, run)) => return Some(run),
            Err(error) => {
                fail_work(kernel, item, error.into_body()).await;
                work = kernel.dispatcher.next_queued(session_id);
            }
        }
    }
    None
}

/// Ends a queued dispatch that could not start.
async fn fail_work(kernel: &Arc<Kernel>, work: Work, error: ErrorBody) {
    let mut record = work.dispatch;
    record.status = DispatchStatus::Failed;
    record.ended_at = Some(Timestamp::now());
    record.error = Some(error.clone());
    if let Err(e) = kernel.store.save_dispatch(&record).await {
        tracing::error!(dispatch_id = %record.dispatch_id, error = %e, "saving a failed dispatch");
    }
    if let Some(stream) = kernel.dispatcher.stream(&record.dispatch_id) {
        stream.push(StreamEvent::Error {
            code: error.code,
            message: error.message.clone(),
        });
        stream.push(StreamEvent::Done(done_event(&record, None)));
    }
    kernel.dispatcher.finished_stream(&record.dispatch_id);
}

fn done_event(record: &Dispatch, answer: Option<String>) -> StreamDone {
    StreamDone {
        dispatch_id: record.dispatch_id.clone(),
        status: record.status,
        usage: record.usage,
        turns: record.turns,
        final_message_seq: record.final_message_seq,
        answer,
        error: record.error.clone(),
        ended_at: record.ended_at.unwrap_or_else(Timestamp::now),
    }
}

/// A dispatch that ended, waiting to be announced.
struct Ended {
    record: Dispatch,
    stream: Arc<DispatchStream>,
    answer: Option<String>,
}

impl Ended {
    /// The stream's `done` and `session.dispatch.after`.
    fn announce(self, kernel: &Arc<Kernel>, agent_id: &str, session_id: &str) {
        let record = self.record;
        self.stream
            .push(StreamEvent::Done(done_event(&record, self.answer)));
        kernel.dispatcher.finished_stream(&record.dispatch_id);
        let appended = record
            .final_message_seq
            .zip(record.user_message_seq)
            .map_or(1, |(last, first)| last.saturating_sub(first) + 1);
        kernel.emit(
            EventName::SessionDispatchAfter,
            Some(agent_id),
            Some(session_id),
            json!({
                "agentId": agent_id,
                "sessionId": session_id,
                "dispatchId": record.dispatch_id,
                "status": record.status,
                "appendedCount": appended,
                "turns": record.turns,
                "usage": record.usage,
            }),
        );
    }
}

/// Records how a dispatch ended; [`Ended::announce`] tells everyone.
async fn finish(
    kernel: &Arc<Kernel>,
    agent_id: &str,
    session_id: &str,
    run: Run,
    outcome: Outcome,
    release: Option<&str>,
) -> Ended {
    // Ends the dispatch's helpers (its deadline timer).
    run.stopper.token().cancel();
    let mut record = run.record;
    record.status = outcome.status;
    record.error = outcome.error;
    record.ended_at = Some(Timestamp::now());
    let totals = Usage {
        dispatches: 1,
        ..record.usage
    };
    // Independent writes, so they share one group commit.
    let (saved, counted, ()) = tokio::join!(
        kernel.store.save_dispatch(&record),
        kernel.store.add_usage(session_id, &totals),
        async {
            if let Some(lease_id) = release {
                release_lease(kernel, session_id, lease_id).await;
            }
        }
    );
    if let Err(error) = saved {
        tracing::error!(dispatch_id = %record.dispatch_id, %error, "saving the dispatch record failed");
    }
    if let Err(error) = counted {
        tracing::warn!(session_id, %error, "recording the dispatch's usage failed");
    }
    if let Some(error) = &record.error {
        run.stream.push(StreamEvent::Error {
            code: error.code,
            message: error.message.clone(),
        });
        kernel.emit(
            EventName::SessionError,
            Some(agent_id),
            Some(session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": record.dispatch_id, "source": "dispatch", "recoverable": true, "message": error.message}),
        );
    }
    tracing::info!(dispatch_id = %record.dispatch_id, session_id, status = record.status.as_str(), turns = record.turns, "dispatch ended");
    Ended {
        record,
        stream: run.stream,
        answer: outcome.answer,
    }
}

/// Everything a turn needs to know about where it runs.
struct Place<'a> {
    kernel: &'a Arc<Kernel>,
    agent_id: &'a str,
    session_id: &'a str,
    dispatch_id: String,
    system: SystemCb,
    workspace: std::path::PathBuf,
    token: String,
    /// The session's, else the agent's, else the system's `autoFoldThreshold`.
    auto_fold_threshold: u64,
}

impl Place<'_> {
    fn scope(&self) -> HookScope<'_> {
        HookScope::session(self.agent_id, self.session_id)
    }

    /// Writes a message of this dispatch to history.
    async fn write(
        &self,
        role: Role,
        origin: Origin,
        parts: Vec<PartBody>,
    ) -> Result<Message, SyscallError> {
        let (message, _) = append_message(
            self.kernel,
            AppendRequest {
                agent_id: self.agent_id,
                session_id: self.session_id,
                role,
                origin,
                parts,
                dispatch_id: Some(self.dispatch_id.clone()),
                kernel_parts: false,
            },
        )
        .await?;
        Ok(message)
    }
}

async fn execute(kernel: &Arc<Kernel>, agent_id: &str, session_id: &str, run: &mut Run) -> Outcome {
    let token = kernel
        .auth
        .issue_ephemeral(session_caller(agent_id, session_id));
    let outcome = execute_with(kernel, agent_id, session_id, run, &token).await;
    kernel.auth.revoke_ephemeral(&token);
    match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            // Failures are recorded in history too, so the agent sees them next time.
            let message = error.message.clone();
            let written = append_message(
                kernel,
                AppendRequest {
                    agent_id,
                    session_id,
                    role: Role::Assistant,
                    origin: Origin::Aos,
                    parts: vec![PartBody::Error {
                        source: "dispatch".into(),
                        message: message.clone(),
                    }],
                    dispatch_id: Some(run.record.dispatch_id.clone()),
                    kernel_parts: false,
                },
            )
            .await;
            if let Ok((m, _)) = written {
                run.record.final_message_seq = Some(m.seq);
            }
            Outcome::failed(error.code, message)
        }
    }
}

async fn execute_with(
    kernel: &Arc<Kernel>,
    agent_id: &str,
    session_id: &str,
    run: &mut Run,
    token: &str,
) -> Result<Outcome, SyscallError> {
    let system = kernel.system().await?;
    let agent = kernel.get_agent(agent_id).await?;
    let session = kernel.get_session(session_id).await?;
    let providers = llm::providers(&system, kernel.dispatcher.env_provider.as_ref());
    let workspace = bash::workspace(&kernel.config.home, agent_id).map_err(|e| {
        SyscallError::new(
            ErrorCode::Internal,
            format!("cannot prepare the agent's workspace: {e}"),
        )
    })?;
    let system_fold = system.auto_fold_threshold;
    let place = Place {
        kernel,
        agent_id,
        session_id,
        dispatch_id: run.record.dispatch_id.clone(),
        system,
        workspace,
        token: token.to_owned(),
        auto_fold_threshold: session
            .auto_fold_threshold
            .or(agent.auto_fold_threshold)
            .unwrap_or(system_fold),
    };
    run.record.final_message_seq = Some(run.user_message.seq);
    let mut neutral = Neutral::default();
    // Written since the last assembly: the engine gets them with the next one.
    let mut unsent: Vec<Message> = vec![run.user_message.clone()];
    let default_model = super::default_model(kernel, &place.system, &agent, &session);
    let mut trigger = "dispatch";
    let mut compacted_this_turn = false;
    loop {
        if let Some(reason) = run.stopper.stopped() {
            return stop_outcome(&place, run, reason).await;
        }
        if run.record.turns >= place.system.max_turns {
            return Err(SyscallError::new(
                ErrorCode::Timeout,
                format!(
                    "the dispatch used all {} turns (maxTurns) without a final answer",
                    place.system.max_turns
                ),
            ));
        }
        let assembling = std::time::Instant::now();
        // An interrupt or the deadline also ends a slow assembly (a context engine or
        // a transform hook taking its time), not only the model call after it.
        let prepared = tokio::select! {
            prepared = prepare(
                &place,
                &mut neutral,
                &unsent,
                trigger,
                default_model.as_deref(),
                &run.user_message,
                &agent.display_name,
            ) => prepared,
            () = run.stopper.token().cancelled() => continue,
        };
        let (conversation, compact) = prepared?;
        run.record.timing.context_us += assembling.elapsed().as_micros() as u64;
        unsent.clear();
        if compact && !compacted_this_turn {
            // The engine says the context is past its budget: compact, then assemble
            // again from the new boundary. At most once per turn.
            compacted_this_turn = true;
            let compacted = crate::sessions::compaction::compact(
                kernel,
                crate::sessions::compaction::Compaction {
                    session_id,
                    auto: true,
                    dispatch: Some((&place.dispatch_id, run.record.priority, run.stopper.token())),
                },
            )
            .await;
            match compacted {
                Ok(done) => {
                    add(&mut run.record.usage, &done.usage);
                    run.record.final_message_seq = Some(done.last_seq);
                    neutral.reset();
                    trigger = "incremental";
                    continue;
                }
                Err(error) => {
                    tracing::warn!(session_id, %error, "automatic compaction failed; the turn goes on with the full context");
                }
            }
        }
        compacted_this_turn = false;
        let model_ref = super::resolve_model(
            kernel,
            agent_id,
            session_id,
            Some(&place.dispatch_id),
            default_model.as_deref(),
            "turn",
        )
        .await?;
        let (provider, model) = super::find_provider(&providers, &model_ref)?;
        run.record.model = Some(model_ref.clone());
        let body = llm::request_body(model, conversation, provider.tool_mode);
        let body = kernel
            .hooks
            .transform(Transform::ComputeParamsTransform, place.scope(), || {
                (
                    json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "model": model_ref}),
                    json!({"params": body.clone()}),
                )
            })
            .await
            .and_then(|out| out.get("params").cloned().filter(Value::is_object))
            .unwrap_or(body);
        let call = super::ModelCall {
            agent_id,
            session_id,
            dispatch_id: &place.dispatch_id,
            provider: &provider.name,
            model: &model_ref,
            request_type: "turn",
            priority: run.record.priority,
            deadline_at: run.record.deadline_at,
            last_seq: run.record.final_message_seq.unwrap_or(0),
            turn: run.record.turns + 1,
        };
        let Some(priority) = super::admit_model_call(kernel, &call, run.stopper.token()).await?
        else {
            continue;
        };
        let permit = tokio::select! {
            permit = kernel.dispatcher.gate.acquire(&provider.name, provider.max_concurrent, priority, &place.dispatch_id, |position| {
                kernel.emit(
                    EventName::ComputeWaiting,
                    Some(agent_id),
                    Some(session_id),
                    json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "provider": provider.name, "position": position.position, "priority": priority}),
                );
            }) => permit,
            () = run.stopper.token().cancelled() => continue,
        };
        let stream = run.stream.clone();
        let mut on_delta = move |text: &str| {
            stream.push(StreamEvent::Delta {
                text: text.to_owned(),
            });
        };
        let called = std::time::Instant::now();
        let reply = tokio::select! {
            reply = llm::call(&kernel.dispatcher.http, provider, &body, &mut on_delta) => reply,
            () = run.stopper.token().cancelled() => continue,
        };
        run.record.timing.model_us += called.elapsed().as_micros() as u64;
        drop(permit);
        let reply =
            reply.map_err(|e| SyscallError::new(ErrorCode::ProviderUnavailable, e.to_string()))?;
        run.record.turns += 1;
        let turn_usage = Usage {
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            total_tokens: reply.prompt_tokens + reply.completion_tokens,
            cost_usd: provider.cost(model, reply.prompt_tokens, reply.completion_tokens),
            turns: 1,
            dispatches: 0,
        };
        // Session and agent totals are written once, when the dispatch ends;
        // `compute.after` carries each turn's usage as it happens.
        add(&mut run.record.usage, &turn_usage);
        kernel.emit(
            EventName::ComputeAfter,
            Some(agent_id),
            Some(session_id),
            json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "model": model_ref, "provider": provider.name, "requestType": "turn", "usage": turn_usage, "turn": run.record.turns, "toolCalls": reply.tool_calls.len(), "retries": reply.retries}),
        );
        let text = reply.text.trim().to_owned();
        if reply.tool_calls.is_empty() {
            let answer = if text.is_empty() {
                "(the model answered with nothing)".to_owned()
            } else {
                text
            };
            let message = place
                .write(
                    Role::Assistant,
                    Origin::Agent,
                    vec![PartBody::Text {
                        text: answer.clone(),
                    }],
                )
                .await?;
            neutral.push(&message);
            run.record.final_message_seq = Some(message.seq);
            run.stream.push(StreamEvent::Message(StreamMessage {
                seq: message.seq,
                role: Role::Assistant,
                text: answer.clone(),
            }));
            after_turn(&place, run.record.turns, 0, 1, true);
            return Ok(Outcome {
                status: DispatchStatus::Done,
                error: None,
                answer: Some(answer),
            });
        }
        let calls = reply.tool_calls.len();
        for (index, call) in reply.tool_calls.iter().enumerate() {
            let part = tool(&place, run, call).await?;
            let result = StreamToolResult {
                seq: 0,
                tool_call_id: part.tool_call_id.clone(),
                state: part.state,
                exit_code: part.output.as_ref().and_then(|o| o.exit_code),
                preview: part
                    .output
                    .as_ref()
                    .and_then(|o| o.visible_result.clone().or_else(|| o.preview.clone()))
                    .unwrap_or_default()
                    .chars()
                    .take(PREVIEW_CHARS)
                    .collect(),
                content_id: part.output.as_ref().and_then(|o| o.content_id.clone()),
                error_text: part.error_text.clone(),
            };
            let mut parts = Vec::new();
            if index == 0 && !text.is_empty() {
                parts.push(PartBody::Text { text: text.clone() });
            }
            parts.push(PartBody::Bash(part));
            let message = place.write(Role::Assistant, Origin::Agent, parts).await?;
            neutral.push(&message);
            unsent.push(message.clone());
            run.record.final_message_seq = Some(message.seq);
            run.stream.push(StreamEvent::ToolResult(StreamToolResult {
                seq: message.seq,
                ..result
            }));
            if run.stopper.token().is_cancelled() {
                break;
            }
        }
        after_turn(&place, run.record.turns, calls, calls, false);
        trigger = "incremental";
    }
}

fn add(total: &mut Usage, turn: &Usage) {
    total.prompt_tokens += turn.prompt_tokens;
    total.completion_tokens += turn.completion_tokens;
    total.total_tokens += turn.total_tokens;
    total.cost_usd += turn.cost_usd;
    total.turns += turn.turns;
}

fn after_turn(
    place: &Place<'_>,
    turn: u32,
    tool_calls: usize,
    appended: usize,
    final_answer: bool,
) {
    place.kernel.emit(
        EventName::ContextAfterTurn,
        Some(place.agent_id),
        Some(place.session_id),
        json!({
            "agentId": place.agent_id,
            "sessionId": place.session_id,
            "dispatchId": place.dispatch_id,
            "turnIndex": turn,
            "toolCalls": tool_calls,
            "appendedCount": appended,
            "finalAnswer": final_answer,
        }),
    );
}

async fn stop_outcome(
    place: &Place<'_>,
    run: &mut Run,
    reason: StopReason,
) -> Result<Outcome, SyscallError> {
    match reason {
        // The interrupt fact is already in history: `session.interrupt` writes it first.
        StopReason::Interrupt(_) => Ok(Outcome {
            status: DispatchStatus::Interrupted,
            error: None,
            answer: None,
        }),
        StopReason::Shutdown => {
            let message = place
                .write(
                    Role::User,
                    Origin::Aos,
                    vec![PartBody::Interrupt {
                        reason: "kernel stopping".into(),
                        payload: None,
                    }],
                )
                .await?;
            run.record.final_message_seq = Some(message.seq);
            Ok(Outcome {
                status: DispatchStatus::Interrupted,
                error: None,
                answer: None,
            })
        }
        StopReason::Deadline => Err(SyscallError::new(
            ErrorCode::Timeout,
            "the dispatch ran past its deadline and was stopped",
        )),
        StopReason::LeaseLost => Err(SyscallError::new(
            ErrorCode::LeaseExpired,
            "the session's lease was lost while the dispatch ran",
        )),
    }
}

/// The conversation for one model call: system prompt, then the context; and whether
/// the context engine asks for compaction first.
async fn prepare(
    place: &Place<'_>,
    neutral: &mut Neutral,
    recent: &[Message],
    trigger: &str,
    model: Option<&str>,
    user_message: &Message,
    agent_name: &str,
) -> Result<(Vec<Value>, bool), SyscallError> {
    let (kernel, agent_id, session_id) = (place.kernel, place.agent_id, place.session_id);
    let session = kernel.get_session(session_id).await?;
    let assembly = context::assemble(
        kernel,
        context::Request {
            session: &session,
            dispatch_id: Some(&place.dispatch_id),
            trigger,
            trigger_data: None,
            model,
            token_budget: place.system.compaction_threshold,
            recent,
        },
        neutral,
    )
    .await?;
    let (context, compact) = (assembly.messages, assembly.compact);
    let user_text = user_message.parts.iter().find_map(|p| match &p.body {
        PartBody::Text { text } => Some(text.clone()),
        _ => None,
    });
    let default_system = default_system_prompt(agent_name, session_id, &place.workspace);
    let system = kernel
        .hooks
        .transform(Transform::SessionSystemTransform, place.scope(), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "userMessage": user_text}),
                json!({"system": default_system.clone()}),
            )
        })
        .await
        .and_then(|out| out.get("system").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(default_system);
    let mut messages = Vec::with_capacity(context.len() + 1);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(context);
    let messages = kernel
        .hooks
        .transform(Transform::SessionMessagesTransform, place.scope(), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id}),
                json!({"messages": messages.clone()}),
            )
        })
        .await
        .and_then(|out| out.get("messages").and_then(Value::as_array).cloned())
        .unwrap_or(messages);
    Ok((messages, compact))
}

/// The neutral system prompt: where the agent is and what it has, nothing more.
fn default_system_prompt(
    agent_name: &str,
    session_id: &str,
    workspace: &std::path::Path,
) -> String {
    format!(
        "You are {agent_name}, an agent running in AOS. You act with one tool, `bash`, which runs a command in your workspace ({}) and returns its output. From bash, the `aos` command reaches the AOS kernel as you, in session {session_id}; the `aos` skill in your context explains it. Work step by step; when the task is done, answer in plain text without calling the tool.",
        workspace.display()
    )
}

async fn tool(
    place: &Place<'_>,
    run: &mut Run,
    call: &llm::ToolCall,
) -> Result<BashCall, SyscallError> {
    let refused = |command: String, message: String| BashCall {
        tool_call_id: call.id.clone(),
        state: BashState::OutputError,
        command,
        cwd: None,
        timeout_ms: None,
        output: None,
        error_text: Some(message),
    };
    let raw_command = call.arguments["command"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if call.name != "bash" {
        return Ok(refused(
            raw_command,
            format!("there is no tool `{}`; the only tool is `bash`", call.name),
        ));
    }
    if let Some(problem) = call.arguments["__invalid"].as_str() {
        return Ok(refused(String::new(), problem.to_owned()));
    }
    let mut args = call.arguments.clone();
    let (kernel, agent_id, session_id) = (place.kernel, place.agent_id, place.session_id);
    let env_extra = kernel
        .hooks
        .transform(Transform::ToolEnv, place.scope(), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "toolCallId": call.id, "args": args}),
                json!({"env": {}}),
            )
        })
        .await
        .and_then(|out| out.get("env").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    let workspace = place.workspace.display().to_string();
    let admitted = kernel
        .hooks
        .admit_audited(Admission::ToolBefore, place.scope(), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "toolCallId": call.id, "args": args, "workspace": workspace}),
                json!({"args": args}),
            )
        })
        .await;
    audit_admission(place, call, &raw_command, &admitted).await;
    match admitted.map(|(out, _)| out) {
        Err(rejection) => return Ok(refused(raw_command, format!("refused: {rejection}"))),
        Ok(Some(out)) => {
            if let Some(rewritten) = out.get("args").filter(|a| a.is_object()) {
                args = rewritten.clone();
            }
        }
        Ok(None) => {}
    }
    let Some(command) = args["command"]
        .as_str()
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned)
    else {
        return Ok(refused(
            raw_command,
            "the call has no `command` (a non-empty string)".into(),
        ));
    };
    let timeout_ms = match args.get("timeoutMs") {
        None | Some(Value::Null) => place.system.bash.timeout_ms,
        Some(v) => match v.as_u64() {
            Some(ms @ 1..=MAX_BASH_TIMEOUT_MS) => ms,
            _ => {
                return Ok(refused(
                    command,
                    format!("`timeoutMs` must be 1 to {MAX_BASH_TIMEOUT_MS}"),
                ));
            }
        },
    };
    let cwd_arg = args["cwd"].as_str().map(str::to_owned);
    let cwd = match &cwd_arg {
        Some(dir) => place.workspace.join(dir),
        None => place.workspace.clone(),
    };
    run.stream.push(StreamEvent::ToolCall(StreamToolCall {
        tool_call_id: call.id.clone(),
        command: command.clone(),
        cwd: cwd_arg.clone(),
        timeout_ms: args.get("timeoutMs").and_then(Value::as_u64),
    }));
    let request = BashRequest {
        command: command.clone(),
        cwd,
        workspace: place.workspace.clone(),
        timeout: Duration::from_millis(timeout_ms),
        env: environment(place, &env_extra),
        max_output_bytes: place.system.bash.max_output_bytes as usize,
        sandbox: place.system.bash.sandbox,
        registry: Some((
            kernel.services.paths.run_dir.join("bash"),
            place.dispatch_id.clone(),
        )),
    };
    let started = std::time::Instant::now();
    let ran = bash::run(&request, run.stopper.token()).await;
    run.record.timing.tools_us += started.elapsed().as_micros() as u64;
    let result = match ran {
        Ok(result) => result,
        Err(message) => {
            let mut part = refused(command, message);
            part.cwd = cwd_arg;
            return Ok(part);
        }
    };
    let raw = json!({
        "exitCode": result.exit_code,
        "signal": result.signal,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdoutDropped": result.stdout_dropped,
        "stderrDropped": result.stderr_dropped,
        "timedOut": result.timed_out,
        "interrupted": result.interrupted,
        "durationMs": result.duration.as_millis() as u64,
    });
    kernel
        .log
        .record(LogEntry {
            seq: 0,
            id: new_id("log_"),
            ts: Timestamp::now(),
            caller: format!("session:{session_id}"),
            op: "tool.execute".into(),
            agent_id: Some(agent_id.to_owned()),
            session_id: Some(session_id.to_owned()),
            outcome: match result.exit_code {
                Some(0) => "ok".into(),
                _ => result
                    .failure(request.timeout)
                    .unwrap_or_else(|| "failed".into()),
            },
            duration_us: started.elapsed().as_micros() as u64,
            targets: Some(
                json!({"dispatchId": place.dispatch_id, "toolCallId": call.id, "command": command}),
            ),
            data: Some(raw.clone()),
        })
        .await;
    let visible = result.visible();
    let shaped = kernel
        .hooks
        .transform(Transform::ToolAfter, place.scope(), || {
            (
                json!({"agentId": agent_id, "sessionId": session_id, "dispatchId": place.dispatch_id, "toolCallId": call.id, "rawResult": raw, "autoFoldThreshold": place.auto_fold_threshold}),
                json!({"result": visible.clone()}),
            )
        })
        .await;
    let mut output = BashOutput {
        visible_result: Some(visible.clone()),
        exit_code: result.exit_code,
        content_id: None,
        size_chars: None,
        line_count: None,
        preview: None,
        truncated: result.truncated(),
    };
    if let Some(shaped) = shaped {
        match (
            shaped.get("result"),
            shaped.get("contentId").and_then(Value::as_str),
        ) {
            (Some(Value::String(text)), _) => output.visible_result = Some(text.clone()),
            (_, Some(content_id)) => {
                output.visible_result = None;
                output.content_id = Some(content_id.to_owned());
                output.size_chars = shaped.get("sizeChars").and_then(Value::as_u64);
                output.line_count = shaped.get("lineCount").and_then(Value::as_u64);
                output.preview = shaped
                    .get("preview")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            _ => {}
        }
    }
    // History parts have a hard size bound: a larger result is stored as content.
    if let Some(text) = &output.visible_result
        && text.chars().count() > kernel.config.limits.max_part_chars
    {
        let stored = kernel
            .call(
                crate::auth::Caller::kernel(),
                "content.put",
                json!({"sessionId": session_id, "content": text}),
            )
            .await
            .into_result()
            .map_err(|e| {
                SyscallError::new(
                    e.code,
                    format!("storing a large bash result: {}", e.message),
                )
            })?;
        output.content_id = stored["contentId"].as_str().map(str::to_owned);
        output.size_chars = stored["sizeChars"].as_u64();
        output.line_count = stored["lineCount"].as_u64();
        output.preview = Some(text.chars().take(PREVIEW_CHARS).collect());
        output.visible_result = None;
    }
    let failure = result.failure(request.timeout);
    Ok(BashCall {
        tool_call_id: call.id.clone(),
        state: if failure.is_none() {
            BashState::OutputAvailable
        } else {
            BashState::OutputError
        },
        command,
        cwd: cwd_arg,
        timeout_ms: args.get("timeoutMs").and_then(Value::as_u64),
        output: Some(output),
        error_text: failure,
    })
}

/// RuntimeLog rows for the reasons `tool.before` handlers gave: every refusal, and
/// every allow that names why (a policy service's rule), so decisions are audited.
async fn audit_admission(
    place: &Place<'_>,
    call: &llm::ToolCall,
    command: &str,
    admitted: &Result<(Option<Value>, Vec<crate::hooks::Explained>), crate::hooks::HookRejection>,
) {
    let rows: Vec<(String, &str, String)> = match admitted {
        Ok((_, reasons)) => reasons
            .iter()
            .map(|r| (r.skill.clone(), "allowed", r.reason.clone()))
            .collect(),
        Err(rejection) => vec![(
            rejection.skill.clone(),
            "rejected",
            rejection.reason.clone(),
        )],
    };
    for (skill, outcome, reason) in rows {
        place
            .kernel
            .log
            .record(LogEntry {
                seq: 0,
                id: new_id("log_"),
                ts: Timestamp::now(),
                caller: format!("service:{skill}"),
                op: "tool.admission".into(),
                agent_id: Some(place.agent_id.to_owned()),
                session_id: Some(place.session_id.to_owned()),
                outcome: outcome.into(),
                duration_us: 0,
                targets: Some(json!({"dispatchId": place.dispatch_id, "toolCallId": call.id, "command": command})),
                data: Some(json!({"hook": "tool.before", "skill": skill, "reason": reason})),
            })
            .await;
    }
}

/// The environment of a bash command: a scrubbed base, what `tool.env` adds, and the
/// kernel's own variables (which `tool.env` cannot replace).
fn environment(place: &Place<'_>, extra: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let inherit = |name: &str| std::env::var(name).ok().map(|v| (name.to_owned(), v));
    let bin_dirs = &place.kernel.services.paths.bin_dirs;
    // The kernel's binaries (the `aos` CLI) first, then every skill's `scripts/`, then
    // the system's PATH.
    let scripts = place.kernel.skills.snapshot().script_dirs();
    let path = std::env::join_paths(bin_dirs.iter().cloned().chain(scripts).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .map(|p| p.to_string_lossy().into_owned())
    .unwrap_or_default();
    let mut env: Vec<(String, String)> = ["USER", "LOGNAME", "TZ", "TMPDIR", "LANG", "LC_ALL"]
        .iter()
        .filter_map(|n| inherit(n))
        .collect();
    env.push(("PATH".into(), path));
    env.push(("HOME".into(), place.workspace.display().to_string()));
    env.push(("SHELL".into(), "/bin/bash".into()));
    env.push(("TERM".into(), "dumb".into()));
    for (key, value) in extra {
        let valid_name = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if !valid_name || key.starts_with("AOS_") {
            tracing::warn!(variable = %key, "tool.env gave a variable that is not allowed; ignored");
            continue;
        }
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value));
    }
    for (key, value) in [
        ("AOS_API_URL", place.kernel.services.api_url()),
        ("AOS_TOKEN", place.token.clone()),
        ("AOS_AGENT_ID", place.agent_id.to_owned()),
        ("AOS_SESSION_ID", place.session_id.to_owned()),
        ("AOS_DISPATCH_ID", place.dispatch_id.clone()),
        ("AOS_WORKSPACE", place.workspace.display().to_string()),
        (
            "AOS_SKILL_ROOT",
            place.kernel.config.skill_root.display().to_string(),
        ),
    ] {
        env.push((key.to_owned(), value));
    }
    env
}
