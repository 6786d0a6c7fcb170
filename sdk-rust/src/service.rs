//! A framework for skill services written in Rust.
//!
//! ```no_run
//! use aos_sdk::service::{Service, Verdict};
//!
//! # async fn demo() -> Result<(), aos_sdk::service::ServiceError> {
//! Service::new("my-guard")
//!     .on_hook("tool.before", |_input, output| async move {
//!         let command = output["args"]["command"].as_str().unwrap_or_default();
//!         if command.contains("rm -rf /") {
//!             Verdict::Reject("refusing to delete the root directory".into())
//!         } else {
//!             Verdict::Allow
//!         }
//!     })
//!     .on_event("session.*", |event| async move {
//!         eprintln!("{} {}", event.name, event.payload);
//!     })
//!     .run()
//!     .await
//! # }
//! ```
//!
//! [`Service::run`] connects the way the kernel says in the environment
//! (`AOS_SERVICE_SOCKET` for spawned services; `AOS_SERVICE_URL` + `AOS_SERVICE_TOKEN`
//! for remote ones over WebSocket), sends `hello` and `register`, then answers hooks,
//! operations and events concurrently until the kernel sends `shutdown` or the
//! connection closes — so a service never outlives its kernel. [`Service::client`]
//! hands out a [`ServiceClient`] for syscalls over the same connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub use crate::protocol::service::Verdict;
use crate::protocol::service::{
    CallParams, CallerInfo, EventParams, HelloParams, HelloResult, HookSubscription,
    KernelNotification, KernelRequest, OpDeclaration, OpKindWire, PROTOCOL_VERSION, RegisterParams,
    RegisterResult, RpcError, ServiceOwnerInfo, rpc_code,
};
use crate::protocol::{Envelope, ErrorBody, ErrorCode, name_matches};
use crate::rpc::{self, CallError, FrameSink, FrameStream, Incoming, Peer, PeerOptions};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type HookFn = Arc<dyn Fn(Value, Value) -> BoxFuture<Verdict> + Send + Sync>;
type EventFn = Arc<dyn Fn(EventParams) -> BoxFuture<()> + Send + Sync>;
type OpFn = Arc<dyn Fn(Value, CallerInfo) -> BoxFuture<Result<Value, OpError>> + Send + Sync>;

/// How long `hello` and `register` may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a service finishes the calls it is answering after `shutdown`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of a syscall made through [`ServiceClient::call`].
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The `main` of a service binary: logs to stderr without colour codes (the kernel
/// keeps and forwards a service's stderr) at the level `AOS_LOG` says (default `info`),
/// runs `serve` on a Tokio runtime with `worker_threads` workers, and exits 1 after
/// printing `<name>: <error>` when it fails.
pub fn run_main<F, E>(
    name: &str,
    worker_threads: usize,
    serve: impl FnOnce() -> F,
) -> std::process::ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start a runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "no kernel to connect to: AOS_SERVICE_SOCKET (spawned services) or AOS_SERVICE_URL with AOS_SERVICE_TOKEN (remote services) must be set"
    )]
    NoEndpoint,
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("the kernel refused `{step}`: {error}")]
    Refused { step: &'static str, error: RpcError },
    #[error("`{step}` failed: {error}")]
    Handshake {
        step: &'static str,
        error: CallError,
    },
}

/// An error an operation handler returns: a stable code and a message for the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }

    /// Checks that `params` is an object holding only `accepted` fields; the error
    /// names the first other field and lists the accepted ones.
    pub fn check_fields(params: &Value, accepted: &[&str]) -> Result<(), OpError> {
        let Some(object) = params.as_object() else {
            return Err(OpError::invalid("params must be a JSON object"));
        };
        match object.keys().find(|k| !accepted.contains(&k.as_str())) {
            Some(unknown) => Err(OpError::invalid(format!(
                "unknown field `{unknown}`; accepted: {}",
                accepted.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn into_rpc(self) -> RpcError {
        RpcError::new(rpc_code::INTERNAL_ERROR, self.message)
            .with_data(serde_json::json!({"code": self.code}))
    }
}

/// Syscalls over the service's own connection, with the service's authority. Calls
/// made before [`Service::run`] has connected wait for the connection.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    peer: watch::Receiver<Option<Peer>>,
    hello: watch::Receiver<Option<HelloResult>>,
}

impl ServiceClient {
    async fn peer(&self) -> Result<Peer, ErrorBody> {
        let mut rx = self.peer.clone();
        let peer = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| closed_error())?;
        peer.clone().ok_or_else(closed_error)
    }

    /// Calls `op` and returns the kernel's envelope, whether `ok` or not.
    pub async fn call(&self, op: &str, params: Value) -> Result<Envelope, ErrorBody> {
        let peer = self.peer().await?;
        let params = serde_json::to_value(CallParams {
            op: op.to_owned(),
            params,
        })
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidParams, e.to_string()))?;
        let reply = peer
            .request("call", &params, CALL_TIMEOUT)
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, format!("`{op}`: {e}")))?;
        serde_json::from_value(reply).map_err(|e| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("the kernel's answer to `{op}` is not an envelope: {e}"),
            )
        })
    }

    /// Calls `op` and returns its data, or its error.
    pub async fn call_ok(&self, op: &str, params: Value) -> Result<Value, ErrorBody> {
        self.call(op, params).await?.into_result()
    }

    /// The kernel's answer to `hello` (instance id, owner), once connected.
    pub async fn hello(&self) -> Option<HelloResult> {
        let mut rx = self.hello.clone();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// The owner the service runs for, once connected.
    pub async fn owner(&self) -> Option<ServiceOwnerInfo> {
        self.hello().await.map(|h| h.owner)
    }
}

