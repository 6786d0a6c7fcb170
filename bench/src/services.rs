//! Scenarios of the service machinery: hook round trips through the Rust and Python
//! SDKs against a raw Unix-socket JSON-line echo, hot-reload latency, and syscalls
//! from a service over its socket against the same calls over HTTP.
//!
//! The bench binary is also the Rust service and the echo peer (`aos-bench serve-rust`,
//! `aos-bench echo <socket>`), so everything measured runs as its own process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_kernel::hooks::{Admission, HookScope};
use aos_sdk::protocol::service::{OpKindWire, Verdict};
use aos_sdk::service::{OpError, Service};
use aos_tests::{Setup, TestKernel};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::Plan;
use crate::report::{Figure, Section, percentile};
use crate::scenarios::{http_client, posts};

const RUST_SKILL: &str = "bench-rust";
const PYTHON_SKILL: &str = "bench-python";
const RELOAD_SKILL: &str = "bench-reload";

const PYTHON_SERVICE: &str = r#"
from aos_sdk import define_service

@define_service
def bench(ctx):
    return {"tool.before": lambda input, output: None}

if __name__ == "__main__":
    bench.run()
"#;

fn reload_service(version: usize) -> String {
    format!(
        r#"
from aos_sdk import define_service

VERSION = {version}

@define_service
def bench(ctx):
    def tool_before(input, output):
        return {{"action": "allow", "output": {{"args": {{"command": "v%d" % VERSION}}}}}}
    return {{"tool.before": tool_before}}

if __name__ == "__main__":
    bench.run()
"#
    )
}

fn write_skill(root: &Path, name: &str, service: &str, file: Option<(&str, &str)>) -> Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    if let Some((file, text)) = file {
        std::fs::write(dir.join(file), text)?;
    }
    std::fs::write(
        dir.join("SKILL.md"),
        format!(
            "---\nname: {name}\ndescription: benchmark service {name}\nservice: {service}\n---\n# {name}\n"
        ),
    )?;
    Ok(())
}

/// A kernel whose skill root holds the benchmark services.
async fn kernel_with_bench_skills() -> Result<TestKernel> {
    tokio::task::spawn_blocking(|| {
        let setup = Setup::new();
        let root = setup.skills();
        write_skill(&root, RUST_SKILL, "aos-bench serve-rust", None)?;
        write_skill(
            &root,
            PYTHON_SKILL,
            "./service.py",
            Some(("service.py", PYTHON_SERVICE)),
        )?;
        write_skill(
            &root,
            RELOAD_SKILL,
            "./service.py",
            Some(("service.py", &reload_service(0))),
        )?;
        Ok(TestKernel::start_with(setup))
    })
    .await?
}

async fn start(kernel: &TestKernel, skill: &str) -> Result<String> {
    let envelope = kernel
        .admin
        .call("skill.start", json!({"name": skill}))
        .await;
    match envelope.data {
        Some(data) if envelope.ok => Ok(data["serviceId"].as_str().unwrap_or_default().to_owned()),
        _ => bail!("starting {skill} failed: {:?}", envelope.error),
    }
}

async fn stop(kernel: &TestKernel, service_id: &str) {
    kernel
        .admin
        .call("skill.stop", json!({"serviceId": service_id}))
        .await;
}

/// The data of a `tool.before` call (what the ReActUnit sends for a bash command).
fn tool_before_data(agent: &str, session: &str) -> (Value, Value) {
    let args = json!({"command": "grep -rn 'TODO' src/ | head -20", "timeoutMs": 120000});
    (
        json!({"agentId": agent, "sessionId": session, "dispatchId": "dsp_bench", "toolCallId": "call_bench", "args": args}),
        json!({"args": args}),
    )
}

/// Sequential round trips for `window`, in microseconds, sorted.
async fn sequential<F, Fut>(window: Duration, mut once: F) -> Result<Vec<u64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + window;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        once().await?;
        samples.push(started.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    Ok(samples)
}

/// An echo peer in its own process, connected over a Unix socket: the floor under
/// any service round trip.
struct Echo {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
    _dir: tempfile::TempDir,
}

