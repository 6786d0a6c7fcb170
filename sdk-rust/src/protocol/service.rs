//! The service protocol (version 1): newline-delimited JSON-RPC 2.0 between the kernel
//! and a skill's service, over a Unix socket or a WebSocket. `docs/protocol.md` is the
//! prose reference; this module is the wire truth.
//!
//! Every method belongs to one closed enum per direction ([`ServiceRequest`] for what a
//! service sends, [`KernelRequest`] for what the kernel sends), so adding a method fails
//! to compile until both sides handle it. Each variant names the protocol version that
//! introduced it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Event, OwnerType, Timestamp};

/// Protocol version 1: hello, register, hook, op, event, call, ping, shutdown.
pub const PROTOCOL_V1: u32 = 1;
/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = PROTOCOL_V1;
/// Largest frame (one JSON text, without its newline) either side accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// A spawned service must send `hello` within this many milliseconds of being started.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// After `shutdown`, the kernel waits this long before killing the service's process group.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// JSON-RPC 2.0 error codes, plus AOS's own in the implementation-defined range.
pub mod rpc_code {
    /// The frame is not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The frame is JSON but not a JSON-RPC 2.0 message, or it is refused (too large,
    /// permission denied at registration).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method exists but its params are wrong; the message names the field.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler failed.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A message arrived before `hello` completed.
    pub const HELLO_REQUIRED: i64 = -32002;
    /// The service asked for a protocol version the kernel does not speak.
    pub const UNSUPPORTED_PROTOCOL: i64 = -32003;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn method_not_found(method: &str, known: &[&str]) -> Self {
        Self::new(
            rpc_code::METHOD_NOT_FOUND,
            format!(
                "unknown method `{method}`; this side accepts {}",
                known
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    pub fn invalid_params(method: &str, problem: impl fmt::Display) -> Self {
        Self::new(
            rpc_code::INVALID_PARAMS,
            format!("invalid params for `{method}`: {problem}"),
        )
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// A request or response id: a number or a string, as JSON-RPC allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RpcId {
    Number(u64),
    Text(String),
}

impl fmt::Display for RpcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcId::Number(n) => write!(f, "{n}"),
            RpcId::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A call that wants an answer.
    Request {
        id: RpcId,
        method: String,
        params: Value,
    },
    /// A call without an id: no answer.
    Notification { method: String, params: Value },
    /// The answer to a request this side sent.
    Response {
        id: RpcId,
        result: Result<Value, RpcError>,
    },
}

/// Why a frame could not be decoded, with the id to answer to when one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub id: Option<RpcId>,
    pub error: RpcError,
}

/// Decodes one frame (a JSON text without its newline). Never panics; every problem is
/// a [`FrameError`] whose error can be sent back as is.
pub fn decode_frame(text: &str) -> Result<Frame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        error: RpcError::new(rpc_code::PARSE_ERROR, format!("the frame is not JSON: {e}")),
    })?;
    let Value::Object(mut map) = value else {
        return Err(FrameError {
            id: None,
            error: RpcError::new(
                rpc_code::INVALID_REQUEST,
                "a frame must be one JSON object (batches are not supported)",
            ),
        });
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => Some(RpcId::Number(n)),
            None => {
                return Err(invalid(
                    None,
                    "`id` must be a non-negative integer or a string",
                ));
            }
        },
        Some(Value::String(s)) if s.len() <= 256 => Some(RpcId::Text(s)),
        Some(_) => {
            return Err(invalid(
                None,
                "`id` must be a non-negative integer or a string of at most 256 bytes",
            ));
        }
    };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(id, "`jsonrpc` must be \"2.0\""));
    }
    if let Some(method) = map.remove("method") {
        let Value::String(method) = method else {
            return Err(invalid(id, "`method` must be a string"));
        };
        let params = match map.remove("params") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(params @ Value::Object(_)) => params,
            Some(_) => return Err(invalid(id, "`params` must be an object")),
        };
        return Ok(match id {
            Some(id) => Frame::Request { id, method, params },
            None => Frame::Notification { method, params },
        });
    }
    let Some(id) = id else {
        return Err(invalid(
            None,
            "a frame needs `method` (a call) or `id` with `result`/`error` (an answer)",
        ));
    };
    match (map.remove("result"), map.remove("error")) {
        (Some(result), None) => Ok(Frame::Response {
            id,
            result: Ok(result),
        }),
        (None, Some(error)) => match serde_json::from_value::<RpcError>(error) {
            Ok(error) => Ok(Frame::Response {
                id,
                result: Err(error),
            }),
            Err(e) => Err(invalid(Some(id), format!("`error` is malformed: {e}"))),
        },
        _ => Err(invalid(
            Some(id),
            "an answer must carry exactly one of `result` and `error`",
        )),
    }
}

