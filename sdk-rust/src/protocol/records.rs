//! The objects the kernel stores and returns: control blocks, history, content,
//! dispatches, runtime log entries, events, skills and tokens.
//!
//! Output records accept unknown fields (newer kernels may add some); input shapes that
//! are part of syscall params reject them.

use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Timestamp;
use super::envelope::ErrorBody;

/// Default for `autoFoldThreshold` (characters).
pub const DEFAULT_AUTO_FOLD_THRESHOLD: u64 = 16_384;
/// Default for `compactionThreshold` (tokens).
pub const DEFAULT_COMPACTION_THRESHOLD: u64 = 100_000;
/// Default for `maxTurns` (model calls per dispatch).
pub const DEFAULT_MAX_TURNS: u32 = 50;

// ---------------------------------------------------------------------------------------
// Control blocks
// ---------------------------------------------------------------------------------------

/// The system control block (AOSCB): configuration every agent and session inherits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemCb {
    /// Instance name, from `AOS_NAME` (default `default`); refreshed at every start.
    pub name: String,
    /// Directory scanned for skills; refreshed from configuration at every start.
    pub skill_root: String,
    /// System-level default skill rules (first layer of system → agent → session).
    pub default_skills: Vec<SkillDefaultRule>,
    /// Tool results longer than this many characters are candidates for folding.
    pub auto_fold_threshold: u64,
    /// Projected context size (tokens) at which the context engine compacts.
    pub compaction_threshold: u64,
    /// Model calls allowed per dispatch.
    pub max_turns: u32,
    /// Model used when no hook or agent/session setting chooses one (`provider/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// LLM providers (OpenAI-compatible endpoints).
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// How bash commands run.
    #[serde(default)]
    pub bash: super::BashSettings,
    /// Longest a dispatch may run, in milliseconds (a dispatch may ask for less).
    #[serde(default = "default_dispatch_timeout")]
    pub dispatch_timeout_ms: u64,
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Default longest run of a dispatch: 30 minutes.
pub const DEFAULT_DISPATCH_TIMEOUT_MS: u64 = 30 * 60 * 1000;

fn default_dispatch_timeout() -> u64 {
    DEFAULT_DISPATCH_TIMEOUT_MS
}

/// One OpenAI-compatible LLM endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in model references (`<name>/<model>`): 1–64 of `a-z0-9-_.`.
    pub name: String,
    /// Base URL ending before `/chat/completions`, e.g. `https://openrouter.ai/api/v1`.
    pub base_url: String,
    /// Environment variable holding the API key; keys are never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// How tool calls are requested from the model.
    #[serde(default)]
    pub tool_mode: ToolMode,
    /// Concurrent model calls allowed to this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Deadline for the first byte of a reply (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Longest silence allowed inside a streamed reply (milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Retries on 429, 5xx and connection errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Prices by model name (as written after `<name>/`; `*` for any other), so usage
    /// carries `costUsd`. Unpriced models cost 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, ModelPrice>,
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelPrice {
    pub input_per_m_tok: f64,
    pub output_per_m_tok: f64,
}

/// How a provider is asked for tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ToolMode {
    /// OpenAI `tools` / `tool_calls`.
    #[default]
    Native,
    /// A JSON-schema-constrained answer: one bash call or a final answer.
    Json,
}

/// One layer's rule for a default skill. Layers merge system → agent → session; a later
/// layer's `load`/`start` overrides an earlier one for the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkillDefaultRule {
    /// Skill name (1–64 of `a-z0-9-`).
    pub name: String,
    /// Whether the skill's text is loaded into new sessions (and after compaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Toggle>,
    /// Whether the skill's service is started for this owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Toggle>,
    /// System layer only: load this skill first in every session, whatever lower layers say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// An on/off setting in a [`SkillDefaultRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Toggle {
    Enable,
    Disable,
}

/// Lifecycle of an agent. `archived` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AgentStatus {
    Active,
    Archived,
}

/// The agent control block (ACB): identity, permission boundary and inherited defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCb {
    pub agent_id: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub status: AgentStatus,
    #[serde(default)]
    pub default_skills: Vec<SkillDefaultRule>,
    /// Compute priority: higher is served first. Sessions and dispatches may override.
    #[serde(default)]
    pub priority: i32,
    /// Model for this agent's sessions (`provider/model`), unless a session overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_fold_threshold: Option<u64>,
    /// Budget settings, interpreted by a scheduling skill (the kernel stores them only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Value>,
    /// Free-form data for skills and UIs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
    #[serde(default)]
    pub usage: Usage,
    /// Who created it: `human`, or the caller identity that did.
    pub created_by: String,
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<Timestamp>,
}

/// Lifecycle of a session. `archived` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SessionStatus {
    Initializing,
    Ready,
    Archived,
}

