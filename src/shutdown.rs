//! Process signals: SIGTERM and SIGINT start a graceful shutdown (stop accepting, let running
//! transactions finish within `shutdown_timeout`); a second one exits at once. SIGHUP reads
//! the TLS certificate files again (the rest of the configuration reload is to come).

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

/// Reads the TLS files again on every SIGHUP, keeping the old ones (with a WARN) when the
/// new ones cannot be used. Ends with `token`.
pub async fn on_reload(
    tls: std::sync::Arc<crate::tls::Tls>,
    token: CancellationToken,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = token.cancelled() => return Ok(()),
        }
        info!(signal = "SIGHUP", "reloading TLS certificates");
        tls.reload_logged();
    }
}

/// The console's RELOAD: what can be read again while running is read again (today the
/// TLS files, as SIGHUP does). Says what happened, or why nothing changed.
pub fn reload(ctx: &crate::context::Context) -> Result<String, String> {
    info!(source = "RELOAD", "reloading TLS certificates");
    match ctx.tls.reload() {
        Ok(()) => Ok("TLS files read again".to_owned()),
        Err(errors) => {
            let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
            warn!(reasons = ?reasons, "TLS files not reloaded; the ones in force stay");
            Err(reasons.join("; "))
        }
    }
}

/// The console's SET: puts `new` (the configuration in force with one setting changed) in
/// force. Settings go live with the configuration reload; until then this refuses, so the
/// value shown stays the value in force.
pub fn apply_config(
    _ctx: &crate::context::Context,
    _new: crate::config::Config,
    key: &str,
) -> Result<(), String> {
    Err(format!(
        "{key} cannot be changed while running yet: set it in the configuration and restart"
    ))
}
