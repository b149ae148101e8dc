//! `pgwarden check`: audits a configuration that is already valid, on its own ([`rules`]) and
//! against the live database ([`capacity`], [`live`]): the most backend connections pgwarden
//! can open per pool, per server, per role and per database against what the server accepts.
//! Running pgwarden logs the same findings as warnings at start.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::config::Config;

pub mod capacity;
pub mod live;
pub mod rules;

use capacity::{PoolLimits, ServerFacts};

/// How long the audit waits for each server.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warning,
    Error,
}

/// One problem, under the key that would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub key: String,
    pub message: String,
}

impl Finding {
    pub fn new(level: Level, key: &str, message: impl Into<String>) -> Finding {
        Finding {
            level,
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Warning => "warning",
            Level::Error => "error",
        };
        write!(f, "{level}: {}: {}", self.key, self.message)
    }
}

/// What one upstream server said, or why it could not be asked.
#[derive(Debug, Clone)]
pub struct ServerAudit {
    pub server: String,
    pub facts: Result<ServerFacts, String>,
    /// The most connections pgwarden may open there (`None`: unbounded).
    pub most: Option<usize>,
}

/// The whole audit.
#[derive(Debug, Clone)]
pub struct Report {
    pub pools: Vec<PoolLimits>,
    pub servers: Vec<ServerAudit>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0 clean, 1 warnings, 2 errors: for CI.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.level).max() {
            None => 0,
            Some(Level::Warning) => 1,
            Some(Level::Error) => 2,
        }
    }
}

/// Audits `config`; with `live`, also against each upstream server it can reach.
pub async fn audit(config: &Config, live: bool) -> Report {
    let pools = capacity::pools(config);
    let mut findings = rules::findings(config, &pools, fd_limit());
    let mut by_server: BTreeMap<&str, Vec<&PoolLimits>> = BTreeMap::new();
    for pool in &pools {
        by_server.entry(&pool.server).or_default().push(pool);
    }
    let tls = std::sync::Arc::new(crate::tls::Tls::new(config.tls_settings()));
    let mut servers = Vec::new();
    for (server, server_pools) in by_server {
        let facts = match live {
            true => ask(config, &server_pools, &tls).await,
            false => Err("not asked".to_owned()),
        };
        let databases = facts.as_ref().ok().map(|f| f.database_limits.len());
        let most = capacity::most_together(config, &server_pools, databases);
        match &facts {
            Ok(facts) => {
                findings.extend(capacity::audit_server(config, server, &server_pools, facts))
            }
            Err(reason) if live => findings.push(Finding::new(
                Level::Warning,
                "upstream",
                format!("could not audit {server} against the live database: {reason}"),
            )),
            Err(_) => {}
        }
        servers.push(ServerAudit {
            server: server.to_owned(),
            facts,
            most,
        });
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.level));
    Report {
        pools,
        servers,
        findings,
    }
}

/// The facts of the server behind `pools`, logging in as each pool's server user in turn
/// until one login works (a missing database or role is a finding, not the end of the audit).
async fn ask(
    config: &Config,
    pools: &[&PoolLimits],
    tls: &std::sync::Arc<crate::tls::Tls>,
) -> Result<ServerFacts, String> {
    let mut last = "no pool leads there".to_owned();
    for pool in pools {
        match live::facts(config, pool, tls, LIVE_TIMEOUT).await {
            Ok(facts) => return Ok(facts),
            Err(err) if err.is_backpressure() => return Err(err.to_string()),
            Err(err) => last = err.to_string(),
        }
    }
    Err(last)
}

/// The soft open-file limit of this process, from /proc (Linux); `None` elsewhere.
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The report as `pgwarden check` prints it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let most = |n: Option<usize>| n.map_or("unbounded".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "Effective limits per pool (database/user -> server):");
    let _ = writeln!(
        out,
        "  {:<20} {:<16} {:<22} {:<12} {:>5} {:>8} {:>8} {:>8}",
        "database", "user", "server", "mode", "pool", "reserve", "per db", "per user"
    );
    let cap = |n: usize| {
        if n == 0 {
            "-".to_owned()
        } else {
            n.to_string()
        }
    };
    for pool in &report.pools {
        let mode = format!("{:?}", pool.pool_mode).to_lowercase();
        let _ = writeln!(
            out,
            "  {:<20} {:<16} {:<22} {:<12} {:>5} {:>8} {:>8} {:>8}",
            pool.database,
            pool.user,
            pool.server,
            mode,
            pool.pool_size,
            pool.reserve_pool_size,
            cap(pool.max_db_connections),
            cap(pool.max_user_connections)
        );
    }
    if report.pools.is_empty() {
        let _ = writeln!(out, "  (no users configured: every pool is made on demand)");
    }
    let _ = writeln!(out);
    for server in &report.servers {
        match &server.facts {
            Ok(f) => {
                let _ = writeln!(
                    out,
                    "Server {}: max_connections {}, superuser_reserved_connections {}, reserved_connections {}: \
                     {} for ordinary roles, {} in use now; pgwarden may open {}",
                    server.server,
                    f.max_connections,
                    f.superuser_reserved_connections,
                    f.reserved_connections,
                    f.available(),
                    f.in_use,
                    most(server.most)
                );
            }
            Err(reason) => {
                let _ = writeln!(
                    out,
                    "Server {}: pgwarden may open {} (live limits not read: {reason})",
                    server.server,
                    most(server.most)
                );
            }
        }
    }
    let _ = writeln!(out);
    for finding in &report.findings {
        let _ = writeln!(out, "{finding}");
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.level == Level::Error)
        .count();
    let warnings = report.findings.len() - errors;
    let _ = writeln!(out, "{errors} error(s), {warnings} warning(s)");
    out
}

#[cfg(test)]
mod tests;
