//! `GET /dispatches/{id}/stream`: one dispatch as Server-Sent Events — `delta`,
//! `message`, `tool_call`, `tool_result`, `error`, and `done`, which ends the stream. A
//! client that connects late gets everything from the start; a dispatch finished long
//! ago (or before a restart) answers with its `done` alone.
//!
//! With several nodes on one database, a dispatch's stream lives on the node that runs
//! it: another node proxies the request there (with the caller's own token), and for a
//! dispatch still waiting in the database for a node, waits until one takes it.

use std::convert::Infallible;
use std::sync::Arc;

use aos_sdk::protocol::{StreamDone, StreamEvent, Timestamp};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;

use super::{authenticate, error_response};
use crate::kernel::Kernel;
use crate::syscall::SyscallError;

fn sse(event: &StreamEvent) -> SseEvent {
    SseEvent::default()
        .event(event.name())
        .data(event.data().to_string())
}

pub(super) async fn stream(
    State(kernel): State<Arc<Kernel>>,
    Path(dispatch_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match authenticate(&kernel, &headers).await {
        Ok(caller) => caller,
        Err(error) => return error_response("", error),
    };
    let record = match kernel.store.get_dispatch(&dispatch_id).await {
        Ok(Some(record)) => record,
        Ok(None) => return error_response("", SyscallError::not_found("dispatch", &dispatch_id)),
        Err(error) => return error_response("", error.into()),
    };
    if !caller.can_read_agent(&record.agent_id) {
        return error_response(
            "",
            caller.deny(format_args!("watch dispatch {dispatch_id}")),
        );
    }
    let keep_alive = KeepAlive::new()
        .interval(kernel.config.limits.keepalive)
        .text("keepalive");
    let mut record = record;
    let mut local = kernel.dispatcher.stream(&dispatch_id);
    if local.is_none() && kernel.cluster.is_some() {
        match elsewhere(&kernel, record.clone()).await {
            Elsewhere::Local(stream) => local = Some(stream),
            Elsewhere::Remote(url) => return proxy(&kernel, &url, &dispatch_id, &headers).await,
            Elsewhere::Ended(ended) => record = *ended,
        }
    }
    let Some(dispatch_stream) = local else {
        let done = StreamEvent::Done(StreamDone {
            dispatch_id: record.dispatch_id.clone(),
            status: record.status,
            usage: record.usage,
            turns: record.turns,
            final_message_seq: record.final_message_seq,
            answer: None,
            error: record.error.clone(),
            ended_at: record.ended_at.unwrap_or_else(Timestamp::now),
        });
        let once = stream::iter([Ok::<_, Infallible>(sse(&done))]);
        return Sse::new(once).keep_alive(keep_alive).into_response();
    };
    let events = stream::unfold(dispatch_stream.reader(), |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<_, Infallible>(sse(&event)), reader))
    });
    Sse::new(events).keep_alive(keep_alive).into_response()
}

/// Where the stream of a dispatch this node does not hold is.
enum Elsewhere {
    Local(Arc<crate::react::DispatchStream>),
    /// The base URL of the node running it.
    Remote(String),
    /// Nowhere live: answer from the record.
    Ended(Box<aos_sdk::protocol::Dispatch>),
}

/// How long a stream request waits for a queued dispatch to be taken by a node.
const WAIT_FOR_NODE: std::time::Duration = std::time::Duration::from_secs(600);

async fn elsewhere(kernel: &Arc<Kernel>, mut record: aos_sdk::protocol::Dispatch) -> Elsewhere {
    let Some(cluster) = kernel.cluster.as_ref() else {
        return Elsewhere::Ended(Box::new(record));
    };
    let waited = std::time::Instant::now();
    loop {
        if let Some(stream) = kernel.dispatcher.stream(&record.dispatch_id) {
            return Elsewhere::Local(stream);
        }
        if record.status.is_terminal() {
            return Elsewhere::Ended(Box::new(record));
        }
        match record.node.as_deref() {
            Some(node) if node != kernel.node_id => {
                return match cluster.node(node, kernel.config.lease_ttl).await {
                    Ok(Some(info)) if info.alive => Elsewhere::Remote(info.url),
                    _ => Elsewhere::Ended(Box::new(record)),
                };
            }
            Some(_) => return Elsewhere::Ended(Box::new(record)),
            None if waited.elapsed() > WAIT_FOR_NODE => return Elsewhere::Ended(Box::new(record)),
            None => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        record = match kernel.store.get_dispatch(&record.dispatch_id).await {
            Ok(Some(newer)) => newer,
            _ => return Elsewhere::Ended(Box::new(record)),
        };
    }
}

/// Relays the stream from the node that runs the dispatch, byte for byte.
async fn proxy(kernel: &Kernel, base: &str, dispatch_id: &str, headers: &HeaderMap) -> Response {
    let url = format!(
        "{}/dispatches/{dispatch_id}/stream",
        base.trim_end_matches('/')
    );
    let mut request = kernel.dispatcher.http.get(&url);
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    match request.send().await {
        Ok(upstream) => {
            let status = upstream.status().as_u16();
            let content_type = upstream
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/event-stream")
                .to_owned();
            Response::builder()
                .status(status)
                .header(axum::http::header::CONTENT_TYPE, content_type)
                .header(axum::http::header::CACHE_CONTROL, "no-cache")
                .body(axum::body::Body::from_stream(upstream.bytes_stream()))
                .unwrap_or_else(|_| axum::http::StatusCode::BAD_GATEWAY.into_response())
        }
        Err(error) => error_response(
            "",
            SyscallError::new(
                aos_sdk::protocol::ErrorCode::Unavailable,
                format!(
                    "the node running dispatch `{dispatch_id}` ({base}) does not answer: {error}"
                ),
            ),
        ),
    }
}
