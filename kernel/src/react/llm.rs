//! LLM providers: OpenAI-compatible `/chat/completions` with streaming and tool calls.
//!
//! Two tool modes: `native` sends the bash tool as an OpenAI function and reads
//! `tool_calls`; `json` (for models without reliable native tool calls) asks for a
//! JSON-schema-constrained answer, `{"action": "bash", "text": "<command>"}` or
//! `{"action": "answer", "text": "<final answer>"}`, and rewrites earlier tool calls and
//! results in the conversation into that form. 429s, 5xx and connection failures are
//! retried with exponential backoff and jitter, honouring `Retry-After`, as long as no
//! token of the answer has been passed on yet.

use std::time::Duration;

use aos_sdk::protocol::{ProviderConfig, SystemCb, ToolMode};
use futures::StreamExt;
use serde_json::{Map, Value, json};

/// A provider as the kernel uses it (the API key read from its environment variable).
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub tool_mode: ToolMode,
    pub max_concurrent: Option<u32>,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_retries: u32,
    pub prices: std::collections::BTreeMap<String, aos_sdk::protocol::ModelPrice>,
}

impl Provider {
    /// What a call of `model` with these tokens cost, by the provider's `prices`.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.prices
            .get(model)
            .or_else(|| self.prices.get("*"))
            .map_or(0.0, |p| {
                (prompt_tokens as f64 * p.input_per_m_tok
                    + completion_tokens as f64 * p.output_per_m_tok)
                    / 1e6
            })
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("tool_mode", &self.tool_mode)
            .finish_non_exhaustive()
    }
}

/// The default provider given by environment variables (`AOS_LLM_BASE_URL`,
/// `AOS_LLM_MODEL`, `AOS_LLM_API_KEY`, `AOS_LLM_TOOL_MODE`); it overrides a provider
/// of the same name in `aoscb.json` and the default model.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvProvider {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub tool_mode: ToolMode,
}

impl std::fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvProvider")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// Name of the provider the environment defines.
pub const ENV_PROVIDER: &str = "env";

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: u32 = 4;

fn from_config(config: &ProviderConfig) -> Provider {
    Provider {
        name: config.name.clone(),
        base_url: config.base_url.trim_end_matches('/').to_owned(),
        api_key: config
            .api_key_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|k| !k.is_empty()),
        tool_mode: config.tool_mode,
        max_concurrent: config.max_concurrent,
        request_timeout: config
            .request_timeout_ms
            .map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis),
        idle_timeout: config
            .idle_timeout_ms
            .map_or(DEFAULT_IDLE_TIMEOUT, Duration::from_millis),
        max_retries: config.max_retries.unwrap_or(DEFAULT_RETRIES),
        prices: config.prices.clone(),
    }
}

/// The providers in effect: the system's, plus (and over) the environment's.
pub fn providers(system: &SystemCb, env: Option<&EnvProvider>) -> Vec<Provider> {
    let mut list: Vec<Provider> = system.providers.iter().map(from_config).collect();
    if let Some(env) = env {
        list.retain(|p| p.name != ENV_PROVIDER);
        list.push(Provider {
            name: ENV_PROVIDER.to_owned(),
            base_url: env.base_url.trim_end_matches('/').to_owned(),
            api_key: env.api_key.clone(),
            tool_mode: env.tool_mode,
            max_concurrent: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_retries: DEFAULT_RETRIES,
            prices: Default::default(),
        });
    }
    list
}

/// Splits `provider/model` at the first `/` (model names may hold more slashes).
pub fn split_model(reference: &str) -> Option<(&str, &str)> {
    reference
        .split_once('/')
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
}

/// One bash call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object (`{command, cwd?, timeoutMs?}` for bash).
    pub arguments: Value,
}

/// A model's answer to one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: Option<String>,
    /// Attempts that failed before this answer.
    pub retries: u32,
}

/// Why a model call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("provider `{provider}` answered HTTP {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach provider `{provider}` at {url}: {message}")]
    Connect {
        provider: String,
        url: String,
        message: String,
    },
    #[error("provider `{provider}`: {message}")]
    Timeout { provider: String, message: String },
    #[error("provider `{provider}` sent an answer that could not be read: {message}")]
    Protocol { provider: String, message: String },
}

