//! Params and results of every kernel syscall, one struct per operation.
//!
//! Params reject unknown fields, so a misspelt field is an error that names it rather
//! than a silently ignored setting. Fields documented as "nullable" take `null` to clear
//! an override and fall back to the inherited value.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::records::*;

/// Deserializes a field that distinguishes "absent" (outer `None`) from `null`
/// (`Some(None)`), for patch-style updates.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Params of operations that take none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A page of results; pass `nextCursor` back as `cursor` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

// ---------------------------------------------------------------------------------------
// system
// ---------------------------------------------------------------------------------------

/// `system.update`: change system-wide settings. `name` and `skillRoot` come from the
/// deployment and cannot be changed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemUpdateParams {
    pub default_skills: Option<Vec<SkillDefaultRule>>,
    /// Characters, at least 256.
    pub auto_fold_threshold: Option<u64>,
    /// Tokens, at least 1024.
    pub compaction_threshold: Option<u64>,
    /// 1 to 10000.
    pub max_turns: Option<u32>,
    /// Nullable: `provider/model`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub default_model: Option<Option<String>>,
    pub providers: Option<Vec<ProviderConfig>>,
    pub bash: Option<super::BashSettings>,
    /// 1000 to 86400000.
    pub dispatch_timeout_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// agent
// ---------------------------------------------------------------------------------------

/// `agent.create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentCreateParams {
    /// Human-readable name (1–200 characters); defaults to the agent id.
    pub display_name: Option<String>,
    /// What the agent is for (at most 4000 characters).
    pub description: Option<String>,
    pub default_skills: Option<Vec<SkillDefaultRule>>,
    /// Compute priority, -1000 to 1000 (higher first). Default 0.
    pub priority: Option<i32>,
    /// `provider/model`.
    pub model: Option<String>,
    pub auto_fold_threshold: Option<u64>,
    /// Budget settings for a scheduling skill (a JSON object).
    pub budgets: Option<Value>,
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// `agent.get`, `agent.archive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentIdParams {
    pub agent_id: String,
}

/// `agent.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentListParams {
    /// Only agents with this status.
    pub status: Option<AgentStatus>,
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

/// `agent.update`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentUpdateParams {
    pub agent_id: String,
    pub display_name: Option<String>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub description: Option<Option<String>>,
    pub default_skills: Option<Vec<SkillDefaultRule>>,
    pub priority: Option<i32>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub model: Option<Option<String>>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub auto_fold_threshold: Option<Option<u64>>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Value>")]
    pub budgets: Option<Option<Value>>,
    /// Replaces the whole metadata object.
    pub metadata: Option<BTreeMap<String, Value>>,
}

// ---------------------------------------------------------------------------------------
// session
// ---------------------------------------------------------------------------------------

/// `session.create`: creates the session and bootstraps it (default skills loaded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionCreateParams {
    pub agent_id: String,
    /// At most 200 characters.
    pub title: Option<String>,
    pub default_skills: Option<Vec<SkillDefaultRule>>,
    pub priority: Option<i32>,
    pub model: Option<String>,
    pub auto_fold_threshold: Option<u64>,
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// Params naming one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionIdParams {
    pub session_id: String,
}

/// `session.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionListParams {
    /// Only this agent's sessions.
    pub agent_id: Option<String>,
    pub status: Option<SessionStatus>,
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

/// `session.update`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionUpdateParams {
    pub session_id: String,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub title: Option<Option<String>>,
    pub default_skills: Option<Vec<SkillDefaultRule>>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<i32>")]
    pub priority: Option<Option<i32>>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub model: Option<Option<String>>,
    /// Nullable.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub auto_fold_threshold: Option<Option<u64>>,
    /// Replaces the whole metadata object.
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// A message to append: the kernel fills in id, seq, origin and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageInput {
    pub role: Role,
    /// One to 64 parts. Kernel-only part types (`bootstrap`, `skill-load`,
    /// `skill-unload`) are refused: use `skill.load` / `skill.unload`.
    pub parts: Vec<PartBody>,
}

/// `session.append`: add a fact to history without running the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAppendParams {
    pub session_id: String,
    pub message: MessageInput,
}

/// Result of operations that append one history message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    pub session_id: String,
    pub message_id: String,
    pub seq: u64,
}

/// `session.interrupt`: record an interrupt; a running dispatch stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionInterruptParams {
    pub session_id: String,
    /// Why (1–2000 characters); the agent sees it.
    pub reason: String,
    pub payload: Option<Value>,
}

