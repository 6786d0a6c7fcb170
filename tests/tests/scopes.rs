//! Token scopes: what session, agent and service tokens can and cannot reach.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use aos_sdk::protocol::ErrorCode;
use aos_tests::TestKernel;
use serde_json::{Value, json};

async fn issue(kernel: &TestKernel, scope: Value) -> String {
    let issued = kernel
        .admin
        .ok("token.issue", json!({"scope": scope, "label": "test"}))
        .await;
    issued["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_session_token_reaches_its_own_session_and_nothing_of_other_agents() {
    let kernel = TestKernel::start();
    let (agent_a, session_a) = kernel.admin.agent_and_session().await;
    let (agent_b, session_b) = kernel.admin.agent_and_session().await;
    let token = issue(&kernel, json!({"kind": "session", "sessionId": session_a})).await;
    let me = kernel.api(Some(&token));

    // Its own session: read, append, search, load skills, store and read content.
    me.ok("session.get", json!({"sessionId": session_a})).await;
    me.ok(
        "session.append",
        json!({"sessionId": session_a, "message": {"role": "user", "parts": [{"type": "text", "text": "mine"}]}}),
    )
    .await;
    me.ok(
        "session.history.search",
        json!({"sessionId": session_a, "query": "mine"}),
    )
    .await;
    me.ok("skill.load", json!({"sessionId": session_a, "name": "aos"}))
        .await;
    let content = me
        .ok(
            "content.put",
            json!({"sessionId": session_a, "content": "x\ny\n"}),
        )
        .await;
    me.ok("content.read", json!({"contentId": content["contentId"]}))
        .await;
    me.ok("agent.get", json!({"agentId": agent_a})).await;
    me.ok("skill.list", json!({})).await;

    // The other agent: 403 on everything, reads included.
    let foreign_content = kernel
        .admin
        .ok(
            "content.put",
            json!({"sessionId": session_b, "content": "secret"}),
        )
        .await;
    for (op, params) in [
        ("session.get", json!({"sessionId": session_b})),
        ("session.history.list", json!({"sessionId": session_b})),
        (
            "session.history.search",
            json!({"sessionId": session_b, "query": "x"}),
        ),
        (
            "session.append",
            json!({"sessionId": session_b, "message": {"role": "user", "parts": [{"type": "text", "text": "intrude"}]}}),
        ),
        (
            "session.interrupt",
            json!({"sessionId": session_b, "reason": "nope"}),
        ),
        ("session.archive", json!({"sessionId": session_b})),
        ("skill.load", json!({"sessionId": session_b, "name": "aos"})),
        (
            "content.put",
            json!({"sessionId": session_b, "content": "x"}),
        ),
        (
            "content.read",
            json!({"contentId": foreign_content["contentId"]}),
        ),
        ("agent.get", json!({"agentId": agent_b})),
        ("agent.update", json!({"agentId": agent_b, "priority": 5})),
        ("session.list", json!({"agentId": agent_b})),
        ("usage.get", json!({"agentId": agent_b})),
        (
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session_b}}),
        ),
    ] {
        let error = me.err(op, params, ErrorCode::PermissionDenied).await;
        assert!(error.message.contains("may not"), "{op}: {}", error.message);
    }
    // System configuration, tokens, agents in general, the log.
    for (op, params) in [
        ("system.get", json!({})),
        ("system.update", json!({"maxTurns": 3})),
        ("token.list", json!({})),
        ("token.issue", json!({"scope": {"kind": "admin"}})),
        (
            "token.issue",
            json!({"scope": {"kind": "agent", "agentId": agent_a}}),
        ),
        ("token.revoke", json!({"tokenId": "tok_x"})),
        ("agent.create", json!({})),
        ("agent.update", json!({"agentId": agent_a, "priority": 100})),
        ("agent.archive", json!({"agentId": agent_a})),
        ("log.list", json!({})),
        ("skill.index.refresh", json!({})),
        ("session.create", json!({"agentId": agent_a})),
        (
            "session.update",
            json!({"sessionId": session_a, "priority": 999}),
        ),
    ] {
        me.err(op, params, ErrorCode::PermissionDenied).await;
    }
    // Listing is confined rather than refused.
    let agents = me.ok("agent.list", json!({})).await;
    let listed: Vec<&str> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![agent_a.as_str()]);
    let sessions = me.ok("session.list", json!({})).await;
    assert!(
        sessions["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["agentId"] == agent_a.as_str())
    );
    // Nothing of agent B was changed.
    let b_history = kernel
        .admin
        .ok("session.history.list", json!({"sessionId": session_b}))
        .await;
    assert!(
        b_history["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m.to_string().contains("intrude"))
    );
}

#[tokio::test]
async fn session_tokens_may_change_only_title_and_metadata_of_their_session() {
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    let token = issue(&kernel, json!({"kind": "session", "sessionId": session})).await;
    let me = kernel.api(Some(&token));
    let updated = me
        .ok(
            "session.update",
            json!({"sessionId": session, "title": "renamed", "metadata": {"k": 1}}),
        )
        .await;
    assert_eq!(updated["title"], "renamed");
    me.err(
        "session.update",
        json!({"sessionId": session, "model": "x/y"}),
        ErrorCode::PermissionDenied,
    )
    .await;
    me.err(
        "session.archive",
        json!({"sessionId": session}),
        ErrorCode::PermissionDenied,
    )
    .await;
    // A session token may mint another token for the same session, never a broader one.
    let child = me
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session}}),
        )
        .await;
    assert_eq!(child["scope"]["kind"], "session");
}