/// What a session is doing right now (orthogonal to its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SessionPhase {
    Bootstrapping,
    Idle,
    Dispatched,
    Compacting,
}

/// The single-writer lease of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub id: String,
    /// Kernel node that holds it.
    pub holder: String,
    pub expires_at: Timestamp,
}

/// The session control block (SCB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCb {
    pub session_id: String,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub status: SessionStatus,
    pub phase: SessionPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default)]
    pub default_skills: Vec<SkillDefaultRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_fold_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
    /// Seq of the newest history message (0 when there is none). Seqs are 1, 2, … without gaps.
    pub last_seq: u64,
    #[serde(default)]
    pub usage: Usage,
    pub created_by: String,
    pub revision: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<Timestamp>,
}

/// Model usage totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Cost in US dollars, when the provider or a price table reports it.
    pub cost_usd: f64,
    /// Model calls made.
    pub turns: u64,
    /// Dispatches run.
    pub dispatches: u64,
}

// ---------------------------------------------------------------------------------------
// Session history
// ---------------------------------------------------------------------------------------

/// Who speaks in a history message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    pub fn from_wire(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            _ => None,
        }
    }
}

/// Where a history message truly came from, set by the kernel from the caller's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A person, through the CLI, the API or a UI.
    Human,
    /// The agent itself (the model, or its bash commands).
    Agent,
    /// The kernel (bootstrap markers, skill loads, interrupts).
    Aos,
    /// A skill's service.
    Skill(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Human => f.write_str("human"),
            Origin::Agent => f.write_str("agent"),
            Origin::Aos => f.write_str("aos"),
            Origin::Skill(name) => write!(f, "skill:{name}"),
        }
    }
}

impl Origin {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "human" => Some(Origin::Human),
            "agent" => Some(Origin::Agent),
            "aos" => Some(Origin::Aos),
            other => other
                .strip_prefix("skill:")
                .filter(|name| !name.is_empty())
                .map(|name| Origin::Skill(name.to_owned())),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Origin::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown origin `{text}`, expected human, agent, aos or skill:<name>"
            ))
        })
    }
}

impl JsonSchema for Origin {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Origin".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "human | agent | aos | skill:<name>"
        })
    }
}

/// One fact in a session's append-only history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub session_id: String,
    /// Position in the session: 1, 2, 3, … with no gaps.
    pub seq: u64,
    pub role: Role,
    pub origin: Origin,
    pub parts: Vec<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    pub created_at: Timestamp,
}

/// A part of a message: an id plus a tagged body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Part {
    pub id: String,
    #[serde(flatten)]
    pub body: PartBody,
}

/// The content of a message part, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PartBody {
    /// Plain text.
    Text { text: String },
    /// A bash tool call and its result.
    Bash(BashCall),
    /// A skill's text entering the session.
    #[serde(rename_all = "camelCase")]
    SkillLoad {
        name: String,
        cause: SkillLoadCause,
        text: String,
    },
    /// A skill's text leaving the session's context from here on.
    SkillUnload { name: String },
    /// Start of a compaction boundary covering `fromSeq..=toSeq`.
    #[serde(rename_all = "camelCase")]
    CompactionMarker {
        auto: bool,
        from_seq: u64,
        to_seq: u64,
    },
    /// The summary that replaces the compacted range in context.
    #[serde(rename_all = "camelCase")]
    CompactionSummary {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        marker_id: Option<String>,
    },
    /// The session was interrupted.
    Interrupt {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    /// Bootstrap progress marker.
    #[serde(rename_all = "camelCase")]
    Bootstrap {
        phase: BootstrapPhase,
        /// Skills the bootstrap plans to load (on `begin`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        planned_names: Vec<String>,
        /// Skills loaded (on `done`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        loaded: Vec<String>,
        /// Skills that could not be loaded, with the reason (on `done`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<SkippedSkill>,
    },
    /// An error worth keeping in the session's record.
    Error { source: String, message: String },
    /// Structured facts a skill or client attached to the message (who sent it to
    /// whom, correlation ids): kept in history and returned by every read, never shown
    /// to the model.
    Meta(MessageMeta),
}

/// Structured facts attached to a message: a `meta` part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageMeta {
    /// Who attached them: a skill name (`aos-a2a`) or a client's name (1–64 characters).
    pub source: String,
    /// A JSON object of at most 8 KiB, serialised.
    pub data: Value,
}

impl PartBody {
    /// The `type` tag on the wire.
    pub const fn kind(&self) -> &'static str {
        match self {
            PartBody::Text { .. } => "text",
            PartBody::Bash(_) => "bash",
            PartBody::SkillLoad { .. } => "skill-load",
            PartBody::SkillUnload { .. } => "skill-unload",
            PartBody::CompactionMarker { .. } => "compaction-marker",
            PartBody::CompactionSummary { .. } => "compaction-summary",
            PartBody::Interrupt { .. } => "interrupt",
            PartBody::Bootstrap { .. } => "bootstrap",
            PartBody::Error { .. } => "error",
            PartBody::Meta(_) => "meta",
        }
    }
}

