//! The most server connections the configuration lets pgwarden open, per pool, per upstream
//! server, per database name and per user, and how that compares with what the live
//! database accepts. Pure: the live facts come in as [`ServerFacts`].

use std::collections::BTreeMap;

use super::{Finding, Level};
use crate::config::{Config, Database, PoolMode};

/// One (database, user) pool a client could make, with its effective limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLimits {
    /// The client-visible database name (`*` for the wildcard route).
    pub database: String,
    pub user: String,
    /// `host:port` (or socket directory and port) of the server.
    pub server: String,
    /// The database name and user at the server (`*` where it is the client's).
    pub server_database: String,
    pub server_user: String,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    pub reserve_pool_size: usize,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
}

impl PoolLimits {
    /// The most servers this pool can hold at once.
    pub fn most(&self) -> usize {
        self.pool_size + self.reserve_pool_size
    }
}

/// What a live server said about its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    pub max_connections: usize,
    pub superuser_reserved_connections: usize,
    /// `reserved_connections` (PostgreSQL 16 and later; 0 before).
    pub reserved_connections: usize,
    /// Login roles and their `CONNECTION LIMIT` (-1: none).
    pub role_limits: BTreeMap<String, i64>,
    /// Databases that allow connections and their `CONNECTION LIMIT` (-1: none).
    pub database_limits: BTreeMap<String, i64>,
    /// Client backends connected now (pgwarden's and everyone else's).
    pub in_use: usize,
}

impl ServerFacts {
    /// Connections ordinary (non-superuser) roles may open.
    pub fn available(&self) -> usize {
        self.max_connections
            .saturating_sub(self.superuser_reserved_connections)
            .saturating_sub(self.reserved_connections)
    }
}

/// Every pool the configuration allows: each named route with each known user, and the
/// wildcard route with each known user (its database names are open-ended).
pub fn pools(config: &Config) -> Vec<PoolLimits> {
    let mut users: Vec<&String> = config.users.keys().collect();
    users.sort();
    let mut routes: Vec<(&str, &Database)> = config
        .databases
        .iter()
        .map(|(name, route)| (name.as_str(), route))
        .collect();
    routes.sort_by_key(|(name, _)| *name);
    if let Some(wildcard) = &config.wildcard {
        routes.push(("*", wildcard));
    }
    let mut out = Vec::new();
    for (name, route) in routes {
        for user in &users {
            let settings = config.pool_config(route, config.users.get(*user));
            out.push(PoolLimits {
                database: name.to_owned(),
                user: (*user).clone(),
                server: server_label(route),
                server_database: route.dbname.clone().unwrap_or_else(|| name.to_owned()),
                server_user: route.user.clone().unwrap_or_else(|| (*user).clone()),
                pool_mode: settings.pool_mode,
                pool_size: settings.pool_size,
                reserve_pool_size: settings.reserve_pool_size,
                max_db_connections: settings.max_db_connections,
                max_user_connections: settings.max_user_connections,
            });
        }
    }
    out
}

pub fn server_label(route: &Database) -> String {
    match route.host.starts_with('/') {
        true => format!("{}/.s.PGSQL.{}", route.host, route.port),
        false if route.host.contains(':') => format!("[{}]:{}", route.host, route.port),
        false => format!("{}:{}", route.host, route.port),
    }
}

/// A number of connections; `None` is unbounded.
type Bound = Option<usize>;

fn sum(a: Bound, b: Bound) -> Bound {
    a.zip(b).map(|(a, b)| a.saturating_add(b))
}

fn least(bounds: impl IntoIterator<Item = Bound>) -> Bound {
    bounds.into_iter().flatten().min()
}

