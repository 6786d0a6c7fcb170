//! The kernel: shared state, start-up and shutdown.
//!
//! [`start`] prepares everything and binds the listener; [`Running::serve`] serves until
//! the shutdown future resolves, then drains. [`run`] does both.

use axum::serve::ListenerExt;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aos_sdk::protocol::{
    AgentCb, DEFAULT_AUTO_FOLD_THRESHOLD, DEFAULT_COMPACTION_THRESHOLD, DEFAULT_MAX_TURNS,
    Envelope, ErrorCode, SessionCb, SystemCb, SystemUpdateParams, Timestamp,
};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Caller};
use crate::config::KernelConfig;
use crate::events::{EventBus, Published};
use crate::hooks::{EventName, HookEngine};
use crate::ids::{new_id, new_token_secret};
use crate::react::Dispatcher;
use crate::runtime_log::RuntimeLog;
use crate::services::{ServicePaths, Services, reconcile};
use crate::sessions::recovery;
use crate::skills::SkillIndex;
use crate::skills::watcher::{self, Watcher};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::syscall::{Registry, SyscallError};

/// Attempts of a read-modify-write on a control block before giving up.
const CAS_ATTEMPTS: usize = 32;

/// Why the kernel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare the data directory {path}: {source}")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another AOS kernel is already using {0}; stop it first or pick another --home")]
    Locked(PathBuf),
    #[error(
        "refusing to bind {0}: pass --allow-remote to listen beyond loopback (and keep the token secret)"
    )]
    RemoteBind(std::net::IpAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "unsupported database URL `{0}`: use sqlite:<path> or postgres://[user@]host[:port]/database"
    )]
    DatabaseUrl(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot apply {path}: {message}")]
    SystemFile { path: PathBuf, message: String },
    #[error("start-up recovery failed: {0}")]
    Recovery(SyscallError),
    #[error("cannot join the other nodes on the database: {0}")]
    Cluster(String),
}

/// The kernel's shared state. Handlers get an `Arc<Kernel>`.
pub struct Kernel {
    pub config: KernelConfig,
    /// This node's stable id (lease holder name), kept in `$AOS_HOME/node-id`.
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub events: Arc<EventBus>,
    pub hooks: HookEngine,
    pub skills: SkillIndex,
    pub registry: Registry,
    pub auth: Auth,
    pub log: RuntimeLog,
    pub services: Services,
    pub dispatcher: Dispatcher,
    /// Set when the store is PostgreSQL: this node among the others on the database.
    pub cluster: Option<crate::cluster::Cluster>,
    watcher: Mutex<Option<Watcher>>,
    pub started: Instant,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    // session id → agent id. The relation never changes, so entries never go stale.
    // Locked only around map operations.
    session_agents: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Runs a syscall as `caller`.
    pub async fn call(self: &Arc<Self>, caller: Caller, op: &str, params: Value) -> Envelope {
        self.registry.call(self, caller, op, params).await
    }

    /// Publishes a catalogued event.
    pub fn emit(
        &self,
        event: EventName,
        agent_id: Option<&str>,
        session_id: Option<&str>,
        payload: Value,
    ) -> Arc<Published> {
        self.events
            .emit(event.name(), agent_id, session_id, payload)
    }

