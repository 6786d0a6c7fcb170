//! The PostgreSQL store backend: appends and queries over HTTP on a PostgreSQL-backed
//! kernel against a SQLite-backed kernel and against raw sqlx statements on the same
//! PostgreSQL database, and dispatch throughput on one node against two nodes sharing
//! one database.
//!
//! Every database is a fresh one on the local server (`AOS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_kernel::store::postgres::DEFAULT_MAX_CONNECTIONS;
use aos_kernel::store::postgres::testing::TestDatabase;
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Api, Setup, TestKernel};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::Plan;
use crate::dispatch::{Harness, KernelProcess, Node, dispatch_once};
use crate::report::{Figure, Section, percentile};
use crate::scenarios::{Load, closed_loop, http_client, posts};

/// Text of every appended message, as in the `append` scenario.
const TEXT_CHARS: usize = 200;

pub async fn postgres(plan: &Plan) -> Result<Vec<Section>> {
    let mut sections = Vec::new();
    {
        let database = TestDatabase::create().await.map_err(anyhow::Error::msg)?;
        let outcome = storage_sections(plan, &database).await;
        database.drop_database().await.map_err(anyhow::Error::msg)?;
        sections.extend(outcome?);
    }
    sections.push(dispatch_scaling(plan).await?);
    Ok(sections)
}

/// A kernel in this process on PostgreSQL (`Some(url)`) or on SQLite under its home.
async fn kernel_on(database_url: Option<String>) -> Result<TestKernel> {
    Ok(tokio::task::spawn_blocking(move || {
        let mut setup = Setup::new();
        // The bench chooses the backend, whatever AOS_TEST_BACKEND says.
        setup.database = None;
        setup.config.database_url = database_url;
        TestKernel::start_with(setup)
    })
    .await?)
}

/// A pool for the raw baselines: as many connections as the store's, on the same
/// database, with a plain table shaped like `history` (no session row to advance, no
/// triggers).
async fn raw_pool(url: &str) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(DEFAULT_MAX_CONNECTIONS)
        .connect(url)
        .await
        .context("connecting the raw baseline to PostgreSQL")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_raw (
             session_id TEXT COLLATE \"C\" NOT NULL,
             seq        BIGINT NOT NULL,
             message_id TEXT COLLATE \"C\" NOT NULL UNIQUE,
             role       TEXT NOT NULL,
             origin     TEXT NOT NULL,
             created_at BIGINT NOT NULL,
             parts      TEXT NOT NULL,
             PRIMARY KEY (session_id, seq)
         )",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// `writers` closed loops of autocommitted single-row inserts into `bench_raw`.
async fn raw_inserts(pool: &PgPool, writers: usize, window: Duration, round: usize) -> Load {
    let pool = pool.clone();
    let parts = json!([{"type": "text", "text": "x".repeat(TEXT_CHARS)}]).to_string();
    closed_loop(writers, window, move |client, n| {
        let (pool, parts) = (pool.clone(), parts.clone());
        async move {
            sqlx::query(
                "INSERT INTO bench_raw (session_id, seq, message_id, role, origin, created_at, parts)
                 VALUES ($1, $2, $3, 'user', 'human', $4, $5)",
            )
            .bind(format!("w{writers}-{client}"))
            .bind(((round as i64) << 40) + n as i64)
            .bind(format!("msg_r{round}_w{writers}_{client}_{n}"))
            .bind(n as i64)
            .bind(parts)
            .execute(&pool)
            .await
            .is_ok()
        }
    })
    .await
}

/// `writers` closed loops of `session.append` over HTTP, writer i to `sessions[i]`.
async fn appends(
    http: &reqwest::Client,
    kernel: &TestKernel,
    sessions: &Arc<Vec<String>>,
    writers: usize,
    window: Duration,
) -> Load {
    let url = format!("{}/aoscp", kernel.url);
    let token = kernel.admin_token.clone();
    let (h, sessions) = (http.clone(), sessions.clone());
    let text = "x".repeat(TEXT_CHARS);
    closed_loop(writers, window, move |client, _| {
        let (h, url, token) = (h.clone(), url.clone(), token.clone());
        let body = json!({
            "op": "session.append",
            "sessionId": sessions[client],
            "message": {"role": "user", "parts": [{"type": "text", "text": text}]}
        });
        async move {
            match h.post(&url).bearer_auth(&token).json(&body).send().await {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["ok"] == json!(true)),
                _ => false,
            }
        }
    })
    .await
}

