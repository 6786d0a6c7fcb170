//! The service protocol without processes: a real kernel, services on in-memory pipes.
//! One test speaks raw JSON lines and checks the transcript against a snapshot (the
//! same transcript `docs/protocol.md` shows); another runs a Rust SDK service.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_kernel::auth::{Caller, Owner};
use aos_kernel::services::supervisor::serve_external;
use aos_kernel::{Kernel, KernelConfig};
use aos_sdk::protocol::service::Verdict;
use aos_sdk::rpc::line_transport;
use aos_sdk::service::Service;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

struct Fixture {
    kernel: Arc<Kernel>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let skills = dir.path().join("skills");
        std::fs::create_dir_all(skills.join("aos")).unwrap();
        std::fs::write(
            skills.join("aos/SKILL.md"),
            "---\nname: aos\ndescription: the manual\n---\n# aos\n",
        )
        .unwrap();
        let mut config = KernelConfig::new(dir.path().join("home"), skills);
        config.port = 0;
        let running = aos_kernel::start(config).await.unwrap();
        let kernel = running.kernel.clone();
        drop(running);
        kernel.services.set_accepting(true);
        Self { kernel, _dir: dir }
    }

    /// Connects an in-memory service for `owner`; returns the far end of the pipe.
    fn connect(&self, owner: Owner) -> DuplexStream {
        let (near, far) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(near);
        let (stream, sink) = line_transport(read, write, 1 << 20);
        tokio::spawn(serve_external(
            self.kernel.clone(),
            stream,
            sink,
            None,
            owner,
        ));
        far
    }

    async fn ok(&self, op: &str, params: Value) -> Value {
        let envelope = self.kernel.call(Caller::admin(), op, params).await;
        assert!(envelope.ok, "{op}: {:?}", envelope.error);
        envelope.data.unwrap()
    }
}

/// A raw client that records everything said, with volatile values replaced.
struct Raw {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
    write: tokio::io::WriteHalf<DuplexStream>,
    transcript: Arc<Mutex<String>>,
}

impl Raw {
    fn new(pipe: DuplexStream, transcript: Arc<Mutex<String>>) -> Self {
        let (read, write) = tokio::io::split(pipe);
        Self {
            lines: BufReader::new(read).lines(),
            write,
            transcript,
        }
    }

    async fn send(&mut self, frame: Value) {
        let text = frame.to_string();
        self.transcript
            .lock()
            .unwrap()
            .push_str(&format!("service → kernel  {}\n", normalize(&text)));
        self.write
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("no frame within 10 s")
            .unwrap()
            .expect("the kernel closed the connection");
        self.transcript
            .lock()
            .unwrap()
            .push_str(&format!("kernel → service  {}\n", normalize(&line)));
        serde_json::from_str(&line).unwrap()
    }

    /// Receives until a frame matches, recording everything.
    async fn recv_until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.recv().await;
            if want(&frame) {
                return frame;
            }
        }
    }
}

