//! The `aos` command line: `aos up` runs the daemon; every other command is a client
//! of a running daemon's HTTP API (found through `--url`/`AOS_API_URL`, else the
//! address the daemon wrote to `$AOS_HOME/api.url`).
//!
//! Exit codes: 0 success, 1 the kernel refused (syscall error), 2 bad usage,
//! 3 the kernel could not be reached.

/// `println!` that ignores a closed stdout (`aos ... | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod client_cmds;
mod dispatch_cmds;
mod output;
mod up;

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use aos_sdk::client::DEFAULT_API_URL;
use aos_sdk::{Client, ClientError};
use clap::{Args, Parser, Subcommand};

pub use up::UpArgs;

/// A future that resolves when the daemon should stop.
pub type ShutdownSignal = fn() -> Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Parser)]
#[command(
    name = "aos",
    version,
    about = "AOS — an operating system for LLM agents",
    long_about = "AOS — an operating system for LLM agents.\n\n`aos up` runs the kernel daemon. The other commands talk to a running daemon; without \
flags they find it through AOS_API_URL / AOS_API_TOKEN (or AOS_TOKEN inside an agent's shell), else \
through the files the daemon keeps in $AOS_HOME (default ./.aos)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Data directory of the daemon (token and address files).
    #[arg(long, env = "AOS_HOME", default_value = "./.aos", global = true)]
    home: PathBuf,
    /// Kernel API URL, e.g. http://127.0.0.1:8420.
    #[arg(long, env = "AOS_API_URL", global = true)]
    url: Option<String>,
    /// Bearer token (default: AOS_TOKEN, then $AOS_HOME/admin.token).
    #[arg(long, env = "AOS_API_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print raw JSON envelopes instead of human-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the kernel daemon in the foreground.
    Up(UpArgs),
    /// Show whether the daemon is up, and a summary.
    Status,
    /// Call any syscall; prints the envelope as JSON; exit code 0 only when ok.
    Call {
        /// Operation name, e.g. session.get.
        op: String,
        /// Params as a JSON object, `@file` to read a file, or `-` for stdin.
        #[arg(long, short)]
        payload: Option<String>,
    },
    /// List the syscalls: the kernel's, plus those services registered when a daemon
    /// is reachable.
    Syscalls {
        /// Print the Markdown reference (docs/syscalls.md).
        #[arg(long)]
        markdown: bool,
    },
    /// List the hook catalogue (from this binary; no daemon needed).
    Hooks {
        /// Print the Markdown reference (docs/hooks.md).
        #[arg(long)]
        markdown: bool,
    },
    /// Manage agents.
    #[command(subcommand)]
    Agent(client_cmds::AgentCmd),
    /// Manage sessions and read their history.
    #[command(subcommand)]
    Session(client_cmds::SessionCmd),
    /// Inspect skills, load them into sessions, start and stop their services.
    #[command(subcommand)]
    Skill(client_cmds::SkillCmd),
    /// Inspect running services.
    #[command(subcommand)]
    Service(client_cmds::ServiceCmd),
    /// Store and read content blobs.
    #[command(subcommand)]
    Content(client_cmds::ContentCmd),
    /// Issue, list and revoke tokens.
    #[command(subcommand)]
    Token(client_cmds::TokenCmd),
    /// Run an agent on one task and print its final answer (progress on stderr).
    Run(dispatch_cmds::RunArgs),
    /// Chat with an agent: each line a dispatch, answers streamed as they come.
    Chat(dispatch_cmds::ChatArgs),
    /// Stream runtime events as JSON lines.
    Events(client_cmds::EventsArgs),
    /// Show RuntimeLog entries.
    Log(client_cmds::LogArgs),
    /// Copy a stopped SQLite home into PostgreSQL and verify the copy (no daemon
    /// needed; stop the daemon first).
    Migrate {
        /// The SQLite database: `sqlite:<path>` or a path (default
        /// `sqlite:$AOS_HOME/aos.db`).
        #[arg(long)]
        from: Option<String>,
        /// The PostgreSQL database: `postgres://[user@]host[:port]/database`. It must
        /// hold no agents or sessions yet.
        #[arg(long)]
        to: String,
    },
    /// Print the version as JSON.
    Version,
}

