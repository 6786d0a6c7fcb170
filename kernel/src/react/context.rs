//! Context assembly: `context.assemble` through the engine skills, with the kernel's
//! neutral projection as the fallback when no engine answers.
//!
//! The chain starts from `{"messages": null}`: an engine builds the context itself
//! (from its own cache and `session.history.list`), so the kernel reads no history
//! while one answers. When nobody listens, or every engine fails, the kernel projects
//! the whole history neutrally (`projection.rs`), loading it on first need.
//!
//! An engine answers `{messages, estimatedTokens?, compact?, …}`; each message is a
//! chat message, or a ContextMessage `{wire, aos}` whose `aos` provenance is kept for
//! `session.context.get` and stripped before the model sees it. `compact: true` asks
//! the kernel to compact before the next model call.
//!
//! The input carries `lastSeq` (the session's newest seq) and `recent`: the messages
//! the running dispatch wrote since its previous assembly. An engine whose cache ends
//! just before `recent` takes them from there; any gap (another writer, a new engine)
//! and it reads history instead.

use aos_sdk::protocol::{Message, SessionCb};
use serde_json::{Value, json};

use super::projection::Projection;
use crate::hooks::{HookScope, Transform};
use crate::kernel::Kernel;
use crate::store::HistoryQuery;
use crate::syscall::SyscallError;

/// The neutral projection, loaded from history only when it is needed.
#[derive(Debug, Default)]
pub struct Neutral {
    projection: Option<Projection>,
}

impl Neutral {
    /// The projection of the whole history.
    pub async fn get(
        &mut self,
        kernel: &Kernel,
        session_id: &str,
    ) -> Result<&Projection, SyscallError> {
        if self.projection.is_none() {
            self.projection = Some(Projection::of(&load_history(kernel, session_id).await?));
        }
        Ok(self.projection.as_ref().expect("loaded above"))
    }

    /// Adds a message written since (only if the projection was loaded).
    pub fn push(&mut self, message: &Message) {
        if let Some(projection) = &mut self.projection {
            projection.push(message);
        }
    }

    /// Forgets the projection (history gained messages the kernel did not see).
    pub fn reset(&mut self) {
        self.projection = None;
    }
}

/// Every message of a session, in seq order.
pub async fn load_history(kernel: &Kernel, session_id: &str) -> Result<Vec<Message>, SyscallError> {
    let mut all = Vec::new();
    let mut from = 1;
    loop {
        let page = kernel
            .store
            .list_messages(
                session_id,
                &HistoryQuery {
                    from_seq: Some(from),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await?;
        let full = page.len() == 1000;
        if let Some(last) = page.last() {
            from = last.seq + 1;
        }
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// What to assemble for.
pub struct Request<'a> {
    pub session: &'a SessionCb,
    pub dispatch_id: Option<&'a str>,
    /// `dispatch`, `incremental`, `rebuild`, `fold`, `unfold`.
    pub trigger: &'a str,
    pub trigger_data: Option<Value>,
    pub model: Option<&'a str>,
    pub token_budget: u64,
    /// Messages this dispatch wrote since its previous assembly (in seq order), sent
    /// along so an engine whose cache is current needs no history read.
    pub recent: &'a [Message],
}

/// An assembled context.
#[derive(Debug, Clone, Default)]
pub struct Assembly {
    /// Chat messages as the model gets them.
    pub messages: Vec<Value>,
    /// The engine's provenance per message (`aos` of each ContextMessage), when given.
    pub provenance: Option<Vec<Value>>,
    pub estimated_tokens: u64,
    /// The engine asks for compaction.
    pub compact: bool,
    /// True when an engine built it; false for the neutral projection.
    pub by_engine: bool,
    /// The engine's whole answer (revision, fold counts, fold result…).
    pub engine_output: Option<Value>,
}

/// Runs `context.assemble` and falls back to the neutral projection.
pub async fn assemble(
    kernel: &Kernel,
    request: Request<'_>,
    neutral: &mut Neutral,
) -> Result<Assembly, SyscallError> {
    let session = request.session;
    let (agent_id, session_id) = (session.agent_id.as_str(), session.session_id.as_str());
    let answered = kernel
        .hooks
        .transform(
            Transform::ContextAssemble,
            HookScope::session(agent_id, session_id),
            || {
                (
                    json!({
                        "agentId": agent_id,
                        "sessionId": session_id,
                        "dispatchId": request.dispatch_id,
                        "trigger": request.trigger,
                        "triggerData": request.trigger_data,
                        "tokenBudget": request.token_budget,
                        "model": request.model,
                        "lastSeq": session.last_seq,
                        "recent": request.recent,
                    }),
                    json!({"messages": null}),
                )
            },
        )
        .await;
    if let Some(output) = answered
        && let Some(items) = output.get("messages").and_then(Value::as_array)
    {
        let mut messages = Vec::with_capacity(items.len());
        let mut provenance = Vec::with_capacity(items.len());
        let mut any_provenance = false;
        for item in items {
            match item.get("wire") {
                Some(wire) => {
                    messages.push(wire.clone());
                    provenance.push(item.get("aos").cloned().unwrap_or(Value::Null));
                    any_provenance = true;
                }
                None => {
                    messages.push(item.clone());
                    provenance.push(Value::Null);
                }
            }
        }
        let chars: usize = messages
            .iter()
            .map(|m| m["content"].as_str().map_or(0, str::len))
            .sum();
        return Ok(Assembly {
            estimated_tokens: output
                .get("estimatedTokens")
                .and_then(Value::as_u64)
                .unwrap_or((chars / 4) as u64),
            compact: output.get("compact").and_then(Value::as_bool) == Some(true),
            messages,
            provenance: any_provenance.then_some(provenance),
            by_engine: true,
            engine_output: Some(output),
        });
    }
    let projection = neutral.get(kernel, session_id).await?;
    Ok(Assembly {
        messages: projection.messages(),
        provenance: None,
        estimated_tokens: projection.estimated_tokens(),
        compact: false,
        by_engine: false,
        engine_output: None,
    })
}
