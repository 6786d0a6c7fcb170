//! The `aos` command built inside the test crate, so tests can spawn the real binary
//! (`CARGO_BIN_EXE_aos-e2e`) for signals, exit codes and `kill -9`.

#[path = "../../../kernel/src/signals.rs"]
mod signals;

fn main() -> std::process::ExitCode {
    aos_kernel::cli::main(signals::shutdown)
}
