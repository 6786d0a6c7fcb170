//! Services: the processes (and remote connections) that give skills their active
//! face. This module owns the table of services and its public operations; the
//! per-service lifecycle is in [`supervisor`], the protocol of one connection in
//! [`connection`], service-provided operations in [`ops`], the defaults-driven
//! start/stop in [`reconcile`], and the `/services` endpoint in [`websocket`].
//!
//! A service is identified by its skill and owner (system, one agent, one session);
//! it keeps its id (`svc_…`) across restarts. Its state lives in memory only: after a
//! kernel restart, start reconcile brings the services the defaults ask for back.

pub mod connection;
pub mod ops;
pub mod process;
pub mod python;
pub mod reconcile;
pub mod supervisor;
pub mod websocket;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use aos_sdk::protocol::service::{HELLO_TIMEOUT_MS, SHUTDOWN_GRACE_MS};
use aos_sdk::protocol::{
    ErrorCode, HookRegistration, RegisterResult, ServiceInfo, ServiceListParams, ServiceState,
    ServiceTransport, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::{Caller, Owner};
use crate::events::name_matches;
use crate::hooks::{Admission, EventName, HookScope};
use crate::ids::new_id;
use crate::kernel::Kernel;
use crate::syscall::SyscallError;

pub use ops::ServiceOps;

/// How long a spawned service has to connect and say `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_millis(HELLO_TIMEOUT_MS);
/// Time between `shutdown` and SIGKILL of the process group.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(SHUTDOWN_GRACE_MS);
/// How long `skill.start` waits after `hello` for the first `register`.
const REGISTER_GRACE: Duration = Duration::from_secs(2);
/// Entries kept for stopped services before the oldest are forgotten.
const MAX_STOPPED_ENTRIES: usize = 1000;

/// Why a service was started: by the defaults (start reconcile stops it again when
/// the defaults change), on request (`skill.start`), or by a remote connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOrigin {
    Defaults,
    Explicit,
    Remote,
}

/// What the supervisor of one service is told to do.
#[derive(Debug)]
pub enum Control {
    /// Stop for good (until started again); `done` is answered once stopped.
    Stop {
        reason: String,
        done: Option<oneshot::Sender<()>>,
    },
    /// Stop and start again at once (new files), or leave the `failed` state.
    Restart { reason: String },
}

#[derive(Debug, Clone)]
struct Status {
    state: ServiceState,
    pid: Option<u32>,
    restarts: u64,
    last_error: Option<String>,
    started_at: Option<Timestamp>,
    command: Option<String>,
    sdk: Option<String>,
    registered: RegisterResult,
    /// The current process sent its first `register`.
    registered_once: bool,
}

/// One service. Shared by the table, its supervisor task and its connection.
#[derive(Debug)]
pub struct ServiceEntry {
    pub id: String,
    pub skill: String,
    pub owner: Owner,
    pub transport: ServiceTransport,
    origin: Mutex<StartOrigin>,
    // Locked per read or change, never across an `.await`.
    status: Mutex<Status>,
    changes: watch::Sender<u64>,
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    pub dropped_events: AtomicU64,
}

