//! Skills with services against a real kernel: hot reload of a dropped-in Python
//! service, the supervisor's timeouts, crash loops and shutdown, owner rights, service
//! operations, and hostile connections.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aos_sdk::protocol::ErrorCode;
use aos_tests::{Setup, TestKernel, eventually, write_python_skill};
use serde_json::{Value, json};

/// A Python service that rewrites every text part written to history with `prefix`.
fn rewriting_service(prefix: &str) -> String {
    format!(
        r#"
from aos_sdk import define_service

@define_service
def rewriter(ctx):
    def before_write(input, output):
        message = output["message"]
        for part in message["parts"]:
            if part.get("type") == "text":
                part["text"] = "{prefix}" + part["text"]
        return {{"action": "allow", "output": {{"message": message}}}}
    return {{"session.message.beforeWrite": before_write}}

if __name__ == "__main__":
    rewriter.run()
"#
    )
}

fn process_alive(pid: u64) -> bool {
    // A zombie has exited; only its exit status is left to collect.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z')
}

async fn append_text(kernel: &TestKernel, session: &str, text: &str) -> String {
    let appended = kernel
        .admin
        .ok(
            "session.append",
            json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": text}]}}),
        )
        .await;
    let message = kernel
        .admin
        .ok(
            "session.history.get",
            json!({"sessionId": session, "seq": appended["seq"]}),
        )
        .await;
    message["parts"][0]["text"].as_str().unwrap().to_owned()
}

