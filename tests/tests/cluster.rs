//! Several kernel processes on one PostgreSQL database (DESIGN §12): dispatches spread
//! over two nodes never overlap on a session and leave gap-free histories; a node
//! killed mid-dispatch loses its sessions to the other after the lease lifetime;
//! events, interrupts, streams and queued dispatches cross nodes; aos-memory on every
//! node keeps its facts in the shared database.
//!
//! Each test creates its own database (`AOS_TEST_POSTGRES_URL`), so runs never
//! collide; without a reachable PostgreSQL these tests fail, they do not skip.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aos_sdk::client::EventFilter;
use aos_sdk::protocol::{Dispatch, DispatchStatus, ErrorCode};
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{
    Api, SpawnedKernel, TestDatabase, dispatching, eventually, test_database, workdir,
};
use futures::StreamExt;
use serde_json::{Value, json};

const TOKEN: &str = "cluster-test-admin-token-0123456789";
/// Short leases so a dead node's sessions move within seconds.
const LEASE_TTL_MS: &str = "3000";

struct Cluster {
    database: Arc<TestDatabase>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn new() -> Self {
        Self {
            database: test_database(),
            dirs: Vec::new(),
        }
    }

    /// Starts one more node: its own home and skills, the shared database and token.
    fn node(&mut self) -> SpawnedKernel {
        self.nodes_at_once(1).pop().unwrap()
    }

    /// Starts `n` nodes at the same moment (on a fresh database they race to create
    /// the schema and the system block).
    fn nodes_at_once(&mut self, n: usize) -> Vec<SpawnedKernel> {
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| workdir()).collect();
        let starts: Vec<_> = dirs
            .iter()
            .map(|dir| {
                let (path, url) = (dir.path().to_owned(), self.database.url.clone());
                std::thread::spawn(move || start(&path, &url))
            })
            .collect();
        let kernels = starts.into_iter().map(|s| s.join().unwrap()).collect();
        self.dirs.extend(dirs);
        kernels
    }
}

fn start(dir: &Path, url: &str) -> SpawnedKernel {
    SpawnedKernel::start_with_env(
        dir,
        &[],
        &[
            ("AOS_DATABASE_URL", url),
            ("AOS_API_TOKEN", TOKEN),
            ("AOS_LEASE_TTL_MS", LEASE_TTL_MS),
        ],
    )
}

async fn configure(api: &Api, llm: &ScriptedLlm) {
    api.ok(
        "system.update",
        json!({
            "providers": [{"name": "scripted", "baseUrl": llm.base_url, "toolMode": "native", "maxRetries": 3, "maxConcurrent": 8}],
            "defaultModel": "scripted/test-model",
        }),
    )
    .await;
}

async fn session_on(api: &Api, agent: &str) -> String {
    let session = api.ok("session.create", json!({"agentId": agent})).await;
    let id = session["sessionId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the session is ready", || async {
        let s = api.ok("session.get", json!({"sessionId": id})).await;
        (s["status"] == "ready").then_some(())
    })
    .await;
    id
}

async fn dispatch_record(api: &Api, id: &str) -> Dispatch {
    serde_json::from_value(api.ok("dispatch.get", json!({"dispatchId": id})).await).unwrap()
}