#[tokio::test]
async fn agent_tokens_cover_the_agent_and_its_sessions_only() {
    let kernel = TestKernel::start();
    let (agent_a, session_a) = kernel.admin.agent_and_session().await;
    let (_, session_b) = kernel.admin.agent_and_session().await;
    let token = issue(&kernel, json!({"kind": "agent", "agentId": agent_a})).await;
    let me = kernel.api(Some(&token));
    let created = me
        .ok(
            "session.create",
            json!({"agentId": agent_a, "title": "second"}),
        )
        .await;
    assert_eq!(created["status"], "ready");
    me.ok(
        "session.update",
        json!({"sessionId": session_a, "priority": 7}),
    )
    .await;
    me.ok(
        "agent.update",
        json!({"agentId": agent_a, "description": "mine"}),
    )
    .await;
    me.ok("usage.get", json!({"agentId": agent_a})).await;
    me.err(
        "session.get",
        json!({"sessionId": session_b}),
        ErrorCode::PermissionDenied,
    )
    .await;
    me.err("agent.create", json!({}), ErrorCode::PermissionDenied)
        .await;
}

#[tokio::test]
async fn revoked_and_expired_tokens_stop_working() {
    let kernel = TestKernel::start();
    let (_, session) = kernel.admin.agent_and_session().await;
    let issued = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session}}),
        )
        .await;
    let me = kernel.api(issued["token"].as_str());
    me.ok("session.get", json!({"sessionId": session})).await;
    kernel
        .admin
        .ok("token.revoke", json!({"tokenId": issued["tokenId"]}))
        .await;
    let error = me
        .err(
            "session.get",
            json!({"sessionId": session}),
            ErrorCode::Unauthenticated,
        )
        .await;
    assert!(error.message.contains("revoked"), "{}", error.message);

    let short = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session}, "ttlSeconds": 1}),
        )
        .await;
    let me = kernel.api(short["token"].as_str());
    me.ok("session.get", json!({"sessionId": session})).await;
    aos_tests::eventually(
        std::time::Duration::from_secs(5),
        "the token to expire",
        || async {
            let envelope = me.call("session.get", json!({"sessionId": session})).await;
            envelope
                .error
                .filter(|e| e.code == ErrorCode::Unauthenticated && e.message.contains("expired"))
        },
    )
    .await;
    // Listing shows tokens without their secrets.
    let tokens = kernel.admin.ok("token.list", json!({})).await;
    assert!(
        !tokens
            .to_string()
            .contains(issued["token"].as_str().unwrap())
    );
    assert_eq!(tokens.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn events_are_confined_to_the_token_scope() {
    use futures::StreamExt;
    let kernel = TestKernel::start();
    let (_, session_a) = kernel.admin.agent_and_session().await;
    let (_, session_b) = kernel.admin.agent_and_session().await;
    let token = issue(&kernel, json!({"kind": "session", "sessionId": session_a})).await;
    let me = kernel.api(Some(&token));
    let refused = me
        .client
        .events(&aos_sdk::client::EventFilter {
            session_id: Some(session_b.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused.err().and_then(|e| e.syscall().map(|b| b.code)),
        Some(ErrorCode::PermissionDenied)
    );
    let mut stream = Box::pin(me.client.events(&Default::default()).await.unwrap());
    for session in [&session_b, &session_a] {
        kernel
            .admin
            .ok(
                "session.append",
                json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": "hi"}]}}),
            )
            .await;
    }
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        event.session_id.as_deref(),
        Some(session_a.as_str()),
        "the first event it sees is its own"
    );
}