/// Why a skill's text was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SkillLoadCause {
    /// Default skills at bootstrap.
    Default,
    /// `skill.load` from an agent, a person or a service.
    Explicit,
    /// Re-loaded after a compaction boundary.
    Reinject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BootstrapPhase {
    Begin,
    Done,
}

/// A default skill the bootstrap could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkippedSkill {
    pub name: String,
    pub reason: String,
}

/// A bash tool call: the command, its state and its visible result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BashCall {
    /// The model's id for this call.
    pub tool_call_id: String,
    pub state: BashState,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Present when the call completed (`output-available` or `output-error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<BashOutput>,
    /// Why the call failed to produce output (rejected, timed out, interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_text: Option<String>,
}

impl BashCall {
    /// The call as an OpenAI chat `tool_calls` entry: `{id, type: function, function:
    /// {name: bash, arguments: "{\"command\", \"cwd\"?, \"timeoutMs\"?}"}}` — how
    /// context projections show it to the model.
    pub fn to_tool_call(&self) -> Value {
        let mut arguments = serde_json::Map::new();
        arguments.insert("command".into(), Value::String(self.command.clone()));
        if let Some(cwd) = &self.cwd {
            arguments.insert("cwd".into(), Value::String(cwd.clone()));
        }
        if let Some(ms) = self.timeout_ms {
            arguments.insert("timeoutMs".into(), Value::from(ms));
        }
        serde_json::json!({
            "id": self.tool_call_id,
            "type": "function",
            "function": {"name": "bash", "arguments": Value::Object(arguments).to_string()},
        })
    }
}

/// State of a bash call, following the AI SDK tool states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BashState {
    InputAvailable,
    OutputAvailable,
    OutputError,
}

/// The visible result of a bash call: either inline, or a reference to stored content
/// with a preview (then `visibleResult` is null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BashOutput {
    pub visible_result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_chars: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// True when the output was cut at the executor's size cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

// ---------------------------------------------------------------------------------------
// Content, dispatches, runtime log, events
// ---------------------------------------------------------------------------------------

/// Metadata of an immutable content blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentInfo {
    pub content_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub size_chars: u64,
    pub line_count: u64,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// Lifecycle of a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DispatchStatus {
    Queued,
    Running,
    Done,
    Interrupted,
    Failed,
}

impl DispatchStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            DispatchStatus::Queued => "queued",
            DispatchStatus::Running => "running",
            DispatchStatus::Done => "done",
            DispatchStatus::Interrupted => "interrupted",
            DispatchStatus::Failed => "failed",
        }
    }

    /// Done, interrupted or failed: it will not change again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            DispatchStatus::Done | DispatchStatus::Interrupted | DispatchStatus::Failed
        )
    }

    pub fn from_wire(text: &str) -> Option<Self> {
        match text {
            "queued" => Some(DispatchStatus::Queued),
            "running" => Some(DispatchStatus::Running),
            "done" => Some(DispatchStatus::Done),
            "interrupted" => Some(DispatchStatus::Interrupted),
            "failed" => Some(DispatchStatus::Failed),
            _ => None,
        }
    }
}

/// One run of the ReActUnit on a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    pub dispatch_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub status: DispatchStatus,
    pub priority: i32,
    pub queued_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When its deadline (`deadlineMs`, else the system's `dispatchTimeoutMs`) stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    pub turns: u32,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// The model of its last call (`provider/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Seq of the user message that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message_seq: Option<u64>,
    /// Seq of the newest message it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_message_seq: Option<u64>,
    /// While it waits for the compute gate: where (never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::GateWait>,
    /// Where its time went outside the kernel.
    #[serde(default)]
    pub timing: DispatchTiming,
    /// The kernel node that runs (or ran) it. Unset while it waits in the database for
    /// whichever node next holds its session's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What it will run, kept only while it waits in the database for another node
    /// (several kernels on one PostgreSQL); cleared when a node takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<QueuedRequest>,
}

/// A queued dispatch's user message and limits, stored until a node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedRequest {
    pub content: String,
    /// The message's `meta` part, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<MessageMeta>,
    /// Who asked (`human`, `agent`, `aos`, `skill:<name>`).
    pub origin: Origin,
    pub deadline_ms: u64,
}

/// Time a dispatch spent waiting on things outside the kernel, summed over its turns.
/// Its wall time minus these is the kernel's own share (plus the compute gate's wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchTiming {
    /// Model calls, from the request sent to the end of the streamed reply (retries included).
    pub model_us: u64,
    /// Bash commands, from spawn to exit and output collected.
    pub tools_us: u64,
    /// Building each turn's conversation: `context.assemble` (or the neutral
    /// projection), `session.system.transform`, `session.messages.transform`.
    #[serde(default)]
    pub context_us: u64,
}

