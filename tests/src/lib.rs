//! Test support for AOS end-to-end tests: kernels on temporary directories, reached
//! only through their public surfaces (HTTP, the CLI binary).
//!
//! - [`TestKernel`] runs the kernel library in-process on its own thread and runtime;
//!   dropping it shuts the kernel down and joins the thread.
//! - [`SpawnedKernel`] runs the real `aos` binary as a child process; dropping it kills
//!   and reaps the child.
//!
//! Readiness is always polled with a deadline, never a fixed sleep.

// Test support: failing loudly with context is the point, so unwrap/expect are fine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod dispatching;
pub mod llm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aos_kernel::KernelConfig;
pub use aos_kernel::store::postgres::testing::TestDatabase;
use aos_sdk::Client;
use aos_sdk::protocol::{Envelope, ErrorBody, ErrorCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// Path of the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A temporary skill root holding a copy of the repository's `skills/`. The web UI
/// listens on a free port there (`aos-frontend.info` tells which), so kernels of tests
/// running side by side never compete for port 3000.
pub fn copy_repo_skills(into: &Path) -> PathBuf {
    let target = into.join("skills");
    copy_dir(&repo_root().join("skills"), &target);
    std::fs::write(
        target.join("aos-frontend/config.json"),
        r#"{"bind": "127.0.0.1:0"}"#,
    )
    .unwrap();
    target
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// Writes a text-only skill into `root`.
pub fn write_skill(root: &Path, name: &str, description: &str, body: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        format!("---\nname: {name}\ndescription: {description}\n---\n{body}\n"),
    )
    .unwrap();
}

/// Writes a skill whose service is a Python script using the bundled SDK.
pub fn write_python_skill(root: &Path, name: &str, script: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service.py"), script).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        format!("---\nname: {name}\ndescription: test service {name}\nservice: ./service.py\n---\n# {name}\n"),
    )
    .unwrap();
    dir
}

/// The directory holding the workspace's binaries (`aos-e2e`, `aos-event-logger`, …):
/// where `aos-e2e` is, else the running executable's own directory.
pub fn bin_dir() -> PathBuf {
    find_aos_bin()
        .or_else(|| std::env::current_exe().ok())
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap()
}

/// A client with convenience checks around envelopes.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: Client,
}

impl Api {
    pub fn new(url: &str, token: Option<String>) -> Self {
        Self {
            client: Client::new(url, token),
        }
    }

    /// The raw envelope.
    pub async fn call(&self, op: &str, params: Value) -> Envelope {
        self.client.call(op, params).await.unwrap()
    }

    /// The data of a call that must succeed.
    pub async fn ok(&self, op: &str, params: Value) -> Value {
        let envelope = self.call(op, params.clone()).await;
        assert!(
            envelope.ok,
            "`{op}` with {params} failed: {:?}",
            envelope.error
        );
        envelope.data.unwrap()
    }

    /// The error of a call that must fail with `code`.
    pub async fn err(&self, op: &str, params: Value, code: ErrorCode) -> ErrorBody {
        let envelope = self.call(op, params.clone()).await;
        let error = envelope
            .error
            .unwrap_or_else(|| panic!("`{op}` with {params} succeeded, expected {code}"));
        assert_eq!(error.code, code, "`{op}` with {params}: {}", error.message);
        error
    }

    /// Creates an agent and a session; returns their ids.
    pub async fn agent_and_session(&self) -> (String, String) {
        let agent = self
            .ok("agent.create", serde_json::json!({"displayName": "t"}))
            .await;
        let agent_id = agent["agentId"].as_str().unwrap().to_owned();
        let session = self
            .ok("session.create", serde_json::json!({"agentId": agent_id}))
            .await;
        (agent_id, session["sessionId"].as_str().unwrap().to_owned())
    }
}

/// How to set up a kernel for a test.
pub struct Setup {
    pub config: KernelConfig,
    /// Keeps the temporary directory alive.
    pub dir: tempfile::TempDir,
    /// The test's own PostgreSQL database, when the suite runs on PostgreSQL; dropped
    /// with the setup.
    pub database: Option<Arc<TestDatabase>>,
}

/// The store backend in-process test kernels use: `AOS_TEST_BACKEND=postgres` runs
/// them on a fresh PostgreSQL database each (`AOS_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`, is where databases are created);
/// anything else, or nothing, on SQLite under the test's home.
pub fn postgres_backend() -> bool {
    match std::env::var("AOS_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("AOS_TEST_BACKEND is `{other}`: use `sqlite` or `postgres`"),
    }
}

