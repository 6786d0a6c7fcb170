//! `aos-memory.search` latency at 10 000 and 100 000 stored facts.
//!
//! The facts are written straight into the service's SQLite file while the service is
//! stopped (saving 100 000 facts one durable commit at a time through the operation
//! would take minutes and measures nothing about search); the searches go through the
//! kernel's HTTP API to the service, as a UI or script would make them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_tests::llm::ScriptedLlm;
use serde_json::json;
use sqlx::Connection;

use crate::Plan;
use crate::context::check_services_built;
use crate::dispatch::{Harness, KernelProcess};
use crate::report::{Figure, Section, percentile};

/// A small deterministic generator, so every run searches the same corpus.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn word(&mut self) -> String {
        // 3 000 distinct words with a skewed (Zipf-like) frequency.
        let r = self.next() % 3000;
        let rank = (r * r) / 3000;
        format!("w{rank}")
    }

    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.word())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

async fn service_id(kernel: &KernelProcess) -> Result<Option<String>> {
    let services = kernel
        .api
        .ok("service.list", json!({"skill": "aos-memory"}))
        .await;
    Ok(services
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["state"] == "running")
        .and_then(|s| s["serviceId"].as_str())
        .map(str::to_owned))
}

async fn wait_running(kernel: &KernelProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while service_id(kernel).await?.is_none() {
        if Instant::now() > deadline {
            bail!("aos-memory did not come back");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub async fn search_latency(plan: &Plan) -> Result<Section> {
    check_services_built()?;
    let llm = ScriptedLlm::start();
    let kernel = KernelProcess::start_with(&llm, None, Harness::Default, json!({})).await?;
    wait_running(&kernel).await?;
    let agent = kernel
        .api
        .ok("agent.create", json!({"displayName": "bench"}))
        .await["agentId"]
        .as_str()
        .context("agent id")?
        .to_owned();
    // The first save creates the store and its schema.
    kernel
        .api
        .ok(
            "aos-memory.save",
            json!({"agentId": agent, "text": "the store exists"}),
        )
        .await;
    let db = kernel.home.join("data/aos-memory/memory.db");
    let sizes: &[usize] = if plan.rounds <= 1 {
        &[1_000]
    } else {
        &[10_000, 100_000]
    };
    let queries = if plan.rounds <= 1 { 50 } else { 500 };
    let mut words = Words(7);
    let mut stored = 1usize;
    let mut figures = Vec::new();
    for &n in sizes {
        // Stop the service, add facts up to n in one transaction, start it again.
        if let Some(id) = service_id(&kernel).await? {
            kernel.api.ok("skill.stop", json!({"serviceId": id})).await;
        }
        {
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display())).await?;
            let mut tx = conn.begin().await?;
            while stored < n {
                let scope = if stored.is_multiple_of(3) {
                    "shared"
                } else {
                    "private"
                };
                let owner = if stored.is_multiple_of(2) {
                    agent.as_str()
                } else {
                    "agt_other"
                };
                sqlx::query("INSERT INTO memories (id, agent_id, scope, text, tags, created_at) VALUES (?, ?, ?, ?, ?, ?)")
                    .bind(format!("mem_bench{stored:07}"))
                    .bind(owner)
                    .bind(scope)
                    .bind(words.sentence(8 + (stored % 8)))
                    .bind(words.sentence(2))
                    .bind("2026-12-02T00:00:00.000Z")
                    .execute(&mut *tx)
                    .await?;
                stored += 1;
            }
            tx.commit().await?;
        }
        kernel
            .api
            .ok("skill.start", json!({"name": "aos-memory"}))
            .await;
        wait_running(&kernel).await?;
        let mut latencies = Vec::with_capacity(queries);
        let mut hits = 0usize;
        for _ in 0..queries {
            let query = words.sentence(3);
            let started = Instant::now();
            let found = kernel
                .api
                .ok(
                    "aos-memory.search",
                    json!({"agentId": agent, "query": query, "limit": 5}),
                )
                .await;
            latencies.push(started.elapsed().as_micros() as u64);
            hits += found["items"].as_array().map_or(0, Vec::len);
        }
        latencies.sort_unstable();
        eprintln!("  {n} facts: search p50 {} µs", percentile(&latencies, 0.5));
        figures.extend([
            Figure::from_samples(
                &format!("search p50, {n} facts"),
                "µs",
                &[percentile(&latencies, 0.5)],
                "the figure",
            ),
            Figure::from_samples(
                &format!("search p99, {n} facts"),
                "µs",
                &[percentile(&latencies, 0.99)],
                "",
            ),
            Figure::from_samples(
                &format!("results per search, {n} facts"),
                "count",
                &[hits as f64 / queries as f64],
                "of at most 5",
            ),
        ]);
    }
    let mut floor = Vec::new();
    for _ in 0..queries {
        let started = Instant::now();
        kernel.api.ok("agent.get", json!({"agentId": agent})).await;
        floor.push(started.elapsed().as_micros() as u64);
    }
    floor.sort_unstable();
    figures.push(Figure::from_samples(
        "agent.get over HTTP, p50 (floor)",
        "µs",
        &[percentile(&floor, 0.5)],
        "baseline: a kernel query with no service",
    ));
    Ok(Section {
        scenario: "Memory search (aos-memory)".into(),
        setup: format!(
            "Facts of 8–15 words drawn from 3 000 words with a skewed frequency, a third shared, half of the \
             private ones another agent's, written straight into the service's SQLite file (FTS5 index kept by \
             its triggers) while it is stopped. {queries} searches of 3 random words, limit 5, through \
             `POST /aoscp` → the kernel → the aos-memory process (BM25 ranking, access filter) → back."
        ),
        figures,
    })
}
