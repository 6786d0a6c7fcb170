//! The scenarios. Each measures AOS and its baseline in the same run, alternating
//! rounds so drift on the machine hits both alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aos_tests::TestKernel;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::Plan;
use crate::report::{Figure, Section, percentile};

/// Result of one closed-loop load run.
pub(crate) struct Load {
    pub(crate) per_second: f64,
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) errors: u64,
}

/// Runs `clients` closed loops of `request` for `window`; each loop sends its next
/// request when the previous answer arrives.
pub(crate) async fn closed_loop<F, Fut>(clients: usize, window: Duration, request: F) -> Load
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let start = Instant::now();
    let deadline = start + window;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if request(client, n).await {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Load {
        per_second: latencies_us.len() as f64 / elapsed,
        latencies_us,
        errors,
    }
}

/// A pool for the raw-insert baseline on `path`: one connection, the store's settings,
/// and a table of its own.
async fn raw_pool(path: &std::path::Path) -> Result<Arc<sqlx::SqlitePool>> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .context("opening the database for the raw baseline")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw (session_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, \
         PRIMARY KEY (session_id, seq)) WITHOUT ROWID",
    )
    .execute(&pool)
    .await?;
    Ok(Arc::new(pool))
}

/// `writers` closed loops of raw autocommitted inserts of `body`.
async fn raw_inserts(
    pool: &Arc<sqlx::SqlitePool>,
    writers: usize,
    window: Duration,
    round: usize,
    body: &str,
) -> Load {
    let pool = pool.clone();
    let body = body.to_owned();
    let offset = (round as u64) << 40;
    closed_loop(writers, window, move |client, n| {
        let pool = pool.clone();
        let body = body.clone();
        async move {
            sqlx::query("INSERT INTO bench_raw (session_id, seq, body) VALUES (?1, ?2, ?3)")
                .bind(format!("w{writers}-{client}"))
                .bind((offset + n) as i64)
                .bind(body)
                .execute(&*pool)
                .await
                .is_ok()
        }
    })
    .await
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

/// `clients` closed loops posting the same syscall `body` to the kernel's `/aoscp`
/// with the admin token.
pub(crate) async fn posts(
    http: &reqwest::Client,
    kernel: &TestKernel,
    body: &[u8],
    clients: usize,
    window: Duration,
) -> Load {
    let url = format!("{}/aoscp", kernel.url);
    let token = kernel.admin_token.clone();
    let (h, body) = (http.clone(), body.to_vec());
    closed_loop(clients, window, move |_, _| {
        let (h, url, token, body) = (h.clone(), url.clone(), token.clone(), body.clone());
        async move {
            match h
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await
}

/// `session.get` over HTTP with 64 concurrent clients, against `GET /health` (the same
/// HTTP stack and connection reuse, no auth, no syscall) as the baseline.
pub async fn http_query(plan: &Plan) -> Result<Section> {
    let kernel = tokio::task::spawn_blocking(TestKernel::start).await?;
    let (_, session) = kernel.admin.agent_and_session().await;
    let http = http_client();
    let clients = 64;
    let (mut aos_rps, mut base_rps, mut ratio, mut p50, mut p99, mut base_p50, mut base_p99) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut errors = 0;
    let body = serde_json::to_vec(&json!({"op": "session.get", "sessionId": session}))?;
    for round in 0..=plan.rounds {
        let health_url = format!("{}/health", kernel.url);
        let h = http.clone();
        let baseline = closed_loop(clients, plan.window, move |_, _| {
            let h = h.clone();
            let url = health_url.clone();
            async move {
                match h.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await;
        let measured = posts(&http, &kernel, &body, clients, plan.window).await;
        if round == 0 {
            continue; // warm-up
        }
        errors += measured.errors + baseline.errors;
        aos_rps.push(measured.per_second);
        base_rps.push(baseline.per_second);
        ratio.push(measured.per_second / baseline.per_second);
        p50.push(percentile(&measured.latencies_us, 0.50));
        p99.push(percentile(&measured.latencies_us, 0.99));
        base_p50.push(percentile(&baseline.latencies_us, 0.50));
        base_p99.push(percentile(&baseline.latencies_us, 0.99));
        eprintln!(
            "  round {round}: session.get {:.0}/s, /health {:.0}/s",
            measured.per_second, baseline.per_second
        );
    }
    drop(kernel);
    Ok(Section {
        scenario: "Query throughput over HTTP (`session.get`)".into(),
        setup: format!(
            "{clients} concurrent closed-loop HTTP/1.1 clients (keep-alive) against a kernel on this machine, \
             load generator in the same process on its own runtime. Baseline: `GET /health` through the same \
             server and connections (no auth, no syscall). Errors: {errors}."
        ),
        figures: vec![
            Figure::from_samples(
                "session.get throughput ÷ /health throughput",
                "ratio",
                &ratio,
                "the figure: cost of auth + registry + store read",
            ),
            Figure::from_samples(
                "session.get throughput",
                "req/s",
                &aos_rps,
                "absolute, this machine",
            ),
            Figure::from_samples(
                "session.get latency p50",
                "µs",
                &p50,
                "absolute, this machine",
            ),
            Figure::from_samples(
                "session.get latency p99",
                "µs",
                &p99,
                "absolute, this machine",
            ),
            Figure::from_samples(
                "/health throughput (baseline)",
                "req/s",
                &base_rps,
                "absolute, this machine",
            ),
            Figure::from_samples("/health latency p50 (baseline)", "µs", &base_p50, ""),
            Figure::from_samples("/health latency p99 (baseline)", "µs", &base_p99, ""),
        ],
    })
}

/// `session.append` over HTTP at 1 and 64 concurrent writers (each writer its own
/// session), against a raw sqlx `INSERT` loop on the same database file with the same
/// SQLite settings (WAL, synchronous=NORMAL, one writer connection).
pub async fn append(plan: &Plan) -> Result<Section> {
    let kernel = tokio::task::spawn_blocking(TestKernel::start).await?;
    let mut sessions = Vec::new();
    for _ in 0..64 {
        sessions.push(kernel.admin.agent_and_session().await.1);
    }
    let sessions = Arc::new(sessions);
    let raw = raw_pool(&kernel.home.join("aos.db")).await?;
    let text = "x".repeat(200);
    let http = http_client();
    let mut figures = Vec::new();
    let mut errors = 0;
    for writers in [1usize, 64] {
        let (mut aos, mut base, mut ratio, mut p50, mut p99) =
            (vec![], vec![], vec![], vec![], vec![]);
        for round in 0..=plan.rounds {
            let baseline = raw_inserts(&raw, writers, plan.window, round, &text).await;
            let url = format!("{}/aoscp", kernel.url);
            let token = kernel.admin_token.clone();
            let h = http.clone();
            let sessions = sessions.clone();
            let text = text.clone();
            let measured = closed_loop(writers, plan.window, move |client, _| {
                let h = h.clone();
                let url = url.clone();
                let token = token.clone();
                let body = json!({
                    "op": "session.append",
                    "sessionId": sessions[client],
                    "message": {"role": "user", "parts": [{"type": "text", "text": text}]}
                });
                async move {
                    match h.post(&url).bearer_auth(&token).json(&body).send().await {
                        Ok(r) if r.status().is_success() => r.json::<Value>().await.is_ok(),
                        _ => false,
                    }
                }
            })
            .await;
            if round == 0 {
                continue;
            }
            errors += measured.errors + baseline.errors;
            aos.push(measured.per_second);
            base.push(baseline.per_second);
            ratio.push(measured.per_second / baseline.per_second);
            p50.push(percentile(&measured.latencies_us, 0.50));
            p99.push(percentile(&measured.latencies_us, 0.99));
            eprintln!(
                "  {writers} writer(s) round {round}: session.append {:.0}/s, raw insert {:.0}/s",
                measured.per_second, baseline.per_second
            );
        }
        figures.push(Figure::from_samples(
            &format!("append throughput ÷ raw insert throughput, {writers} writer(s)"),
            "ratio",
            &ratio,
            "the figure",
        ));
        figures.push(Figure::from_samples(
            &format!("session.append, {writers} writer(s)"),
            "appends/s",
            &aos,
            "absolute, this machine",
        ));
        figures.push(Figure::from_samples(
            &format!("raw sqlx insert, {writers} writer(s)"),
            "inserts/s",
            &base,
            "absolute, this machine",
        ));
        figures.push(Figure::from_samples(
            &format!("session.append latency p50, {writers} writer(s)"),
            "µs",
            &p50,
            "",
        ));
        figures.push(Figure::from_samples(
            &format!("session.append latency p99, {writers} writer(s)"),
            "µs",
            &p99,
            "",
        ));
    }
    raw.close().await;
    drop(kernel);
    figures.extend(store_append(plan).await?);
    Ok(Section {
        scenario: "Append throughput (`session.append`)".into(),
        setup: format!(
            "Closed-loop writers, each appending a 200-character text message to its own session over HTTP. \
             An append is a transaction that numbers the message (gap-free seq), bumps the session revision and \
             inserts the history row, plus validation, the RuntimeLog row and the `context.ingest` event. \
             Baseline: the same number of tasks running a raw sqlx `INSERT` of a 200-character row into the same \
             database file through one connection (WAL, synchronous=NORMAL), i.e. the fastest plain insert loop. \
             The `store` rows call the kernel's SQLite store directly (no HTTP, no syscall layer) against a raw \
             insert loop on that store's own file, to separate storage cost from request handling. Errors: {errors}."
        ),
        figures,
    })
}

/// `Store::append_message` called directly (group commit, gap-free numbering, cache
/// upkeep) against raw inserts into the same file: the storage layer's share.
async fn store_append(plan: &Plan) -> Result<Vec<Figure>> {
    use aos_kernel::store::Store;
    use aos_kernel::store::conformance_fixtures as fixtures;
    use aos_kernel::store::sqlite::{SqliteStore, SyncMode};
    let dir = tempfile_dir()?;
    let path = dir.join("store.db");
    let store = Arc::new(SqliteStore::open(&path, SyncMode::Normal).await?);
    store.insert_agent(&fixtures::agent("agt_bench")).await?;
    for i in 0..64 {
        store
            .insert_session(&fixtures::session(&format!("ses_{i}"), "agt_bench"))
            .await?;
    }
    let raw = raw_pool(&path).await?;
    let text = "x".repeat(200);
    let mut figures = Vec::new();
    for writers in [1usize, 64] {
        let (mut ratio, mut aos) = (vec![], vec![]);
        for round in 0..=plan.rounds {
            let baseline = raw_inserts(&raw, writers, plan.window, round, &text).await;
            let s = store.clone();
            let body = text.clone();
            let measured = closed_loop(writers, plan.window, move |client, _| {
                let s = s.clone();
                let message = fixtures::text_message(&format!("ses_{client}"), &body);
                async move { s.append_message(&message).await.is_ok() }
            })
            .await;
            if round == 0 {
                continue;
            }
            ratio.push(measured.per_second / baseline.per_second);
            aos.push(measured.per_second);
            eprintln!(
                "  store, {writers} writer(s) round {round}: append_message {:.0}/s, raw insert {:.0}/s",
                measured.per_second, baseline.per_second
            );
        }
        figures.push(Figure::from_samples(
            &format!("store append ÷ raw insert, {writers} writer(s)"),
            "ratio",
            &ratio,
            "storage layer only (no HTTP)",
        ));
        figures.push(Figure::from_samples(
            &format!("store append, {writers} writer(s)"),
            "appends/s",
            &aos,
            "absolute, this machine",
        ));
    }
    raw.close().await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("aos-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
