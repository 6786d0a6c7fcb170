//! `GET /events`: runtime events as Server-Sent Events.
//!
//! Query: `agentId`, `sessionId`, `names` (comma-separated names or `prefix.*`).
//! Header `Last-Event-ID` (or query `lastEventId`) resumes after that event from the
//! kernel's ring buffer; if the ring no longer holds everything missed, an
//! `events.lagged` notice comes first. Scoped tokens see only their own agent's or
//! session's events. Keepalive comments are sent while idle.

use std::convert::Infallible;
use std::sync::Arc;

use aos_sdk::protocol::ErrorCode;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::{authenticate, error_response};
use crate::events::{EventFilter, Published};
use crate::kernel::Kernel;
use crate::syscall::SyscallError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EventsQuery {
    agent_id: Option<String>,
    session_id: Option<String>,
    names: Option<String>,
    last_event_id: Option<String>,
}

fn sse(published: &Published) -> SseEvent {
    SseEvent::default()
        .id(published.id.to_string())
        .event(published.name.clone())
        .data(published.json.clone())
}

/// A notice without an `id:` line, so it does not move the client's resume point.
fn notice(name: &str, payload: serde_json::Value) -> SseEvent {
    let event = json!({"id": 0, "name": name, "ts": aos_sdk::protocol::Timestamp::now(), "payload": payload});
    SseEvent::default().event(name).data(event.to_string())
}

pub(super) async fn stream(
    State(kernel): State<Arc<Kernel>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = match authenticate(&kernel, &headers).await {
        Ok(caller) => caller,
        Err(error) => return error_response("", error),
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return error_response(
                "",
                SyscallError::new(
                    ErrorCode::InvalidParams,
                    format!(
                        "bad /events query ({rejection}); accepted: agentId, sessionId, names, lastEventId"
                    ),
                ),
            );
        }
    };
    let mut filter = EventFilter {
        agent_id: query.agent_id,
        session_id: query.session_id,
        names: query
            .names
            .as_deref()
            .map(|n| {
                n.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    if filter.names.len() > 32
        || filter.names.iter().any(|p| {
            p.len() > 200
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-*:".contains(&b))
        })
    {
        return error_response(
            "",
            SyscallError::invalid(
                "names",
                "must be up to 32 comma-separated event names or `prefix.*` patterns",
            ),
        );
    }
    // Confine scoped callers to what they may see.
    if let Some(own) = caller.confined_session() {
        if filter.session_id.as_deref().is_some_and(|s| s != own) {
            return error_response("", caller.deny("watch another session's events"));
        }
        filter.session_id = Some(own.to_owned());
    } else if let Some(own) = caller.confined_agent() {
        if filter.agent_id.as_deref().is_some_and(|a| a != own) {
            return error_response("", caller.deny("watch another agent's events"));
        }
        filter.agent_id = Some(own.to_owned());
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id);
    let after = match resume.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => {
                return error_response(
                    "",
                    SyscallError::invalid(
                        "Last-Event-ID",
                        format!("`{text}` is not an event id (a number)"),
                    ),
                );
            }
        },
    };
    let subscription = kernel.events.subscribe(after);
    let gap = subscription.gap.map(|gap| {
        Ok::<_, Infallible>(notice(
            "events.lagged",
            json!({"requestedAfter": gap.requested_after, "oldestAvailable": gap.oldest_available}),
        ))
    });
    let replay_filter = filter.clone();
    let replay: Vec<Result<SseEvent, Infallible>> = subscription
        .replay
        .iter()
        .filter(|e| replay_filter.matches(e))
        .map(|e| Ok(sse(e)))
        .collect();
    // Live events until the kernel stops. Pending events win over the stop signal, so
    // `aos.stopping` (published just before it) still reaches every client.
    let shutdown = kernel.shutdown.clone();
    let live = stream::unfold(
        (subscription.live, filter, shutdown, false),
        |(mut rx, filter, shutdown, stopping)| async move {
            loop {
                let received = if stopping {
                    match rx.try_recv() {
                        Ok(event) => Ok(event),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(Some(n)),
                        Err(_) => return None,
                    }
                } else {
                    tokio::select! {
                        biased;
                        item = rx.recv() => match item {
                            Ok(event) => Ok(event),
                            Err(broadcast::error::RecvError::Lagged(n)) => Err(Some(n)),
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        () = shutdown.cancelled() => Err(None),
                    }
                };
                let item = match received {
                    Ok(event) if filter.matches(&event) => sse(&event),
                    Ok(_) => continue,
                    Err(Some(missed)) => notice(
                        "events.lagged",
                        json!({"missed": missed, "hint": "reconnect with Last-Event-ID to replay from the ring"}),
                    ),
                    Err(None) => return Some((None, (rx, filter, shutdown, true))),
                };
                return Some((Some(Ok::<_, Infallible>(item)), (rx, filter, shutdown, stopping)));
            }
        },
    )
    .filter_map(|item| async move { item });
    let events = stream::iter(gap).chain(stream::iter(replay)).chain(live);
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(kernel.config.limits.keepalive)
                .text("keepalive"),
        )
        .into_response()
}
