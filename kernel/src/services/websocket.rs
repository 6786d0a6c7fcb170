//! `GET /services`: services the kernel did not spawn (another host, a container)
//! connect here over WebSocket and speak the same protocol, one JSON-RPC message per
//! text frame. The bearer token decides who they are: a service token from
//! `token.issue` (its skill and owner), or the admin token (a system-owned service of
//! the skill named in `hello`).

use std::sync::Arc;

use aos_sdk::protocol::ErrorCode;
use aos_sdk::protocol::service::MAX_FRAME_BYTES;
use aos_sdk::rpc::{FrameSink, FrameStream, TransportError};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{SinkExt, StreamExt};

use super::supervisor;
use crate::api::{authenticate, error_response};
use crate::auth::{Owner, Scope};
use crate::kernel::Kernel;
use crate::syscall::SyscallError;

/// The upgrade handler.
pub async fn upgrade(
    State(kernel): State<Arc<Kernel>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let caller = match authenticate(&kernel, &headers).await {
        Ok(caller) => caller,
        Err(error) => return error_response("", error),
    };
    let (skill, owner) = match &caller.scope {
        Scope::Service { skill, owner } => (Some(skill.clone()), owner.clone()),
        Scope::Admin => (None, Owner::System),
        _ => {
            return error_response(
                "",
                SyscallError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "`/services` needs a service token (`token.issue` with scope kind `service`) or the admin token; {} is neither",
                        caller.identity()
                    ),
                ),
            );
        }
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| serve(kernel, socket, skill, owner))
}

fn transport(socket: WebSocket) -> (FrameStream, FrameSink) {
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|item| async move {
        match item {
            Ok(Message::Text(text)) => Some(Ok(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => Some(Err(TransportError::Binary)),
            Ok(Message::Close(_)) => None,
            Ok(_) => None,
            Err(e) => Some(Err(TransportError::Io(e.to_string()))),
        }
    });
    let sink = sink
        .sink_map_err(|e| TransportError::Io(e.to_string()))
        .with(|text: String| async move { Ok::<_, TransportError>(Message::Text(text.into())) });
    (Box::pin(stream), Box::pin(sink))
}

async fn serve(kernel: Arc<Kernel>, socket: WebSocket, skill: Option<String>, owner: Owner) {
    let (stream, sink) = transport(socket);
    supervisor::serve_external(kernel, stream, sink, skill, owner).await;
}