fn invalid(id: Option<RpcId>, message: impl Into<String>) -> FrameError {
    FrameError {
        id,
        error: RpcError::new(rpc_code::INVALID_REQUEST, message),
    }
}

#[derive(Serialize)]
struct RequestFrame<'a, P: ?Sized> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a P,
}

/// Encodes a request; `params` must serialize to a JSON object.
pub fn encode_request<P: Serialize + ?Sized>(id: u64, method: &str, params: &P) -> String {
    serde_json::to_string(&RequestFrame {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct NotificationFrame<'a, P: ?Sized> {
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a P,
}

/// Encodes a notification; `params` must serialize to a JSON object.
pub fn encode_notification<P: Serialize + ?Sized>(method: &str, params: &P) -> String {
    serde_json::to_string(&NotificationFrame {
        jsonrpc: "2.0",
        method,
        params,
    })
    .unwrap_or_default()
}

/// Encodes an answer. `id` is `None` only for errors about unreadable frames.
pub fn encode_response(id: Option<&RpcId>, result: &Result<Value, RpcError>) -> String {
    match result {
        Ok(value) => serde_json::json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err(error) => serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error}),
    }
    .to_string()
}

fn parse_params<T: serde::de::DeserializeOwned>(
    method: &str,
    params: Value,
) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::invalid_params(method, e))
}

// ---------------------------------------------------------------------------------------
// Service → kernel
// ---------------------------------------------------------------------------------------

/// Calls a service makes of the kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceRequest {
    /// v1. The first message on every connection.
    Hello(HelloParams),
    /// v1. Declares (or replaces) the hooks, event subscriptions and operations.
    Register(RegisterParams),
    /// v1. A syscall under the service's own authority; the answer is the envelope.
    Call(CallParams),
    /// v1. Liveness check.
    Ping,
}

impl ServiceRequest {
    pub const METHODS: &'static [&'static str] = &["hello", "register", "call", "ping"];

    pub fn parse(method: &str, params: Value) -> Result<Self, RpcError> {
        Ok(match method {
            "hello" => Self::Hello(parse_params(method, params)?),
            "register" => Self::Register(parse_params(method, params)?),
            "call" => Self::Call(parse_params(method, params)?),
            "ping" => Self::Ping,
            other => return Err(RpcError::method_not_found(other, Self::METHODS)),
        })
    }

    pub const fn method(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Register(_) => "register",
            Self::Call(_) => "call",
            Self::Ping => "ping",
        }
    }

    /// The params as sent on the wire.
    pub fn params(&self) -> Value {
        match self {
            Self::Hello(p) => to_value(p),
            Self::Register(p) => to_value(p),
            Self::Call(p) => to_value(p),
            Self::Ping => Value::Object(Map::new()),
        }
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `hello`: who the service is and which protocol it speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelloParams {
    /// Protocol version the service speaks (1).
    pub protocol: u32,
    /// The skill the service belongs to (must match the skill it was started for).
    pub skill: String,
    /// Name and version of the SDK, for diagnostics (`aos-sdk-rust/0.1.0`).
    #[serde(default)]
    pub sdk: Option<String>,
    /// Optional features the service supports (none are defined in version 1).
    #[serde(default)]
    pub features: Vec<String>,
}

/// The kernel's answer to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelloResult {
    pub protocol: u32,
    pub kernel_version: String,
    /// The service's id (`svc_…`), as listed by `service.list`.
    pub instance_id: String,
    pub owner: ServiceOwnerInfo,
    /// Features both sides support.
    pub features: Vec<String>,
}

/// The level a service runs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOwnerInfo {
    pub owner_type: OwnerType,
    /// The agent or session id for agent- and session-owned services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// The agent of an agent- or session-owned service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The session of a session-owned service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// `register`: the whole set of hooks, events and operations; sending it again replaces
/// the previous set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterParams {
    /// Admission and transform hooks to answer. Event names listed here are treated as
    /// event subscriptions.
    #[serde(default)]
    pub hooks: Vec<HookSubscription>,
    /// Event name patterns: exact names, `prefix.*`, or `*`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Operations the service provides, callable as `<skill>.<name>`.
    #[serde(default)]
    pub ops: Vec<OpDeclaration>,
}

