//! `GET /dispatches/{id}/stream`: one dispatch as Server-Sent Events — `delta`,
//! `message`, `tool_call`, `tool_result`, `error`, and `done`, which ends the stream. A
//! client that connects late gets everything from the start; a dispatch finished long
//! ago (or before a restart) answers with its `done` alone.

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
    let Some(dispatch_stream) = kernel.dispatcher.stream(&dispatch_id) else {
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