async fn services_of(kernel: &TestKernel, skill: &str) -> Vec<Value> {
    kernel
        .admin
        .ok("service.list", json!({"skill": skill}))
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn running_pid(kernel: &TestKernel, skill: &str) -> Option<u64> {
    services_of(kernel, skill)
        .await
        .into_iter()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["pid"].as_u64())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_service_dropped_into_the_skill_root_goes_live_reloads_and_goes_away() {
    let kernel = TestKernel::start();
    kernel
        .admin
        .ok(
            "system.update",
            json!({"defaultSkills": [
                {"name": "aos", "load": "enable", "pinned": true},
                {"name": "drop-in", "start": "enable"},
            ]}),
        )
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;
    assert_eq!(append_text(&kernel, &session, "hello").await, "hello");

    // Dropped in: indexed, started (the defaults ask for it), its hook live.
    let dir = write_python_skill(&kernel.skills, "drop-in", &rewriting_service("v1:"));
    let first_pid = eventually(Duration::from_secs(15), "drop-in to run", || async {
        running_pid(&kernel, "drop-in").await
    })
    .await;
    let hooks = kernel
        .admin
        .ok("hook.list", json!({"hook": "session.message.beforeWrite"}))
        .await;
    assert_eq!(hooks[0]["skill"], "drop-in", "{hooks}");
    assert_eq!(append_text(&kernel, &session, "hello").await, "v1:hello");

    // Its service file edited: the new code answers, in a new process.
    std::fs::write(dir.join("service.py"), rewriting_service("v2:")).unwrap();
    eventually(
        Duration::from_secs(15),
        "the edited service to answer",
        || async { (append_text(&kernel, &session, "x").await == "v2:x").then_some(()) },
    )
    .await;
    let second_pid = running_pid(&kernel, "drop-in").await.unwrap();
    assert_ne!(first_pid, second_pid);
    assert!(!process_alive(first_pid), "the old process is gone");

    // Deleted: the process and the hook are gone, the skill is out of the index.
    std::fs::remove_dir_all(&dir).unwrap();
    eventually(Duration::from_secs(15), "drop-in to disappear", || async {
        services_of(&kernel, "drop-in")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the process to exit", || async {
        (!process_alive(second_pid)).then_some(())
    })
    .await;
    let hooks = kernel
        .admin
        .ok("hook.list", json!({"hook": "session.message.beforeWrite"}))
        .await;
    assert_eq!(hooks, json!([]));
    assert_eq!(append_text(&kernel, &session, "plain").await, "plain");
    let skills = kernel.admin.ok("skill.list", json!({})).await;
    assert!(
        !skills
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "drop-in")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_hook_costs_its_timeout_and_a_crash_loop_ends_failed_without_harming_others() {
    let setup = Setup::new();
    write_python_skill(
        &setup.skills(),
        "sleepy",
        r#"
import time
from aos_sdk import define_service, hook

@define_service
def sleepy(ctx):
    def before_write(input, output):
        if "PLEASE-HANG-NOW" in str(output):
            time.sleep(30)
        return None
    return {"session.message.beforeWrite": hook(before_write, timeout_ms=400)}

if __name__ == "__main__":
    sleepy.run()
"#,
    );
    write_python_skill(
        &setup.skills(),
        "crashy",
        "import sys\nprint('crashy: cannot find my config', file=sys.stderr)\nsys.exit(3)\n",
    );
    let kernel = TestKernel::start_with(setup);
    kernel
        .admin
        .ok("skill.start", json!({"name": "sleepy"}))
        .await;
    let (_, session) = kernel.admin.agent_and_session().await;

    // The hang costs the registration's 400 ms, and the write fails closed.
    let appending = {
        let admin = kernel.admin.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let error = admin
                .err(
                    "session.append",
                    json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": "PLEASE-HANG-NOW"}]}}),
                    ErrorCode::HookRejected,
                )
                .await;
            (started.elapsed(), error)
        })
    };
    // Meanwhile other syscalls are served.
    let other = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await;
    assert_eq!(other["sessionId"], session.as_str());
    let (elapsed, error) = appending.await.unwrap();
    assert!(
        error.message.contains("did not answer within 400 ms"),
        "{}",
        error.message
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(append_text(&kernel, &session, "fine").await, "fine");

    // The crash loop: restarted with backoff, then failed, every crash reported.
    let start = kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "crashy"}),
            ErrorCode::ServiceFailed,
        )
        .await;
    assert!(
        start.message.contains("exit status: 3") && start.message.contains("cannot find my config"),
        "{}",
        start.message
    );
    let failed = eventually(Duration::from_secs(30), "crashy to fail", || async {
        services_of(&kernel, "crashy")
            .await
            .into_iter()
            .find(|s| s["state"] == "failed")
    })
    .await;
    assert_eq!(failed["restarts"], 5, "{failed}");
    assert!(
        failed["lastError"]
            .as_str()
            .unwrap()
            .contains("cannot find my config")
    );
    // The other service never noticed.
    let sleepy = services_of(&kernel, "sleepy").await;
    assert_eq!(sleepy[0]["state"], "running");
    assert_eq!(sleepy[0]["restarts"], 0);

    // A failed service starts again on request.
    let error = kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "crashy"}),
            ErrorCode::ServiceFailed,
        )
        .await;
    assert!(
        error.message.contains("exit status: 3"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_exits_before_hello_says_how() {
    let setup = Setup::new();
    write_python_skill(
        &setup.skills(),
        "early-exit",
        "import sys\nsys.stderr.write('boom: the database is missing\\n')\nsys.exit(7)\n",
    );
    let skill_dir = setup.skills().join("silent");
    std::fs::create_dir_all(&skill_dir).unwrap();
    std::fs::write(
        skill_dir.join("SKILL.md"),
        "---\nname: silent\ndescription: never connects\nservice: sleep 60\n---\nbody\n",
    )
    .unwrap();
    let kernel = TestKernel::start_with(setup);
    let error = kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "early-exit"}),
            ErrorCode::ServiceFailed,
        )
        .await;
    assert!(
        error.message.contains("exit status: 7"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("before connecting")
            || error.message.contains("before saying hello"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("boom: the database is missing"),
        "{}",
        error.message
    );
    let started = Instant::now();
    let error = kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "silent"}),
            ErrorCode::ServiceFailed,
        )
        .await;
    assert!(
        error
            .message
            .contains("did not connect to its socket within 10 s"),
        "{}",
        error.message
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let silent = services_of(&kernel, "silent").await;
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": silent[0]["serviceId"]}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_a_service_that_ignores_shutdown_kills_its_process_group_after_the_grace() {
    let setup = Setup::new();
    // Speaks the protocol by hand, leaves a grandchild in its group, and never
    // answers `shutdown`.
    write_python_skill(
        &setup.skills(),
        "stubborn",
        r#"
import json, os, socket, subprocess
child = subprocess.Popen(["sleep", "600"])
with open(os.path.join(os.environ["AOS_DATA_DIR"], "child.pid"), "w") as f:
    f.write(str(child.pid))
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["AOS_SERVICE_SOCKET"])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": 1, "skill": "stubborn"}}).encode() + b"\n")
for line in s.makefile("rb"):
    pass
"#,
    );
    let home = setup.config.home.clone();
    let kernel = TestKernel::start_with(setup);
    let service = kernel
        .admin
        .ok("skill.start", json!({"name": "stubborn"}))
        .await;
    let pid = service["pid"].as_u64().unwrap();
    let child_pid: u64 = eventually(Duration::from_secs(5), "the grandchild's pid", || async {
        std::fs::read_to_string(home.join("data/stubborn/child.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    })
    .await;
    assert!(process_alive(pid) && process_alive(child_pid));
    let started = Instant::now();
    let stopped = kernel
        .admin
        .ok("skill.stop", json!({"serviceId": service["serviceId"]}))
        .await;
    let took = started.elapsed();
    assert_eq!(stopped["state"], "stopped");
    assert!(
        took >= Duration::from_millis(4500),
        "stop returned after {took:?}, before the grace period"
    );
    eventually(
        Duration::from_secs(5),
        "the process group to die",
        || async { (!process_alive(pid) && !process_alive(child_pid)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_operations_reach_the_nearest_owner_with_the_callers_identity() {
    let setup = Setup::new();
    write_python_skill(
        &setup.skills(),
        "whoami",
        r#"
import time
from aos_sdk import AosError, define_service

@define_service
def whoami(ctx):
    @ctx.op("me", "Who called, and which service answered.")
    def me(params, caller):
        return {"caller": caller, "owner": ctx.owner, "instance": ctx.instance_id}

    @ctx.op("note", "Append a note to the caller's session.", kind="command")
    def note(params, caller):
        return ctx.call("session.append", sessionId=params["sessionId"],
                        message={"role": "user", "parts": [{"type": "text", "text": params["text"]}]})

    @ctx.op("slow", "Takes too long.", timeout_ms=300)
    def slow(params, caller):
        time.sleep(3)
        return {}

    @ctx.op("fail", "Always refuses.")
    def fail(params, caller):
        raise AosError("permission.denied", "whoami refuses this caller")

    return {}

if __name__ == "__main__":
    whoami.run()
"#,
    );
    let kernel = TestKernel::start_with(setup);
    let (agent_a, session_a) = kernel.admin.agent_and_session().await;
    let (_agent_b, session_b) = kernel.admin.agent_and_session().await;
    kernel
        .admin
        .ok("skill.start", json!({"name": "whoami"}))
        .await;
    let agent_service = kernel
        .admin
        .ok(
            "skill.start",
            json!({"name": "whoami", "ownerType": "agent", "ownerId": agent_a}),
        )
        .await;
    let token = |session: String| {
        let admin = kernel.admin.clone();
        async move {
            admin
                .ok(
                    "token.issue",
                    json!({"scope": {"kind": "session", "sessionId": session}}),
                )
                .await["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let as_a = kernel.api(Some(&token(session_a.clone()).await));
    let as_b = kernel.api(Some(&token(session_b.clone()).await));

    let me = as_a.ok("whoami.me", json!({})).await;
    assert_eq!(me["caller"]["identity"], format!("session:{session_a}"));
    assert_eq!(me["caller"]["agentId"], agent_a.as_str());
    assert_eq!(me["instance"], agent_service["serviceId"]);
    let me = as_b.ok("whoami.me", json!({})).await;
    assert_eq!(me["owner"]["ownerType"], "system");
    assert_eq!(me["caller"]["kind"], "session");

    // A command op is logged, and the service's own syscalls carry its identity.
    let appended = as_a
        .ok(
            "whoami.note",
            json!({"sessionId": session_a, "text": "from whoami"}),
        )
        .await;
    let message = kernel
        .admin
        .ok(
            "session.history.get",
            json!({"sessionId": session_a, "seq": appended["seq"]}),
        )
        .await;
    assert_eq!(message["origin"], "skill:whoami");
    let log = kernel
        .admin
        .ok("log.list", json!({"operation": "whoami.note"}))
        .await;
    assert_eq!(log[0]["caller"], format!("session:{session_a}"));
    assert_eq!(log[0]["outcome"], "ok");

    // The agent-owned service (which answers agent A's callers) acts only within
    // its agent: its own syscalls are refused elsewhere.
    let error = as_a
        .err(
            "whoami.note",
            json!({"sessionId": session_b, "text": "sneaky"}),
            ErrorCode::PermissionDenied,
        )
        .await;
    assert!(error.message.contains(&session_b), "{}", error.message);

    let error = as_a.err("whoami.slow", json!({}), ErrorCode::Timeout).await;
    assert!(error.message.contains("300 ms"), "{}", error.message);
    let error = as_a
        .err("whoami.fail", json!({}), ErrorCode::PermissionDenied)
        .await;
    assert_eq!(error.message, "whoami refuses this caller");
    let listed: Vec<String> = kernel
        .admin
        .client
        .operations()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    for name in ["whoami.me", "whoami.note", "whoami.slow", "session.get"] {
        assert!(
            listed.iter().any(|n| n == name),
            "{name} missing from GET /aoscp"
        );
    }
    let unknown = kernel
        .admin
        .err("whoami.mee", json!({}), ErrorCode::NotFound)
        .await;
    assert!(unknown.message.contains("whoami.me"), "{}", unknown.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_levels_limit_registrations_and_service_authority() {
    let setup = Setup::new();
    write_python_skill(
        &setup.skills(),
        "boot-watcher",
        r#"
from aos_sdk import define_service

@define_service
def watcher(ctx):
    return {"aos.started": lambda event: None}

if __name__ == "__main__":
    watcher.run()
"#,
    );
    let kernel = TestKernel::start_with(setup);
    let (agent_a, session_a) = kernel.admin.agent_and_session().await;
    let (_, session_b) = kernel.admin.agent_and_session().await;

    // A session-owned service cannot subscribe to `aos.started`: its registration is
    // refused, it exits, and the reason is its last error.
    let _ = kernel
        .admin
        .call(
            "skill.start",
            json!({"name": "boot-watcher", "ownerType": "session", "ownerId": session_a}),
        )
        .await;
    let refused = eventually(Duration::from_secs(15), "the refusal", || async {
        services_of(&kernel, "boot-watcher")
            .await
            .into_iter()
            .find_map(|s| {
                s["lastError"]
                    .as_str()
                    .filter(|e| e.contains("permission denied"))
                    .map(str::to_owned)
            })
    })
    .await;
    assert!(
        refused.contains("a session-owned service cannot register `aos.started`"),
        "{refused}"
    );
    // The same skill owned by the system may.
    kernel
        .admin
        .ok("skill.start", json!({"name": "boot-watcher"}))
        .await;

    // An agent-owned service token acts for its agent only.
    let token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "service", "skill": "boot-watcher", "ownerType": "agent", "ownerId": agent_a}}),
        )
        .await;
    let service = kernel.api(Some(token["token"].as_str().unwrap()));
    service
        .ok("session.get", json!({"sessionId": session_a}))
        .await;
    service
        .err(
            "session.get",
            json!({"sessionId": session_b}),
            ErrorCode::PermissionDenied,
        )
        .await;
    service
        .err(
            "system.update",
            json!({"maxTurns": 3}),
            ErrorCode::PermissionDenied,
        )
        .await;
    service
        .err(
            "token.issue",
            json!({"scope": {"kind": "admin"}}),
            ErrorCode::PermissionDenied,
        )
        .await;
    service
        .err(
            "skill.start",
            json!({"name": "boot-watcher", "ownerType": "system"}),
            ErrorCode::PermissionDenied,
        )
        .await;
    let visible = service.ok("service.list", json!({})).await;
    assert!(!visible.as_array().unwrap().is_empty(), "{visible}");
    assert!(
        visible
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["owner"]["agentId"] == agent_a.as_str()),
        "{visible}"
    );
    // And a session token cannot reach services at all beyond its own session.
    let session_token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session_b}}),
        )
        .await;
    let session = kernel.api(Some(session_token["token"].as_str().unwrap()));
    assert_eq!(session.ok("service.list", json!({})).await, json!([]));
    session
        .err(
            "skill.start",
            json!({"name": "boot-watcher"}),
            ErrorCode::PermissionDenied,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_oversized_frames_and_half_closed_sockets_leave_the_kernel_serving() {
    let setup = Setup::new();
    // Attacks its own socket, records every answer, then half-closes and lingers.
    write_python_skill(
        &setup.skills(),
        "hostile",
        r#"
import json, os, socket, time
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["AOS_SERVICE_SOCKET"])
reader = s.makefile("rb")
answers = []
def send(raw):
    s.sendall(raw + b"\n")
    answers.append(json.loads(reader.readline()))
send(b"this is not json")
send(b'{"jsonrpc":"2.0","id":1,"method":"register","params":{}}')
send(b"x" * (17 * 1024 * 1024))
send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "hello", "params": {"protocol": 1, "skill": "hostile"}}).encode())
send(b'{"jsonrpc":"2.0","id":3,"method":"launch-missiles","params":{}}')
send(b'{"jsonrpc":"2.0","id":4,"method":"call","params":{"op":"session.list","params":{"limit":"many"}}}')
send(b'[1, 2, 3]')
with open(os.path.join(os.environ["AOS_DATA_DIR"], "answers.json"), "w") as f:
    json.dump(answers, f)
s.shutdown(socket.SHUT_WR)
time.sleep(30)
"#,
    );
    let home = setup.config.home.clone();
    let kernel = TestKernel::start_with(setup);
    let _ = kernel
        .admin
        .call("skill.start", json!({"name": "hostile"}))
        .await;
    let answers: Value = eventually(
        Duration::from_secs(20),
        "the hostile service's record",
        || async {
            std::fs::read_to_string(home.join("data/hostile/answers.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        },
    )
    .await;
    let codes: Vec<Value> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"]["code"].clone())
        .collect();
    assert_eq!(codes[0], -32700, "garbage: {answers}");
    assert_eq!(codes[1], -32002, "before hello: {answers}");
    assert_eq!(codes[2], -32600, "oversized: {answers}");
    assert!(
        answers[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("16777216"),
        "{answers}"
    );
    assert_eq!(
        answers[3]["result"]["owner"]["ownerType"], "system",
        "{answers}"
    );
    assert_eq!(codes[4], -32601, "unknown method: {answers}");
    assert_eq!(answers[5]["result"]["ok"], false, "bad params: {answers}");
    assert_eq!(answers[5]["result"]["error"]["code"], "invalid.params");
    assert_eq!(codes[6], -32600, "a batch: {answers}");
    // The half-closed connection counts as a crash of that service only.
    eventually(
        Duration::from_secs(10),
        "the half-close to be noticed",
        || async {
            services_of(&kernel, "hostile").await.into_iter().find(|s| {
                s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("closed its connection"))
            })
        },
    )
    .await;
    let health = kernel.admin.client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    kernel.admin.agent_and_session().await;
    let hostile = services_of(&kernel, "hostile").await;
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": hostile[0]["serviceId"]}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_example_service_keeps_recent_events() {
    let kernel = TestKernel::start();
    let service = kernel
        .admin
        .ok("skill.start", json!({"name": "event-logger"}))
        .await;
    assert_eq!(service["sdk"], "aos-sdk-rust/0.1.0");
    let (_, session) = kernel.admin.agent_and_session().await;
    let recent = eventually(
        Duration::from_secs(10),
        "session.started to be logged",
        || async {
            let recent = kernel
                .admin
                .ok("event-logger.recent", json!({"name": "session.started"}))
                .await;
            (recent["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["sessionId"] == session.as_str()))
            .then_some(recent)
        },
    )
    .await;
    assert!(recent["seen"].as_u64().unwrap() >= 1);
    let error = kernel
        .admin
        .err(
            "event-logger.recent",
            json!({"limit": 0}),
            ErrorCode::InvalidParams,
        )
        .await;
    assert!(error.message.contains("limit"), "{}", error.message);
}

/// A remote service over `/services`, written with the Rust SDK.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_service_over_websocket_serves_only_its_owner() {
    use aos_sdk::service::{Service, Verdict};
    let kernel = TestKernel::start();
    let (agent_a, session_a) = kernel.admin.agent_and_session().await;
    let (_, session_b) = kernel.admin.agent_and_session().await;
    let token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "service", "skill": "remote-tagger", "ownerType": "agent", "ownerId": agent_a}}),
        )
        .await;
    let url = format!("{}/services", kernel.url.replace("http://", "ws://"));
    let (stream, sink) =
        aos_sdk::service::connect_websocket(&url, token["token"].as_str().unwrap())
            .await
            .unwrap();
    let service = Service::new("remote-tagger").on_hook(
        "session.message.beforeWrite",
        |_input, mut output| async move {
            if let Some(text) = output["message"]["parts"][0].get_mut("text") {
                *text = Value::String(format!("[remote] {}", text.as_str().unwrap_or_default()));
            }
            Verdict::AllowWith(output)
        },
    );
    let running = tokio::spawn(service.run_on(stream, sink));
    eventually(
        Duration::from_secs(10),
        "the remote service to register",
        || async {
            let hooks = kernel
                .admin
                .ok("hook.list", json!({"hook": "session.message.beforeWrite"}))
                .await;
            (hooks.as_array().unwrap().len() == 1).then_some(())
        },
    )
    .await;
    assert_eq!(append_text(&kernel, &session_a, "hi").await, "[remote] hi");
    assert_eq!(append_text(&kernel, &session_b, "hi").await, "hi");
    let listed = services_of(&kernel, "remote-tagger").await;
    assert_eq!(listed[0]["transport"], "websocket");
    assert_eq!(listed[0]["owner"]["ownerId"], agent_a.as_str());

    // A second connection for the same skill and owner is refused.
    let (stream, sink) =
        aos_sdk::service::connect_websocket(&url, token["token"].as_str().unwrap())
            .await
            .unwrap();
    let second = Service::new("remote-tagger")
        .run_on(stream, sink)
        .await
        .unwrap_err()
        .to_string();
    assert!(second.contains("already has an active service"), "{second}");

    // Stopping it sends `shutdown`; the SDK's run ends and its hook is gone.
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": listed[0]["serviceId"]}))
        .await;
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(append_text(&kernel, &session_a, "bye").await, "bye");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_websocket_clients_leave_the_kernel_serving() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let kernel = TestKernel::start();
    let url = format!("{}/services", kernel.url.replace("http://", "ws://"));
    // Without a token: refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(refused.is_err());
    // A session token is not a service token.
    let (_, session) = kernel.admin.agent_and_session().await;
    let session_token = kernel
        .admin
        .ok(
            "token.issue",
            json!({"scope": {"kind": "session", "sessionId": session}}),
        )
        .await;
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", session_token["token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(request).await.is_err());

    let connect = || {
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", kernel.admin_token).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request)
    };
    let (mut socket, _) = connect().await.unwrap();
    socket.send(Message::text("garbage")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], -32700);
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], -32600);
    // An oversized message ends that connection, nothing else.
    let _ = socket
        .send(Message::text("y".repeat(17 * 1024 * 1024)))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the oversized connection stayed open");
    // A client that opens and vanishes mid-handshake.
    let (socket, _) = connect().await.unwrap();
    drop(socket);
    let raw = tokio::net::TcpStream::connect(kernel.url.trim_start_matches("http://"))
        .await
        .unwrap();
    drop(raw);
    assert_eq!(kernel.admin.client.health().await.unwrap().status, "ok");
    kernel.admin.agent_and_session().await;
}