    /// The agent a session belongs to.
    pub async fn session_agent(&self, session_id: &str) -> Result<String, SyscallError> {
        if let Some(agent) = self
            .session_agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session_id)
        {
            return Ok(agent.clone());
        }
        let session = self.get_session(session_id).await?;
        Ok(session.agent_id)
    }

    fn remember_session(&self, session: &SessionCb) {
        let mut map = self
            .session_agents
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(session.session_id.clone(), session.agent_id.clone());
    }

    pub async fn system(&self) -> Result<SystemCb, SyscallError> {
        self.store.load_system().await?.ok_or_else(|| {
            SyscallError::new(ErrorCode::Internal, "the system control block is missing")
        })
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<AgentCb, SyscallError> {
        self.store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| SyscallError::not_found("agent", agent_id))
    }

    pub async fn get_session(&self, session_id: &str) -> Result<SessionCb, SyscallError> {
        let session = self
            .store
            .get_session(session_id)
            .await?
            .ok_or_else(|| SyscallError::not_found("session", session_id))?;
        self.remember_session(&session);
        Ok(session)
    }

    /// Read-modify-write of an agent, retried when a concurrent writer got there first.
    /// `change` may refuse (its error is returned) and runs again on each retry.
    pub async fn update_agent<F>(
        &self,
        agent_id: &str,
        mut change: F,
    ) -> Result<AgentCb, SyscallError>
    where
        F: FnMut(&mut AgentCb) -> Result<(), SyscallError>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let mut agent = self.get_agent(agent_id).await?;
            let expected = agent.revision;
            change(&mut agent)?;
            agent.revision = expected + 1;
            agent.updated_at = Timestamp::now();
            match self.store.save_agent(&agent, expected).await {
                Ok(()) => return Ok(agent),
                Err(StoreError::Conflict { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SyscallError::new(
            ErrorCode::RevisionConflict,
            format!("agent `{agent_id}` kept changing under this update; retry"),
        ))
    }

    /// Read-modify-write of a session (see [`Kernel::update_agent`]).
    pub async fn update_session<F>(
        &self,
        session_id: &str,
        mut change: F,
    ) -> Result<SessionCb, SyscallError>
    where
        F: FnMut(&mut SessionCb) -> Result<(), SyscallError>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let mut session = self.get_session(session_id).await?;
            let expected = session.revision;
            change(&mut session)?;
            session.revision = expected + 1;
            session.updated_at = Timestamp::now();
            match self.store.save_session(&session, expected).await {
                Ok(()) => return Ok(session),
                Err(StoreError::Conflict { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SyscallError::new(
            ErrorCode::RevisionConflict,
            format!("session `{session_id}` kept changing under this update; retry"),
        ))
    }

    /// Read-modify-write of the system control block.
    pub async fn update_system<F>(&self, mut change: F) -> Result<SystemCb, SyscallError>
    where
        F: FnMut(&mut SystemCb) -> Result<(), SyscallError>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let mut system = self.system().await?;
            let expected = system.revision;
            change(&mut system)?;
            system.revision = expected + 1;
            system.updated_at = Timestamp::now();
            match self.store.save_system(&system, expected).await {
                Ok(()) => return Ok(system),
                Err(StoreError::Conflict { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SyscallError::new(
            ErrorCode::RevisionConflict,
            "the system control block kept changing under this update; retry",
        ))
    }

    /// Rescans skillRoot off the async threads. Callers that act on the changes go
    /// through [`crate::skills::reload::reload`].
    pub async fn refresh_skills(
        self: &Arc<Self>,
    ) -> (Arc<crate::skills::Snapshot>, crate::skills::Changes) {
        let kernel = self.clone();
        match tokio::task::spawn_blocking(move || kernel.skills.refresh()).await {
            Ok(refreshed) => refreshed,
            Err(error) => {
                tracing::error!(%error, "skill scan panicked; keeping the previous index");
                (self.skills.snapshot(), crate::skills::Changes::default())
            }
        }
    }
}

/// A started kernel, listening but not yet serving.
pub struct Running {
    pub kernel: Arc<Kernel>,
    listener: TcpListener,
    addr: SocketAddr,
    _lock: Flock<fs::File>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends event streams,
    /// drains in-flight requests (bounded by the drain timeout), flushes the
    /// RuntimeLog and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Running {
            kernel, listener, ..
        } = self;
        let app = crate::api::router(kernel.clone());
        let signal_kernel = kernel.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests, draining");
            signal_kernel.emit(
                EventName::AosStopping,
                None,
                None,
                json!({"reason": "shutdown"}),
            );
            signal_kernel.shutdown.cancel();
        };
        // Small writes (SSE events, envelopes) go out at once: with Nagle's algorithm a
        // second event waits for the client's delayed ACK of the first, up to 40 ms.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "setting TCP_NODELAY on a connection failed");
            }
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        kernel.services.set_accepting(true);
        *kernel.watcher.lock().unwrap_or_else(|p| p.into_inner()) = watcher::start(&kernel);
        let starting = kernel.clone();
        kernel.tasks.spawn(async move {
            if let Err(error) = reconcile::everything(&starting).await {
                tracing::error!(%error, "starting the default services failed");
            }
        });
        let drain_limit = kernel.config.limits.drain_timeout;
        let cancelled = kernel.shutdown.clone();
        tokio::select! {
            result = server => {
                if let Err(error) = result {
                    tracing::error!(%error, "HTTP server failed");
                }
            }
            () = async move {
                cancelled.cancelled().await;
                tokio::time::sleep(drain_limit).await;
            } => {
                tracing::warn!(seconds = drain_limit.as_secs(), "drain timeout: closing remaining connections");
            }
        }
        kernel.shutdown.cancel();
        kernel.dispatcher.shutdown(drain_limit).await;
        drop(
            kernel
                .watcher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        kernel.services.shutdown_all().await;
        kernel.log.close().await;
        if let Some(cluster) = &kernel.cluster {
            cluster.leave().await;
        }
        kernel.tasks.close();
        if tokio::time::timeout(drain_limit, kernel.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not finish in time");
        }
        kernel.store.close().await;
        let _ = fs::remove_file(kernel.config.home.join("api.url"));
        tracing::info!("stopped");
    }
}

