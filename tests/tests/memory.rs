//! aos-memory end to end: agents save and search through the `memory` command, scopes
//! hold, relevant facts reach the model's system prompt, and a killed service loses no
//! acknowledged fact.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aos_sdk::protocol::StreamEvent;
use aos_tests::dispatching::{configure, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{TestKernel, eventually};
use serde_json::json;

fn results(events: &[StreamEvent]) -> Vec<String> {
    tool_results(events)
        .into_iter()
        .map(|r| r.preview)
        .collect()
}

fn system_prompt(body: &serde_json::Value) -> String {
    body["messages"][0]["content"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn private_facts_stay_private_and_shared_ones_reach_other_agents_and_their_prompts() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, a) = kernel.admin.agent_and_session().await;
    let (_, b) = kernel.admin.agent_and_session().await;
    llm.push([
        Reply::bash("memory save \"the deploy key rotates on mondays\" --scope private"),
        Reply::bash(
            "memory save \"the staging database is pg-staging-2\" --tags db,staging --scope shared",
        ),
        Reply::text("saved"),
    ]);
    let saved = results(&run(&kernel.admin, &a, "remember these").await);
    assert!(
        saved[0].starts_with("saved mem_") && saved[0].contains("(private)"),
        "{saved:?}"
    );
    assert!(saved[1].contains("(shared)"), "{saved:?}");
    llm.push([
        Reply::bash("memory search \"deploy key\""),
        Reply::bash("memory search \"staging database\""),
        Reply::text("looked"),
    ]);
    let found = results(&run(&kernel.admin, &b, "what do we know?").await);
    assert_eq!(
        found[0].trim(),
        "nothing found",
        "A's private fact leaked: {found:?}"
    );
    assert!(
        found[1].contains("pg-staging-2") && found[1].contains("[db, staging]"),
        "{found:?}"
    );
    // Relevant shared facts are offered to B's model; A's private one never is.
    let seen = llm.requests().len();
    llm.push([Reply::text("use pg-staging-2")]);
    run(&kernel.admin, &b, "which staging database should I use?").await;
    let prompt = system_prompt(&llm.requests()[seen]);
    assert!(
        prompt.contains("From your memory")
            && prompt.contains("pg-staging-2")
            && prompt.contains("[mem_"),
        "{prompt}"
    );
    let seen = llm.requests().len();
    llm.push([Reply::text("no idea")]);
    run(&kernel.admin, &b, "when does the deploy key rotate?").await;
    assert!(!system_prompt(&llm.requests()[seen]).contains("mondays"));
    // Nothing relevant, nothing offered.
    let seen = llm.requests().len();
    llm.push([Reply::text("hi")]);
    run(&kernel.admin, &b, "hello there").await;
    assert!(!system_prompt(&llm.requests()[seen]).contains("From your memory"));
    // A may forget its own fact; B may not forget A's.
    let id = saved[1].split_whitespace().nth(1).unwrap().to_owned();
    llm.push([
        Reply::bash(&format!("memory forget {id}")),
        Reply::text("tried"),
    ]);
    let refused = results(&run(&kernel.admin, &b, "forget it").await);
    assert!(refused[0].contains("only it may forget"), "{refused:?}");
    llm.push([
        Reply::bash(&format!("memory forget {id}")),
        Reply::text("done"),
    ]);
    let forgot = results(&run(&kernel.admin, &a, "forget it").await);
    assert_eq!(forgot[0].trim(), format!("forgot {id}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_memory_service_mid_write_loses_no_acknowledged_fact() {
    let kernel = TestKernel::start();
    let (agent, _) = kernel.admin.agent_and_session().await;
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-memory"}))
        .await;
    let pid = services[0]["pid"].as_i64().unwrap() as i32;
    // Writers go on while the service is killed: the kill lands after some saves were
    // acknowledged and while others are in flight.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for i in 0..300 {
        let api = kernel.admin.clone();
        let agent = agent.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let reply = api
                .call(
                    "aos-memory.save",
                    json!({"agentId": agent, "text": format!("fact number {i} about durability")}),
                )
                .await;
            reply.ok.then(|| {
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                reply.data.unwrap()["id"].as_str().unwrap().to_owned()
            })
        }));
    }
    eventually(Duration::from_secs(30), "first saves acknowledged", || {
        let acked = acked.clone();
        async move { (acked.load(std::sync::atomic::Ordering::SeqCst) >= 40).then_some(()) }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut acknowledged = BTreeSet::new();
    for w in writers {
        if let Some(id) = w.await.unwrap() {
            acknowledged.insert(id);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "no save was acknowledged before the kill"
    );
    // The supervisor restarts it; every acknowledged fact is there.
    let stored: BTreeSet<String> = eventually(Duration::from_secs(30), "aos-memory back", || {
        let api = kernel.admin.clone();
        let agent = agent.clone();
        async move {
            let reply = api
                .call("aos-memory.list", json!({"agentId": agent, "limit": 500}))
                .await;
            reply.ok.then(|| {
                reply.data.unwrap()["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap().to_owned())
                    .collect()
            })
        }
    })
    .await;
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged facts lost: {lost:?}",
        lost.len()
    );
    let after = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-memory"}))
        .await;
    assert_ne!(
        after[0]["pid"].as_i64().unwrap() as i32,
        pid,
        "it was restarted"
    );
}

fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = find(&path, name)
        {
            return Some(found);
        }
    }
    None
}

