//! The HTTP API: `POST /aoscp` (every syscall), `GET /aoscp` (the operation list),
//! `GET /events` (runtime events as SSE), `GET /services` (the service protocol over
//! WebSocket) and `GET /health`.
//!
//! Request bodies are read through a hard size limit: a declared `Content-Length`
//! over it is refused before a byte is read, and a chunked body is cut off as soon as
//! it passes it, so a hostile client cannot make the kernel buffer more than the limit.

mod dispatch;
mod events;

use std::sync::Arc;

use aos_sdk::protocol::{Envelope, ErrorBody, ErrorCode, Health};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::kernel::Kernel;
use crate::syscall::SyscallError;

/// The API's routes.
pub fn router(kernel: Arc<Kernel>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/aoscp", post(aoscp).get(list_ops))
        .route("/events", get(events::stream))
        .route("/services", get(crate::services::websocket::upgrade))
        .route("/dispatches/{id}/stream", get(dispatch::stream))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(kernel)
}

/// A JSON response with the envelope's HTTP status.
pub(crate) fn envelope_response(envelope: &Envelope) -> Response {
    let status = envelope
        .error
        .as_ref()
        .map(|e| {
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        })
        .unwrap_or(StatusCode::OK);
    json_response(status, envelope)
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub(crate) fn error_response(op: &str, error: SyscallError) -> Response {
    envelope_response(&Envelope::<Value>::failure(op, error.into_body()))
}

/// Resolves the request's bearer token.
pub(crate) async fn authenticate(
    kernel: &Kernel,
    headers: &HeaderMap,
) -> Result<Caller, SyscallError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    kernel.auth.authenticate(&*kernel.store, bearer).await
}

async fn health(State(kernel): State<Arc<Kernel>>) -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: kernel.started.elapsed().as_secs(),
            node_id: kernel.node_id.clone(),
        },
    )
}

async fn list_ops(State(kernel): State<Arc<Kernel>>, headers: HeaderMap) -> Response {
    if let Err(error) = authenticate(&kernel, &headers).await {
        return error_response("", error);
    }
    let mut ops = kernel.registry.describe();
    ops.extend(kernel.services.ops.describe());
    json_response(StatusCode::OK, &ops)
}

async fn aoscp(State(kernel): State<Arc<Kernel>>, request: Request) -> Response {
    let caller = match authenticate(&kernel, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return error_response("", error),
    };
    let body = match read_body(request, kernel.config.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return error_response("", error),
    };
    let mut params: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return error_response(
                "",
                SyscallError::new(
                    ErrorCode::InvalidParams,
                    "the request body must be a JSON object: {\"op\": \"<name>\", ...params}",
                ),
            );
        }
        Err(error) => {
            return error_response(
                "",
                SyscallError::new(
                    ErrorCode::InvalidParams,
                    format!("the request body is not valid JSON: {error}"),
                ),
            );
        }
    };
    let op = match params.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return error_response(
                "",
                SyscallError::invalid("op", "must be a string naming the operation"),
            );
        }
        None => {
            return error_response(
                "",
                SyscallError::new(
                    ErrorCode::InvalidParams,
                    "the request body needs an `op` field naming the operation (`aos syscalls` lists them)",
                ),
            );
        }
    };
    let envelope = kernel.call(caller, &op, Value::Object(params)).await;
    envelope_response(&envelope)
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, SyscallError> {
    let too_large = |size: Option<u64>| {
        let got = size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
        SyscallError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body{got} exceeds the limit of {limit} bytes; store large data with `content.put` in smaller pieces"
            ),
        )
        .with_details(serde_json::json!({"limitBytes": limit}))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|size| size > limit as u64) {
        return Err(too_large(declared));
    }
    let body: Body = request.into_body();
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(None))
        }
        Err(error) => Err(SyscallError::new(
            ErrorCode::InvalidParams,
            format!("the request body could not be read: {error}"),
        )),
    }
}

async fn unknown_route(request: Request) -> Response {
    let message = format!(
        "no route {} {}; the API is POST /aoscp, GET /aoscp, GET /events, GET /dispatches/{{id}}/stream, GET /services (WebSocket) and GET /health",
        request.method(),
        request.uri().path()
    );
    envelope_response(&Envelope::<Value>::failure(
        "",
        ErrorBody::new(ErrorCode::NotFound, message),
    ))
}

async fn wrong_method(request: Request) -> Response {
    let message = format!(
        "{} is not allowed on {}; use POST /aoscp for syscalls",
        request.method(),
        request.uri().path()
    );
    let mut response = envelope_response(&Envelope::<Value>::failure(
        "",
        ErrorBody::new(ErrorCode::InvalidParams, message),
    ));
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
