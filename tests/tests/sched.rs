//! aos-sched end to end: under a saturated compute gate (`maxConcurrent: 2`) a
//! high-priority agent waits less than a low-priority one and fair share keeps two
//! equal agents within 10% of each other's turns (where first come first served does
//! not); an agent over its budget is refused with a message that says which budget and
//! when it resets, and runs again after the reset (manual clock); a provider rate limit
//! keeps every request under the scripted server's own limit, so it answers no 429.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Api, Setup, TestKernel, eventually};
use serde_json::{Value, json};

/// A kernel whose aos-sched has `settings` over its config.json.
fn kernel(settings: Value) -> TestKernel {
    let setup = Setup::new();
    let path = setup.skills().join("aos-sched/config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value) in settings.as_object().unwrap() {
        config[key] = value.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
    TestKernel::start_with(setup)
}

/// The scripted server as provider `scripted`, at most `max_concurrent` calls at once;
/// then one dispatch, so the first model call's one-time costs (the context engine's
/// tokenizer) fall outside what a test measures.
async fn provider(api: &Api, llm: &ScriptedLlm, max_concurrent: Option<u32>) {
    let mut provider =
        json!({"name": "scripted", "baseUrl": llm.base_url, "toolMode": "native", "maxRetries": 3});
    if let Some(n) = max_concurrent {
        provider["maxConcurrent"] = json!(n);
    }
    api.ok(
        "system.update",
        json!({"providers": [provider], "defaultModel": "scripted/test-model", "maxTurns": 500}),
    )
    .await;
    let (_, warm_up) = api.agent_and_session().await;
    let record = ended(api, &dispatch(api, &warm_up, "warm up").await).await;
    assert_eq!(record["status"], "done", "{record}");
}

async fn agent(api: &Api, name: &str) -> String {
    api.ok("agent.create", json!({"displayName": name})).await["agentId"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sessions(api: &Api, agent: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            api.ok("session.create", json!({"agentId": agent})).await["sessionId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids
}

async fn dispatch(api: &Api, session: &str, text: &str) -> String {
    api.ok(
        "session.dispatch",
        json!({"sessionId": session, "message": {"role": "user", "content": text}}),
    )
    .await["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the dispatch ended; returns its record.
async fn ended(api: &Api, id: &str) -> Value {
    eventually(Duration::from_secs(120), "the dispatch ended", || {
        let (api, id) = (api.clone(), id.to_owned());
        async move {
            let d = api.ok("dispatch.get", json!({"dispatchId": id})).await;
            matches!(
                d["status"].as_str(),
                Some("done" | "failed" | "interrupted")
            )
            .then_some(d)
        }
    })
    .await
}

fn millis(record: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(record[field].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Milliseconds from queued to ended.
fn latency(record: &Value) -> i64 {
    millis(record, "endedAt") - millis(record, "queuedAt")
}

fn mean(values: &[i64]) -> f64 {
    values.iter().sum::<i64>() as f64 / values.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_high_priority_agent_waits_less_under_a_saturated_gate() {
    let kernel = kernel(json!({"policy": "priority"}));
    let api = &kernel.admin;
    let llm = ScriptedLlm::start();
    llm.set_latency(Duration::from_millis(150));
    provider(api, &llm, Some(2)).await;
    let (high, low) = (agent(api, "high").await, agent(api, "low").await);
    api.ok("aos-sched.set", json!({"agentId": high, "priority": 10}))
        .await;
    let (high_sessions, low_sessions) =
        (sessions(api, &high, 6).await, sessions(api, &low, 6).await);
    // The low-priority agent asks first.
    let mut low_ids = Vec::new();
    for s in &low_sessions {
        low_ids.push(dispatch(api, s, "work").await);
    }
    let mut high_ids = Vec::new();
    for s in &high_sessions {
        high_ids.push(dispatch(api, s, "work").await);
    }
    let mut waits: HashMap<&str, Vec<i64>> = HashMap::new();
    for (who, ids) in [("high", &high_ids), ("low", &low_ids)] {
        for id in ids {
            let record = ended(api, id).await;
            assert_eq!(record["status"], "done", "{record}");
            waits.entry(who).or_default().push(latency(&record));
        }
    }
    let (h, l) = (mean(&waits["high"]), mean(&waits["low"]));
    println!(
        "| policy priority, maxConcurrent 2, 6+6 dispatches, 150 ms model | high (priority 10) mean {h:.0} ms | low (priority 0) mean {l:.0} ms |"
    );
    assert!(
        llm.max_in_flight() <= 2,
        "the gate admitted {}",
        llm.max_in_flight()
    );
    assert!(
        h < l,
        "the high-priority agent waited {h:.0} ms on average, the low-priority one {l:.0} ms"
    );
    let status = api.ok("aos-sched.status", json!({})).await;
    assert_eq!(status["policy"], "priority", "{status}");
    assert!(
        status["decisionUs"]["count"].as_u64().unwrap() >= 12,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_first_runs_the_dispatch_with_the_nearest_deadline_first() {
    let kernel = kernel(json!({"policy": "deadline"}));
    let api = &kernel.admin;
    let llm = ScriptedLlm::start();
    provider(api, &llm, Some(1)).await;
    llm.set_latency(Duration::from_millis(200));
    let agent = agent(api, "d").await;
    let all = sessions(api, &agent, 6).await;
    let mut relaxed = Vec::new();
    for s in &all[..4] {
        relaxed.push(dispatch(api, s, "no hurry").await);
    }
    let mut urgent = Vec::new();
    for s in &all[4..] {
        let started = api
            .ok(
                "session.dispatch",
                json!({"sessionId": s, "message": {"role": "user", "content": "urgent"}, "deadlineMs": 30000}),
            )
            .await;
        urgent.push(started["dispatchId"].as_str().unwrap().to_owned());
    }
    let mut relaxed_ends = Vec::new();
    for id in &relaxed {
        relaxed_ends.push(millis(&ended(api, id).await, "endedAt"));
    }
    for id in &urgent {
        let record = ended(api, id).await;
        assert!(record["deadlineAt"].is_string(), "{record}");
        let end = millis(&record, "endedAt");
        let before = relaxed_ends.iter().filter(|e| **e < end).count();
        // The first relaxed call took the gate before the urgent ones arrived.
        assert!(
            before <= 1,
            "an urgent dispatch finished after {before} of the 4 relaxed ones that asked before it"
        );
    }
}

/// Turns per agent when agent A runs 6 sessions and agent B 3 (each enough to keep a
/// permit busy), all making model calls without end, for `run_for`.
async fn contest(api: &Api, run_for: Duration) -> (u64, u64) {
    let (a, b) = (agent(api, "a").await, agent(api, "b").await);
    let (a_sessions, b_sessions) = (sessions(api, &a, 6).await, sessions(api, &b, 3).await);
    let mut ids = Vec::new();
    for (who, s) in a_sessions
        .iter()
        .map(|s| ("a", s))
        .chain(b_sessions.iter().map(|s| ("b", s)))
    {
        ids.push((who, dispatch(api, s, "keep going").await));
    }
    tokio::time::sleep(run_for).await;
    for (_, id) in &ids {
        let record = api.ok("dispatch.get", json!({"dispatchId": id})).await;
        api.ok(
            "session.interrupt",
            json!({"sessionId": record["sessionId"], "reason": "the contest is over"}),
        )
        .await;
    }
    let (mut turns_a, mut turns_b) = (0, 0);
    for (who, id) in &ids {
        let record = ended(api, id).await;
        let turns = record["turns"].as_u64().unwrap();
        if *who == "a" {
            turns_a += turns;
        } else {
            turns_b += turns;
        }
    }
    (turns_a, turns_b)
}

#[tokio::test(flavor = "multi_thread")]
async fn fair_share_keeps_two_equal_agents_within_ten_percent() {
    let kernel = kernel(json!({"policy": "priority"}));
    let api = &kernel.admin;
    let llm = ScriptedLlm::start();
    provider(api, &llm, Some(2)).await;
    llm.set_latency(Duration::from_millis(100));
    llm.rule(|_| Reply::bash("true").into());
    // First come first served: the agent with more sessions gets more turns.
    let (fifo_a, fifo_b) = contest(api, Duration::from_secs(4)).await;
    api.ok("aos-sched.set", json!({"policy": "fair-share"}))
        .await;
    let (fair_a, fair_b) = contest(api, Duration::from_secs(4)).await;
    println!("| policy | agent A turns (6 sessions) | agent B turns (3 sessions) | A/B |");
    println!(
        "| priority (first come first served) | {fifo_a} | {fifo_b} | {:.2} |",
        fifo_a as f64 / fifo_b.max(1) as f64
    );
    println!(
        "| fair-share (equal weights) | {fair_a} | {fair_b} | {:.2} |",
        fair_a as f64 / fair_b.max(1) as f64
    );
    assert!(
        fifo_a as f64 > 1.3 * fifo_b as f64,
        "without fair share the agent with twice the sessions should get clearly more turns: {fifo_a} vs {fifo_b}"
    );
    assert!(
        fair_a + fair_b > 40,
        "too few turns to judge: {fair_a} + {fair_b}"
    );
    let gap = (fair_a as f64 - fair_b as f64).abs() / fair_a.max(fair_b) as f64;
    assert!(
        gap <= 0.10,
        "fair share left the agents {:.0}% apart: {fair_a} vs {fair_b} turns",
        gap * 100.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_over_budget_is_refused_and_runs_again_after_the_reset() {
    let kernel = kernel(json!({"clock": "manual"}));
    let api = &kernel.admin;
    let llm = ScriptedLlm::start();
    provider(api, &llm, None).await;
    // The kernel prices calls by the provider's price table.
    api.ok(
        "system.update",
        json!({"providers": [{"name": "scripted", "baseUrl": llm.base_url, "toolMode": "native",
            "prices": {"test-model": {"inputPerMTok": 1000.0, "outputPerMTok": 1000.0}}}]}),
    )
    .await;
    api.ok("aos-sched.tick", json!({"now": "2030-06-15T10:00:00Z"}))
        .await;
    let (tokens_agent, cost_agent) = (agent(api, "tokens").await, agent(api, "cost").await);
    api.ok(
        "aos-sched.set",
        json!({"agentId": tokens_agent, "budget": {"day": {"tokens": 100}}}),
    )
    .await;
    api.ok(
        "aos-sched.set",
        json!({"agentId": cost_agent, "budget": {"month": {"costUsd": 0.5}}}),
    )
    .await;
    let bad = api
        .err(
            "aos-sched.set",
            json!({"agentId": cost_agent, "budget": {"week": {"tokens": 1}}}),
            aos_sdk::protocol::ErrorCode::InvalidParams,
        )
        .await;
    assert!(bad.message.contains("week"), "{}", bad.message);
    for (agent, refusal, reset_to, resets_at) in [
        (
            &tokens_agent,
            "over its daily token budget",
            "2030-06-16T00:00:01Z",
            "2030-06-16T00:00:00.000Z",
        ),
        (
            &cost_agent,
            "over its monthly cost budget",
            "2030-07-01T00:00:01Z",
            "2030-07-01T00:00:00.000Z",
        ),
    ] {
        let session = sessions(api, agent, 1).await.remove(0);
        // Under budget: the call runs (and uses far more than the budget).
        let first = ended(api, &dispatch(api, &session, "hello").await).await;
        assert_eq!(first["status"], "done", "{first}");
        assert!(first["usage"]["costUsd"].as_f64().unwrap() > 0.5, "{first}");
        eventually(Duration::from_secs(10), "the usage was counted", || {
            let agent = agent.clone();
            async move {
                let status = api.ok("aos-sched.status", json!({"agentId": agent})).await;
                status["budgets"][0]["periods"][0]["over"]
                    .as_bool()
                    .unwrap_or(false)
                    .then_some(())
            }
        })
        .await;
        let count = llm.count();
        let refused = ended(api, &dispatch(api, &session, "again").await).await;
        assert_eq!(refused["status"], "failed", "{refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(refusal), "{message}");
        assert!(message.contains(agent.as_str()), "{message}");
        assert!(
            message.contains(&format!("resets at {resets_at}")),
            "{message}"
        );
        assert_eq!(
            llm.count(),
            count,
            "a refused call must not reach the model"
        );
        // After the reset the agent runs again.
        api.ok("aos-sched.tick", json!({"now": reset_to})).await;
        let after = ended(api, &dispatch(api, &session, "a new period").await).await;
        assert_eq!(after["status"], "done", "{after}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_keeps_the_provider_from_answering_429() {
    let kernel = kernel(json!({}));
    let api = &kernel.admin;
    let llm = ScriptedLlm::start();
    let window = Duration::from_millis(2000);
    provider(api, &llm, None).await;
    llm.set_rate_limit(4, window);
    let (agent_a, agent_b) = (agent(api, "a").await, agent(api, "b").await);
    let mut all = sessions(api, &agent_a, 5).await;
    all.extend(sessions(api, &agent_b, 5).await);
    // Without the scheduler's limit, a burst of 10 draws 429s (the kernel retries them).
    let mut ids = Vec::new();
    for s in &all {
        ids.push(dispatch(api, s, "burst").await);
    }
    for id in &ids {
        ended(api, id).await;
    }
    let drawn = llm.rejected();
    assert!(
        drawn > 0,
        "the scripted server should refuse a burst of 10 over a limit of 4"
    );
    tokio::time::sleep(window).await;
    api.ok(
        "aos-sched.set",
        json!({"provider": "scripted", "rateLimit": {"requestsPerMinute": 4, "windowMs": 2000}}),
    )
    .await;
    let before = llm.count();
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for s in &all {
        ids.push(dispatch(api, s, "burst again").await);
    }
    let mut held = false;
    for id in &ids {
        if !held {
            let status = api.ok("aos-sched.status", json!({})).await;
            held = !status["held"].as_array().unwrap().is_empty();
        }
        let record = ended(api, id).await;
        assert_eq!(record["status"], "done", "{record}");
    }
    let elapsed = started.elapsed();
    println!(
        "rate limit 4 per {} ms: 10 dispatches in {} ms, {} requests, {} answered 429 (without the limit: {drawn})",
        window.as_millis(),
        elapsed.as_millis(),
        llm.count() - before,
        llm.rejected() - drawn
    );
    assert_eq!(
        llm.rejected(),
        drawn,
        "the provider answered 429 under the limit"
    );
    assert_eq!(llm.count() - before, 10, "one request per dispatch");
    assert!(held, "aos-sched.status never showed a held call");
    assert!(
        elapsed >= window * 2,
        "10 calls at 4 per window cannot finish within two windows: {elapsed:?}"
    );
}