/// One hook a service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookSubscription {
    pub name: String,
    /// Lower runs first within an owner level (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Deadline of each call (default 5000, at most 60000; 3600000 when `interactive`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The handler waits for a person (an approval), so it may take up to an hour.
    #[serde(default)]
    pub interactive: bool,
}

impl From<&str> for HookSubscription {
    fn from(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            priority: None,
            timeout_ms: None,
            interactive: false,
        }
    }
}

/// Whether an operation changes state (commands are logged and may be refused by
/// admission policy) or only reads (queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OpKindWire {
    Command,
    Query,
}

/// An operation a service provides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpDeclaration {
    /// The name after the skill prefix: `search` becomes `<skill>.search`.
    pub name: String,
    pub kind: OpKindWire,
    /// One sentence, shown by `aos syscalls`.
    pub description: String,
    /// JSON Schema of the params, for documentation (the service validates).
    #[serde(default)]
    pub params_schema: Option<Value>,
    /// Deadline of each call (default 30000, at most 3600000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The kernel's answer to `register`: what is now registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResult {
    pub hooks: Vec<String>,
    pub events: Vec<String>,
    /// Full operation names (`<skill>.<name>`).
    pub ops: Vec<String>,
}

/// `call`: a syscall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallParams {
    pub op: String,
    #[serde(default)]
    pub params: Value,
}

// ---------------------------------------------------------------------------------------
// Kernel → service
// ---------------------------------------------------------------------------------------

/// Calls the kernel makes of a service.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelRequest {
    /// v1. An admission or transform hook; the answer is the verdict.
    Hook(HookCallParams),
    /// v1. A call of one of the service's operations; the answer is the data.
    Op(OpCallParams),
    /// v1. Stop: answer, then exit; the process group is killed after the grace period.
    Shutdown(ShutdownParams),
}

impl KernelRequest {
    pub const METHODS: &'static [&'static str] = &["hook", "op", "shutdown"];

    pub fn parse(method: &str, params: Value) -> Result<Self, RpcError> {
        Ok(match method {
            "hook" => Self::Hook(parse_params(method, params)?),
            "op" => Self::Op(parse_params(method, params)?),
            "shutdown" => Self::Shutdown(parse_params(method, params)?),
            other => return Err(RpcError::method_not_found(other, Self::METHODS)),
        })
    }

    pub const fn method(&self) -> &'static str {
        match self {
            Self::Hook(_) => "hook",
            Self::Op(_) => "op",
            Self::Shutdown(_) => "shutdown",
        }
    }

    pub fn params(&self) -> Value {
        match self {
            Self::Hook(p) => to_value(p),
            Self::Op(p) => to_value(p),
            Self::Shutdown(p) => to_value(p),
        }
    }
}

/// Notifications the kernel sends.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelNotification {
    /// v1. A runtime event matching one of the service's subscriptions.
    Event(EventParams),
}

impl KernelNotification {
    pub const METHODS: &'static [&'static str] = &["event"];

    pub fn parse(method: &str, params: Value) -> Result<Self, RpcError> {
        match method {
            "event" => Ok(Self::Event(parse_params(method, params)?)),
            other => Err(RpcError::method_not_found(other, Self::METHODS)),
        }
    }
}

/// `hook`: `input` is read-only context, `output` the data the handler may rewrite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookCallParams {
    pub name: String,
    /// `admission` or `transform`, so a handler knows which verdict shape to answer.
    #[serde(default)]
    pub class: Option<String>,
    pub input: Value,
    pub output: Value,
}

/// `op`: a call of `name` (the full `<skill>.<op>` name) by `caller`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpCallParams {
    pub name: String,
    pub params: Value,
    pub caller: CallerInfo,
}

/// [`HookCallParams`] borrowed: the same wire shape, for the sender (the kernel), which
/// should not copy the hook's data for every call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookCallRef<'a> {
    pub name: &'a str,
    pub class: Option<&'a str>,
    pub input: &'a Value,
    pub output: &'a Value,
}

/// [`OpCallParams`] borrowed: the same wire shape, for the sender (the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpCallRef<'a> {
    pub name: &'a str,
    pub params: &'a Value,
    pub caller: &'a CallerInfo,
}

