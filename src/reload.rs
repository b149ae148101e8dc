//! Reloading the configuration while serving (`SIGHUP`, the console's `RELOAD`): read it
//! again exactly as at start (the file the flags name, the flags, the `PGWARDEN_*`
//! variables), validate it, and put it in force without dropping a client:
//!
//! - an invalid configuration is refused with every reason logged and returned; the one
//!   in force stays;
//! - settings only a restart can change ([`RESTART_ONLY`]) keep their running value, with
//!   a warning naming them;
//! - TLS files are read again (their settings may change too);
//! - users: who may log in, and how unknown users are made to look;
//! - every pool takes its new target and settings ([`crate::pool::Pools::reconfigure`]):
//!   sizes and caps at once, servers leading to an old upstream closed as they come back,
//!   never mid-transaction; a pool whose route or user is gone serves its clients on and
//!   goes with the last of them;
//! - clients connecting from now on see the new configuration (client caps, timeouts,
//!   routes); a connected client keeps the client-side settings it connected with.

mod diff;

use std::fmt;
use std::sync::{Arc, PoisonError};

use tracing::{info, warn};

pub use diff::{Changes, RESTART_ONLY};

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::context::{Context, Source};
use crate::pool::PoolsReport;

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub changes: Changes,
    pub pools: PoolsReport,
    /// Changed in the configuration, still at their running value: restart to apply.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload was refused; the configuration in force stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration not reloaded, the one in force stays:\n{0}")]
    Invalid(ConfigErrors),
}

/// Reads the configuration again and puts it in force (see the module doc). Logs the
/// outcome: what changed at INFO, what needs a restart and every refusal reason at WARN.
pub fn reload(ctx: &Context) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = one_at_a_time(ctx);
    let old = ctx.current_config();
    let read = match ctx.control.source() {
        Source::Flags(cli) => crate::config::load(cli),
        Source::Fixed => Ok((*old).clone()),
    };
    let outcome = (read.and_then(|new| apply(ctx, &old, new))).map_err(ReloadError::Invalid);
    match &outcome {
        Ok(report) => log_report(report),
        Err(ReloadError::Invalid(errors)) => {
            for error in &errors.0 {
                warn!(key = %error.key, "configuration not reloaded: {}", error.reason);
            }
            warn!(
                problems = errors.0.len(),
                "configuration not reloaded; the one in force stays"
            );
        }
    }
    outcome
}

/// The console's `SET key = value`: the configuration in force with one setting changed,
/// checked as at start and put in force as a reload would (until the next reload reads
/// the file again, as in PgBouncer).
pub fn set(ctx: &Context, key: &str, value: &str) -> Result<ReloadReport, ConfigErrors> {
    let _one_at_a_time = one_at_a_time(ctx);
    let old = ctx.current_config();
    let new = crate::config::with_setting(&old, key, value)?;
    let report = apply(ctx, &old, new)?;
    log_report(&report);
    Ok(report)
}

/// Held while a reload or SET runs, so that two never interleave.
fn one_at_a_time(ctx: &Context) -> std::sync::MutexGuard<'_, ()> {
    (ctx.control.reloading)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Puts a valid `new` in force in place of `old`.
fn apply(ctx: &Context, old: &Config, mut new: Config) -> Result<ReloadReport, ConfigErrors> {
    let needs_restart = diff::keep_restart_only(old, &mut new);
    // First, as the only step that can still fail (files changed since validation).
    ctx.tls.apply(new.tls_settings()).map_err(|errors| {
        let errors = errors
            .iter()
            .map(|e| ConfigError::new(e.key(), e.to_string()));
        ConfigErrors(errors.collect())
    })?;
    let changes = diff::changes(old, &new);
    (ctx.logins).set_users(new.users.values().filter_map(|u| u.secret.as_ref()));
    let new = Arc::new(new);
    // Stored before the pools are reconfigured: a pool made meanwhile is made from the new
    // configuration, or is found and reconfigured below.
    ctx.control.store(new.clone());
    let pools = ctx.pools.reconfigure(old, &new, &ctx.tls);
    audit(&new);
    Ok(ReloadReport {
        changes,
        pools,
        needs_restart,
    })
}

fn log_report(report: &ReloadReport) {
    for key in &report.needs_restart {
        warn!(
            key,
            "{key} changed in the configuration but only takes effect after a restart; \
             its running value stays"
        );
    }
    for repointed in &report.pools.repointed {
        info!(
            "pool {repointed}: idle servers closed, the others close as their clients release them"
        );
    }
    for orphaned in &report.pools.orphaned {
        info!(
            pool = %orphaned,
            "pool no longer configured: it serves its clients until they leave, then goes"
        );
    }
    info!("configuration reloaded: {report}");
}

/// The same findings as at start, as warnings, without delaying anything.
fn audit(config: &Arc<Config>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let config = config.clone();
    runtime.spawn(async move {
        for finding in crate::check::audit(&config, true).await.findings {
            warn!(key = %finding.key, "configuration check: {}", finding.message);
        }
    });
}

/// `changes; pools changed: …; needs restart: …`.
impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.changes)?;
        let pools = &self.pools;
        for (what, names) in [
            ("pools changed", &pools.changed),
            ("pools repointed", &pools.repointed),
            ("pools orphaned", &pools.orphaned),
        ] {
            if !names.is_empty() {
                write!(f, "; {what}: {}", names.join(", "))?;
            }
        }
        if !self.needs_restart.is_empty() {
            write!(f, "; needs restart: {}", self.needs_restart.join(", "))?;
        }
        Ok(())
    }
}
