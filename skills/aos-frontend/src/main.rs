//! `aos-frontend`: the web UI. Serves the single-page console from `ui/` and proxies
//! its requests to the kernel's public HTTP API — `POST /api/call` to `/aoscp`, the
//! event stream and dispatch streams as Server-Sent Events — with the service's own
//! token, which never reaches the browser. It runs as a system service, so it stops
//! with the kernel and comes back with it; the page reconnects on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aos_sdk::protocol::service::OpKindWire;
use aos_sdk::service::Service;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// Requests from the page must carry this header: a cross-site form or fetch cannot
/// set it without a CORS preflight, which this server never grants.
const UI_HEADER: &str = "x-aos-ui";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `host:port` to listen on; port 0 picks a free one (`aos-frontend.info` tells).
    bind: String,
}

struct App {
    http: reqwest::Client,
    api: String,
    token: String,
    ui: PathBuf,
}

fn main() -> std::process::ExitCode {
    aos_sdk::service::run_main("aos-frontend", 2, serve)
}

async fn serve() -> Result<(), String> {
    let dir = std::env::var_os("AOS_SKILL_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let config: Config = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?,
    )
    .map_err(|e| format!("config.json: {e} (expected {{\"bind\": \"127.0.0.1:3000\"}})"))?;
    let bind: SocketAddr = config.bind.parse().map_err(|e| {
        format!(
            "config.json: `bind` {:?} is not host:port: {e}",
            config.bind
        )
    })?;
    let api = std::env::var("AOS_API_URL")
        .map_err(|_| "AOS_API_URL is not set (the kernel sets it for services)")?;
    let token = std::env::var("AOS_SERVICE_TOKEN").map_err(|_| "AOS_SERVICE_TOKEN is not set")?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("http://{addr}");
    let app = Arc::new(App {
        http: reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?,
        api: api.trim_end_matches('/').to_owned(),
        token,
        ui: dir.join("ui"),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
        .route("/api/call", post(call))
        .route("/api/health", get(health))
        .route("/api/events", get(events))
        .route("/api/dispatches/{id}/stream", get(dispatch_stream))
        .with_state(app);
    tracing::info!(%url, "web UI listening");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the web server stopped");
        }
    });
    let shown = url.clone();
    Service::from_env("aos-frontend")
        .on_op(
            "info",
            OpKindWire::Query,
            "Where the web UI listens: {url}.",
            move |params: Value, _caller| {
                let url = shown.clone();
                async move {
                    match params.as_object().and_then(|o| o.keys().next()) {
                        Some(unknown) => Err(aos_sdk::service::OpError::invalid(format!(
                            "unknown field `{unknown}`; `aos-frontend.info` takes no params"
                        ))),
                        None => Ok(json!({"url": url})),
                    }
                }
            },
        )
        .run()
        .await
        .map_err(|e| e.to_string())
}

async fn index(State(app): State<Arc<App>>) -> Response {
    file(&app, "index.html").await
}

async fn asset(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    file(&app, &name).await
}

/// A file of `ui/`, read on each request (edits show on reload). Names are plain file
/// names: no paths, nothing hidden.
async fn file(app: &App, name: &str) -> Response {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let kind = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    if !plain {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    match tokio::fs::read(app.ui.join(name)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

fn unreachable(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        axum::Json(json!({"ok": false, "error": {"code": "unavailable", "message": format!("the kernel is unreachable: {error}")}})),
    )
        .into_response()
}

/// `{op, params}` → `POST /aoscp` with the service's token; the kernel's envelope and
/// status come back as they are.
async fn call(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !headers.contains_key(UI_HEADER) {
        return (
            StatusCode::FORBIDDEN,
            "requests must come from the AOS web UI",
        )
            .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"ok": false, "error": {"code": "invalid.params", "message": format!("the body must be {{op, params}}: {e}")}})),
            )
                .into_response();
        }
    };
    let Some(op) = request.get("op").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"ok": false, "error": {"code": "invalid.params", "message": "`op` (an operation name) is required"}})),
        )
            .into_response();
    };
    let mut envelope = request.get("params").cloned().unwrap_or_else(|| json!({}));
    if let Some(object) = envelope.as_object_mut() {
        object.insert("op".into(), json!(op));
    }
    match app
        .http
        .post(format!("{}/aoscp", app.api))
        .bearer_auth(&app.token)
        // A hung kernel costs the page this long at most (streams have no deadline).
        .timeout(std::time::Duration::from_secs(120))
        .json(&envelope)
        .send()
        .await
    {
        Ok(reply) => {
            let status =
                StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match reply.bytes().await {
                Ok(bytes) => {
                    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
                }
                Err(e) => unreachable(e),
            }
        }
        Err(e) => unreachable(e),
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app
        .http
        .get(format!("{}/health", app.api))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
    {
        Ok(reply) if reply.status().is_success() => match reply.bytes().await {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(e) => unreachable(e),
        },
        Ok(reply) => unreachable(format!("status {}", reply.status())),
        Err(e) => unreachable(e),
    }
}

