//! The `aos` command: the daemon (`aos up`) and the client CLI.

mod signals;

fn main() -> std::process::ExitCode {
    aos_kernel::cli::main(signals::shutdown)
}
