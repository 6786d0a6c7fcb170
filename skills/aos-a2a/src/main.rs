//! `aos-a2a`: agents message each other and run sub-agents, a system service.
//!
//! Every cross-agent write is made here, with this service's own authority, after the
//! policy (`policy.json`) and the loop bounds (`config.json`) allow it: the sending
//! agent's token never touches the target. A message is a history fact on both sides —
//! a `system` note in the sender's session, a `user` message in the target's — each
//! headed with sender, target, mode, message id and correlation id. The kernel keeps no
//! metadata on history messages, so the structured form of those fields is this
//! service's record, which names the history message of each side.
//!
//! Modes: `silent` appends to the target's session; `notify` dispatches it (queued
//! behind a running dispatch); `wake` dispatches it and sends the final answer back
//! to the sender as a reply (appended when the sender waits for it, else dispatched).
//! `spawn` creates a child session that runs a task; `wait` collects answers.
//!
//! Loops are bounded: each dispatch this service starts carries a chain depth (one more
//! than the dispatch that sent the message), refused past `maxChainDepth`; and more than
//! `maxWakesPerMinute` notify and wake messages from one agent to another are refused.
//! Sub-agents are bounded by `maxChildren` and `maxSpawnDepth` instead, and replies by
//! the chain depth (a reply answers a message, so it cannot start a loop by itself).
//! Messages live in SQLite in the service's data directory, so pending replies survive
//! a restart: running ones are checked against their dispatches at start.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aos_sdk::protocol::service::{CallerInfo, EventParams, OpKindWire};
use aos_sdk::protocol::{ErrorBody, ErrorCode, Timestamp};
use aos_sdk::service::{OpError, Service, ServiceClient};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    /// Hops a chain of messages may take (A wakes B, whose dispatch wakes C, …).
    max_chain_depth: i64,
    /// Notify and wake messages from one agent to another per rolling minute. Spawns
    /// (bounded by `max_children` and `max_spawn_depth`), replies (bounded by the chain
    /// depth) and silent messages are not counted.
    max_wakes_per_minute: usize,
    /// Sub-agents of sub-agents: a root session spawns depth 1.
    max_spawn_depth: i64,
    /// Unfinished sub-agents per parent session.
    max_children: i64,
    /// Longest message or task accepted.
    max_text_chars: usize,
}

/// `policy.json`: who may message whom. The first rule that matches decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Sending agent: its id, its display name, `*`, or a prefix ending in `*`.
    from: String,
    to: String,
    /// `silent`, `notify`, `wake`, `reply`, `spawn`, or `*`.
    #[serde(default = "all_modes")]
    modes: Vec<String>,
    allow: bool,
}

fn all_modes() -> Vec<String> {
    vec!["*".into()]
}

fn pattern_matches(pattern: &str, id: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix) || name.starts_with(prefix),
        None => pattern == id || pattern == name,
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY, corr TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('silent', 'notify', 'wake', 'reply', 'spawn')),
        from_agent TEXT NOT NULL, from_session TEXT NOT NULL,
        to_agent TEXT NOT NULL, to_session TEXT NOT NULL,
        text TEXT NOT NULL, depth INTEGER NOT NULL, dispatch_id TEXT,
        state TEXT NOT NULL CHECK (state IN ('delivered', 'running', 'answered', 'failed')),
        waiting INTEGER NOT NULL DEFAULT 0, answer TEXT, error TEXT, reply_to TEXT,
        created_at TEXT NOT NULL, answered_at TEXT)",
    "CREATE INDEX IF NOT EXISTS messages_by_dispatch ON messages (dispatch_id)",
    "CREATE INDEX IF NOT EXISTS messages_to ON messages (to_agent, created_at)",
    "CREATE INDEX IF NOT EXISTS messages_children ON messages (from_session, mode, state)",
    "CREATE TABLE IF NOT EXISTS inboxes (agent_id TEXT PRIMARY KEY, session_id TEXT NOT NULL)",
];

/// Columns added after the first release, created in stores that lack them: the
/// history message ids of a message's two sides (the sender's note; the target's
/// message when it was appended rather than dispatched).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    (
        "from_message_id",
        "ALTER TABLE messages ADD COLUMN from_message_id TEXT",
    ),
    (
        "to_message_id",
        "ALTER TABLE messages ADD COLUMN to_message_id TEXT",
    ),
];

/// One end of a message.
#[derive(Debug, Clone)]
struct End {
    agent_id: String,
    name: String,
    session_id: String,
}

/// A message about to be sent.
struct Outgoing<'a> {
    from: &'a End,
    to: &'a End,
    mode: &'static str,
    text: &'a str,
    corr: Option<String>,
    reply_to: Option<String>,
    waiting: bool,
}

struct A2a {
    pool: SqlitePool,
    client: ServiceClient,
    config: Config,
    skill_dir: PathBuf,
    /// Notify and wake messages per (from agent, to agent) in the last minute.
    rates: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
    /// Bumped whenever a message is answered; `wait` watches it.
    answered: tokio::sync::watch::Sender<u64>,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-a2a", 2, serve)
}