fn closed_error() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Unavailable,
        "the service's connection to the kernel is closed",
    )
}

/// A service under construction; [`Service::run`] serves it.
pub struct Service {
    skill: String,
    hooks: Vec<(HookSubscription, HookFn)>,
    events: Vec<(String, EventFn)>,
    ops: Vec<(OpDeclaration, OpFn)>,
    peer_tx: watch::Sender<Option<Peer>>,
    hello_tx: watch::Sender<Option<HelloResult>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("skill", &self.skill)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service of `skill` (the skill's directory name). Spawned services should pass
    /// `AOS_SKILL_NAME`; [`Service::from_env`] does.
    pub fn new(skill: impl Into<String>) -> Self {
        let (peer_tx, _) = watch::channel(None);
        let (hello_tx, _) = watch::channel(None);
        Self {
            skill: skill.into(),
            hooks: Vec::new(),
            events: Vec::new(),
            ops: Vec::new(),
            peer_tx,
            hello_tx,
        }
    }

    /// A service named by `AOS_SKILL_NAME`, or `fallback` when it is unset.
    pub fn from_env(fallback: &str) -> Self {
        Self::new(std::env::var("AOS_SKILL_NAME").unwrap_or_else(|_| fallback.to_owned()))
    }

    /// A client for syscalls over this service's connection.
    pub fn client(&self) -> ServiceClient {
        ServiceClient {
            peer: self.peer_tx.subscribe(),
            hello: self.hello_tx.subscribe(),
        }
    }

    /// Answers an admission or transform hook: `handler(input, output)`.
    pub fn on_hook<F, Fut>(self, hook: &str, handler: F) -> Self
    where
        F: Fn(Value, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
    {
        self.on_hook_with(HookSubscription::from(hook), handler)
    }

    /// Like [`Service::on_hook`], with priority, timeout and `interactive`.
    pub fn on_hook_with<F, Fut>(mut self, subscription: HookSubscription, handler: F) -> Self
    where
        F: Fn(Value, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.hooks.push((
            subscription,
            Arc::new(move |input, output| Box::pin(handler(input, output))),
        ));
        self
    }

    /// Receives events matching `pattern` (an exact name, `prefix.*`, or `*`).
    pub fn on_event<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(EventParams) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.events.push((
            pattern.to_owned(),
            Arc::new(move |event| Box::pin(handler(event))),
        ));
        self
    }

    /// Provides the operation `<skill>.<name>`: `handler(params, caller)`.
    pub fn on_op<F, Fut>(
        mut self,
        name: &str,
        kind: OpKindWire,
        description: &str,
        handler: F,
    ) -> Self
    where
        F: Fn(Value, CallerInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, OpError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.ops.push((
            OpDeclaration {
                name: name.to_owned(),
                kind,
                description: description.to_owned(),
                params_schema: None,
                timeout_ms: None,
            },
            Arc::new(move |params, caller| Box::pin(handler(params, caller))),
        ));
        self
    }

    /// Connects as the environment says and serves until `shutdown` or disconnection.
    pub async fn run(self) -> Result<(), ServiceError> {
        let (stream, sink) = connect_from_env().await?;
        self.run_on(stream, sink).await
    }

    /// Serves over an already connected transport (tests, custom transports).
    pub async fn run_on(self, stream: FrameStream, sink: FrameSink) -> Result<(), ServiceError> {
        let (peer, mut incoming) = rpc::spawn(stream, sink, PeerOptions::default());
        let hello = HelloParams {
            protocol: PROTOCOL_VERSION,
            skill: self.skill.clone(),
            sdk: Some(format!("aos-sdk-rust/{}", env!("CARGO_PKG_VERSION"))),
            features: Vec::new(),
        };
        let hello: HelloResult = handshake(&peer, "hello", &hello).await?;
        let register = RegisterParams {
            hooks: self.hooks.iter().map(|(s, _)| s.clone()).collect(),
            events: self.events.iter().map(|(p, _)| p.clone()).collect(),
            ops: self.ops.iter().map(|(d, _)| d.clone()).collect(),
        };
        let _: RegisterResult = handshake(&peer, "register", &register).await?;
        self.hello_tx.send_replace(Some(hello));
        self.peer_tx.send_replace(Some(peer.clone()));
        let hooks: Arc<Vec<(String, HookFn)>> =
            Arc::new(self.hooks.into_iter().map(|(s, f)| (s.name, f)).collect());
        let ops: Arc<Vec<(String, OpFn)>> = Arc::new(
            self.ops
                .into_iter()
                .map(|(d, f)| (format!("{}.{}", self.skill, d.name), f))
                .collect(),
        );
        let events: Arc<Vec<(String, EventFn)>> = Arc::new(self.events);
        let in_flight = tokio_util::task::TaskTracker::new();
        while let Some(message) = incoming.recv().await {
            match message {
                Incoming::Request { id, method, params } => {
                    let request = match KernelRequest::parse(&method, params) {
                        Ok(request) => request,
                        Err(error) => {
                            peer.respond(id, Err(error)).await;
                            continue;
                        }
                    };
                    if let KernelRequest::Shutdown(_) = request {
                        // Calls already being answered finish first (the kernel has
                        // stopped sending new ones).
                        in_flight.close();
                        let _ = tokio::time::timeout(DRAIN_TIMEOUT, in_flight.wait()).await;
                        peer.respond(id, Ok(serde_json::json!({}))).await;
                        // Let the answer go out before the connection closes.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        peer.close();
                        break;
                    }
                    let (peer, hooks, ops) = (peer.clone(), hooks.clone(), ops.clone());
                    in_flight.spawn(async move {
                        let result = answer(request, &hooks, &ops).await;
                        peer.respond(id, result).await;
                    });
                }
                Incoming::Notification { method, params } => {
                    match KernelNotification::parse(&method, params) {
                        Ok(KernelNotification::Event(event)) => {
                            for (pattern, handler) in events.iter() {
                                if name_matches(pattern, &event.name) {
                                    tokio::spawn(handler(event.clone()));
                                }
                            }
                        }
                        Err(error) => tracing::debug!(%error, "ignored a notification"),
                    }
                }
            }
        }
        self.peer_tx.send_replace(None);
        Ok(())
    }
}

async fn answer(
    request: KernelRequest,
    hooks: &[(String, HookFn)],
    ops: &[(String, OpFn)],
) -> Result<Value, RpcError> {
    match request {
        KernelRequest::Hook(call) => match hooks.iter().find(|(name, _)| *name == call.name) {
            Some((_, handler)) => Ok(handler(call.input, call.output).await.to_wire()),
            None => Err(RpcError::new(
                rpc_code::METHOD_NOT_FOUND,
                format!("this service does not answer hook `{}`", call.name),
            )),
        },
        KernelRequest::Op(call) => match ops.iter().find(|(name, _)| *name == call.name) {
            Some((_, handler)) => handler(call.params, call.caller)
                .await
                .map_err(OpError::into_rpc),
            None => Err(RpcError::new(
                rpc_code::METHOD_NOT_FOUND,
                format!("this service does not provide `{}`", call.name),
            )),
        },
        KernelRequest::Shutdown(_) => Ok(serde_json::json!({})),
    }
}

async fn handshake<P, R>(peer: &Peer, step: &'static str, params: &P) -> Result<R, ServiceError>
where
    P: serde::Serialize,
    R: serde::de::DeserializeOwned,
{
    let params = serde_json::to_value(params).unwrap_or(Value::Null);
    let reply = peer
        .request(step, &params, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|error| match error {
            CallError::Remote(error) => ServiceError::Refused { step, error },
            error => ServiceError::Handshake { step, error },
        })?;
    serde_json::from_value(reply).map_err(|e| ServiceError::Refused {
        step,
        error: RpcError::new(rpc_code::INVALID_PARAMS, format!("unexpected answer: {e}")),
    })
}

/// Connects to the endpoint the environment names.
pub async fn connect_from_env() -> Result<(FrameStream, FrameSink), ServiceError> {
    if let Some(path) = std::env::var_os("AOS_SERVICE_SOCKET") {
        let endpoint = path.to_string_lossy().into_owned();
        let stream =
            tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| ServiceError::Connect {
                    endpoint,
                    message: e.to_string(),
                })?;
        let (read, write) = stream.into_split();
        return Ok(rpc::line_transport(
            read,
            write,
            crate::protocol::service::MAX_FRAME_BYTES,
        ));
    }
    let (Ok(url), Ok(token)) = (
        std::env::var("AOS_SERVICE_URL"),
        std::env::var("AOS_SERVICE_TOKEN"),
    ) else {
        return Err(ServiceError::NoEndpoint);
    };
    connect_websocket(&url, &token).await
}

/// Connects to a kernel's `/services` WebSocket endpoint with a service token.
pub async fn connect_websocket(
    url: &str,
    token: &str,
) -> Result<(FrameStream, FrameSink), ServiceError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let fail = |message: String| ServiceError::Connect {
        endpoint: url.to_owned(),
        message,
    };
    let mut request = url.into_client_request().map_err(|e| fail(e.to_string()))?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| fail("the token is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", header);
    let config = WebSocketConfig::default()
        .max_message_size(Some(crate::protocol::service::MAX_FRAME_BYTES))
        .max_frame_size(Some(crate::protocol::service::MAX_FRAME_BYTES));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(rpc::websocket_transport(socket))
}
