//! The AOS kernel: agent lifecycle, the append-only session history, the syscall
//! registry, hooks, and the HTTP API. Policy lives in skills, not here.
//!
//! Entry points: [`run`] (start and serve until a shutdown future resolves) and
//! [`start`] (start, then [`Running::serve`]). The `aos` binary is a thin CLI over
//! [`cli::main`].

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod events;
pub mod hooks;
pub mod ids;
pub mod kernel;
pub mod react;
pub mod runtime_log;
pub mod services;
pub mod sessions;
pub mod skills;
pub mod store;
pub mod syscall;

pub use config::KernelConfig;
pub use kernel::{Kernel, Running, StartError, run, start};
