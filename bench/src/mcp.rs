//! `mcp call` overhead beyond the MCP server's own time.
//!
//! The baseline, in the same run, is the same tool called directly by an MCP client in
//! this process (the `rmcp` crate, as `aos-mcp` uses) against its own copy of the same
//! server: that is the server's own time plus its transport. Then the same call through
//! `aos-mcp.call` over the kernel's HTTP API, and from an agent's bash as `mcp call …`
//! (the kernel measures the bash call). Two reference servers: `mcp-server-time`
//! (Python, stdio) and `server-everything` (Node, streamable HTTP), installed by
//! `scripts/install-mcp-test-servers`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aos_tests::llm::{Reply, ScriptedLlm, last_user_text, tool_results_since_user};
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};

use crate::Plan;
use crate::context::check_services_built;
use crate::dispatch::{Harness, KernelProcess, dispatch_once};
use crate::report::{Figure, Section, percentile};

const TIME_ARGS: [&str; 4] = ["-m", "mcp_server_time", "--local-timezone", "UTC"];

fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    }
}

/// The everything server over streamable HTTP on a free port; killed on drop.
struct Everything {
    child: tokio::process::Child,
    url: String,
}

impl Everything {
    async fn start() -> Result<Self> {
        let bin = aos_tests::repo_root()
            .join("target/mcp-servers/node_modules/.bin/mcp-server-everything");
        if !bin.exists() {
            bail!(
                "{} is missing: run scripts/install-mcp-test-servers",
                bin.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // A server outside AOS that the bench starts and kills itself.
        #[allow(clippy::disallowed_methods)]
        let child = tokio::process::Command::new(bin)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the everything server did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        })
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn direct_stdio() -> Result<RunningService<RoleClient, ()>> {
    // The bench's own copy of the server, for the baseline.
    #[allow(clippy::disallowed_methods)]
    let command = tokio::process::Command::new("python3").configure(|c| {
        c.args(TIME_ARGS);
    });
    let transport = TokioChildProcess::builder(command)
        .stderr(std::process::Stdio::null())
        .spawn()?
        .0;
    Ok(().serve_with_lifecycle(transport, lifecycle()).await?)
}

async fn direct_http(url: &str) -> Result<RunningService<RoleClient, ()>> {
    let transport = StreamableHttpClientTransport::from_uri(url);
    Ok(().serve_with_lifecycle(transport, lifecycle()).await?)
}

/// Microseconds per call of `tool` made directly, sorted.
async fn direct_calls(
    client: &RunningService<RoleClient, ()>,
    tool: &str,
    arguments: &Value,
    n: usize,
) -> Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let request = CallToolRequestParams::new(tool.to_owned())
            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
        let started = Instant::now();
        let result = client.call_tool(request).await?;
        samples.push(started.elapsed().as_micros() as u64);
        if result.is_error == Some(true) {
            bail!("{tool} answered an error: {:?}", result.content);
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Microseconds per `aos-mcp.call` over HTTP, and the service's own `serverMs`, sorted.
async fn api_calls(
    kernel: &KernelProcess,
    server: &str,
    tool: &str,
    arguments: &Value,
    n: usize,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let (mut wall, mut inner) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        let out = kernel
            .api
            .ok(
                "aos-mcp.call",
                json!({"server": server, "tool": tool, "arguments": arguments}),
            )
            .await;
        wall.push(started.elapsed().as_micros() as u64);
        inner.push((out["serverMs"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
    }
    wall.sort_unstable();
    inner.sort_unstable();
    Ok((wall, inner))
}

pub async fn call_overhead(plan: &Plan) -> Result<Section> {
    check_services_built()?;
    let everything = Everything::start().await?;
    let llm = ScriptedLlm::start();
    llm.forget_requests();
    llm.rule(|body| {
        let last = last_user_text(body);
        let reply = if tool_results_since_user(body) > 0 {
            Reply::text("done")
        } else if last == "mcp" {
            Reply::bash(r#"mcp call time get_current_time --json '{"timezone": "UTC"}' >/dev/null"#)
        } else {
            Reply::bash("aos call agent.list >/dev/null")
        };
        reply.into()
    });
    let kernel = KernelProcess::start_with(&llm, None, Harness::Default, json!({})).await?;
    let skills = kernel
        .home
        .parent()
        .context("the kernel's directory")?
        .join("skills");
    std::fs::write(
        skills.join("aos-mcp/config.json"),
        json!({
            "servers": {
                "time": {"command": "python3", "args": TIME_ARGS},
                "everything": {"url": everything.url},
            },
            "callTimeoutMs": 30000, "connectTimeoutMs": 30000, "maxResultChars": 100000, "backoffMaxMs": 2000,
        })
        .to_string(),
    )?;
    kernel
        .api
        .ok("skill.start", json!({"name": "aos-mcp"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The service's operations appear once it registered.
        let list = kernel.api.call("aos-mcp.list", json!({})).await;
        let list = list.data.unwrap_or_default();
        let servers = list["servers"].as_array().cloned().unwrap_or_default();
        if servers.len() == 2 && servers.iter().all(|s| s["state"] == "ready") {
            break;
        }
        if Instant::now() > deadline {
            bail!("aos-mcp did not connect both servers: {list}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = if plan.rounds <= 1 { 20 } else { 300 };
    let scripted = if plan.rounds <= 1 { 3 } else { 30 };
    let time_args = json!({"timezone": "UTC"});
    let echo_args = json!({"message": "hello"});
    let stdio = direct_stdio().await?;
    let http = direct_http(&everything.url).await?;
    // Warm both paths before measuring.
    direct_calls(&stdio, "get_current_time", &time_args, 5).await?;
    api_calls(&kernel, "time", "get_current_time", &time_args, 5).await?;
    let (mut d_time, mut a_time, mut s_time, mut d_echo, mut a_echo, mut s_echo) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Alternate the paths in rounds, so drift hits both alike.
    for _ in 0..5 {
        d_time.extend(direct_calls(&stdio, "get_current_time", &time_args, n / 5).await?);
        let (wall, inner) =
            api_calls(&kernel, "time", "get_current_time", &time_args, n / 5).await?;
        a_time.extend(wall);
        s_time.extend(inner);
        d_echo.extend(direct_calls(&http, "echo", &echo_args, n / 5).await?);
        let (wall, inner) = api_calls(&kernel, "everything", "echo", &echo_args, n / 5).await?;
        a_echo.extend(wall);
        s_echo.extend(inner);
    }
    for v in [
        &mut d_time,
        &mut a_time,
        &mut s_time,
        &mut d_echo,
        &mut a_echo,
        &mut s_echo,
    ] {
        v.sort_unstable();
    }
    // From an agent's bash.
    let session = kernel
        .api
        .ok("agent.create", json!({"displayName": "mcp-bench"}))
        .await["agentId"]
        .as_str()
        .context("agent id")?
        .to_owned();
    let session = kernel
        .api
        .ok("session.create", json!({"agentId": session}))
        .await["sessionId"]
        .as_str()
        .context("session id")?
        .to_owned();
    let (mut script, mut cli) = (vec![], vec![]);
    for _ in 0..scripted {
        for (text, into) in [("mcp", &mut script), ("baseline", &mut cli)] {
            let (_, id) = dispatch_once(&kernel.api, &session, text).await?;
            let record = kernel
                .api
                .ok("dispatch.get", json!({"dispatchId": id}))
                .await;
            into.push(record["timing"]["toolsUs"].as_u64().context("toolsUs")?);
        }
    }
    script.sort_unstable();
    cli.sort_unstable();
    drop(stdio);
    drop(http);
    let p = |v: &Vec<u64>| percentile(v, 0.5);
    eprintln!(
        "  time: direct {} µs, aos-mcp.call {} µs; echo: direct {} µs, aos-mcp.call {} µs; `mcp call` from bash {} µs",
        p(&d_time),
        p(&a_time),
        p(&d_echo),
        p(&a_echo),
        p(&script)
    );
    Ok(Section {
        scenario: "MCP calls through aos-mcp".into(),
        setup: format!(
            "{n} calls per path, alternating in 5 rounds: `get_current_time` of mcp-server-time (Python, stdio) \
             and `echo` of server-everything (Node, streamable HTTP). Baseline: the same tool called directly \
             by an rmcp client in the bench process against its own copy of the server (the server's own time \
             plus its transport). Through AOS: `aos-mcp.call` over the kernel's HTTP API (HTTP, the syscall \
             registry, the service socket, the service's client, the server). From bash: a dispatch whose one \
             bash call is `mcp call time get_current_time …` ({scripted} rounds; the kernel's bash time), \
             beside one `aos call` from bash."
        ),
        figures: vec![
            Figure::from_samples(
                "stdio: direct call, p50 (baseline)",
                "µs",
                &[p(&d_time)],
                "the server's own time + stdio",
            ),
            Figure::from_samples(
                "stdio: aos-mcp.call over HTTP, p50",
                "µs",
                &[p(&a_time)],
                "",
            ),
            Figure::from_samples(
                "stdio: overhead beyond the server, p50",
                "µs",
                &[p(&a_time) - p(&d_time)],
                "the figure: aos-mcp.call − direct",
            ),
            Figure::from_samples(
                "stdio: aos-mcp.call / direct",
                "ratio",
                &[p(&a_time) / p(&d_time).max(1.0)],
                "",
            ),
            Figure::from_samples(
                "stdio: the service's own round trip (serverMs), p50",
                "µs",
                &[p(&s_time)],
                "as aos-mcp measured it",
            ),
            Figure::from_samples(
                "HTTP: direct call, p50 (baseline)",
                "µs",
                &[p(&d_echo)],
                "the server's own time + HTTP",
            ),
            Figure::from_samples("HTTP: aos-mcp.call over HTTP, p50", "µs", &[p(&a_echo)], ""),
            Figure::from_samples(
                "HTTP: overhead beyond the server, p50",
                "µs",
                &[p(&a_echo) - p(&d_echo)],
                "aos-mcp.call − direct",
            ),
            Figure::from_samples(
                "HTTP: aos-mcp.call / direct",
                "ratio",
                &[p(&a_echo) / p(&d_echo).max(1.0)],
                "",
            ),
            Figure::from_samples(
                "HTTP: the service's own round trip (serverMs), p50",
                "µs",
                &[p(&s_echo)],
                "",
            ),
            Figure::from_samples(
                "`mcp call` from an agent's bash (stdio tool), p50",
                "µs",
                &[p(&script)],
                "python3 start, `aos call`, the call",
            ),
            Figure::from_samples(
                "`mcp call` overhead beyond the server, p50",
                "µs",
                &[p(&script) - p(&d_time)],
                "what an agent pays beyond the direct call",
            ),
            Figure::from_samples(
                "one `aos call` from bash, p50",
                "µs",
                &[p(&cli)],
                "the CLI's share, for comparison",
            ),
        ],
    })
}
