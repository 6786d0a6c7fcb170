//! aos-mcp end to end against MCP servers no one on the team wrote: the reference
//! `mcp-server-time` (PyPI) over stdio and `@modelcontextprotocol/server-everything`
//! (npm) over streamable HTTP, both installed by `scripts/install-mcp-test-servers`
//! (which `scripts/test` runs). The tools are listed and described, an agent calls one
//! from bash with `mcp call` (through `tool.before` like any command), bad calls get
//! clear errors, and a crashed or vanished server is reconnected with backoff while a
//! call to it fails with a message that says so.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aos_sdk::protocol::ErrorCode;
use aos_tests::dispatching::{configure, run, tool_results};
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Api, Setup, TestKernel, eventually, repo_root};
use serde_json::{Value, json};

/// The everything server's launcher, where the install script puts it.
fn everything_bin() -> PathBuf {
    let path = std::env::var_os("AOS_MCP_EVERYTHING").map_or_else(
        || repo_root().join("target/mcp-servers/node_modules/.bin/mcp-server-everything"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the MCP test server {} is missing: run scripts/install-mcp-test-servers (scripts/test does)",
        path.display()
    );
    path
}

fn check_time_server() {
    // A probe of the machine, not a process the kernel should own.
    #[allow(clippy::disallowed_methods)]
    let found = Command::new("python3")
        .args(["-c", "import mcp_server_time"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the MCP test server mcp-server-time (PyPI) is missing: run scripts/install-mcp-test-servers (scripts/test does)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The everything server over streamable HTTP on `port`.
struct HttpServer(Child);

impl HttpServer {
    fn start(port: u16) -> Self {
        // A server outside AOS that the test starts and kills itself.
        #[allow(clippy::disallowed_methods)]
        let child = Command::new(everything_bin())
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the everything server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn server(api: &Api, name: &str) -> Value {
    api.ok("aos-mcp.list", json!({"server": name})).await["servers"][0].clone()
}

async fn ready(api: &Api, name: &str, connects: u64) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("MCP server `{name}` connected {connects} time(s)"),
        || async move {
            let s = server(api, name).await;
            (s["state"] == "ready" && s["connects"].as_u64() >= Some(connects)).then_some(s)
        },
    )
    .await
}

/// Pids of the processes whose parent is `parent` and whose command line has `needle`.
fn children(parent: u32, needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_servers_are_tools_one_bash_command_away_and_come_back_after_a_crash() {
    check_time_server();
    let port = free_port();
    let mut http = Some(HttpServer::start(port));
    let setup = Setup::new();
    std::fs::write(
        setup.skills().join("aos-mcp/config.json"),
        json!({
            "servers": {
                "time": {"command": "python3", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
                "everything": {"url": format!("http://127.0.0.1:{port}/mcp")},
            },
            "callTimeoutMs": 20000,
            "connectTimeoutMs": 20000,
            "maxResultChars": 100000,
            "backoffMaxMs": 2000,
        })
        .to_string(),
    )
    .unwrap();
    let kernel = TestKernel::start_with(setup);
    let api = &kernel.admin;
    let service = api.ok("skill.start", json!({"name": "aos-mcp"})).await;
    let service_pid = service["pid"].as_u64().unwrap() as u32;

    // Listed: both servers with their tools.
    let time = ready(api, "time", 1).await;
    let names: Vec<&str> = time["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"get_current_time"), "{time}");
    assert!(names.contains(&"convert_time"), "{time}");
    assert_eq!(time["transport"], "stdio");
    let everything = ready(api, "everything", 1).await;
    assert_eq!(everything["transport"], "streamable-http");
    for s in [&time, &everything] {
        assert!(
            s["protocolVersion"].is_string(),
            "no protocol version negotiated: {s}"
        );
        println!(
            "{}: protocol {}, server {}",
            s["name"], s["protocolVersion"], s["serverInfo"]
        );
    }
    assert!(
        everything["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo"),
        "{everything}"
    );
    let described = api
        .ok(
            "aos-mcp.describe",
            json!({"server": "time", "tool": "get_current_time"}),
        )
        .await;
    assert!(
        described["tool"]["inputSchema"]["properties"]["timezone"].is_object(),
        "{described}"
    );

    // An agent calls a tool from bash.
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let (_, session) = api.agent_and_session().await;
    llm.push([
        Reply::bash(r#"mcp call time get_current_time --json '{"timezone": "UTC"}'"#),
        Reply::text("it is now"),
    ]);
    let results = tool_results(&run(api, &session, "what time is it in UTC?").await);
    assert_eq!(results[0].exit_code, Some(0), "{results:?}");
    let answer: Value = serde_json::from_str(results[0].preview.trim())
        .unwrap_or_else(|e| panic!("the tool's text is not JSON ({e}): {}", results[0].preview));
    assert_eq!(answer["timezone"], "UTC", "{answer}");
    let reported =
        chrono::DateTime::parse_from_rfc3339(answer["datetime"].as_str().unwrap()).unwrap();
    let skew = (chrono::Utc::now() - reported.to_utc()).num_seconds().abs();
    assert!(skew < 120, "the time server says {reported}, {skew} s off");

    // Over streamable HTTP, from the API.
    let echoed = api
        .ok(
            "aos-mcp.call",
            json!({"server": "everything", "tool": "echo", "arguments": {"message": "hello mcp"}}),
        )
        .await;
    assert!(
        echoed["text"].as_str().unwrap().contains("hello mcp"),
        "{echoed}"
    );
    assert_eq!(echoed["isError"], false);

    // Bad calls name what is wrong.
    let unknown = api
        .err(
            "aos-mcp.call",
            json!({"server": "nope", "tool": "x"}),
            ErrorCode::NotFound,
        )
        .await;
    assert!(
        unknown.message.contains("configured: everything, time"),
        "{}",
        unknown.message
    );
    let no_tool = api
        .err(
            "aos-mcp.call",
            json!({"server": "time", "tool": "nap"}),
            ErrorCode::NotFound,
        )
        .await;
    assert!(
        no_tool.message.contains("get_current_time"),
        "{}",
        no_tool.message
    );
    let bad_args = api
        .err(
            "aos-mcp.call",
            json!({"server": "time", "tool": "get_current_time", "arguments": "UTC"}),
            ErrorCode::InvalidParams,
        )
        .await;
    assert!(
        bad_args
            .message
            .contains("`arguments` must be a JSON object"),
        "{}",
        bad_args.message
    );
    // A tool error is a result with isError, and the script exits 1.
    llm.push([
        Reply::bash(r#"mcp call time get_current_time --json '{"timezone": "Not/AZone"}'"#),
        Reply::text("no such zone"),
    ]);
    let results = tool_results(&run(api, &session, "what time is it on Mars?").await);
    assert_eq!(results[0].exit_code, Some(1), "{results:?}");

    // The stdio server crashes: a call fails clearly, then it is back.
    let pids = children(service_pid, "mcp_server_time");
    assert_eq!(pids.len(), 1, "one time server under aos-mcp: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = api
        .call(
            "aos-mcp.call",
            json!({"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}),
        )
        .await;
    let error = failed.error.expect("a call to a killed server must fail");
    assert_eq!(error.code, ErrorCode::Unavailable, "{}", error.message);
    assert!(error.message.contains("`time`"), "{}", error.message);
    let time = ready(api, "time", 2).await;
    assert_eq!(time["state"], "ready");
    let again = api
        .ok(
            "aos-mcp.call",
            json!({"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}),
        )
        .await;
    assert!(again["text"].as_str().unwrap().contains("UTC"), "{again}");

    // The HTTP server goes away: calls fail clearly; it comes back and so do they.
    drop(http.take());
    let failed = api
        .call(
            "aos-mcp.call",
            json!({"server": "everything", "tool": "echo", "arguments": {"message": "anyone?"}}),
        )
        .await;
    let error = failed.error.expect("a call to a stopped server must fail");
    assert_eq!(error.code, ErrorCode::Unavailable, "{}", error.message);
    assert!(error.message.contains("`everything`"), "{}", error.message);
    let _http = HttpServer::start(port);
    ready(api, "everything", 2).await;
    let echoed = api
        .ok(
            "aos-mcp.call",
            json!({"server": "everything", "tool": "echo", "arguments": {"message": "back"}}),
        )
        .await;
    assert!(
        echoed["text"].as_str().unwrap().contains("back"),
        "{echoed}"
    );
}
