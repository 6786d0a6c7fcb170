//! The real `aos` binary: restarts, `kill -9`, signals, the home lock and the CLI.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aos_tests::{Api, SpawnedKernel, aos_command, repo_root, workdir};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Everything a client can read, as one JSON value.
async fn snapshot(api: &Api, content_ids: &[String]) -> Value {
    let agents = api.ok("agent.list", json!({"limit": 1000})).await;
    let sessions = api.ok("session.list", json!({"limit": 1000})).await;
    let mut histories = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for session in sessions["items"].as_array().unwrap() {
        let id = session["sessionId"].as_str().unwrap().to_owned();
        histories.insert(
            id.clone(),
            api.ok(
                "session.history.list",
                json!({"sessionId": id, "limit": 1000}),
            )
            .await,
        );
    }
    for content_id in content_ids {
        contents.insert(
            content_id.clone(),
            api.ok("content.read", json!({"contentId": content_id}))
                .await,
        );
    }
    json!({
        "system": api.ok("system.get", json!({})).await,
        "agents": agents,
        "sessions": sessions,
        "histories": histories,
        "contents": contents,
        "skills": api.ok("skill.list", json!({})).await,
    })
}

/// Agents, sessions with text and bash parts, content blobs and an archived agent;
/// returns the content ids.
async fn populate(api: &Api) -> Vec<String> {
    let mut content_ids = Vec::new();
    for a in 0..3 {
        let agent = api
            .ok(
                "agent.create",
                json!({"displayName": format!("agent {a}"), "metadata": {"n": a}}),
            )
            .await;
        for s in 0..2 {
            let session = api
                .ok(
                    "session.create",
                    json!({"agentId": agent["agentId"], "title": format!("s{s} ünïcødé 🚀")}),
                )
                .await;
            let id = session["sessionId"].as_str().unwrap();
            for m in 0..5 {
                api.ok(
                    "session.append",
                    json!({"sessionId": id, "message": {"role": "assistant", "parts": [
                        {"type": "text", "text": format!("message {m}\n\twith \"quotes\" and \\ backslashes")},
                        {"type": "bash", "toolCallId": format!("call_{m}"), "state": "output-available", "command": "echo hi",
                         "output": {"visibleResult": "hi\n", "exitCode": 0}}
                    ]}}),
                )
                .await;
            }
            let blob = format!("{}\nend without newline", "x".repeat(10_000));
            let content = api
                .ok("content.put", json!({"sessionId": id, "content": blob}))
                .await;
            content_ids.push(content["contentId"].as_str().unwrap().to_owned());
        }
    }
    let archived = api.ok("agent.create", json!({})).await;
    api.ok("agent.archive", json!({"agentId": archived["agentId"]}))
        .await;
    content_ids
}

#[test]
fn a_restart_keeps_every_agent_session_message_and_blob_byte_for_byte() {
    let dir = workdir();
    let rt = runtime();
    let mut content_ids = Vec::new();
    let before = {
        let kernel = SpawnedKernel::start(dir.path());
        rt.block_on(async {
            let api = &kernel.admin;
            content_ids = populate(api).await;
            snapshot(api, &content_ids).await
        })
    };
    let kernel = SpawnedKernel::start(dir.path());
    let after = rt.block_on(snapshot(&kernel.admin, &content_ids));
    assert_eq!(before, after);
}

