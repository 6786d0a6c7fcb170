//! The kernel's hook call sites, exercised through a real kernel with in-process
//! handlers registered on its engine (service-backed handlers use the same engine).

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_kernel::auth::Caller;
use aos_kernel::auth::Owner;
use aos_kernel::hooks::{HookHandler, NewRegistration};
use aos_kernel::{Kernel, KernelConfig};
use aos_sdk::protocol::{Envelope, ErrorCode};
use async_trait::async_trait;
use serde_json::{Value, json};

/// Answers every call with `reply(hook, input, output)` and records the hook names.
struct Handler<F> {
    reply: F,
    calls: Arc<Mutex<Vec<String>>>,
}

impl<F> std::fmt::Debug for Handler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

#[async_trait]
impl<F> HookHandler for Handler<F>
where
    F: Fn(&str, &Value, &Value) -> Value + Send + Sync,
{
    async fn call(&self, hook: &str, input: &Value, output: &Value) -> Result<Value, String> {
        self.calls.lock().unwrap().push(hook.to_owned());
        Ok((self.reply)(hook, input, output))
    }
}

struct Fixture {
    kernel: Arc<Kernel>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let skills = dir.path().join("skills");
        for name in ["aos", "notes", "shell"] {
            std::fs::create_dir_all(skills.join(name)).unwrap();
            std::fs::write(
                skills.join(name).join("SKILL.md"),
                format!("---\nname: {name}\ndescription: the {name} skill\n---\n# {name}\n"),
            )
            .unwrap();
        }
        let mut config = KernelConfig::new(dir.path().join("home"), skills);
        config.port = 0;
        let running = aos_kernel::start(config).await.unwrap();
        let kernel = running.kernel.clone();
        // The HTTP side is not needed: calls go straight to the registry.
        drop(running);
        let fixture = Self { kernel, _dir: dir };
        fixture
            .ok("system.update", json!({"defaultSkills": [{"name": "aos", "load": "enable", "pinned": true}, {"name": "notes", "load": "enable"}]}))
            .await;
        fixture
    }

    fn register<F>(&self, hook: &str, skill: &str, reply: F) -> Arc<Mutex<Vec<String>>>
    where
        F: Fn(&str, &Value, &Value) -> Value + Send + Sync + 'static,
    {
        let calls = Arc::new(Mutex::new(Vec::new()));
        self.kernel
            .hooks
            .register(NewRegistration {
                hook: hook.into(),
                skill: skill.into(),
                service_id: format!("svc_{skill}"),
                owner: Owner::System,
                priority: 0,
                timeout: Duration::from_secs(1),
                interactive: false,
                handler: Arc::new(Handler {
                    reply,
                    calls: calls.clone(),
                }),
            })
            .unwrap();
        calls
    }

    async fn call(&self, op: &str, params: Value) -> Envelope {
        self.kernel.call(Caller::admin(), op, params).await
    }

    async fn ok(&self, op: &str, params: Value) -> Value {
        let envelope = self.call(op, params).await;
        assert!(envelope.ok, "{op}: {:?}", envelope.error);
        envelope.data.unwrap()
    }

    async fn agent_and_session(&self) -> (String, String) {
        let agent = self.ok("agent.create", json!({})).await;
        let agent_id = agent["agentId"].as_str().unwrap().to_owned();
        let session = self
            .ok("session.create", json!({"agentId": agent_id}))
            .await;
        (agent_id, session["sessionId"].as_str().unwrap().to_owned())
    }
}

fn text(session: &str, text: &str) -> Value {
    json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": text}]}})
}

#[tokio::test]
async fn before_write_can_refuse_an_append_and_nothing_is_stored() {
    let f = Fixture::start().await;
    let (_, session) = f.agent_and_session().await;
    f.register("session.message.beforeWrite", "redactor", |_, input, _| {
        let body = input["message"]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default();
        if body.contains("password") {
            json!({"action": "reject", "reason": "looks like a secret"})
        } else {
            json!({"action": "allow"})
        }
    });
    let before = f.ok("session.get", json!({"sessionId": session})).await["lastSeq"].clone();
    let refused = f
        .call("session.append", text(&session, "my password is hunter2"))
        .await;
    let error = refused.error.unwrap();
    assert_eq!(error.code, ErrorCode::HookRejected);
    assert!(
        error.message.contains("redactor") && error.message.contains("looks like a secret"),
        "{}",
        error.message
    );
    assert_eq!(
        f.ok("session.get", json!({"sessionId": session})).await["lastSeq"],
        before
    );
    f.ok("session.append", text(&session, "harmless")).await;
}