/// Who called a service's operation: the service decides what they may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallerInfo {
    /// As written in the RuntimeLog: `admin`, `agent:<id>`, `session:<id>`, `service:<skill>`, `aos`.
    pub identity: String,
    /// `kernel`, `admin`, `agent`, `session` or `service`.
    pub kind: String,
    /// The agent the caller is confined to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The session the caller is confined to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// For services: the calling skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

/// `shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `event`: a runtime event; `seq` is its id (the SSE `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventParams {
    pub name: String,
    pub payload: Value,
    pub seq: u64,
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl From<&Event> for EventParams {
    fn from(event: &Event) -> Self {
        Self {
            name: event.name.clone(),
            payload: event.payload.clone(),
            seq: event.id,
            ts: event.ts,
            agent_id: event.agent_id.clone(),
            session_id: event.session_id.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------

/// What a hook handler answers. Admission hooks answer [`Verdict::Allow`] (optionally
/// with a rewritten `output`) or [`Verdict::Reject`]; transform hooks answer
/// [`Verdict::Output`] or [`Verdict::Keep`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    AllowWith(Value),
    /// Allow, saying why (the kernel audits the reason: `tool.admission` rows for
    /// `tool.before`), optionally with a new output.
    AllowBecause(String, Option<Value>),
    Reject(String),
    Output(Value),
    Keep,
}

impl Verdict {
    /// The wire form: admission `{action, reason?, output?}`, transform `{output?}`.
    pub fn to_wire(&self) -> Value {
        use serde_json::json;
        match self {
            Verdict::Allow => json!({"action": "allow"}),
            Verdict::AllowWith(output) => json!({"action": "allow", "output": output}),
            Verdict::AllowBecause(reason, None) => json!({"action": "allow", "reason": reason}),
            Verdict::AllowBecause(reason, Some(output)) => {
                json!({"action": "allow", "reason": reason, "output": output})
            }
            Verdict::Reject(reason) => json!({"action": "reject", "reason": reason}),
            Verdict::Output(output) => json!({"output": output}),
            Verdict::Keep => json!({}),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Services as listed
// ---------------------------------------------------------------------------------------

/// Lifecycle state of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServiceState {
    /// Spawned, waiting for `hello`.
    Starting,
    /// Connected and serving.
    Running,
    /// Crashed; restarting after a backoff.
    Restarting,
    /// Being shut down.
    Stopping,
    /// Stopped on request, or disconnected (remote services).
    Stopped,
    /// Crashed too often (more than 5 times in 60 s); restarted only by `skill.start`
    /// or a change of its files.
    Failed,
}

impl ServiceState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Restarting => "restarting",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Failed => "failed",
        }
    }

    /// True for states in which the service is, or will soon be, up.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            ServiceState::Starting | ServiceState::Running | ServiceState::Restarting
        )
    }
}

/// How a service reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServiceTransport {
    /// Spawned by the kernel, connected over its Unix socket.
    Unix,
    /// Connected from outside over `/services`.
    Websocket,
}

/// A service, as `service.list` and `service.get` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    pub service_id: String,
    pub skill: String,
    pub owner: ServiceOwnerInfo,
    pub state: ServiceState,
    pub transport: ServiceTransport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it was restarted after a crash.
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The command it runs (spawned services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    pub registered: RegisterResult,
    /// Events dropped because the service read them too slowly.
    pub dropped_events: u64,
}