/// How a proxied SSE stream reaches the page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Names {
    /// As the kernel sends it.
    Keep,
    /// Without `event:` lines: every event arrives as an unnamed `message`.
    Drop,
}

/// An SSE stream of the kernel's, passed through as it comes (`Last-Event-ID`, from the
/// header or a `lastEventId` query parameter, goes along for resumption).
async fn proxy_stream(
    app: &App,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
    names: Names,
) -> Response {
    let mut url = format!("{}{path}", app.api);
    let mut last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(query) = query {
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("lastEventId", v)) if !v.is_empty() => last_id = Some(v.to_owned()),
                _ => kept.push(pair),
            }
        }
        if !kept.is_empty() {
            url.push('?');
            url.push_str(&kept.join("&"));
        }
    }
    let mut request = app.http.get(url).bearer_auth(&app.token);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id);
    }
    match request.send().await {
        Ok(reply) if reply.status().is_success() => {
            let body = match names {
                Names::Keep => Body::from_stream(reply.bytes_stream()),
                Names::Drop => Body::from_stream(unnamed(reply.bytes_stream())),
            };
            let mut response = Response::new(body);
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Ok(reply) => {
            let status =
                StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, reply.bytes().await.unwrap_or_default()).into_response()
        }
        Err(e) => unreachable(e),
    }
}

/// Drops the `event:` lines of an SSE byte stream, so every event reaches the page as
/// an unnamed `message`. The event's name is in its data (`{id, name, ts, …}`), and
/// `EventSource` has no catch-all for named events while the kernel's names are open
/// (`skill.<name>.*`, new hooks): this way the page sees all of them.
fn unnamed<E>(
    stream: impl futures::Stream<Item = Result<Bytes, E>>,
) -> impl futures::Stream<Item = Result<Bytes, E>> {
    let mut pending: Vec<u8> = Vec::new();
    stream.map(move |chunk| {
        pending.extend_from_slice(&chunk?);
        Ok(Bytes::from(strip_names(&mut pending)))
    })
}

/// The complete lines of `pending` except `event:` ones; a trailing partial line stays.
fn strip_names(pending: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(pending.len());
    let mut start = 0;
    while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
        let line = &pending[start..=start + end];
        if !line.starts_with(b"event:") {
            out.extend_from_slice(line);
        }
        start += end + 1;
    }
    pending.drain(..start);
    out
}

async fn events(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    proxy_stream(&app, "/events", query, &headers, Names::Drop).await
}

async fn dispatch_stream(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return (StatusCode::BAD_REQUEST, "not a dispatch id").into_response();
    }
    proxy_stream(
        &app,
        &format!("/dispatches/{id}/stream"),
        None,
        &headers,
        Names::Keep,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::strip_names;

    #[test]
    fn event_lines_are_dropped_across_chunk_boundaries() {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for chunk in [
            &b"id: 1\nevent: skill.aos-cron.run\nda"[..],
            b"ta: {\"name\":\"skill.aos-cron.run\"}\n\nev",
            b"ent: x\n: keepalive\n\n",
        ] {
            pending.extend_from_slice(chunk);
            out.extend(strip_names(&mut pending));
        }
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "id: 1\ndata: {\"name\":\"skill.aos-cron.run\"}\n\n: keepalive\n\n"
        );
        assert!(pending.is_empty());
    }
}
