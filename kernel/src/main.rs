//! The `aos` command: the daemon (`aos up`) and the client CLI.

mod signals;

// The kernel allocates many small, short-lived JSON values from many threads; glibc's
// allocator spent a fifth of its time in `malloc`/`free` under load (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    aos_kernel::cli::main(signals::shutdown)
}