impl Echo {
    async fn start(python: bool) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        // The bench spawns its own peers; they are killed on drop.
        #[allow(clippy::disallowed_methods)]
        let mut command = if python {
            let mut c = tokio::process::Command::new("python3");
            c.args([
                "-c",
                "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nf=s.makefile('rb')\nfor line in f:\n    s.sendall(line)\n",
                &path.display().to_string(),
            ]);
            c
        } else {
            let mut c = tokio::process::Command::new(std::env::current_exe()?);
            c.args(["echo", &path.display().to_string()]);
            c
        };
        let child = command.kill_on_drop(true).spawn()?;
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .context("the echo peer did not connect")??;
        let (read, write) = stream.into_split();
        Ok(Self {
            child,
            lines: BufReader::new(read).lines(),
            write,
            _dir: dir,
        })
    }

    /// Sequential round trips of `line` for `window`, in microseconds, sorted.
    async fn measure(&mut self, window: Duration, line: &str) -> Result<Vec<u64>> {
        let framed = format!("{line}\n");
        let deadline = Instant::now() + window;
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let started = Instant::now();
            self.write.write_all(framed.as_bytes()).await?;
            if self.lines.next_line().await?.is_none() {
                bail!("the echo peer closed");
            }
            samples.push(started.elapsed().as_micros() as u64);
        }
        samples.sort_unstable();
        Ok(samples)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Hook round trip: the kernel's admission chain calling one service that allows.
pub async fn hooks(plan: &Plan) -> Result<Section> {
    let kernel = kernel_with_bench_skills().await?;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let (input, output) = tool_before_data(&agent, &session);
    // The echo carries a frame the size of the kernel's hook request.
    let frame = json!({"jsonrpc": "2.0", "id": 1, "method": "hook", "params": {"name": "tool.before", "class": "admission", "input": input, "output": output}}).to_string();
    let mut echo = Echo::start(false).await?;
    let mut py_echo = Echo::start(true).await?;
    let engine = kernel.kernel.clone();
    let admit = || {
        let engine = engine.clone();
        let (input, output) = (input.clone(), output.clone());
        let (agent, session) = (agent.clone(), session.clone());
        async move {
            let verdict = engine
                .hooks
                .admit(
                    Admission::ToolBefore,
                    HookScope::session(&agent, &session),
                    || (input, output),
                )
                .await;
            match verdict {
                Ok(Some(_)) => Ok(()),
                Ok(None) => bail!("nobody answered tool.before"),
                Err(rejection) => bail!("{rejection}"),
            }
        }
    };
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("raw echo (Rust peer)", vec![], vec![]),
        ("raw echo (Python peer)", vec![], vec![]),
        ("hook via Rust SDK", vec![], vec![]),
        ("hook via Python SDK", vec![], vec![]),
    ];
    let (mut rust_ratio, mut rust_p99_ratio, mut py_ratio, mut py_vs_py) =
        (vec![], vec![], vec![], vec![]);
    let mut calls = 0usize;
    for round in 0..=plan.rounds {
        let raw = echo.measure(plan.window, &frame).await?;
        let raw_py = py_echo.measure(plan.window, &frame).await?;
        let service = start(&kernel, RUST_SKILL).await?;
        let rust = sequential(plan.window, &admit).await?;
        stop(&kernel, &service).await;
        let service = start(&kernel, PYTHON_SKILL).await?;
        let python = sequential(plan.window, &admit).await?;
        stop(&kernel, &service).await;
        if round == 0 {
            continue;
        }
        calls += rust.len() + python.len();
        let p = |s: &[u64], q| percentile(s, q);
        for (row, samples) in rows.iter_mut().zip([&raw, &raw_py, &rust, &python]) {
            row.1.push(p(samples, 0.50));
            row.2.push(p(samples, 0.99));
        }
        rust_ratio.push(p(&rust, 0.50) / p(&raw, 0.50));
        rust_p99_ratio.push(p(&rust, 0.99) / p(&raw, 0.99));
        py_ratio.push(p(&python, 0.50) / p(&raw, 0.50));
        py_vs_py.push(p(&python, 0.50) / p(&raw_py, 0.50));
        eprintln!(
            "  round {round}: echo p50 {:.0} µs, Rust hook p50 {:.0} µs, Python hook p50 {:.0} µs",
            p(&raw, 0.5),
            p(&rust, 0.5),
            p(&python, 0.5)
        );
    }
    drop(kernel);
    let mut figures = vec![
        Figure::from_samples(
            "Rust SDK hook p50 ÷ raw echo p50",
            "ratio",
            &rust_ratio,
            "the figure (target ≤ 2)",
        ),
        Figure::from_samples(
            "Rust SDK hook p99 ÷ raw echo p99",
            "ratio",
            &rust_p99_ratio,
            "",
        ),
        Figure::from_samples(
            "Python SDK hook p50 ÷ raw echo p50",
            "ratio",
            &py_ratio,
            "the figure",
        ),
        Figure::from_samples(
            "Python SDK hook p50 ÷ raw Python echo p50",
            "ratio",
            &py_vs_py,
            "the SDK's own share",
        ),
    ];
    for (name, p50, p99) in rows {
        figures.push(Figure::from_samples(
            &format!("{name} p50"),
            "µs",
            &p50,
            "absolute, this machine",
        ));
        figures.push(Figure::from_samples(&format!("{name} p99"), "µs", &p99, ""));
    }
    Ok(Section {
        scenario: "Hook round trip (kernel → service → verdict)".into(),
        setup: format!(
            "One `tool.before` admission call at a time from the kernel's hook engine (in-process) to one \
             system-owned service in its own process that allows, over the service's Unix socket: the frame \
             out, the service's SDK decoding it and calling the handler, the verdict back, the engine parsing \
             it. Baseline: the same request frame sent over a Unix socket to an echo peer in its own process \
             (Rust, and Python for the Python SDK's own share) and read back. {calls} hook calls measured."
        ),
        figures,
    })
}