/// Appends and queries: a PostgreSQL kernel and a SQLite kernel side by side, with the
/// raw baselines on the PostgreSQL kernel's own database.
async fn storage_sections(plan: &Plan, database: &TestDatabase) -> Result<Vec<Section>> {
    let pg = kernel_on(Some(database.url.clone())).await?;
    let lite = kernel_on(None).await?;
    for (kernel, backend) in [(&pg, "postgres"), (&lite, "sqlite")] {
        let listed = kernel.admin.ok("system.nodes.list", json!({})).await;
        if listed["backend"] != backend {
            bail!("a kernel meant for {backend} runs on {}", listed["backend"]);
        }
    }
    let raw = raw_pool(&database.url).await?;
    let outcome = async {
        Ok::<_, anyhow::Error>(vec![
            append_section(plan, &pg, &lite, &raw).await?,
            query_section(plan, &pg, &lite, &raw).await?,
        ])
    }
    .await;
    raw.close().await;
    drop(pg);
    drop(lite);
    outcome
}

async fn append_section(
    plan: &Plan,
    pg: &TestKernel,
    lite: &TestKernel,
    raw: &PgPool,
) -> Result<Section> {
    let (mut pg_sessions, mut lite_sessions) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        pg_sessions.push(pg.admin.agent_and_session().await.1);
        lite_sessions.push(lite.admin.agent_and_session().await.1);
    }
    let (pg_sessions, lite_sessions) = (Arc::new(pg_sessions), Arc::new(lite_sessions));
    let http = http_client();
    let mut figures = Vec::new();
    let mut errors = 0;
    for writers in [1usize, 64] {
        let (mut pg_rate, mut lite_rate, mut raw_rate) = (vec![], vec![], vec![]);
        let (mut to_raw, mut to_lite, mut pg_p50, mut lite_p50) = (vec![], vec![], vec![], vec![]);
        for round in 0..=plan.rounds {
            let baseline = raw_inserts(raw, writers, plan.window, round).await;
            let on_pg = appends(&http, pg, &pg_sessions, writers, plan.window).await;
            let on_lite = appends(&http, lite, &lite_sessions, writers, plan.window).await;
            eprintln!(
                "  {writers} writer(s) round {round}: PG kernel {:.0}/s, SQLite kernel {:.0}/s, raw PG insert {:.0}/s",
                on_pg.per_second, on_lite.per_second, baseline.per_second
            );
            if round == 0 {
                continue; // warm-up
            }
            errors += baseline.errors + on_pg.errors + on_lite.errors;
            pg_rate.push(on_pg.per_second);
            lite_rate.push(on_lite.per_second);
            raw_rate.push(baseline.per_second);
            to_raw.push(on_pg.per_second / baseline.per_second);
            to_lite.push(on_pg.per_second / on_lite.per_second);
            pg_p50.push(percentile(&on_pg.latencies_us, 0.5));
            lite_p50.push(percentile(&on_lite.latencies_us, 0.5));
        }
        figures.extend([
            Figure::from_samples(
                &format!("PG kernel append ÷ raw PG insert, {writers} writer(s)"),
                "ratio",
                &to_raw,
                "the figure: the kernel's cost over the database's floor",
            ),
            Figure::from_samples(
                &format!("PG kernel append ÷ SQLite kernel append, {writers} writer(s)"),
                "ratio",
                &to_lite,
                "the figure: what the shared backend costs",
            ),
            Figure::from_samples(
                &format!("session.append on PostgreSQL, {writers} writer(s)"),
                "appends/s",
                &pg_rate,
                "absolute, this machine",
            ),
            Figure::from_samples(
                &format!("session.append on SQLite, {writers} writer(s)"),
                "appends/s",
                &lite_rate,
                "absolute, this machine",
            ),
            Figure::from_samples(
                &format!("raw sqlx INSERT on PostgreSQL, {writers} writer(s)"),
                "inserts/s",
                &raw_rate,
                "absolute, this machine",
            ),
            Figure::from_samples(
                &format!("session.append p50 on PostgreSQL, {writers} writer(s)"),
                "µs",
                &pg_p50,
                "",
            ),
            Figure::from_samples(
                &format!("session.append p50 on SQLite, {writers} writer(s)"),
                "µs",
                &lite_p50,
                "",
            ),
        ]);
    }
    Ok(Section {
        scenario: "PostgreSQL: append throughput (`session.append`)".into(),
        setup: format!(
            "Two kernels in this process, one on a fresh PostgreSQL database ({}, local server, \
             pool of {DEFAULT_MAX_CONNECTIONS}), one on SQLite under its home \
             (WAL, synchronous=NORMAL), both with the repository's aoscb.json. Closed-loop writers, each \
             appending a {TEXT_CHARS}-character text message to its own session over HTTP; rounds \
             alternate raw baseline, PostgreSQL kernel, SQLite kernel. Baseline: the same number of tasks \
             running an autocommitted sqlx `INSERT` of one row shaped like a history row (session id, seq, \
             message id, role, origin, time, the same parts JSON) into a plain table of the same database \
             through a pool of {DEFAULT_MAX_CONNECTIONS} connections. Errors: {errors}.",
            server_settings(raw).await
        ),
        figures,
    })
}

