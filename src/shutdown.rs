//! Shutdown as PgBouncer users know it, and the signals that start it.
//!
//! - `SIGTERM` ([`Mode::WaitForClients`]): no new logins, clients go on as usual until they
//!   leave on their own.
//! - `SIGINT` ([`Mode::WaitForServers`]): no new logins, running transactions finish, and
//!   each client is closed at its next idle point (57P01).
//! - A second `SIGTERM` or `SIGINT` exits at once.
//!
//! Either wait is bounded by `shutdown_timeout` (zero: no bound), after which the sessions
//! left are closed where they stand. While draining, a new connection is refused with
//! 57P01 after its startup packet (so psql and libpq show why), except for the admin
//! console ([`admitted_while_draining`]); readiness ([`Context::draining`]) turns unready
//! the moment draining starts. `SIGHUP` reloads the configuration ([`crate::reload`]).

use std::fmt;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::context::Context;

/// How pgwarden shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for every client to disconnect (`SIGTERM`; PgBouncer's `WAIT_FOR_CLIENTS`).
    WaitForClients,
    /// Wait for running transactions, closing each client at its next idle point
    /// (`SIGINT`; PgBouncer's `WAIT_FOR_SERVERS`).
    WaitForServers,
    /// Close every session where it stands, then exit (the console's plain `SHUTDOWN`).
    Immediate,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::WaitForClients => "waiting for clients to disconnect",
            Mode::WaitForServers => "waiting for running transactions, closing idle clients",
            Mode::Immediate => "closing every session now",
        })
    }
}

/// Starts (or hardens) a shutdown: from now on new logins are refused. `WaitForServers`
/// after `WaitForClients` closes the clients at their next idle point; a softer mode
/// after a harder one changes nothing.
pub fn request(ctx: &Context, mode: Mode) {
    ctx.draining_token().cancel();
    if mode != Mode::WaitForClients {
        ctx.shutdown.cancel();
    }
    if mode == Mode::Immediate {
        ctx.abort.cancel();
    }
}

/// The mode a shutdown under way is in (`None` before one starts).
pub fn mode(ctx: &Context) -> Option<Mode> {
    if ctx.abort.is_cancelled() {
        return Some(Mode::Immediate);
    }
    match (ctx.draining(), ctx.shutdown.is_cancelled()) {
        (_, true) => Some(Mode::WaitForServers),
        (true, false) => Some(Mode::WaitForClients),
        (false, false) => None,
    }
}

/// Whether a client asking for `database` may still log in while pgwarden drains: the
/// admin console (`pgwarden`, or `pgbouncer` for PgBouncer's tools), so that operators can
/// watch and steer the shutdown.
pub fn admitted_while_draining(database: &str) -> bool {
    matches!(database, "pgwarden" | "pgbouncer")
}

/// The first `SIGTERM` or `SIGINT` starts a shutdown in its mode; the second of either
/// exits the process at once.
pub async fn on_signals(ctx: Context) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (name, mode) = tokio::select! {
        _ = term.recv() => ("SIGTERM", Mode::WaitForClients),
        _ = int.recv() => ("SIGINT", Mode::WaitForServers),
    };
    info!(
        signal = name,
        "shutdown requested: {mode}; a second signal exits at once"
    );
    request(&ctx, mode);
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    warn!(signal = name, "second signal: exiting immediately");
    std::process::exit(1);
}

/// Reloads the configuration on every `SIGHUP` ([`crate::reload::reload`], which logs
/// the outcome). Ends when draining starts.
pub async fn on_reload(ctx: Context) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = ctx.draining_token().cancelled() => return Ok(()),
        }
        info!(signal = "SIGHUP", "reloading the configuration");
        // Refusals and what changed are logged by reload itself.
        let _ = crate::reload::reload(&ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let config = crate::config::from_toml("[databases.\"*\"]\nhost = \"127.0.0.1\"\n").unwrap();
        Context::new(std::sync::Arc::new(config), Default::default())
    }

    #[test]
    fn sigterm_drains_and_sigint_after_it_closes_idle_clients() {
        let ctx = ctx();
        assert_eq!(mode(&ctx), None);
        request(&ctx, Mode::WaitForClients);
        assert!(ctx.draining() && !ctx.shutdown.is_cancelled());
        assert_eq!(mode(&ctx), Some(Mode::WaitForClients));
        request(&ctx, Mode::WaitForServers);
        assert_eq!(mode(&ctx), Some(Mode::WaitForServers));
        request(&ctx, Mode::WaitForClients);
        assert_eq!(mode(&ctx), Some(Mode::WaitForServers), "never softened");
        request(&ctx, Mode::Immediate);
        assert!(ctx.abort.is_cancelled());
        assert_eq!(mode(&ctx), Some(Mode::Immediate));
    }

    #[test]
    fn sigint_drains_too() {
        let ctx = ctx();
        request(&ctx, Mode::WaitForServers);
        assert!(ctx.draining());
    }

    #[test]
    fn only_the_console_logs_in_while_draining() {
        assert!(admitted_while_draining("pgwarden"));
        assert!(admitted_while_draining("pgbouncer"));
        assert!(!admitted_while_draining("appdb"));
        assert!(
            !admitted_while_draining("PGWARDEN"),
            "database names are case-sensitive"
        );
    }
}