/// `session.dispatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionDispatchParams {
    pub session_id: String,
    pub message: DispatchMessage,
    /// What to do when the session is already running a dispatch (default `reject`).
    pub if_busy: Option<IfBusy>,
    /// Compute-gate priority (higher first); default the session's, else the agent's.
    pub priority: Option<i32>,
    /// Longest this dispatch may run (1000 to the system's `dispatchTimeoutMs`).
    pub deadline_ms: Option<u64>,
}

/// The user message that starts a dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchMessage {
    /// Must be `user`.
    pub role: Role,
    pub content: String,
    /// Structured facts stored with the message as a `meta` part (never shown to the
    /// model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<MessageMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IfBusy {
    Reject,
    Queue,
}

/// `session.history.list`: messages in seq order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryListParams {
    pub session_id: String,
    /// First seq to return (inclusive).
    pub from_seq: Option<u64>,
    /// Last seq to return (inclusive).
    pub to_seq: Option<u64>,
    /// Continue after a previous page.
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
    /// Newest first when true.
    #[serde(default)]
    pub descending: bool,
}

/// `session.history.get`: one message, by id or by seq.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryGetParams {
    pub session_id: String,
    pub message_id: Option<String>,
    pub seq: Option<u64>,
}

/// `session.history.search`: messages whose text contains every word of `query`
/// (case-insensitive), newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistorySearchParams {
    pub session_id: String,
    /// 1–500 characters.
    pub query: String,
    /// 1 to 200, default 20.
    pub limit: Option<u32>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryHit {
    pub message_id: String,
    pub seq: u64,
    pub role: Role,
    pub part_id: String,
    /// Text around the first match.
    pub snippet: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySearchResult {
    pub hits: Vec<HistoryHit>,
    /// True when more messages matched than `limit`.
    pub truncated: bool,
}

// ---------------------------------------------------------------------------------------
// content
// ---------------------------------------------------------------------------------------

/// `content.put`: store an immutable blob for a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentPutParams {
    pub session_id: String,
    pub content: String,
}

/// `content.read`: lines of a blob (line offsets are 0-based).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentReadParams {
    pub content_id: String,
    /// First line to return, 0-based. Default 0.
    pub offset: Option<u64>,
    /// Lines to return. Default: all.
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentReadResult {
    pub content_id: String,
    pub content: String,
    pub offset: u64,
    /// Lines returned.
    pub lines: u64,
    pub total_lines: u64,
    pub total_chars: u64,
}

/// `content.search`: lines of a blob matching a regular expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentSearchParams {
    pub content_id: String,
    /// A Rust `regex` pattern (linear time; no look-around or back-references).
    pub pattern: String,
    #[serde(default)]
    pub ignore_case: bool,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentMatch {
    /// 1-based line number.
    pub line_number: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentSearchResult {
    pub content_id: String,
    pub matches: Vec<ContentMatch>,
    pub truncated: bool,
}

/// `content.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentIdParams {
    pub content_id: String,
}

// ---------------------------------------------------------------------------------------
// skills
// ---------------------------------------------------------------------------------------

/// Result of `skill.index.refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexRefreshResult {
    /// Skills indexed without error.
    pub indexed_count: u64,
    /// Skills listed with an error.
    pub error_count: u64,
    /// Usable skills that are new since the previous scan.
    #[serde(default)]
    pub added: Vec<String>,
    /// Usable skills whose files changed (their running services were restarted).
    #[serde(default)]
    pub changed: Vec<String>,
    /// Skills that are gone or broke (their services were stopped).
    #[serde(default)]
    pub removed: Vec<String>,
}

/// `skill.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkillNameParams {
    pub name: String,
}

/// A skill with its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillDetail {
    pub manifest: SkillManifest,
    pub text: String,
}

/// `skill.load` / `skill.unload`: add (remove) a skill's text to (from) a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkillLoadParams {
    pub name: String,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillLoaded {
    pub name: String,
    pub session_id: String,
    pub message_id: String,
    pub seq: u64,
    pub text: String,
}

/// `skill.catalog.list` / `skill.catalog.refresh` / `skill.catalog.preview`: the skills
/// visible to an owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogParams {
    /// The agent whose view to compute (without a session: the agent's own hooks).
    pub agent_id: Option<String>,
    /// The session whose view to compute (its agent is implied).
    pub session_id: Option<String>,
    /// Words to match against names and descriptions; all must match.
    pub query: Option<String>,
    /// 1 to 1000, default all.
    pub limit: Option<u32>,
}

/// `skill.default.resolve`: the default skills a new session would load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultResolveParams {
    /// Resolve for this agent (system + agent layers).
    pub agent_id: Option<String>,
    /// Resolve for this session (system + agent + session layers).
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultResolveResult {
    /// Skills whose text is loaded, in order.
    pub load: Vec<String>,
    /// Skills whose service is started for this owner.
    pub start: Vec<String>,
}