/// `service.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceListParams {
    pub skill: Option<String>,
    pub owner_type: Option<OwnerType>,
    pub owner_id: Option<String>,
    pub state: Option<ServiceState>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn borrowed_calls_have_the_wire_shape_of_the_owned_ones() {
        let (input, output) = (
            json!({"agentId": "agt_1"}),
            json!({"args": {"command": "ls"}}),
        );
        let hook = HookCallRef {
            name: "tool.before",
            class: Some("admission"),
            input: &input,
            output: &output,
        };
        let wire = to_value(&hook);
        let owned: HookCallParams = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(to_value(&owned), wire);
        assert_eq!(owned.class.as_deref(), Some("admission"));
        let caller = CallerInfo {
            identity: "admin".into(),
            kind: "admin".into(),
            agent_id: None,
            session_id: None,
            skill: None,
            token_id: Some("tok_1".into()),
        };
        let params = json!({"q": 1});
        let op = OpCallRef {
            name: "demo.echo",
            params: &params,
            caller: &caller,
        };
        let wire = to_value(&op);
        let owned: OpCallParams = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(to_value(&owned), wire);
        assert_eq!(owned.caller, caller);
    }

    #[test]
    fn frames_decode_into_requests_notifications_and_answers() {
        assert_eq!(
            decode_frame(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ok(Frame::Request {
                id: RpcId::Number(1),
                method: "ping".into(),
                params: json!({})
            })
        );
        assert_eq!(
            decode_frame(r#"{"jsonrpc":"2.0","method":"event","params":{"a":1}}"#),
            Ok(Frame::Notification {
                method: "event".into(),
                params: json!({"a": 1})
            })
        );
        assert_eq!(
            decode_frame(r#"{"jsonrpc":"2.0","id":"x","result":{"ok":true}}"#),
            Ok(Frame::Response {
                id: RpcId::Text("x".into()),
                result: Ok(json!({"ok": true}))
            })
        );
        let Ok(Frame::Response { result: Err(e), .. }) =
            decode_frame(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#)
        else {
            panic!("expected an error answer");
        };
        assert_eq!(e.code, rpc_code::METHOD_NOT_FOUND);
    }

    #[test]
    fn garbage_is_answered_with_a_reason() {
        let cases = [
            ("not json", rpc_code::PARSE_ERROR, None),
            ("[1,2]", rpc_code::INVALID_REQUEST, None),
            (
                r#"{"id":1,"method":"ping"}"#,
                rpc_code::INVALID_REQUEST,
                Some(RpcId::Number(1)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":7}"#,
                rpc_code::INVALID_REQUEST,
                Some(RpcId::Number(2)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"x","params":[1]}"#,
                rpc_code::INVALID_REQUEST,
                Some(RpcId::Number(2)),
            ),
            (
                r#"{"jsonrpc":"2.0","id":-1,"method":"x"}"#,
                rpc_code::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","result":1}"#,
                rpc_code::INVALID_REQUEST,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"result":1,"error":{"code":1,"message":"m"}}"#,
                rpc_code::INVALID_REQUEST,
                Some(RpcId::Number(4)),
            ),
        ];
        for (text, code, id) in cases {
            let err = decode_frame(text).unwrap_err();
            assert_eq!(err.error.code, code, "{text}: {}", err.error.message);
            assert_eq!(err.id, id, "{text}");
        }
    }

    #[test]
    fn methods_parse_strictly() {
        let hello = ServiceRequest::parse(
            "hello",
            json!({"protocol": 1, "skill": "demo", "sdk": "x/1", "features": []}),
        )
        .unwrap();
        assert_eq!(hello.method(), "hello");
        let err = ServiceRequest::parse("hello", json!({"protocol": 1, "skill": "d", "colour": 1}))
            .unwrap_err();
        assert_eq!(err.code, rpc_code::INVALID_PARAMS);
        assert!(err.message.contains("colour"), "{}", err.message);
        let err = ServiceRequest::parse("launch", json!({})).unwrap_err();
        assert_eq!(err.code, rpc_code::METHOD_NOT_FOUND);
        assert!(err.message.contains("`hello`"), "{}", err.message);
        let register = ServiceRequest::parse(
            "register",
            json!({"hooks": [{"name": "tool.before", "timeoutMs": 100}], "events": ["session.*"]}),
        )
        .unwrap();
        let ServiceRequest::Register(params) = register else {
            panic!("expected register")
        };
        assert_eq!(params.hooks[0].timeout_ms, Some(100));
        assert!(params.ops.is_empty());
    }

    #[test]
    fn verdicts_have_their_wire_forms() {
        assert_eq!(Verdict::Allow.to_wire(), json!({"action": "allow"}));
        assert_eq!(
            Verdict::Reject("no".into()).to_wire(),
            json!({"action": "reject", "reason": "no"})
        );
        assert_eq!(Verdict::Output(json!(1)).to_wire(), json!({"output": 1}));
        assert_eq!(Verdict::Keep.to_wire(), json!({}));
    }

    #[test]
    fn encoded_frames_decode_back() {
        let text = encode_request(7, "hook", &json!({"name": "tool.before"}));
        assert!(matches!(
            decode_frame(&text),
            Ok(Frame::Request {
                id: RpcId::Number(7),
                ..
            })
        ));
        let text = encode_response(Some(&RpcId::Number(7)), &Err(RpcError::new(1, "m")));
        assert!(matches!(
            decode_frame(&text),
            Ok(Frame::Response { result: Err(_), .. })
        ));
        let text = encode_notification("event", &json!({}));
        assert!(matches!(
            decode_frame(&text),
            Ok(Frame::Notification { .. })
        ));
    }
}
