//! `aos-context`: the default context engine, a system service.
//!
//! - `context.assemble` — history → context by the projection rules (`project.rs`),
//!   from the latest compaction boundary, with fold placeholders; a token estimate with
//!   a real tokenizer; `compact: true` when the estimate passes the model's budget.
//! - `context.compact` — the summary prompt for `instruct` compaction.
//! - `tool.after` — results over `autoFoldThreshold` go to the ContentStore; history
//!   keeps the reference and a preview.
//!
//! Its cache per session is fed by the messages the kernel sends along (`recent`) when
//! they join it without a gap, else by `session.history.list` from the last seq it has
//! (the kernel sends `lastSeq` with each call) — so it never misses a message and
//! works for any kernel that speaks the protocol.

mod project;
mod session;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aos_sdk::protocol::service::HookSubscription;
use aos_sdk::protocol::{Message, PartBody};
use aos_sdk::service::{Service, ServiceClient, Verdict};
use serde_json::{Value, json};

use project::{Ref, preview_of};
use session::SessionContext;
use tokens::{Config, Encoding, Tokenizer};

/// History pages read at once.
const PAGE: u64 = 1000;

/// One session's cache, locked while a call works on it.
type Shared = Arc<tokio::sync::Mutex<SessionContext>>;

struct Engine {
    client: ServiceClient,
    config: Config,
    tokenizer: Tokenizer,
    /// Session caches with their last use; locked only to find or insert one.
    sessions: Mutex<HashMap<String, (Shared, Instant)>>,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-context", 2, serve)
}

