//! The default harness skills end to end, against the scripted LLM server: the `aos`
//! manual at bootstrap, `aos-context` (projection, auto-fold, compaction, removal and
//! return), `aos-skill` (agents writing skills for each other) and `aos-guard`.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aos_sdk::protocol::{ErrorCode, StreamEvent};
use aos_tests::dispatching::{configure, done, history, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{TestKernel, copy_dir, eventually, repo_root};
use serde_json::{Value, json};

/// The non-system messages of a model request (the system prompt is the kernel's).
fn context_of(body: &Value) -> Vec<Value> {
    body["messages"].as_array().unwrap()[1..].to_vec()
}

fn tool_contents(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn part_types(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|m| m["parts"][0]["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn skill_text(kernel: &TestKernel, name: &str) -> String {
    kernel.admin.ok("skill.get", json!({"name": name})).await["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_session_starts_with_the_manual_and_its_first_request_is_the_projected_context() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    llm.push([Reply::text("Hello.")]);
    run(&kernel.admin, &session, "hi there").await;
    let h = history(&kernel.admin, &session).await;
    assert_eq!(
        part_types(&h),
        [
            "bootstrap",
            "skill-load",
            "skill-load",
            "bootstrap",
            "text",
            "text"
        ]
    );
    assert_eq!(h[1]["parts"][0]["name"], "aos", "the manual loads first");
    assert_eq!(h[2]["parts"][0]["name"], "aos-skill");
    // The request body the server received, message for message.
    let body = &llm.requests()[0];
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains(&session)
    );
    assert_eq!(
        context_of(body),
        vec![
            json!({"role": "system", "content": format!("[[AOS-SKILL aos]]\n{}", skill_text(&kernel, "aos").await)}),
            json!({"role": "system", "content": format!("[[AOS-SKILL aos-skill]]\n{}", skill_text(&kernel, "aos-skill").await)}),
            json!({"role": "user", "content": "hi there"}),
        ]
    );
    // And the rest of the body: the model, the bash tool's schema, streaming with usage.
    let mut rest = body.clone();
    rest.as_object_mut().unwrap().remove("messages");
    assert_eq!(
        rest,
        json!({
            "model": "test-model",
            "tools": [bash_tool()],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    // The engine built it and says where each message came from.
    let view = kernel
        .admin
        .ok("session.context.get", json!({"sessionId": session}))
        .await;
    assert_eq!(view["engine"], true);
    let kinds: Vec<&str> = view["provenance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["skill-load", "skill-load", "user-input", "assistant-output"]
    );
    assert!(view["estimatedTokens"].as_u64().unwrap() > 100);
}

/// The one tool of a native-mode request, as the provider is sent it.
fn bash_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a bash command in your workspace and get its output. The `aos` command reaches the AOS kernel as you (your session, its history, skills, stored content).",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line, run with bash -c."},
                    "cwd": {"type": "string", "description": "Working directory (default: your workspace)."},
                    "timeoutMs": {"type": "integer", "description": "Deadline in milliseconds (default 120000)."}
                },
                "required": ["command"]
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn in_json_mode_the_first_request_is_the_projected_context_with_the_step_schema() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "json").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    llm.push([Reply::text("Hello.")]);
    let events = run(&kernel.admin, &session, "hi there").await;
    assert_eq!(done(&events).answer.as_deref(), Some("Hello."));
    let body = &llm.requests()[0];
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"].as_str().unwrap().contains(&session));
    // Everything after the kernel's system prompt, and every other field: no tools, the
    // answer format as instructions (after the skills, just before the conversation)
    // and as a strict JSON schema.
    let mut rest = body.clone();
    rest["messages"] = Value::Array(messages[1..].to_vec());
    assert_eq!(
        rest,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": format!("[[AOS-SKILL aos]]\n{}", skill_text(&kernel, "aos").await)},
                {"role": "system", "content": format!("[[AOS-SKILL aos-skill]]\n{}", skill_text(&kernel, "aos-skill").await)},
                {"role": "system", "content": "Reply with exactly one JSON object and nothing else. To run a bash command: {\"action\": \"bash\", \"text\": \"<the command>\"}; its output comes back in the next message. When you have the final answer: {\"action\": \"answer\", \"text\": \"<your answer>\"}."},
                {"role": "user", "content": "hi there"},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "aos_step",
                    "strict": true,
                    "schema": {
                        "type": "object",
                        "properties": {
                            "action": {"type": "string", "enum": ["bash", "answer"]},
                            "text": {"type": "string"}
                        },
                        "required": ["action", "text"],
                        "additionalProperties": false
                    }
                }
            },
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
}

/// Extracts the line of a fold placeholder that starts with `label: `.
fn placeholder_command(placeholder: &str, label: &str) -> String {
    placeholder
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no `{label}:` line in {placeholder}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_kb_output_is_folded_and_the_placeholder_commands_work_from_bash() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    // 1) 6 000 lines, over 200 kB; 2) the placeholder's grep; 3) its head; 4) its
    // unfold; 5) the answer.
    let output: String = (1..=6000)
        .map(|i| format!("line {i} of the quick brown fox jumps\n"))
        .collect();
    let size = output.chars().count();
    assert!(size > 200_000);
    llm.push([Reply::bash(
        "awk 'BEGIN { for (i = 1; i <= 6000; i++) print \"line \" i \" of the quick brown fox jumps\" }'",
    )]);
    llm.rule(|body| {
        let tools = tool_contents(body);
        let Some(placeholder) = tools.first().cloned() else {
            return Reply::text("no tool results").into();
        };
        match tools.len() {
            1 => Reply::bash(
                &placeholder_command(&placeholder, "grep").replace("<pattern>", "^line 5999 of"),
            ),
            2 => Reply::bash(&placeholder_command(&placeholder, "head")),
            3 => Reply::bash(&placeholder_command(&placeholder, "unfold")),
            _ => Reply::text("done"),
        }
        .into()
    });
    let events = run(&kernel.admin, &session, "count to forty thousand").await;
    assert_eq!(done(&events).turns, 5, "{events:?}");
    let h = history(&kernel.admin, &session).await;
    let call = h
        .iter()
        .find_map(|m| {
            m["parts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["type"] == "bash")
        })
        .unwrap();
    let content_id = call["output"]["contentId"].as_str().unwrap().to_owned();
    assert!(call["output"]["visibleResult"].is_null(), "{call}");
    assert_eq!(call["output"]["sizeChars"], size as u64);
    let requests = llm.requests();
    let placeholder = &tool_contents(&requests[1])[0];
    assert!(
        placeholder.starts_with("[[AOS-FOLDED]]\ntype: tool-bash-result\n"),
        "{placeholder}"
    );
    assert!(
        placeholder.contains(&format!("size: {size} chars, 6000 lines\npreview:\nline 1 of the quick brown fox jumps\nline 2 of")),
        "{placeholder}"
    );
    assert!(placeholder.contains(&content_id));
    // The grep and the head ran in bash and found the content.
    let grep = &tool_contents(&requests[2])[1];
    assert!(
        grep.contains("\"ok\":true") || grep.contains("\"ok\": true"),
        "{grep}"
    );
    assert!(grep.contains("\"lineNumber\":5999"), "{grep}");
    let head = &tool_contents(&requests[3])[2];
    assert!(
        head.contains("line 20 of") && !head.contains("line 21 of"),
        "{head}"
    );
    // Unfolded, the next request holds the whole output.
    let unfolded = &tool_contents(&requests[4])[0];
    assert_eq!(unfolded.lines().count(), 6000);
    assert!(
        unfolded
            .trim_end()
            .ends_with("line 6000 of the quick brown fox jumps")
    );
    // History still holds the reference, not the text.
    let again = history(&kernel.admin, &session).await;
    assert_eq!(again.len(), h.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn crossing_the_compaction_threshold_appends_a_boundary_and_keeps_all_history() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    kernel
        .admin
        .ok("system.update", json!({"compactionThreshold": 3000}))
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let long_answer: String = (0..900).map(|i| format!("step{i} ")).collect();
    let answer = long_answer.clone();
    llm.rule(move |body| {
        if body.get("tools").is_none() {
            Reply::text("SUMMARY: we wrote the report; open task: send it.").into()
        } else {
            Reply::text(&answer).into()
        }
    });
    let mut dispatches = 0;
    loop {
        dispatches += 1;
        assert!(dispatches <= 8, "no compaction after 8 long dispatches");
        run(&kernel.admin, &session, &format!("task {dispatches}")).await;
        let h = history(&kernel.admin, &session).await;
        if part_types(&h).contains(&"compaction-summary".to_owned()) {
            break;
        }
    }
    let h = history(&kernel.admin, &session).await;
    let types = part_types(&h);
    let marker = types.iter().position(|t| t == "compaction-marker").unwrap();
    assert_eq!(types[marker + 1], "compaction-summary");
    assert_eq!(
        h[marker + 1]["parts"][0]["markerId"],
        h[marker]["id"],
        "the summary points at its marker"
    );
    // Every earlier message is still in history, in order, gap-free.
    for (i, m) in h.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1);
    }
    for n in 1..=dispatches {
        assert!(
            h.iter()
                .any(|m| m["parts"][0]["text"] == format!("task {n}"))
        );
    }
    // The summary call got the conversation and the instructions.
    let requests = llm.requests();
    let summary_call = requests.iter().find(|b| b.get("tools").is_none()).unwrap();
    let prompt = summary_call["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("file paths") && prompt.contains("task 1"),
        "{prompt}"
    );
    // The next request starts at the boundary: marker, summary, the current task kept
    // verbatim, the skills reinjected.
    let after = requests
        .iter()
        .rev()
        .find(|b| b.get("tools").is_some())
        .unwrap();
    let context = context_of(after);
    assert_eq!(
        context[0],
        json!({"role": "user", "content": "What did we do so far?"})
    );
    assert_eq!(
        context[1],
        json!({"role": "assistant", "content": "SUMMARY: we wrote the report; open task: send it."})
    );
    assert_eq!(
        context[2],
        json!({"role": "user", "content": format!("task {dispatches}")})
    );
    let skills: Vec<&str> = context
        .iter()
        .filter_map(|m| m["content"].as_str())
        .filter_map(|c| c.strip_prefix("[[AOS-SKILL "))
        .map(|c| c.split(']').next().unwrap())
        .collect();
    assert_eq!(skills, ["aos", "aos-skill"]);
    assert!(
        !context.iter().any(|m| m["content"] == long_answer),
        "the compacted answers are gone from context"
    );
    let reinjects = h
        .iter()
        .filter(|m| m["parts"][0]["type"] == "skill-load" && m["parts"][0]["cause"] == "reinject")
        .count();
    assert_eq!(reinjects, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_compaction_without_an_engine_is_refused_and_changes_nothing() {
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-context"}))
        .await;
    let id = services[0]["serviceId"].as_str().unwrap();
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": id}))
        .await;
    let before = history(&kernel.admin, &session).await;
    let error = kernel
        .admin
        .err(
            "session.compact",
            json!({"sessionId": session}),
            ErrorCode::Unavailable,
        )
        .await;
    assert!(error.message.contains("aos-context"), "{}", error.message);
    assert_eq!(history(&kernel.admin, &session).await, before);
    let s = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(s["phase"], "idle");
    assert!(s["lease"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_aos_context_leaves_dispatch_working_and_restoring_it_brings_it_back() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let engine = |kernel: &TestKernel, session: String| {
        let api = kernel.admin.clone();
        async move {
            api.ok("session.context.get", json!({"sessionId": session}))
                .await["engine"]
                .as_bool()
                .unwrap()
        }
    };
    assert!(engine(&kernel, session.clone()).await);
    std::fs::remove_dir_all(kernel.skills.join("aos-context")).unwrap();
    eventually(Duration::from_secs(15), "aos-context stopped", || {
        let api = kernel.admin.clone();
        async move {
            let services = api
                .ok("service.list", json!({"skill": "aos-context"}))
                .await;
            services
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["state"] == "stopped")
                .then_some(())
        }
    })
    .await;
    assert!(
        !engine(&kernel, session.clone()).await,
        "the neutral projection answers"
    );
    llm.push([Reply::text("still here")]);
    let events = run(&kernel.admin, &session, "are you there?").await;
    assert_eq!(done(&events).answer.as_deref(), Some("still here"));
    assert!(
        kernel
            .admin
            .ok("skill.list", json!({}))
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "aos-context")
    );
    // Restored: hot reload starts it again (the default says so), no restart.
    copy_dir(
        &repo_root().join("skills/aos-context"),
        &kernel.skills.join("aos-context"),
    );
    eventually(Duration::from_secs(15), "aos-context back", || {
        let api = kernel.admin.clone();
        let session = session.clone();
        async move {
            let view = api
                .ok("session.context.get", json!({"sessionId": session}))
                .await;
            (view["engine"] == true).then_some(())
        }
    })
    .await;
    llm.push([Reply::text("back")]);
    run(&kernel.admin, &session, "and now?").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_writes_a_skill_and_another_agent_finds_and_loads_it() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, writer) = kernel.admin.agent_and_session().await;
    let (_, reader) = kernel.admin.agent_and_session().await;
    llm.push([
        Reply::bash(
            "printf '# Frobnicating widgets\\n\\nRun the frob check before every release.\\n' > body.md && \
             skill create frobnicate-widgets --description 'How to frobnicate widgets safely with the frob check.' --body-file body.md",
        ),
        Reply::text("written"),
    ]);
    let events = run(&kernel.admin, &writer, "write down how to frobnicate").await;
    let created = tool_results(&events).remove(0);
    assert_eq!(created.exit_code, Some(0), "{created:?}");
    assert!(
        created.preview.contains("created frobnicate-widgets"),
        "{created:?}"
    );
    // A broken skill is refused and nothing is written.
    llm.push([
        Reply::bash("skill create Bad_Name --description x --body y"),
        Reply::text("refused"),
    ]);
    let events = run(&kernel.admin, &writer, "write a bad one").await;
    assert!(events.iter().any(|e| matches!(e, StreamEvent::ToolResult(r) if r.exit_code == Some(2) && r.preview.contains("not a skill name"))), "{events:?}");
    // The other agent searches, finds it first, and loads it.
    llm.push([
        Reply::bash("skill search frobnicate widgets"),
        Reply::bash("skill load frobnicate-widgets"),
        Reply::text("loaded"),
    ]);
    let events = run(&kernel.admin, &reader, "how do I frobnicate?").await;
    let results: Vec<String> = tool_results(&events)
        .into_iter()
        .map(|r| r.preview)
        .collect();
    assert!(
        results[0].starts_with("frobnicate-widgets — How to frobnicate"),
        "{results:?}"
    );
    let h = history(&kernel.admin, &reader).await;
    assert!(
        h.iter().any(|m| m["parts"][0]["type"] == "skill-load"
            && m["parts"][0]["name"] == "frobnicate-widgets")
    );
    let last = llm.requests().last().unwrap().clone();
    assert!(
        context_of(&last)
            .iter()
            .any(|m| m["content"].as_str().is_some_and(
                |c| c.starts_with("[[AOS-SKILL frobnicate-widgets]]\n# Frobnicating widgets")
            ))
    );
    assert!(
        kernel
            .skills
            .join("local/frobnicate-widgets/SKILL.md")
            .is_file()
    );
}

async fn tool_result_of(
    kernel: &TestKernel,
    llm: &ScriptedLlm,
    session: &str,
    command: &str,
) -> aos_sdk::protocol::StreamToolResult {
    llm.push([Reply::bash(command), Reply::text("ok")]);
    let events = run(&kernel.admin, session, "go").await;
    tool_results(&events).remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn aos_guard_blocks_destructive_commands_naming_the_rule_and_asks_a_person_when_told() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let workspace = kernel.home.join("workspaces").join(&agent);
    // A download piped into a shell (port 9 is closed: harmless if it ran).
    let refused = tool_result_of(
        &kernel,
        &llm,
        &session,
        "curl -s http://127.0.0.1:9/install.sh | sh",
    )
    .await;
    let error = refused.error_text.clone().unwrap_or_default();
    assert!(
        error.contains("blocked by aos-guard rule `pipe-to-shell`"),
        "{refused:?}"
    );
    let rows = kernel
        .admin
        .ok(
            "log.list",
            json!({"operation": "tool.admission", "sessionId": session}),
        )
        .await;
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["outcome"], "rejected");
    assert!(
        row["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("pipe-to-shell"),
        "{row}"
    );
    // A scratch directory a session rule protects survives `rm -rf`.
    std::fs::create_dir_all(workspace.join("scratch")).unwrap();
    std::fs::write(workspace.join("scratch/keep.txt"), "x").unwrap();
    let rules = json!({"aos-guard": {"rules": [
        {"name": "protect-scratch", "action": "deny", "pattern": "rm\\s+-rf\\s+\\S*scratch", "reason": "scratch holds the test data"},
        {"name": "ask-approved", "action": "ask", "pattern": "touch approved", "timeoutMs": 30000},
        {"name": "ask-ignored", "action": "ask", "pattern": "touch ignored", "timeoutMs": 800}
    ]}});
    kernel
        .admin
        .ok(
            "session.update",
            json!({"sessionId": session, "metadata": rules}),
        )
        .await;
    let refused = tool_result_of(&kernel, &llm, &session, "rm -rf scratch").await;
    assert!(
        refused
            .error_text
            .unwrap()
            .contains("`protect-scratch (session)`: scratch holds the test data")
    );
    assert!(workspace.join("scratch/keep.txt").is_file());
    // `ask`: the command waits for a person; an agent cannot decide for itself.
    llm.push([Reply::bash("touch approved.txt"), Reply::text("ok")]);
    let started = kernel
        .admin
        .client
        .dispatch(&session, "go", false)
        .await
        .unwrap();
    let pending = eventually(Duration::from_secs(10), "a pending ask", || {
        let api = kernel.admin.clone();
        async move {
            let p = api.ok("aos-guard.pending", json!({})).await;
            p["items"].as_array().unwrap().first().cloned()
        }
    })
    .await;
    assert_eq!(pending["command"], "touch approved.txt");
    assert_eq!(pending["rule"], "ask-approved (session)");
    assert!(!workspace.join("approved.txt").exists(), "it waits");
    let session_token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session}}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    kernel
        .api(Some(&session_token))
        .err(
            "aos-guard.decide",
            json!({"id": pending["id"], "decision": "allow"}),
            ErrorCode::PermissionDenied,
        )
        .await;
    kernel
        .admin
        .ok(
            "aos-guard.decide",
            json!({"id": pending["id"], "decision": "allow", "reason": "fine"}),
        )
        .await;
    let events = aos_tests::dispatching::collect(&kernel.admin, &started.dispatch_id).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::ToolResult(r) if r.exit_code == Some(0))),
        "{events:?}"
    );
    assert!(workspace.join("approved.txt").is_file());
    // No decision: denied at the deadline.
    let refused = tool_result_of(&kernel, &llm, &session, "touch ignored.txt").await;
    assert!(refused.error_text.unwrap().contains("denied by deadline"));
    assert!(!workspace.join("ignored.txt").exists());
    let rows = kernel
        .admin
        .ok(
            "log.list",
            json!({"operation": "tool.admission", "sessionId": session}),
        )
        .await;
    let reasons: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data"]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("ask-approved") && r.contains("allowed by admin")),
        "{reasons:?}"
    );
    // Ordinary commands run.
    let fine = tool_result_of(&kernel, &llm, &session, "ls scratch").await;
    assert_eq!(fine.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_in_the_aos_manual_works_as_written_from_an_agents_bash() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    // What the manual's placeholders stand for.
    let content = kernel
        .admin
        .ok(
            "content.put",
            json!({"sessionId": session, "content": "all fine\npanic: disk full\nerror: retry\n"}),
        )
        .await["contentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let workspace = kernel.home.join("workspaces").join(&agent);
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("notes.txt"), "notes\n").unwrap();
    let first = history(&kernel.admin, &session).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let manual = std::fs::read_to_string(repo_root().join("skills/aos/SKILL.md")).unwrap();
    let commands: Vec<String> = manual
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(|l| {
            // A trailing comment is two or more spaces then `#`.
            let command = l.split("   #").next().unwrap().trim_end();
            command
                .replace("cnt_123", &content)
                .replace("msg_…", &first)
                .replace("<words>", "context")
                .replace("<name>", "aos-context")
        })
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    llm.push(
        commands
            .iter()
            .map(|c| Reply::bash(c))
            .chain([Reply::text("done")]),
    );
    let events = run(&kernel.admin, &session, "try the manual").await;
    let results = tool_results(&events);
    assert_eq!(results.len(), commands.len());
    for (command, result) in commands.iter().zip(&results) {
        assert_eq!(result.exit_code, Some(0), "`{command}` failed: {result:?}");
    }
    assert!(
        results[4].preview.contains("panic: disk full"),
        "{:?}",
        results[4]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_summary_call_leaves_the_session_as_it_was() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    llm.push([Reply::text("an answer")]);
    run(&kernel.admin, &session, "a first task").await;
    llm.rule(|_| {
        Reply::Error {
            status: 500,
            retry_after: None,
        }
        .into()
    });
    let before = history(&kernel.admin, &session).await;
    let error = kernel
        .admin
        .err(
            "session.compact",
            json!({"sessionId": session}),
            ErrorCode::ProviderUnavailable,
        )
        .await;
    assert!(error.message.contains("summary"), "{}", error.message);
    assert_eq!(history(&kernel.admin, &session).await, before);
    let s = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(s["phase"], "idle");
    assert!(s["lease"].is_null());
    // And a manual compaction that works: the pair, then the skills again.
    llm.rule(|_| Reply::text("SUMMARY").into());
    let done = kernel
        .admin
        .ok("session.compact", json!({"sessionId": session}))
        .await;
    assert_eq!(done["mode"], "instruct");
    assert_eq!(done["reinjected"], json!(["aos", "aos-skill"]));
    let after = history(&kernel.admin, &session).await;
    assert_eq!(after.len(), before.len() + 4);
    assert_eq!(&after[..before.len()], &before[..]);
}

/// The content of the tool messages in the last request the server received.
fn last_tool_contents(llm: &ScriptedLlm) -> Vec<String> {
    tool_contents(llm.requests().last().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_skill_catalogue_shown_to_the_model_stays_within_catalog_chars() {
    let setup = aos_tests::Setup::new();
    let skills = setup.skills();
    // 60 extra skills with long descriptions: far more than the budget holds.
    for i in 0..60 {
        aos_tests::write_skill(
            &skills,
            &format!("widget-tool-{i:02}"),
            &format!(
                "Widget tool number {i} {}",
                "handles widgets of every size and colour with care. ".repeat(4)
            ),
            "# body\n",
        );
    }
    let set_budget = |budget: usize| {
        std::fs::write(
            skills.join("aos-skill/config.json"),
            json!({"writableDir": "local", "catalogChars": budget, "searchResults": 50})
                .to_string(),
        )
        .unwrap();
    };
    set_budget(1_000_000);
    let kernel = TestKernel::start_with(setup);
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let usable = kernel
        .admin
        .ok("skill.list", json!({}))
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["error"].is_null())
        .count();
    assert!(usable >= 60, "{usable}");
    // Unbounded first, to learn the lines; then a budget that ends just past the
    // sixth line, so the seventh does not fit and the cut must say so.
    llm.push([Reply::bash("skill list"), Reply::text("all")]);
    run(&kernel.admin, &session, "list them all").await;
    let full = last_tool_contents(&llm)[0].clone();
    let lines: Vec<&str> = full.trim_end().lines().collect();
    assert_eq!(lines.len(), usable, "{full}");
    let budget = lines[..6]
        .iter()
        .map(|l| l.chars().count() + 1)
        .sum::<usize>()
        + 10;
    set_budget(budget);
    llm.push([
        Reply::bash("skill list"),
        Reply::bash("skill search widget tool"),
        Reply::text("seen"),
    ]);
    let events = run(&kernel.admin, &session, "what skills are there?").await;
    let results = tool_results(&events);
    assert!(
        results.iter().all(|r| r.exit_code == Some(0)),
        "{results:?}"
    );
    let seen = last_tool_contents(&llm);
    assert_eq!(seen.len(), 3, "the full list, then list and search");
    let seen = &seen[1..];
    for (what, text) in ["list", "search"].iter().zip(seen) {
        let text = text.trim_end();
        let chars = text.chars().count();
        assert!(
            chars <= budget,
            "`skill {what}` showed the model {chars} characters, over catalogChars {budget}:\n{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let (last, shown) = lines.split_last().unwrap();
        assert!(
            last.starts_with("… "),
            "`skill {what}` does not say it was cut: {text}"
        );
        assert!(shown.len() >= 3, "{text}");
        assert!(shown.iter().all(|l| l.contains(" — ")), "{text}");
        if *what == "list" {
            let more: usize = last
                .trim_start_matches("… ")
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(shown.len() + more, usable, "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skill_edit_changes_an_agents_own_skill_and_refuses_bundled_ones() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = kernel.admin.agent_and_session().await;
    llm.push([
        Reply::bash(
            "skill create release-notes --description 'How to write release notes.' --body 'Version one of the notes.'",
        ),
        Reply::bash("skill edit release-notes --description 'How to write good release notes, with a template.'"),
        Reply::bash(
            "printf 'Version two: start with the template.\\n' > two.md && skill edit release-notes --body-file two.md",
        ),
        Reply::bash("skill show release-notes"),
        Reply::bash("skill edit aos --body 'hijacked'"),
        Reply::bash("skill edit no-such-skill --body x"),
        Reply::text("edited"),
    ]);
    let events = run(&kernel.admin, &session, "keep the notes skill up to date").await;
    let results = tool_results(&events);
    assert_eq!(results.len(), 6, "{results:?}");
    for r in &results[..4] {
        assert_eq!(r.exit_code, Some(0), "{r:?}");
    }
    assert!(
        results[1].preview.contains("updated release-notes"),
        "{:?}",
        results[1]
    );
    // An edit of the description alone keeps the body; one of the body alone keeps the
    // (edited) description.
    let detail = kernel
        .admin
        .ok("skill.get", json!({"name": "release-notes"}))
        .await;
    assert_eq!(
        detail["manifest"]["description"],
        "How to write good release notes, with a template."
    );
    assert_eq!(
        detail["text"].as_str().unwrap().trim(),
        "Version two: start with the template."
    );
    assert!(
        results[3].preview.contains("Version two")
            && results[3].preview.contains("good release notes"),
        "{:?}",
        results[3]
    );
    // Bundled skills are read-only, unknown ones are named: both bad usage, nothing changed.
    assert_eq!(results[4].exit_code, Some(2), "{:?}", results[4]);
    assert!(results[4].preview.contains("read-only"), "{:?}", results[4]);
    assert_ne!(skill_text(&kernel, "aos").await.trim(), "hijacked");
    assert_eq!(results[5].exit_code, Some(2), "{:?}", results[5]);
    assert!(
        results[5].preview.contains("no skill named"),
        "{:?}",
        results[5]
    );
    // Loaded into another session now, the edited text is what it gets.
    let (_, other) = kernel.admin.agent_and_session().await;
    kernel
        .admin
        .ok(
            "skill.load",
            json!({"sessionId": other, "name": "release-notes"}),
        )
        .await;
    let h = history(&kernel.admin, &other).await;
    let loaded = h
        .iter()
        .rev()
        .find(|m| m["parts"][0]["type"] == "skill-load")
        .unwrap();
    assert_eq!(loaded["parts"][0]["name"], "release-notes");
    assert!(
        loaded["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Version two"),
        "{loaded}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_denying_an_ask_refuses_the_command_and_the_model_sees_why() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let workspace = kernel.home.join("workspaces").join(&agent);
    kernel
        .admin
        .ok(
            "session.update",
            json!({"sessionId": session, "metadata": {"aos-guard": {"rules": [
                {"name": "ask-deploy", "action": "ask", "pattern": "touch deployed", "timeoutMs": 30000}
            ]}}}),
        )
        .await;
    llm.push([
        Reply::bash("touch deployed.txt"),
        Reply::text("I will not deploy."),
    ]);
    let started = kernel
        .admin
        .client
        .dispatch(&session, "deploy", false)
        .await
        .unwrap();
    let pending = eventually(Duration::from_secs(10), "a pending ask", || {
        let api = kernel.admin.clone();
        async move {
            let p = api.ok("aos-guard.pending", json!({})).await;
            p["items"].as_array().unwrap().first().cloned()
        }
    })
    .await;
    assert_eq!(pending["command"], "touch deployed.txt");
    let decided = kernel
        .admin
        .ok(
            "aos-guard.decide",
            json!({"id": pending["id"], "decision": "deny", "reason": "not on a Friday"}),
        )
        .await;
    assert_eq!(decided["decision"], "deny");
    let events = aos_tests::dispatching::collect(&kernel.admin, &started.dispatch_id).await;
    assert_eq!(done(&events).answer.as_deref(), Some("I will not deploy."));
    let refused = tool_results(&events).remove(0);
    let why = refused.error_text.clone().unwrap_or_default();
    assert!(
        why.contains("ask-deploy (session)")
            && why.contains("denied by")
            && why.contains("not on a Friday"),
        "{refused:?}"
    );
    assert!(!workspace.join("deployed.txt").exists(), "the command ran");
    // What the model got back names the rule and the person's reason.
    let seen = last_tool_contents(&llm);
    assert!(
        seen[0].contains("ask-deploy") && seen[0].contains("not on a Friday"),
        "{seen:?}"
    );
    // Decided once: a second decision finds nothing waiting.
    kernel
        .admin
        .err(
            "aos-guard.decide",
            json!({"id": pending["id"], "decision": "allow"}),
            ErrorCode::NotFound,
        )
        .await;
    let rows = kernel
        .admin
        .ok(
            "log.list",
            json!({"operation": "tool.admission", "sessionId": session}),
        )
        .await;
    let row = rows.as_array().unwrap().last().unwrap();
    assert_eq!(row["outcome"], "rejected");
    assert!(
        row["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("not on a Friday"),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_automatic_compaction_leaves_the_session_unchanged_and_the_turn_goes_on() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    kernel
        .admin
        .ok("system.update", json!({"compactionThreshold": 3000}))
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;
    let long_answer: String = (0..900).map(|i| format!("step{i} ")).collect();
    let answer = long_answer.clone();
    // Every summary call (no tools) fails, retries included; other calls answer long.
    llm.rule(move |body| {
        if body.get("tools").is_none() {
            Reply::Error {
                status: 500,
                retry_after: Some(0.01),
            }
            .into()
        } else {
            Reply::text(&answer).into()
        }
    });
    let summary_calls = |llm: &ScriptedLlm| {
        llm.requests()
            .iter()
            .filter(|b| b.get("tools").is_none())
            .count()
    };
    let mut dispatches = 0;
    let mut before = history(&kernel.admin, &session).await;
    loop {
        dispatches += 1;
        assert!(
            dispatches <= 8,
            "no compaction attempt after 8 long dispatches"
        );
        let sent = llm.count();
        let events = run(&kernel.admin, &session, &format!("task {dispatches}")).await;
        let done = done(&events);
        if summary_calls(&llm) > 0 {
            // The turn went on with the full context and answered.
            assert_eq!(
                done.status,
                aos_sdk::protocol::DispatchStatus::Done,
                "{events:?}"
            );
            assert_eq!(done.answer.as_deref(), Some(long_answer.trim()));
            // 1 + maxRetries (3) summary attempts, then the model call.
            assert_eq!(llm.count() - sent, 5, "summary attempts + the turn");
            break;
        }
        before = history(&kernel.admin, &session).await;
    }
    let after = history(&kernel.admin, &session).await;
    // History: what it was, plus the user message and the answer; no marker, no summary.
    assert_eq!(after.len(), before.len() + 2);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(
        after[before.len()]["parts"][0]["text"],
        format!("task {dispatches}")
    );
    assert_eq!(
        after[before.len() + 1]["parts"][0]["text"],
        long_answer.trim()
    );
    let types = part_types(&after);
    assert!(
        !types
            .iter()
            .any(|t| t == "compaction-marker" || t == "compaction-summary"),
        "{types:?}"
    );
    // The model call after the failed summary got every earlier task.
    let last = llm
        .requests()
        .into_iter()
        .rev()
        .find(|b| b.get("tools").is_some())
        .unwrap();
    let context = context_of(&last);
    for n in 1..=dispatches {
        assert!(
            context.iter().any(|m| m["content"] == format!("task {n}")),
            "task {n} is missing from the context"
        );
    }
    let s = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(s["phase"], "idle");
    assert!(s["lease"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_context_engine_the_model_gets_the_documented_neutral_projection() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-context"}))
        .await;
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": services[0]["serviceId"]}))
        .await;
    let append = |role: &str, parts: Value| {
        let api = kernel.admin.clone();
        let params = json!({"sessionId": session, "message": {"role": role, "parts": parts}});
        async move { api.ok("session.append", params).await }
    };
    let stored = kernel
        .admin
        .ok(
            "content.put",
            json!({"sessionId": session, "content": "big\noutput\nhere\n"}),
        )
        .await["contentId"]
        .as_str()
        .unwrap()
        .to_owned();
    append("user", json!([{"type": "text", "text": "please look"}])).await;
    append(
        "assistant",
        json!([
            {"type": "text", "text": "Looking."},
            {"type": "bash", "toolCallId": "call_a", "state": "output-available", "command": "ls",
             "output": {"visibleResult": "a.txt\n", "exitCode": 0}},
            {"type": "bash", "toolCallId": "call_b", "state": "output-error", "command": "false",
             "output": {"visibleResult": "", "exitCode": 1}, "errorText": "exit code 1"},
            {"type": "bash", "toolCallId": "call_c", "state": "output-available", "command": "cat big",
             "output": {"contentId": stored, "sizeChars": 16, "lineCount": 3, "preview": "big\n", "exitCode": 0}}
        ]),
    )
    .await;
    append(
        "assistant",
        json!([{"type": "error", "source": "provider", "message": "HTTP 500"}]),
    )
    .await;
    kernel
        .admin
        .ok(
            "session.interrupt",
            json!({"sessionId": session, "reason": "stop there"}),
        )
        .await;
    append(
        "user",
        json!([{"type": "compaction-marker", "auto": false, "fromSeq": 1, "toSeq": 8}]),
    )
    .await;
    append(
        "assistant",
        json!([{"type": "compaction-summary", "text": "We looked at a.txt."}]),
    )
    .await;
    kernel
        .admin
        .ok(
            "skill.unload",
            json!({"sessionId": session, "name": "aos-skill"}),
        )
        .await;
    llm.push([Reply::text("neutral answer")]);
    let events = run(&kernel.admin, &session, "what now?").await;
    assert_eq!(done(&events).answer.as_deref(), Some("neutral answer"));

    let body = &llm.requests()[0];
    // The system prompt says where the agent is and nothing more.
    let system = body["messages"][0]["content"].as_str().unwrap();
    let workspace = kernel.home.join("workspaces").join(&agent);
    for needle in [
        "You are t,".to_owned(),
        "`bash`".to_owned(),
        workspace.display().to_string(),
        session.clone(),
        "the `aos` skill".to_owned(),
    ] {
        assert!(
            system.contains(&needle),
            "`{needle}` missing from: {system}"
        );
    }
    // Tool calls carry their arguments as a JSON string; compare them parsed.
    let mut context = context_of(body);
    for message in &mut context {
        let calls = message.get_mut("tool_calls").and_then(Value::as_array_mut);
        for call in calls.into_iter().flatten() {
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            call["function"]["arguments"] = arguments;
        }
    }
    let call = |id: &str, command: &str| json!({"id": id, "type": "function", "function": {"name": "bash", "arguments": {"command": command}}});
    let expected = vec![
        json!({"role": "system", "content": format!("[[AOS-SKILL aos]]\n{}", skill_text(&kernel, "aos").await)}),
        json!({"role": "user", "content": "please look"}),
        json!({"role": "assistant", "content": "Looking.", "tool_calls": [
            call("call_a", "ls"), call("call_b", "false"), call("call_c", "cat big")
        ]}),
        json!({"role": "tool", "tool_call_id": "call_a", "content": "a.txt\n"}),
        json!({"role": "tool", "tool_call_id": "call_b", "content": "[exit code 1]"}),
        json!({"role": "tool", "tool_call_id": "call_c", "content": format!(
            "big\n\n[the full output (16 characters, 3 lines) is stored as {stored}: read it with `aos content read {stored}`]"
        )}),
        json!({"role": "system", "content": "[[AOS-ERROR provider]] HTTP 500"}),
        json!({"role": "system", "content": "[[AOS-INTERRUPT stop there]]"}),
        json!({"role": "system", "content": "[[AOS-SUMMARY]]\nWe looked at a.txt."}),
        json!({"role": "user", "content": "what now?"}),
    ];
    assert_eq!(
        context,
        expected,
        "the request:\n{}",
        serde_json::to_string_pretty(&context).unwrap()
    );
    // `session.context.get` shows the same, from the kernel, with no engine.
    let view = kernel
        .admin
        .ok("session.context.get", json!({"sessionId": session}))
        .await;
    assert_eq!(view["engine"], false);
    let shown = view["messages"].as_array().unwrap();
    assert_eq!(shown.len(), expected.len() + 1, "{view}");
    assert_eq!(shown[expected.len()]["content"], "neutral answer");
}