/// The server's version and durability settings, for the report.
async fn server_settings(pool: &PgPool) -> String {
    let show = |setting: &'static str| async move {
        sqlx::query(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(pool)
            .await
            .ok()
            .and_then(|row| row.try_get::<String, _>(0).ok())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "PostgreSQL {}, fsync={}, synchronous_commit={}",
        show("server_version").await,
        show("fsync").await,
        show("synchronous_commit").await
    )
}

/// Fills a fresh session of `kernel` with `messages` messages, 16 appends at a time.
async fn filled_session(kernel: &TestKernel, messages: usize) -> Result<String> {
    let (_, session) = kernel.admin.agent_and_session().await;
    let text = "x".repeat(TEXT_CHARS);
    let failed = futures::stream::iter(0..messages)
        .map(|i| {
            let (api, session, text) = (kernel.admin.clone(), session.clone(), text.clone());
            async move {
                let message = json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                    "parts": [{"type": "text", "text": text}]});
                api.call(
                    "session.append",
                    json!({"sessionId": session, "message": message}),
                )
                .await
                .ok
            }
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    if failed > 0 {
        bail!("{failed} of {messages} appends failed while filling a session");
    }
    Ok(session)
}

/// `clients` closed loops of one raw query on the PostgreSQL database, reading every
/// column of every row it returns.
async fn raw_queries(
    pool: &PgPool,
    clients: usize,
    window: Duration,
    sql: &'static str,
    session: &str,
    rows: usize,
) -> Load {
    let (pool, session) = (pool.clone(), session.to_owned());
    closed_loop(clients, window, move |_, _| {
        let (pool, session) = (pool.clone(), session.clone());
        async move {
            let mut query = sqlx::query(sql).bind(session);
            if rows > 1 {
                query = query.bind(rows as i64);
            }
            match query.fetch_all(&pool).await {
                Ok(found) => {
                    found.len() == rows
                        && found.iter().all(|row| {
                            (0..row.len()).all(|i| {
                                row.try_get::<Option<String>, _>(i).is_ok()
                                    || row.try_get::<Option<i64>, _>(i).is_ok()
                            })
                        })
                }
                Err(_) => false,
            }
        }
    })
    .await
}

/// One query measured on both kernels and as raw SQL.
struct QueryCase {
    label: String,
    /// The syscall for each kernel (each has its own session).
    pg_body: Vec<u8>,
    lite_body: Vec<u8>,
    /// The raw baseline and the rows it must return.
    sql: &'static str,
    rows: usize,
}

const RAW_HISTORY_PAGE: &str =
    "SELECT * FROM history WHERE session_id = $1 ORDER BY seq DESC LIMIT $2";
const RAW_SESSION: &str = "SELECT * FROM sessions WHERE session_id = $1";