/// A service that answers `skill.start.before` and `skill.stop.before`, recording every
/// call in `calls.jsonl` in its data directory. It rejects starts of skills named
/// `blocked…`, and every stop while `deny-stops` exists in its data directory.
const GATEKEEPER: &str = r#"
import json, os
from aos_sdk import define_service, reject

DATA = os.environ["AOS_DATA_DIR"]

@define_service
def gatekeeper(ctx):
    def record(kind, input):
        with open(os.path.join(DATA, "calls.jsonl"), "a") as f:
            f.write(json.dumps({"kind": kind, **input}) + "\n")
    def start_before(input, output):
        record("start", input)
        if input["skill"].startswith("blocked"):
            return reject("gatekeeper: blocked skills never start")
        return None
    def stop_before(input, output):
        record("stop", input)
        if os.path.exists(os.path.join(DATA, "deny-stops")):
            return reject("gatekeeper: stops are frozen")
        return None
    return {"skill.start.before": start_before, "skill.stop.before": stop_before}

if __name__ == "__main__":
    gatekeeper.run()
"#;

/// A service that registers nothing and waits.
const IDLE: &str = r#"
from aos_sdk import define_service

@define_service
def idle(ctx):
    return {}

if __name__ == "__main__":
    idle.run()
"#;

fn gatekeeper_calls(kernel: &TestKernel) -> Vec<Value> {
    std::fs::read_to_string(kernel.home.join("data/gatekeeper/calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn gatekeeper_saw(kernel: &TestKernel, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(15), what, || async {
        gatekeeper_calls(kernel).into_iter().find(|c| check(c))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn start_and_stop_admission_covers_reconcile_hot_reload_and_archive() {
    let setup = Setup::new();
    write_python_skill(&setup.skills(), "gatekeeper", GATEKEEPER);
    write_python_skill(&setup.skills(), "blocked", IDLE);
    write_python_skill(&setup.skills(), "keeper", IDLE);
    let kernel = TestKernel::start_with(setup);
    kernel
        .admin
        .ok("skill.start", json!({"name": "gatekeeper"}))
        .await;
    let deny_stops = kernel.home.join("data/gatekeeper/deny-stops");

    // skill.start asks, and a rejection is the caller's error.
    let error = kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "blocked"}),
            ErrorCode::HookRejected,
        )
        .await;
    assert!(error.message.contains("never start"), "{}", error.message);

    // Start reconcile (system defaults changed) asks too: nothing starts.
    let system = kernel.admin.ok("system.get", json!({})).await;
    let mut defaults = system["defaultSkills"].as_array().unwrap().clone();
    defaults.push(json!({"name": "blocked", "start": "enable"}));
    defaults.push(json!({"name": "blocked-late", "start": "enable"}));
    kernel
        .admin
        .ok("system.update", json!({"defaultSkills": defaults}))
        .await;
    gatekeeper_saw(&kernel, "reconcile to ask about `blocked`", |c| {
        c["kind"] == "start" && c["skill"] == "blocked" && c["cause"] == "default skills"
    })
    .await;
    assert_eq!(services_of(&kernel, "blocked").await, Vec::<Value>::new());

    // A skill appearing in the index (hot reload) is started through the same gate.
    write_python_skill(&kernel.skills, "blocked-late", IDLE);
    gatekeeper_saw(&kernel, "hot reload to ask about `blocked-late`", |c| {
        c["kind"] == "start" && c["skill"] == "blocked-late" && c["ownerType"] == "system"
    })
    .await;
    assert_eq!(
        services_of(&kernel, "blocked-late").await,
        Vec::<Value>::new()
    );

    // An agent-owned default service: started at agent.create (after asking).
    let agent = kernel
        .admin
        .ok(
            "agent.create",
            json!({"defaultSkills": [{"name": "keeper", "start": "enable"}]}),
        )
        .await;
    let agent_id = agent["agentId"].as_str().unwrap().to_owned();
    let keeper = eventually(Duration::from_secs(15), "keeper to run", || async {
        services_of(&kernel, "keeper")
            .await
            .into_iter()
            .find(|s| s["state"] == "running")
    })
    .await;
    assert_eq!(keeper["owner"]["ownerType"], "agent", "{keeper}");
    assert_eq!(keeper["owner"]["ownerId"], agent_id.as_str(), "{keeper}");
    let pid = keeper["pid"].as_u64().unwrap();
    gatekeeper_saw(&kernel, "agent reconcile to ask about `keeper`", |c| {
        c["kind"] == "start" && c["skill"] == "keeper" && c["ownerId"] == agent_id.as_str()
    })
    .await;

    // Archiving asks before it commits: a rejected stop rejects the archive.
    std::fs::write(&deny_stops, "").unwrap();
    let error = kernel
        .admin
        .err(
            "agent.archive",
            json!({"agentId": agent_id}),
            ErrorCode::HookRejected,
        )
        .await;
    assert!(error.message.contains("frozen"), "{}", error.message);
    let still = kernel
        .admin
        .ok("agent.get", json!({"agentId": agent_id}))
        .await;
    assert_eq!(still["status"], "active");
    assert_eq!(running_pid(&kernel, "keeper").await, Some(pid));

    // A skill removed from the index asks too; a rejected stop keeps the service.
    kernel
        .admin
        .ok("skill.start", json!({"name": "keeper"}))
        .await;
    std::fs::remove_dir_all(kernel.skills.join("keeper")).unwrap();
    gatekeeper_saw(&kernel, "removal to ask about `keeper`", |c| {
        c["kind"] == "stop" && c["skill"] == "keeper" && c["reason"] == "skill removed"
    })
    .await;
    let kept = services_of(&kernel, "keeper").await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|s| s["state"] == "running"), "{kept:?}");

    // Allowed again: the archive goes through and stops the agent's service.
    std::fs::remove_file(&deny_stops).unwrap();
    kernel
        .admin
        .ok("agent.archive", json!({"agentId": agent_id}))
        .await;
    gatekeeper_saw(&kernel, "the archive to ask about `keeper`", |c| {
        c["kind"] == "stop" && c["reason"] == "owner archived" && c["ownerId"] == agent_id.as_str()
    })
    .await;
    let agents_keeper = services_of(&kernel, "keeper")
        .await
        .into_iter()
        .find(|s| s["owner"]["ownerId"] == agent_id.as_str())
        .unwrap();
    assert_eq!(agents_keeper["state"], "stopped", "{agents_keeper}");
    eventually(
        Duration::from_secs(5),
        "the keeper process to exit",
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await;
}