/// Hot reload: a service file rewritten on disk until the new code answers the hook.
pub async fn hot_reload(plan: &Plan) -> Result<Section> {
    let kernel = kernel_with_bench_skills().await?;
    let (agent, session) = kernel.admin.agent_and_session().await;
    let (input, output) = tool_before_data(&agent, &session);
    let service = start(&kernel, RELOAD_SKILL).await?;
    let edits = if plan.rounds <= 1 { 3 } else { 20 };
    let file = kernel.skills.join(RELOAD_SKILL).join("service.py");
    let mut latencies = Vec::new();
    for version in 1..=edits {
        let want = format!("v{version}");
        let written = Instant::now();
        std::fs::write(&file, reload_service(version))?;
        loop {
            let answer = kernel
                .kernel
                .hooks
                .admit(
                    Admission::ToolBefore,
                    HookScope::session(&agent, &session),
                    || (input.clone(), output.clone()),
                )
                .await;
            if let Ok(Some(out)) = answer
                && out["args"]["command"] == want.as_str()
            {
                break;
            }
            if written.elapsed() > Duration::from_secs(20) {
                bail!("edit {version} was not live after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = written.elapsed();
        latencies.push(took.as_secs_f64() * 1000.0);
        eprintln!(
            "  edit {version}: live after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        // Let the watcher settle so edits do not merge.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop(&kernel, &service).await;
    drop(kernel);
    Ok(Section {
        scenario: "Hot-reload latency".into(),
        setup: format!(
            "A Python service's file is rewritten {edits} times; each time, the clock runs from the write until \
             `tool.before` is answered by the new code (polled every 2 ms). It includes the watcher's 200 ms \
             debounce, the rescan, stopping the old process (shutdown, exit) and starting, connecting and \
             registering the new one. Absolute figures of this machine; target p50 under 500 ms."
        ),
        figures: vec![Figure::from_samples(
            "file written → new hook answering",
            "ms",
            &latencies,
            &format!("min / median (= p50) / max over {edits} edits; target p50 under 500 ms"),
        )],
    })
}

/// `session.get` from a service over its socket against the same calls over HTTP.
pub async fn service_syscalls(plan: &Plan) -> Result<Section> {
    let kernel = kernel_with_bench_skills().await?;
    let (_, session) = kernel.admin.agent_and_session().await;
    let service = start(&kernel, RUST_SKILL).await?;
    let concurrency = 64;
    let http = http_client();
    let (mut socket_rps, mut http_rps, mut ratio) = (vec![], vec![], vec![]);
    let mut errors = 0u64;
    let body = serde_json::to_vec(&json!({"op": "session.get", "sessionId": session}))?;
    for round in 0..=plan.rounds {
        let load = kernel
            .admin
            .call(
                "bench-rust.load",
                json!({"sessionId": session, "millis": plan.window.as_millis() as u64, "concurrency": concurrency}),
            )
            .await;
        let Some(load) = load.data.filter(|_| load.ok) else {
            bail!("the service's load run failed: {:?}", load.error);
        };
        let over_socket =
            load["count"].as_f64().unwrap_or(0.0) / load["seconds"].as_f64().unwrap_or(1.0);
        let over_http = posts(&http, &kernel, &body, concurrency, plan.window).await;
        if round == 0 {
            continue;
        }
        errors += over_http.errors + load["errors"].as_u64().unwrap_or(0);
        socket_rps.push(over_socket);
        http_rps.push(over_http.per_second);
        ratio.push(over_socket / over_http.per_second);
        eprintln!(
            "  round {round}: over the service socket {over_socket:.0}/s, over HTTP {:.0}/s",
            over_http.per_second
        );
    }
    stop(&kernel, &service).await;
    drop(kernel);
    Ok(Section {
        scenario: "Syscalls from a service (`session.get` over its socket vs HTTP)".into(),
        setup: format!(
            "{concurrency} closed loops of `session.get` inside a Rust SDK service (its own process, one \
             connection, requests multiplexed by id), against {concurrency} closed-loop HTTP/1.1 clients with \
             keep-alive from the bench process. Errors: {errors}."
        ),
        figures: vec![
            Figure::from_samples(
                "service socket throughput ÷ HTTP throughput",
                "ratio",
                &ratio,
                "the figure",
            ),
            Figure::from_samples(
                "session.get over the service socket",
                "req/s",
                &socket_rps,
                "absolute, this machine",
            ),
            Figure::from_samples(
                "session.get over HTTP",
                "req/s",
                &http_rps,
                "absolute, this machine",
            ),
        ],
    })
}

/// `aos-bench serve-rust`: the benchmark's Rust service. It allows every `tool.before`
/// and offers `bench-rust.load`, closed loops of `session.get` over its own socket.
pub async fn serve_rust() -> Result<()> {
    let service = Service::from_env(RUST_SKILL);
    let client = service.client();
    service
        .on_hook("tool.before", |_input, _output| async { Verdict::Allow })
        .on_op(
            "load",
            OpKindWire::Query,
            "Runs closed loops of session.get over the service socket; params {sessionId, millis, concurrency}.",
            move |params: Value, _caller| {
                let client = client.clone();
                async move {
                    let session = params["sessionId"].as_str().unwrap_or_default().to_owned();
                    let millis = params["millis"].as_u64().unwrap_or(1000).min(20_000);
                    let concurrency = params["concurrency"].as_u64().unwrap_or(1).clamp(1, 512) as usize;
                    let deadline = Instant::now() + Duration::from_millis(millis);
                    let started = Instant::now();
                    let loops: Vec<_> = (0..concurrency)
                        .map(|_| {
                            let client = client.clone();
                            let session = session.clone();
                            tokio::spawn(async move {
                                let (mut ok, mut failed) = (0u64, 0u64);
                                while Instant::now() < deadline {
                                    match client.call("session.get", json!({"sessionId": session})).await {
                                        Ok(envelope) if envelope.ok => ok += 1,
                                        _ => failed += 1,
                                    }
                                }
                                (ok, failed)
                            })
                        })
                        .collect();
                    let (mut count, mut errors) = (0u64, 0u64);
                    for done in loops {
                        let (ok, failed) = done
                            .await
                            .map_err(|e| OpError::new(aos_sdk::ErrorCode::Internal, e.to_string()))?;
                        count += ok;
                        errors += failed;
                    }
                    Ok(json!({"count": count, "errors": errors, "seconds": started.elapsed().as_secs_f64()}))
                }
            },
        )
        .run()
        .await
        .map_err(anyhow::Error::from)
}

/// `aos-bench echo <socket>`: connects and echoes every line back.
pub async fn echo(socket: &Path) -> Result<()> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        write.write_all(line.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
    Ok(())
}
