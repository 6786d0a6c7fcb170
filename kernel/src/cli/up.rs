//! `aos up`: run the daemon in the foreground.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use super::{Global, ShutdownSignal};
use crate::config::{DEFAULT_PORT, KernelConfig};
use crate::store::sqlite::SyncMode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Sync {
    Normal,
    Full,
}

/// Flags of `aos up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Port of the HTTP API (0 picks a free one).
    #[arg(long, env = "AOS_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Address to bind; anything but loopback needs --allow-remote.
    #[arg(long, env = "AOS_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Allow binding a non-loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Skill root.
    #[arg(long, env = "AOS_SKILL_ROOT", default_value = "./skills")]
    skills: PathBuf,
    /// System settings file (default: ./aoscb.json when it exists).
    #[arg(long, env = "AOS_CONFIG")]
    config: Option<PathBuf>,
    /// Instance name.
    #[arg(long, env = "AOS_NAME", default_value = "default")]
    name: String,
    /// Database URL (default sqlite:$AOS_HOME/aos.db).
    #[arg(long, env = "AOS_DATABASE_URL")]
    database_url: Option<String>,
    /// Session lease lifetime in milliseconds (at least 1500). With several nodes, a
    /// dead node's sessions move to the others this long after its last renewal.
    #[arg(long, env = "AOS_LEASE_TTL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1500..=3_600_000))]
    lease_ttl_ms: u64,
    /// The URL other nodes reach this node's API at (several nodes on one PostgreSQL;
    /// default http://<bind>:<port>).
    #[arg(long, env = "AOS_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// SQLite durability: `normal` survives process crashes, `full` also power loss.
    #[arg(long, env = "AOS_SQLITE_SYNC", value_enum, default_value = "normal")]
    sqlite_sync: Sync,
    /// Log format on stderr.
    #[arg(long, env = "AOS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Base URL of an OpenAI-compatible endpoint for the default provider (`env`),
    /// e.g. http://127.0.0.1:11434/v1 (Ollama).
    #[arg(long, env = "AOS_LLM_BASE_URL")]
    llm_base_url: Option<String>,
    /// Its model (the default model becomes `env/<model>`).
    #[arg(long, env = "AOS_LLM_MODEL")]
    llm_model: Option<String>,
    /// How it is asked for tool calls.
    #[arg(long, env = "AOS_LLM_TOOL_MODE", value_enum, default_value = "native")]
    llm_tool_mode: ToolModeArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ToolModeArg {
    Native,
    Json,
}

pub fn run(global: &Global, args: UpArgs, shutdown: ShutdownSignal) -> ExitCode {
    // The file watcher's own chatter (watch descriptors coming and going) is not news.
    let filter = EnvFilter::try_from_env("AOS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,notify=warn,notify_debouncer_mini=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let system_file = args.config.or_else(|| {
        let default = PathBuf::from("aoscb.json");
        default.is_file().then_some(default)
    });
    let mut config = KernelConfig::new(global.home.clone(), args.skills);
    config.port = args.port;
    config.bind = args.bind;
    config.allow_remote = args.allow_remote;
    config.name = args.name;
    config.admin_token = global.token.clone();
    config.system_file = system_file;
    config.database_url = args.database_url;
    config.lease_ttl = std::time::Duration::from_millis(args.lease_ttl_ms);
    config.advertise_url = args.advertise_url;
    config.llm_env = match (args.llm_base_url, args.llm_model) {
        (Some(base_url), Some(model)) => Some(crate::react::llm::EnvProvider {
            base_url,
            model,
            // The key is read from the environment only, never from a flag.
            api_key: std::env::var("AOS_LLM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            tool_mode: match args.llm_tool_mode {
                ToolModeArg::Native => aos_sdk::protocol::ToolMode::Native,
                ToolModeArg::Json => aos_sdk::protocol::ToolMode::Json,
            },
        }),
        (None, None) => None,
        (Some(_), None) => {
            eprintln!(
                "aos: AOS_LLM_BASE_URL is set but AOS_LLM_MODEL is not: name the model to use"
            );
            return ExitCode::from(2);
        }
        (None, Some(_)) => {
            eprintln!(
                "aos: AOS_LLM_MODEL is set but AOS_LLM_BASE_URL is not: name the endpoint (e.g. http://127.0.0.1:11434/v1)"
            );
            return ExitCode::from(2);
        }
    };
    config.sqlite_sync = match args.sqlite_sync {
        Sync::Normal => SyncMode::Normal,
        Sync::Full => SyncMode::Full,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aos: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let home = config.home.clone();
    let result = runtime.block_on(async move {
        let running = crate::start(config).await?;
        let token_hint = if global.token.is_some() {
            "the token in AOS_API_TOKEN".to_owned()
        } else {
            format!("the admin token in {}/admin.token", home.display())
        };
        eprintln!(
            "AOS kernel listening on http://{} (node {}); clients use {token_hint}",
            running.addr(),
            running.kernel.node_id
        );
        running.serve(shutdown()).await;
        Ok::<(), crate::StartError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aos: {error}");
            ExitCode::FAILURE
        }
    }
}
