//! Opt-in: the whole loop against a real model (Qwen2.5-Coder-1.5B through llama.cpp,
//! `../shared/tools/local-llm/start.sh`) in JSON tool mode. Run with
//! `AOS_E2E_REAL_LLM=1 cargo nextest run -p aos-tests --test real_llm`; the first run
//! downloads about 1.2 GB. It asserts on protocol — a bash command ran and produced
//! the fact, the loop ended with an answer that carries it — not on wording.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aos_sdk::protocol::{DispatchStatus, StreamEvent};
use aos_tests::{TestKernel, aos_command_at, repo_root};
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_real_model_finds_and_counts_with_bash_in_json_mode() {
    if std::env::var("AOS_E2E_REAL_LLM").as_deref() != Ok("1") {
        eprintln!(
            "\n*** SKIPPED a_real_model_finds_and_counts_with_bash_in_json_mode: it needs a real local LLM. \
             Run it with AOS_E2E_REAL_LLM=1 (the first run downloads ~1.2 GB). ***\n"
        );
        return;
    }
    let start = repo_root().join("../shared/tools/local-llm/start.sh");
    let output = tokio::task::spawn_blocking(move || aos_command_at(&start).arg("8090").output())
        .await
        .unwrap()
        .expect("run start.sh");
    assert!(
        output.status.success(),
        "the local LLM did not start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let base_url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let kernel = TestKernel::start();
    kernel
        .admin
        .ok(
            "system.update",
            json!({
                "providers": [{"name": "local", "baseUrl": base_url, "toolMode": "json", "requestTimeoutMs": 600000, "idleTimeoutMs": 300000, "maxConcurrent": 1}],
                "defaultModel": "local/local",
                "maxTurns": 8,
            }),
        )
        .await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let hidden = kernel
        .home
        .join("workspaces")
        .join(&agent)
        .join("notes/2026");
    std::fs::create_dir_all(&hidden).unwrap();
    let lines: String = (1..=37).map(|i| format!("entry {i}\n")).collect();
    std::fs::write(hidden.join("inventory.txt"), lines).unwrap();
    let started = kernel
        .admin
        .client
        .dispatch(
            &session,
            "A file named inventory.txt is in a subdirectory of your current directory. Locate it with `find . -name inventory.txt`, then count its lines with `wc -l` on the path you found, and tell me the number of lines.",
            false,
        )
        .await
        .unwrap();
    let events: Vec<StreamEvent> = tokio::time::timeout(
        Duration::from_secs(900),
        kernel
            .admin
            .client
            .dispatch_events(&started.dispatch_id)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect(),
    )
    .await
    .expect("the dispatch did not end within 15 minutes");
    for event in &events {
        match event {
            StreamEvent::ToolCall(call) => eprintln!("$ {}", call.command),
            StreamEvent::ToolResult(result) => {
                eprintln!("  -> {}", result.preview.replace('\n', " | "))
            }
            StreamEvent::Message(message) => eprintln!("[{:?}] {}", message.role, message.text),
            _ => {}
        }
    }
    let Some(StreamEvent::Done(done)) = events.last() else {
        panic!("no done: {events:?}");
    };
    assert_eq!(done.status, DispatchStatus::Done, "{done:?}");
    let outputs: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolResult(r) => Some(r.preview.clone()),
            _ => None,
        })
        .collect();
    assert!(!outputs.is_empty(), "no bash command ran: {events:?}");
    assert!(
        outputs.iter().any(|o| o.contains("37")),
        "no command computed the count: {outputs:?}"
    );
    let answer = done.answer.clone().unwrap_or_default();
    assert!(
        answer.contains("37"),
        "the answer does not carry the count: {answer}"
    );
}
