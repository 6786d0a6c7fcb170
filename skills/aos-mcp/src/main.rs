//! `aos-mcp`: MCP servers as drivers, a system service.
//!
//! Every server in `config.json` — a command spoken to over stdio, or a streamable HTTP
//! URL — gets a supervisor task: connect (the MCP client of the `rmcp` crate, which
//! probes the stateless 2026-07-28 era with `server/discover` and falls back to the
//! legacy `initialize` handshake), list the tools, serve calls, and when the connection
//! ends (the process exited, the HTTP server stopped answering) reconnect with
//! exponential backoff and jitter. Agents reach the tools through the operations
//! `aos-mcp.list`, `.describe` and `.call` — the `mcp` command in `scripts/` — so an MCP
//! tool is one bash command away and passes `tool.before` like any other command.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aos_sdk::protocol::ErrorCode;
use aos_sdk::protocol::service::{CallerInfo, OpKindWire};
use aos_sdk::service::{OpError, Service};
use rmcp::model::{CallToolRequestParams, ProtocolVersion, Tool};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, Peer, RoleClient, ServiceError};
use rmcp::transport::{
    ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess,
    streamable_http_client::StreamableHttpClientTransportConfig,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// First reconnection delay; doubled per failure up to `backoffMaxMs`.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Characters of a server's stderr or error kept for `list`.
const ERROR_CHARS: usize = 2000;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServerConfig {
    /// A program (looked up on `PATH`) to talk to over stdio…
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Working directory of the command (relative to the skill directory).
    cwd: Option<String>,
    /// …or a streamable HTTP endpoint.
    url: Option<String>,
    /// Extra HTTP headers (e.g. `Authorization`).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Deadline of one call to this server (default `callTimeoutMs`).
    call_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    servers: BTreeMap<String, ServerConfig>,
    call_timeout_ms: u64,
    connect_timeout_ms: u64,
    max_result_chars: usize,
    backoff_max_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Ready,
    Down,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Ready => "ready",
            Phase::Down => "down",
        }
    }
}

struct Link {
    phase: Phase,
    peer: Option<Peer<RoleClient>>,
    /// Ends the current connection (a call found its transport broken).
    cancel: Option<CancellationToken>,
    tools: Vec<Tool>,
    protocol: Option<String>,
    server_info: Option<Value>,
    last_error: Option<String>,
    /// Successful connections so far; more than one means it was reconnected.
    connects: u32,
    failures_in_row: u32,
    next_attempt: Option<Instant>,
}

struct Server {
    name: String,
    config: ServerConfig,
    link: Mutex<Link>,
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transport_name(&self) -> &'static str {
        if self.config.url.is_some() {
            "streamable-http"
        } else {
            "stdio"
        }
    }
}

struct Mcp {
    config: Config,
    skill_dir: PathBuf,
    servers: BTreeMap<String, Arc<Server>>,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-mcp", 2, serve)
}

fn load(skill_dir: &std::path::Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(skill_dir.join("config.json"))
        .map_err(|e| format!("config.json: {e}"))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| format!("config.json: {e}"))?;
    for (name, server) in &config.servers {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "config.json: server name `{name}` must be letters, digits, `-`, `_` or `.`"
            ));
        }
        match (&server.command, &server.url) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(format!(
                    "config.json: server `{name}` needs exactly one of `command` (stdio) or `url` (streamable HTTP)"
                ));
            }
        }
    }
    Ok(config)
}

