//! The model-answer reader of `react::llm`: the SSE stream (eventsource-stream, then
//! each chunk's JSON into text deltas, tool calls and usage), the whole-JSON answer, and
//! JSON tool mode. The stream reader itself (`read_stream`) is private and takes a
//! `reqwest::Response`, so this target drives the closest public surface, `llm::call`,
//! against a loopback HTTP server that answers with the fuzz input as the body.
//!
//! Input: byte 0 holds flags (bit 0: send `text/event-stream`, else `application/json`;
//! bit 1: JSON tool mode); byte 1 sets the size of the pieces the body is written in, so
//! SSE lines and UTF-8 sequences get split across reads; the rest is the body.
//!
//! Property: `call` never panics, and on success the text passed to `on_delta` adds up
//! to the reply's text (what the stream shows equals what history records).

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use aos_kernel::react::llm::{self, Provider};
use aos_sdk::protocol::ToolMode;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Harness {
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    addr: SocketAddr,
    http: reqwest::Client,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime builds");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port is free");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a reqwest client builds");
        Harness {
            runtime,
            listener,
            addr,
            http,
        }
    })
}

/// Answers one request with `body`, written in pieces of `piece` bytes, then closes.
async fn serve_one(listener: &TcpListener, content_type: &str, body: &[u8], piece: usize) {
    let Ok((mut socket, _)) = listener.accept().await else {
        return;
    };
    let _ = socket.set_nodelay(true);
    // Read the whole request first: closing with unread bytes would reset the
    // connection and turn every case into a connect error.
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for chunk in body.chunks(piece) {
        if socket.write_all(chunk).await.is_err() {
            return;
        }
        let _ = socket.flush().await;
    }
    let _ = socket.shutdown().await;
}

fuzz_target!(|data: &[u8]| {
    let [flags, piece, body @ ..] = data else {
        return;
    };
    let streaming = flags & 1 != 0;
    let tool_mode = if flags & 2 != 0 {
        ToolMode::Json
    } else {
        ToolMode::Native
    };
    let piece = usize::from(*piece).max(1) * 16;
    let harness = harness();
    let provider = Provider {
        name: "fuzz".into(),
        base_url: format!("http://{}", harness.addr),
        api_key: None,
        tool_mode,
        max_concurrent: None,
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_retries: 0,
        prices: Default::default(),
    };
    let request = llm::request_body("fuzz-model", Vec::new(), tool_mode);
    let content_type = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut shown = String::new();
    let mut on_delta = |text: &str| shown.push_str(text);
    let (_, result) = harness.runtime.block_on(async {
        tokio::join!(
            serve_one(&harness.listener, content_type, body, piece),
            llm::call(&harness.http, &provider, &request, &mut on_delta),
        )
    });
    match result {
        Ok(reply) => {
            assert_eq!(
                shown, reply.text,
                "the streamed text differs from the reply"
            );
            for call in &reply.tool_calls {
                assert!(!call.id.is_empty(), "a tool call without an id: {call:?}");
            }
        }
        Err(llm::LlmError::Connect { message, .. }) if !message.contains("stream broke") => {
            panic!("the loopback server was not reached: {message}");
        }
        Err(_) => {}
    }
});