async fn query_section(
    plan: &Plan,
    pg: &TestKernel,
    lite: &TestKernel,
    raw: &PgPool,
) -> Result<Section> {
    const PAGE: usize = 50;
    let messages = if plan.rounds <= 1 { 100 } else { 1000 };
    let pg_session = filled_session(pg, messages).await?;
    let lite_session = filled_session(lite, messages).await?;
    let list = |session: &str| {
        serde_json::to_vec(&json!({"op": "session.history.list", "sessionId": session,
            "limit": PAGE, "descending": true}))
    };
    let get =
        |session: &str| serde_json::to_vec(&json!({"op": "session.get", "sessionId": session}));
    // Both kernels answer the page they are asked for.
    for (kernel, session) in [(pg, &pg_session), (lite, &lite_session)] {
        let page = kernel
            .admin
            .ok(
                "session.history.list",
                json!({"sessionId": session, "limit": PAGE, "descending": true}),
            )
            .await;
        let items = page["items"].as_array().map_or(0, Vec::len);
        if items != PAGE {
            bail!("session.history.list returned {items} messages, not {PAGE}");
        }
    }
    let http = http_client();
    let mut figures = Vec::new();
    let mut errors = 0;
    let cases = [
        QueryCase {
            label: format!("session.history.list ({PAGE} of {messages})"),
            pg_body: list(&pg_session)?,
            lite_body: list(&lite_session)?,
            sql: RAW_HISTORY_PAGE,
            rows: PAGE,
        },
        QueryCase {
            label: "session.get".into(),
            pg_body: get(&pg_session)?,
            lite_body: get(&lite_session)?,
            sql: RAW_SESSION,
            rows: 1,
        },
    ];
    for QueryCase {
        label,
        pg_body,
        lite_body,
        sql,
        rows,
    } in cases
    {
        for clients in [1usize, 64] {
            let (mut pg_rate, mut lite_rate, mut raw_rate) = (vec![], vec![], vec![]);
            let (mut to_raw, mut to_lite) = (vec![], vec![]);
            let (mut pg_p50, mut lite_p50, mut raw_p50) = (vec![], vec![], vec![]);
            for round in 0..=plan.rounds {
                let baseline = raw_queries(raw, clients, plan.window, sql, &pg_session, rows).await;
                let on_pg = posts(&http, pg, &pg_body, clients, plan.window).await;
                let on_lite = posts(&http, lite, &lite_body, clients, plan.window).await;
                eprintln!(
                    "  {label}, {clients} client(s) round {round}: PG kernel {:.0}/s, SQLite kernel {:.0}/s, raw PG {:.0}/s",
                    on_pg.per_second, on_lite.per_second, baseline.per_second
                );
                if round == 0 {
                    continue;
                }
                errors += baseline.errors + on_pg.errors + on_lite.errors;
                pg_rate.push(on_pg.per_second);
                lite_rate.push(on_lite.per_second);
                raw_rate.push(baseline.per_second);
                to_raw.push(on_pg.per_second / baseline.per_second);
                to_lite.push(on_pg.per_second / on_lite.per_second);
                pg_p50.push(percentile(&on_pg.latencies_us, 0.5));
                lite_p50.push(percentile(&on_lite.latencies_us, 0.5));
                raw_p50.push(percentile(&baseline.latencies_us, 0.5));
            }
            figures.extend([
                Figure::from_samples(
                    &format!("{label} on PG kernel ÷ raw PG SELECT, {clients} client(s)"),
                    "ratio",
                    &to_raw,
                    "the figure",
                ),
                Figure::from_samples(
                    &format!("{label} on PG kernel ÷ SQLite kernel, {clients} client(s)"),
                    "ratio",
                    &to_lite,
                    "the figure",
                ),
                Figure::from_samples(
                    &format!("{label} on PostgreSQL, {clients} client(s)"),
                    "req/s",
                    &pg_rate,
                    "absolute, this machine",
                ),
                Figure::from_samples(
                    &format!("{label} on SQLite, {clients} client(s)"),
                    "req/s",
                    &lite_rate,
                    "absolute, this machine",
                ),
                Figure::from_samples(
                    &format!("raw PG SELECT of the same rows, {clients} client(s)"),
                    "queries/s",
                    &raw_rate,
                    "absolute, this machine",
                ),
                Figure::from_samples(
                    &format!("{label} p50: PostgreSQL, {clients} client(s)"),
                    "µs",
                    &pg_p50,
                    "",
                ),
                Figure::from_samples(
                    &format!("{label} p50: SQLite, {clients} client(s)"),
                    "µs",
                    &lite_p50,
                    "",
                ),
                Figure::from_samples(
                    &format!("raw PG SELECT p50, {clients} client(s)"),
                    "µs",
                    &raw_p50,
                    "",
                ),
            ]);
        }
    }
    Ok(Section {
        scenario: "PostgreSQL: query throughput (`session.history.list`, `session.get`)".into(),
        setup: format!(
            "The same two kernels. One session of each holds {messages} messages of {TEXT_CHARS} characters; \
             `session.history.list` asks for the newest {PAGE} (`descending`), `session.get` for its control \
             block, from 1 and 64 closed-loop HTTP clients; rounds alternate raw baseline, PostgreSQL kernel, \
             SQLite kernel. Baseline: the same number of tasks running the same rows' `SELECT` on the \
             PostgreSQL kernel's database through a pool of {DEFAULT_MAX_CONNECTIONS} connections, every \
             column read (`SELECT * FROM history WHERE session_id = $1 ORDER BY seq DESC LIMIT 50`; \
             `SELECT * FROM sessions WHERE session_id = $1`). The kernel's history page also reads the \
             session (two queries on PostgreSQL); on SQLite the session comes from the store's cache. \
             Errors: {errors}."
        ),
        figures,
    })
}