#[test]
fn aos_migrate_moves_a_sqlite_home_to_postgresql_and_every_query_answers_the_same() {
    let dir = workdir();
    let rt = runtime();
    let mut content_ids = Vec::new();
    let (before, log_before, dispatches_before) = {
        let kernel = SpawnedKernel::start(dir.path());
        rt.block_on(async {
            let api = &kernel.admin;
            content_ids = populate(api).await;
            let log = api
                .ok("log.list", json!({"limit": 1000, "op": "session.append"}))
                .await;
            let dispatches = api.ok("dispatch.list", json!({"limit": 1000})).await;
            (snapshot(api, &content_ids).await, log, dispatches)
        })
    };
    let database = aos_tests::test_database();
    // The daemon is stopped (dropped); `aos migrate` copies its home.
    let migrated = aos_command(dir.path())
        .args(["migrate", "--to", &database.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        migrated.status.success(),
        "aos migrate failed: {stdout}{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(
        stdout.contains("history"),
        "the report lists the tables: {stdout}"
    );
    // A second copy into the same database is refused, and says why.
    let again = aos_command(dir.path())
        .args(["migrate", "--to", &database.url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(refused.contains("not empty"), "{refused}");

    // The same home on PostgreSQL (a fresh node id is fine: nothing is leased).
    std::fs::remove_file(dir.path().join(".aos").join("aos.db")).unwrap();
    let kernel = SpawnedKernel::start_with_env(
        dir.path(),
        &[],
        &[("AOS_DATABASE_URL", database.url.as_str())],
    );
    rt.block_on(async {
        let api = &kernel.admin;
        let nodes = api.ok("system.nodes.list", json!({})).await;
        assert_eq!(nodes["backend"], "postgres");
        assert_eq!(snapshot(api, &content_ids).await, before);
        assert_eq!(
            api.ok("log.list", json!({"limit": 1000, "op": "session.append"})).await,
            log_before
        );
        assert_eq!(api.ok("dispatch.list", json!({"limit": 1000})).await, dispatches_before);
        // Seqs go on from where they were.
        let sessions = api.ok("session.list", json!({"limit": 1})).await;
        let session = &sessions["items"][0];
        let next = api
            .ok("session.append", json!({"sessionId": session["sessionId"], "message": {"role": "user", "parts": [{"type": "text", "text": "after the move"}]}}))
            .await;
        assert_eq!(next["seq"].as_u64().unwrap(), session["lastSeq"].as_u64().unwrap() + 1);
    });
}

#[test]
fn kill_9_during_a_burst_of_appends_loses_no_acknowledged_append() {
    let dir = workdir();
    let rt = runtime();
    let mut kernel = SpawnedKernel::start(dir.path());
    let session = rt.block_on(async { kernel.admin.agent_and_session().await.1 });
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let api = kernel.admin.clone();
            let session = session.clone();
            let acked = acked.clone();
            rt.spawn(async move {
                for i in 0.. {
                    let text = format!("writer {w} message {i}");
                    let params = json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": text}]}});
                    match api.client.call("session.append", params).await {
                        Ok(envelope) if envelope.ok => {
                            let seq = envelope.data.unwrap()["seq"].as_u64().unwrap();
                            acked.lock().unwrap().push((seq, text));
                        }
                        // The kernel died: stop writing.
                        _ => break,
                    }
                }
            })
        })
        .collect();
    // Kill once a good number of appends were acknowledged, mid-burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kernel.signal(Signal::SIGKILL);
    kernel
        .wait_exit(Duration::from_secs(10))
        .expect("the kernel died");
    rt.block_on(async {
        for writer in writers {
            writer.await.unwrap();
        }
    });
    let acked = acked.lock().unwrap().clone();
    drop(kernel);

    let kernel = SpawnedKernel::start(dir.path());
    rt.block_on(async {
        let api = &kernel.admin;
        let last_seq = api.ok("session.get", json!({"sessionId": session})).await["lastSeq"].as_u64().unwrap();
        let mut stored = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = json!({"sessionId": session, "limit": 1000});
            if let Some(c) = &cursor {
                params["cursor"] = json!(c);
            }
            let page = api.ok("session.history.list", params).await;
            for message in page["items"].as_array().unwrap() {
                let text = message["parts"][0]["text"].as_str().unwrap_or_default().to_owned();
                stored.insert(message["seq"].as_u64().unwrap(), text);
            }
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(stored.keys().copied().collect::<Vec<_>>(), (1..=last_seq).collect::<Vec<_>>(), "no seq gaps");
        for (seq, text) in &acked {
            assert_eq!(stored.get(seq), Some(text), "acknowledged append at seq {seq} was lost");
        }
        // The session is still usable.
        let next = api
            .ok("session.append", json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": "after"}]}}))
            .await;
        assert_eq!(next["seq"].as_u64().unwrap(), last_seq + 1);
    });
}

#[test]
fn sigterm_shuts_down_gracefully_and_keeps_the_last_log_rows() {
    let dir = workdir();
    let rt = runtime();
    let mut kernel = SpawnedKernel::start(dir.path());
    let agent_id = rt.block_on(async {
        let agent = kernel
            .admin
            .ok("agent.create", json!({"displayName": "last"}))
            .await;
        agent["agentId"].as_str().unwrap().to_owned()
    });
    kernel.signal(Signal::SIGTERM);
    let status = kernel
        .wait_exit(Duration::from_secs(15))
        .expect("the kernel stops within 15 s");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        kernel.log()
    );
    assert!(
        !kernel.home.join("api.url").exists(),
        "the address file is removed on a clean stop"
    );
    assert!(kernel.log().contains("stopped"));
    drop(kernel);
    let kernel = SpawnedKernel::start(dir.path());
    rt.block_on(async {
        let rows = kernel
            .admin
            .ok("log.list", json!({"agentId": agent_id}))
            .await;
        assert_eq!(
            rows[0]["op"], "agent.create",
            "the row of the last command before SIGTERM was flushed"
        );
    });
}

#[test]
fn a_second_daemon_on_the_same_home_is_refused() {
    let dir = workdir();
    let _first = SpawnedKernel::start(dir.path());
    let output = aos_command(dir.path())
        .args(["up", "--port", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another AOS kernel is already using"),
        "{stderr}"
    );
}

#[test]
fn refuses_a_non_loopback_bind_without_allow_remote() {
    let dir = workdir();
    let output = aos_command(dir.path())
        .args(["up", "--port", "0", "--bind", "0.0.0.0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-remote"));
}

fn aos(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = aos_command(dir).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_cli_prints_envelopes_with_meaningful_exit_codes() {
    let dir = workdir();
    // Nothing running yet: exit 3 and still a JSON envelope on stdout.
    let (code, out, _) = aos(
        dir.path(),
        &["call", "agent.list", "--url", "http://127.0.0.1:9"],
    );
    assert_eq!(code, 3);
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envelope["ok"], false);
    assert!(
        envelope["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );

    let _kernel = SpawnedKernel::start(dir.path());
    let (code, out, _) = aos(
        dir.path(),
        &[
            "call",
            "agent.create",
            "--payload",
            r#"{"displayName": "cli"}"#,
        ],
    );
    assert_eq!(code, 0);
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["ok"], true);
    assert_eq!(created["data"]["displayName"], "cli");
    let (code, out, _) = aos(
        dir.path(),
        &["call", "agent.get", "--payload", r#"{"agentId": 1}"#],
    );
    assert_eq!(code, 1);
    let failed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(failed["error"]["code"], "invalid.params");
    let (code, out, _) = aos(dir.path(), &["call", "agent.list", "--payload", "[1]"]);
    assert_eq!(code, 2);
    assert!(out.contains("must be a JSON object"));
    std::fs::write(dir.path().join("p.json"), r#"{"limit": 5}"#).unwrap();
    let (code, _, _) = aos(dir.path(), &["call", "agent.list", "--payload", "@p.json"]);
    assert_eq!(code, 0);
    let (code, _, stderr) = aos(dir.path(), &["agent", "get", "agt_missing"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not_found"), "{stderr}");
    let (code, _, _) = aos(dir.path(), &["no-such-command"]);
    assert_eq!(code, 2);
}

#[test]
fn the_readme_tour_works() {
    let dir = workdir();
    let _kernel = SpawnedKernel::start(dir.path());
    let (code, status, _) = aos(dir.path(), &["status"]);
    assert_eq!(code, 0);
    assert!(status.contains("skills: 12 indexed, 0 broken"), "{status}");
    let (_, agent, _) = aos(dir.path(), &["agent", "create", "--name", "researcher"]);
    let agent = agent.trim();
    assert!(agent.starts_with("agt_"), "{agent}");
    let (_, session, _) = aos(
        dir.path(),
        &["session", "create", agent, "--title", "first steps"],
    );
    let session = session.trim();
    assert!(session.starts_with("ses_"));
    let (code, appended, _) = aos(
        dir.path(),
        &[
            "session",
            "append",
            session,
            "remember: the build runs on Fridays",
        ],
    );
    assert_eq!(code, 0, "{appended}");
    assert!(appended.contains("at seq 5"), "{appended}");
    let (_, history, _) = aos(dir.path(), &["session", "history", session]);
    let lines: Vec<String> = history
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        vec![
            "#1 user/aos [bootstrap begin] planned: aos, aos-skill".to_owned(),
            format!(
                "#2 user/aos [skill-load aos (default), {} chars]",
                skill_chars("aos")
            ),
            format!(
                "#3 user/aos [skill-load aos-skill (default), {} chars]",
                skill_chars("aos-skill")
            ),
            "#4 user/aos [bootstrap done] loaded: aos, aos-skill".to_owned(),
            "#5 user/human remember: the build runs on Fridays".to_owned(),
        ]
    );
    let (_, found, _) = aos(
        dir.path(),
        &["session", "search", "--session", session, "fridays"],
    );
    assert!(found.starts_with("#5"), "{found}");
    let (_, skills, _) = aos(dir.path(), &["skill", "list"]);
    assert!(skills.lines().nth(1).unwrap().starts_with("aos"));
    for skill in ["event-logger", "py-guard"] {
        let (code, started, stderr) = aos(dir.path(), &["skill", "start", skill]);
        assert_eq!(code, 0, "{started}{stderr}");
        assert!(started.contains("state:      running"), "{started}");
    }
    let (_, services, _) = aos(dir.path(), &["service", "list"]);
    assert_eq!(services.matches("running").count(), 9, "{services}");
    let (code, checked, _) = aos(
        dir.path(),
        &[
            "call",
            "py-guard.check",
            "--payload",
            r#"{"command": "rm -rf /"}"#,
        ],
    );
    assert_eq!(code, 0, "{checked}");
    let checked: Value = serde_json::from_str(&checked).unwrap();
    assert_eq!(checked["data"]["allowed"], false);
    let (code, recent, _) = aos(
        dir.path(),
        &[
            "call",
            "event-logger.recent",
            "--payload",
            r#"{"limit": 3}"#,
        ],
    );
    assert_eq!(code, 0, "{recent}");
    let (_, syscalls, _) = aos(dir.path(), &["syscalls"]);
    assert!(syscalls.contains("py-guard.check"), "{syscalls}");
    let (_, sessions, _) = aos(dir.path(), &["session", "list", "--agent", agent]);
    assert!(sessions.contains("ready") && sessions.contains("first steps"));
    let (_, log, _) = aos(dir.path(), &["log", "--limit", "100"]);
    assert!(log.contains("session.append"));
    let (_, version, _) = aos(dir.path(), &["version"]);
    assert_eq!(
        serde_json::from_str::<Value>(&version).unwrap()["name"],
        "aos"
    );
}

fn skill_chars(name: &str) -> usize {
    let text =
        std::fs::read_to_string(repo_root().join("skills").join(name).join("SKILL.md")).unwrap();
    let body = text.splitn(3, "---\n").nth(2).unwrap();
    body.trim().chars().count()
}

#[test]
fn the_syscall_reference_matches_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (code, markdown, _) = aos(dir.path(), &["syscalls", "--markdown"]);
    assert_eq!(code, 0);
    let committed =
        std::fs::read_to_string(repo_root().join("docs/syscalls.md")).unwrap_or_default();
    assert!(
        markdown == committed,
        "docs/syscalls.md is out of date; regenerate it with `cargo run -p aos-kernel -- syscalls --markdown > docs/syscalls.md`"
    );
}

#[test]
fn the_hook_reference_matches_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let (code, markdown, _) = aos(dir.path(), &["hooks", "--markdown"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(repo_root().join("docs/hooks.md")).unwrap_or_default();
    assert!(
        markdown == committed,
        "docs/hooks.md is out of date; regenerate it with `cargo run -p aos-kernel -- hooks --markdown > docs/hooks.md`"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = aos_command(dir.path())
        .args(["syscalls", "--markdown"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "# Syscalls (AOSCP)");
    // The reader is gone now, like `aos syscalls --markdown | head -1`.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_second_signal_forces_exit_while_draining() {
    use std::io::Write;
    let dir = workdir();
    let mut kernel = SpawnedKernel::start(dir.path());
    // A request whose body never finishes keeps the graceful drain waiting.
    let host = kernel.url.strip_prefix("http://").unwrap().to_owned();
    let mut stalled = std::net::TcpStream::connect(&host).unwrap();
    let token = std::fs::read_to_string(kernel.home.join("admin.token")).unwrap();
    write!(
        stalled,
        "POST /aoscp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"op\"\r\n",
        token.trim()
    )
    .unwrap();
    stalled.flush().unwrap();
    // Let the request reach its handler.
    std::thread::sleep(Duration::from_millis(200));
    kernel.signal(Signal::SIGTERM);
    assert!(
        kernel.wait_exit(Duration::from_millis(500)).is_none(),
        "the drain waits for the in-flight request"
    );
    kernel.signal(Signal::SIGINT);
    let status = kernel
        .wait_exit(Duration::from_secs(5))
        .expect("the second signal ends it at once");
    assert_eq!(status.code(), Some(130), "log:\n{}", kernel.log());
    assert!(kernel.log().contains("forced exit"));
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z')
}

fn running_services(rt: &tokio::runtime::Runtime, api: &Api, want: usize) -> Vec<(String, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = rt.block_on(api.ok("service.list", json!({"state": "running"})));
        let running: Vec<(String, u64)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["skill"].as_str().unwrap().to_owned(),
                    s["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        if running.len() >= want {
            return running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {running:?} running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn default_services_start_with_the_daemon_and_never_outlive_it() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("aoscb.json"),
        serde_json::to_string(&json!({
            "defaultSkills": [
                {"name": "aos", "load": "enable", "pinned": true},
                {"name": "py-guard", "start": "enable"},
                {"name": "event-logger", "start": "enable"},
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let rt = runtime();
    let mut kernel = SpawnedKernel::start(dir.path());
    let first = running_services(&rt, &kernel.admin, 2);
    let skills: Vec<&str> = first.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        skills.contains(&"py-guard") && skills.contains(&"event-logger"),
        "{first:?}"
    );
    kernel.signal(Signal::SIGKILL);
    kernel
        .wait_exit(Duration::from_secs(10))
        .expect("the kernel died");
    // With the kernel gone, its services see their socket close and exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while first.iter().any(|(_, pid)| alive(*pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "services outlived the killed kernel: {first:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(kernel);

    // A new daemon starts them again; a graceful stop stops them.
    let mut kernel = SpawnedKernel::start(dir.path());
    let second = running_services(&rt, &kernel.admin, 2);
    assert!(
        second
            .iter()
            .all(|(_, pid)| !first.iter().any(|(_, old)| old == pid))
    );
    kernel.signal(Signal::SIGTERM);
    let status = kernel
        .wait_exit(Duration::from_secs(20))
        .expect("graceful stop");
    assert!(status.success(), "{status:?}");
    assert!(
        second.iter().all(|(_, pid)| !alive(*pid)),
        "a graceful stop left services running: {second:?}"
    );
}

#[test]
fn kill_9_mid_dispatch_then_restart_leaves_the_session_idle_and_usable() {
    use aos_tests::llm::{Reply, ScriptedLlm};
    let llm = ScriptedLlm::start();
    let dir = workdir();
    std::fs::write(
        dir.path().join("aoscb.json"),
        serde_json::to_string(&json!({
            "defaultSkills": [{"name": "aos", "load": "enable", "pinned": true}],
            "providers": [{"name": "scripted", "baseUrl": llm.base_url}],
            "defaultModel": "scripted/m",
        }))
        .unwrap(),
    )
    .unwrap();
    let rt = runtime();
    let mut kernel = SpawnedKernel::start(dir.path());
    let (agent, session) = rt.block_on(kernel.admin.agent_and_session());
    llm.push([Reply::bash("echo $$ > shell.pid; sleep 600")]);
    let started = rt
        .block_on(kernel.admin.client.dispatch(&session, "work", false))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pid_file = dir
        .path()
        .join(".aos/workspaces")
        .join(&agent)
        .join("shell.pid");
    let shell: u64 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let user_seq = started.user_message_seq.unwrap();
    kernel.signal(Signal::SIGKILL);
    kernel
        .wait_exit(Duration::from_secs(10))
        .expect("the kernel died");
    drop(kernel);

    assert!(alive(shell), "the command died with the kernel by itself");
    let kernel = SpawnedKernel::start(dir.path());
    // The new kernel ended the command the killed one left running.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(shell) {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned command survived the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(async {
        let api = &kernel.admin;
        let session_cb = api.ok("session.get", json!({"sessionId": session})).await;
        assert_eq!(session_cb["phase"], "idle");
        assert!(session_cb.get("lease").is_none());
        let history = api
            .ok(
                "session.history.list",
                json!({"sessionId": session, "limit": 1000}),
            )
            .await;
        let items = history["items"].as_array().unwrap();
        // The acknowledged user message is there, followed by the restart's interrupt.
        assert!(
            items
                .iter()
                .any(|m| m["seq"] == user_seq && m["parts"][0]["text"] == "work")
        );
        let last = items.last().unwrap();
        assert_eq!(last["parts"][0]["type"], "interrupt");
        assert_eq!(last["parts"][0]["reason"], "kernel restarted");
        let record = api
            .ok("dispatch.get", json!({"dispatchId": started.dispatch_id}))
            .await;
        assert_eq!(record["status"], "interrupted");
        llm.push([Reply::text("fresh start")]);
        let again = api.client.dispatch(&session, "again", false).await.unwrap();
        let events: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
            api.client
                .dispatch_events(&again.dispatch_id)
                .await
                .unwrap(),
        )
        .await;
        match events.last() {
            Some(Ok(aos_sdk::protocol::StreamEvent::Done(done))) => {
                assert_eq!(done.answer.as_deref(), Some("fresh start"))
            }
            other => panic!("{other:?}"),
        }
    });
}

/// A work directory whose `aoscb.json` loads only the `aos` manual and names the
/// scripted server as the default provider (no other services start).
fn scripted_workdir(llm: &aos_tests::llm::ScriptedLlm, max_retries: u32) -> tempfile::TempDir {
    let dir = workdir();
    std::fs::write(
        dir.path().join("aoscb.json"),
        serde_json::to_string(&json!({
            "defaultSkills": [{"name": "aos", "load": "enable", "pinned": true}],
            "providers": [{"name": "scripted", "baseUrl": llm.base_url, "maxRetries": max_retries}],
            "defaultModel": "scripted/m",
        }))
        .unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn aos_run_prints_the_final_answer_and_its_exit_code_follows_the_dispatch() {
    use aos_tests::llm::{Reply, ScriptedLlm};
    let llm = ScriptedLlm::start();
    let dir = scripted_workdir(&llm, 0);
    let rt = runtime();
    let kernel = SpawnedKernel::start(dir.path());
    let agent = rt.block_on(
        kernel
            .admin
            .ok("agent.create", json!({"displayName": "runner"})),
    )["agentId"]
        .as_str()
        .unwrap()
        .to_owned();

    // An agent id: a new session, the bash call shown on stderr, the answer alone on
    // stdout.
    llm.push([
        Reply::bash("echo from-the-tool"),
        Reply::text("The answer is 42."),
    ]);
    let (code, out, err) = aos(dir.path(), &["run", &agent, "what is the answer?"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "The answer is 42.\n");
    assert!(err.contains("$ echo from-the-tool"), "{err}");
    assert!(err.contains("from-the-tool"), "{err}");
    let sessions = rt.block_on(kernel.admin.ok("session.list", json!({"agentId": agent})));
    let sessions = sessions["items"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = sessions[0]["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(sessions[0]["title"], "what is the answer?");
    // The model saw the tool's output before answering.
    let tool = llm.requests()[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap();
    assert_eq!(tool["content"], "from-the-tool\n");

    // `--quiet`: nothing on stderr; a session id reuses that session.
    llm.push([Reply::text("again")]);
    let (code, out, err) = aos(dir.path(), &["run", &session, "once more", "--quiet"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "again\n", ""));

    // `--json`: the dispatch record's envelope, and only it, on stdout.
    llm.push([Reply::text("as json")]);
    let (code, out, err) = aos(dir.path(), &["run", &session, "as json please", "--json"]);
    assert_eq!(code, 0, "{err}");
    let envelope: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(envelope["ok"], true);
    let record = &envelope["data"];
    assert_eq!(record["status"], "done");
    assert_eq!(record["sessionId"], json!(session));
    assert_eq!(record["turns"], 1);
    assert_eq!(record["model"], "scripted/m");
    assert!(record["usage"]["completionTokens"].as_u64().unwrap() > 0);
    let history = rt.block_on(kernel.admin.ok(
        "session.history.list",
        json!({"sessionId": session, "limit": 1000}),
    ));
    let last = history["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(record["finalMessageSeq"], last["seq"]);
    assert_eq!(last["parts"][0]["text"], "as json");

    // A dispatch that fails: exit code 1, the reason on stderr, no answer on stdout.
    llm.push([Reply::Error {
        status: 500,
        retry_after: None,
    }]);
    let (code, out, err) = aos(dir.path(), &["run", &session, "fail please"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "");
    assert!(
        err.contains("the dispatch ended failed") && err.contains("HTTP 500"),
        "{err}"
    );
    // The same with --json: the failed record on stdout, still exit code 1.
    llm.push([Reply::Error {
        status: 500,
        retry_after: None,
    }]);
    let (code, out, _) = aos(dir.path(), &["run", &session, "fail as json", "--json"]);
    assert_eq!(code, 1);
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envelope["data"]["status"], "failed");
    assert_eq!(envelope["data"]["error"]["code"], "provider.unavailable");

    // Neither an agent nor a session: bad usage; an unknown session: the kernel refuses.
    let (code, _, err) = aos(dir.path(), &["run", "nobody", "task"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = aos(dir.path(), &["run", "ses_missing", "task"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ses_missing"), "{err}");
}

#[test]
fn aos_chat_takes_each_line_of_stdin_as_a_dispatch_and_streams_the_answers() {
    use aos_tests::llm::{Reply, ScriptedLlm};
    use std::io::Write;
    let llm = ScriptedLlm::start();
    let dir = scripted_workdir(&llm, 0);
    let rt = runtime();
    let kernel = SpawnedKernel::start(dir.path());
    let (_, session) = rt.block_on(kernel.admin.agent_and_session());
    llm.push([
        Reply::text("First answer."),
        Reply::bash("echo chat-tool-output"),
        Reply::text("Second answer."),
    ]);
    let mut child = aos_command(dir.path())
        .args(["chat", &session])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Blank lines are skipped; `/exit` leaves before the last line is sent.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"first question\n\nsecond question\n/exit\nnever sent\n")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "aos chat did not leave"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains(&session), "{stderr}");
    // The answers streamed in order, with the tool call and its output between them.
    let first = stdout.find("First answer.").expect(&stdout);
    let call = stdout.find("$ echo chat-tool-output").expect(&stdout);
    let result = stdout[call + 2..].find("chat-tool-output").expect(&stdout) + call + 2;
    let second = stdout.find("Second answer.").expect(&stdout);
    assert!(first < call && call < result && result < second, "{stdout}");
    // Exactly two dispatches: the blank line and the line after `/exit` never went out.
    assert_eq!(llm.count(), 3);
    let history = rt.block_on(kernel.admin.ok(
        "session.history.list",
        json!({"sessionId": session, "limit": 1000}),
    ));
    let users: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user" && m["origin"] != "aos")
        .filter_map(|m| m["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(users, ["first question", "second question"]);
    let dispatches = rt.block_on(
        kernel
            .admin
            .ok("dispatch.list", json!({"sessionId": session})),
    );
    let items = dispatches
        .get("items")
        .unwrap_or(&dispatches)
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items.iter().all(|d| d["status"] == "done"), "{items:?}");
}

#[test]
fn the_environment_provider_overrides_the_file_and_reaches_the_server_it_names() {
    use aos_tests::llm::{Reply, ScriptedLlm};
    let in_file = ScriptedLlm::start();
    let in_env = ScriptedLlm::start();
    let dir = scripted_workdir(&in_file, 0);
    let rt = runtime();
    let kernel = SpawnedKernel::start_with_env(
        dir.path(),
        &[],
        &[
            ("AOS_LLM_BASE_URL", &in_env.base_url),
            ("AOS_LLM_MODEL", "env-model"),
            ("AOS_LLM_API_KEY", "sk-test-secret"),
            ("AOS_LLM_TOOL_MODE", "json"),
        ],
    );
    let (_, session) = rt.block_on(kernel.admin.agent_and_session());
    in_env.push([
        Reply::bash("echo key=${AOS_LLM_API_KEY:-none} base=${AOS_LLM_BASE_URL:-none}"),
        Reply::text("env works"),
    ]);
    rt.block_on(async {
        let api = &kernel.admin;
        let started = api
            .client
            .dispatch(&session, "who answers?", false)
            .await
            .unwrap();
        let events: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
            api.client
                .dispatch_events(&started.dispatch_id)
                .await
                .unwrap(),
        )
        .await;
        match events.last() {
            Some(Ok(aos_sdk::protocol::StreamEvent::Done(done))) => {
                assert_eq!(done.answer.as_deref(), Some("env works"), "{events:?}")
            }
            other => panic!("{other:?}"),
        }
        let record = api
            .ok("dispatch.get", json!({"dispatchId": started.dispatch_id}))
            .await;
        assert_eq!(record["model"], "env/env-model");
    });
    assert_eq!(in_file.count(), 0, "the file's provider was used");
    let requests = in_env.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "env-model");
    // AOS_LLM_TOOL_MODE=json: the constrained answer, no native tools.
    assert_eq!(requests[0]["response_format"]["type"], "json_schema");
    assert!(requests[0].get("tools").is_none());
    // The key goes to the provider as a bearer token, and never into bash.
    assert_eq!(
        in_env.authorizations(),
        [
            Some("Bearer sk-test-secret".to_owned()),
            Some("Bearer sk-test-secret".to_owned())
        ]
    );
    let output = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .find(|c| c.starts_with("Output of `"))
        .unwrap()
        .to_owned();
    assert!(output.contains("key=none base=none"), "{output}");
}