/// One row of the RuntimeLog: a command the kernel executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Position in the log (increasing).
    pub seq: u64,
    pub id: String,
    pub ts: Timestamp,
    /// Caller identity, e.g. `admin`, `session:ses_…`, `service:aos-context`.
    pub caller: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `ok`, or the error code.
    pub outcome: String,
    pub duration_us: u64,
    /// Ids of other objects the command touched or created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Value>,
    /// Extra facts (the error message, a raw bash result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A runtime event, as streamed on `GET /events` and to subscribed services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Increasing id; the SSE `id:` field, usable as `Last-Event-ID`.
    pub id: u64,
    pub name: String,
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub payload: Value,
    /// The kernel node where it happened; set when several nodes share one database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Skills
// ---------------------------------------------------------------------------------------

/// A skill as indexed from its `SKILL.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillManifest {
    /// The skill's name (equal to its directory name when valid).
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<String>,
    /// Command that starts the skill's service, as written in the frontmatter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Absolute path of the skill directory.
    pub dir: String,
    /// Length of the skill text (the body of `SKILL.md`) in characters.
    pub text_chars: u64,
    /// Frontmatter keys outside the Agent Skills standard and AOS's `service`, kept as
    /// written (other clients' extensions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
    /// Problems that do not stop the skill from working (unknown frontmatter keys, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Set when the skill cannot be used; it stays listed so the problem is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SkillError>,
}

/// Why a skill could not be indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkillError {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub message: String,
}

/// An entry of a skill catalog: what a model sees before loading a skill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogItem {
    pub name: String,
    pub description: String,
}

// ---------------------------------------------------------------------------------------
// Owners and tokens
// ---------------------------------------------------------------------------------------

/// Level that owns a service, a hook registration or a default rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum OwnerType {
    System,
    Agent,
    Session,
}

impl OwnerType {
    pub const fn as_str(self) -> &'static str {
        match self {
            OwnerType::System => "system",
            OwnerType::Agent => "agent",
            OwnerType::Session => "session",
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum TokenScope {
    /// Everything.
    Admin,
    /// One agent and all its sessions (like a user account).
    #[serde(rename_all = "camelCase")]
    Agent { agent_id: String },
    /// One session: its history, its content, its skill loads; read access to its agent.
    #[serde(rename_all = "camelCase")]
    Session {
        session_id: String,
        /// Filled in by the kernel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
    },
    /// A skill's service, acting with the authority of its owner level.
    #[serde(rename_all = "camelCase")]
    Service {
        skill: String,
        owner_type: OwnerType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_id: Option<String>,
        /// For session owners: the session's agent (filled in by the kernel).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
    },
}

/// A token as listed: never includes the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub token_id: String,
    pub scope: TokenScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_by: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_serialize_flat_with_their_type_tag() {
        let part = Part {
            id: "prt_1".into(),
            body: PartBody::SkillLoad {
                name: "aos".into(),
                cause: SkillLoadCause::Default,
                text: "# AOS".into(),
            },
        };
        let value = serde_json::to_value(&part).unwrap();
        assert_eq!(
            value,
            json!({"id": "prt_1", "type": "skill-load", "name": "aos", "cause": "default", "text": "# AOS"})
        );
        assert_eq!(serde_json::from_value::<Part>(value).unwrap(), part);
    }

    #[test]
    fn part_bodies_reject_unknown_fields_and_types() {
        let err =
            serde_json::from_value::<PartBody>(json!({"type": "text", "text": "x", "colour": 1}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("colour"), "{err}");
        let err = serde_json::from_value::<PartBody>(json!({"type": "video"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("video") && err.contains("text"), "{err}");
    }

    #[test]
    fn origin_uses_its_string_forms() {
        for (origin, text) in [
            (Origin::Human, "human"),
            (Origin::Agent, "agent"),
            (Origin::Aos, "aos"),
            (Origin::Skill("aos-guard".into()), "skill:aos-guard"),
        ] {
            assert_eq!(serde_json::to_value(&origin).unwrap(), json!(text));
            assert_eq!(Origin::parse(text), Some(origin));
        }
        assert_eq!(Origin::parse("skill:"), None);
        assert_eq!(Origin::parse("robot"), None);
    }

    #[test]
    fn token_scopes_are_tagged_by_kind() {
        let scope: TokenScope =
            serde_json::from_value(json!({"kind": "session", "sessionId": "ses_1"})).unwrap();
        assert_eq!(
            scope,
            TokenScope::Session {
                session_id: "ses_1".into(),
                agent_id: None
            }
        );
        assert!(serde_json::from_value::<TokenScope>(json!({"kind": "root"})).is_err());
    }
}