/// The most connections `pools` can open together: the least of their sum under the per
/// database caps, their sum under the per user caps, and `max_server_conn`. `databases` is
/// how many database names the wildcard route may lead to (from the live server; `None`:
/// unknown, so its pools are unbounded unless a cap bounds them).
pub fn most_together(config: &Config, pools: &[&PoolLimits], databases: Option<usize>) -> Bound {
    let copies = |pool: &PoolLimits| match pool.database == "*" {
        true => databases,
        false => Some(1),
    };
    let mut by_database: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut by_user: BTreeMap<&str, (Bound, usize)> = BTreeMap::new();
    for pool in pools {
        let db = by_database.entry(&pool.database).or_default();
        db.0 += pool.most();
        db.1 = pool.max_db_connections;
        let user = by_user.entry(&pool.user).or_insert((Some(0), 0));
        user.0 = sum(user.0, copies(pool).map(|n| n * pool.most()));
        user.1 = pool.max_user_connections;
    }
    // A sum of bounds is unbounded when any part is.
    let under_database_caps: Bound = by_database
        .iter()
        .map(|(db, (n, cap))| {
            let one = if *cap > 0 { (*n).min(*cap) } else { *n };
            match *db == "*" {
                true => databases.map(|d| d * one),
                false => Some(one),
            }
        })
        .sum();
    let under_user_caps: Bound = by_user
        .values()
        .map(|(n, cap)| match *cap > 0 {
            true => Some(n.map_or(*cap, |n| n.min(*cap))),
            false => *n,
        })
        .sum();
    let server_cap = (config.max_server_conn > 0).then_some(config.max_server_conn);
    least([under_database_caps, under_user_caps, server_cap])
}

/// Findings for one upstream server: what pgwarden may open there against what it accepts.
pub fn audit_server(
    config: &Config,
    server: &str,
    pools: &[&PoolLimits],
    facts: &ServerFacts,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let live_databases = facts.database_limits.len();
    let available = facts.available();
    match most_together(config, pools, Some(live_databases)) {
        Some(most) if most > available => findings.push(Finding::new(
            Level::Error,
            "pool_size",
            format!(
                "pgwarden may open up to {most} connections to {server}, which accepts {available} \
                 (max_connections {} - superuser_reserved_connections {}{}); lower pool_size or \
                 reserve_pool_size, or set max_server_conn to at most {available}",
                facts.max_connections,
                facts.superuser_reserved_connections,
                match facts.reserved_connections {
                    0 => String::new(),
                    n => format!(" - reserved_connections {n}"),
                }
            ),
        )),
        Some(most) if most + facts.in_use > available => findings.push(Finding::new(
            Level::Warning,
            "pool_size",
            format!(
                "pgwarden may open up to {most} connections to {server}; with the {} in use there now, \
                 more than the {available} it accepts",
                facts.in_use
            ),
        )),
        _ => {}
    }
    let mut by_role: BTreeMap<&str, Vec<&PoolLimits>> = BTreeMap::new();
    let mut by_db: BTreeMap<&str, Vec<&PoolLimits>> = BTreeMap::new();
    for pool in pools {
        by_role.entry(&pool.server_user).or_default().push(pool);
        if pool.database != "*" {
            by_db.entry(&pool.server_database).or_default().push(pool);
        }
    }
    for (role, role_pools) in by_role {
        match facts.role_limits.get(role) {
            None => findings.push(Finding::new(
                Level::Error,
                "users",
                format!("role {role:?} does not exist at {server} or cannot log in"),
            )),
            Some(limit) if *limit >= 0 => {
                let most = most_together(config, &role_pools, Some(live_databases));
                if most.is_none_or(|m| m as i64 > *limit) {
                    let most = most.map_or("an unbounded number of".to_owned(), |m| m.to_string());
                    findings.push(Finding::new(
                        Level::Error,
                        "max_user_connections",
                        format!(
                            "pgwarden may open {most} connections as {role:?} at {server}, whose \
                             CONNECTION LIMIT is {limit}; set max_user_connections for it to at most {limit}"
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for (database, db_pools) in by_db {
        match facts.database_limits.get(database) {
            None => findings.push(Finding::new(
                Level::Error,
                "databases",
                format!("database {database:?} does not exist at {server} or does not allow connections"),
            )),
            Some(limit) if *limit >= 0 => {
                let most = most_together(config, &db_pools, Some(live_databases)).unwrap_or(usize::MAX);
                if most as i64 > *limit {
                    findings.push(Finding::new(
                        Level::Error,
                        "max_db_connections",
                        format!(
                            "pgwarden may open {most} connections to database {database:?} at {server}, \
                             whose CONNECTION LIMIT is {limit}; set max_db_connections for it to at most {limit}"
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    findings
}