/// Starts the kernel and serves until `shutdown` resolves.
pub async fn run(
    config: KernelConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let running = start(config).await?;
    tracing::info!(addr = %running.addr(), "AOS kernel listening");
    running.serve(shutdown).await;
    Ok(())
}

/// Prepares the data directory, the store, the system control block, the skill index
/// and recovery, and binds the listener.
pub async fn start(config: KernelConfig) -> Result<Running, StartError> {
    if !config.bind.is_loopback() && !config.allow_remote {
        return Err(StartError::RemoteBind(config.bind));
    }
    let home = prepare_home(&config.home)?;
    let lock = lock_home(&home)?;
    let node_id = read_or_create(&home.join("node-id"), || new_id("node_"), 0o644)?;
    let admin_secret = match &config.admin_token {
        Some(token) => token.clone(),
        None => read_or_create(&home.join("admin.token"), new_token_secret, 0o600)?,
    };
    let (store, cluster): (Arc<dyn Store>, _) = match config.database_url.as_deref() {
        None => (
            Arc::new(SqliteStore::open(&home.join("aos.db"), config.sqlite_sync).await?),
            None,
        ),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::open(url).await?;
            let cluster = crate::cluster::Cluster::new(store.pool().clone(), &node_id);
            (Arc::new(store), Some(cluster))
        }
        Some(url) => match url.strip_prefix("sqlite:") {
            Some(path) => (
                Arc::new(
                    SqliteStore::open(Path::new(path.trim_start_matches("//")), config.sqlite_sync)
                        .await?,
                ),
                None,
            ),
            None => return Err(StartError::DatabaseUrl(url.to_owned())),
        },
    };
    // Store the skill root as an absolute path so the system block means the same
    // thing whatever directory a client runs in.
    let mut config = config;
    if let Ok(absolute) = config.skill_root.canonicalize() {
        config.skill_root = absolute;
    } else {
        tracing::warn!(root = %config.skill_root.display(), "the skill root does not exist; no skills are indexed until it does");
    }
    let events = Arc::new(EventBus::new(
        config.limits.event_ring,
        config.limits.event_ring_bytes,
    ));
    let tasks = TaskTracker::new();
    let log = RuntimeLog::start(store.clone(), &tasks);
    let paths = prepare_service_dirs(&home, &config)?;
    let kernel = Arc::new(Kernel {
        hooks: HookEngine::new(events.clone()),
        skills: SkillIndex::new(config.skill_root.clone()),
        registry: Registry::standard(),
        auth: Auth::new(&admin_secret),
        services: Services::new(paths),
        dispatcher: Dispatcher::new(config.llm_env.clone()),
        cluster,
        watcher: Mutex::new(None),
        node_id,
        store,
        events,
        log,
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        tasks,
        session_agents: Mutex::new(HashMap::new()),
        config,
    });
    let (snapshot, _) = kernel.refresh_skills().await;
    tracing::info!(
        root = %kernel.config.skill_root.display(),
        skills = snapshot.usable_count(),
        broken = snapshot.error_count(),
        "skill index built"
    );
    init_system(&kernel).await?;
    recovery::recover(&kernel)
        .await
        .map_err(StartError::Recovery)?;
    let addr = SocketAddr::new(kernel.config.bind, kernel.config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    kernel.services.set_api_url(format!("http://{addr}"));
    if kernel.cluster.is_some() {
        let url = kernel
            .config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        crate::cluster::Cluster::join(&kernel, url)
            .await
            .map_err(|e| StartError::Cluster(e.to_string()))?;
    }
    write_private(&home.join("api.url"), &format!("http://{addr}\n"), 0o644).map_err(|source| {
        StartError::Home {
            path: home.clone(),
            source,
        }
    })?;
    kernel.emit(
        EventName::AosStarted,
        None,
        None,
        json!({"nodeId": kernel.node_id, "catalogSize": snapshot.usable_count(), "addr": addr.to_string()}),
    );
    Ok(Running {
        kernel,
        listener,
        addr,
        _lock: lock,
    })
}

fn prepare_home(home: &Path) -> Result<PathBuf, StartError> {
    let err = |source| StartError::Home {
        path: home.to_owned(),
        source,
    };
    fs::create_dir_all(home).map_err(err)?;
    fs::set_permissions(home, fs::Permissions::from_mode(0o700)).map_err(err)?;
    home.canonicalize().map_err(err)
}