/// Checks that the kernel behind `api` is on PostgreSQL and sees `alive` live nodes
/// (waiting a little for a new node's first heartbeat).
async fn expect_nodes(api: &Api, alive: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = api.ok("system.nodes.list", json!({})).await;
        let seen = listed["nodes"].as_array().map_or(0, |n| {
            n.iter().filter(|n| n["alive"] == json!(true)).count()
        });
        if listed["backend"] != "postgres" {
            bail!("a node runs on {}, not postgres", listed["backend"]);
        }
        if seen == alive {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("a node sees {seen} live nodes, not {alive}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every session is bootstrapped.
async fn wait_ready(api: &Api, sessions: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for session in sessions {
        loop {
            let cb = api.ok("session.get", json!({"sessionId": session})).await;
            if cb["status"] == "ready" {
                break;
            }
            if Instant::now() > deadline {
                bail!("session {session} is still {} after 60 s", cb["status"]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// `per_node` fresh, bootstrapped sessions on each node; session i runs on node
/// `i % nodes`.
async fn fresh_sessions(nodes: &[&KernelProcess], per_node: usize) -> Result<Vec<(Api, String)>> {
    let mut made: Vec<Vec<String>> = Vec::new();
    for node in nodes {
        let ids = crate::dispatch::sessions(&node.api, per_node).await?;
        wait_ready(&node.api, &ids).await?;
        made.push(ids);
    }
    let mut out = Vec::new();
    for i in 0..per_node {
        for (node, ids) in nodes.iter().zip(&made) {
            out.push((node.api.clone(), ids[i].clone()));
        }
    }
    Ok(out)
}

/// Closed loops of one-turn dispatches, one loop per session.
async fn dispatch_loops(sessions: Vec<(Api, String)>, window: Duration) -> Load {
    let sessions = Arc::new(sessions);
    closed_loop(sessions.len(), window, move |client, n| {
        let sessions = sessions.clone();
        async move {
            let (api, session) = &sessions[client];
            dispatch_once(api, session, &format!("task {n}"))
                .await
                .is_ok()
        }
    })
    .await
}

/// Closed loops of streamed chat completions straight to the scripted server.
async fn direct_loops(llm: &ScriptedLlm, clients: usize, window: Duration) -> Result<Load> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{}/chat/completions", llm.base_url);
    Ok(closed_loop(clients, window, move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"model": "bench", "messages": [{"role": "user", "content": "go"}], "stream": true});
            match http.post(&url).json(&body).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("[DONE]")),
                Err(_) => false,
            }
        }
    })
    .await)
}

/// The whole machine's CPU time, busy and total, in clock ticks since boot.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The machine's busy share over a stretch of time.
struct CpuMeter(Option<(u64, u64)>);

impl CpuMeter {
    fn start() -> Self {
        Self(cpu_ticks())
    }

    /// Busy ticks ÷ all ticks since [`CpuMeter::start`] (NaN when /proc is unreadable).
    fn busy(&self) -> f64 {
        match (self.0, cpu_ticks()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1 - busy0) as f64 / (total1 - total0) as f64
            }
            _ => f64::NAN,
        }
    }
}

