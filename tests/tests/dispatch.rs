//! The ReActUnit against the scripted LLM server: the loop, its history and stream,
//! queues, interrupts, provider failures, tool modes, hooks in order, and the agent's
//! own token.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_kernel::auth::Owner;
use aos_kernel::hooks::{HookHandler, NewRegistration};
use aos_sdk::protocol::{DispatchStatus, ErrorCode, StreamEvent};
use aos_tests::dispatching::{collect, configure, done, history, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm, Step};
use aos_tests::{Setup, TestKernel, eventually};
use async_trait::async_trait;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_runs_bash_until_a_final_answer_and_its_context_survives_a_restart() {
    let llm = ScriptedLlm::start();
    llm.push([
        Reply::Bash {
            command: "printf 'hello\\n' > f.txt && wc -c f.txt".into(),
            text: "Let me look.".into(),
        },
        Reply::text("The file has 6 bytes."),
    ]);
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let events = run(
        &kernel.admin,
        &session,
        "How big is f.txt once you write hello to it?",
    )
    .await;

    let names: Vec<&str> = events.iter().map(StreamEvent::name).collect();
    assert_eq!(names.first(), Some(&"message"), "{names:?}");
    let call = events
        .iter()
        .find_map(|e| match e {
            StreamEvent::ToolCall(c) => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(call.command, "printf 'hello\\n' > f.txt && wc -c f.txt");
    let result = events
        .iter()
        .find_map(|e| match e {
            StreamEvent::ToolResult(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.preview.trim(), "6 f.txt");
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Delta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(deltas.contains("The file has 6 bytes."), "{deltas}");
    let done = done(&events);
    assert_eq!(done.status, DispatchStatus::Done);
    assert_eq!(done.turns, 2);
    assert_eq!(done.answer.as_deref(), Some("The file has 6 bytes."));
    assert!(done.usage.prompt_tokens > 0 && done.usage.completion_tokens > 0);

    // History: user message, the call with its result, the answer — in order.
    let items = history(&kernel.admin, &session).await;
    let tail: Vec<&Value> = items.iter().rev().take(3).rev().collect();
    assert_eq!(tail[0]["role"], "user");
    assert_eq!(
        tail[0]["parts"][0]["text"],
        "How big is f.txt once you write hello to it?"
    );
    assert_eq!(tail[1]["role"], "assistant");
    assert_eq!(tail[1]["parts"][0]["text"], "Let me look.");
    assert_eq!(tail[1]["parts"][1]["type"], "bash");
    assert_eq!(tail[1]["parts"][1]["state"], "output-available");
    assert_eq!(
        tail[1]["parts"][1]["output"]["visibleResult"]
            .as_str()
            .unwrap()
            .trim(),
        "6 f.txt"
    );
    assert_eq!(tail[2]["parts"][0]["text"], "The file has 6 bytes.");
    assert_eq!(tail[2]["dispatchId"], json!(done.dispatch_id));
    // The model saw the tool result before answering.
    let second = &llm.requests()[1];
    let tool = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap();
    assert_eq!(tool["content"].as_str().unwrap().trim(), "6 f.txt");
    assert_eq!(second["model"], "test-model");
    assert_eq!(second["tools"][0]["function"]["name"], "bash");
    // The file is in the agent's workspace.
    let workspace = kernel.home.join("workspaces").join(&agent);
    assert_eq!(
        std::fs::read_to_string(workspace.join("f.txt")).unwrap(),
        "hello\n"
    );
    // Usage reached the session and the agent; the raw result is in the RuntimeLog.
    let usage = kernel
        .admin
        .ok("usage.get", json!({"agentId": agent}))
        .await;
    assert_eq!(usage["usage"]["turns"], 2);
    assert_eq!(usage["usage"]["dispatches"], 1);
    let log = kernel
        .admin
        .ok("log.list", json!({"operation": "tool.execute"}))
        .await;
    assert_eq!(log[0]["data"]["stdout"], "6 f.txt\n");
    let record = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": done.dispatch_id}))
        .await;
    assert_eq!(record["status"], "done");
    assert_eq!(record["model"], "scripted/test-model");

    let before = kernel
        .admin
        .ok("session.context.get", json!({"sessionId": session}))
        .await;
    let setup = kernel.stop();
    let kernel = TestKernel::start_with(setup);
    let after = kernel
        .admin
        .ok("session.context.rebuild", json!({"sessionId": session}))
        .await;
    // The same context, message for message and with the same provenance (only the
    // time the assembly took differs).
    for field in [
        "messages",
        "provenance",
        "estimatedTokens",
        "lastSeq",
        "engine",
    ] {
        assert_eq!(before[field], after[field], "{field}");
    }
    assert!(
        before["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "tool")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_dispatch_at_a_time_per_session_and_queued_ones_run_in_order() {
    let llm = ScriptedLlm::start();
    llm.set_latency(Duration::from_millis(300));
    llm.rule(|body| {
        Reply::Text(format!(
            "answer to {}",
            aos_tests::llm::last_user_text(body)
        ))
        .into()
    });
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let first = kernel
        .admin
        .client
        .dispatch(&session, "A", false)
        .await
        .unwrap();
    assert_eq!(first.status, DispatchStatus::Running);
    let busy = kernel
        .admin
        .err(
            "session.dispatch",
            json!({"sessionId": session, "message": {"role": "user", "content": "B"}}),
            ErrorCode::SessionBusy,
        )
        .await;
    assert!(
        busy.message.contains(&first.dispatch_id),
        "{}",
        busy.message
    );
    let c = kernel
        .admin
        .client
        .dispatch(&session, "C", true)
        .await
        .unwrap();
    let d = kernel
        .admin
        .client
        .dispatch(&session, "D", true)
        .await
        .unwrap();
    assert_eq!(
        (c.status, c.queue_position),
        (DispatchStatus::Queued, Some(1))
    );
    assert_eq!(d.queue_position, Some(2));
    let waiting = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": d.dispatch_id}))
        .await;
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["waiting"]["position"], 2);
    for id in [&first.dispatch_id, &c.dispatch_id, &d.dispatch_id] {
        assert_eq!(
            done(&collect(&kernel.admin, id).await).status,
            DispatchStatus::Done
        );
    }
    assert_eq!(
        llm.max_in_flight(),
        1,
        "two dispatches of one session ran at once"
    );
    let texts: Vec<String> = history(&kernel.admin, &session)
        .await
        .iter()
        .filter(|m| m["dispatchId"].is_string())
        .map(|m| m["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["A", "answer to A", "C", "answer to C", "D", "answer to D"]
    );
    let session_cb = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(session_cb["phase"], "idle");
    assert!(session_cb.get("lease").is_none());
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z')
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_ends_a_dispatch_blocked_in_sleep_within_500_ms_with_no_process_left() {
    let llm = ScriptedLlm::start();
    llm.push([Reply::bash(
        "echo $$ > shell.pid; sleep 600 & echo $! > child.pid; wait",
    )]);
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let started = kernel
        .admin
        .client
        .dispatch(&session, "sleep", false)
        .await
        .unwrap();
    let workspace = kernel.home.join("workspaces").join(&agent);
    let pids: Vec<i32> = eventually(Duration::from_secs(20), "the command to start", || async {
        let read = |f: &str| {
            std::fs::read_to_string(workspace.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(vec![read("shell.pid")?, read("child.pid")?])
    })
    .await;
    assert!(pids.iter().all(|p| alive(*p)));
    let interrupted = kernel
        .admin
        .ok(
            "session.interrupt",
            json!({"sessionId": session, "reason": "enough"}),
        )
        .await;
    let events = collect(&kernel.admin, &started.dispatch_id).await;
    assert_eq!(done(&events).status, DispatchStatus::Interrupted);
    // Measured by the kernel: from the interrupt fact to the end of the dispatch.
    let fact = kernel
        .admin
        .ok(
            "session.history.get",
            json!({"sessionId": session, "seq": interrupted["seq"]}),
        )
        .await;
    let record = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": started.dispatch_id}))
        .await;
    let fact_at = aos_sdk::protocol::Timestamp::parse(fact["createdAt"].as_str().unwrap()).unwrap();
    let ended_at =
        aos_sdk::protocol::Timestamp::parse(record["endedAt"].as_str().unwrap()).unwrap();
    let took = ended_at.as_millis() - fact_at.as_millis();
    assert!(
        took <= 500,
        "the dispatch ended {took} ms after the interrupt"
    );
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "processes survived: {pids:?}"
    );
    let items = history(&kernel.admin, &session).await;
    let bash = items
        .iter()
        .rev()
        .find(|m| m["parts"][0]["type"] == "bash")
        .unwrap();
    assert_eq!(bash["parts"][0]["errorText"], "interrupted");
    assert!(items.iter().any(|m| m["parts"][0]["type"] == "interrupt"));

    // An interrupt also cuts a model call short.
    llm.push([Reply::Hang]);
    let started = kernel
        .admin
        .client
        .dispatch(&session, "think forever", false)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the model call", || async {
        (llm.count() >= 2).then_some(())
    })
    .await;
    kernel
        .admin
        .ok(
            "session.interrupt",
            json!({"sessionId": session, "reason": "stop thinking"}),
        )
        .await;
    let events = collect(&kernel.admin, &started.dispatch_id).await;
    assert_eq!(done(&events).status, DispatchStatus::Interrupted);
    // And the session works again.
    llm.push([Reply::text("back")]);
    assert_eq!(
        done(&run(&kernel.admin, &session, "again").await).status,
        DispatchStatus::Done
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_failures_are_retried_within_limits_and_reported_when_they_persist() {
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    llm.push([
        Reply::Error {
            status: 429,
            retry_after: Some(0.05),
        },
        Reply::Error {
            status: 429,
            retry_after: Some(0.05),
        },
        Reply::Error {
            status: 503,
            retry_after: Some(0.05),
        },
        Reply::text("made it"),
    ]);
    let events = run(&kernel.admin, &session, "try").await;
    assert_eq!(done(&events).answer.as_deref(), Some("made it"));
    assert_eq!(llm.count(), 4);

    // A storm longer than maxRetries (3): the dispatch fails, saying why, in history too.
    llm.push((0..10).map(|_| {
        Step::from(Reply::Error {
            status: 429,
            retry_after: Some(0.02),
        })
    }));
    let events = run(&kernel.admin, &session, "try harder").await;
    let done = done(&events);
    assert_eq!(done.status, DispatchStatus::Failed);
    let error = done.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert!(error.message.contains("HTTP 429"), "{}", error.message);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Error { .. }))
    );
    let items = history(&kernel.admin, &session).await;
    assert_eq!(items.last().unwrap()["parts"][0]["type"], "error");
    assert_eq!(llm.count(), 8, "1 + 3 retries");
    assert_eq!(kernel.admin.client.health().await.unwrap().status, "ok");

    // Without any provider, a dispatch fails at once and says how to configure one.
    kernel
        .admin
        .ok("system.update", json!({"providers": []}))
        .await;
    let error = kernel
        .admin
        .err(
            "session.dispatch",
            json!({"sessionId": session, "message": {"role": "user", "content": "hi"}}),
            ErrorCode::ProviderUnavailable,
        )
        .await;
    assert!(
        error.message.contains("AOS_LLM_BASE_URL"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_tool_mode_runs_bash_from_constrained_answers() {
    let llm = ScriptedLlm::start();
    llm.push([Reply::bash("echo $((6 * 7))"), Reply::text("42")]);
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "json").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let events = run(&kernel.admin, &session, "what is six times seven?").await;
    assert_eq!(done(&events).answer.as_deref(), Some("42"));
    let requests = llm.requests();
    assert_eq!(requests[0]["response_format"]["type"], "json_schema");
    assert!(requests[0].get("tools").is_none());
    let followup = requests[1]["messages"].as_array().unwrap();
    assert!(
        followup
            .iter()
            .any(|m| m["role"] == "user" && m["content"].as_str().unwrap().contains("42")),
        "{followup:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_turns_end_a_dispatch_that_never_answers() {
    let llm = ScriptedLlm::start();
    llm.rule(|_| Reply::bash("true").into());
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    kernel
        .admin
        .ok("system.update", json!({"maxTurns": 3}))
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let events = run(&kernel.admin, &session, "loop").await;
    let done = done(&events);
    assert_eq!(done.status, DispatchStatus::Failed);
    assert_eq!(done.turns, 3);
    assert!(
        done.error.as_ref().unwrap().message.contains("maxTurns"),
        "{:?}",
        done.error
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_token_reaches_its_own_session_and_nothing_of_another_agent() {
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (_, mine) = kernel.admin.agent_and_session().await;
    let (_, theirs) = kernel.admin.agent_and_session().await;
    llm.push([
        Reply::bash(&format!(
            "aos session get \"$AOS_SESSION_ID\" >/dev/null && echo OWN-OK; aos call session.get --payload '{{\"sessionId\": \"{theirs}\"}}'; aos call system.update --payload '{{\"maxTurns\": 1}}'"
        )),
        Reply::text("checked"),
    ]);
    run(&kernel.admin, &mine, "check your reach").await;
    let items = history(&kernel.admin, &mine).await;
    let output = items
        .iter()
        .find(|m| {
            m["parts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["type"] == "bash")
        })
        .map(|m| {
            m["parts"][0]["output"]["visibleResult"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap();
    assert!(output.contains("OWN-OK"), "{output}");
    assert_eq!(output.matches("permission.denied").count(), 2, "{output}");
    // The token died with the dispatch.
    let system = kernel.admin.ok("system.get", json!({})).await;
    assert_ne!(system["maxTurns"], 1);
}

/// Records hook names in the order the kernel calls them.
#[derive(Debug)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl HookHandler for Recorder {
    async fn call(&self, hook: &str, _input: &Value, output: &Value) -> Result<Value, String> {
        self.calls.lock().unwrap().push(hook.to_owned());
        Ok(match hook {
            "tool.before" => {
                let command = output["args"]["command"].as_str().unwrap_or_default();
                json!({"action": "allow", "output": {"args": {"command": format!("{command} && echo rewritten")}}})
            }
            "tool.env" => json!({"output": {"env": {"FROM_HOOK": "yes"}}}),
            h if h.ends_with(".before") || h.ends_with("beforeWrite") => json!({"action": "allow"}),
            _ => json!({}),
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_calls_every_hook_in_order_and_honours_rewrites() {
    let llm = ScriptedLlm::start();
    llm.push([Reply::bash("echo $FROM_HOOK"), Reply::text("done")]);
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    for hook in [
        "session.dispatch.before",
        "session.message.beforeWrite",
        "context.assemble",
        "session.system.transform",
        "session.messages.transform",
        "compute.model.resolve",
        "compute.params.transform",
        "compute.before",
        "tool.env",
        "tool.before",
        "tool.after",
    ] {
        kernel
            .kernel
            .hooks
            .register(NewRegistration {
                hook: hook.into(),
                skill: "recorder".into(),
                service_id: "svc_recorder".into(),
                owner: Owner::System,
                priority: 0,
                timeout: Duration::from_secs(5),
                interactive: false,
                handler: Arc::new(Recorder {
                    calls: calls.clone(),
                }),
            })
            .unwrap();
    }
    let events = run(&kernel.admin, &session, "go").await;
    assert_eq!(done(&events).status, DispatchStatus::Done);
    let seen = calls.lock().unwrap().clone();
    let turn = [
        "context.assemble",
        "session.system.transform",
        "session.messages.transform",
        "compute.model.resolve",
        "compute.params.transform",
        "compute.before",
    ];
    let mut expected: Vec<&str> = vec!["session.dispatch.before", "session.message.beforeWrite"];
    expected.extend(turn);
    expected.extend([
        "tool.env",
        "tool.before",
        "tool.after",
        "session.message.beforeWrite",
    ]);
    expected.extend(turn);
    expected.push("session.message.beforeWrite");
    assert_eq!(seen, expected);
    let items = history(&kernel.admin, &session).await;
    let bash = &items
        .iter()
        .find(|m| m["parts"][0]["type"] == "bash")
        .unwrap()["parts"][0];
    assert_eq!(bash["command"], "echo $FROM_HOOK && echo rewritten");
    assert_eq!(bash["output"]["visibleResult"], "yes\nrewritten\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_service_refuses_a_command_and_the_model_sees_why() {
    let llm = ScriptedLlm::start();
    llm.push([
        Reply::bash("rm -rf /"),
        Reply::text("I will not do that then."),
    ]);
    let kernel = TestKernel::start_with(Setup::new());
    configure(&kernel, &llm, "native").await;
    // The bundled aos-guard would refuse first; this test is about the example.
    let bundled = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-guard"}))
        .await;
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": bundled[0]["serviceId"]}))
        .await;
    kernel
        .admin
        .ok("skill.start", json!({"name": "py-guard"}))
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let events = run(&kernel.admin, &session, "clean up everything").await;
    assert_eq!(done(&events).status, DispatchStatus::Done);
    let items = history(&kernel.admin, &session).await;
    let bash = &items
        .iter()
        .find(|m| m["parts"][0]["type"] == "bash")
        .unwrap()["parts"][0];
    assert_eq!(bash["state"], "output-error");
    let why = bash["errorText"].as_str().unwrap();
    assert!(
        why.contains("py-guard") && why.contains("deleting the root directory"),
        "{why}"
    );
    let tool = llm.requests()[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap();
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("deleting the root directory")
    );
}

/// Dispatches with extra parameters (`deadlineMs`, …) and follows it to `done`.
async fn dispatch_with(
    kernel: &TestKernel,
    session: &str,
    content: &str,
    extra: Value,
) -> Vec<StreamEvent> {
    let mut params = json!({"sessionId": session, "message": {"role": "user", "content": content}});
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let started = kernel.admin.ok("session.dispatch", params).await;
    collect(&kernel.admin, started["dispatchId"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatch_deadline_stops_a_slow_model_and_a_slow_command() {
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    // Out of range: under a second, or over the system's dispatchTimeoutMs.
    for bad in [json!(999), json!(24 * 3600 * 1000)] {
        kernel
            .admin
            .err(
                "session.dispatch",
                json!({"sessionId": session, "message": {"role": "user", "content": "x"}, "deadlineMs": bad}),
                ErrorCode::InvalidParams,
            )
            .await;
    }
    // A first dispatch warms the context engine up (its first assembly is slow), so
    // the deadline below falls inside the model call.
    llm.push([Reply::text("warm")]);
    run(&kernel.admin, &session, "warm up").await;
    // A model that takes 20 s to answer, a deadline of 1 s.
    llm.push([Step {
        reply: Reply::text("too late"),
        delay: Duration::from_secs(20),
    }]);
    let started = std::time::Instant::now();
    let events = dispatch_with(
        &kernel,
        &session,
        "think slowly",
        json!({"deadlineMs": 1000}),
    )
    .await;
    let took = started.elapsed();
    let ended = done(&events);
    assert_eq!(ended.status, DispatchStatus::Failed, "{events:?}");
    let error = ended.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(error.message.contains("deadline"), "{}", error.message);
    assert!(ended.answer.is_none());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "stopped after {took:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Error { code, .. } if *code == ErrorCode::Timeout)),
        "{events:?}"
    );
    let record = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": ended.dispatch_id}))
        .await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["error"]["code"], "timeout");
    let deadline_at =
        aos_sdk::protocol::Timestamp::parse(record["deadlineAt"].as_str().unwrap()).unwrap();
    let started_at =
        aos_sdk::protocol::Timestamp::parse(record["startedAt"].as_str().unwrap()).unwrap();
    let window = deadline_at.as_millis() - started_at.as_millis();
    assert!(
        (900..=1100).contains(&window),
        "deadlineAt - startedAt = {window} ms"
    );
    let items = history(&kernel.admin, &session).await;
    let last = &items.last().unwrap()["parts"][0];
    assert_eq!(last["type"], "error", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("deadline"),
        "{last}"
    );
    let session_cb = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(session_cb["phase"], "idle");

    // Without deadlineMs the same slow model answers.
    llm.push([Step {
        reply: Reply::text("slow but fine"),
        delay: Duration::from_millis(1500),
    }]);
    let events = run(&kernel.admin, &session, "no hurry").await;
    assert_eq!(done(&events).answer.as_deref(), Some("slow but fine"));

    // The deadline bounds the whole dispatch: a command blocked in `sleep` too, and
    // its process does not survive.
    llm.push([Reply::bash("echo $$ > deadline.pid; sleep 60")]);
    let started = std::time::Instant::now();
    let events = dispatch_with(
        &kernel,
        &session,
        "sleep a while",
        json!({"deadlineMs": 1500}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(done(&events).status, DispatchStatus::Failed, "{events:?}");
    assert_eq!(
        done(&events).error.as_ref().unwrap().code,
        ErrorCode::Timeout
    );
    assert!(took < Duration::from_secs(6), "stopped after {took:?}");
    let rec = kernel
        .admin
        .ok(
            "dispatch.get",
            json!({"dispatchId": done(&events).dispatch_id}),
        )
        .await;
    eprintln!("EVENTS took {took:?} requests {} record {rec}", llm.count());
    let pid: i32 = std::fs::read_to_string(
        kernel
            .home
            .join("workspaces")
            .join(&agent)
            .join("deadline.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "the command's shell to die",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
}

/// Sets the one provider `scripted` with extra settings (timeouts, retries).
async fn provider(kernel: &TestKernel, base_url: &str, settings: Value) {
    let mut provider = json!({"name": "scripted", "baseUrl": base_url, "toolMode": "native"});
    provider
        .as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    kernel
        .admin
        .ok(
            "system.update",
            json!({"providers": [provider], "defaultModel": "scripted/test-model"}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_hits_the_idle_timeout_and_is_retried_only_before_any_text() {
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    provider(
        &kernel,
        &llm.base_url,
        json!({"idleTimeoutMs": 300, "requestTimeoutMs": 300, "maxRetries": 1}),
    )
    .await;

    // Silent after the role chunk (nothing passed on yet): retried, and the retry
    // answers.
    llm.push([
        Reply::Stall {
            text: String::new(),
        },
        Reply::text("second try"),
    ]);
    let events = run(&kernel.admin, &session, "stall early").await;
    assert_eq!(
        done(&events).answer.as_deref(),
        Some("second try"),
        "{events:?}"
    );
    assert_eq!(llm.count(), 2);

    // Silent after some text reached the stream: not retried (the text is out); the
    // dispatch fails saying the stream stalled, on the stream and in history.
    llm.push([Reply::Stall {
        text: "Half an ans".into(),
    }]);
    let started = std::time::Instant::now();
    let events = run(&kernel.admin, &session, "stall late").await;
    let took = started.elapsed();
    assert_eq!(llm.count(), 3, "a stall after text was retried");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Delta { text } if text.contains("Half an ans"))),
        "{events:?}"
    );
    let done_event = done(&events);
    assert_eq!(done_event.status, DispatchStatus::Failed);
    let error = done_event.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert!(error.message.contains("stalled"), "{}", error.message);
    assert!(
        took < Duration::from_secs(5),
        "the stall was noticed after {took:?}"
    );
    let items = history(&kernel.admin, &session).await;
    let last = &items.last().unwrap()["parts"][0];
    assert_eq!(last["type"], "error");
    assert!(
        last["message"].as_str().unwrap().contains("stalled"),
        "{last}"
    );

    // No answer at all within requestTimeoutMs: retried once, then failed.
    llm.push([Reply::Hang, Reply::Hang, Reply::text("never asked")]);
    let events = run(&kernel.admin, &session, "hang").await;
    assert_eq!(llm.count(), 5, "1 + maxRetries attempts");
    let error = done(&events).error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert!(
        error.message.contains("no answer within"),
        "{}",
        error.message
    );
    // The session works again (the unused reply is still queued).
    let events = run(&kernel.admin, &session, "and now").await;
    assert_eq!(done(&events).answer.as_deref(), Some("never asked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_stream_is_retried_or_failed_never_taken_and_bad_tool_arguments_reach_the_model()
{
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    provider(&kernel, &llm.base_url, json!({"maxRetries": 1})).await;

    // Cut off before any text reached the client: retried, and the retry answers.
    llm.push([
        Reply::Truncated {
            text: String::new(),
        },
        Reply::text("the whole answer"),
    ]);
    let events = run(&kernel.admin, &session, "cut early").await;
    assert_eq!(
        done(&events).answer.as_deref(),
        Some("the whole answer"),
        "{events:?}"
    );
    assert_eq!(llm.count(), 2);

    // Cut off after text went out: not retried, and the half answer is not passed off
    // as the answer; the dispatch fails saying so, on the stream and in history.
    llm.push([Reply::Truncated {
        text: "The answer is 4".into(),
    }]);
    let events = run(&kernel.admin, &session, "cut late").await;
    assert_eq!(llm.count(), 3, "a cut-off reply after text was retried");
    let ended = done(&events);
    assert_eq!(ended.status, DispatchStatus::Failed);
    assert_eq!(ended.answer, None);
    let error = ended.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert!(
        error
            .message
            .contains("ended before the answer was complete"),
        "{}",
        error.message
    );
    let items = history(&kernel.admin, &session).await;
    let last = &items.last().unwrap()["parts"][0];
    assert_eq!(last["type"], "error", "{last}");
    assert!(
        items
            .iter()
            .all(|m| m["role"] != "assistant" || m["parts"][0]["text"] != "The answer is 4"),
        "the cut-off text was stored as an answer"
    );

    // Tool-call arguments that are not JSON: the model is told so as the call's result,
    // and the loop goes on.
    llm.push([
        Reply::RawArguments("{\"command\": \"ls".into()),
        Reply::text("fixed it"),
    ]);
    let events = run(&kernel.admin, &session, "bad arguments").await;
    assert_eq!(done(&events).answer.as_deref(), Some("fixed it"));
    let results = tool_results(&events);
    assert!(
        results[0]
            .error_text
            .as_deref()
            .is_some_and(|e| e.contains("not valid JSON")),
        "{:?}",
        results[0]
    );
    let told = llm.requests().last().unwrap().clone();
    assert!(
        told["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "tool"
                && m["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not valid JSON")),
        "{told}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_are_retried_with_backoff_then_reported() {
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    // A closed port: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let base = format!("http://127.0.0.1:{port}/v1");
    provider(&kernel, &base, json!({"maxRetries": 0})).await;
    let events = run(&kernel.admin, &session, "anyone?").await;
    let no_retry = done(&events).clone();
    assert_eq!(no_retry.status, DispatchStatus::Failed);
    let error = no_retry.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::ProviderUnavailable);
    assert!(
        error.message.contains("cannot reach provider `scripted`")
            && error.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        error.message
    );
    let model_ms = |record: &Value| record["timing"]["modelUs"].as_u64().unwrap() / 1000;
    let record = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": no_retry.dispatch_id}))
        .await;
    let once = model_ms(&record);
    assert!(once < 400, "one refused connection took {once} ms");

    // Two retries: 0.5 s then 1 s of back-off, each ±25 %, so at least 1.125 s.
    provider(&kernel, &base, json!({"maxRetries": 2})).await;
    let events = run(&kernel.admin, &session, "anyone now?").await;
    let retried = done(&events);
    assert_eq!(retried.status, DispatchStatus::Failed);
    let record = kernel
        .admin
        .ok("dispatch.get", json!({"dispatchId": retried.dispatch_id}))
        .await;
    let thrice = model_ms(&record);
    assert!(
        (1125..4000).contains(&thrice),
        "three attempts with back-off took {thrice} ms"
    );

    // Connections that are accepted and dropped at once: exactly 1 + maxRetries
    // attempts reach the port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    provider(
        &kernel,
        &format!("http://127.0.0.1:{port}/v1"),
        json!({"maxRetries": 2}),
    )
    .await;
    let events = run(&kernel.admin, &session, "hello?").await;
    assert_eq!(done(&events).status, DispatchStatus::Failed);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(kernel.admin.client.health().await.unwrap().status, "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_of_a_session_is_the_sum_of_its_dispatches() {
    let llm = ScriptedLlm::start();
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    kernel
        .admin
        .ok("system.update", json!({"maxTurns": 2}))
        .await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let (_, other) = kernel.admin.agent_and_session().await;
    let before = kernel
        .admin
        .ok("usage.get", json!({"sessionId": session}))
        .await;
    assert_eq!(before["scope"], "session");
    assert_eq!(before["usage"]["dispatches"], 0);
    // One turn; two turns with a bash call; a longer answer; a failed one that used
    // its two turns (maxTurns); and one on another session that must not count.
    llm.push([
        Reply::text("short"),
        Reply::bash("echo one"),
        Reply::text("after the call"),
        Reply::Text("a much longer answer ".repeat(50)),
        Reply::bash("true"),
        Reply::bash("true"),
    ]);
    let mut ids = Vec::new();
    for task in ["a", "b", "c", "d"] {
        let events = run(&kernel.admin, &session, task).await;
        ids.push(done(&events).dispatch_id.clone());
    }
    llm.push([Reply::text("elsewhere")]);
    run(&kernel.admin, &other, "e").await;

    let mut sum = [0u64; 4];
    for id in &ids {
        let record = kernel
            .admin
            .ok("dispatch.get", json!({"dispatchId": id}))
            .await;
        let usage = &record["usage"];
        for (i, field) in ["promptTokens", "completionTokens", "totalTokens", "turns"]
            .iter()
            .enumerate()
        {
            sum[i] += usage[field].as_u64().unwrap();
        }
    }
    assert_eq!(sum[3], 6, "1 + 2 + 1 + 2 model calls");
    assert!(sum[0] > 0 && sum[1] > 0);
    assert_eq!(sum[2], sum[0] + sum[1]);
    let expected = |dispatches: u64| json!({"promptTokens": sum[0], "completionTokens": sum[1], "totalTokens": sum[2], "turns": sum[3], "dispatches": dispatches});
    let got = kernel
        .admin
        .ok("usage.get", json!({"sessionId": session}))
        .await;
    let fields = |usage: &Value| {
        json!({
            "promptTokens": usage["promptTokens"],
            "completionTokens": usage["completionTokens"],
            "totalTokens": usage["totalTokens"],
            "turns": usage["turns"],
            "dispatches": usage["dispatches"],
        })
    };
    assert_eq!(fields(&got["usage"]), expected(4), "{got}");
    // The agent has only this session, so its totals are the same.
    let agent_usage = kernel
        .admin
        .ok("usage.get", json!({"agentId": agent}))
        .await;
    assert_eq!(fields(&agent_usage["usage"]), expected(4), "{agent_usage}");
    // The prompt tokens are the ones the provider reported (the scripted server counts
    // a quarter of each request body's bytes).
    let reported: u64 = llm
        .requests()
        .iter()
        .take(6)
        .map(|body| (serde_json::to_string(body).unwrap().len() / 4) as u64)
        .sum();
    assert!(
        sum[0].abs_diff(reported) <= 6 * 4,
        "prompt tokens {} vs the server's {reported}",
        sum[0]
    );
}

/// A transform hook that takes far longer than any deadline.
#[derive(Debug)]
struct Slow;

#[async_trait]
impl HookHandler for Slow {
    async fn call(&self, _hook: &str, _input: &Value, _output: &Value) -> Result<Value, String> {
        tokio::time::sleep(Duration::from_secs(20)).await;
        Ok(json!({}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_also_stops_a_dispatch_while_its_context_is_assembled() {
    let llm = ScriptedLlm::start();
    llm.rule(|_| Reply::text("never asked").into());
    let kernel = TestKernel::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    kernel
        .kernel
        .hooks
        .register(NewRegistration {
            hook: "session.system.transform".into(),
            skill: "slow".into(),
            service_id: "svc_slow".into(),
            owner: Owner::System,
            priority: 0,
            timeout: Duration::from_secs(30),
            interactive: false,
            handler: Arc::new(Slow),
        })
        .unwrap();
    let started = std::time::Instant::now();
    let events = dispatch_with(&kernel, &session, "go", json!({"deadlineMs": 1000})).await;
    let took = started.elapsed();
    let ended = done(&events);
    assert_eq!(ended.status, DispatchStatus::Failed, "{events:?}");
    assert_eq!(ended.error.as_ref().unwrap().code, ErrorCode::Timeout);
    assert!(
        took < Duration::from_secs(4),
        "the 20 s hook held the dispatch past its 1 s deadline: {took:?}"
    );
    assert_eq!(llm.count(), 0, "no model call after the deadline");
}