/// A fresh PostgreSQL database for one test, dropped when the last reference goes.
/// Creating it needs a runtime of its own: tests call this from sync and async code.
pub fn test_database() -> Arc<TestDatabase> {
    let created = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(TestDatabase::create())
    })
    .join()
    .expect("creating the test database panicked");
    Arc::new(created.unwrap_or_else(|e| panic!("{e}")))
}

/// The store a (stopped) test kernel uses, opened directly: for tests that write
/// states only a crash could leave behind.
pub async fn open_store(config: &KernelConfig) -> Arc<dyn aos_kernel::store::Store> {
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", config.home.join("aos.db").display()));
    aos_kernel::store::open_url(&url, aos_kernel::store::sqlite::SyncMode::Normal)
        .await
        .unwrap_or_else(|e| panic!("opening the store at {url}: {e}"))
}

impl Setup {
    /// A kernel on a fresh temporary home with a copy of the repository's skills and
    /// the repository's `aoscb.json` (and a fresh database when the suite runs on
    /// PostgreSQL, see [`postgres_backend`]).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let skills = copy_repo_skills(dir.path());
        let mut config = KernelConfig::new(dir.path().join("home"), skills);
        config.port = 0;
        config.system_file = Some(repo_root().join("aoscb.json"));
        config.service_bin_dirs = vec![bin_dir()];
        let database = postgres_backend().then(test_database);
        config.database_url = database.as_ref().map(|d| d.url.clone());
        Self {
            config,
            dir,
            database,
        }
    }

    pub fn skills(&self) -> PathBuf {
        self.config.skill_root.clone()
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel running in-process on its own thread and runtime.
pub struct TestKernel {
    pub url: String,
    /// The kernel itself, for benchmarks that call into it (tests use the surfaces).
    pub kernel: std::sync::Arc<aos_kernel::Kernel>,
    pub admin: Api,
    pub admin_token: String,
    pub home: PathBuf,
    pub skills: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
    database: Option<Arc<TestDatabase>>,
}

impl TestKernel {
    pub fn start() -> Self {
        Self::start_with(Setup::new())
    }

    /// The URL of this kernel's PostgreSQL database (`AOS_TEST_BACKEND=postgres`).
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_deref().map(|d| d.url.as_str())
    }

    pub fn start_with(setup: Setup) -> Self {
        let Setup {
            config,
            dir,
            database,
        } = setup;
        let home = config.home.clone();
        let skills = config.skill_root.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("aos-test-kernel".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    match aos_kernel::start(config).await {
                        Ok(running) => {
                            ready_tx
                                .send(Ok((running.addr(), running.kernel.clone())))
                                .unwrap();
                            running
                                .serve(async move {
                                    let _ = stop_rx.await;
                                })
                                .await;
                        }
                        Err(error) => ready_tx.send(Err(error.to_string())).unwrap(),
                    }
                });
            })
            .unwrap();
        let (addr, kernel) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kernel did not start within 30 s")
            .unwrap_or_else(|e| panic!("kernel failed to start: {e}"));
        let url = format!("http://{addr}");
        let admin_token = std::fs::read_to_string(home.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        wait_for_default_services(&url, &admin_token);
        Self {
            admin: Api::new(&url, Some(admin_token.clone())),
            kernel,
            url,
            admin_token,
            home,
            skills,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir: Some(dir),
            database,
        }
    }

    /// A client with another token (or none).
    pub fn api(&self, token: Option<&str>) -> Api {
        Api::new(&self.url, token.map(str::to_owned))
    }

    /// Stops the kernel (graceful shutdown) and returns its setup so it can be
    /// started again on the same data.
    pub fn stop(mut self) -> Setup {
        self.shutdown();
        let mut config = KernelConfig::new(self.home.clone(), self.skills.clone());
        config.port = 0;
        config.system_file = Some(repo_root().join("aoscb.json"));
        config.service_bin_dirs = vec![bin_dir()];
        config.database_url = self.database.as_ref().map(|d| d.url.clone());
        Setup {
            config,
            dir: self.dir.take().unwrap(),
            database: self.database.take(),
        }
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("kernel thread panicked");
        }
    }
}