async fn serve() -> Result<(), String> {
    let skill_dir =
        std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config = load(&skill_dir)?;
    let servers = config
        .servers
        .iter()
        .map(|(name, server)| {
            (
                name.clone(),
                Arc::new(Server {
                    name: name.clone(),
                    config: server.clone(),
                    link: Mutex::new(Link {
                        phase: Phase::Connecting,
                        peer: None,
                        cancel: None,
                        tools: Vec::new(),
                        protocol: None,
                        server_info: None,
                        last_error: None,
                        connects: 0,
                        failures_in_row: 0,
                        next_attempt: None,
                    }),
                }),
            )
        })
        .collect();
    let mcp = Arc::new(Mcp {
        config,
        skill_dir,
        servers,
    });
    for server in mcp.servers.values() {
        tokio::spawn(supervise(mcp.clone(), server.clone()));
    }
    tracing::info!(servers = mcp.servers.len(), "aos-mcp ready");
    macro_rules! op {
        ($service:expr, $name:literal, $kind:expr, $doc:literal, $method:ident) => {{
            let m = mcp.clone();
            $service.on_op($name, $kind, $doc, move |params, caller| {
                let m = m.clone();
                async move { m.$method(&params, &caller).await }
            })
        }};
    }
    let service = Service::from_env("aos-mcp");
    let service = op!(
        service,
        "list",
        OpKindWire::Query,
        "Configured MCP servers and their tools: params {server?}; returns {servers: [{name, transport, state (connecting|ready|down), lastError, connects, protocolVersion, serverInfo, tools: [{name, description}]}]}.",
        list
    );
    let service = op!(
        service,
        "describe",
        OpKindWire::Query,
        "One tool of a server, with its input schema: params {server, tool}.",
        describe
    );
    let service = op!(
        service,
        "call",
        OpKindWire::Command,
        "Call a tool: params {server, tool, arguments? (an object, default {})}; returns {server, tool, isError, text, content, structuredContent?, serverMs}.",
        call
    );
    service.run().await.map_err(|e| e.to_string())
}

fn clip(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!(
            "{}… ({} characters cut)",
            &text[..cut],
            text.chars().count() - limit
        ),
        None => text.to_owned(),
    }
}

