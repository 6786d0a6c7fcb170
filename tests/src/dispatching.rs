//! Dispatch helpers for tests: point a kernel at the scripted LLM, run a dispatch to
//! its end over the stream, read history.

use std::time::Duration;

use aos_sdk::protocol::{StreamEvent, StreamToolResult};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::llm::ScriptedLlm;
use crate::{Api, TestKernel};

/// Points the kernel at the scripted server as provider `scripted`, model `test-model`.
pub async fn configure(kernel: &TestKernel, llm: &ScriptedLlm, tool_mode: &str) {
    kernel
        .admin
        .ok(
            "system.update",
            json!({
                "providers": [{"name": "scripted", "baseUrl": llm.base_url, "toolMode": tool_mode, "maxRetries": 3}],
                "defaultModel": "scripted/test-model",
            }),
        )
        .await;
}

/// Dispatches and follows the stream to `done`; returns every event.
pub async fn run(api: &Api, session: &str, content: &str) -> Vec<StreamEvent> {
    let started = api.client.dispatch(session, content, false).await.unwrap();
    collect(api, &started.dispatch_id).await
}

pub async fn collect(api: &Api, dispatch_id: &str) -> Vec<StreamEvent> {
    let stream = api.client.dispatch_events(dispatch_id).await.unwrap();
    let events: Vec<StreamEvent> = tokio::time::timeout(
        Duration::from_secs(60),
        stream.map(Result::unwrap).collect(),
    )
    .await
    .expect("the dispatch did not end within 60 s");
    assert!(
        matches!(events.last(), Some(StreamEvent::Done(_))),
        "{events:?}"
    );
    events
}

pub fn done(events: &[StreamEvent]) -> &aos_sdk::protocol::StreamDone {
    match events.last() {
        Some(StreamEvent::Done(done)) => done,
        other => panic!("no done: {other:?}"),
    }
}

pub async fn history(api: &Api, session: &str) -> Vec<Value> {
    api.ok(
        "session.history.list",
        json!({"sessionId": session, "limit": 1000}),
    )
    .await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The tool results of a dispatch's events, in order.
pub fn tool_results(events: &[StreamEvent]) -> Vec<StreamToolResult> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolResult(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}
