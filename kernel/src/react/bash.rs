//! The bash executor: `bash -c` in its own process group, in the agent's workspace,
//! with exactly the environment it is given, a deadline, output caps and rlimits;
//! optionally inside bubblewrap. Interrupting or timing out kills the whole group.
//!
//! With the supervisor, this is the only place that starts processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aos_sdk::protocol::Sandbox;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Limits applied inside the shell before the command runs: no core dumps, 4096 open
/// files, files up to 8 GiB.
const RLIMITS: &str = "ulimit -c 0 2>/dev/null; ulimit -n 4096 2>/dev/null; ulimit -f 16777216 2>/dev/null; eval \"$1\"";
/// After the command exits, how long its leftovers may keep the output pipes open.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// One command to run.
#[derive(Debug, Clone)]
pub struct BashRequest {
    pub command: String,
    pub cwd: PathBuf,
    /// The agent's workspace (writable inside a sandbox).
    pub workspace: PathBuf,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub max_output_bytes: usize,
    pub sandbox: Sandbox,
    /// Where running process groups are recorded (`<pgid>` files holding the dispatch
    /// id), so a kernel that was killed can end them when it starts again.
    pub registry: Option<(PathBuf, String)>,
}

/// What it did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BashResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Bytes beyond the cap that were dropped, per stream.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    pub timed_out: bool,
    pub interrupted: bool,
    pub duration: Duration,
}

impl BashResult {
    pub fn truncated(&self) -> bool {
        self.stdout_dropped > 0 || self.stderr_dropped > 0
    }

    /// The result as the model sees it by default: stdout, then stderr, then what
    /// went wrong.
    pub fn visible(&self) -> String {
        let mut text = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&self.stderr);
        }
        if self.truncated() {
            text.push_str(&format!(
                "\n[output truncated: {} bytes of stdout and {} bytes of stderr not shown]",
                self.stdout_dropped, self.stderr_dropped
            ));
        }
        text
    }

    /// Why the call did not succeed, if it did not.
    pub fn failure(&self, timeout: Duration) -> Option<String> {
        if self.interrupted {
            Some("interrupted".to_owned())
        } else if self.timed_out {
            Some(format!("timed out after {} ms", timeout.as_millis()))
        } else if let Some(signal) = self.signal {
            Some(format!("killed by signal {signal}"))
        } else {
            match self.exit_code {
                Some(0) => None,
                Some(code) => Some(format!("exit code {code}")),
                None => Some("no exit status".to_owned()),
            }
        }
    }
}

/// Finds `name` on the `PATH` the command will run with.
fn find_on_path(name: &str, env: &[(String, String)]) -> Option<PathBuf> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn command(request: &BashRequest) -> Result<Command, String> {
    // The executor owns these processes: group, deadline, cleanup.
    #[allow(clippy::disallowed_methods)]
    let mut command = match request.sandbox {
        Sandbox::None => {
            let mut c = Command::new("bash");
            c.current_dir(&request.cwd);
            c
        }
        Sandbox::Bwrap => {
            let bwrap = find_on_path("bwrap", &request.env).ok_or_else(|| {
                "the bash sandbox is `bwrap` but bubblewrap is not installed (`apt-get install bubblewrap`), or set `bash.sandbox` to `none`".to_owned()
            })?;
            let mut c = Command::new(bwrap);
            let workspace = request.workspace.display().to_string();
            c.args([
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--bind",
                &workspace,
                &workspace,
                "--unshare-pid",
                "--die-with-parent",
                "--chdir",
            ])
            .arg(&request.cwd)
            .arg("bash");
            c
        }
    };
    command
        .args(["-c", RLIMITS, "aos-bash", &request.command])
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Ok(command)
}

