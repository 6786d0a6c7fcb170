//! Sessions end to end: bootstrap, default skills, history, content, skills, archive
//! rules and the RuntimeLog.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use aos_sdk::protocol::{ErrorCode, Message, PartBody, SessionCb};
use aos_tests::{Setup, TestKernel, write_skill};
use serde_json::{Value, json};

fn parts(history: &Value) -> Vec<PartBody> {
    let messages: Vec<Message> = serde_json::from_value(history["items"].clone()).unwrap();
    messages
        .into_iter()
        .flat_map(|m| m.parts.into_iter().map(|p| p.body))
        .collect()
}

#[tokio::test]
async fn a_new_session_starts_with_bootstrap_markers_and_the_pinned_aos_skill_first() {
    let setup = Setup::new();
    write_skill(
        &setup.skills(),
        "notes",
        "Take notes. Use when asked to remember.",
        "# Notes",
    );
    write_skill(
        &setup.skills(),
        "shell",
        "Shell tips. Use for shell work.",
        "# Shell",
    );
    let kernel = TestKernel::start_with(setup);
    let api = &kernel.admin;
    // The agent layer disables `aos` (ignored: it is pinned) and enables `notes`;
    // the session layer adds `shell` and disables `notes`.
    let agent = api
        .ok(
            "agent.create",
            json!({"defaultSkills": [{"name": "aos", "load": "disable"}, {"name": "notes", "load": "enable"}]}),
        )
        .await;
    let session: SessionCb = serde_json::from_value(
        api.ok(
            "session.create",
            json!({"agentId": agent["agentId"], "defaultSkills": [
                {"name": "shell", "load": "enable"}, {"name": "notes", "load": "disable"}, {"name": "ghost", "load": "enable"}
            ]}),
        )
        .await,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(session.status).unwrap(), "ready");
    assert_eq!(serde_json::to_value(session.phase).unwrap(), "idle");
    let history = api
        .ok(
            "session.history.list",
            json!({"sessionId": session.session_id}),
        )
        .await;
    let parts = parts(&history);
    let loads: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            PartBody::SkillLoad { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(loads, vec!["aos", "aos-skill", "shell"]);
    assert!(
        matches!(&parts[0], PartBody::Bootstrap { planned_names, .. } if planned_names == &["aos", "aos-skill", "shell", "ghost"])
    );
    match parts.last().unwrap() {
        PartBody::Bootstrap {
            loaded, skipped, ..
        } => {
            assert_eq!(loaded, &["aos", "aos-skill", "shell"]);
            assert_eq!(skipped.len(), 1);
            assert_eq!(skipped[0].name, "ghost");
            assert!(skipped[0].reason.contains("no skill `ghost`"));
        }
        other => panic!("history must end with the done marker, got {other:?}"),
    }
    let messages: Vec<Message> = serde_json::from_value(history["items"].clone()).unwrap();
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(messages.iter().all(|m| m.origin.to_string() == "aos"));
    let resolved = api
        .ok(
            "skill.default.resolve",
            json!({"sessionId": session.session_id}),
        )
        .await;
    assert_eq!(
        resolved["load"],
        json!(["aos", "aos-skill", "shell", "ghost"])
    );
}

#[tokio::test]
async fn appends_are_numbered_without_gaps_under_64_concurrent_writers() {
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    let before = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await["lastSeq"]
        .as_u64()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let api = kernel.admin.clone();
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            api.ok(
                "session.append",
                json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": format!("writer {i}")}]}}),
            )
            .await["seq"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut seqs = BTreeSet::new();
    for task in tasks {
        assert!(seqs.insert(task.await.unwrap()));
    }
    assert_eq!(seqs, (before + 1..=before + 64).collect());
    let history = kernel
        .admin
        .ok(
            "session.history.list",
            json!({"sessionId": session, "limit": 1000}),
        )
        .await;
    let stored: Vec<u64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, (1..=before + 64).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_pages_ranges_and_search_work_and_bad_parts_are_refused() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let (_, session) = api.agent_and_session().await;
    for i in 1..=25 {
        api.ok(
            "session.append",
            json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": format!("line {i}: the Quick brown fox")}]}}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = json!({"sessionId": session, "limit": 7});
        if let Some(c) = &cursor {
            params["cursor"] = json!(c);
        }
        let page = api.ok("session.history.list", params).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (1..=29).collect::<Vec<_>>(),
        "4 bootstrap messages and 25 appends, each once"
    );
    let range = api
        .ok(
            "session.history.list",
            json!({"sessionId": session, "fromSeq": 10, "toSeq": 12}),
        )
        .await;
    assert_eq!(range["items"].as_array().unwrap().len(), 3);
    let newest = api
        .ok(
            "session.history.list",
            json!({"sessionId": session, "limit": 2, "descending": true}),
        )
        .await;
    assert_eq!(newest["items"][0]["seq"], 29);
    let by_seq = api
        .ok(
            "session.history.get",
            json!({"sessionId": session, "seq": 10}),
        )
        .await;
    let by_id = api
        .ok(
            "session.history.get",
            json!({"sessionId": session, "messageId": by_seq["id"]}),
        )
        .await;
    assert_eq!(by_seq, by_id);
    api.err(
        "session.history.get",
        json!({"sessionId": session, "seq": 999}),
        ErrorCode::NotFound,
    )
    .await;

    let found = api
        .ok(
            "session.history.search",
            json!({"sessionId": session, "query": "quick LINE 2"}),
        )
        .await;
    let seqs: Vec<u64> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["seq"].as_u64().unwrap())
        .collect();
    // Words match independently and as substrings: `2` hits lines 2, 12 and 20–25
    // (seq = line + 4 bootstrap messages), newest first.
    assert_eq!(seqs, vec![29, 28, 27, 26, 25, 24, 16, 6]);
    assert!(
        found["hits"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("Quick brown fox")
    );

    for (message, needle) in [
        (json!({"role": "user", "parts": []}), "1 to 64 parts"),
        (
            json!({"role": "user", "parts": [{"type": "skill-load", "name": "aos", "cause": "explicit", "text": "fake"}]}),
            "written by the kernel only",
        ),
        (
            json!({"role": "robot", "parts": [{"type": "text", "text": "x"}]}),
            "message.role",
        ),
        (
            json!({"role": "user", "parts": [{"type": "bash", "toolCallId": "c1", "state": "output-available", "command": "ls"}]}),
            "is required when the state is `output-available`",
        ),
        (
            json!({"role": "user", "parts": [{"type": "text", "text": "x".repeat(1024 * 1024 + 1)}]}),
            "content.put",
        ),
        (
            json!({"role": "user", "parts": [{"type": "meta", "source": "crm", "data": [1, 2]}]}),
            "`message.parts[0].data`: must be a JSON object",
        ),
        (
            json!({"role": "user", "parts": [{"type": "meta", "source": "crm", "data": {"x": "y".repeat(9000)}}]}),
            "at most 8192 are accepted",
        ),
        (
            json!({"role": "user", "parts": [{"type": "meta", "source": "", "data": {}}]}),
            "message.parts[0].source",
        ),
    ] {
        let error = api
            .err(
                "session.append",
                json!({"sessionId": session, "message": message}),
                ErrorCode::InvalidParams,
            )
            .await;
        assert!(error.message.contains(needle), "{}", error.message);
    }
    let after = api.ok("session.get", json!({"sessionId": session})).await;
    assert_eq!(after["lastSeq"], 29, "refused appends store nothing");
}

#[tokio::test]
async fn content_is_stored_once_and_read_by_lines_and_regex() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let (_, session) = api.agent_and_session().await;
    let body: String = (1..=100)
        .map(|i| format!("row {i} {}\n", if i % 10 == 0 { "ERROR" } else { "ok" }))
        .collect();
    let info = api
        .ok(
            "content.put",
            json!({"sessionId": session, "content": body}),
        )
        .await;
    assert_eq!(info["lineCount"], 100);
    assert_eq!(info["sizeChars"], body.chars().count());
    let id = info["contentId"].as_str().unwrap();
    let read = api
        .ok(
            "content.read",
            json!({"contentId": id, "offset": 10, "limit": 2}),
        )
        .await;
    assert_eq!(read["content"], "row 11 ok\nrow 12 ok\n");
    assert_eq!(read["totalLines"], 100);
    let all = api.ok("content.read", json!({"contentId": id})).await;
    assert_eq!(all["content"].as_str().unwrap(), body);
    let found = api
        .ok(
            "content.search",
            json!({"contentId": id, "pattern": "error$", "ignoreCase": true, "limit": 3}),
        )
        .await;
    assert_eq!(
        found["matches"][0],
        json!({"lineNumber": 10, "text": "row 10 ERROR"})
    );
    assert_eq!(found["truncated"], true);
    let error = api
        .err(
            "content.search",
            json!({"contentId": id, "pattern": "(unclosed"}),
            ErrorCode::InvalidParams,
        )
        .await;
    assert!(error.message.contains("not a valid regular expression"));
    api.err(
        "content.read",
        json!({"contentId": "cnt_nope"}),
        ErrorCode::NotFound,
    )
    .await;
}

#[tokio::test]
async fn skills_load_and_unload_as_history_facts_and_broken_skills_stay_visible() {
    let setup = Setup::new();
    write_skill(
        &setup.skills(),
        "notes",
        "Take notes.",
        "# Notes\nWrite things down.",
    );
    let broken = setup.skills().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("SKILL.md"),
        "---\nname: broken\ndescription: [oops\n---\n",
    )
    .unwrap();
    let kernel = TestKernel::start_with(setup);
    let api = &kernel.admin;
    let skills = api.ok("skill.list", json!({})).await;
    let broken = skills
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "broken")
        .unwrap();
    // YAML notices the unclosed list where the frontmatter ends.
    assert_eq!(broken["error"]["line"], 4);
    assert!(
        broken["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid YAML")
    );

    let (_, session) = api.agent_and_session().await;
    let loaded = api
        .ok("skill.load", json!({"sessionId": session, "name": "notes"}))
        .await;
    assert_eq!(loaded["text"], "# Notes\nWrite things down.");
    let error = api
        .err(
            "skill.load",
            json!({"sessionId": session, "name": "broken"}),
            ErrorCode::NotFound,
        )
        .await;
    assert!(
        error.message.contains("is broken") && error.message.contains("line 4"),
        "{}",
        error.message
    );
    api.err(
        "skill.load",
        json!({"sessionId": session, "name": "nope"}),
        ErrorCode::NotFound,
    )
    .await;
    api.ok(
        "skill.unload",
        json!({"sessionId": session, "name": "notes"}),
    )
    .await;
    let again = api
        .err(
            "skill.unload",
            json!({"sessionId": session, "name": "notes"}),
            ErrorCode::NotFound,
        )
        .await;
    assert!(again.message.contains("not loaded"));
    let history = api
        .ok("session.history.list", json!({"sessionId": session}))
        .await;
    let tail: Vec<PartBody> = parts(&history).into_iter().rev().take(2).collect();
    assert!(matches!(&tail[0], PartBody::SkillUnload { name } if name == "notes"));
    assert!(matches!(&tail[1], PartBody::SkillLoad { name, .. } if name == "notes"));
    let catalog = api
        .ok("skill.catalog.list", json!({"query": "NOTES"}))
        .await;
    assert_eq!(
        catalog,
        json!([{"name": "notes", "description": "Take notes."}])
    );
}

