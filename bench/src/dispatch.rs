//! Scenarios of the ReActUnit against the scripted LLM server: kernel overhead per
//! turn, many concurrent sessions against the same load sent straight to the server,
//! and the compute gate's priorities under saturation.
//!
//! The kernel runs as its own process here (the bench binary re-executed as
//! `aos-bench kernel …`), so its memory can be read apart from the load generator's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_sdk::protocol::{DispatchStatus, DispatchTiming, StreamEvent};
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Api, copy_repo_skills};
use futures::StreamExt;
use serde_json::json;

use crate::Plan;
use crate::report::{Figure, Section, percentile};

/// A kernel in a child process: the bench binary as `aos-bench kernel`.
pub(crate) struct KernelProcess {
    child: tokio::process::Child,
    pub(crate) api: Api,
    /// The kernel's data directory.
    pub(crate) home: PathBuf,
    _dir: tempfile::TempDir,
}

/// Which skills the kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Harness {
    /// Only the `aos` manual: the kernel's own costs, neutral context.
    Bare,
    /// The repository's defaults: `aos` and `aos-skill` loaded, `aos-context` and
    /// `aos-guard` running.
    Default,
}

impl KernelProcess {
    async fn start(llm: &ScriptedLlm, max_concurrent: Option<u32>) -> Result<Self> {
        Self::start_with(llm, max_concurrent, Harness::Bare, json!({})).await
    }

    /// A kernel with `harness` and extra system settings (merged into aoscb.json).
    pub(crate) async fn start_with(
        llm: &ScriptedLlm,
        max_concurrent: Option<u32>,
        harness: Harness,
        settings: serde_json::Value,
    ) -> Result<Self> {
        Self::start_on(llm, max_concurrent, harness, settings, None, &[]).await
    }

    /// A kernel with `harness`, `settings` and some files of its skill copies replaced
    /// (`(path under the skill root, contents)`) before it starts.
    pub(crate) async fn start_with_files(
        llm: &ScriptedLlm,
        harness: Harness,
        settings: serde_json::Value,
        files: &[(&str, String)],
    ) -> Result<Self> {
        Self::start_on(llm, None, harness, settings, None, files).await
    }

    /// A bare kernel that is one node of several on the PostgreSQL database `node`
    /// names, with the admin token they share.
    pub(crate) async fn start_node(
        llm: &ScriptedLlm,
        max_concurrent: Option<u32>,
        node: &Node,
    ) -> Result<Self> {
        Self::start_on(
            llm,
            max_concurrent,
            Harness::Bare,
            json!({}),
            Some(node),
            &[],
        )
        .await
    }