/// Runs one command until it exits, times out, or `cancel` fires.
pub async fn run(request: &BashRequest, cancel: &CancellationToken) -> Result<BashResult, String> {
    if !request.cwd.is_dir() {
        return Err(format!(
            "the working directory {} does not exist",
            request.cwd.display()
        ));
    }
    let started = Instant::now();
    let mut child = command(request)?
        .spawn()
        .map_err(|e| format!("cannot start bash: {e}"))?;
    let pid = child.id().map(|p| p as i32);
    let _recorded = match (&request.registry, pid) {
        (Some((dir, dispatch_id)), Some(pid)) => Recorded::new(dir, pid, dispatch_id),
        _ => None,
    };
    let kill = || {
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    };
    let cap = request.max_output_bytes;
    let stdout = child.stdout.take().map(|s| tokio::spawn(capped(s, cap)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(capped(s, cap)));
    let mut result = BashResult::default();
    let status = tokio::select! {
        status = child.wait() => Some(status),
        () = tokio::time::sleep(request.timeout) => {
            result.timed_out = true;
            None
        }
        () = cancel.cancelled() => {
            result.interrupted = true;
            None
        }
    };
    let status = match status {
        Some(status) => status,
        None => {
            kill();
            child.wait().await
        }
    };
    if let Ok(status) = status {
        use std::os::unix::process::ExitStatusExt;
        result.exit_code = status.code();
        result.signal = status.signal();
    }
    // Background jobs the command left behind keep the pipes open; they go with the
    // group once the grace is over.
    for (reader, text, dropped) in [
        (stdout, &mut result.stdout, &mut result.stdout_dropped),
        (stderr, &mut result.stderr, &mut result.stderr_dropped),
    ] {
        let Some(mut reader) = reader else { continue };
        let read = match tokio::time::timeout(PIPE_GRACE, &mut reader).await {
            Ok(read) => read,
            Err(_) => {
                kill();
                match tokio::time::timeout(PIPE_GRACE, &mut reader).await {
                    Ok(read) => read,
                    Err(_) => {
                        reader.abort();
                        continue;
                    }
                }
            }
        };
        if let Ok((bytes, lost)) = read {
            *text = String::from_utf8_lossy(&bytes).into_owned();
            *dropped = lost;
        }
    }
    kill();
    result.duration = started.elapsed();
    Ok(result)
}

/// A running process group's record; removed when the command is over.
struct Recorded(PathBuf);

impl Recorded {
    fn new(dir: &Path, pgid: i32, dispatch_id: &str) -> Option<Self> {
        let path = dir.join(pgid.to_string());
        std::fs::write(&path, dispatch_id).ok()?;
        Some(Self(path))
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills the process groups a killed kernel left running: each record names a group
/// and the dispatch it ran for, and the group is killed only if its leader still
/// carries that dispatch's id in its environment (so a reused pid is never hit).
pub fn kill_leftovers(dir: &Path) -> usize {
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let pgid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i32>().ok());
        let dispatch_id = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(pgid) = pgid {
            let marker = format!("AOS_DISPATCH_ID={}", dispatch_id.trim());
            let environ = std::fs::read(format!("/proc/{pgid}/environ")).unwrap_or_default();
            if !dispatch_id.trim().is_empty()
                && environ
                    .split(|b| *b == 0)
                    .any(|var| var == marker.as_bytes())
            {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Reads a stream to its end, keeping the first `cap` bytes and counting the rest.
async fn capped<R: AsyncRead + Unpin>(mut stream: R, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let take = room.min(n);
                kept.extend_from_slice(&buffer[..take]);
                dropped += (n - take) as u64;
            }
        }
    }
    (kept, dropped)
}

/// The agent's workspace directory, created on first use.
pub fn workspace(home: &Path, agent_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = home.join("workspaces").join(agent_id);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &str, dir: &Path) -> BashRequest {
        BashRequest {
            command: command.into(),
            cwd: dir.to_owned(),
            workspace: dir.to_owned(),
            timeout: Duration::from_secs(10),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            max_output_bytes: 1024,
            sandbox: Sandbox::None,
            registry: None,
        }
    }

    #[tokio::test]
    async fn runs_in_its_directory_with_only_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = request("pwd; echo \"[$HOME]\"; echo oops >&2; exit 3", dir.path());
        r.env.push(("AOS_SESSION_ID".into(), "ses_1".into()));
        let out = run(&r, &CancellationToken::new()).await.unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert!(
            out.stdout.starts_with(&dir.path().display().to_string()),
            "{out:?}"
        );
        assert!(out.stdout.contains("[]"), "HOME leaked in: {out:?}");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.failure(r.timeout).as_deref(), Some("exit code 3"));
        assert_eq!(
            out.visible(),
            format!("{}\n[]\noops\n", dir.path().display())
        );
    }

    #[tokio::test]
    async fn output_over_the_cap_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            &request("head -c 5000 /dev/zero | tr '\\0' x", dir.path()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.len(), 1024);
        assert_eq!(out.stdout_dropped, 5000 - 1024);
        assert!(
            out.visible()
                .contains("[output truncated: 3976 bytes of stdout")
        );
    }

    #[tokio::test]
    async fn a_timeout_or_an_interrupt_kills_the_whole_group_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = request("sleep 600 & sleep 600; echo never", dir.path());
        r.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let out = run(&r, &CancellationToken::new()).await.unwrap();
        assert!(out.timed_out);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            out.failure(r.timeout).as_deref(),
            Some("timed out after 200 ms")
        );

        let cancel = CancellationToken::new();
        let r = request("echo $$ > pid; sleep 600", dir.path());
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        let out = run(&r, &cancel).await.unwrap();
        assert!(out.interrupted);
        assert!(started.elapsed() < Duration::from_millis(1500));
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_err(),
            "the shell survived"
        );
    }

    #[tokio::test]
    async fn a_missing_sandbox_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = request("true", dir.path());
        r.sandbox = Sandbox::Bwrap;
        r.env = vec![("PATH".into(), "/nonexistent".into())];
        let error = run(&r, &CancellationToken::new()).await.unwrap_err();
        assert!(error.contains("bubblewrap is not installed"), "{error}");
    }
}