async fn wait_ended(api: &Api, id: &str, limit: Duration) -> Dispatch {
    eventually(limit, "the dispatch ends", || async {
        let record = dispatch_record(api, id).await;
        record.status.is_terminal().then_some(record)
    })
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn two_nodes_run_200_dispatches_without_overlap_gaps_or_losses() {
    let rt = runtime();
    let llm = rt.block_on(async { ScriptedLlm::start() });
    llm.rule(|_| Reply::text("done here").into());
    llm.set_latency(Duration::from_millis(15));
    let mut cluster = Cluster::new();
    let mut nodes = cluster.nodes_at_once(2);
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    rt.block_on(async {
        configure(&a.admin, &llm).await;
        let agent = a.admin.ok("agent.create", json!({})).await["agentId"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut sessions = Vec::new();
        for i in 0..10 {
            let api = if i % 2 == 0 { &a.admin } else { &b.admin };
            sessions.push(session_on(api, &agent).await);
        }
        // 200 dispatches at once: each session gets 20, alternating between the nodes,
        // so every session is asked from both sides while it runs.
        let mut submits = Vec::new();
        for n in 0..200usize {
            let api = if n % 2 == 0 { a.admin.clone() } else { b.admin.clone() };
            let session = sessions[n % sessions.len()].clone();
            submits.push(tokio::spawn(async move {
                let started = api
                    .ok(
                        "session.dispatch",
                        json!({"sessionId": session, "message": {"role": "user", "content": format!("task {n}")}, "ifBusy": "queue"}),
                    )
                    .await;
                let id = started["dispatchId"].as_str().unwrap().to_owned();
                // Follow it to the end through the node it was given to (which may not
                // be the node that runs it).
                let events = dispatching::collect(&api, &id).await;
                (id, dispatching::done(&events).status)
            }));
        }
        let mut ids = Vec::new();
        for submit in submits {
            let (id, status) = submit.await.unwrap();
            assert_eq!(status, DispatchStatus::Done, "dispatch {id} ended {status:?}");
            ids.push(id);
        }
        assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 200);

        let mut nodes = BTreeSet::new();
        for session in &sessions {
            let page = a
                .admin
                .ok("dispatch.list", json!({"sessionId": session, "limit": 100}))
                .await;
            let records: Vec<Dispatch> =
                serde_json::from_value(page["items"].clone()).unwrap();
            assert_eq!(records.len(), 20, "dispatches of {session}");
            // No two dispatches of one session ran at once.
            let mut spans: Vec<(i64, i64, String)> = records
                .iter()
                .map(|d| {
                    assert_eq!(d.status, DispatchStatus::Done);
                    nodes.insert(d.node.clone().unwrap());
                    (
                        d.started_at.unwrap().as_millis(),
                        d.ended_at.unwrap().as_millis(),
                        d.dispatch_id.clone(),
                    )
                })
                .collect();
            spans.sort();
            for pair in spans.windows(2) {
                assert!(
                    pair[0].1 <= pair[1].0,
                    "{} and {} overlap on {session}",
                    pair[0].2,
                    pair[1].2
                );
            }
            // History: seq 1..=n without gaps, every dispatch's user message and answer
            // side by side, nothing lost.
            let history = dispatching::history(&a.admin, session).await;
            let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap in {session}");
            let mut by_dispatch: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for message in &history {
                if let Some(id) = message["dispatchId"].as_str() {
                    by_dispatch
                        .entry(id.to_owned())
                        .or_default()
                        .push(message["seq"].as_u64().unwrap());
                }
            }
            assert_eq!(by_dispatch.len(), 20, "messages of every dispatch in {session}");
            for (id, seqs) in &by_dispatch {
                assert_eq!(seqs.len(), 2, "{id}: its user message and its answer");
                assert_eq!(seqs[1], seqs[0] + 1, "{id} was interleaved with another dispatch");
            }
        }
        assert_eq!(nodes.len(), 2, "both nodes ran dispatches: {nodes:?}");
    });
}

#[test]
fn a_killed_node_loses_its_sessions_to_the_other_after_the_lease_ttl() {
    let rt = runtime();
    let llm = rt.block_on(async { ScriptedLlm::start() });
    // The first call hangs until the node running it is gone; later ones answer.
    llm.push([Reply::Hang]);
    llm.rule(|_| Reply::text("recovered").into());
    let mut cluster = Cluster::new();
    let mut a = cluster.node();
    let b = cluster.node();
    rt.block_on(async {
        configure(&a.admin, &llm).await;
        let (_, session) = a.admin.agent_and_session().await;
        let started = a
            .admin
            .ok(
                "session.dispatch",
                json!({"sessionId": session, "message": {"role": "user", "content": "hang"}}),
            )
            .await;
        let first = started["dispatchId"].as_str().unwrap().to_owned();
        eventually(
            Duration::from_secs(10),
            "the model call is in flight",
            || async { (llm.count() >= 1).then_some(()) },
        )
        .await;
        let held = b
            .admin
            .ok("session.get", json!({"sessionId": session}))
            .await;
        assert_eq!(held["phase"], "dispatched");
        // Node B refuses a second dispatch while A's lease lives, as A would.
        let busy = b
            .admin
            .err(
                "session.dispatch",
                json!({"sessionId": session, "message": {"role": "user", "content": "too soon"}}),
                ErrorCode::SessionBusy,
            )
            .await;
        assert!(busy.message.contains(&first), "{}", busy.message);

        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10)).expect("node A died");
        let killed_at = Instant::now();
        // After the lease lifetime, B takes the session over.
        let record = wait_ended(&b.admin, &first, Duration::from_secs(20)).await;
        let took = killed_at.elapsed();
        assert_eq!(record.status, DispatchStatus::Interrupted);
        assert!(
            record.error.as_ref().unwrap().message.contains("stopped"),
            "{:?}",
            record.error
        );
        let idle = eventually(Duration::from_secs(10), "the session is idle", || async {
            let s = b
                .admin
                .ok("session.get", json!({"sessionId": session}))
                .await;
            (s["phase"] == "idle").then_some(s)
        })
        .await;
        assert!(idle.get("lease").is_none_or(Value::is_null), "{idle}");
        let history = dispatching::history(&b.admin, &session).await;
        let fact = history
            .iter()
            .flat_map(|m| m["parts"].as_array().unwrap().clone())
            .find(|p| p["type"] == "interrupt")
            .expect("an interrupt fact");
        assert!(
            fact["reason"].as_str().unwrap().contains("stopped"),
            "{fact}"
        );
        eprintln!("node B recovered the session {took:?} after the kill (lease {LEASE_TTL_MS} ms)");

        // New dispatches succeed on the surviving node.
        let events = dispatching::run(&b.admin, &session, "again").await;
        let done = dispatching::done(&events);
        assert_eq!(done.status, DispatchStatus::Done);
        assert_eq!(done.answer.as_deref(), Some("recovered"));
    });
}

