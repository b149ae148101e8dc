//! Process signals: SIGTERM and SIGINT start a graceful shutdown (stop accepting, let running
//! transactions finish within `shutdown_timeout`); a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `token` on the first SIGTERM/SIGINT; exits the process on the second.
pub async fn on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutdown requested");
    token.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    warn!("second signal: exiting immediately");
    std::process::exit(1);
}
