//! Start-up recovery: bootstraps a crash interrupted are finished, sessions left
//! running by this node or under an expired lease get an interrupt fact and return to
//! idle, and sessions leased by a live node are left alone.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use aos_kernel::store::NewMessage;
use aos_sdk::protocol::{
    BootstrapPhase, Lease, Message, Origin, Part, PartBody, Role, SessionCb, SessionPhase,
    SessionStatus, Timestamp,
};
use aos_tests::{TestKernel, write_skill};
use serde_json::json;

fn session(
    id: &str,
    agent_id: &str,
    status: SessionStatus,
    phase: SessionPhase,
    lease: Option<Lease>,
) -> SessionCb {
    SessionCb {
        status,
        phase,
        lease,
        title: None,
        ..aos_kernel::store::conformance_fixtures::session(id, agent_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bootstraps_complete_and_stale_leases_are_released() {
    let kernel = TestKernel::start();
    write_skill(&kernel.skills, "notes", "Notes.", "# Notes");
    let (agent, ready) = kernel.admin.agent_and_session().await;
    let node_id = std::fs::read_to_string(kernel.home.join("node-id"))
        .unwrap()
        .trim()
        .to_owned();
    let setup = kernel.stop();

    // Simulate a crash: write states a dying kernel could leave behind.
    let store = aos_tests::open_store(&setup.config).await;
    store
        .insert_session(&session(
            "ses_halfboot",
            &agent,
            SessionStatus::Initializing,
            SessionPhase::Bootstrapping,
            None,
        ))
        .await
        .unwrap();
    store
        .append_message(&NewMessage {
            id: "msg_begin".into(),
            session_id: "ses_halfboot".into(),
            role: Role::User,
            origin: Origin::Aos,
            parts: vec![Part {
                id: "prt_begin".into(),
                body: PartBody::Bootstrap {
                    phase: BootstrapPhase::Begin,
                    planned_names: vec!["aos".into(), "notes".into()],
                    loaded: vec![],
                    skipped: vec![],
                },
            }],
            dispatch_id: None,
            created_at: Timestamp::now(),
        })
        .await
        .unwrap();
    let past = Timestamp::now().plus_millis(-60_000);
    let future = Timestamp::now().plus_millis(3_600_000);
    for (id, holder, expires) in [
        ("ses_mine", node_id.as_str(), future),
        ("ses_expired", "node_other", past),
        ("ses_live", "node_other", future),
    ] {
        let lease = Lease {
            id: format!("dsp_{id}"),
            holder: holder.into(),
            expires_at: expires,
        };
        store
            .insert_session(&session(
                id,
                &agent,
                SessionStatus::Ready,
                SessionPhase::Dispatched,
                Some(lease),
            ))
            .await
            .unwrap();
    }
    store.close().await;
    drop(store);

    let kernel = TestKernel::start_with(setup);
    let api = &kernel.admin;
    let finished = api
        .ok("session.get", json!({"sessionId": "ses_halfboot"}))
        .await;
    assert_eq!(
        (finished["status"].as_str(), finished["phase"].as_str()),
        (Some("ready"), Some("idle"))
    );
    let history: Vec<Message> = serde_json::from_value(
        api.ok("session.history.list", json!({"sessionId": "ses_halfboot"}))
            .await["items"]
            .clone(),
    )
    .unwrap();
    let kinds: Vec<String> = history
        .iter()
        .map(|m| match &m.parts[0].body {
            PartBody::SkillLoad { name, .. } => format!("load {name}"),
            other => other.kind().to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["bootstrap", "load aos", "load notes", "bootstrap"]
    );

    for id in ["ses_mine", "ses_expired"] {
        let s = api.ok("session.get", json!({"sessionId": id})).await;
        assert_eq!(s["phase"], "idle", "{id}");
        assert!(s.get("lease").is_none(), "{id}: {s}");
        let last = api
            .ok(
                "session.history.get",
                json!({"sessionId": id, "seq": s["lastSeq"]}),
            )
            .await;
        assert_eq!(last["parts"][0]["type"], "interrupt");
        assert_eq!(last["parts"][0]["reason"], "kernel restarted");
    }
    let live = api
        .ok("session.get", json!({"sessionId": "ses_live"}))
        .await;
    assert_eq!(
        live["phase"], "dispatched",
        "a live lease of another node is not taken over"
    );
    assert_eq!(live["lastSeq"], 0);
    // The session that was fine before is untouched.
    let untouched = api.ok("session.get", json!({"sessionId": ready})).await;
    assert_eq!(untouched["lastSeq"], 4);
    // Recovered sessions work.
    api.ok(
        "session.append",
        json!({"sessionId": "ses_halfboot", "message": {"role": "user", "parts": [{"type": "text", "text": "hello"}]}}),
    )
    .await;
}