impl ServiceEntry {
    fn new(skill: &str, owner: Owner, transport: ServiceTransport, origin: StartOrigin) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            id: new_id("svc_"),
            skill: skill.to_owned(),
            owner,
            transport,
            origin: Mutex::new(origin),
            status: Mutex::new(Status {
                state: ServiceState::Starting,
                pid: None,
                restarts: 0,
                last_error: None,
                started_at: None,
                command: None,
                sdk: None,
                registered: RegisterResult::default(),
                registered_once: false,
            }),
            changes,
            control: Mutex::new(None),
            dropped_events: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> ServiceState {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).state
    }

    pub fn origin(&self) -> StartOrigin {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_origin(&self, origin: StartOrigin) {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = origin;
    }

    /// Publishes an event about this service, scoped to its owner.
    pub(crate) fn announce(&self, kernel: &Kernel, event: EventName, payload: serde_json::Value) {
        kernel.emit(
            event,
            self.owner.agent_id(),
            self.owner.session_id(),
            payload,
        );
    }

    /// The caller a service acts as when it makes syscalls.
    pub fn caller(&self) -> Caller {
        Caller::service(&self.skill, &self.owner)
    }

    /// The patterns of the events this service subscribed to.
    pub fn event_patterns(&self) -> Vec<String> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .registered
            .events
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut status);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn set_state(&self, state: ServiceState) {
        self.update(|s| s.state = state);
    }

    pub(crate) fn set_registered(&self, registered: RegisterResult) {
        self.update(|s| {
            s.registered = registered;
            s.registered_once = true;
        });
    }

    /// Forgets what the previous process registered (a new one is starting, or the
    /// connection ended).
    pub(crate) fn clear_registered(&self) {
        self.update(|s| {
            s.registered = RegisterResult::default();
            s.registered_once = false;
        });
    }

    fn send(&self, message: Control) -> Result<(), Control> {
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        match control.as_ref() {
            Some(tx) => tx.send(message).map_err(|e| e.0),
            None => Err(message),
        }
    }

    /// The service as listed.
    pub fn info(&self) -> ServiceInfo {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ServiceInfo {
            service_id: self.id.clone(),
            skill: self.skill.clone(),
            owner: self.owner.info(),
            state: status.state,
            transport: self.transport,
            pid: status.pid,
            restarts: status.restarts,
            last_error: status.last_error,
            started_at: status.started_at,
            command: status.command,
            sdk: status.sdk,
            registered: status.registered,
            dropped_events: self.dropped_events.load(Ordering::Relaxed),
        }
    }

    /// Waits until a start attempt has settled: running with its first `register`
    /// in (or [`REGISTER_GRACE`] after `hello`, for services that register nothing), or
    /// stopped/failed/restarting with an error. Returns the state.
    async fn settled(&self, limit: Duration) -> ServiceState {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        let mut running_since: Option<tokio::time::Instant> = None;
        loop {
            let (state, registered) = {
                let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                (status.state, status.registered_once)
            };
            let wait_until = match state {
                ServiceState::Starting => deadline,
                ServiceState::Running if !registered => {
                    let since = *running_since.get_or_insert_with(tokio::time::Instant::now);
                    (since + REGISTER_GRACE).min(deadline)
                }
                state => return state,
            };
            if tokio::time::timeout_at(wait_until, rx.changed())
                .await
                .is_err()
            {
                return self.state();
            }
        }
    }

    /// Waits until the service is no longer `stopping`.
    async fn left_stopping(&self, limit: Duration) {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        while self.state() == ServiceState::Stopping {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Where spawned services find things.
#[derive(Debug, Clone)]
pub struct ServicePaths {
    /// `$AOS_HOME/run`: per-service sockets (0700).
    pub run_dir: PathBuf,
    /// `$AOS_HOME/data`: one writable directory per skill (`AOS_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Looked up first for bare program names, and put first on the services' PATH.
    pub bin_dirs: Vec<PathBuf>,
    /// Prepended to `PYTHONPATH`: where the bundled Python SDK was written.
    pub python_path: PathBuf,
}

/// The table of services.
pub struct Services {
    // Replaced entries are never mutated in place; locked only around map operations.
    entries: RwLock<BTreeMap<String, Arc<ServiceEntry>>>,
    accepting: AtomicBool,
    pub ops: ServiceOps,
    pub paths: ServicePaths,
    api_url: OnceLock<String>,
    /// Serializes skill-index reloads so their diffs apply in order.
    pub(crate) reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    pub fn new(paths: ServicePaths) -> Self {
        Self {
            entries: RwLock::new(BTreeMap::new()),
            accepting: AtomicBool::new(false),
            ops: ServiceOps::default(),
            paths,
            api_url: OnceLock::new(),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// Records the kernel's HTTP address (passed to services as `AOS_API_URL`).
    pub fn set_api_url(&self, url: String) {
        let _ = self.api_url.set(url);
    }

    pub fn api_url(&self) -> String {
        self.api_url.get().cloned().unwrap_or_default()
    }

    /// Starts (`true`) or stops (`false`) accepting service starts.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    fn all(&self) -> Vec<Arc<ServiceEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, service_id: &str) -> Option<Arc<ServiceEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service_id)
            .cloned()
    }

    /// The entry of `skill` for `owner` over `transport`, if one exists.
    pub fn find(
        &self,
        skill: &str,
        owner: &Owner,
        transport: ServiceTransport,
    ) -> Option<Arc<ServiceEntry>> {
        self.all()
            .into_iter()
            .find(|e| e.skill == skill && e.owner == *owner && e.transport == transport)
    }

    /// Services matching `filter`, as `caller` may see them.
    pub fn list(&self, caller: &Caller, filter: &ServiceListParams) -> Vec<ServiceInfo> {
        self.all()
            .into_iter()
            .filter(|e| visible_to(caller, &e.owner))
            .filter(|e| filter.skill.as_deref().is_none_or(|s| s == e.skill))
            .filter(|e| filter.owner_type.is_none_or(|t| t == e.owner.owner_type()))
            .filter(|e| {
                filter
                    .owner_id
                    .as_deref()
                    .is_none_or(|id| Some(id) == e.owner.owner_id())
            })
            .filter(|e| filter.state.is_none_or(|s| s == e.state()))
            .map(|e| e.info())
            .collect()
    }

    fn insert(&self, entry: Arc<ServiceEntry>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.insert(entry.id.clone(), entry);
        let stopped: Vec<String> = entries
            .values()
            .filter(|e| !e.state().is_active() && e.state() != ServiceState::Stopping)
            .map(|e| e.id.clone())
            .collect();
        if stopped.len() > MAX_STOPPED_ENTRIES {
            for id in stopped.iter().take(stopped.len() - MAX_STOPPED_ENTRIES) {
                entries.remove(id);
            }
        }
    }

    fn remove(&self, service_id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service_id);
    }

    /// Starts `skill`'s service for `owner` (or returns the one already running) and
    /// waits until it is up or its first attempt failed. A start (not a running
    /// service returned) first passes `skill.start.before`.
    pub async fn start(
        &self,
        kernel: &Arc<Kernel>,
        skill: &str,
        owner: Owner,
        origin: StartOrigin,
        cause: &str,
    ) -> Result<Arc<ServiceEntry>, SyscallError> {
        if !self.is_accepting() {
            return Err(SyscallError::new(
                ErrorCode::Unavailable,
                "services cannot be started now: the kernel is starting up or shutting down",
            ));
        }
        if let Some(entry) = self.find(skill, &owner, ServiceTransport::Unix)
            && matches!(
                entry.state(),
                ServiceState::Running | ServiceState::Restarting
            )
        {
            // Nothing starts: no admission to ask.
            if origin == StartOrigin::Explicit {
                entry.set_origin(origin);
            }
            return Ok(entry);
        }
        admit_start(kernel, skill, &owner, cause).await?;
        let entry = loop {
            let Some(entry) = self.find(skill, &owner, ServiceTransport::Unix) else {
                let entry = Arc::new(ServiceEntry::new(
                    skill,
                    owner,
                    ServiceTransport::Unix,
                    origin,
                ));
                self.insert(entry.clone());
                self.spawn_supervisor(kernel, &entry, cause);
                break entry;
            };
            if origin == StartOrigin::Explicit {
                entry.set_origin(origin);
            }
            match entry.state() {
                ServiceState::Running | ServiceState::Restarting => return Ok(entry),
                ServiceState::Starting => break entry,
                ServiceState::Stopping => {
                    // A stop or a reload is under way; look again once it is over.
                    entry
                        .left_stopping(SHUTDOWN_GRACE + Duration::from_secs(1))
                        .await;
                    if entry.state() == ServiceState::Stopping {
                        return Err(SyscallError::new(
                            ErrorCode::ServiceFailed,
                            format!("the service of `{skill}` ({}) is still stopping", entry.id),
                        ));
                    }
                }
                ServiceState::Failed => {
                    // Starting before the message, so the wait below sees this
                    // attempt and not the failure before it.
                    entry.update(|s| {
                        s.state = ServiceState::Starting;
                        s.last_error = None;
                    });
                    if entry
                        .send(Control::Restart {
                            reason: cause.to_owned(),
                        })
                        .is_err()
                    {
                        self.spawn_supervisor(kernel, &entry, cause);
                    }
                    break entry;
                }
                ServiceState::Stopped => {
                    self.spawn_supervisor(kernel, &entry, cause);
                    break entry;
                }
            }
        };
        entry.settled(HELLO_TIMEOUT + Duration::from_secs(2)).await;
        let info = entry.info();
        match info.state {
            ServiceState::Running => Ok(entry),
            state => Err(SyscallError::new(
                ErrorCode::ServiceFailed,
                format!(
                    "the service of `{skill}` ({}) did not start: {}; it is now {}",
                    entry.id,
                    info.last_error
                        .as_deref()
                        .unwrap_or("no error was recorded"),
                    state.as_str()
                ),
            )
            .with_details(serde_json::json!({"serviceId": entry.id, "state": state}))),
        }
    }

    fn spawn_supervisor(&self, kernel: &Arc<Kernel>, entry: &Arc<ServiceEntry>, cause: &str) {
        let (tx, rx) = mpsc::unbounded_channel();
        *entry.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        entry.update(|s| {
            s.state = ServiceState::Starting;
            s.last_error = None;
        });
        kernel.tasks.spawn(supervisor::run_spawned(
            kernel.clone(),
            entry.clone(),
            rx,
            cause.to_owned(),
        ));
    }

    /// Registers a service that connected over `/services`. Refused while another
    /// service of the same skill and owner is active.
    pub fn connect_remote(
        &self,
        skill: &str,
        owner: Owner,
        sdk: Option<String>,
    ) -> Result<(Arc<ServiceEntry>, mpsc::UnboundedReceiver<Control>), String> {
        if !self.is_accepting() {
            return Err("the kernel is starting up or shutting down".into());
        }
        if let Some(active) = self
            .all()
            .into_iter()
            .find(|e| e.skill == skill && e.owner == owner && e.state().is_active())
        {
            return Err(format!(
                "skill `{skill}` already has an active service for {} ({}, {})",
                owner.describe(),
                active.id,
                active.state().as_str()
            ));
        }
        let entry = match self.find(skill, &owner, ServiceTransport::Websocket) {
            Some(entry) => entry,
            None => {
                let entry = Arc::new(ServiceEntry::new(
                    skill,
                    owner,
                    ServiceTransport::Websocket,
                    StartOrigin::Remote,
                ));
                self.insert(entry.clone());
                entry
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        *entry.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        entry.update(|s| {
            s.state = ServiceState::Running;
            s.last_error = None;
            s.started_at = Some(Timestamp::now());
            s.sdk = sdk;
            s.pid = None;
        });
        Ok((entry, rx))
    }

    /// Stops one service after `skill.stop.before` admits it, and waits until it has
    /// stopped.
    pub async fn stop(
        &self,
        kernel: &Kernel,
        entry: &Arc<ServiceEntry>,
        reason: &str,
    ) -> Result<(), SyscallError> {
        admit_stop(kernel, entry, reason).await?;
        self.stop_unasked(entry, reason).await;
        Ok(())
    }

    /// Stops one service without asking `skill.stop.before` (the kernel is stopping,
    /// or the stop was admitted already) and waits until it has stopped.
    async fn stop_unasked(&self, entry: &Arc<ServiceEntry>, reason: &str) {
        let (done_tx, done_rx) = oneshot::channel();
        let sent = entry.send(Control::Stop {
            reason: reason.to_owned(),
            done: Some(done_tx),
        });
        if sent.is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), done_rx).await;
        } else if entry.state() != ServiceState::Stopped {
            entry.set_state(ServiceState::Stopped);
        }
    }

    /// Services that are running or could run again (failed ones wait for a start).
    fn stoppable(&self, select: impl Fn(&ServiceEntry) -> bool) -> Vec<Arc<ServiceEntry>> {
        self.all()
            .into_iter()
            .filter(|e| select(e) && (e.state().is_active() || e.state() == ServiceState::Failed))
            .collect()
    }

    /// Stops every active service matching `select`, in parallel, without asking
    /// `skill.stop.before`.
    async fn stop_where_unasked(&self, reason: &str, select: impl Fn(&ServiceEntry) -> bool) {
        let chosen = self.stoppable(select);
        futures::future::join_all(chosen.iter().map(|e| self.stop_unasked(e, reason))).await;
    }

    /// Asks `skill.stop.before` about every service `owner` itself owns, before the
    /// owner is archived: a rejection keeps the owner (and its services) as they are.
    pub async fn admit_owner_stops(
        &self,
        kernel: &Kernel,
        owner: &Owner,
    ) -> Result<(), SyscallError> {
        for entry in self.stoppable(|e| e.owner == *owner) {
            admit_stop(kernel, &entry, "owner archived").await?;
        }
        Ok(())
    }

    /// Stops services of an archived owner: a session's, or an agent's and its
    /// sessions'. Their stops were admitted before the archive
    /// ([`Services::admit_owner_stops`]); services started since are stopped unasked.
    pub async fn stop_owned_by(&self, agent_id: &str, session_id: Option<&str>) {
        self.stop_where_unasked("owner archived", |e| match session_id {
            Some(session) => e.owner.session_id() == Some(session),
            None => e.owner.agent_id() == Some(agent_id),
        })
        .await;
    }

    /// Restarts every running (or failed) service of `skill` so new files take effect.
    pub fn restart_skill(&self, skill: &str, reason: &str) {
        for entry in self.all() {
            if entry.skill == skill
                && entry.transport == ServiceTransport::Unix
                && (entry.state().is_active() || entry.state() == ServiceState::Failed)
            {
                let _ = entry.send(Control::Restart {
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// Stops (once `skill.stop.before` admits it) and forgets every service of a skill
    /// that is gone from the index. A service whose stop is rejected keeps running on
    /// the code it started with, listed until it stops.
    pub async fn remove_skill(&self, kernel: &Kernel, skill: &str) {
        let chosen = self.stoppable(|e| e.skill == skill && e.transport == ServiceTransport::Unix);
        let results =
            futures::future::join_all(chosen.iter().map(|e| self.stop(kernel, e, "skill removed")))
                .await;
        for (entry, result) in chosen.iter().zip(results) {
            if let Err(error) = result {
                tracing::warn!(service = %entry.id, skill, %error, "a removed skill's service keeps running");
            }
        }
        for entry in self.all() {
            if entry.skill == skill
                && entry.transport == ServiceTransport::Unix
                && entry.state() == ServiceState::Stopped
            {
                self.remove(&entry.id);
            }
        }
    }

    /// Stops everything (kernel shutdown), unasked: a stopping kernel cannot keep a
    /// service. No new starts are accepted afterwards.
    pub async fn shutdown_all(&self) {
        self.set_accepting(false);
        self.stop_where_unasked("kernel stopping", |_| true).await;
    }

    /// Event subscriptions as `hook.list` shows them.
    pub fn event_subscriptions(&self, hook: Option<&str>) -> Vec<HookRegistration> {
        let mut out = Vec::new();
        for entry in self.all() {
            if entry.state() != ServiceState::Running {
                continue;
            }
            for pattern in entry.event_patterns() {
                if hook.is_some_and(|h| !name_matches(&pattern, h) && h != pattern) {
                    continue;
                }
                out.push(HookRegistration {
                    hook: pattern,
                    class: "event".to_owned(),
                    skill: entry.skill.clone(),
                    service_id: Some(entry.id.clone()),
                    owner_type: entry.owner.owner_type(),
                    owner_id: entry.owner.owner_id().map(str::to_owned),
                    priority: 0,
                    timeout_ms: 0,
                });
            }
        }
        out
    }

    /// Active services started by the defaults for exactly this owner.
    fn default_started(&self, owner: &Owner) -> Vec<Arc<ServiceEntry>> {
        self.all()
            .into_iter()
            .filter(|e| {
                e.owner == *owner
                    && e.transport == ServiceTransport::Unix
                    && e.origin() == StartOrigin::Defaults
                    && (e.state().is_active() || e.state() == ServiceState::Failed)
            })
            .collect()
    }
}

/// Asks `skill.start.before` whether `skill`'s service may start for `owner`. Every
/// start passes here: `skill.start`, start reconcile, a skill appearing in the index,
/// a remote connection. Restarts of a running service (new files, a crash) do not.
pub(crate) async fn admit_start(
    kernel: &Kernel,
    skill: &str,
    owner: &Owner,
    cause: &str,
) -> Result<(), SyscallError> {
    let scope = HookScope {
        agent_id: owner.agent_id(),
        session_id: owner.session_id(),
    };
    kernel
        .hooks
        .admit(Admission::SkillStartBefore, scope, || {
            (
                serde_json::json!({
                    "skill": skill,
                    "ownerType": owner.owner_type(),
                    "ownerId": owner.owner_id(),
                    "agentId": owner.agent_id(),
                    "sessionId": owner.session_id(),
                    "cause": cause,
                }),
                serde_json::json!({}),
            )
        })
        .await?;
    Ok(())
}

/// Asks `skill.stop.before` whether `entry` may stop. Every stop passes here except the
/// kernel's own shutdown and restarts (new files, a crash).
async fn admit_stop(
    kernel: &Kernel,
    entry: &ServiceEntry,
    reason: &str,
) -> Result<(), SyscallError> {
    let scope = HookScope {
        agent_id: entry.owner.agent_id(),
        session_id: entry.owner.session_id(),
    };
    kernel
        .hooks
        .admit(Admission::SkillStopBefore, scope, || {
            (
                serde_json::json!({
                    "serviceId": entry.id,
                    "skill": entry.skill,
                    "ownerType": entry.owner.owner_type(),
                    "ownerId": entry.owner.owner_id(),
                    "agentId": entry.owner.agent_id(),
                    "sessionId": entry.owner.session_id(),
                    "reason": reason,
                }),
                serde_json::json!({}),
            )
        })
        .await?;
    Ok(())
}

/// Whether `caller` may see a service owned by `owner`: unconfined callers see all;
/// agent-confined callers their agent's and its sessions'; session-confined callers
/// their session's.
pub fn visible_to(caller: &Caller, owner: &Owner) -> bool {
    match (caller.confined_agent(), caller.confined_session()) {
        (None, _) => true,
        (Some(agent), None) => owner.agent_id() == Some(agent),
        (Some(_), Some(session)) => owner.session_id() == Some(session),
    }
}

/// Whether `caller` may start or stop services for `owner`. Session tokens (an
/// agent's shell) never may: services outlive dispatches and act with their owner's
/// authority, so starting them is for people, programs and other services.
pub fn may_control(caller: &Caller, owner: &Owner) -> bool {
    if matches!(caller.scope, crate::auth::Scope::Session { .. }) {
        return false;
    }
    match owner {
        Owner::System => caller.is_system(),
        Owner::Agent { agent_id } => caller.can_write_agent(agent_id),
        Owner::Session {
            agent_id,
            session_id,
        } => caller.can_write_session(agent_id, session_id),
    }
}