async fn serve() -> Result<(), String> {
    let skill_dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config: Config = serde_json::from_str(
        &std::fs::read_to_string(skill_dir.join("config.json"))
            .map_err(|e| format!("config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    let data =
        std::env::var_os("AOS_DATA_DIR").map_or_else(|| skill_dir.join("data"), PathBuf::from);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let options = SqliteConnectOptions::new()
        .filename(data.join("a2a.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", data.join("a2a.db").display()))?;
    for statement in SCHEMA {
        sqlx::query(*statement)
            .execute(&pool)
            .await
            .map_err(|e| format!("preparing the message store: {e}"))?;
    }
    for (column, add) in ADDED_COLUMNS {
        let present: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pragma_table_info('messages') WHERE name = ?")
                .bind(column)
                .fetch_one(&pool)
                .await
                .map_err(|e| format!("reading the message store's columns: {e}"))?;
        if present == 0 {
            sqlx::query(*add)
                .execute(&pool)
                .await
                .map_err(|e| format!("adding {column} to the message store: {e}"))?;
        }
    }
    let service = Service::from_env("aos-a2a");
    let a2a = Arc::new(A2a {
        pool,
        client: service.client(),
        config,
        skill_dir,
        rates: Mutex::new(HashMap::new()),
        answered: tokio::sync::watch::channel(0).0,
    });
    // Replies whose dispatch ended while this service was down.
    let resume = a2a.clone();
    tokio::spawn(async move { resume.resume().await });
    macro_rules! op {
        ($service:expr, $name:literal, $kind:expr, $doc:literal, $method:ident) => {{
            let a = a2a.clone();
            $service.on_op($name, $kind, $doc, move |params, caller| {
                let a = a.clone();
                async move { a.$method(&params, &caller).await }
            })
        }};
    }
    let service = op!(
        service,
        "agents",
        OpKindWire::Query,
        "The directory: every active agent with its id, name, description, inbox session and the modes the policy lets the caller use toward it; params {}.",
        agents
    );
    let service = op!(
        service,
        "send",
        OpKindWire::Command,
        "Message another agent: params {to (agent id or name, or a session id), text, mode? (silent|notify|wake, default notify), wait? (the sender waits for a wake's reply: it is appended, not dispatched), fromSessionId? (admin and services only)}; returns {id, corr, mode, to, dispatchId?, depth}.",
        send
    );
    let service = op!(
        service,
        "reply",
        OpKindWire::Command,
        "Answer a message you received: params {id (its a2m_… id), text, mode? (silent|notify, default notify)}; the reply carries the message's correlation id.",
        reply
    );
    let service = op!(
        service,
        "inbox",
        OpKindWire::Query,
        "Messages sent to the caller's agent, newest first: params {limit? (1-200, default 20), agentId? (admin and services only)}.",
        inbox
    );
    let service = op!(
        service,
        "spawn",
        OpKindWire::Command,
        "Start a sub-agent: params {task, agentId? (default the caller's agent), title?}; creates a child session linked to the caller's, dispatches the task and returns {sessionId, id, dispatchId} at once.",
        spawn
    );
    let service = op!(
        service,
        "wait",
        OpKindWire::Query,
        "Answers of wakes and sub-agents: params {ids (message ids or child session ids), timeoutMs? (0-25000, default 20000), stopWaiting? (true: replies still due are dispatched to the sender instead)}; returns {items: [{id, sessionId, state, answer?, error?}], pending}.",
        wait
    );
    let service = op!(
        service,
        "get",
        OpKindWire::Query,
        "One message by id: params {id}; returns {id, corr, mode, from, to, text, depth, dispatchId, state, answer?, error?, replyTo?}, where from and to are {agentId, sessionId, messageId?}: the history message of each side (the sender's note; the target's message when it was appended — a dispatched one is the user message of dispatchId).",
        get
    );
    let on_end = a2a.clone();
    service
        .on_event("session.dispatch.after", move |event| {
            let a = on_end.clone();
            async move { a.dispatch_ended(&event).await }
        })
        .run()
        .await
        .map_err(|e| e.to_string())
}

fn string<'a>(params: &'a Value, field: &str) -> Result<&'a str, OpError> {
    params
        .get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OpError::invalid(format!("`{field}` (a non-empty string) is required")))
}

fn flag(params: &Value, field: &str) -> Result<bool, OpError> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(OpError::invalid(format!("`{field}` must be true or false"))),
    }
}

fn kernel_error(error: ErrorBody) -> OpError {
    OpError::new(error.code, error.message)
}

fn db_error(e: sqlx::Error) -> OpError {
    OpError::new(
        ErrorCode::StorageUnavailable,
        format!("the a2a message store failed: {e}"),
    )
}