/// `skill.start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkillStartParams {
    pub name: String,
    pub owner_type: Option<OwnerType>,
    pub owner_id: Option<String>,
}

/// `skill.stop`, `service.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceIdParams {
    pub service_id: String,
}

// ---------------------------------------------------------------------------------------
// hooks, events, tokens, usage, log, dispatch
// ---------------------------------------------------------------------------------------

/// One hook registration, as listed by `hook.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookRegistration {
    pub hook: String,
    /// `admission`, `transform` or `event`.
    pub class: String,
    pub skill: String,
    /// The registering service (`svc_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    pub owner_type: OwnerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    pub priority: i32,
    pub timeout_ms: u64,
}

/// `hook.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookListParams {
    /// Only registrations of this hook.
    pub hook: Option<String>,
}

/// `event.publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPublishParams {
    /// `skill.<your-skill>.<name>`.
    pub name: String,
    pub payload: Value,
    pub session_id: Option<String>,
}

/// `token.issue`: a new token, never broader than the caller's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIssueParams {
    pub scope: TokenScope,
    /// Lifetime in seconds (1 to 31536000). Default: no expiry for admin callers' service
    /// and agent tokens, 86400 for session tokens.
    pub ttl_seconds: Option<u64>,
    /// A note to recognise the token by (at most 200 characters).
    pub label: Option<String>,
}

/// A freshly issued token: the secret is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub token_id: String,
    pub token: String,
    pub scope: TokenScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<super::Timestamp>,
}

/// `token.revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIdParams {
    pub token_id: String,
}

/// `usage.get`: totals for one session, one agent, or (neither) the whole system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageParams {
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResult {
    /// `system`, `agent` or `session`.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub usage: Usage,
}

/// `log.list`: RuntimeLog entries, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogListParams {
    /// Only entries of this operation (named `operation` because `op` names the call).
    pub operation: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    /// Entries after this log seq.
    pub after_seq: Option<u64>,
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
}

/// `dispatch.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchIdParams {
    pub dispatch_id: String,
}

/// `dispatch.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchListParams {
    pub session_id: Option<String>,
    pub status: Option<DispatchStatus>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// What `session.context.get` / `session.context.rebuild` show: the messages the model
/// would get next (after `context.assemble`), without the system prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextView {
    pub session_id: String,
    /// Chat messages in the OpenAI format, as the model gets them.
    pub messages: Vec<Value>,
    pub message_count: u64,
    /// Per message, the engine's provenance (`{sourceMessageId, sourcePartId, kind,
    /// seq}`), when the engine gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Vec<Value>>,
    pub estimated_tokens: u64,
    /// Seq of the newest history message.
    pub last_seq: u64,
    /// True when a context engine built it; false for the kernel's neutral projection.
    pub engine: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_ref_count: Option<u64>,
    /// Where the context starts (the latest compaction marker), when the engine says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_seq: Option<u64>,
    /// How long the assembly took (the hook chain, or the neutral projection), µs.
    pub assemble_us: u64,
}

/// `session.compact` / `session.context.compact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionCompactParams {
    pub session_id: String,
    /// Mark the boundary as automatic (default false).
    #[serde(default)]
    pub auto: Option<bool>,
}

/// `session.context.fold` / `unfold`: a history message, or one part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextRefParams {
    pub session_id: String,
    pub r#ref: HistoryRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryRef {
    pub history_message_id: String,
    pub history_part_id: Option<String>,
}

/// The kernel nodes sharing this database (`system.nodes.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemNodes {
    /// `sqlite` (one node) or `postgres` (any number).
    pub backend: String,
    /// The node that answered.
    pub node_id: String,
    /// Every node registered in the database (just this one on SQLite).
    pub nodes: Vec<NodeInfo>,
}

/// One kernel node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub node_id: String,
    /// Where other nodes reach its API.
    pub url: String,
    pub started_at: super::Timestamp,
    pub heartbeat_at: super::Timestamp,
    /// Its heartbeat is younger than a lease lifetime.
    pub alive: bool,
}

/// Summary of the daemon, from `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub node_id: String,
}

/// One operation as described by `GET /aoscp` and `aos syscalls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpDescription {
    pub name: String,
    /// `command` or `query`.
    pub kind: String,
    pub description: String,
    /// Who may call it.
    pub access: String,
    /// `available`, or why not.
    pub status: String,
    /// Skill that provides it, for service-registered operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provided_by: Option<String>,
    /// JSON Schema of the params.
    pub params: Value,
}
