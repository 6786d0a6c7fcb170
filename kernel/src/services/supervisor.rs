//! The life of one service: spawn, wait for `hello`, serve, and on a crash restart with
//! exponential backoff (100 ms doubling to 30 s) until it crashes more than 5 times in
//! 60 s, when it is `failed` until its files change or `skill.start` asks again.
//! Stopping sends `shutdown`, waits the grace period, then kills the process group.
//!
//! One task per service runs [`run_spawned`] (or [`run_remote`] for a connection from
//! outside); everything else talks to it through its [`Control`] channel.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aos_sdk::protocol::service::{MAX_FRAME_BYTES, ShutdownParams};
use aos_sdk::protocol::{OwnerType, ServiceState, ServiceTransport, Timestamp};
use aos_sdk::rpc::{self, FrameSink, FrameStream, Incoming, Peer, PeerOptions};
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection;
use super::process::{self, ServiceProcess};
use super::{Control, HELLO_TIMEOUT, SHUTDOWN_GRACE, ServiceEntry};
use crate::auth::Owner;
use crate::hooks::EventName;
use crate::kernel::Kernel;
use crate::skills::manifest::check_name;

/// Crashes within [`CRASH_WINDOW`] beyond which a service is `failed`.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a service closes its connection, how long to wait for its exit status.
const EXIT_AFTER_CLOSE: Duration = Duration::from_millis(500);

