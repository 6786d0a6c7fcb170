//! A scripted LLM: a real OpenAI-compatible HTTP server (`POST /v1/chat/completions`)
//! for tests and benchmarks. It streams Server-Sent Events like the real thing (or
//! answers whole JSON when `stream` is false), produces tool calls natively or as
//! JSON-mode steps (when the request carries `response_format`), and can be told to be
//! slow, fail with 429/500 (with `Retry-After`), enforce a rate limit, or never answer. It counts requests
//! and the most it had in flight at once.
//!
//! Replies come from a queue of [`Step`]s, then from a rule (a function of the request
//! body), so concurrent conversations can be scripted without shared order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// What the model answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A final answer.
    Text(String),
    /// One bash call (plus optional text before it).
    Bash { command: String, text: String },
    /// Several bash calls in one answer.
    BashMany(Vec<String>),
    /// An HTTP error, with `Retry-After` seconds when given.
    Error {
        status: u16,
        retry_after: Option<f64>,
    },
    /// Accept the request and never answer.
    Hang,
    /// Start a streamed answer (`200`, the role chunk, then `text` if any) and then
    /// fall silent without closing the stream: a reply that stalls mid-stream. Asked
    /// without `stream`, it never answers.
    Stall { text: String },
    /// Start a streamed answer (the role chunk, then `text` if any) and end the stream
    /// there: no `finish_reason`, no `[DONE]` — a reply cut off mid-stream.
    Truncated { text: String },
    /// One bash call whose `arguments` are this string as sent, valid JSON or not.
    RawArguments(String),
}

impl Reply {
    pub fn text(text: &str) -> Self {
        Reply::Text(text.to_owned())
    }

    pub fn bash(command: &str) -> Self {
        Reply::Bash {
            command: command.to_owned(),
            text: String::new(),
        }
    }
}

/// A reply and how long to take before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub reply: Reply,
    pub delay: Duration,
}

impl From<Reply> for Step {
    fn from(reply: Reply) -> Self {
        Step {
            reply,
            delay: Duration::ZERO,
        }
    }
}

type Rule = Arc<dyn Fn(&Value) -> Step + Send + Sync>;