    async fn start_on(
        llm: &ScriptedLlm,
        max_concurrent: Option<u32>,
        harness: Harness,
        settings: serde_json::Value,
        node: Option<&Node>,
        files: &[(&str, String)],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let skills = copy_repo_skills(dir.path());
        for (path, contents) in files {
            std::fs::write(skills.join(path), contents)
                .with_context(|| format!("writing {path} of the skill copies"))?;
        }
        let home = dir.path().join("home");
        let mut provider = json!({"name": "scripted", "baseUrl": llm.base_url, "maxRetries": 0});
        if let Some(limit) = max_concurrent {
            provider["maxConcurrent"] = json!(limit);
        }
        let config = dir.path().join("aoscb.json");
        let defaults = match harness {
            Harness::Bare => json!([{"name": "aos", "load": "enable", "pinned": true}]),
            Harness::Default => {
                let repo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                    aos_tests::repo_root().join("aoscb.json"),
                )?)?;
                repo["defaultSkills"].clone()
            }
        };
        let mut system = json!({
            "defaultSkills": defaults,
            "providers": [provider],
            "defaultModel": "scripted/bench",
            "maxTurns": 50,
        });
        if let (Some(system), Some(extra)) = (system.as_object_mut(), settings.as_object()) {
            system.extend(extra.clone());
        }
        std::fs::write(&config, serde_json::to_string(&system)?)?;
        // The bench starts its own kernel process; it is killed on drop.
        #[allow(clippy::disallowed_methods)]
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("kernel").arg(&home).arg(&skills).arg(&config);
        if let Some(node) = node {
            // The token goes through the environment, not the command line.
            command
                .arg("--database-url")
                .arg(&node.database_url)
                .env(NODE_TOKEN_VAR, &node.admin_token);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url_file = home.join("api.url");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(url) = std::fs::read_to_string(&url_file)
                && !url.trim().is_empty()
            {
                break url.trim().to_owned();
            }
            if Instant::now() > deadline {
                bail!("the kernel process did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let token = match node {
            Some(node) => node.admin_token.clone(),
            None => std::fs::read_to_string(home.join("admin.token"))?
                .trim()
                .to_owned(),
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()?;
        let api = Api {
            client: aos_sdk::Client::with_http(http, url, Some(token)),
        };
        if harness == Harness::Default {
            wait_for_hooks(&api, &["context.assemble", "tool.before"]).await?;
        }
        Ok(Self {
            child,
            api,
            home,
            _dir: dir,
        })
    }

    /// CPU time (user and system) the kernel process has used so far.
    fn cpu_time(&self) -> Duration {
        let pid = self.child.id().unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse::<u64>().ok())
            .sum();
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100, |t| t.max(1) as u64);
        Duration::from_micros(ticks * 1_000_000 / per_second)
    }

    /// Resident and peak memory of the kernel process, in KiB.
    fn memory_kib(&self) -> (f64, f64) {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Waits until services have registered `hooks`.
async fn wait_for_hooks(api: &Api, hooks: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = api.client.call("hook.list", json!({})).await?;
        let registered: Vec<String> = listed
            .data
            .as_ref()
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|h| h["hook"].as_str().map(str::to_owned))
            .collect();
        if hooks.iter().all(|h| registered.iter().any(|r| r == h)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the default services did not register {hooks:?} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a kernel process that is a node of several finds the admin token they share.
const NODE_TOKEN_VAR: &str = "AOS_BENCH_NODE_TOKEN";

/// One node of several kernels sharing a PostgreSQL database.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) database_url: String,
    pub(crate) admin_token: String,
}

/// `aos-bench kernel <home> <skills> <aoscb.json> [--database-url <url>]`: runs a
/// kernel until it is interrupted or killed; with a database URL, on that store, with
/// the admin token from `AOS_BENCH_NODE_TOKEN` when it is set.
pub async fn serve_kernel(
    home: PathBuf,
    skills: PathBuf,
    config: PathBuf,
    database_url: Option<String>,
) -> Result<()> {
    let mut kernel = aos_kernel::KernelConfig::new(home, skills);
    kernel.port = 0;
    kernel.system_file = Some(config);
    kernel.database_url = database_url;
    kernel.admin_token = std::env::var(NODE_TOKEN_VAR).ok().filter(|t| !t.is_empty());
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        kernel.service_bin_dirs = vec![dir.to_owned()];
    }
    aos_kernel::run(kernel, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("the kernel failed")
}

/// Runs one dispatch to its end; returns its wall time and id, or why it did not finish.
pub(crate) async fn dispatch_once(
    api: &Api,
    session: &str,
    content: &str,
) -> Result<(Duration, String)> {
    let started = Instant::now();
    let dispatch = api.client.dispatch(session, content, false).await?;
    let mut events = Box::pin(api.client.dispatch_events(&dispatch.dispatch_id).await?);
    while let Some(event) = events.next().await {
        if let StreamEvent::Done(done) = event? {
            if done.status != DispatchStatus::Done {
                bail!("dispatch ended {:?}: {:?}", done.status, done.error);
            }
            return Ok((started.elapsed(), dispatch.dispatch_id.clone()));
        }
    }
    bail!("the stream ended without done")
}

pub(crate) async fn sessions(api: &Api, n: usize) -> Result<Vec<String>> {
    let agent = api
        .ok("agent.create", json!({"displayName": "bench"}))
        .await["agentId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let session = api.ok("session.create", json!({"agentId": agent})).await;
        out.push(session["sessionId"].as_str().unwrap_or_default().to_owned());
    }
    Ok(out)
}

/// Kernel overhead per ReAct turn: dispatches of 10 turns (9 `true` bash calls and an
/// answer) against a server that answers at once. Each dispatch's wall time, seen by
/// the client, minus the model and bash time the kernel measured around those calls
/// (`timing` of its record), is what the kernel itself spent.
pub async fn turn_overhead(plan: &Plan) -> Result<Section> {
    const TURNS: u64 = 10;
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.react_turns(TURNS as usize, "true");
    let dispatches = if plan.rounds <= 1 { 5 } else { 60 };
    let mut figures = Vec::new();
    for harness in [Harness::Bare, Harness::Default] {
        let kernel = KernelProcess::start_with(&llm, None, harness, json!({})).await?;
        // A fresh session each, so every dispatch sees the same context size.
        let ids = sessions(&kernel.api, dispatches + 1).await?;
        dispatch_once(&kernel.api, &ids[dispatches], "warm up").await?;
        let (mut overhead, mut whole, mut model, mut shell, mut context) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (i, session) in ids[..dispatches].iter().enumerate() {
            let (took, id) = dispatch_once(&kernel.api, session, &format!("task {i}")).await?;
            let record = kernel
                .api
                .ok("dispatch.get", json!({"dispatchId": id}))
                .await;
            let timing: DispatchTiming = serde_json::from_value(record["timing"].clone())?;
            if record["turns"].as_u64() != Some(TURNS) {
                bail!("a dispatch ran {} turns, not {TURNS}", record["turns"]);
            }
            let wall = took.as_micros() as u64;
            let outside = timing.model_us + timing.tools_us;
            if outside > wall {
                bail!(
                    "the kernel measured {outside} µs of model and bash time in a dispatch of {wall} µs"
                );
            }
            overhead.push((wall - outside) / TURNS);
            whole.push(wall / TURNS);
            model.push(timing.model_us / TURNS);
            shell.push(timing.tools_us / (TURNS - 1));
            context.push(timing.context_us / TURNS);
        }
        for samples in [
            &mut overhead,
            &mut whole,
            &mut model,
            &mut shell,
            &mut context,
        ] {
            samples.sort_unstable();
        }
        let label = match harness {
            Harness::Bare => "bare kernel",
            Harness::Default => "default harness",
        };
        let p50 = percentile(&overhead, 0.5);
        let context_p50 = percentile(&context, 0.5);
        figures.extend([
            Figure::from_samples(
                &format!("overhead per turn, p50, {label}"),
                "µs",
                &[p50],
                "the figure",
            ),
            Figure::from_samples(
                &format!("overhead per turn, p99, {label}"),
                "µs",
                &[percentile(&overhead, 0.99)],
                "",
            ),
            Figure::from_samples(
                &format!("building the conversation per turn, p50, {label}"),
                "µs",
                &[context_p50],
                "context.assemble (or the neutral projection) + prompt transforms",
            ),
            Figure::from_samples(
                &format!("its share of the overhead, {label}"),
                "ratio",
                &[context_p50 / p50.max(1.0)],
                "",
            ),
            Figure::from_samples(
                &format!("whole turn, p50, {label}"),
                "µs",
                &[percentile(&whole, 0.5)],
                "model + bash + kernel",
            ),
            Figure::from_samples(
                &format!("model call per turn, p50, {label}"),
                "µs",
                &[percentile(&model, 0.5)],
                "scripted server, streamed",
            ),
            Figure::from_samples(
                &format!("bash `true` per call, p50, {label}"),
                "µs",
                &[percentile(&shell, 0.5)],
                "spawn to exit",
            ),
        ]);
    }
    Ok(Section {
        scenario: "Kernel overhead per ReAct turn".into(),
        setup: format!(
            "{dispatches} dispatches of {TURNS} turns each, each on a fresh session (9 bash calls of `true`, then an \
             answer) against the scripted server with no added latency, through the HTTP API and the dispatch stream, \
             twice: the bare kernel (only the `aos` manual, neutral context, no hooks) and the default harness \
             (`aos` and `aos-skill` loaded, `aos-context` and `aos-guard` running). A turn's overhead is the \
             dispatch's wall time as the client saw it (from `session.dispatch` sent to `done` received), minus the \
             model-call and bash time the kernel measured around those calls (the record's `timing`), divided by \
             the turns: building the context and prompt (`timing.contextUs`: with the harness, the `context.assemble` \
             round trip to aos-context), hooks (with the harness, `tool.before` to aos-guard and `tool.after` to \
             aos-context), history writes and their events, the lease, the stream, the usage records, and the \
             client's two HTTP requests. Absolute figures of this machine; percentiles over dispatches."
        ),
        figures,
    })
}

/// `n` sessions, each running `k` one-turn dispatches back to back against a server
/// that takes 200 ms, against `n` clients each making `k` such requests straight to
/// the server.
pub async fn many_sessions(plan: &Plan) -> Result<Section> {
    const K: usize = 3;
    let sizes: &[usize] = if plan.rounds <= 1 {
        &[64]
    } else {
        &[64, 512, 2000]
    };
    let llm = Arc::new(ScriptedLlm::start());
    llm.forget_requests();
    llm.set_latency(Duration::from_millis(200));
    llm.rule(|_| Reply::text("done").into());
    let mut figures = Vec::new();
    for &n in sizes {
        let kernel = KernelProcess::start(&llm, None).await?;
        let ids = Arc::new(sessions(&kernel.api, n).await?);
        let idle = kernel.memory_kib().0;
        let (mut ratios, mut aos_rates, mut direct_rates, mut rss, mut cpu) =
            (vec![], vec![], vec![], vec![], vec![]);
        let rounds = plan.rounds.clamp(1, 3);
        for round in 0..=rounds {
            // Straight to the server: n clients, k sequential requests each.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(4096)
                .tcp_nodelay(true)
                .build()?;
            let url = format!("{}/chat/completions", llm.base_url);
            let started = Instant::now();
            let direct: Vec<_> = (0..n)
                .map(|_| {
                    let (http, url) = (http.clone(), url.clone());
                    tokio::spawn(async move {
                        let body = json!({"model": "bench", "messages": [{"role": "user", "content": "go"}], "stream": true});
                        let mut ok = 0usize;
                        for _ in 0..K {
                            if let Ok(r) = http.post(&url).json(&body).send().await
                                && r.text().await.is_ok_and(|t| t.contains("[DONE]"))
                            {
                                ok += 1;
                            }
                        }
                        ok
                    })
                })
                .collect();
            let mut done = 0;
            for task in direct {
                done += task.await.unwrap_or(0);
            }
            let direct_rate = done as f64 / started.elapsed().as_secs_f64();
            // Through AOS.
            let cpu_before = kernel.cpu_time();
            let started = Instant::now();
            let runs: Vec<_> = (0..n)
                .map(|i| {
                    let (api, ids) = (kernel.api.clone(), ids.clone());
                    tokio::spawn(async move {
                        let mut ok = 0usize;
                        for j in 0..K {
                            if dispatch_once(&api, &ids[i], &format!("task {j}"))
                                .await
                                .is_ok()
                            {
                                ok += 1;
                            }
                        }
                        ok
                    })
                })
                .collect();
            let mut completed = 0;
            for task in runs {
                completed += task.await.unwrap_or(0);
            }
            let aos_rate = completed as f64 / started.elapsed().as_secs_f64();
            let cpu_per_turn =
                (kernel.cpu_time() - cpu_before).as_micros() as f64 / completed.max(1) as f64;
            let (_, peak) = kernel.memory_kib();
            if completed != n * K {
                bail!(
                    "{} of {} turns completed through AOS at n = {n}",
                    completed,
                    n * K
                );
            }
            eprintln!(
                "  n = {n} round {round}: AOS {aos_rate:.0} turns/s, direct {direct_rate:.0} turns/s"
            );
            if round == 0 {
                continue;
            }
            ratios.push(aos_rate / direct_rate);
            aos_rates.push(aos_rate);
            direct_rates.push(direct_rate);
            rss.push(peak / 1024.0);
            cpu.push(cpu_per_turn);
        }
        figures.push(Figure::from_samples(
            &format!("turns/s through AOS ÷ direct, n = {n}"),
            "ratio",
            &ratios,
            "the figure (target ≥ 0.95)",
        ));
        figures.push(Figure::from_samples(
            &format!("turns/s through AOS, n = {n}"),
            "turns/s",
            &aos_rates,
            "absolute, this machine",
        ));
        figures.push(Figure::from_samples(
            &format!("turns/s direct, n = {n}"),
            "turns/s",
            &direct_rates,
            "",
        ));
        figures.push(Figure::from_samples(
            &format!("kernel CPU time per turn, n = {n}"),
            "µs",
            &cpu,
            "user + system, from /proc; absolute, this machine",
        ));
        figures.push(Figure::from_samples(
            &format!("kernel RSS idle with {n} sessions"),
            "MiB",
            &[idle / 1024.0],
            "absolute",
        ));
        figures.push(Figure::from_samples(
            &format!("kernel peak RSS, n = {n} running"),
            "MiB",
            &rss,
            "absolute",
        ));
    }
    Ok(Section {
        scenario: "Concurrent sessions against the scripted LLM (200 ms per call)".into(),
        setup: format!(
            "n sessions (of one agent, each bootstrapped with the `aos` skill), each running {K} dispatches one after the \
             other; each dispatch is one turn (the model answers after 200 ms), so a turn writes the user message and the \
             answer, takes the lease and streams to the client. Unlimited provider concurrency. Baseline: n clients each \
             sending {K} requests one after the other straight to the same server. The figure is completed turns per \
             second through AOS divided by the baseline's. The kernel runs in its own process; its memory is read from \
             /proc."
        ),
        figures,
    })
}

/// The compute gate under saturation: `maxConcurrent: 4`, 16 high-priority and 16
/// low-priority sessions dispatching in closed loops.
pub async fn priorities(plan: &Plan) -> Result<Section> {
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.set_latency(Duration::from_millis(50));
    llm.rule(|_| Reply::text("done").into());
    let kernel = KernelProcess::start(&llm, Some(4)).await?;
    let ids = sessions(&kernel.api, 32).await?;
    for (i, id) in ids.iter().enumerate() {
        let priority = if i < 16 { 10 } else { 0 };
        kernel
            .api
            .ok(
                "session.update",
                json!({"sessionId": id, "priority": priority}),
            )
            .await;
    }
    let alone = dispatch_once(&kernel.api, &ids[0], "alone")
        .await?
        .0
        .as_micros() as f64;
    let window = plan.window.max(Duration::from_secs(1)) * 2;
    let deadline = Instant::now() + window;
    let loops: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (api, id) = (kernel.api.clone(), id.clone());
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while Instant::now() < deadline {
                    if let Ok(took) = dispatch_once(&api, &id, "go").await {
                        waits.push(took.0.as_micros() as u64);
                    }
                }
                (i < 16, waits)
            })
        })
        .collect();
    let (mut high, mut low) = (Vec::new(), Vec::new());
    for task in loops {
        let (is_high, waits) = task.await?;
        if is_high {
            high.extend(waits)
        } else {
            low.extend(waits)
        }
    }
    high.sort_unstable();
    low.sort_unstable();
    let wait = |s: &[u64], p| (percentile(s, p) - alone).max(0.0) / 1000.0;
    Ok(Section {
        scenario: "Compute gate priorities under saturation".into(),
        setup: format!(
            "A provider with `maxConcurrent: 4` and 50 ms per call; 16 sessions of priority 10 and 16 of priority 0 each \
             dispatch one-turn tasks in a closed loop for {:.0} s. Wait = a dispatch's wall time minus that of one dispatch \
             on an idle kernel ({:.1} ms). {} high and {} low dispatches completed.",
            window.as_secs_f64(),
            alone / 1000.0,
            high.len(),
            low.len()
        ),
        figures: vec![
            Figure::from_samples(
                "high-priority wait p50",
                "ms",
                &[wait(&high, 0.5)],
                "absolute",
            ),
            Figure::from_samples(
                "low-priority wait p50",
                "ms",
                &[wait(&low, 0.5)],
                "absolute",
            ),
            Figure::from_samples(
                "high ÷ low wait p50",
                "ratio",
                &[wait(&high, 0.5) / wait(&low, 0.5).max(0.001)],
                "the figure (lower is better)",
            ),
            Figure::from_samples("high-priority wait p99", "ms", &[wait(&high, 0.99)], ""),
            Figure::from_samples("low-priority wait p99", "ms", &[wait(&low, 0.99)], ""),
            Figure::from_samples(
                "high / low dispatches completed",
                "ratio",
                &[high.len() as f64 / low.len().max(1) as f64],
                "",
            ),
        ],
    })
}
