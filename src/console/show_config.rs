//! SHOW DATABASES, USERS, CONFIG, LISTS, VERSION (PgBouncer's columns), LIMITS and ALERTS
//! (ours). Routes and users are shown by name, host and settings: never a password, a
//! SCRAM secret or key material (only the paths of TLS files).

use std::collections::BTreeMap;

use super::show::mode_name;
use super::table::{int, text, Kind, Table};
use crate::config::{Config, Database, SETTINGS};
use crate::context::Context;
use crate::pool::PoolSnapshot;
use crate::refusals::Cap;

use Kind::{Int, Text};

/// Settings a running pgwarden keeps until restarted (SHOW CONFIG's `changeable = no`).
pub use crate::reload::RESTART_ONLY;

const DATABASES: &[(&str, Kind)] = &[
    ("name", Text),
    ("host", Text),
    ("port", Int),
    ("database", Text),
    ("force_user", Text),
    ("pool_size", Int),
    ("min_pool_size", Int),
    ("reserve_pool_size", Int),
    ("server_lifetime", Int),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    ("max_connections", Int),
    ("current_connections", Int),
    ("max_client_connections", Int),
    ("current_client_connections", Int),
    ("paused", Int),
    ("disabled", Int),
];

/// Named routes first, then the names only the wildcard route served (pools made for
/// them), then the wildcard itself as `*`.
fn routes(config: &Config, pools: &[PoolSnapshot]) -> Vec<(String, Database)> {
    let mut named: Vec<(String, Database)> = (config.databases.iter())
        .map(|(name, route)| (name.clone(), route.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(wildcard) = &config.wildcard {
        let mut seen: Vec<String> = (pools.iter())
            .map(|p| p.database.clone())
            .filter(|db| !config.databases.contains_key(db))
            .collect();
        seen.dedup();
        named.extend(seen.into_iter().map(|db| (db, wildcard.clone())));
        named.push(("*".to_owned(), wildcard.clone()));
    }
    named
}

pub fn databases(ctx: &Context, config: &Config) -> Table {
    let pools = ctx.pools.snapshot();
    let clients = ctx.clients.all();
    let mut table = Table::new(DATABASES);
    for (name, route) in routes(config, &pools) {
        let settings = config.pool_config(&route, None);
        let open: usize = (pools.iter().filter(|p| p.database == name))
            .map(|p| p.open)
            .sum();
        let connected = (clients.iter())
            .filter(|c| !c.console && c.database == name)
            .count();
        table.push(vec![
            text(&name),
            text(&route.host),
            int(route.port),
            text(route.dbname.as_deref().unwrap_or(&name)),
            route.user.clone(),
            int(settings.pool_size),
            int(settings.min_pool_size),
            int(settings.reserve_pool_size),
            int(config.server_lifetime.as_secs()),
            route.overrides.pool_mode.map(|m| mode_name(m).to_owned()),
            None,
            int(settings.max_db_connections),
            int(open),
            int(settings.max_client_conn_per_database),
            int(connected),
            int(u8::from(ctx.pools.is_paused(&name))),
            int(u8::from(ctx.pools.is_disabled(&name))),
        ]);
    }
    table
}

const USERS: &[(&str, Kind)] = &[
    ("name", Text),
    ("pool_size", Int),
    ("reserve_pool_size", Int),
    ("pool_mode", Text),
    ("max_user_connections", Int),
    ("current_connections", Int),
    ("max_user_client_connections", Int),
    ("current_client_connections", Int),
];

pub fn users(ctx: &Context, config: &Config) -> Table {
    let pools = ctx.pools.snapshot();
    let clients = ctx.clients.all();
    let mut names: Vec<&String> = config.users.keys().collect();
    names.sort();
    let mut table = Table::new(USERS);
    for name in names {
        let user = &config.users[name];
        let o = &user.overrides;
        let open: usize = (pools.iter().filter(|p| p.user == *name))
            .map(|p| p.open)
            .sum();
        let connected = clients.iter().filter(|c| c.user == *name).count();
        table.push(vec![
            text(name),
            o.pool_size.map(|n| n.to_string()),
            None,
            o.pool_mode.map(|m| mode_name(m).to_owned()),
            int(o
                .max_user_connections
                .unwrap_or(config.max_user_connections)),
            int(open),
            int(o
                .max_client_conn_per_user
                .unwrap_or(config.max_client_conn_per_user)),
            int(connected),
        ]);
    }
    table
}

pub fn config(config: &Config) -> Table {
    let mut table = Table::new(&[
        ("key", Text),
        ("value", Text),
        ("default", Text),
        ("changeable", Text),
    ]);
    let values: BTreeMap<&str, String> = config.shown().into_iter().collect();
    for setting in SETTINGS {
        let changeable = match RESTART_ONLY.contains(&setting.key) {
            true => "no",
            false => "yes",
        };
        table.push(vec![
            text(setting.key),
            values.get(setting.key).cloned(),
            text((setting.default)()),
            text(changeable),
        ]);
    }
    table
}

pub fn lists(ctx: &Context, config: &Config) -> Table {
    let mut table = Table::new(&[("list", Text), ("items", Int)]);
    let databases = config.databases.len() + usize::from(config.wildcard.is_some());
    let rows = [
        ("databases", databases),
        ("users", config.users.len()),
        ("pools", ctx.pools.len()),
        ("free_clients", 0),
        ("used_clients", ctx.clients.len()),
        ("login_clients", ctx.prelogin.pending()),
        ("free_servers", 0),
        ("used_servers", ctx.pools.servers().len()),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (list, items) in rows {
        table.push(vec![text(list), int(items)]);
    }
    table
}

/// The version, worded so that tools matching PgBouncer's (`PgBouncer 1.23.0`) read it.
pub fn version() -> Table {
    let mut table = Table::new(&[("version", Text)]);
    table.push(vec![text(format!(
        "pgwarden {} (console compatible with PgBouncer 1.23.0)",
        env!("CARGO_PKG_VERSION")
    ))]);
    table
}

const LIMITS: &[(&str, Kind)] = &[
    ("cap", Text),
    ("scope", Text),
    ("value", Text),
    ("current", Text),
    ("refusals", Int),
];

/// Every cap with its value and what uses it now (0: unlimited).
pub fn limits(ctx: &Context, config: &Config) -> Table {
    let mut table = Table::new(LIMITS);
    let refused = |cap: Cap| int(ctx.refusals.get(cap));
    let mut push = |cap: &str, scope: String, value: String, current: String, r| {
        table.push(vec![text(cap), text(scope), text(value), text(current), r]);
    };
    let n = |v: usize| v.to_string();
    let logged_in = ctx.admission.logged_in();
    push(
        "max_client_conn",
        String::new(),
        n(config.max_client_conn),
        n(logged_in),
        refused(Cap::MaxClientConn),
    );
    for (cap, key, (scope, busiest)) in busiest_identities(ctx, config) {
        push(key, scope, n(cap), n(busiest), refused(client_cap(key)));
    }
    let pending = ctx.prelogin.pending();
    push(
        "max_pending_logins",
        String::new(),
        n(config.max_pending_logins),
        n(pending),
        refused(Cap::MaxPendingLogins),
    );
    push(
        "max_pending_logins_per_addr",
        String::new(),
        n(config.max_pending_logins_per_addr),
        String::new(),
        refused(Cap::MaxPendingLoginsPerAddr),
    );
    push(
        "max_server_conn",
        String::new(),
        n(config.max_server_conn),
        n(ctx.pools.server_connections()),
        int(0),
    );
    let pools = ctx.pools.snapshot();
    let mut per_db: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut per_user: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in &pools {
        let db = per_db
            .entry(&p.database)
            .or_insert((p.settings.max_db_connections, 0));
        db.1 += p.open;
        let user = per_user
            .entry(&p.user)
            .or_insert((p.settings.max_user_connections, 0));
        user.1 += p.open;
    }
    for (db, (max, open)) in per_db {
        push(
            "max_db_connections",
            format!("database \"{db}\""),
            n(max),
            n(open),
            int(0),
        );
    }
    for (user, (max, open)) in per_user {
        push(
            "max_user_connections",
            format!("user \"{user}\""),
            n(max),
            n(open),
            int(0),
        );
    }
    for p in &pools {
        let scope = format!("pool {}/{}", p.database, p.user);
        let s = &p.settings;
        push(
            "pool_size",
            scope.clone(),
            n(s.size),
            n(p.open.min(s.size)),
            int(0),
        );
        push(
            "reserve_pool_size",
            scope.clone(),
            n(s.reserve_size),
            n(p.open.saturating_sub(s.size)),
            int(0),
        );
        push(
            "max_server_conn_per_client",
            scope.clone(),
            n(s.per_client),
            String::new(),
            int(0),
        );
        let wait = crate::config::duration::format(s.wait_timeout);
        let longest = format!("{:.3}s", p.maxwait.as_secs_f64());
        push("query_wait_timeout", scope, wait, longest, int(0));
    }
    // The per-pool query_wait_timeout refusals are counted once, for all pools.
    push(
        "query_wait_timeout",
        "all pools".to_owned(),
        crate::config::duration::format(config.query_wait_timeout),
        String::new(),
        refused(Cap::QueryWaitTimeout),
    );
    table
}

fn client_cap(key: &str) -> Cap {
    match key {
        "max_client_conn_per_user" => Cap::MaxClientConnPerUser,
        "max_client_conn_per_database" => Cap::MaxClientConnPerDatabase,
        "max_client_conn_per_addr" => Cap::MaxClientConnPerAddr,
        _ => Cap::MaxClientConnPerApp,
    }
}

/// For each per-identity client cap: its top-level value, and the identity with the most
/// clients now and how many (from the clients registry).
fn busiest_identities(
    ctx: &Context,
    config: &Config,
) -> Vec<(usize, &'static str, (String, usize))> {
    let clients: Vec<_> = ctx
        .clients
        .all()
        .into_iter()
        .filter(|c| !c.console)
        .collect();
    let busiest = |label: &str, key: &dyn Fn(&crate::stats::ClientInfo) -> String| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in &clients {
            *counts.entry(key(c)).or_insert(0) += 1;
        }
        let top = counts.into_iter().max_by_key(|(_, n)| *n);
        top.map_or((String::new(), 0), |(name, n)| {
            (format!("{label} \"{name}\""), n)
        })
    };
    let addr = |c: &crate::stats::ClientInfo| match c.addr {
        Some(a) => crate::admission::Network::of(a.ip(), config).to_string(),
        None => "unix socket".to_owned(),
    };
    vec![
        (
            config.max_client_conn_per_user,
            "max_client_conn_per_user",
            busiest("user", &|c| c.user.clone()),
        ),
        (
            config.max_client_conn_per_database,
            "max_client_conn_per_database",
            busiest("database", &|c| c.database.clone()),
        ),
        (
            config.max_client_conn_per_addr,
            "max_client_conn_per_addr",
            busiest("address", &addr),
        ),
        (
            config.max_client_conn_per_app,
            "max_client_conn_per_app",
            busiest("application", &|c| c.application_name.clone()),
        ),
    ]
}

const ALERTS: &[(&str, Kind)] = &[
    ("rule", Text),
    ("database", Text),
    ("user", Text),
    ("cap", Text),
    ("state", Text),
    ("since", Int),
    ("message", Text),
];

/// The alerts firing or recently resolved ([`crate::alerts`]), firing first.
pub fn alerts(ctx: &Context) -> Table {
    let mut table = Table::new(ALERTS);
    for a in ctx.alerts.rows() {
        table.push(vec![
            text(a.rule),
            text(a.database),
            text(a.user),
            text(a.cap),
            text(a.state),
            int(a.since.as_secs()),
            text(a.message),
        ]);
    }
    table
}
