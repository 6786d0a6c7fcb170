//! Dispatches on the wire: what `session.dispatch` answers, the events of a dispatch's
//! stream (`GET /dispatches/{id}/stream`), and the ReActUnit's settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BashState, DispatchStatus, ErrorCode, Timestamp, Usage};

/// The answer to `session.dispatch`: the dispatch runs on in the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchStarted {
    pub dispatch_id: String,
    pub session_id: String,
    /// `running`, or `queued` behind the session's running dispatch.
    pub status: DispatchStatus,
    /// Seq of the user message, once written (running dispatches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message_seq: Option<u64>,
    /// Place in the session's run queue (1 = next), for queued dispatches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
}

/// Where a dispatch waits for the compute gate (shown by `dispatch.get` while waiting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateWait {
    pub provider: String,
    /// 1 = next to be admitted.
    pub position: u32,
    pub waiting_ms: u64,
}

/// One event of a dispatch's stream. The SSE `event:` is [`StreamEvent::name`], the
/// `data:` the variant's fields as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Model tokens as they arrive.
    Delta { text: String },
    /// A message was written to history (assistant text, the user message).
    Message(StreamMessage),
    /// The model asked for a bash command (after `tool.before`, as it will run).
    ToolCall(StreamToolCall),
    /// A bash command finished (or was refused), as written to history.
    ToolResult(StreamToolResult),
    /// Something failed; a `done` follows.
    Error { code: ErrorCode, message: String },
    /// The dispatch ended. Always the last event.
    Done(StreamDone),
}

impl StreamEvent {
    pub const fn name(&self) -> &'static str {
        match self {
            StreamEvent::Delta { .. } => "delta",
            StreamEvent::Message(_) => "message",
            StreamEvent::ToolCall(_) => "tool_call",
            StreamEvent::ToolResult(_) => "tool_result",
            StreamEvent::Error { .. } => "error",
            StreamEvent::Done(_) => "done",
        }
    }

    /// The `data:` of the SSE event.
    pub fn data(&self) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|mut v| v.get_mut("data").map(serde_json::Value::take))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Rebuilds an event from its SSE name and data.
    pub fn from_sse(name: &str, data: &str) -> Result<Self, serde_json::Error> {
        let data: serde_json::Value = serde_json::from_str(data)?;
        serde_json::from_value(serde_json::json!({"event": name, "data": data}))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamMessage {
    pub seq: u64,
    pub role: super::Role,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamToolCall {
    pub tool_call_id: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamToolResult {
    pub seq: u64,
    pub tool_call_id: String,
    pub state: BashState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The visible result, or a preview when it was stored as content.
    pub preview: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamDone {
    pub dispatch_id: String,
    pub status: DispatchStatus,
    pub usage: Usage,
    pub turns: u32,
    /// Seq of the newest message the dispatch wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_message_seq: Option<u64>,
    /// The final answer, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<super::ErrorBody>,
    pub ended_at: Timestamp,
}

/// How bash commands run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BashSettings {
    /// Default deadline of one command (a call may ask for its own `timeoutMs`).
    #[serde(default = "default_bash_timeout")]
    pub timeout_ms: u64,
    /// Bytes kept of stdout and of stderr each; the rest is cut and marked.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// `none` (a process group in the agent's workspace) or `bwrap` (bubblewrap:
    /// read-only system, writable workspace, own /tmp and pid namespace).
    #[serde(default)]
    pub sandbox: Sandbox,
}

fn default_bash_timeout() -> u64 {
    120_000
}

fn default_max_output() -> u64 {
    1024 * 1024
}

impl Default for BashSettings {
    fn default() -> Self {
        Self {
            timeout_ms: default_bash_timeout(),
            max_output_bytes: default_max_output(),
            sandbox: Sandbox::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Sandbox {
    #[default]
    None,
    Bwrap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_split_into_sse_name_and_data() {
        let event = StreamEvent::Delta { text: "hel".into() };
        assert_eq!(event.name(), "delta");
        assert_eq!(event.data(), serde_json::json!({"text": "hel"}));
        let back = StreamEvent::from_sse("delta", r#"{"text":"hel"}"#).unwrap();
        assert_eq!(back, event);
        assert!(StreamEvent::from_sse("nope", "{}").is_err());
    }
}