/// Replaces ids, times and sequence numbers, which differ on every run.
fn normalize(line: &str) -> String {
    let patterns = [
        (r"(agt|ses|svc|msg|prt|log)_[0-9a-f]{32}", "${1}_…"),
        (r#""ts":"[^"]+""#, r#""ts":"…""#),
        (r#""createdAt":"[^"]+""#, r#""createdAt":"…""#),
        (r#""startedAt":"[^"]+""#, r#""startedAt":"…""#),
        (r#""seq":1[0-9]{15}"#, r#""seq":…"#),
        (r#""kernelVersion":"[^"]+""#, r#""kernelVersion":"…""#),
    ];
    let mut out = line.to_owned();
    for (pattern, replacement) in patterns {
        out = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&out, replacement)
            .into_owned();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_session_in_raw_frames_matches_the_documented_transcript() {
    let f = Fixture::start().await;
    let transcript = Arc::new(Mutex::new(String::new()));

    // Anything before `hello` is refused; an unknown protocol version ends the talk.
    let mut raw = Raw::new(f.connect(Owner::System), transcript.clone());
    raw.send(json!({"jsonrpc": "2.0", "id": 1, "method": "register", "params": {}}))
        .await;
    let refused = raw.recv().await;
    assert_eq!(refused["error"]["code"], -32002);
    raw.send(json!({"jsonrpc": "2.0", "id": 2, "method": "hello", "params": {"protocol": 2, "skill": "demo"}}))
        .await;
    let refused = raw.recv().await;
    assert_eq!(refused["error"]["code"], -32003);
    assert!(
        raw.lines.next_line().await.unwrap().is_none(),
        "closed after a version mismatch"
    );

    transcript
        .lock()
        .unwrap()
        .push_str("--- a new connection\n");
    let mut raw = Raw::new(f.connect(Owner::System), transcript.clone());
    raw.send(json!({"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": 1, "skill": "demo", "sdk": "raw/1"}}))
        .await;
    let hello = raw.recv().await;
    let service_id = hello["result"]["instanceId"].as_str().unwrap().to_owned();

    // A registration with one bad hook changes nothing.
    raw.send(json!({"jsonrpc": "2.0", "id": 2, "method": "register", "params": {"hooks": [{"name": "tool.before"}, {"name": "tool.maybe"}]}}))
        .await;
    let refused = raw.recv().await;
    assert_eq!(refused["error"]["code"], -32602);
    assert_eq!(f.ok("hook.list", json!({})).await, json!([]));

    raw.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "register", "params": {
            "hooks": [{"name": "session.message.beforeWrite", "timeoutMs": 2000}],
            "events": ["session.started"],
            "ops": [{"name": "echo", "kind": "query", "description": "Answers with its params."}]
        }}),
    )
    .await;
    let registered = raw.recv().await;
    assert_eq!(registered["result"]["ops"], json!(["demo.echo"]));

    // The kernel asks the service: an operation call.
    let kernel = f.kernel.clone();
    let echo = tokio::spawn(async move {
        kernel
            .call(Caller::admin(), "demo.echo", json!({"text": "hi"}))
            .await
    });
    let call = raw.recv().await;
    assert_eq!(call["method"], "op");
    assert_eq!(call["params"]["caller"]["identity"], "admin");
    raw.send(
        json!({"jsonrpc": "2.0", "id": call["id"], "result": {"echoed": call["params"]["params"]}}),
    )
    .await;
    let echo = echo.await.unwrap();
    assert_eq!(echo.data.unwrap(), json!({"echoed": {"text": "hi"}}));

    // A session is created: each history write asks the hook; the event follows.
    let agent = f.ok("agent.create", json!({})).await;
    let kernel = f.kernel.clone();
    let agent_id = agent["agentId"].as_str().unwrap().to_owned();
    let created = tokio::spawn(async move {
        kernel
            .call(
                Caller::admin(),
                "session.create",
                json!({"agentId": agent_id}),
            )
            .await
    });
    let hook = raw.recv().await;
    assert_eq!(hook["method"], "hook");
    assert_eq!(hook["params"]["class"], "admission");
    raw.send(json!({"jsonrpc": "2.0", "id": hook["id"], "result": {"action": "allow"}}))
        .await;
    // The remaining writes of the bootstrap are allowed without being transcribed.
    let event = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), raw.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let frame: Value = serde_json::from_str(&line).unwrap();
        if frame["method"] == "hook" {
            let answer =
                json!({"jsonrpc": "2.0", "id": frame["id"], "result": {"action": "allow"}});
            raw.write
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
        } else {
            transcript
                .lock()
                .unwrap()
                .push_str(&format!("kernel → service  {}\n", normalize(&line)));
            break frame;
        }
    };
    assert_eq!(event["method"], "event");
    assert_eq!(event["params"]["name"], "session.started");
    assert!(created.await.unwrap().ok);

    // The service calls the kernel.
    raw.send(json!({"jsonrpc": "2.0", "id": 4, "method": "call", "params": {"op": "service.get", "params": {"serviceId": service_id}}}))
        .await;
    let answer = raw.recv_until(|f| f["id"] == 4).await;
    assert_eq!(answer["result"]["data"]["state"], "running");
    raw.send(json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
        .await;
    raw.recv_until(|f| f["id"] == 5).await;

    // Stopping it: `shutdown`, answered, and the registrations are gone.
    let kernel = f.kernel.clone();
    let stopping = tokio::spawn(async move {
        kernel
            .call(
                Caller::admin(),
                "skill.stop",
                json!({"serviceId": service_id}),
            )
            .await
    });
    let shutdown = raw.recv_until(|f| f["method"] == "shutdown").await;
    raw.send(json!({"jsonrpc": "2.0", "id": shutdown["id"], "result": {}}))
        .await;
    assert!(stopping.await.unwrap().ok);
    assert_eq!(f.ok("hook.list", json!({})).await, json!([]));
    let transcript = transcript.lock().unwrap().clone();
    insta::assert_snapshot!("protocol_transcript", transcript);
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    assert!(
        docs.contains(&transcript),
        "docs/protocol.md must show the transcript exactly as recorded; update its example"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_service_answers_for_its_owner_only_and_calls_with_its_authority() {
    let f = Fixture::start().await;
    let agent_a = f.ok("agent.create", json!({})).await["agentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_b = f.ok("agent.create", json!({})).await["agentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let session_b = f.ok("session.create", json!({"agentId": agent_b})).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let pipe = f.connect(Owner::Agent {
        agent_id: agent_a.clone(),
    });
    let (read, write) = tokio::io::split(pipe);
    let (stream, sink) = line_transport(read, write, 1 << 20);
    let started = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = started.clone();
    let service = Service::new("tagger")
        .on_hook(
            "session.message.beforeWrite",
            |_input, mut output| async move {
                let parts = output["message"]["parts"].as_array_mut().unwrap();
                for part in parts.iter_mut().filter(|p| p["type"] == "text") {
                    part["text"] = json!(format!("tagged: {}", part["text"].as_str().unwrap()));
                }
                Verdict::AllowWith(output)
            },
        )
        .on_event("session.started", move |event| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(event.session_id.unwrap_or_default());
            }
        });
    let client = service.client();
    let running = tokio::spawn(service.run_on(stream, sink));
    let owner = client.owner().await.unwrap();
    assert_eq!(owner.agent_id.as_deref(), Some(agent_a.as_str()));

    let session_a = f.ok("session.create", json!({"agentId": agent_a})).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let append = |session: String, text: &'static str| {
        let f = &f;
        async move {
            let appended = f
                .ok(
                    "session.append",
                    json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": text}]}}),
                )
                .await;
            f.ok(
                "session.history.get",
                json!({"sessionId": session, "seq": appended["seq"]}),
            )
            .await["parts"][0]["text"]
                .clone()
        }
    };
    assert_eq!(append(session_a.clone(), "one").await, "tagged: one");
    assert_eq!(append(session_b.clone(), "two").await, "two");
    // Events of other agents never reach it.
    let other = f.ok("session.create", json!({"agentId": agent_b})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while started.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*started.lock().unwrap(), vec![session_a.clone()]);
    assert_ne!(other["sessionId"], json!(session_a));

    // Its syscalls carry its authority: its agent's sessions yes, others no.
    client
        .call_ok("session.get", json!({"sessionId": session_a}))
        .await
        .unwrap();
    let denied = client
        .call_ok("session.get", json!({"sessionId": session_b}))
        .await
        .unwrap_err();
    assert_eq!(denied.code, aos_sdk::ErrorCode::PermissionDenied);

    // Gone with its connection: nothing of it stays registered.
    running.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let hooks = f.ok("hook.list", json!({})).await;
        if hooks == json!([]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hooks}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(append(session_a, "three").await, "three");
}