/// Runs the CLI. `shutdown` is how the daemon learns to stop (the binary passes
/// SIGINT/SIGTERM handling).
pub fn main(shutdown: ShutdownSignal) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Up(args) => up::run(&cli.global, args, shutdown),
        Command::Syscalls { markdown: true } => {
            output::syscalls_markdown();
            ExitCode::SUCCESS
        }
        Command::Syscalls { markdown: false } => {
            let live = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
                .and_then(|runtime| {
                    runtime.block_on(async {
                        tokio::time::timeout(
                            std::time::Duration::from_secs(3),
                            client_for(&cli.global).operations(),
                        )
                        .await
                        .ok()?
                        .ok()
                    })
                });
            output::syscalls(live, cli.global.json);
            ExitCode::SUCCESS
        }
        Command::Hooks { markdown } => {
            output::hooks(markdown);
            ExitCode::SUCCESS
        }
        Command::Migrate { from, to } => migrate(&cli.global, from, &to),
        Command::Version => {
            say!(
                "{}",
                serde_json::json!({"name": "aos", "version": env!("CARGO_PKG_VERSION")})
            );
            ExitCode::SUCCESS
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("aos: cannot start the async runtime: {error}");
                    return ExitCode::from(3);
                }
            };
            let client = client_for(&cli.global);
            runtime.block_on(client_cmds::run(
                &client,
                &cli.global,
                command_into(command),
            ))
        }
    }
}

fn command_into(command: Command) -> client_cmds::ClientCommand {
    use client_cmds::ClientCommand as C;
    match command {
        Command::Status => C::Status,
        Command::Call { op, payload } => C::Call { op, payload },
        Command::Agent(cmd) => C::Agent(cmd),
        Command::Session(cmd) => C::Session(cmd),
        Command::Skill(cmd) => C::Skill(cmd),
        Command::Service(cmd) => C::Service(cmd),
        Command::Content(cmd) => C::Content(cmd),
        Command::Token(cmd) => C::Token(cmd),
        Command::Events(args) => C::Events(args),
        Command::Run(args) => C::Run(args),
        Command::Chat(args) => C::Chat(args),
        Command::Log(args) => C::Log(args),
        Command::Up(_)
        | Command::Syscalls { .. }
        | Command::Hooks { .. }
        | Command::Migrate { .. }
        | Command::Version => C::Status,
    }
}

/// `aos migrate`: copies the SQLite database into PostgreSQL and prints the verified
/// row counts.
fn migrate(global: &Global, from: Option<String>, to: &str) -> ExitCode {
    let path = match from {
        Some(from) => std::path::PathBuf::from(
            from.strip_prefix("sqlite:")
                .map(|p| p.trim_start_matches("//"))
                .unwrap_or(&from),
        ),
        None => global.home.join("aos.db"),
    };
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        eprintln!(
            "aos migrate: --to must be a PostgreSQL URL (postgres://[user@]host[:port]/database), not `{to}`"
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aos: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(crate::store::migrate::copy_sqlite_to_postgres(&path, to)) {
        Ok(report) => {
            say!("{report}");
            say!(
                "copied {} into {}: every table's row count matches",
                path.display(),
                crate::store::postgres::redact_url(to)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("aos migrate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The client for the daemon the global flags point at.
fn client_for(global: &Global) -> Client {
    let url = global
        .url
        .clone()
        .or_else(|| {
            std::fs::read_to_string(global.home.join("api.url"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let token = global
        .token
        .clone()
        .or_else(|| std::env::var("AOS_TOKEN").ok().filter(|t| !t.is_empty()))
        .or_else(|| {
            std::fs::read_to_string(global.home.join("admin.token"))
                .ok()
                .map(|s| s.trim().to_owned())
        });
    Client::new(url, token)
}

/// Exit code for a client error: 3 when unreachable, 1 otherwise.
fn exit_for(error: &ClientError) -> ExitCode {
    match error {
        ClientError::Connect { .. } | ClientError::Http { .. } => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}
