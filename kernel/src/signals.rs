//! Shutdown on SIGINT/SIGTERM for the `aos` binaries: the first signal starts a
//! graceful shutdown, a second one exits at once. Kept out of the library so the
//! kernel never installs process-wide handlers itself; binaries include this file.

use std::future::Future;
use std::pin::Pin;

use tokio::signal::unix::{SignalKind, signal};

async fn next_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be stopped with SIGKILL.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits the process with 130.
pub fn shutdown() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async {
        next_signal().await;
        eprintln!("aos: shutting down gracefully (signal again to force)");
        tokio::spawn(async {
            next_signal().await;
            eprintln!("aos: forced exit");
            std::process::exit(130);
        });
    })
}