#[test]
fn events_interrupts_streams_and_queues_cross_nodes() {
    let rt = runtime();
    let llm = rt.block_on(async { ScriptedLlm::start() });
    let mut cluster = Cluster::new();
    let a = cluster.node();
    let b = cluster.node();
    rt.block_on(async {
        configure(&a.admin, &llm).await;
        // Events caused on A reach a client of B, large payloads (fetched by id) too.
        let mut on_b = Box::pin(
            b.admin
                .client
                .events(&EventFilter {
                    names: vec!["agent.started".into(), "context.ingest".into()],
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
        let (agent, session) = a.admin.agent_and_session().await;
        let big = "x".repeat(20_000);
        a.admin
            .ok(
                "session.append",
                json!({"sessionId": session, "message": {"role": "user", "parts": [{"type": "text", "text": big}]}}),
            )
            .await;
        let mut seen_agent = false;
        let mut seen_big = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(seen_agent && seen_big) {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, on_b.next())
                .await
                .expect("events from node A reach node B within 15 s")
                .unwrap()
                .unwrap();
            assert_ne!(event.node.as_deref(), None, "events name their node");
            if event.name == "agent.started" && event.payload["agentId"] == agent.as_str() {
                seen_agent = true;
            }
            if event.name == "context.ingest"
                && event.payload.to_string().contains(&big)
            {
                seen_big = true;
            }
        }

        // A dispatch running on A, interrupted through B, ends within 500 ms of the
        // interrupt; its stream, read through B, is A's.
        llm.push([Reply::Hang]);
        let started = a
            .admin
            .ok(
                "session.dispatch",
                json!({"sessionId": session, "message": {"role": "user", "content": "hang"}}),
            )
            .await;
        let running = started["dispatchId"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(10), "the model call is in flight", || async {
            (llm.count() >= 1).then_some(())
        })
        .await;
        // Queued through B behind A's dispatch: it waits in the database and runs on A.
        llm.rule(|_| Reply::text("queued answer").into());
        let queued = b
            .admin
            .ok(
                "session.dispatch",
                json!({"sessionId": session, "message": {"role": "user", "content": "after it"}, "ifBusy": "queue"}),
            )
            .await;
        assert_eq!(queued["status"], "queued");
        let queued_id = queued["dispatchId"].as_str().unwrap().to_owned();
        let through_b = tokio::spawn({
            let api = b.admin.clone();
            let id = running.clone();
            async move { dispatching::collect(&api, &id).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        b.admin
            .ok(
                "session.interrupt",
                json!({"sessionId": session, "reason": "stop from node B"}),
            )
            .await;
        let stopped = wait_ended(&a.admin, &running, Duration::from_secs(5)).await;
        let took = asked.elapsed();
        assert_eq!(stopped.status, DispatchStatus::Interrupted);
        assert!(took < Duration::from_millis(1500), "interrupt took {took:?}");
        eprintln!("cross-node interrupt ended the dispatch in {took:?}");
        let events = through_b.await.unwrap();
        assert_eq!(dispatching::done(&events).status, DispatchStatus::Interrupted);

        let events = dispatching::collect(&b.admin, &queued_id).await;
        let done = dispatching::done(&events);
        assert_eq!(done.status, DispatchStatus::Done);
        assert_eq!(done.answer.as_deref(), Some("queued answer"));
        let record = dispatch_record(&b.admin, &queued_id).await;
        assert_eq!(record.node, dispatch_record(&a.admin, &running).await.node);
        assert!(record.request.is_none(), "the request is cleared once a node takes it");
    });
}

/// Files named `name` anywhere under `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

fn texts(found: &Value) -> Vec<String> {
    found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn aos_memory_on_every_node_shares_one_store_in_the_database() {
    let rt = runtime();
    let mut cluster = Cluster::new();
    let a = cluster.node();
    let b = cluster.node();
    rt.block_on(async {
        let agent = |api: Api, name: &'static str| async move {
            api.ok("agent.create", json!({"displayName": name})).await["agentId"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let x = agent(a.admin.clone(), "x").await;
        let y = agent(a.admin.clone(), "y").await;
        for node in [&a, &b] {
            eventually(Duration::from_secs(30), "aos-memory answers", || async {
                node.admin
                    .call("aos-memory.list", json!({"agentId": x}))
                    .await
                    .ok
                    .then_some(())
            })
            .await;
        }
        let shared = a
            .admin
            .ok(
                "aos-memory.save",
                json!({"agentId": x, "text": "the release train leaves on thursdays", "scope": "shared"}),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        a.admin
            .ok(
                "aos-memory.save",
                json!({"agentId": x, "text": "the vault passphrase hint is lighthouse"}),
            )
            .await;
        // Saved through A, found through B: by another agent when shared, by its own
        // agent only when private.
        let search = |api: Api, agent: String, query: &'static str| async move {
            texts(
                &api.ok(
                    "aos-memory.search",
                    json!({"agentId": agent, "query": query}),
                )
                .await,
            )
        };
        assert_eq!(
            search(b.admin.clone(), y.clone(), "release train").await,
            ["the release train leaves on thursdays"]
        );
        assert!(
            search(b.admin.clone(), y.clone(), "vault passphrase")
                .await
                .is_empty(),
            "a private fact reached another agent"
        );
        assert_eq!(
            search(b.admin.clone(), x.clone(), "vault passphrase").await,
            ["the vault passphrase hint is lighthouse"]
        );
        // Forgotten through B, gone for A.
        b.admin
            .ok("aos-memory.forget", json!({"id": shared}))
            .await;
        assert!(
            search(a.admin.clone(), y.clone(), "release train")
                .await
                .is_empty()
        );
    });
    for dir in &cluster.dirs {
        assert_eq!(
            files_named(dir.path(), "memory.db"),
            Vec::<std::path::PathBuf>::new(),
            "a node kept facts in a file of its own"
        );
    }
}