fn limit(message: String) -> OpError {
    OpError::new(ErrorCode::LimitExceeded, message)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The text of a history message: its text parts, joined.
fn message_text(message: &Value) -> String {
    message["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn row_json(row: &sqlx::sqlite::SqliteRow) -> Value {
    json!({
        "id": row.get::<String, _>("id"),
        "corr": row.get::<String, _>("corr"),
        "mode": row.get::<String, _>("mode"),
        "from": {"agentId": row.get::<String, _>("from_agent"), "sessionId": row.get::<String, _>("from_session"),
                 "messageId": row.get::<Option<String>, _>("from_message_id")},
        "to": {"agentId": row.get::<String, _>("to_agent"), "sessionId": row.get::<String, _>("to_session"),
               "messageId": row.get::<Option<String>, _>("to_message_id")},
        "text": row.get::<String, _>("text"),
        "depth": row.get::<i64, _>("depth"),
        "dispatchId": row.get::<Option<String>, _>("dispatch_id"),
        "state": row.get::<String, _>("state"),
        "answer": row.get::<Option<String>, _>("answer"),
        "error": row.get::<Option<String>, _>("error"),
        "replyTo": row.get::<Option<String>, _>("reply_to"),
        "createdAt": row.get::<String, _>("created_at"),
        "answeredAt": row.get::<Option<String>, _>("answered_at"),
    })
}

impl A2a {
    async fn call(&self, op: &str, params: Value) -> Result<Value, OpError> {
        self.client.call_ok(op, params).await.map_err(kernel_error)
    }

    fn policy(&self) -> Result<Policy, OpError> {
        let path = self.skill_dir.join("policy.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            OpError::new(ErrorCode::ServiceFailed, format!("{}: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            OpError::new(
                ErrorCode::ServiceFailed,
                format!("{} is not a valid policy: {e}", path.display()),
            )
        })
    }

    /// Refuses what the policy does not allow, naming the rule.
    fn allowed(&self, from: &End, to: &End, mode: &str) -> Result<(), OpError> {
        let policy = self.policy()?;
        let rule = policy.rules.iter().enumerate().find(|(_, r)| {
            pattern_matches(&r.from, &from.agent_id, &from.name)
                && pattern_matches(&r.to, &to.agent_id, &to.name)
                && r.modes.iter().any(|m| m == "*" || m == mode)
        });
        match rule {
            Some((_, r)) if r.allow => Ok(()),
            Some((i, r)) => Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "aos-a2a policy rule {} (from `{}` to `{}`) forbids {mode} messages from {} to {}",
                    i + 1,
                    r.from,
                    r.to,
                    from.name,
                    to.name
                ),
            )),
            None => Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "no rule of the aos-a2a policy (policy.json) allows {mode} messages from {} to {}",
                    from.name, to.name
                ),
            )),
        }
    }

    /// Counts one notify or wake message from `from` to `to`, refusing past the rate.
    fn take_rate(&self, from: &End, to: &End) -> Result<(), OpError> {
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let window = rates
            .entry((from.agent_id.clone(), to.agent_id.clone()))
            .or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() >= self.config.max_wakes_per_minute {
            return Err(limit(format!(
                "{} has sent {} {} notify and wake messages in the last minute, the limit (maxWakesPerMinute in aos-a2a's config.json); wait, or send --silent",
                from.name,
                to.name,
                window.len()
            )));
        }
        window.push_back(now);
        Ok(())
    }

    async fn agent_name(&self, agent_id: &str) -> Result<String, OpError> {
        let agent = self.call("agent.get", json!({"agentId": agent_id})).await?;
        Ok(agent["displayName"].as_str().unwrap_or(agent_id).to_owned())
    }

    /// The session a call speaks for: the caller's own, or (admin and services) the one
    /// named in `fromSessionId`.
    async fn sender(&self, params: &Value, caller: &CallerInfo) -> Result<End, OpError> {
        let named = params.get("fromSessionId").and_then(Value::as_str);
        let session_id = match (&caller.session_id, named) {
            (Some(own), Some(named)) if own != named => {
                return Err(OpError::new(
                    ErrorCode::PermissionDenied,
                    format!("a token of session {own} cannot send as {named}"),
                ));
            }
            (Some(own), _) => own.clone(),
            (None, Some(named)) => named.to_owned(),
            (None, None) => {
                return Err(OpError::invalid(
                    "`fromSessionId` is required for callers that are not a session: messages come from a session, which gets the replies",
                ));
            }
        };
        let session = self
            .call("session.get", json!({"sessionId": session_id}))
            .await?;
        let agent_id = session["agentId"].as_str().unwrap_or_default().to_owned();
        if caller
            .agent_id
            .as_deref()
            .is_some_and(|own| own != agent_id)
        {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!("session {session_id} is not of the caller's agent"),
            ));
        }
        Ok(End {
            name: self.agent_name(&agent_id).await?,
            agent_id,
            session_id,
        })
    }

    /// An agent by id or display name.
    async fn find_agent(&self, to: &str) -> Result<Value, OpError> {
        if to.starts_with("agt_") {
            return self.call("agent.get", json!({"agentId": to})).await;
        }
        let agents = self
            .call("agent.list", json!({"status": "active", "limit": 1000}))
            .await?;
        let matches: Vec<&Value> = agents["items"]
            .as_array()
            .map(|a| a.iter().filter(|a| a["displayName"] == to).collect())
            .unwrap_or_default();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(OpError::new(
                ErrorCode::NotFound,
                format!("no active agent is called `{to}`; `a2a agents` lists them"),
            )),
            many => Err(OpError::invalid(format!(
                "{} agents are called `{to}`; name one by id: {}",
                many.len(),
                many.iter()
                    .filter_map(|a| a["agentId"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Where a message to `to` goes: a session named by id, or the agent's inbox
    /// session (created on first use).
    async fn target(&self, to: &str) -> Result<End, OpError> {
        if to.starts_with("ses_") {
            let session = self.call("session.get", json!({"sessionId": to})).await?;
            let agent_id = session["agentId"].as_str().unwrap_or_default().to_owned();
            return Ok(End {
                name: self.agent_name(&agent_id).await?,
                agent_id,
                session_id: to.to_owned(),
            });
        }
        let agent = self.find_agent(to).await?;
        let agent_id = agent["agentId"].as_str().unwrap_or_default().to_owned();
        let name = agent["displayName"]
            .as_str()
            .unwrap_or(&agent_id)
            .to_owned();
        if agent["status"] == "archived" {
            return Err(OpError::new(
                ErrorCode::AgentArchived,
                format!("agent {name} ({agent_id}) is archived"),
            ));
        }
        Ok(End {
            session_id: self.inbox_session(&agent_id).await?,
            agent_id,
            name,
        })
    }

    async fn inbox_session(&self, agent_id: &str) -> Result<String, OpError> {
        let known: Option<String> =
            sqlx::query_scalar("SELECT session_id FROM inboxes WHERE agent_id = ?")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        if let Some(session_id) = known {
            match self
                .client
                .call_ok("session.get", json!({"sessionId": session_id}))
                .await
            {
                Ok(session) if session["status"] != "archived" => return Ok(session_id),
                Ok(_) => {}
                Err(error) if error.code == ErrorCode::NotFound => {}
                Err(error) => return Err(kernel_error(error)),
            }
        }
        let created = self
            .call(
                "session.create",
                json!({
                    "agentId": agent_id,
                    "title": "a2a inbox",
                    "metadata": {"aos-a2a": {"inbox": true}},
                }),
            )
            .await?;
        let session_id = created["sessionId"].as_str().unwrap_or_default().to_owned();
        sqlx::query("INSERT INTO inboxes (agent_id, session_id) VALUES (?, ?) ON CONFLICT (agent_id) DO UPDATE SET session_id = excluded.session_id")
            .bind(agent_id)
            .bind(&session_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(session_id)
    }

    /// The chain depth of the dispatch now running in `session`: that of the message
    /// that started it, 0 for a dispatch a person or another skill started.
    async fn depth_of(&self, session_id: &str) -> Result<i64, OpError> {
        let running = self
            .call(
                "dispatch.list",
                json!({"sessionId": session_id, "status": "running", "limit": 1}),
            )
            .await?;
        let Some(dispatch) = running["items"][0]["dispatchId"].as_str() else {
            return Ok(0);
        };
        let depth: Option<i64> = sqlx::query_scalar(
            "SELECT depth FROM messages WHERE dispatch_id = ? ORDER BY created_at DESC LIMIT 1",
        )
        .bind(dispatch)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(depth.unwrap_or(0))
    }

    /// Checks the bounds, records the message, writes the sender's note and delivers.
    async fn deliver(&self, out: Outgoing<'_>) -> Result<Value, OpError> {
        if out.text.chars().count() > self.config.max_text_chars {
            return Err(OpError::invalid(format!(
                "the text has {} characters; at most {} (maxTextChars in aos-a2a's config.json)",
                out.text.chars().count(),
                self.config.max_text_chars
            )));
        }
        if out.from.session_id == out.to.session_id {
            return Err(OpError::invalid(
                "a session cannot message itself; `a2a spawn` runs a task beside you",
            ));
        }
        self.allowed(out.from, out.to, out.mode)?;
        let depth = self.depth_of(&out.from.session_id).await? + 1;
        if depth > self.config.max_chain_depth {
            return Err(limit(format!(
                "this message would be hop {depth} of a chain of agent messages; the limit is {} (maxChainDepth in aos-a2a's config.json) — answer instead of messaging on",
                self.config.max_chain_depth
            )));
        }
        let dispatching = out.mode != "silent";
        if matches!(out.mode, "notify" | "wake") {
            self.take_rate(out.from, out.to)?;
        }
        let id = new_id("a2m");
        let corr = out.corr.unwrap_or_else(|| new_id("a2c"));
        let answers = matches!(out.mode, "wake" | "spawn");
        sqlx::query(
            "INSERT INTO messages (id, corr, mode, from_agent, from_session, to_agent, to_session, text, depth, state, waiting, reply_to, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&corr)
        .bind(out.mode)
        .bind(&out.from.agent_id)
        .bind(&out.from.session_id)
        .bind(&out.to.agent_id)
        .bind(&out.to.session_id)
        .bind(out.text)
        .bind(depth)
        .bind(if answers { "running" } else { "delivered" })
        .bind(out.waiting)
        .bind(out.reply_to.as_deref())
        .bind(Timestamp::now().to_string())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        let tail = |e: &End| format!("{} ({}, {})", e.name, e.agent_id, e.session_id);
        let verb = if out.mode == "spawn" {
            "spawned sub-agent".to_owned()
        } else {
            format!("sent {}", out.mode)
        };
        // The same facts on both sides, structured: who sent what to whom, and how.
        let facts = |side: &str| {
            json!({
                "side": side, "id": id, "corr": corr, "mode": out.mode, "depth": depth,
                "from": {"agentId": out.from.agent_id, "sessionId": out.from.session_id},
                "to": {"agentId": out.to.agent_id, "sessionId": out.to.session_id},
            })
        };
        let from_message = self
            .note(
                &out.from.session_id,
                "system",
                &format!(
                    "[a2a {verb} to {} from {} id={id} corr={corr}]\n{}",
                    tail(out.to),
                    tail(out.from),
                    out.text
                ),
                &facts("sender"),
            )
            .await;
        let hint = match out.mode {
            "wake" => "your final answer goes back to the sender as the reply",
            "spawn" => "you are a sub-agent: your final answer goes back to the parent",
            "reply" => "a reply to your message",
            "notify" => "no reply expected; `a2a reply <id> \"text\"` answers anyway",
            _ => "for your information; no reply expected",
        };
        let content = format!(
            "[a2a {} from {} to {} id={id} corr={corr} depth={depth}] ({hint})\n{}",
            out.mode,
            tail(out.from),
            tail(out.to),
            out.text
        );
        let (mut dispatch_id, mut to_message) = (None, None);
        let delivered = if dispatching {
            self.call(
                "session.dispatch",
                json!({
                    "sessionId": out.to.session_id,
                    "message": {"role": "user", "content": content,
                                "meta": {"source": "aos-a2a", "data": facts("target")}},
                    "ifBusy": "queue",
                }),
            )
            .await
            .map(|d| dispatch_id = d["dispatchId"].as_str().map(str::to_owned))
        } else {
            self.call(
                "session.append",
                json!({
                    "sessionId": out.to.session_id,
                    "message": {"role": "user", "parts": [
                        {"type": "text", "text": content},
                        {"type": "meta", "source": "aos-a2a", "data": facts("target")},
                    ]},
                }),
            )
            .await
            .map(|a| to_message = a["messageId"].as_str().map(str::to_owned))
        };
        if let Err(error) = delivered {
            sqlx::query("UPDATE messages SET state = 'failed', error = ? WHERE id = ?")
                .bind(&error.message)
                .bind(&id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            self.answered.send_modify(|n| *n += 1);
            return Err(error);
        }
        sqlx::query(
            "UPDATE messages SET dispatch_id = ?, from_message_id = ?, to_message_id = ? WHERE id = ?",
        )
        .bind(dispatch_id.as_deref())
        .bind(from_message.as_deref())
        .bind(to_message.as_deref())
        .bind(&id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if let Some(dispatch) = &dispatch_id
            && answers
        {
            // It may have ended before the row named its dispatch.
            self.check_dispatch(dispatch).await;
        }
        self.publish(
            "message",
            &out.to.session_id,
            json!({"id": id, "corr": corr, "mode": out.mode, "from": out.from.agent_id,
                   "fromSessionId": out.from.session_id, "to": out.to.agent_id,
                   "toSessionId": out.to.session_id, "depth": depth, "dispatchId": dispatch_id}),
        )
        .await;
        Ok(json!({
            "id": id,
            "corr": corr,
            "mode": out.mode,
            "to": {"agentId": out.to.agent_id, "name": out.to.name, "sessionId": out.to.session_id},
            "dispatchId": dispatch_id,
            "depth": depth,
        }))
    }

    /// Appends a note to a session, with the exchange's facts as a `meta` part, and
    /// returns its history message id, logging (not failing) when it cannot.
    async fn note(&self, session_id: &str, role: &str, text: &str, meta: &Value) -> Option<String> {
        match self
            .call(
                "session.append",
                json!({"sessionId": session_id, "message": {"role": role, "parts": [
                    {"type": "text", "text": text},
                    {"type": "meta", "source": "aos-a2a", "data": meta},
                ]}}),
            )
            .await
        {
            Ok(appended) => appended["messageId"].as_str().map(str::to_owned),
            Err(error) => {
                tracing::warn!(session_id, message = %error.message, "cannot write the a2a note");
                None
            }
        }
    }

    async fn publish(&self, event: &str, session_id: &str, payload: Value) {
        let params = json!({"name": format!("skill.aos-a2a.{event}"), "sessionId": session_id, "payload": payload});
        if let Err(error) = self.client.call_ok("event.publish", params).await {
            tracing::warn!(event, message = %error.message, "cannot publish");
        }
    }

    async fn agents(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &[])?;
        let agents = self
            .call("agent.list", json!({"status": "active", "limit": 1000}))
            .await?;
        let me = match &caller.agent_id {
            Some(id) => Some(End {
                name: self.agent_name(id).await?,
                agent_id: id.clone(),
                session_id: caller.session_id.clone().unwrap_or_default(),
            }),
            None => None,
        };
        let policy = self.policy()?;
        let mut items = Vec::new();
        for agent in agents["items"].as_array().into_iter().flatten() {
            let id = agent["agentId"].as_str().unwrap_or_default();
            let name = agent["displayName"].as_str().unwrap_or(id);
            let inbox: Option<String> =
                sqlx::query_scalar("SELECT session_id FROM inboxes WHERE agent_id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
            let modes: Vec<&str> = ["silent", "notify", "wake", "spawn"]
                .into_iter()
                .filter(|mode| {
                    me.as_ref().is_none_or(|me| {
                        policy
                            .rules
                            .iter()
                            .find(|r| {
                                pattern_matches(&r.from, &me.agent_id, &me.name)
                                    && pattern_matches(&r.to, id, name)
                                    && r.modes.iter().any(|m| m == "*" || m == mode)
                            })
                            .is_some_and(|r| r.allow)
                    })
                })
                .collect();
            items.push(json!({
                "agentId": id,
                "name": name,
                "description": agent["description"],
                "you": me.as_ref().is_some_and(|me| me.agent_id == id),
                "inboxSessionId": inbox,
                "modes": modes,
            }));
        }
        Ok(json!({"items": items}))
    }

    async fn send(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["to", "text", "mode", "wait", "fromSessionId"])?;
        let mode = match params
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("notify")
        {
            "silent" => "silent",
            "notify" => "notify",
            "wake" => "wake",
            other => {
                return Err(OpError::invalid(format!(
                    "`mode` is `{other}`; accepted: silent, notify, wake"
                )));
            }
        };
        let text = string(params, "text")?;
        let waiting = flag(params, "wait")?;
        if waiting && mode != "wake" {
            return Err(OpError::invalid(
                "`wait` applies to wake messages only: silent and notify get no reply",
            ));
        }
        let from = self.sender(params, caller).await?;
        let to = self.target(string(params, "to")?).await?;
        self.deliver(Outgoing {
            from: &from,
            to: &to,
            mode,
            text,
            corr: None,
            reply_to: None,
            waiting,
        })
        .await
    }

    async fn message(&self, id: &str) -> Result<sqlx::sqlite::SqliteRow, OpError> {
        sqlx::query("SELECT * FROM messages WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no a2a message `{id}`; `a2a inbox` lists yours"),
                )
            })
    }

    async fn reply(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["id", "text", "mode", "fromSessionId"])?;
        let mode = match params
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("notify")
        {
            "silent" => "silent",
            "notify" => "reply",
            other => {
                return Err(OpError::invalid(format!(
                    "`mode` is `{other}`; accepted: silent, notify"
                )));
            }
        };
        let original = self.message(string(params, "id")?).await?;
        let addressee: String = original.get("to_agent");
        let from = self.sender(params, caller).await?;
        if from.agent_id != addressee {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "message {} was sent to agent {addressee}; only it may reply",
                    original.get::<String, _>("id")
                ),
            ));
        }
        let back_agent: String = original.get("from_agent");
        let to = End {
            name: self.agent_name(&back_agent).await?,
            agent_id: back_agent,
            session_id: original.get("from_session"),
        };
        self.deliver(Outgoing {
            from: &from,
            to: &to,
            mode,
            text: string(params, "text")?,
            corr: Some(original.get("corr")),
            reply_to: Some(original.get("id")),
            waiting: false,
        })
        .await
    }

    async fn inbox(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["limit", "agentId"])?;
        let agent = match (
            &caller.agent_id,
            params.get("agentId").and_then(Value::as_str),
        ) {
            (Some(own), Some(named)) if own != named => {
                return Err(OpError::new(
                    ErrorCode::PermissionDenied,
                    format!("a token of agent {own} cannot read the inbox of {named}"),
                ));
            }
            (Some(own), _) => own.clone(),
            (None, Some(named)) => named.to_owned(),
            (None, None) => {
                return Err(OpError::invalid(
                    "`agentId` is required for callers that are not an agent",
                ));
            }
        };
        let limit = match params.get("limit") {
            None => 20,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=200) => n as i64,
                _ => return Err(OpError::invalid("`limit` must be 1 to 200")),
            },
        };
        let rows = sqlx::query(
            "SELECT * FROM messages WHERE to_agent = ? AND mode != 'spawn' ORDER BY created_at DESC, id DESC LIMIT ?",
        )
        .bind(&agent)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut items = Vec::new();
        for row in &rows {
            let mut item = row_json(row);
            let from: String = row.get("from_agent");
            item["from"]["name"] = json!(self.agent_name(&from).await.unwrap_or(from));
            items.push(item);
        }
        Ok(json!({"items": items}))
    }

    async fn spawn(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["task", "agentId", "title", "fromSessionId"])?;
        let task = string(params, "task")?;
        let from = self.sender(params, caller).await?;
        let parent = self
            .call("session.get", json!({"sessionId": from.session_id}))
            .await?;
        let spawn_depth = parent["metadata"]["aos-a2a"]["spawnDepth"]
            .as_i64()
            .unwrap_or(0)
            + 1;
        if spawn_depth > self.config.max_spawn_depth {
            return Err(limit(format!(
                "this sub-agent would be at depth {spawn_depth}; the limit is {} (maxSpawnDepth in aos-a2a's config.json) — do the task yourself",
                self.config.max_spawn_depth
            )));
        }
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE from_session = ? AND mode = 'spawn' AND state = 'running'",
        )
        .bind(&from.session_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        if running >= self.config.max_children {
            return Err(limit(format!(
                "{running} sub-agents of this session are still running; the limit is {} (maxChildren in aos-a2a's config.json) — `a2a wait` for them first",
                self.config.max_children
            )));
        }
        let agent = match params.get("agentId").and_then(Value::as_str) {
            Some(named) => self.find_agent(named).await?,
            None => {
                self.call("agent.get", json!({"agentId": from.agent_id}))
                    .await?
            }
        };
        let agent_id = agent["agentId"].as_str().unwrap_or_default().to_owned();
        let name = agent["displayName"]
            .as_str()
            .unwrap_or(&agent_id)
            .to_owned();
        // The policy speaks before a session is created for nothing.
        let probe = End {
            agent_id: agent_id.clone(),
            name: name.clone(),
            session_id: String::new(),
        };
        self.allowed(&from, &probe, "spawn")?;
        let title = match params.get("title").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => format!("sub-agent: {}", task.chars().take(60).collect::<String>()),
        };
        let child = self
            .call(
                "session.create",
                json!({
                    "agentId": agent_id,
                    "title": title,
                    "metadata": {"aos-a2a": {
                        "parentSessionId": from.session_id,
                        "parentAgentId": from.agent_id,
                        "spawnDepth": spawn_depth,
                    }},
                }),
            )
            .await?;
        let to = End {
            agent_id,
            name,
            session_id: child["sessionId"].as_str().unwrap_or_default().to_owned(),
        };
        let mut sent = self
            .deliver(Outgoing {
                from: &from,
                to: &to,
                mode: "spawn",
                text: task,
                corr: None,
                reply_to: None,
                waiting: true,
            })
            .await?;
        sent["sessionId"] = json!(to.session_id);
        Ok(sent)
    }

    async fn get(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["id"])?;
        let row = self.message(string(params, "id")?).await?;
        let parties = [
            row.get::<String, _>("from_agent"),
            row.get::<String, _>("to_agent"),
        ];
        if let Some(own) = &caller.agent_id
            && !parties.contains(own)
        {
            return Err(OpError::new(
                ErrorCode::PermissionDenied,
                "only the sender and the addressee may read a message",
            ));
        }
        Ok(row_json(&row))
    }

    async fn wait(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["ids", "timeoutMs", "stopWaiting"])?;
        let ids: Vec<String> = match params.get("ids") {
            Some(Value::Array(items))
                if !items.is_empty() && items.iter().all(Value::is_string) =>
            {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            }
            _ => {
                return Err(OpError::invalid(
                    "`ids` must be a non-empty list of message ids (a2m_…) or sub-agent session ids (ses_…)",
                ));
            }
        };
        let timeout = match params.get("timeoutMs") {
            None => Duration::from_millis(20_000),
            Some(v) => match v.as_u64() {
                Some(ms @ 0..=25_000) => Duration::from_millis(ms),
                _ => return Err(OpError::invalid("`timeoutMs` must be 0 to 25000")),
            },
        };
        let stop_waiting = flag(params, "stopWaiting")?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.answered.subscribe();
        loop {
            changes.mark_unchanged();
            let mut items = Vec::new();
            let mut pending = 0;
            for id in &ids {
                let row = sqlx::query(
                    "SELECT * FROM messages WHERE id = ? OR (to_session = ? AND mode = 'spawn') ORDER BY created_at LIMIT 1",
                )
                .bind(id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?
                .ok_or_else(|| {
                    OpError::new(
                        ErrorCode::NotFound,
                        format!("`{id}` is neither an a2a message nor a sub-agent session"),
                    )
                })?;
                let sender: String = row.get("from_agent");
                if caller.agent_id.as_deref().is_some_and(|own| own != sender) {
                    return Err(OpError::new(
                        ErrorCode::PermissionDenied,
                        format!("`{id}` was not sent by the caller's agent"),
                    ));
                }
                let state: String = row.get("state");
                if state == "running" {
                    pending += 1;
                }
                items.push(json!({
                    "id": row.get::<String, _>("id"),
                    "sessionId": row.get::<String, _>("to_session"),
                    "mode": row.get::<String, _>("mode"),
                    "state": state,
                    "answer": row.get::<Option<String>, _>("answer"),
                    "error": row.get::<Option<String>, _>("error"),
                }));
            }
            let now = tokio::time::Instant::now();
            if pending == 0 || now >= deadline {
                if stop_waiting && pending > 0 {
                    for item in &items {
                        sqlx::query(
                            "UPDATE messages SET waiting = 0 WHERE id = ? AND state = 'running' AND mode = 'wake'",
                        )
                        .bind(item["id"].as_str())
                        .execute(&self.pool)
                        .await
                        .map_err(db_error)?;
                    }
                }
                return Ok(json!({"items": items, "pending": pending}));
            }
            let _ = tokio::time::timeout(deadline - now, changes.changed()).await;
        }
    }

    /// `session.dispatch.after`: a dispatch this service started may owe an answer.
    async fn dispatch_ended(&self, event: &EventParams) {
        if let Some(dispatch) = event.payload["dispatchId"].as_str() {
            self.check_dispatch(dispatch).await;
        }
    }

    /// Finishes the message that started `dispatch_id` if the dispatch has ended.
    async fn check_dispatch(&self, dispatch_id: &str) {
        let row =
            match sqlx::query("SELECT * FROM messages WHERE dispatch_id = ? AND state = 'running'")
                .bind(dispatch_id)
                .fetch_optional(&self.pool)
                .await
            {
                Ok(Some(row)) => row,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, dispatch_id, "cannot read the message store");
                    return;
                }
            };
        let dispatch = match self
            .call("dispatch.get", json!({"dispatchId": dispatch_id}))
            .await
        {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(dispatch_id, message = %error.message, "cannot read the dispatch");
                return;
            }
        };
        let status = dispatch["status"].as_str().unwrap_or_default();
        if matches!(status, "queued" | "running") {
            return;
        }
        let (answer, error, answer_message) = if status == "done" {
            let to_session: String = row.get("to_session");
            let (text, message_id) = match dispatch["finalMessageSeq"].as_u64() {
                Some(seq) => self
                    .call(
                        "session.history.get",
                        json!({"sessionId": to_session, "seq": seq}),
                    )
                    .await
                    .map(|m| (message_text(&m), m["id"].as_str().map(str::to_owned)))
                    .unwrap_or_default(),
                None => (String::new(), None),
            };
            (Some(text), None, message_id)
        } else {
            let why = dispatch["error"]["message"]
                .as_str()
                .unwrap_or("no reason given");
            (
                None,
                Some(format!("the dispatch ended {status}: {why}")),
                None,
            )
        };
        self.finish(&row, answer, error, answer_message).await;
    }

    /// Records the answer once and carries it back to the sender. `answer_message` is
    /// the history message id of the final answer in the target's session.
    async fn finish(
        &self,
        row: &sqlx::sqlite::SqliteRow,
        answer: Option<String>,
        error: Option<String>,
        answer_message: Option<String>,
    ) {
        let id: String = row.get("id");
        let updated = sqlx::query(
            "UPDATE messages SET state = ?, answer = ?, error = ?, answered_at = ? WHERE id = ? AND state = 'running'",
        )
        .bind(if error.is_some() { "failed" } else { "answered" })
        .bind(answer.as_deref())
        .bind(error.as_deref())
        .bind(Timestamp::now().to_string())
        .bind(&id)
        .execute(&self.pool)
        .await;
        match updated {
            Ok(done) if done.rows_affected() == 1 => {}
            Ok(_) => return, // finished by the other path already
            Err(error) => {
                tracing::warn!(%error, id, "cannot record the answer");
                return;
            }
        }
        self.answered.send_modify(|n| *n += 1);
        let (mode, corr): (String, String) = (row.get("mode"), row.get("corr"));
        let waiting: bool = row.get("waiting");
        let (from_session, to_session): (String, String) =
            (row.get("from_session"), row.get("to_session"));
        let to_agent: String = row.get("to_agent");
        let name = self
            .agent_name(&to_agent)
            .await
            .unwrap_or_else(|_| to_agent.clone());
        let body = match (&answer, &error) {
            (Some(text), _) if !text.is_empty() => text.clone(),
            (Some(_), _) => "(the final answer was empty)".to_owned(),
            (None, Some(why)) => format!("(no answer: {why})"),
            (None, None) => String::new(),
        };
        let what = if mode == "spawn" {
            "sub-agent answer"
        } else {
            "reply"
        };
        let content = format!(
            "[a2a {what} from {name} ({to_agent}, {to_session}) to id={id} corr={corr}]\n{body}"
        );
        // A reply nobody waits for wakes the sender, if the chain may go on.
        let depth: i64 = row.get("depth");
        let wake = mode == "wake" && !waiting && depth < self.config.max_chain_depth;
        let facts = json!({
            "side": "target", "replyTo": id, "corr": corr,
            "mode": if mode == "spawn" { "answer" } else { "reply" }, "depth": depth,
            "from": {"agentId": to_agent, "sessionId": to_session},
            "to": {"agentId": row.get::<String, _>("from_agent"), "sessionId": from_session},
        });
        let (mut reply_dispatch, mut noted) = (None, None);
        if wake {
            match self
                .call(
                    "session.dispatch",
                    json!({"sessionId": from_session, "message": {"role": "user", "content": content,
                           "meta": {"source": "aos-a2a", "data": facts}}, "ifBusy": "queue"}),
                )
                .await
            {
                Ok(d) => reply_dispatch = d["dispatchId"].as_str().map(str::to_owned),
                Err(e) => {
                    tracing::warn!(id, message = %e.message, "cannot wake the sender; appending");
                    noted = self.note(&from_session, "user", &content, &facts).await;
                }
            }
        } else {
            noted = self.note(&from_session, "user", &content, &facts).await;
        }
        // The reply is a message too: its dispatch carries the chain on.
        let recorded = sqlx::query(
            "INSERT INTO messages (id, corr, mode, from_agent, from_session, to_agent, to_session, text, depth, dispatch_id, state, reply_to, created_at, from_message_id, to_message_id)
             VALUES (?, ?, 'reply', ?, ?, ?, ?, ?, ?, ?, 'delivered', ?, ?, ?, ?)",
        )
        .bind(new_id("a2m"))
        .bind(&corr)
        .bind(&to_agent)
        .bind(&to_session)
        .bind(row.get::<String, _>("from_agent"))
        .bind(&from_session)
        .bind(&body)
        .bind(depth + 1)
        .bind(reply_dispatch.as_deref())
        .bind(&id)
        .bind(Timestamp::now().to_string())
        .bind(answer_message.as_deref())
        .bind(noted.as_deref())
        .execute(&self.pool)
        .await;
        if let Err(error) = recorded {
            tracing::warn!(%error, id, "cannot record the reply");
        }
        self.publish(
            "answered",
            &from_session,
            json!({"id": id, "corr": corr, "mode": mode, "state": if error.is_some() { "failed" } else { "answered" },
                   "fromSessionId": from_session, "toSessionId": to_session, "replyDispatchId": reply_dispatch}),
        )
        .await;
    }

    /// At start: answers that arrived while the service was down.
    async fn resume(&self) {
        let running: Vec<String> = match sqlx::query_scalar(
            "SELECT dispatch_id FROM messages WHERE state = 'running' AND dispatch_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read pending messages");
                return;
            }
        };
        for dispatch in running {
            self.check_dispatch(&dispatch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_ids_names_and_prefixes() {
        assert!(pattern_matches("*", "agt_1", "alice"));
        assert!(pattern_matches("alice", "agt_1", "alice"));
        assert!(pattern_matches("agt_1", "agt_1", "alice"));
        assert!(pattern_matches("ali*", "agt_1", "alice"));
        assert!(!pattern_matches("bob", "agt_1", "alice"));
        assert!(!pattern_matches("bo*", "agt_1", "alice"));
    }

    #[test]
    fn the_text_of_a_message_is_its_text_parts() {
        let message = json!({"parts": [
            {"type": "text", "text": "one"},
            {"type": "bash", "command": "ls"},
            {"type": "text", "text": "two"},
        ]});
        assert_eq!(message_text(&message), "one\ntwo");
    }
}
