//! `aos-bench`: runs the benchmark scenarios and writes `bench/results/<date>.md` and
//! `.json`. Every figure is reported beside a baseline measured in the same run on the
//! same machine, with min/median/max over rounds. `--quick` checks that the harness
//! works; its timings mean nothing.

// The same allocator as the `aos` binary, so the kernel role measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod a2a;
mod context;
mod dispatch;
mod mcp;
mod memory;
mod postgres;
mod report;
mod scenarios;
mod sched;
mod services;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "aos-bench",
    about = "AOS benchmarks (ratios against same-run baselines)"
)]
struct Args {
    /// Short runs that only prove the harness works.
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario (default 5, quick 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement (default 3, quick 0.3).
    #[arg(long)]
    seconds: Option<f64>,
    /// Only these scenarios (default: all).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Where to write the report.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[command(subcommand)]
    role: Option<Role>,
}

/// The bench binary also plays the processes it measures.
#[derive(Debug, clap::Subcommand)]
enum Role {
    /// Run as the benchmark's Rust service (the kernel spawns this).
    #[command(hide = true)]
    ServeRust,
    /// Run as the raw echo peer on a Unix socket.
    #[command(hide = true)]
    Echo { socket: PathBuf },
    /// Run a kernel (home, skill root, aoscb.json) until interrupted.
    #[command(hide = true)]
    Kernel {
        home: PathBuf,
        skills: PathBuf,
        config: PathBuf,
        /// A PostgreSQL store instead of SQLite under the home.
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rounds: usize,
    pub window: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(role) = args.role {
        return match role {
            Role::ServeRust => current_thread()?.block_on(services::serve_rust()),
            Role::Echo { socket } => current_thread()?.block_on(services::echo(&socket)),
            Role::Kernel {
                home,
                skills,
                config,
                database_url,
            } => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(dispatch::serve_kernel(home, skills, config, database_url)),
        };
    }
    let plan = Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }),
        window: Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick { 0.3 } else { 3.0 })),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wanted = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let mut sections = Vec::new();
    if wanted("http-query") {
        eprintln!("== http-query");
        sections.push(runtime.block_on(scenarios::http_query(&plan))?);
    }
    if wanted("append") {
        eprintln!("== append");
        sections.push(runtime.block_on(scenarios::append(&plan))?);
    }
    if wanted("hook-rtt") {
        eprintln!("== hook-rtt");
        sections.push(runtime.block_on(services::hooks(&plan))?);
    }
    if wanted("hot-reload") {
        eprintln!("== hot-reload");
        sections.push(runtime.block_on(services::hot_reload(&plan))?);
    }
    if wanted("service-syscalls") {
        eprintln!("== service-syscalls");
        sections.push(runtime.block_on(services::service_syscalls(&plan))?);
    }
    if wanted("turn-overhead") {
        eprintln!("== turn-overhead");
        sections.push(runtime.block_on(dispatch::turn_overhead(&plan))?);
    }
    if wanted("sessions") {
        eprintln!("== sessions");
        sections.push(runtime.block_on(dispatch::many_sessions(&plan))?);
    }
    if wanted("context-assemble") {
        eprintln!("== context-assemble");
        sections.push(runtime.block_on(context::assemble_sizes(&plan))?);
    }
    if wanted("context-tokens") {
        eprintln!("== context-tokens");
        sections.push(runtime.block_on(context::tokens_per_turn(&plan))?);
    }
    if wanted("memory-search") {
        eprintln!("== memory-search");
        sections.push(runtime.block_on(memory::search_latency(&plan))?);
    }
    if wanted("a2a-wake") {
        eprintln!("== a2a-wake");
        sections.push(runtime.block_on(a2a::wake_round_trip(&plan))?);
    }
    if wanted("priorities") {
        eprintln!("== priorities");
        sections.push(runtime.block_on(dispatch::priorities(&plan))?);
    }
    if wanted("mcp") {
        eprintln!("== mcp");
        sections.push(runtime.block_on(mcp::call_overhead(&plan))?);
    }
    if wanted("sched") {
        eprintln!("== sched");
        sections.push(runtime.block_on(sched::overhead(&plan))?);
    }
    if wanted("postgres") {
        eprintln!("== postgres");
        sections.extend(runtime.block_on(postgres::postgres(&plan))?);
    }
    let report = report::Report::new(args.quick, &plan, sections);
    let (md, json) = report.write(&args.out)?;
    println!("{}", report.markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}