fn load_config() -> Result<Config, String> {
    let dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| ".".into(), std::path::PathBuf::from);
    let path = dir.join("config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

async fn serve() -> Result<(), String> {
    let config = load_config()?;
    let service = Service::from_env("aos-context");
    let engine = Arc::new(Engine {
        client: service.client(),
        config,
        tokenizer: Tokenizer::default(),
        sessions: Mutex::new(HashMap::new()),
    });
    // Load the common encoding before the first turn needs it.
    let warm = engine.clone();
    tokio::task::spawn_blocking(move || warm.tokenizer.count(Encoding::O200k, "warm up"));
    let (assemble, compact, fold) = (engine.clone(), engine.clone(), engine.clone());
    service
        .on_hook_with(
            HookSubscription {
                name: "context.assemble".into(),
                priority: None,
                timeout_ms: Some(30_000),
                interactive: false,
            },
            move |input, _output| {
                let engine = assemble.clone();
                async move { engine.assemble(&input).await }
            },
        )
        .on_hook_with(
            HookSubscription {
                name: "context.compact".into(),
                priority: None,
                timeout_ms: Some(30_000),
                interactive: false,
            },
            move |input, _output| {
                let engine = compact.clone();
                async move { engine.compact(&input).await }
            },
        )
        .on_hook("tool.after", move |input, output| {
            let engine = fold.clone();
            async move { engine.auto_fold(&input, output).await }
        })
        .run()
        .await
        .map_err(|e| e.to_string())
}

fn field<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

impl Engine {
    /// The cache of `session_id`, created empty; drops the least recently used beyond
    /// the configured number.
    fn session(
        &self,
        session_id: &str,
        encoding: Encoding,
    ) -> Arc<tokio::sync::Mutex<SessionContext>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((ctx, used)) = sessions.get_mut(session_id) {
            *used = now;
            return ctx.clone();
        }
        if sessions.len() >= self.config.cached_sessions.max(1)
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        let ctx = Arc::new(tokio::sync::Mutex::new(SessionContext::new(
            session_id, encoding,
        )));
        sessions.insert(session_id.to_owned(), (ctx.clone(), now));
        ctx
    }

    /// Messages of `session_id` after `after`, in seq order.
    async fn history_after(&self, session_id: &str, after: u64) -> Result<Vec<Message>, String> {
        let mut out = Vec::new();
        let mut from = after + 1;
        loop {
            let page = self
                .client
                .call_ok(
                    "session.history.list",
                    json!({"sessionId": session_id, "fromSeq": from, "limit": PAGE}),
                )
                .await
                .map_err(|e| format!("reading history: {}", e.message))?;
            let items: Vec<Message> = serde_json::from_value(page["items"].clone())
                .map_err(|e| format!("history page: {e}"))?;
            let more = page["nextCursor"].is_string();
            if let Some(last) = items.last() {
                from = last.seq + 1;
            }
            out.extend(items);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Brings the cache up to date: from what the kernel sent along when it joins
    /// the cache; else from scratch on `rebuild` or first use, else the messages after
    /// the newest it has.
    async fn sync(
        &self,
        ctx: &mut SessionContext,
        rebuild: bool,
        last_seq: Option<u64>,
        recent: Vec<Message>,
    ) -> Result<(), String> {
        let joins = !rebuild
            && ctx.last_seq > 0
            && recent.first().is_some_and(|m| m.seq <= ctx.last_seq + 1)
            && recent.last().map(|m| m.seq) >= last_seq;
        if joins {
            for message in recent {
                ctx.ingest(message, &self.tokenizer);
            }
            return Ok(());
        }
        if rebuild || ctx.last_seq == 0 {
            let history = self.history_after(&ctx.session_id, 0).await?;
            ctx.reset(history, &self.tokenizer);
        } else if last_seq.is_none_or(|seq| seq > ctx.last_seq) {
            for message in self.history_after(&ctx.session_id, ctx.last_seq).await? {
                ctx.ingest(message, &self.tokenizer);
            }
        }
        Ok(())
    }

    async fn assemble(&self, input: &Value) -> Verdict {
        let started = Instant::now();
        let Some(session_id) = field(input, "sessionId") else {
            return Verdict::Keep;
        };
        let trigger = field(input, "trigger").unwrap_or("incremental");
        let model = field(input, "model");
        let encoding = Encoding::for_model(model.unwrap_or(""));
        let recent: Vec<Message> = input
            .get("recent")
            .and_then(|r| serde_json::from_value(r.clone()).ok())
            .unwrap_or_default();
        let handle = self.session(session_id, encoding);
        let mut ctx = handle.lock().await;
        ctx.set_encoding(encoding, &self.tokenizer);
        if let Err(error) = self
            .sync(
                &mut ctx,
                trigger == "rebuild",
                input.get("lastSeq").and_then(Value::as_u64),
                recent,
            )
            .await
        {
            tracing::warn!(session_id, %error, "cannot read history; the kernel's own projection is used");
            return Verdict::Keep;
        }
        let mut applied = None;
        if matches!(trigger, "fold" | "unfold") {
            applied = Some(self.fold_or_unfold(&mut ctx, trigger, input).await);
        }
        let assembled = ctx.assemble();
        let budget = self
            .config
            .budget(model, input.get("tokenBudget").and_then(Value::as_u64));
        let compact = assembled.tokens > budget && assembled.compactable >= 2;
        tracing::debug!(
            session_id,
            trigger,
            messages = assembled.messages.len(),
            tokens = assembled.tokens,
            us = started.elapsed().as_micros() as u64,
            "assembled"
        );
        let mut output = json!({
            "messages": assembled.messages,
            "estimatedTokens": assembled.tokens,
            "tokenBudget": budget,
            "compact": compact,
            "contextRevision": ctx.revision,
            "foldedRefCount": ctx.folded_count(),
            "boundarySeq": ctx.boundary_seq,
            "tokenizer": encoding.name(),
        });
        if let Some(result) = applied {
            output["applied"] = json!(result.is_ok());
            if let Err(reason) = result {
                output["reason"] = json!(reason);
            }
        }
        Verdict::Output(output)
    }

    async fn fold_or_unfold(
        &self,
        ctx: &mut SessionContext,
        trigger: &str,
        input: &Value,
    ) -> Result<(), String> {
        let Some(r) = input
            .get("triggerData")
            .and_then(|d| d.get("ref"))
            .and_then(Ref::from_wire)
        else {
            return Err("the call carries no `ref`".into());
        };
        let Some(message) = ctx.find(&r).cloned() else {
            return Err(format!(
                "`{}` is not in the context (before the compaction boundary at seq {}, or no such part)",
                r.part_id.as_deref().unwrap_or(&r.message_id),
                ctx.boundary_seq
            ));
        };
        if trigger == "fold" {
            ctx.fold(r, &self.tokenizer);
            return Ok(());
        }
        // Unfolding an auto-folded bash result brings back the stored content.
        let content_id = r.part_id.as_ref().and_then(|part| {
            message
                .parts
                .iter()
                .find(|p| &p.id == part)
                .and_then(|p| match &p.body {
                    PartBody::Bash(call) => call.output.as_ref()?.content_id.clone(),
                    _ => None,
                })
        });
        let stored = match content_id {
            Some(content_id) => Some(
                self.client
                    .call_ok("content.read", json!({"contentId": content_id}))
                    .await
                    .map_err(|e| format!("reading {content_id}: {}", e.message))?["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => None,
        };
        ctx.unfold(r, stored, &self.tokenizer);
        Ok(())
    }

    async fn compact(&self, input: &Value) -> Verdict {
        let Some(session_id) = field(input, "sessionId") else {
            return Verdict::Keep;
        };
        let handle = self.session(session_id, Encoding::O200k);
        let mut ctx = handle.lock().await;
        let to_seq = input.get("proposedToSeq").and_then(Value::as_u64);
        if let Err(error) = self.sync(&mut ctx, false, to_seq, Vec::new()).await {
            tracing::warn!(session_id, %error, "cannot read history for compaction");
            return Verdict::Keep;
        }
        let from = ctx.boundary_seq;
        let budget = self.config.budget(
            field(input, "model"),
            input.get("tokenBudget").and_then(Value::as_u64),
        );
        let to = ctx
            .compaction_end(budget / 2)
            .min(to_seq.unwrap_or(ctx.last_seq));
        let transcript = transcript(ctx.range(from, to), self.config.summary_input_chars);
        Verdict::Output(json!({
            "mode": "instruct",
            "summaryPrompt": format!("{SUMMARY_PROMPT}{transcript}"),
            "fromSeq": from,
            "toSeq": to,
            "reinjectSkills": ctx.active_skills(),
        }))
    }

    async fn auto_fold(&self, input: &Value, output: Value) -> Verdict {
        let Some(result) = output.get("result").and_then(Value::as_str) else {
            return Verdict::Keep;
        };
        let threshold = input
            .get("autoFoldThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(self.config.auto_fold_threshold);
        let size = result.chars().count() as u64;
        if size <= threshold {
            return Verdict::Keep;
        }
        let Some(session_id) = field(input, "sessionId") else {
            return Verdict::Keep;
        };
        match self
            .client
            .call_ok(
                "content.put",
                json!({"sessionId": session_id, "content": result}),
            )
            .await
        {
            Ok(stored) => Verdict::Output(json!({
                "result": null,
                "contentId": stored["contentId"],
                "sizeChars": stored["sizeChars"],
                "lineCount": stored["lineCount"],
                "preview": preview_of(result),
            })),
            Err(error) => {
                tracing::warn!(session_id, message = %error.message, "cannot store a large result; it stays inline");
                Verdict::Keep
            }
        }
    }
}

/// The instruction for the summary (the kernel sends it to the model as the user
/// message, after its own short system prompt).
const SUMMARY_PROMPT: &str = "Summarize the conversation below into a concise summary that lets the work continue without it. Keep:\n\
- key decisions and conclusions, and why they were taken;\n\
- important code changes and file paths (exact paths, names and commands);\n\
- unfinished tasks and next steps;\n\
- the user's preferences and constraints.\n\
Leave out what no longer matters. Write it as notes to yourself.\n\nConversation:\n";

/// The range as text for the summary prompt: user and assistant text, commands with
/// the start of their output; when longer than `max_chars`, its start and end with
/// the middle elided.
fn transcript<'a>(messages: impl Iterator<Item = &'a Message>, max_chars: usize) -> String {
    let mut lines = Vec::new();
    for message in messages {
        for part in &message.parts {
            let line = match &part.body {
                PartBody::Text { text } => format!("[{}] {:?}: {text}", message.seq, message.role),
                PartBody::Bash(call) => {
                    let output = call.output.as_ref();
                    let shown = match output {
                        Some(o) if o.content_id.is_some() => format!(
                            "(output stored as {}, {} chars; starts:)\n{}",
                            o.content_id.as_deref().unwrap_or_default(),
                            o.size_chars.unwrap_or(0),
                            o.preview.as_deref().unwrap_or_default()
                        ),
                        Some(o) => o
                            .visible_result
                            .as_deref()
                            .unwrap_or_default()
                            .chars()
                            .take(1500)
                            .collect(),
                        None => String::new(),
                    };
                    let error = call
                        .error_text
                        .as_deref()
                        .map(|e| format!("\n[{e}]"))
                        .unwrap_or_default();
                    format!("[{}] $ {}\n{shown}{error}", message.seq, call.command)
                }
                PartBody::CompactionSummary { text, .. } => {
                    format!("[{}] earlier summary: {text}", message.seq)
                }
                PartBody::Interrupt { reason, .. } => {
                    format!("[{}] (interrupted: {reason})", message.seq)
                }
                PartBody::Error { source, message: m } => {
                    format!("[{}] (error from {source}: {m})", message.seq)
                }
                _ => continue,
            };
            lines.push(line);
        }
    }
    let text = lines.join("\n");
    if text.chars().count() <= max_chars {
        return text;
    }
    let head: String = text.chars().take(max_chars / 3).collect();
    let tail_len = max_chars - head.chars().count();
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len() - tail_len..].iter().collect()
    };
    format!("{head}\n[… the middle of the conversation is left out …]\n{tail}")
}