#[tokio::test]
async fn before_write_can_rewrite_the_message_that_is_stored() {
    let f = Fixture::start().await;
    let (_, session) = f.agent_and_session().await;
    f.register("session.message.beforeWrite", "redactor", |_, _, output| {
        let mut message = output["message"].clone();
        if message["parts"][0]["type"] == "text" {
            message["parts"][0]["text"] = json!("[redacted]");
        }
        json!({"action": "allow", "output": {"message": message}})
    });
    let appended = f.ok("session.append", text(&session, "secret")).await;
    let stored = f
        .ok(
            "session.history.get",
            json!({"sessionId": session, "seq": appended["seq"]}),
        )
        .await;
    assert_eq!(stored["parts"][0]["text"], "[redacted]");

    // A rewrite into something invalid is refused, naming the problem.
    f.register(
        "session.message.beforeWrite",
        "breaker",
        |_, _, _| json!({"action": "allow", "output": {"message": {"role": "robot", "parts": []}}}),
    );
    let error = f
        .call("session.append", text(&session, "x"))
        .await
        .error
        .unwrap();
    assert_eq!(error.code, ErrorCode::HookRejected);
    assert!(
        error.message.contains("invalid message"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_failed_bootstrap_names_the_session_it_left_initializing() {
    let f = Fixture::start().await;
    let agent = f.ok("agent.create", json!({})).await;
    f.register(
        "session.message.beforeWrite",
        "blocker",
        |_, _, _| json!({"action": "reject", "reason": "no writes today"}),
    );
    let error = f
        .call("session.create", json!({"agentId": agent["agentId"]}))
        .await
        .error
        .unwrap();
    assert_eq!(error.code, ErrorCode::HookRejected);
    let session = error.details.as_ref().unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.message.contains(&session) && error.message.contains("initializing"),
        "{}",
        error.message
    );
    let stuck = f.ok("session.get", json!({"sessionId": session})).await;
    assert_eq!(stuck["status"], "initializing");
    // Reads and archiving still work on it.
    f.ok("session.archive", json!({"sessionId": session})).await;
}

#[tokio::test]
async fn bootstrap_admission_refusals_store_nothing_and_skill_refusals_skip_the_skill() {
    let f = Fixture::start().await;
    let agent = f.ok("agent.create", json!({})).await;
    let calls = f.register("session.bootstrap.before", "gate", |_, input, _| {
        assert_eq!(input["plannedNames"], json!(["aos", "notes"]));
        json!({"action": "reject", "reason": "closed"})
    });
    let error = f
        .call("session.create", json!({"agentId": agent["agentId"]}))
        .await
        .error
        .unwrap();
    assert_eq!(error.code, ErrorCode::HookRejected);
    let sessions = f
        .ok("session.list", json!({"agentId": agent["agentId"]}))
        .await;
    assert!(
        sessions["items"].as_array().unwrap().is_empty(),
        "nothing stored"
    );
    assert_eq!(*calls.lock().unwrap(), vec!["session.bootstrap.before"]);

    let f = Fixture::start().await;
    f.register("skill.load.before", "picky", |_, input, _| {
        if input["name"] == "notes" {
            json!({"action": "reject", "reason": "not for you"})
        } else {
            json!({"action": "allow"})
        }
    });
    let (_, session) = f.agent_and_session().await;
    let history = f
        .ok("session.history.list", json!({"sessionId": session}))
        .await;
    let done = history["items"].as_array().unwrap().last().unwrap()["parts"][0].clone();
    assert_eq!(done["loaded"], json!(["aos"]));
    assert_eq!(done["skipped"][0]["name"], "notes");
    assert!(
        done["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not for you")
    );
    let explicit = f
        .call("skill.load", json!({"sessionId": session, "name": "notes"}))
        .await;
    assert_eq!(explicit.error.unwrap().code, ErrorCode::HookRejected);
}

#[tokio::test]
async fn discovery_hooks_shape_the_refreshed_catalog_but_not_the_listed_one() {
    let f = Fixture::start().await;
    f.register(
        "skill.discovery.before",
        "narrow",
        |_, _, _| json!({"action": "allow", "output": {"query": "skill"}}),
    );
    f.register("skill.discovery.resolve", "ranker", |_, input, _| {
        let names: Vec<Value> = input["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|c| c["name"].clone())
            .collect();
        json!({"output": {"selected": names[..2].to_vec()}})
    });
    let refreshed = f.ok("skill.catalog.refresh", json!({})).await;
    let names: Vec<&str> = refreshed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["shell", "notes"]);
    let listed = f.ok("skill.catalog.list", json!({})).await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "queries pass no hooks");
}

#[tokio::test]
async fn a_catalog_preview_runs_the_selection_but_no_admission_hook() {
    let f = Fixture::start().await;
    let admitted = f.register(
        "skill.discovery.before",
        "wall",
        |_, _, _| json!({"action": "reject", "reason": "no discovery today"}),
    );
    let selected = f.register("skill.discovery.resolve", "picker", |_, input, _| {
        assert_eq!(input["query"], "the");
        json!({"output": {"selected": ["aos"]}})
    });
    let (agent, session) = f.agent_and_session().await;
    let before = f.kernel.events.last_id();
    for params in [
        json!({"query": "the"}),
        json!({"query": "the", "agentId": agent}),
        json!({"query": "the", "sessionId": session}),
    ] {
        let preview = f.ok("skill.catalog.preview", params).await;
        assert_eq!(
            preview,
            json!([{"name": "aos", "description": "the aos skill"}])
        );
    }
    assert!(
        admitted.lock().unwrap().is_empty(),
        "a query runs no admission hook"
    );
    assert_eq!(selected.lock().unwrap().len(), 3);
    let announced: Vec<_> = f
        .kernel
        .events
        .subscribe(Some(before))
        .replay
        .iter()
        .map(|e| e.event.name.clone())
        .collect();
    assert!(
        !announced.iter().any(|n| n == "skill.discovery.after"),
        "a preview announces nothing: {announced:?}"
    );
    let refresh = f.call("skill.catalog.refresh", json!({})).await;
    assert_eq!(refresh.error.unwrap().code, ErrorCode::HookRejected);
    assert_eq!(admitted.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_index_refresh_can_be_refused_by_a_system_hook() {
    let f = Fixture::start().await;
    f.register("skill.index.refresh.before", "freeze", |_, input, _| {
        assert!(input["skillRoot"].as_str().unwrap().ends_with("skills"));
        json!({"action": "reject", "reason": "index frozen"})
    });
    let error = f
        .call("skill.index.refresh", json!({}))
        .await
        .error
        .unwrap();
    assert_eq!(error.code, ErrorCode::HookRejected);
}