/// How one attempt ended.
enum Ending {
    Stop {
        reason: String,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    Restart(String),
    Crash {
        message: String,
        exit_code: Option<i32>,
    },
}

fn crash(message: impl Into<String>) -> Ending {
    Ending::Crash {
        message: message.into(),
        exit_code: None,
    }
}

/// Supervises a spawned service until it is stopped.
pub async fn run_spawned(
    kernel: Arc<Kernel>,
    entry: Arc<ServiceEntry>,
    mut control: mpsc::UnboundedReceiver<Control>,
    cause: String,
) {
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut cause = cause;
    loop {
        let ending = attempt(&kernel, &entry, &mut control, &cause).await;
        match ending {
            Ending::Stop { reason, done } => {
                stopped(&kernel, &entry, &reason);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Ending::Restart(reason) => {
                stopped(&kernel, &entry, &reason);
                cause = reason;
                crashes.clear();
            }
            Ending::Crash { message, exit_code } => {
                let now = Instant::now();
                crashes.push_back(now);
                while crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
                {
                    crashes.pop_front();
                }
                tracing::warn!(service = %entry.id, skill = %entry.skill, %message, "service crashed");
                entry.update(|s| {
                    s.last_error = Some(message.clone());
                    s.pid = None;
                });
                entry.announce(
                    &kernel,
                    EventName::ServiceError,
                    json!({"serviceId": entry.id, "skill": entry.skill, "message": message, "exitCode": exit_code}),
                );
                let next = if crashes.len() > MAX_CRASHES {
                    entry.set_state(ServiceState::Failed);
                    entry.announce(
                        &kernel,
                        EventName::ServiceFailed,
                        json!({"serviceId": entry.id, "skill": entry.skill, "crashes": crashes.len(), "lastError": message}),
                    );
                    control.recv().await
                } else {
                    let delay = backoff(crashes.len());
                    entry.update(|s| {
                        s.state = ServiceState::Restarting;
                        s.restarts += 1;
                    });
                    entry.announce(
                        &kernel,
                        EventName::ServiceRestarting,
                        json!({"serviceId": entry.id, "skill": entry.skill, "restarts": entry.info().restarts, "delayMs": delay.as_millis() as u64, "reason": message}),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => None,
                        message = control.recv() => message,
                    }
                };
                match next {
                    None if entry.state() == ServiceState::Failed => {
                        // The control channel is gone: nobody can restart it any more.
                        return;
                    }
                    None => cause = "restart after a crash".to_owned(),
                    Some(Control::Restart { reason }) => {
                        crashes.clear();
                        cause = reason;
                    }
                    Some(Control::Stop { reason, done }) => {
                        stopped(&kernel, &entry, &reason);
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// 100 ms, 200 ms, 400 ms, … up to 30 s, by the number of recent crashes.
fn backoff(crashes: usize) -> Duration {
    let exponent = crashes.saturating_sub(1).min(16) as u32;
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF)
}

fn stopped(kernel: &Kernel, entry: &ServiceEntry, reason: &str) {
    entry.update(|s| {
        s.state = ServiceState::Stopped;
        s.pid = None;
    });
    entry.announce(
        kernel,
        EventName::SkillStopAfter,
        json!({
            "serviceId": entry.id,
            "skill": entry.skill,
            "ownerType": entry.owner.owner_type(),
            "ownerId": entry.owner.owner_id(),
            "reason": reason,
        }),
    );
}

/// One run of the process, from spawn to its end.
async fn attempt(
    kernel: &Arc<Kernel>,
    entry: &Arc<ServiceEntry>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    cause: &str,
) -> Ending {
    entry.clear_registered();
    entry.update(|s| {
        s.state = ServiceState::Starting;
        s.pid = None;
    });
    let snapshot = kernel.skills.snapshot();
    let Some(skill) = snapshot.get(&entry.skill).cloned() else {
        return crash(format!(
            "skill `{}` is not in the skill index (removed, renamed or broken)",
            entry.skill
        ));
    };
    let Some(service) = skill.manifest.service.clone() else {
        return crash(format!("skill `{}` declares no `service`", entry.skill));
    };
    let paths = &kernel.services.paths;
    let command = match process::resolve(&skill.dir, &service, &paths.bin_dirs) {
        Ok(command) => command,
        Err(message) => return crash(message),
    };
    let socket = match bind_socket(&paths.run_dir) {
        Ok(socket) => socket,
        Err(message) => return crash(message),
    };
    let token = kernel.auth.issue_ephemeral(entry.caller());
    let _token = RevokeOnDrop {
        kernel: kernel.clone(),
        secret: token.clone(),
    };
    let env = environment(kernel, entry, &skill.dir, &socket.path, &token);
    let label = format!("{}:{}", entry.skill, entry.owner.describe());
    let mut child = match process::spawn(&command, &skill.dir, &env, &label) {
        Ok(child) => child,
        Err(message) => return crash(message),
    };
    entry.update(|s| {
        s.pid = Some(child.pid);
        s.command = Some(command.display.clone());
    });
    let deadline = Instant::now() + HELLO_TIMEOUT;

    // Connect: the child must connect before the deadline, and not exit first.
    let accepted = tokio::select! {
        accepted = tokio::time::timeout_at(deadline, socket.listener.accept()) => accepted,
        status = child.child.wait() => {
            return exited_early(&mut child, status, "before connecting").await;
        }
        message = control.recv() => return interrupted(message),
    };
    let stream = match accepted {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(error)) => return crash(format!("accepting its connection failed: {error}")),
        Err(_) => {
            return crash(format!(
                "it did not connect to its socket within {} s; stderr:\n{}",
                HELLO_TIMEOUT.as_secs(),
                child.stderr.text()
            ));
        }
    };
    // Only the one connection is accepted: the socket goes away now.
    drop(socket);
    let (read, write) = stream.into_split();
    let (frames, sink) = rpc::line_transport(read, write, MAX_FRAME_BYTES);
    let (peer, mut incoming) = rpc::spawn(frames, sink, PeerOptions::default());
    let hello = tokio::select! {
        hello = connection::await_hello(&peer, &mut incoming, deadline) => hello,
        status = child.child.wait() => return exited_early(&mut child, status, "before saying hello").await,
        message = control.recv() => return interrupted(message),
    };
    let (id, hello) = match hello {
        Ok(hello) => hello,
        Err(message) => return crash(format!("{message}; stderr:\n{}", child.stderr.text())),
    };
    if hello.skill != entry.skill {
        let message = format!(
            "it said hello as skill `{}` but was started for `{}`",
            hello.skill, entry.skill
        );
        connection::refuse_hello(&peer, id, &message).await;
        return crash(message);
    }
    connection::reply_hello(&peer, id, entry).await;
    entry.update(|s| {
        s.state = ServiceState::Running;
        s.started_at = Some(Timestamp::now());
        s.sdk = hello.sdk.clone();
        s.last_error = None;
    });
    announce_start(kernel, entry, Some(child.pid), cause);
    tracing::info!(service = %entry.id, skill = %entry.skill, owner = %entry.owner.describe(), pid = child.pid, "service running");

    let serving = connection::serve(kernel.clone(), entry.clone(), peer.clone(), incoming);
    tokio::pin!(serving);
    tokio::select! {
        reason = &mut serving => {
            let status = tokio::time::timeout(EXIT_AFTER_CLOSE, child.child.wait()).await;
            match status {
                Ok(Ok(status)) => Ending::Crash {
                    message: format!("{reason} and exited with {status}; stderr:\n{}", child.final_stderr().await),
                    exit_code: status.code(),
                },
                _ => crash(format!("{reason}; its process group was killed")),
            }
        }
        status = child.child.wait() => exited_early(&mut child, status, "while running").await,
        message = control.recv() => {
            let ending = interrupted(message);
            let reason = match &ending {
                Ending::Stop { reason, .. } | Ending::Restart(reason) => reason.clone(),
                Ending::Crash { message, .. } => message.clone(),
            };
            withdraw(kernel, entry);
            graceful_stop(&peer, &mut child, &reason).await;
            ending
        }
    }
}

/// Maps a control message that arrived mid-attempt to how the attempt ends.
fn interrupted(message: Option<Control>) -> Ending {
    match message {
        Some(Control::Stop { reason, done }) => Ending::Stop { reason, done },
        Some(Control::Restart { reason }) => Ending::Restart(reason),
        None => Ending::Stop {
            reason: "its supervisor was dropped".into(),
            done: None,
        },
    }
}

async fn exited_early(
    child: &mut ServiceProcess,
    status: std::io::Result<std::process::ExitStatus>,
    when: &str,
) -> Ending {
    match status {
        Ok(status) => Ending::Crash {
            message: format!(
                "it exited with {status} {when}; stderr:\n{}",
                child.final_stderr().await
            ),
            exit_code: status.code(),
        },
        Err(error) => crash(format!("waiting for it failed: {error}")),
    }
}

/// Removes a stopping service's hooks and operations first, so no new call reaches a
/// service that is on its way out.
fn withdraw(kernel: &Kernel, entry: &ServiceEntry) {
    entry.set_state(ServiceState::Stopping);
    kernel.hooks.unregister_service(&entry.id);
    kernel.services.ops.remove_service(&entry.id);
}

/// `shutdown`, then up to the grace period for the process to exit, then SIGKILL of
/// its group.
async fn graceful_stop(peer: &Peer, child: &mut ServiceProcess, reason: &str) {
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let params = ShutdownParams {
        reason: Some(reason.to_owned()),
    };
    let _ = tokio::time::timeout_at(
        deadline,
        peer.request_with("shutdown", &params, SHUTDOWN_GRACE),
    )
    .await;
    if tokio::time::timeout_at(deadline, child.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pid = child.pid,
            "service did not exit within the grace period; killing its process group"
        );
    }
    peer.close();
    child.kill_group();
    let _ = child.child.wait().await;
}

fn announce_start(kernel: &Kernel, entry: &ServiceEntry, pid: Option<u32>, cause: &str) {
    entry.announce(
        kernel,
        EventName::SkillStartAfter,
        json!({
            "serviceId": entry.id,
            "skill": entry.skill,
            "ownerType": entry.owner.owner_type(),
            "ownerId": entry.owner.owner_id(),
            "transport": entry.transport,
            "pid": pid,
            "cause": cause,
        }),
    );
}

struct RevokeOnDrop {
    kernel: Arc<Kernel>,
    secret: String,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        self.kernel.auth.revoke_ephemeral(&self.secret);
    }
}

/// A listening socket that is removed when dropped.
struct Socket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Longest socket path the kernel allows (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

fn bind_socket(run_dir: &Path) -> Result<Socket, String> {
    let mut name = [0u8; 6];
    rand::fill(&mut name);
    let path = run_dir.join(format!("{}.sock", hex::encode(name)));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter AOS_HOME",
            path.display()
        ));
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot bind the service socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict the service socket {}: {e}", path.display()))?;
    Ok(Socket { listener, path })
}

/// The environment of a spawned service: the kernel's own, without its `AOS_*`
/// settings and secrets, plus what the service needs to connect back.
fn environment(
    kernel: &Kernel,
    entry: &ServiceEntry,
    skill_dir: &Path,
    socket: &Path,
    token: &str,
) -> Vec<(String, String)> {
    let paths = &kernel.services.paths;
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("AOS_") && k != "PATH" && k != "PYTHONPATH")
        .collect();
    let data_dir = paths.data_dir.join(&entry.skill);
    if let Err(error) = std::fs::create_dir_all(&data_dir)
        .and_then(|()| std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)))
    {
        tracing::warn!(dir = %data_dir.display(), %error, "cannot prepare the service's data directory");
    }
    let path = std::env::join_paths(paths.bin_dirs.iter().cloned().chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .map(|p| p.to_string_lossy().into_owned())
    .unwrap_or_default();
    let python_path = std::env::join_paths(std::iter::once(paths.python_path.clone()).chain(
        std::env::split_paths(&std::env::var_os("PYTHONPATH").unwrap_or_default()),
    ))
    .map(|p| p.to_string_lossy().into_owned())
    .unwrap_or_default();
    let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
    set("PATH", path);
    set("PYTHONPATH", python_path);
    set("PYTHONUNBUFFERED", "1".to_owned());
    set("AOS_SERVICE_SOCKET", socket.display().to_string());
    set("AOS_SERVICE_TOKEN", token.to_owned());
    set("AOS_TOKEN", token.to_owned());
    set("AOS_SERVICE_ID", entry.id.clone());
    set("AOS_SKILL_NAME", entry.skill.clone());
    set("AOS_SKILL_DIR", skill_dir.display().to_string());
    set("AOS_DATA_DIR", data_dir.display().to_string());
    set("AOS_API_URL", kernel.services.api_url());
    set(
        "AOS_OWNER_TYPE",
        entry.owner.owner_type().as_str().to_owned(),
    );
    if let Some(id) = entry.owner.owner_id() {
        set("AOS_OWNER_ID", id.to_owned());
    }
    // A system service (installed by the operator, like the kernel) keeps its own
    // tables in the kernel's PostgreSQL database, so every node's copy of it shares
    // them; on SQLite each service has only its data directory.
    if entry.owner.owner_type() == OwnerType::System
        && let Some(url) = kernel
            .config
            .database_url
            .as_deref()
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    {
        set("AOS_SKILL_DATABASE_URL", url.to_owned());
    }
    if let Some(id) = entry.owner.agent_id() {
        set("AOS_AGENT_ID", id.to_owned());
    }
    if let Some(id) = entry.owner.session_id() {
        set("AOS_SESSION_ID", id.to_owned());
    }
    env
}

/// Serves a service the kernel did not spawn, over any transport (`/services`, or an
/// in-memory pipe in tests): waits for `hello`, checks the skill against `skill` (the
/// token's) and that no other service of it runs for `owner`, then serves until the
/// connection ends or the service is stopped.
pub async fn serve_external(
    kernel: Arc<Kernel>,
    stream: FrameStream,
    sink: FrameSink,
    skill: Option<String>,
    owner: Owner,
) {
    let (peer, mut incoming) = rpc::spawn(stream, sink, PeerOptions::default());
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let (id, hello) = match connection::await_hello(&peer, &mut incoming, deadline).await {
        Ok(hello) => hello,
        Err(message) => {
            tracing::info!(%message, "a remote service connection ended before hello");
            peer.close();
            return;
        }
    };
    let refusal = if let Some(expected) = skill.as_deref().filter(|s| *s != hello.skill) {
        Some(format!(
            "this token is for skill `{expected}`; the service said hello as `{}`",
            hello.skill
        ))
    } else {
        check_name(&hello.skill).err()
    };
    if let Some(message) = refusal {
        connection::refuse_hello(&peer, id, &message).await;
        peer.close();
        return;
    }
    if let Err(error) = super::admit_start(&kernel, &hello.skill, &owner, "connected").await {
        connection::refuse_hello(&peer, id, &error.message).await;
        peer.close();
        return;
    }
    let (entry, control) =
        match kernel
            .services
            .connect_remote(&hello.skill, owner, hello.sdk.clone())
        {
            Ok(connected) => connected,
            Err(message) => {
                connection::refuse_hello(&peer, id, &message).await;
                peer.close();
                return;
            }
        };
    connection::reply_hello(&peer, id, &entry).await;
    tracing::info!(service = %entry.id, skill = %entry.skill, "remote service connected");
    run_remote(kernel, entry, peer, incoming, control).await;
}

/// Serves a connected remote service until it disconnects or is stopped. Remote
/// services are never restarted by the kernel.
async fn run_remote(
    kernel: Arc<Kernel>,
    entry: Arc<ServiceEntry>,
    peer: Peer,
    incoming: mpsc::Receiver<Incoming>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    debug_assert_eq!(entry.transport, ServiceTransport::Websocket);
    announce_start(&kernel, &entry, None, "connected");
    // The serving future is dropped at the end of this block, which removes what the
    // service registered before it is reported stopped.
    let (reason, done) = {
        let serving = connection::serve(kernel.clone(), entry.clone(), peer.clone(), incoming);
        tokio::pin!(serving);
        tokio::select! {
        reason = &mut serving => (format!("disconnected: {reason}"), None),
        message = control.recv() => {
            let (reason, done) = match message {
                Some(Control::Stop { reason, done }) => (reason, done),
                Some(Control::Restart { reason }) => (reason, None),
                None => ("its supervisor was dropped".to_owned(), None),
            };
            withdraw(&kernel, &entry);
            let params = ShutdownParams { reason: Some(reason.clone()) };
            let _ = peer.request_with("shutdown", &params, SHUTDOWN_GRACE).await;
            (reason, done)
        }
        }
    };
    peer.close();
    entry.update(|s| s.last_error = Some(reason.clone()));
    stopped(&kernel, &entry, &reason);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_up_to_30_s() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