/// Dispatches/s with one node on PostgreSQL against the same sessions spread over two
/// nodes sharing one database.
async fn dispatch_scaling(plan: &Plan) -> Result<Section> {
    const LATENCY: Duration = Duration::from_millis(50);
    const MAX_CONCURRENT: u32 = 64;
    let sessions = if plan.rounds <= 1 { 8 } else { 32 };
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.set_latency(LATENCY);
    llm.rule(|_| Reply::text("done").into());
    let single_db = TestDatabase::create().await.map_err(anyhow::Error::msg)?;
    let shared_db = TestDatabase::create().await.map_err(anyhow::Error::msg)?;
    let outcome = async {
        let token = format!("bench-cluster-admin-token-{}", std::process::id());
        let node = |db: &TestDatabase| Node {
            database_url: db.url.clone(),
            admin_token: token.clone(),
        };
        let single = KernelProcess::start_node(&llm, Some(MAX_CONCURRENT), &node(&single_db)).await?;
        let a = KernelProcess::start_node(&llm, Some(MAX_CONCURRENT), &node(&shared_db)).await?;
        let b = KernelProcess::start_node(&llm, Some(MAX_CONCURRENT), &node(&shared_db)).await?;
        let lite = KernelProcess::start_with(&llm, Some(MAX_CONCURRENT), Harness::Bare, json!({})).await?;
        // Every kernel is on PostgreSQL, and the two nodes see each other, before
        // anything is measured.
        expect_nodes(&single.api, 1).await?;
        expect_nodes(&a.api, 2).await?;
        expect_nodes(&b.api, 2).await?;
        let (mut one, mut two, mut on_sqlite, mut direct) = (vec![], vec![], vec![], vec![]);
        let (mut scaling, mut one_to_direct, mut two_to_direct, mut one_to_sqlite) =
            (vec![], vec![], vec![], vec![]);
        let (mut one_p50, mut two_p50, mut sqlite_p50) = (vec![], vec![], vec![]);
        let (mut one_cpu, mut two_cpu, mut sqlite_cpu) = (vec![], vec![], vec![]);
        let mut errors = 0;
        for round in 0..=plan.rounds {
            let baseline = direct_loops(&llm, sessions, plan.window).await?;
            let ready = fresh_sessions(&[&single], sessions).await?;
            let meter = CpuMeter::start();
            let on_one = dispatch_loops(ready, plan.window).await;
            let one_busy = meter.busy();
            let ready = fresh_sessions(&[&a, &b], sessions / 2).await?;
            let meter = CpuMeter::start();
            let on_two = dispatch_loops(ready, plan.window).await;
            let two_busy = meter.busy();
            let ready = fresh_sessions(&[&lite], sessions).await?;
            let meter = CpuMeter::start();
            let on_lite = dispatch_loops(ready, plan.window).await;
            let lite_busy = meter.busy();
            eprintln!(
                "  round {round}: 1 node {:.0} dispatches/s (CPU {:.0} %), 2 nodes {:.0} dispatches/s (CPU {:.0} %), \
                 SQLite {:.0} dispatches/s (CPU {:.0} %), direct {:.0} calls/s",
                on_one.per_second,
                one_busy * 100.0,
                on_two.per_second,
                two_busy * 100.0,
                on_lite.per_second,
                lite_busy * 100.0,
                baseline.per_second
            );
            if round == 0 {
                continue;
            }
            errors += baseline.errors + on_one.errors + on_two.errors + on_lite.errors;
            one.push(on_one.per_second);
            two.push(on_two.per_second);
            on_sqlite.push(on_lite.per_second);
            direct.push(baseline.per_second);
            scaling.push(on_two.per_second / on_one.per_second);
            one_to_direct.push(on_one.per_second / baseline.per_second);
            two_to_direct.push(on_two.per_second / baseline.per_second);
            one_to_sqlite.push(on_one.per_second / on_lite.per_second);
            one_p50.push(percentile(&on_one.latencies_us, 0.5) / 1000.0);
            two_p50.push(percentile(&on_two.latencies_us, 0.5) / 1000.0);
            sqlite_p50.push(percentile(&on_lite.latencies_us, 0.5) / 1000.0);
            one_cpu.push(one_busy * 100.0);
            two_cpu.push(two_busy * 100.0);
            sqlite_cpu.push(lite_busy * 100.0);
        }
        Ok::<_, anyhow::Error>(Section {
            scenario: "PostgreSQL: dispatch throughput, one node against two".into(),
            setup: format!(
                "Scripted LLM answering every call after {} ms (provider `maxConcurrent: {MAX_CONCURRENT}`); \
                 each dispatch is one turn. {sessions} sessions in closed loops (each sends its next dispatch \
                 when the previous one is done, through the node that owns the session). One node: a kernel \
                 process on its own fresh PostgreSQL database, all {sessions} sessions on it. Two nodes: two \
                 kernel processes on another fresh database with one admin token, {} sessions created on \
                 (and dispatched through) each. For reference, the same load on a kernel process on SQLite. \
                 Fresh, bootstrapped sessions every round, so histories stay short. Baseline: {sessions} \
                 closed loops of streamed requests straight to the scripted server. All kernels, PostgreSQL, \
                 the scripted server and the load generator share this machine's {} cores; CPU is the whole \
                 machine's busy share during each load (from /proc/stat). Errors: {errors}.",
                LATENCY.as_millis(),
                sessions / 2,
                std::thread::available_parallelism().map_or(0, |n| n.get()),
            ),
            figures: vec![
                Figure::from_samples(
                    "dispatches/s, 2 nodes ÷ 1 node",
                    "ratio",
                    &scaling,
                    "the figure: scaling (bounded by this machine's CPUs)",
                ),
                Figure::from_samples(
                    "dispatches/s, 1 node ÷ direct",
                    "ratio",
                    &one_to_direct,
                    "against the scripted server alone",
                ),
                Figure::from_samples(
                    "dispatches/s, 2 nodes ÷ direct",
                    "ratio",
                    &two_to_direct,
                    "",
                ),
                Figure::from_samples(
                    "dispatches/s, 1 node",
                    "dispatches/s",
                    &one,
                    "absolute, this machine",
                ),
                Figure::from_samples(
                    "dispatches/s, 2 nodes",
                    "dispatches/s",
                    &two,
                    "absolute, this machine",
                ),
                Figure::from_samples(
                    "scripted server called directly",
                    "calls/s",
                    &direct,
                    "baseline",
                ),
                Figure::from_samples(
                    "dispatches/s, 1 node on PostgreSQL ÷ on SQLite",
                    "ratio",
                    &one_to_sqlite,
                    "what the shared store costs a dispatch",
                ),
                Figure::from_samples(
                    "dispatches/s, 1 node on SQLite",
                    "dispatches/s",
                    &on_sqlite,
                    "reference",
                ),
                Figure::from_samples("dispatch p50, 1 node", "ms", &one_p50, "model call 50 ms"),
                Figure::from_samples("dispatch p50, 2 nodes", "ms", &two_p50, ""),
                Figure::from_samples("dispatch p50, SQLite", "ms", &sqlite_p50, ""),
                Figure::from_samples("machine CPU busy, 1 node", "%", &one_cpu, "all cores"),
                Figure::from_samples("machine CPU busy, 2 nodes", "%", &two_cpu, ""),
                Figure::from_samples("machine CPU busy, SQLite", "%", &sqlite_cpu, ""),
            ],
        })
    }
    .await;
    single_db
        .drop_database()
        .await
        .map_err(anyhow::Error::msg)?;
    shared_db
        .drop_database()
        .await
        .map_err(anyhow::Error::msg)?;
    outcome
}