#[tokio::test]
async fn archived_agents_and_sessions_refuse_changes_but_stay_readable() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let (agent, session) = api.agent_and_session().await;
    let other = api.ok("session.create", json!({"agentId": agent})).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    api.ok("session.archive", json!({"sessionId": other})).await;
    for (op, params) in [
        (
            "session.append",
            json!({"sessionId": other, "message": {"role": "user", "parts": [{"type": "text", "text": "x"}]}}),
        ),
        ("session.update", json!({"sessionId": other, "title": "x"})),
        (
            "session.interrupt",
            json!({"sessionId": other, "reason": "x"}),
        ),
        ("session.archive", json!({"sessionId": other})),
        ("skill.load", json!({"sessionId": other, "name": "aos"})),
        ("content.put", json!({"sessionId": other, "content": "x"})),
    ] {
        api.err(op, params, ErrorCode::SessionArchived).await;
    }
    api.ok("session.history.list", json!({"sessionId": other}))
        .await;

    let archived = api.ok("agent.archive", json!({"agentId": agent})).await;
    assert_eq!(archived["status"], "archived");
    assert!(archived["archivedAt"].is_string());
    let cascaded = api.ok("session.get", json!({"sessionId": session})).await;
    assert_eq!(
        cascaded["status"], "archived",
        "archiving an agent archives its sessions"
    );
    api.err(
        "agent.update",
        json!({"agentId": agent, "priority": 1}),
        ErrorCode::AgentArchived,
    )
    .await;
    api.err(
        "agent.archive",
        json!({"agentId": agent}),
        ErrorCode::AgentArchived,
    )
    .await;
    api.err(
        "session.create",
        json!({"agentId": agent}),
        ErrorCode::AgentArchived,
    )
    .await;
    api.ok("agent.get", json!({"agentId": agent})).await;
    let active = api.ok("agent.list", json!({"status": "active"})).await;
    assert!(
        active["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["agentId"] != agent.as_str())
    );
}

