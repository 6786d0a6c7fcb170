//! Service processes: resolving a skill's `service:` command, spawning it in its own
//! process group, and the guard that kills the group.
//!
//! This is one of the two places that start child processes (the other is the bash
//! executor); clippy's `disallowed_methods` keeps it that way.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Lines of stderr kept for error reports.
const TAIL_LINES: usize = 20;
/// Longest stderr line kept (longer lines are cut).
const TAIL_LINE_CHARS: usize = 400;

/// What to run for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// As written in the frontmatter, for display.
    pub display: String,
}

/// Resolves a `service:` command: a path inside the skill directory (a `.py` file runs
/// under `python3`), or a program name looked up in `bin_dirs` (the kernel's own
/// directory first) and then on `PATH`.
pub fn resolve(
    skill_dir: &Path,
    service: &str,
    bin_dirs: &[PathBuf],
) -> Result<ServiceCommand, String> {
    let mut words = service.split_whitespace();
    let Some(first) = words.next() else {
        return Err("the skill's `service` is empty".into());
    };
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    let is_path = first.contains('/') || first.starts_with('.');
    let program = if is_path {
        if Path::new(first).is_absolute() {
            return Err(format!(
                "`service` must be relative to the skill directory, not `{first}`"
            ));
        }
        let resolved = skill_dir
            .join(first)
            .canonicalize()
            .map_err(|e| format!("service file `{first}` cannot be opened: {e}"))?;
        if !resolved.starts_with(skill_dir) {
            return Err(format!(
                "service file `{first}` resolves to {} outside the skill directory",
                resolved.display()
            ));
        }
        if resolved.extension().is_some_and(|e| e == "py") {
            args.insert(0, resolved.display().to_string());
            find_program("python3", bin_dirs)
                .ok_or_else(|| "`python3` is not on PATH; Python services need it".to_owned())?
        } else {
            resolved
        }
    } else {
        find_program(first, bin_dirs).ok_or_else(|| {
            format!(
                "program `{first}` was found neither next to the kernel ({}) nor on PATH",
                bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
    };
    Ok(ServiceCommand {
        program,
        args,
        display: service.to_owned(),
    })
}

fn find_program(name: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    bin_dirs
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last lines a process wrote to stderr.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(TAIL_LINE_CHARS).collect());
    }

    /// The kept lines joined, or a note that there were none.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            "(no stderr output)".to_owned()
        } else {
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        }
    }
}

/// A running service process. Dropping it kills the whole process group.
#[derive(Debug)]
pub struct ServiceProcess {
    pub child: Child,
    pub pid: u32,
    pub stderr: Tail,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl ServiceProcess {
    /// The stderr tail once the process has exited: waits briefly for the pipe to be
    /// read to its end, so the last lines before a crash are included.
    pub async fn final_stderr(&mut self) -> String {
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), task).await;
        }
        self.stderr.text()
    }

    /// Sends SIGKILL to the process group.
    pub fn kill_group(&self) {
        // ESRCH (already gone) is the normal case after a clean exit.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Spawns `command` in its own process group with `cwd` and exactly `env` (plus
/// nothing inherited); stdout and stderr go to the kernel log, stderr's tail is kept.
pub fn spawn(
    command: &ServiceCommand,
    cwd: &Path,
    env: &[(String, String)],
    label: &str,
) -> Result<ServiceProcess, String> {
    // The supervisor owns service processes: group, cleanup, output.
    #[allow(clippy::disallowed_methods)]
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", command.program.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| "the service exited before its pid could be read".to_owned())?;
    let stderr = Tail::default();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, label.to_owned(), "stdout", None));
    }
    let stderr_task = child.stderr.take().map(|err| {
        tokio::spawn(forward(
            err,
            label.to_owned(),
            "stderr",
            Some(stderr.clone()),
        ))
    });
    Ok(ServiceProcess {
        child,
        pid,
        stderr,
        stderr_task,
    })
}

async fn forward<R: AsyncRead + Unpin>(
    stream: R,
    label: String,
    which: &'static str,
    tail: Option<Tail>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "aos::service", service = %label, stream = which, "{}", line.chars().take(2000).collect::<String>());
        if let Some(tail) = &tail {
            tail.push(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_inside_the_skill_or_on_the_path() {
        let root = tempfile::tempdir().unwrap();
        let skill = root.path().join("demo");
        std::fs::create_dir(&skill).unwrap();
        let skill = skill.canonicalize().unwrap();
        std::fs::write(skill.join("svc.py"), "print(1)").unwrap();
        let py = resolve(&skill, "./svc.py --fast", &[]).unwrap();
        assert!(py.program.ends_with("python3"), "{py:?}");
        assert_eq!(py.args[0], skill.join("svc.py").display().to_string());
        assert_eq!(py.args[1], "--fast");
        let sh = resolve(&skill, "sh -c true", &[]).unwrap();
        assert!(sh.program.ends_with("sh"));
        let err = resolve(&skill, "no-such-program-anywhere", &[]).unwrap_err();
        assert!(err.contains("neither next to the kernel"), "{err}");
        std::fs::write(root.path().join("outside.sh"), "").unwrap();
        let err = resolve(&skill, "../outside.sh", &[]).unwrap_err();
        assert!(err.contains("outside the skill directory"), "{err}");
        let err = resolve(&skill, "./missing.py", &[]).unwrap_err();
        assert!(err.contains("cannot be opened"), "{err}");
    }
}