/// Restarts aos-memory and waits for its error to mention `word`.
async fn restart_and_error(kernel: &TestKernel, word: &'static str) -> String {
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-memory"}))
        .await;
    if let Some(id) = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["serviceId"].as_str())
    {
        kernel
            .admin
            .ok("skill.stop", json!({"serviceId": id}))
            .await;
    }
    kernel
        .admin
        .call("skill.start", json!({"name": "aos-memory"}))
        .await;
    eventually(Duration::from_secs(30), "the service's error", || {
        let api = kernel.admin.clone();
        async move {
            let services = api.ok("service.list", json!({"skill": "aos-memory"})).await;
            services
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["lastError"].as_str())
                .find(|e| e.contains("memory store") && e.contains(word))
                .map(str::to_owned)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_missing_store_is_reported_not_recreated_empty() {
    let kernel = TestKernel::start();
    let (agent, _) = kernel.admin.agent_and_session().await;
    kernel
        .admin
        .ok(
            "aos-memory.save",
            json!({"agentId": agent, "text": "a fact worth keeping"}),
        )
        .await;
    if let Some(url) = kernel.database_url() {
        // On PostgreSQL the facts are in the kernel's database, not in a file.
        assert!(
            find(&kernel.home, "memory.db").is_none(),
            "aos-memory used SQLite beside a PostgreSQL kernel"
        );
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM aos_memory.memories")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, 1);
        sqlx::query("DROP TABLE aos_memory.memories")
            .execute(&pool)
            .await
            .unwrap();
        let error = restart_and_error(&kernel, "missing").await;
        assert!(error.contains("memory.postgres.created"), "{error}");
        let recreated: bool =
            sqlx::query_scalar("SELECT to_regclass('aos_memory.memories') IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(!recreated, "an empty table was created in its place");
        return;
    }
    let db = find(&kernel.home, "memory.db").expect("memory.db under the kernel's home");
    let services = kernel
        .admin
        .ok("service.list", json!({"skill": "aos-memory"}))
        .await;
    kernel
        .admin
        .ok("skill.stop", json!({"serviceId": services[0]["serviceId"]}))
        .await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::write(&db, vec![0x5a; 64 * 1024]).unwrap();
    let error = restart_and_error(&kernel, "corrupt").await;
    assert!(error.contains("restore it from a backup"), "{error}");
    std::fs::remove_file(&db).unwrap();
    let error = restart_and_error(&kernel, "missing").await;
    assert!(error.contains("memory.created"), "{error}");
    assert!(!db.exists(), "an empty store was created in its place");
}

/// Saves `text` as a private fact of `agent`; returns its id.
async fn save(kernel: &TestKernel, agent: &str, text: &str, scope: &str) -> String {
    let saved = kernel
        .admin
        .ok(
            "aos-memory.save",
            json!({"agentId": agent, "text": text, "scope": scope}),
        )
        .await;
    saved["id"].as_str().unwrap().to_owned()
}

/// The lines of the memory block of a system prompt (empty when none was offered).
fn offered(prompt: &str) -> Vec<String> {
    prompt
        .split_once("From your memory")
        .map(|(_, block)| {
            block
                .lines()
                .filter(|l| l.starts_with("- [mem_"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn common_words_offer_nothing_and_offers_keep_to_the_budget_best_first() {
    let setup = aos_tests::Setup::new();
    let config = setup.skills().join("aos-memory/config.json");
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    settings["offerChars"] = json!(200);
    std::fs::write(&config, settings.to_string()).unwrap();
    let kernel = TestKernel::start_with(setup);
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    // A fact that shares only common words with the question is not relevant.
    let common = save(
        &kernel,
        &agent,
        "it is what it is, and the rest is there",
        "private",
    )
    .await;
    let seen = llm.requests().len();
    llm.push([Reply::text("no plan known")]);
    run(&kernel.admin, &session, "what is the plan?").await;
    let prompt = system_prompt(&llm.requests()[seen]);
    assert!(!prompt.contains("From your memory"), "{prompt}");
    let found = kernel
        .admin
        .ok(
            "aos-memory.search",
            json!({"agentId": agent, "query": "what is the plan?"}),
        )
        .await;
    assert_eq!(found["items"], json!([]), "{found}");
    // Relevant facts are offered best first, within offerChars: one too long for the
    // budget gives way to a shorter, less relevant one.
    let best = save(
        &kernel,
        &agent,
        "release plan: the release plan ships on friday",
        "private",
    )
    .await;
    let long = save(
        &kernel,
        &agent,
        &format!("release notes {}", "and more notes ".repeat(20)),
        "shared",
    )
    .await;
    let other = save(
        &kernel,
        &agent,
        "the plan for the offsite is a boat trip",
        "private",
    )
    .await;
    let seen = llm.requests().len();
    llm.push([Reply::text("friday")]);
    run(&kernel.admin, &session, "what is the release plan?").await;
    let lines = offered(&system_prompt(&llm.requests()[seen]));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with(&format!("- [{best}]")), "{lines:#?}");
    assert!(lines[1].starts_with(&format!("- [{other}]")), "{lines:#?}");
    let used: usize = lines.iter().map(|l| l.chars().count() + 1).sum();
    assert!(used <= 200, "{used} characters offered, offerChars is 200");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&long) || l.contains(&common))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_search_through_the_command_newest_and_best_first_within_the_limit() {
    let kernel = TestKernel::start();
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (agent, session) = kernel.admin.agent_and_session().await;
    save(
        &kernel,
        &agent,
        "the staging cluster runs in eu-west",
        "private",
    )
    .await;
    let best = save(
        &kernel,
        &agent,
        "the staging database is pg-staging-2; every staging database change needs review",
        "private",
    )
    .await;
    let backups = save(&kernel, &agent, "database backups run nightly", "shared").await;
    let lunch = save(&kernel, &agent, "lunch is at noon", "private").await;
    llm.push([
        Reply::bash("memory list --limit 2"),
        Reply::bash("memory search \"staging database\" --limit 3"),
        Reply::bash("memory search \"staging database\" --limit 1"),
        Reply::text("looked"),
    ]);
    let out = results(&run(&kernel.admin, &session, "what do we know?").await);
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&out[0]), [lunch, backups.clone()], "{out:?}");
    assert!(
        out[0].contains(&format!("{backups} (shared) database backups")),
        "{out:?}"
    );
    let ranked = ids(&out[1]);
    assert_eq!(ranked.len(), 3, "{out:?}");
    assert_eq!(
        ranked[0], best,
        "the fact with both words, twice, comes first: {out:?}"
    );
    assert_eq!(ids(&out[2]), [best], "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn facts_survive_a_kernel_restart() {
    let kernel = TestKernel::start();
    let (agent, _) = kernel.admin.agent_and_session().await;
    let private = save(
        &kernel,
        &agent,
        "the deploy key rotates on mondays",
        "private",
    )
    .await;
    let shared = save(
        &kernel,
        &agent,
        "the staging database is pg-staging-2",
        "shared",
    )
    .await;
    let setup = kernel.stop();
    let kernel = TestKernel::start_with(setup);
    let listed = kernel
        .admin
        .ok("aos-memory.list", json!({"agentId": agent}))
        .await;
    let ids: BTreeSet<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([private.as_str(), shared.as_str()]));
    let found = kernel
        .admin
        .ok(
            "aos-memory.search",
            json!({"agentId": agent, "query": "staging database"}),
        )
        .await;
    assert_eq!(found["items"][0]["id"], shared.as_str(), "{found}");
    assert_eq!(found["items"][0]["scope"], "shared", "{found}");
}