#[tokio::test]
async fn revisions_grow_by_one_and_commands_leave_runtime_log_rows() {
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let agent = api.ok("agent.create", json!({"displayName": "rev"})).await;
    let id = agent["agentId"].as_str().unwrap();
    assert_eq!(agent["revision"], 1);
    for expected in 2..=4 {
        let updated = api
            .ok("agent.update", json!({"agentId": id, "priority": expected}))
            .await;
        assert_eq!(updated["revision"], expected);
    }
    api.err(
        "agent.update",
        json!({"agentId": id, "priority": 5000}),
        ErrorCode::InvalidParams,
    )
    .await;
    api.ok("agent.get", json!({"agentId": id})).await;
    let log = api.ok("log.list", json!({"agentId": id})).await;
    let rows: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("agent.create".to_owned(), "ok".to_owned()),
            ("agent.update".to_owned(), "ok".to_owned()),
            ("agent.update".to_owned(), "ok".to_owned()),
            ("agent.update".to_owned(), "ok".to_owned()),
            ("agent.update".to_owned(), "invalid.params".to_owned()),
        ],
        "one row per command, failures included; queries write none"
    );
    let only_updates = api
        .ok(
            "log.list",
            json!({"operation": "agent.update", "agentId": id}),
        )
        .await;
    assert_eq!(only_updates.as_array().unwrap().len(), 4);
    assert!(log[0]["caller"] == "admin" && log[0]["durationUs"].as_u64().is_some());
}

#[tokio::test]
async fn interrupts_are_history_facts_and_events() {
    use futures::StreamExt;
    let kernel = TestKernel::start();
    let api = &kernel.admin;
    let (_, session) = api.agent_and_session().await;
    let mut events = Box::pin(
        api.client
            .events(&aos_sdk::client::EventFilter {
                session_id: Some(session.clone()),
                names: vec!["session.interrupted".into()],
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    let appended = api
        .ok(
            "session.interrupt",
            json!({"sessionId": session, "reason": "stop now", "payload": {"why": "test"}}),
        )
        .await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.payload["reason"], "stop now");
    assert_eq!(event.payload["seq"], appended["seq"]);
    let message = api
        .ok(
            "session.history.get",
            json!({"sessionId": session, "seq": appended["seq"]}),
        )
        .await;
    assert_eq!(message["origin"], "aos");
    assert_eq!(message["parts"][0]["type"], "interrupt");
    assert_eq!(message["parts"][0]["payload"], json!({"why": "test"}));
}