impl LlmError {
    fn retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Connect { .. } | LlmError::Timeout { .. } => true,
            LlmError::Protocol { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The bash tool as an OpenAI function.
pub fn bash_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a bash command in your workspace and get its output. The `aos` command reaches the AOS kernel as you (your session, its history, skills, stored content).",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line, run with bash -c."},
                    "cwd": {"type": "string", "description": "Working directory (default: your workspace)."},
                    "timeoutMs": {"type": "integer", "description": "Deadline in milliseconds (default 120000)."}
                },
                "required": ["command"]
            }
        }
    })
}

/// What the system prompt says in JSON tool mode.
pub const JSON_MODE_INSTRUCTIONS: &str = "Reply with exactly one JSON object and nothing else. To run a bash command: {\"action\": \"bash\", \"text\": \"<the command>\"}; its output comes back in the next message. When you have the final answer: {\"action\": \"answer\", \"text\": \"<your answer>\"}.";

fn json_mode_format() -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "aos_step",
            "strict": true,
            "schema": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": ["bash", "answer"]},
                    "text": {"type": "string"}
                },
                "required": ["action", "text"],
                "additionalProperties": false
            }
        }
    })
}

/// The request body for `model` with `messages` (in OpenAI form, native tool calls).
pub fn request_body(model: &str, messages: Vec<Value>, tool_mode: ToolMode) -> Value {
    match tool_mode {
        ToolMode::Native => json!({
            "model": model,
            "messages": messages,
            "tools": [bash_tool()],
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
        ToolMode::Json => json!({
            "model": model,
            "messages": to_json_mode(messages),
            "response_format": json_mode_format(),
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    }
}

/// Rewrites native tool calls and tool results into plain messages of JSON mode, and
/// tells the model the answer format after the leading system messages (the system
/// prompt and loaded skills), just before the conversation.
fn to_json_mode(messages: Vec<Value>) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let leading_system = messages
        .iter()
        .take_while(|m| m["role"] == "system")
        .count();
    let mut commands: Vec<(String, String)> = Vec::new();
    for (index, message) in messages.into_iter().enumerate() {
        if index == leading_system {
            out.push(json!({"role": "system", "content": JSON_MODE_INSTRUCTIONS}));
        }
        match message["role"].as_str() {
            Some("assistant") if message.get("tool_calls").is_some() => {
                if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
                    out.push(json!({"role": "assistant", "content": text}));
                }
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let command = serde_json::from_str::<Value>(arguments)
                        .ok()
                        .and_then(|a| a["command"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    commands.push((
                        call["id"].as_str().unwrap_or_default().to_owned(),
                        command.clone(),
                    ));
                    out.push(json!({"role": "assistant", "content": json!({"action": "bash", "text": command}).to_string()}));
                }
            }
            Some("tool") => {
                let id = message["tool_call_id"].as_str().unwrap_or_default();
                let command = commands
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, c)| c.as_str())
                    .unwrap_or("the command");
                out.push(json!({
                    "role": "user",
                    "content": format!("Output of `{command}`:\n{}", message["content"].as_str().unwrap_or_default()),
                }));
            }
            _ => out.push(message),
        }
    }
    if leading_system >= out.len() {
        out.push(json!({"role": "system", "content": JSON_MODE_INSTRUCTIONS}));
    }
    out
}

/// Calls the provider with `body`, passing streamed text to `on_delta`, retrying
/// failures that happen before any text was passed on.
pub async fn call(
    http: &reqwest::Client,
    provider: &Provider,
    body: &Value,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ModelReply, LlmError> {
    let json_mode = body.get("response_format").is_some() && body.get("tools").is_none();
    let mut attempt = 0u32;
    loop {
        let mut emitted = false;
        let mut forward = |text: &str| {
            emitted = true;
            on_delta(text);
        };
        let result = attempt_once(http, provider, body, json_mode, &mut forward).await;
        match result {
            Ok(mut reply) => {
                reply.retries = attempt;
                return Ok(reply);
            }
            Err(error) if error.retryable() && !emitted && attempt < provider.max_retries => {
                let delay = backoff(attempt, error.retry_after());
                tracing::warn!(provider = %provider.name, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, %error, "model call failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// 0.5 s doubling to 20 s, ±25 % jitter; a `Retry-After` (up to 60 s) wins.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(Duration::from_secs(60));
    }
    let base = Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow(attempt.min(10)))
        .min(Duration::from_secs(20));
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter)
}

async fn attempt_once(
    http: &reqwest::Client,
    provider: &Provider,
    body: &Value,
    json_mode: bool,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ModelReply, LlmError> {
    let url = format!("{}/chat/completions", provider.base_url);
    let mut request = http.post(&url).json(body);
    if let Some(key) = &provider.api_key {
        request = request.bearer_auth(key);
    }
    let timeout = |message: String| LlmError::Timeout {
        provider: provider.name.clone(),
        message,
    };
    let response = tokio::time::timeout(provider.request_timeout, request.send())
        .await
        .map_err(|_| {
            timeout(format!(
                "no answer within {} ms",
                provider.request_timeout.as_millis()
            ))
        })?
        .map_err(|e| LlmError::Connect {
            provider: provider.name.clone(),
            url: url.clone(),
            message: e.to_string(),
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect());
        return Err(LlmError::Status {
            provider: provider.name.clone(),
            status,
            message,
            retry_after,
        });
    }
    let streaming = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let protocol = |message: String| LlmError::Protocol {
        provider: provider.name.clone(),
        message,
    };
    let mut reply = if streaming {
        read_stream(response, provider, json_mode, on_delta).await?
    } else {
        let value: Value = tokio::time::timeout(provider.idle_timeout, response.json())
            .await
            .map_err(|_| timeout("the answer stalled".into()))?
            .map_err(|e| protocol(e.to_string()))?;
        let reply = whole_answer(&value).map_err(protocol)?;
        if !json_mode && !reply.text.is_empty() {
            on_delta(&reply.text);
        }
        reply
    };
    if json_mode {
        reply = from_json_mode(reply);
        if !reply.text.is_empty() {
            on_delta(&reply.text);
        }
    }
    Ok(reply)
}

#[derive(Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

async fn read_stream(
    response: reqwest::Response,
    provider: &Provider,
    json_mode: bool,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ModelReply, LlmError> {
    let mut events = eventsource_stream::EventStream::new(response.bytes_stream());
    let mut reply = ModelReply::default();
    let mut calls: Vec<PendingCall> = Vec::new();
    let mut finished = false;
    let protocol = |message: String| LlmError::Protocol {
        provider: provider.name.clone(),
        message,
    };
    loop {
        let next = tokio::time::timeout(provider.idle_timeout, events.next())
            .await
            .map_err(|_| LlmError::Timeout {
                provider: provider.name.clone(),
                message: format!(
                    "the streamed answer stalled for {} ms",
                    provider.idle_timeout.as_millis()
                ),
            })?;
        let Some(event) = next else { break };
        let event = event.map_err(|e| LlmError::Connect {
            provider: provider.name.clone(),
            url: provider.base_url.clone(),
            message: format!("the stream broke: {e}"),
        })?;
        let data = event.data.trim();
        if data.is_empty() {
            continue;
        }
        if data == "[DONE]" {
            finished = true;
            break;
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| protocol(format!("a stream chunk is not JSON ({e})")))?;
        if let Some(error) = chunk.get("error") {
            return Err(protocol(format!(
                "the stream carried an error: {}",
                error["message"].as_str().unwrap_or("unknown")
            )));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            reply.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
            reply.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                reply.text.push_str(text);
                if !json_mode {
                    on_delta(text);
                }
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
                if index > 1000 {
                    return Err(protocol("a tool call index above 1000".into()));
                }
                while calls.len() <= index {
                    calls.push(PendingCall::default());
                }
                let pending = &mut calls[index];
                if let Some(id) = call["id"].as_str() {
                    pending.id = id.to_owned();
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    pending.name.push_str(name);
                }
                if let Some(arguments) = call["function"]["arguments"].as_str() {
                    pending.arguments.push_str(arguments);
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                reply.finish_reason = Some(reason.to_owned());
            }
        }
    }
    // A stream that stops without `[DONE]` or a `finish_reason` was cut off: what came
    // is not the whole answer, and must not pass for it.
    if !finished && reply.finish_reason.is_none() {
        return Err(LlmError::Connect {
            provider: provider.name.clone(),
            url: provider.base_url.clone(),
            message:
                "the stream ended before the answer was complete (no finish_reason, no [DONE])"
                    .into(),
        });
    }
    for (i, call) in calls.into_iter().enumerate() {
        reply
            .tool_calls
            .push(finish_call(i, call.id, call.name, &call.arguments));
    }
    Ok(reply)
}

fn finish_call(index: usize, id: String, name: String, arguments: &str) -> ToolCall {
    let arguments = if arguments.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        // A model that writes bad JSON gets the problem back as a failed call.
        serde_json::from_str(arguments).unwrap_or_else(|e| {
            json!({"__invalid": format!("the arguments are not valid JSON ({e}): {arguments}")})
        })
    };
    ToolCall {
        id: if id.is_empty() {
            format!("call_{index}")
        } else {
            id
        },
        name,
        arguments,
    }
}

fn whole_answer(value: &Value) -> Result<ModelReply, String> {
    let message = &value["choices"][0]["message"];
    if message.is_null() {
        return Err("the answer has no `choices[0].message`".into());
    }
    let mut reply = ModelReply {
        text: message["content"].as_str().unwrap_or_default().to_owned(),
        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        finish_reason: value["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned),
        ..ModelReply::default()
    };
    for (i, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        reply.tool_calls.push(finish_call(
            i,
            call["id"].as_str().unwrap_or_default().to_owned(),
            call["function"]["name"]
                .as_str()
                .unwrap_or("bash")
                .to_owned(),
            call["function"]["arguments"].as_str().unwrap_or("{}"),
        ));
    }
    Ok(reply)
}

/// Reads a JSON-mode answer: a bash call, or the final answer. Text that is not the
/// expected JSON is taken as the final answer.
fn from_json_mode(mut reply: ModelReply) -> ModelReply {
    let parsed: Option<Value> = serde_json::from_str(reply.text.trim()).ok();
    match parsed
        .as_ref()
        .and_then(|v| Some((v["action"].as_str()?, v["text"].as_str()?)))
    {
        Some(("bash", command)) => {
            reply.tool_calls = vec![ToolCall {
                id: format!("call_{}", uuid::Uuid::now_v7().simple()),
                name: "bash".into(),
                arguments: json!({"command": command}),
            }];
            reply.text = String::new();
        }
        Some((_, answer)) => reply.text = answer.to_owned(),
        None => {
            tracing::warn!(
                "a JSON-mode answer was not the expected JSON; taking it as the final answer"
            );
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_references_split_at_the_first_slash() {
        assert_eq!(
            split_model("openrouter/openai/gpt-4o"),
            Some(("openrouter", "openai/gpt-4o"))
        );
        assert_eq!(split_model("local/qwen"), Some(("local", "qwen")));
        assert_eq!(split_model("qwen"), None);
        assert_eq!(split_model("/qwen"), None);
    }

    #[test]
    fn json_mode_rewrites_tool_calls_and_reads_steps() {
        let messages = vec![
            json!({"role": "system", "content": "s"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "a\nb"}),
        ];
        let body = request_body("m", messages, ToolMode::Json);
        assert!(body.get("tools").is_none());
        let sent = body["messages"].as_array().unwrap();
        assert_eq!(sent[1]["content"], JSON_MODE_INSTRUCTIONS);
        assert_eq!(sent[2]["content"], r#"{"action":"bash","text":"ls"}"#);
        assert_eq!(sent[3]["role"], "user");
        assert_eq!(sent[3]["content"], "Output of `ls`:\na\nb");
        let step = from_json_mode(ModelReply {
            text: r#"{"action": "bash", "text": "wc -l x"}"#.into(),
            ..Default::default()
        });
        assert_eq!(step.tool_calls[0].arguments["command"], "wc -l x");
        assert!(step.text.is_empty());
        let done = from_json_mode(ModelReply {
            text: r#"{"action": "answer", "text": "42"}"#.into(),
            ..Default::default()
        });
        assert_eq!(done.text, "42");
        assert!(done.tool_calls.is_empty());
    }

    #[test]
    fn backoff_grows_honours_retry_after_and_stays_bounded() {
        assert!(backoff(0, None) <= Duration::from_millis(625));
        assert!(backoff(3, None) >= Duration::from_millis(3000));
        assert!(backoff(30, None) <= Duration::from_secs(25));
        assert_eq!(
            backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(0, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn bad_tool_arguments_are_kept_as_a_visible_problem() {
        let call = finish_call(0, String::new(), "bash".into(), "{\"command\": ");
        assert_eq!(call.id, "call_0");
        assert!(
            call.arguments["__invalid"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
    }
}