impl Drop for TestKernel {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The real binary as a child process. Dropping it sends SIGKILL and reaps it.
pub struct SpawnedKernel {
    pub child: Child,
    pub url: String,
    pub admin: Api,
    pub home: PathBuf,
    pub dir: PathBuf,
}

/// The `aos` binary under test: `aos-e2e`, which cargo builds next to this package's
/// test executables (`target/<profile>/`), or `AOS_E2E_BIN` when set.
pub fn aos_bin() -> PathBuf {
    find_aos_bin().unwrap_or_else(|| {
        panic!(
            "cannot find the aos-e2e binary near {:?}; run the tests through cargo (it builds it) or set AOS_E2E_BIN",
            std::env::current_exe().ok()
        )
    })
}

fn find_aos_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AOS_E2E_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent();
    while let Some(candidate) = dir {
        let bin = candidate.join("aos-e2e");
        if bin.is_file() {
            return Some(bin);
        }
        dir = candidate.parent();
    }
    None
}

/// A `Command` for the `aos` binary with `AOS_*` variables of the test environment
/// cleared, so nothing leaks in from the developer's shell.
pub fn aos_command(cwd: &Path) -> Command {
    // Tests spawn the binary under test; this is the one place they do.
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(aos_bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("AOS_") {
            command.env_remove(key);
        }
    }
    command.current_dir(cwd);
    command
}

/// A `Command` for a helper program of the test environment (a script, a tool).
pub fn aos_command_at(program: &Path) -> Command {
    // Tests start their helpers here and nowhere else.
    #[allow(clippy::disallowed_methods)]
    let command = Command::new(program);
    command
}

/// A directory for a spawned daemon: the repository's skills and `aoscb.json`, copied.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_repo_skills(dir.path());
    std::fs::copy(
        repo_root().join("aoscb.json"),
        dir.path().join("aoscb.json"),
    )
    .unwrap();
    dir
}

impl SpawnedKernel {
    /// Starts `aos up` in `dir` (home `dir/.aos`, skills `dir/skills`) on a free port.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_args(dir, &[])
    }

    pub fn start_with_args(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// `aos up` with extra arguments and environment variables (the test's own
    /// `AOS_*` variables are cleared first, so only these reach the daemon).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let home = dir.join(".aos");
        let _ = std::fs::remove_file(home.join("api.url"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("kernel.log"))
            .unwrap();
        let child = aos_command(dir)
            .args(["up", "--port", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn aos up");
        let url = wait_for_url(&home, Duration::from_secs(30), dir);
        let token = match env.iter().find(|(key, _)| *key == "AOS_API_TOKEN") {
            Some((_, token)) => (*token).to_owned(),
            None => std::fs::read_to_string(home.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned(),
        };
        Self {
            child,
            admin: Api::new(&url, Some(token)),
            url,
            home,
            dir: dir.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident and peak memory of the daemon in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kernel.log")).unwrap_or_default()
    }
}

impl Drop for SpawnedKernel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the daemon to write its address and answer `/health`.
fn wait_for_url(home: &Path, limit: Duration, dir: &Path) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(url) = std::fs::read_to_string(home.join("api.url")) {
            let url = url.trim().to_owned();
            if !url.is_empty() && health_ok(&url) {
                return url;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("kernel.log")).unwrap_or_default();
            panic!("the daemon did not become ready within {limit:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn health_ok(url: &str) -> bool {
    let Some(host) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocks until every service the system's default skills start is running and has
/// registered, so a test's first dispatch meets the same kernel every time. Panics
/// with the service's error when one fails. Polls over HTTP from a thread of its own
/// (callers may be inside a runtime).
fn wait_for_default_services(url: &str, token: &str) {
    let api = Api::new(url, Some(token.to_owned()));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let system = api.ok("system.get", serde_json::json!({})).await;
            let skills = api.ok("skill.list", serde_json::json!({})).await;
            let indexed = |name: &str| {
                skills
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == name && s["error"].is_null())
            };
            let wanted: Vec<String> = system["defaultSkills"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["start"] == "enable")
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .filter(|name| indexed(name))
                .collect();
            loop {
                let services = api.ok("service.list", serde_json::json!({})).await;
                let services = services.as_array().cloned().unwrap_or_default();
                let mut missing = Vec::new();
                for name in &wanted {
                    match services.iter().find(|s| s["skill"] == name.as_str()) {
                        Some(s) if s["state"] == "failed" => {
                            panic!("default service {name} failed: {}", s["lastError"])
                        }
                        Some(s)
                            if s["state"] == "running"
                                && (s["registered"]["hooks"]
                                    .as_array()
                                    .is_some_and(|h| !h.is_empty())
                                    || s["registered"]["ops"]
                                        .as_array()
                                        .is_some_and(|o| !o.is_empty())) => {}
                        _ => missing.push(name.clone()),
                    }
                }
                if missing.is_empty() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "default services not registered within 30 s: {missing:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