/// Connects once: spawns or reaches the server, handshakes, lists its tools.
async fn connect(
    mcp: &Mcp,
    server: &Server,
) -> Result<(rmcp::service::RunningService<RoleClient, ()>, Vec<Tool>), String> {
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    let limit = Duration::from_millis(mcp.config.connect_timeout_ms.max(1));
    let running = if let Some(url) = &server.config.url {
        let mut headers = HashMap::new();
        for (name, value) in &server.config.headers {
            let name = header_name(name)?;
            let value = value
                .parse()
                .map_err(|_| format!("header `{name}` has a value that is not valid in HTTP"))?;
            headers.insert(name, value);
        }
        let config =
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(headers);
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(limit, ().serve_with_lifecycle(transport, lifecycle)).await
    } else {
        let program = server.config.command.clone().unwrap_or_default();
        let cwd = server
            .config
            .cwd
            .as_ref()
            .map_or_else(|| mcp.skill_dir.clone(), |c| mcp.skill_dir.join(c));
        let config = server.config.clone();
        // The server stays in this service's process group, so the supervisor's group
        // kill ends it with the service; dropping the transport kills it too.
        #[allow(clippy::disallowed_methods)]
        let command = tokio::process::Command::new(&program).configure(move |cmd| {
            cmd.args(&config.args).envs(&config.env).current_dir(&cwd);
        });
        let (transport, stderr) = TokioChildProcess::builder(command)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{program}`: {e}"))?;
        if let Some(stderr) = stderr {
            tokio::spawn(log_stderr(server.name.clone(), stderr));
        }
        tokio::time::timeout(limit, ().serve_with_lifecycle(transport, lifecycle)).await
    };
    let running = running
        .map_err(|_| format!("the handshake took longer than {} ms", limit.as_millis()))?
        .map_err(|e| format!("the handshake failed: {e}"))?;
    let tools = tokio::time::timeout(limit, running.list_all_tools())
        .await
        .map_err(|_| format!("tools/list took longer than {} ms", limit.as_millis()))?
        .map_err(|e| format!("tools/list failed: {e}"))?;
    Ok((running, tools))
}

fn header_name(name: &str) -> Result<http::HeaderName, String> {
    name.parse()
        .map_err(|_| format!("`{name}` is not a valid HTTP header name"))
}

/// The server's stderr into the service log (which the kernel keeps).
async fn log_stderr(server: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(server, "stderr: {}", clip(&line, ERROR_CHARS));
    }
}

/// Keeps one server connected for as long as the service runs.
async fn supervise(mcp: Arc<Mcp>, server: Arc<Server>) {
    loop {
        server.lock().phase = Phase::Connecting;
        match connect(&mcp, &server).await {
            Ok((running, tools)) => {
                let peer = running.peer().clone();
                let info = peer.peer_info();
                let cancel = CancellationToken::new();
                {
                    let mut link = server.lock();
                    link.phase = Phase::Ready;
                    link.protocol = info.as_ref().map(|i| i.protocol_version.to_string());
                    link.server_info = info
                        .as_ref()
                        .and_then(|i| serde_json::to_value(&i.server_info).ok());
                    tracing::info!(
                        server = server.name,
                        tools = tools.len(),
                        protocol = link.protocol.as_deref().unwrap_or("?"),
                        "connected"
                    );
                    link.tools = tools;
                    link.peer = Some(peer);
                    link.cancel = Some(cancel.clone());
                    link.connects += 1;
                    link.failures_in_row = 0;
                    link.last_error = None;
                    link.next_attempt = None;
                }
                let ended = tokio::select! {
                    reason = running.waiting() => format!("the connection ended ({reason:?})"),
                    () = cancel.cancelled() => "a call found the connection broken".to_owned(),
                };
                tracing::warn!(server = server.name, reason = ended, "disconnected");
                let mut link = server.lock();
                link.peer = None;
                link.cancel = None;
                link.last_error = Some(ended);
            }
            Err(error) => {
                tracing::warn!(server = server.name, %error, "cannot connect");
                server.lock().last_error = Some(clip(&error, ERROR_CHARS));
            }
        }
        let delay = {
            let mut link = server.lock();
            link.phase = Phase::Down;
            link.failures_in_row += 1;
            let doubled = BACKOFF_START
                .saturating_mul(1 << link.failures_in_row.saturating_sub(1).min(16))
                .min(Duration::from_millis(mcp.config.backoff_max_ms.max(1)));
            // Up to a quarter more, so servers restarting together do not retry together.
            let jitter = doubled.mul_f64(rand::random::<f64>() * 0.25);
            link.next_attempt = Some(Instant::now() + doubled + jitter);
            doubled + jitter
        };
        tokio::time::sleep(delay).await;
    }
}

fn field<'a>(params: &'a Value, name: &str) -> Result<&'a str, OpError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OpError::invalid(format!("`{name}` (a non-empty string) is required")))
}

impl Mcp {
    fn server(&self, name: &str) -> Result<&Arc<Server>, OpError> {
        self.servers.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.servers.keys().map(String::as_str).collect();
            OpError::new(
                ErrorCode::NotFound,
                if known.is_empty() {
                    format!(
                        "no MCP server `{name}`: none is configured (add one to skills/aos-mcp/config.json `servers`)"
                    )
                } else {
                    format!("no MCP server `{name}`; configured: {}", known.join(", "))
                },
            )
        })
    }

    fn down(server: &Server, link: &Link) -> OpError {
        let retry = link.next_attempt.map_or_else(
            || "connecting now".to_owned(),
            |at| {
                format!(
                    "next attempt in {} ms",
                    at.saturating_duration_since(Instant::now()).as_millis()
                )
            },
        );
        OpError::new(
            ErrorCode::Unavailable,
            format!(
                "MCP server `{}` is {}: {}; reconnecting ({retry}, {} failed attempts in a row)",
                server.name,
                link.phase.as_str(),
                link.last_error.as_deref().unwrap_or("not connected yet"),
                link.failures_in_row
            ),
        )
    }

    async fn list(&self, params: &Value, _caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["server"])?;
        let only = params.get("server").and_then(Value::as_str);
        if let Some(name) = only {
            self.server(name)?;
        }
        let servers: Vec<Value> = self
            .servers
            .values()
            .filter(|s| only.is_none_or(|o| o == s.name))
            .map(|server| {
                let link = server.lock();
                json!({
                    "name": server.name,
                    "transport": server.transport_name(),
                    "state": link.phase.as_str(),
                    "lastError": link.last_error,
                    "connects": link.connects,
                    "protocolVersion": link.protocol,
                    "serverInfo": link.server_info,
                    "tools": link.tools.iter().map(|t| json!({"name": t.name, "description": t.description})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"servers": servers}))
    }

    fn tool(&self, server: &Server, link: &Link, name: &str) -> Result<Tool, OpError> {
        if link.phase != Phase::Ready {
            return Err(Self::down(server, link));
        }
        link.tools
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!(
                        "MCP server `{}` has no tool `{name}`; its tools: {}",
                        server.name,
                        link.tools
                            .iter()
                            .map(|t| t.name.as_ref())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    async fn describe(&self, params: &Value, _caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["server", "tool"])?;
        let server = self.server(field(params, "server")?)?;
        let link = server.lock();
        let tool = self.tool(server, &link, field(params, "tool")?)?;
        Ok(json!({"server": server.name, "tool": tool}))
    }

    async fn call(&self, params: &Value, caller: &CallerInfo) -> Result<Value, OpError> {
        OpError::check_fields(params, &["server", "tool", "arguments"])?;
        let server = self.server(field(params, "server")?)?;
        let name = field(params, "tool")?;
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(object)) => object.clone(),
            Some(other) => {
                return Err(OpError::invalid(format!(
                    "`arguments` must be a JSON object (the tool's input), not {other}"
                )));
            }
        };
        let (peer, cancel) = {
            let link = server.lock();
            self.tool(server, &link, name)?;
            (link.peer.clone(), link.cancel.clone())
        };
        let Some(peer) = peer else {
            return Err(Self::down(server, &server.lock()));
        };
        let limit = Duration::from_millis(
            server
                .config
                .call_timeout_ms
                .unwrap_or(self.config.call_timeout_ms)
                .max(1),
        );
        let started = Instant::now();
        let request = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        let result = tokio::time::timeout(limit, peer.call_tool(request)).await;
        let server_ms = started.elapsed().as_secs_f64() * 1000.0;
        let result = match result {
            Err(_) => {
                return Err(OpError::new(
                    ErrorCode::Timeout,
                    format!(
                        "MCP server `{}` did not answer `{name}` within {} ms",
                        server.name,
                        limit.as_millis()
                    ),
                ));
            }
            Ok(Err(error)) => {
                let broken = matches!(
                    error,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                );
                if broken && let Some(cancel) = cancel {
                    cancel.cancel();
                }
                let code = if broken {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                };
                return Err(OpError::new(
                    code,
                    format!(
                        "calling `{name}` on MCP server `{}` failed: {error}{}",
                        server.name,
                        if broken { " (reconnecting)" } else { "" }
                    ),
                ));
            }
            Ok(Ok(result)) => result,
        };
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.clone()))
            .collect();
        let is_error = result.is_error.unwrap_or(false);
        tracing::info!(
            server = server.name,
            tool = name,
            by = caller.identity,
            is_error,
            server_ms,
            "called"
        );
        Ok(json!({
            "server": server.name,
            "tool": name,
            "isError": is_error,
            "text": clip(&text.join("\n"), self.config.max_result_chars),
            "content": result.content,
            "structuredContent": result.structured_content,
            "serverMs": (server_ms * 1000.0).round() / 1000.0,
        }))
    }
}