/// The service run directory (emptied of sockets a previous run left), the data
/// directory, and the bundled Python SDK.
fn prepare_service_dirs(home: &Path, config: &KernelConfig) -> Result<ServicePaths, StartError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| StartError::Home { path, source }
    };
    let run_dir = home.join("run");
    let data_dir = home.join("data");
    let python_path = home.join("python");
    for dir in [&run_dir, &data_dir] {
        fs::create_dir_all(dir).map_err(err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
    }
    if let Ok(entries) = fs::read_dir(&run_dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.path().extension().is_some_and(|e| e == "sock") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    crate::services::python::install(&python_path).map_err(err(&python_path))?;
    // Bash commands a killed kernel left running end now.
    let bash_dir = run_dir.join("bash");
    fs::create_dir_all(&bash_dir).map_err(err(&bash_dir))?;
    let killed = crate::react::bash::kill_leftovers(&bash_dir);
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed bash commands left running by the previous kernel"
        );
    }
    Ok(ServicePaths {
        run_dir,
        data_dir,
        bin_dirs: config.service_bin_dirs.clone(),
        python_path,
    })
}

fn lock_home(home: &Path) -> Result<Flock<fs::File>, StartError> {
    let path = home.join("aos.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StartError::Home {
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| StartError::Locked(home.to_owned()))
}

/// Reads a small state file, creating it with `make()` (and `mode`) when missing.
fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> String,
    mode: u32,
) -> Result<String, StartError> {
    let err = |source| StartError::Home {
        path: path.to_owned(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) | Err(_) => {
            let value = make();
            write_private(path, &format!("{value}\n"), mode).map_err(err)?;
            Ok(value)
        }
    }
}

/// Writes a file atomically (temp file + rename) with `mode`.
fn write_private(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
}

/// Creates the system control block on first start, refreshes the deployment fields
/// (name, skill root), and applies `aoscb.json` through `system.update` when it
/// declares something different from what is stored.
async fn init_system(kernel: &Arc<Kernel>) -> Result<(), StartError> {
    let skill_root = kernel.skills.root().display().to_string();
    let name = kernel.config.name.clone();
    match kernel.store.load_system().await? {
        None => {
            let now = Timestamp::now();
            let inserted = kernel
                .store
                .insert_system(&SystemCb {
                    name,
                    skill_root,
                    default_skills: Vec::new(),
                    auto_fold_threshold: DEFAULT_AUTO_FOLD_THRESHOLD,
                    compaction_threshold: DEFAULT_COMPACTION_THRESHOLD,
                    max_turns: DEFAULT_MAX_TURNS,
                    default_model: None,
                    providers: Vec::new(),
                    bash: Default::default(),
                    dispatch_timeout_ms: aos_sdk::protocol::DEFAULT_DISPATCH_TIMEOUT_MS,
                    revision: 1,
                    created_at: now,
                    updated_at: now,
                })
                .await;
            match inserted {
                // Another node starting on the same fresh database made it first.
                Ok(()) | Err(StoreError::Duplicate { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Some(system) if system.name != name || system.skill_root != skill_root => {
            kernel
                .update_system(|s| {
                    s.name = name.clone();
                    s.skill_root = skill_root.clone();
                    Ok(())
                })
                .await
                .map_err(|e| StartError::SystemFile {
                    path: kernel.config.home.clone(),
                    message: e.message,
                })?;
        }
        Some(_) => {}
    }
    let Some(path) = kernel.config.system_file.clone() else {
        return Ok(());
    };
    let fail = |message: String| StartError::SystemFile {
        path: path.clone(),
        message,
    };
    let text = fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    let declared: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let params: SystemUpdateParams =
        crate::syscall::decode("aoscb.json", declared.clone()).map_err(|e| fail(e.message))?;
    let current = serde_json::to_value(kernel.system().await.map_err(|e| fail(e.message))?)
        .map_err(|e| fail(e.to_string()))?;
    let differs = declared.as_object().is_some_and(|fields| {
        fields
            .iter()
            .any(|(k, v)| current.get(k).unwrap_or(&Value::Null) != v)
    });
    if differs {
        let envelope = kernel
            .call(
                Caller::kernel(),
                "system.update",
                serde_json::to_value(&params).map_err(|e| fail(e.to_string()))?,
            )
            .await;
        if let Some(error) = envelope.error {
            return Err(fail(error.message));
        }
        tracing::info!(file = %path.display(), "applied system settings");
    }
    Ok(())
}