/// Collects events from `stream` until `done` holds for what was collected.
async fn collect_events(
    stream: &mut (
             impl futures::Stream<Item = Result<aos_sdk::protocol::Event, aos_sdk::ClientError>> + Unpin
         ),
    limit: Duration,
    seen: &mut Vec<aos_sdk::protocol::Event>,
    done: impl Fn(&[aos_sdk::protocol::Event]) -> bool,
) {
    use futures::StreamExt;
    let deadline = Instant::now() + limit;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let names: Vec<_> = seen.iter().map(|e| e.name.as_str()).collect();
        let event = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {names:?}"))
            .expect("the stream is open")
            .expect("a well-formed event");
        seen.push(event);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_and_a_crash_loop_are_announced_on_events() {
    let setup = Setup::new();
    let dir = write_python_skill(&setup.skills(), "announced", &rewriting_service("a:"));
    write_python_skill(
        &setup.skills(),
        "crashy",
        "import sys\nprint('crashy: down again', file=sys.stderr)\nsys.exit(4)\n",
    );
    let kernel = TestKernel::start_with(setup);
    let filter = aos_sdk::client::EventFilter {
        names: vec!["skill.index.refresh.after".into(), "service.*".into()],
        ..Default::default()
    };
    let mut stream = Box::pin(kernel.admin.client.events(&filter).await.unwrap());
    let mut seen = Vec::new();
    let started = kernel
        .admin
        .ok("skill.start", json!({"name": "announced"}))
        .await;
    let service_id = started["serviceId"].as_str().unwrap().to_owned();
    let first_pid = started["pid"].as_u64().unwrap();
    let registered_by = |events: &[aos_sdk::protocol::Event], count: usize| {
        events
            .iter()
            .filter(|e| {
                e.name == "service.registered" && e.payload["serviceId"] == service_id.as_str()
            })
            .count()
            >= count
    };
    collect_events(&mut stream, Duration::from_secs(10), &mut seen, |e| {
        registered_by(e, 1)
    })
    .await;
    let registered = seen
        .iter()
        .find(|e| e.name == "service.registered")
        .unwrap();
    assert_eq!(
        registered.payload["hooks"],
        json!(["session.message.beforeWrite"]),
        "{:?}",
        registered.payload
    );

    // An edit of SKILL.md alone re-indexes the skill and restarts its service.
    std::fs::write(
        dir.join("SKILL.md"),
        "---\nname: announced\ndescription: edited description\nservice: ./service.py\n---\n# announced, edited\n",
    )
    .unwrap();
    collect_events(&mut stream, Duration::from_secs(15), &mut seen, |e| {
        e.iter().any(|e| {
            e.name == "skill.index.refresh.after" && e.payload["changed"] == json!(["announced"])
        }) && registered_by(e, 2)
    })
    .await;
    let skill = kernel
        .admin
        .ok("skill.get", json!({"name": "announced"}))
        .await;
    assert_eq!(
        skill["manifest"]["description"], "edited description",
        "{skill}"
    );
    assert!(
        skill["text"].as_str().unwrap().contains("edited"),
        "{skill}"
    );
    let service = kernel
        .admin
        .ok("service.get", json!({"serviceId": service_id}))
        .await;
    assert_eq!(service["state"], "running", "{service}");
    assert_ne!(service["pid"].as_u64().unwrap(), first_pid, "a new process");

    // A crash loop: restarting with backoff, then failed.
    kernel
        .admin
        .err(
            "skill.start",
            json!({"name": "crashy"}),
            ErrorCode::ServiceFailed,
        )
        .await;
    collect_events(&mut stream, Duration::from_secs(30), &mut seen, |e| {
        e.iter()
            .any(|e| e.name == "service.failed" && e.payload["skill"] == "crashy")
    })
    .await;
    let crashy: Vec<_> = seen
        .iter()
        .filter(|e| e.payload["skill"] == "crashy")
        .collect();
    let restarting = crashy
        .iter()
        .filter(|e| e.name == "service.restarting")
        .count();
    assert_eq!(
        restarting,
        5,
        "{:?}",
        crashy.iter().map(|e| &e.name).collect::<Vec<_>>()
    );
    let failed = crashy.iter().find(|e| e.name == "service.failed").unwrap();
    assert_eq!(failed.payload["crashes"], 6, "{:?}", failed.payload);
    assert!(
        failed.payload["lastError"]
            .as_str()
            .unwrap()
            .contains("down again")
    );
    assert!(crashy.iter().any(|e| e.name == "service.error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_runs_in_its_skill_directory_with_its_owner_in_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let dir = write_python_skill(
        &setup.skills(),
        "envy",
        r#"
import json, os, stat
from aos_sdk import define_service

socket_mode = stat.S_IMODE(os.stat(os.environ["AOS_SERVICE_SOCKET"]).st_mode)
with open(os.path.join(os.environ["AOS_DATA_DIR"], "env.json"), "w") as f:
    json.dump({
        "cwd": os.getcwd(),
        "skillDir": os.environ.get("AOS_SKILL_DIR"),
        "skillName": os.environ.get("AOS_SKILL_NAME"),
        "ownerType": os.environ.get("AOS_OWNER_TYPE"),
        "ownerId": os.environ.get("AOS_OWNER_ID"),
        "agentId": os.environ.get("AOS_AGENT_ID"),
        "socketMode": socket_mode,
        "apiToken": os.environ.get("AOS_API_TOKEN"),
    }, f)

@define_service
def envy(ctx):
    return {}

if __name__ == "__main__":
    envy.run()
"#,
    );
    let kernel = TestKernel::start_with(setup);
    let mode = std::fs::metadata(kernel.home.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token is {mode:o}");

    let (agent, _) = kernel.admin.agent_and_session().await;
    kernel
        .admin
        .ok(
            "skill.start",
            json!({"name": "envy", "ownerType": "agent", "ownerId": agent}),
        )
        .await;
    let env: Value = serde_json::from_str(
        &std::fs::read_to_string(kernel.home.join("data/envy/env.json")).unwrap(),
    )
    .unwrap();
    let canonical = |p: &Value| std::fs::canonicalize(p.as_str().unwrap()).unwrap();
    let skill_dir = std::fs::canonicalize(&dir).unwrap();
    assert_eq!(canonical(&env["cwd"]), skill_dir, "{env}");
    assert_eq!(canonical(&env["skillDir"]), skill_dir, "{env}");
    assert_eq!(env["skillName"], "envy");
    assert_eq!(env["ownerType"], "agent");
    assert_eq!(env["ownerId"], agent.as_str());
    assert_eq!(env["agentId"], agent.as_str());
    assert_eq!(env["socketMode"], 0o600, "{env}");
    assert_eq!(
        env["apiToken"],
        Value::Null,
        "the kernel's secrets stay out"
    );
}