struct Shared {
    queue: Mutex<VecDeque<Step>>,
    rule: Mutex<Rule>,
    /// Added to every reply.
    latency: Mutex<Duration>,
    requests: Mutex<Vec<Value>>,
    /// The `Authorization` header of each request, in order.
    authorizations: Mutex<Vec<Option<String>>>,
    keep_requests: std::sync::atomic::AtomicBool,
    /// At most this many requests in any window; the rest get `429`.
    rate_limit: Mutex<Option<(usize, Duration)>>,
    /// Arrival times of the requests admitted under the rate limit.
    arrivals: Mutex<VecDeque<std::time::Instant>>,
    rejected: AtomicUsize,
    count: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running scripted LLM on its own thread and runtime.
pub struct ScriptedLlm {
    /// Base URL for provider configuration: `http://127.0.0.1:<port>/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Counts the tool results in a conversation (both tool modes).
pub fn tool_results(body: &Value) -> usize {
    tool_results_in(body["messages"].as_array().map_or(&[][..], Vec::as_slice))
}

/// Tool results after the newest user message: those of the dispatch now running.
pub fn tool_results_since_user(body: &Value) -> usize {
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let start = messages
        .iter()
        .rposition(|m| m["role"] == "user" && !is_tool_result(m))
        .map_or(0, |i| i + 1);
    tool_results_in(&messages[start..])
}

fn is_tool_result(message: &Value) -> bool {
    message["role"] == "tool"
        || message["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Output of `"))
}

fn tool_results_in(messages: &[Value]) -> usize {
    messages.iter().filter(|m| is_tool_result(m)).count()
}

/// The text of the last user message of a conversation.
pub fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

impl ScriptedLlm {
    /// Starts the server; by default every request is answered `Text("ok")`.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            rule: Mutex::new(Arc::new(|_: &Value| Reply::text("ok").into())),
            latency: Mutex::new(Duration::ZERO),
            requests: Mutex::new(Vec::new()),
            authorizations: Mutex::new(Vec::new()),
            keep_requests: std::sync::atomic::AtomicBool::new(true),
            rate_limit: Mutex::new(None),
            arrivals: Mutex::new(VecDeque::new()),
            rejected: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scripted-llm".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the scripted LLM");
                runtime.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
                    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
                    socket
                        .bind("127.0.0.1:0".parse().expect("an address"))
                        .expect("bind");
                    // A deep backlog: thousands of sessions connect at once.
                    let listener = socket.listen(8192).expect("listen");
                    let addr = listener.local_addr().expect("the address");
                    ready_tx.send(addr).expect("report the address");
                    let app = Router::new()
                        .route("/v1/chat/completions", post(complete))
                        // Contexts of 10 000 messages are megabytes; providers take them.
                        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
                        .with_state(state);
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
            })
            .expect("the scripted LLM thread");
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the scripted LLM did not start");
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Queues replies, answered in order before the rule takes over.
    pub fn push(&self, steps: impl IntoIterator<Item = impl Into<Step>>) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.extend(steps.into_iter().map(Into::into));
    }

    /// Replaces the rule that answers when the queue is empty.
    pub fn rule(&self, rule: impl Fn(&Value) -> Step + Send + Sync + 'static) {
        *self.shared.rule.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(rule);
    }

    /// A rule for closed-loop load: every dispatch makes `turns - 1` bash calls of
    /// `command`, then a final answer (counting the tool results since the newest user
    /// message, so it holds for any number of dispatches on one session).
    pub fn react_turns(&self, turns: usize, command: &str) {
        let command = command.to_owned();
        self.rule(move |body| {
            if tool_results_since_user(body) + 1 < turns {
                Reply::bash(&command).into()
            } else {
                Reply::text("done").into()
            }
        });
    }

    /// Waits this long before every reply (on top of a step's own delay).
    pub fn set_latency(&self, latency: Duration) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Stops recording request bodies (load tests).
    pub fn forget_requests(&self) {
        self.shared.keep_requests.store(false, Ordering::SeqCst);
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Request bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `Authorization` header each request carried, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers `429` (with `Retry-After`) to any request beyond `requests` in a
    /// sliding `window`, like a provider's rate limit.
    pub fn set_rate_limit(&self, requests: usize, window: Duration) {
        *self
            .shared
            .rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((requests, window));
    }

    /// Requests refused by the rate limit so far.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_in_flight(&self) {
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    };
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(shared.clone());
    shared.count.fetch_add(1, Ordering::SeqCst);
    let limit = *shared.rate_limit.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((requests, window)) = limit {
        let now = std::time::Instant::now();
        let mut arrivals = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        while arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            arrivals.pop_front();
        }
        if arrivals.len() >= requests {
            drop(arrivals);
            shared.rejected.fetch_add(1, Ordering::SeqCst);
            drop(guard);
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(
                    json!({"error": {"message": "rate limit exceeded", "type": "rate_limit"}}),
                ),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        arrivals.push_back(now);
    }
    if shared.keep_requests.load(Ordering::SeqCst) {
        shared
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
        shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.clone());
    }
    let step = {
        let queued = shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        match queued {
            Some(step) => step,
            None => {
                let rule = shared
                    .rule
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                rule(&request)
            }
        }
    };
    let latency = *shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    tokio::time::sleep(latency + step.delay).await;
    let json_mode = request.get("response_format").is_some();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let prompt_tokens = (body.len() / 4) as u64;
    // Raw arguments go out as given; commands are wrapped as `{"command": …}`.
    let raw = matches!(&step.reply, Reply::RawArguments(_));
    let arguments_of = |command: &String| {
        if raw {
            command.clone()
        } else {
            json!({"command": command}).to_string()
        }
    };
    let (text, calls): (String, Vec<String>) = match step.reply {
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        Reply::Stall { ref text } | Reply::Truncated { ref text } => {
            if !stream {
                std::future::pending::<()>().await;
                unreachable!("pending never resolves")
            }
            let mut frames = vec![format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            )];
            if !text.is_empty() {
                frames.push(format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"content": text}}]})
                ));
            }
            // A stall stays open and silent; a truncated reply just ends.
            let rest = match step.reply {
                Reply::Stall { .. } => futures::stream::pending().boxed(),
                _ => futures::stream::empty().boxed(),
            };
            let body = futures::stream::iter(frames).chain(rest).map(move |frame| {
                let _keep = &guard;
                Ok::<_, std::convert::Infallible>(frame)
            });
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        Reply::Error {
            status,
            retry_after,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({"error": {"message": format!("scripted error {status}"), "type": "scripted"}})),
            )
                .into_response();
            if let Some(seconds) = retry_after
                && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            drop(guard);
            return response;
        }
        Reply::Text(text) => (text, vec![]),
        Reply::Bash { command, text } => (text, vec![command]),
        Reply::BashMany(commands) => (String::new(), commands),
        Reply::RawArguments(raw) => (String::new(), vec![raw]),
    };
    // JSON mode answers in text: one step at a time.
    let (text, calls) = if json_mode {
        match calls.first() {
            Some(command) => (
                json!({"action": "bash", "text": command}).to_string(),
                vec![],
            ),
            None => (
                json!({"action": "answer", "text": text}).to_string(),
                vec![],
            ),
        }
    } else {
        (text, calls)
    };
    let completion_tokens =
        ((text.len() + calls.iter().map(String::len).sum::<usize>()) / 4) as u64 + 1;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if !stream {
        let tool_calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": "bash", "arguments": arguments_of(c)}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = json!(tool_calls);
        }
        drop(guard);
        return axum::Json(json!({
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }))
        .into_response();
    }
    let mut chunks: Vec<Value> =
        vec![json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})];
    let characters: Vec<char> = text.chars().collect();
    for piece in characters.chunks(characters.len().div_ceil(3).max(1)) {
        let piece: String = piece.iter().collect();
        chunks.push(json!({"choices": [{"index": 0, "delta": {"content": piece}}]}));
    }
    for (i, command) in calls.iter().enumerate() {
        let arguments = arguments_of(command);
        let (a, b) = arguments.split_at(arguments.floor_char_boundary(arguments.len() / 2));
        chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": "bash", "arguments": a}}]}}]}));
        chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": b}}]}}]}));
    }
    chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}));
    chunks.push(json!({"choices": [], "usage": usage}));
    let mut frames: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    frames.push("data: [DONE]\n\n".to_owned());
    let body = futures::stream::iter(frames).map(move |frame| {
        let _keep = &guard;
        Ok::<_, std::convert::Infallible>(frame)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_an_openai_endpoint() {
        let llm = ScriptedLlm::start();
        llm.push([Reply::bash("ls -la"), Reply::text("final")]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let http = reqwest::Client::new();
            let url = format!("{}/chat/completions", llm.base_url);
            let reply: Value = http
                .post(&url)
                .json(&json!({"model": "m", "messages": []}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "bash");
            let streamed = http
                .post(&url)
                .json(&json!({"model": "m", "messages": [], "stream": true, "response_format": {"type": "json_schema"}}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(streamed.contains("action") && streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
        });
        assert_eq!(llm.count(), 2);
        assert_eq!(llm.requests().len(), 2);
    }
}
