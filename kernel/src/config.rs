//! Kernel configuration: where things live, what to bind, and limits. Built by the CLI
//! from flags and environment variables; tests build it directly.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::store::sqlite::SyncMode;

/// Default API port.
pub const DEFAULT_PORT: u16 = 8420;
/// Default session lease lifetime (DESIGN §9).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// Shortest lease lifetime accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(1500);

impl KernelConfig {
    /// How often a running dispatch renews its lease.
    pub fn lease_renew(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// Size and time limits that protect the kernel from hostile or runaway input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest HTTP request body (`POST /aoscp`).
    pub max_body_bytes: usize,
    /// Largest text in one history part; larger content belongs in the ContentStore.
    pub max_part_chars: usize,
    /// Events held for `Last-Event-ID` resumption.
    pub event_ring: usize,
    /// Bytes of event JSON held for resumption at most.
    pub event_ring_bytes: usize,
    /// Interval of SSE keepalive comments.
    pub keepalive: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_part_chars: 1024 * 1024,
            event_ring: 8192,
            event_ring_bytes: 32 * 1024 * 1024,
            keepalive: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything the kernel needs to start.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Data directory (`AOS_HOME`, default `./.aos`): database, admin token, sockets.
    pub home: PathBuf,
    /// Skill root (`AOS_SKILL_ROOT`, default `./skills`).
    pub skill_root: PathBuf,
    pub bind: IpAddr,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Required to bind anything but loopback.
    pub allow_remote: bool,
    /// Instance name (`AOS_NAME`).
    pub name: String,
    /// Admin token from `AOS_API_TOKEN`; otherwise one is generated into
    /// `$AOS_HOME/admin.token`.
    pub admin_token: Option<String>,
    /// `aoscb.json`: system settings applied at every start.
    pub system_file: Option<PathBuf>,
    /// `AOS_DATABASE_URL`; default `sqlite:$AOS_HOME/aos.db`.
    pub database_url: Option<String>,
    pub sqlite_sync: SyncMode,
    /// Directories searched first for services named by a bare program name, and put
    /// first on services' `PATH` (so they find the `aos` CLI). Default: the directory
    /// of the running executable.
    pub service_bin_dirs: Vec<PathBuf>,
    /// The default LLM provider from `AOS_LLM_*` variables, over `aoscb.json`.
    pub llm_env: Option<crate::react::llm::EnvProvider>,
    /// How long a session lease lives unrenewed (`AOS_LEASE_TTL_MS`, default 60 s); a
    /// running dispatch renews it every third of that. With several nodes, a node that
    /// dies loses its sessions to the others this long after its last renewal.
    pub lease_ttl: Duration,
    /// The URL other nodes reach this one's API at (`AOS_ADVERTISE_URL`; default the
    /// bound address). Used only with several nodes on one PostgreSQL.
    pub advertise_url: Option<String>,
    pub limits: Limits,
}

impl KernelConfig {
    /// Defaults for a data directory and a skill root.
    pub fn new(home: impl Into<PathBuf>, skill_root: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            skill_root: skill_root.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            allow_remote: false,
            name: "default".to_owned(),
            admin_token: None,
            system_file: None,
            database_url: None,
            sqlite_sync: SyncMode::Normal,
            service_bin_dirs: std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(PathBuf::from))
                .into_iter()
                .collect(),
            llm_env: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            advertise_url: None,
            limits: Limits::default(),
        }
    }
}
