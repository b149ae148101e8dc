//! SHOW POOLS, STATS (and STATS_TOTALS, STATS_AVERAGES), CLIENTS and SERVERS: PgBouncer's
//! columns in PgBouncer's order (its documentation and 1.23's source), ours after them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::table::{int, text, text_or_null, Kind, Table};
use crate::context::Context;
use crate::pool::{ClientId, PoolKey, PoolSnapshot};
use crate::stats::{clock, Averages, ClientInfo, Entry, ServerInfo, ServerState, Totals};

use Kind::{Int, Text};

/// The name of a pool mode as PgBouncer prints it.
pub fn mode_name(mode: crate::config::PoolMode) -> &'static str {
    match mode {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Statement => "statement",
    }
}

const POOLS: &[(&str, Kind)] = &[
    ("database", Text),
    ("user", Text),
    ("cl_active", Int),
    ("cl_waiting", Int),
    ("cl_active_cancel_req", Int),
    ("cl_waiting_cancel_req", Int),
    ("sv_active", Int),
    ("sv_active_cancel", Int),
    ("sv_being_canceled", Int),
    ("sv_idle", Int),
    ("sv_used", Int),
    ("sv_tested", Int),
    ("sv_login", Int),
    ("maxwait", Int),
    ("maxwait_us", Int),
    ("pool_mode", Text),
    ("load_balance_hosts", Text),
    // Ours.
    ("pool_size", Int),
    ("sv_open", Int),
    ("wait_p50_us", Int),
    ("wait_p95_us", Int),
    ("wait_p99_us", Int),
    ("waiting_on", Text),
    ("pinned", Int),
    ("paused", Int),
    ("login_error", Text),
];

pub fn pools(ctx: &Context) -> Table {
    let mut table = Table::new(POOLS);
    for pool in ctx.pools.all_sorted() {
        let s = pool.snapshot();
        let waits = pool.recent_waits();
        let p = |q: f64| waits.wait_quantile(q).map(|d| d.as_micros().to_string());
        table.push(vec![
            text(&s.database),
            text(&s.user),
            int(s.cl_active),
            int(s.cl_waiting),
            int(0),
            int(0),
            int(s.servers.active),
            int(0),
            int(0),
            int(s.servers.idle),
            int(s.servers.used),
            int(s.servers.tested),
            int(s.servers.login),
            int(s.maxwait.as_secs()),
            int(s.maxwait.subsec_micros()),
            text(mode_name(s.mode)),
            None,
            int(s.settings.size),
            int(s.open),
            p(0.5),
            p(0.95),
            p(0.99),
            s.waiting_on.clone(),
            int(s.pinned),
            int(u8::from(pool.is_paused())),
            s.login_failing.clone(),
        ]);
    }
    table
}

/// PgBouncer's counters in its order (without the `total_`/`avg_` prefix).
const COUNTERS: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_connect_count",
];

fn total_cells(t: &Totals) -> Vec<Option<String>> {
    [
        t.server_assignments,
        t.xact_count,
        t.query_count,
        t.bytes_received,
        t.bytes_sent,
        t.xact_time_us,
        t.query_time_us,
        t.wait_time_us,
        0, // prepared statements are not counted (yet)
        0,
        0,
        t.client_logins,
    ]
    .into_iter()
    .map(int)
    .collect()
}

fn average_cells(a: &Averages) -> Vec<Option<String>> {
    [
        a.server_assignment_count,
        a.xact_count,
        a.query_count,
        a.bytes_received,
        a.bytes_sent,
        a.xact_time_us,
        a.query_time_us,
        a.wait_time_us,
        0,
        0,
        0,
        a.client_logins,
    ]
    .into_iter()
    .map(int)
    .collect()
}

/// Per database: the pools' totals summed, and their averages (rates summed, means
/// weighted by the events of each pool).
fn per_database(ctx: &Context) -> BTreeMap<String, (Totals, Averages)> {
    let mut out: BTreeMap<String, (Totals, Totals, Averages)> = BTreeMap::new();
    for pool in ctx.pools.all_sorted() {
        let (delta, elapsed) = pool.last_period();
        let rates = Averages::of(&delta, elapsed);
        let entry = out.entry(pool.key().database.clone()).or_default();
        entry.0 = entry.0.plus(&pool.counters().totals());
        entry.1 = entry.1.plus(&delta);
        let sum = &mut entry.2;
        sum.server_assignment_count += rates.server_assignment_count;
        sum.xact_count += rates.xact_count;
        sum.query_count += rates.query_count;
        sum.bytes_received += rates.bytes_received;
        sum.bytes_sent += rates.bytes_sent;
        sum.client_logins += rates.client_logins;
    }
    let means = |delta: &Totals, rates: Averages| {
        let means = Averages::of(delta, Duration::from_secs(1));
        Averages {
            xact_time_us: means.xact_time_us,
            query_time_us: means.query_time_us,
            wait_time_us: means.wait_time_us,
            ..rates
        }
    };
    (out.into_iter())
        .map(|(db, (totals, delta, rates))| (db, (totals, means(&delta, rates))))
        .collect()
}

const STATS: [&str; 25] = [
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "total_client_connect_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
    "avg_client_connect_count",
];

/// SHOW STATS: totals, then averages; ours (server connect and login failures) after.
pub fn stats(ctx: &Context) -> Table {
    let kind = |name: &str| if name == "database" { Text } else { Int };
    let mut columns: Vec<(&'static str, Kind)> = STATS.iter().map(|c| (*c, kind(c))).collect();
    columns.extend([
        ("total_server_connect_failures", Int),
        ("total_server_login_failures", Int),
    ]);
    let mut table = Table::new(&columns);
    for (db, (totals, averages)) in per_database(ctx) {
        let mut row = vec![text(db)];
        row.extend(total_cells(&totals));
        row.extend(average_cells(&averages));
        row.extend([int(totals.connect_failures), int(totals.login_failures)]);
        table.push(row);
    }
    table
}

/// STATS_TOTALS and STATS_AVERAGES share these names (PgBouncer 1.23).
fn subset_columns(averages: bool) -> Vec<(&'static str, Kind)> {
    let mut columns = vec![("database", Text)];
    columns.extend(COUNTERS.iter().map(|c| {
        let name = match (*c, averages) {
            ("received", _) => "bytes_received",
            ("sent", _) => "bytes_sent",
            ("client_parse_count", true) => "avg_client_parse_count",
            ("server_parse_count", true) => "avg_server_parse_count",
            ("bind_count", true) => "avg_bind_count",
            (c, _) => c,
        };
        (name, Int)
    }));
    columns
}

pub fn stats_totals(ctx: &Context) -> Table {
    let mut table = Table::new(&subset_columns(false));
    for (db, (totals, _)) in per_database(ctx) {
        let mut row = vec![text(db)];
        row.extend(total_cells(&totals));
        table.push(row);
    }
    table
}

pub fn stats_averages(ctx: &Context) -> Table {
    let mut table = Table::new(&subset_columns(true));
    for (db, (_, averages)) in per_database(ctx) {
        let mut row = vec![text(db)];
        row.extend(average_cells(&averages));
        table.push(row);
    }
    table
}

/// SHOW CLIENTS and SHOW SERVERS share PgBouncer's columns.
const SOCKETS: &[(&str, Kind)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int),
    ("local_addr", Text),
    ("local_port", Int),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int),
    ("wait_us", Int),
    ("close_needed", Int),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int),
    ("id", Int),
];

fn time(us: u64) -> Option<String> {
    text(clock::format_wall(clock::wall(us)))
}

fn addr_cells(addr: Option<std::net::SocketAddr>) -> [Option<String>; 2] {
    match addr {
        Some(a) => [text(a.ip().to_string()), int(a.port())],
        None => [text("unix"), int(0)],
    }
}

fn tls(on: bool) -> Option<String> {
    text(if on { "TLS" } else { "" })
}

pub fn clients(ctx: &Context) -> Table {
    let mut columns = SOCKETS.to_vec();
    columns.extend([("identity", Text), ("waiting_on", Text)]);
    let mut table = Table::new(&columns);
    for client in ctx.clients.all() {
        table.push(client_row(ctx, &client));
    }
    table
}

fn client_row(ctx: &Context, client: &Entry<ClientInfo>) -> Vec<Option<String>> {
    let waited = client.waited();
    let link = client.link();
    let [addr, port] = addr_cells(client.addr);
    let [local_addr, local_port] = addr_cells(client.local);
    let waiting_on = match client.state() {
        crate::stats::ClientState::Waiting => {
            let key = PoolKey {
                database: client.database.clone(),
                user: client.user.clone(),
            };
            let pool = ctx.pools.get(&key);
            pool.and_then(|p| p.waiting_on_for(&ClientId::new(client.identity.as_str())))
        }
        _ => None,
    };
    vec![
        text("C"),
        text(&client.user),
        text(&client.database),
        text("none"),
        text(client.state().name()),
        addr,
        port,
        local_addr,
        local_port,
        time(client.connect_us),
        time(client.request_us()),
        int(waited.as_secs()),
        int(waited.subsec_micros()),
        int(0),
        text(format!("c{}", client.id)),
        (link != 0).then(|| format!("s{link}")),
        int(0),
        tls(client.tls),
        text(&client.application_name),
        int(0),
        int(client.id),
        text(&client.identity),
        waiting_on,
    ]
}

pub fn servers(ctx: &Context) -> Table {
    let mut table = Table::new(SOCKETS);
    let snapshots: BTreeMap<(String, String), PoolSnapshot> = (ctx.pools.snapshot().into_iter())
        .map(|s| ((s.database.clone(), s.user.clone()), s))
        .collect();
    for server in ctx.pools.servers().all() {
        table.push(server_row(ctx, &server, &snapshots));
    }
    table
}

fn server_row(
    ctx: &Context,
    server: &Entry<ServerInfo>,
    pools: &BTreeMap<(String, String), PoolSnapshot>,
) -> Vec<Option<String>> {
    let link = server.link();
    let linked = (link != 0).then(|| ctx.clients.get(link)).flatten();
    let pool = pools.get(&(server.database.clone(), server.pool_user.clone()));
    let state = match server.state() {
        ServerState::Active => "active",
        ServerState::Tested => "tested",
        ServerState::Idle => {
            let needs_check = pool.is_some_and(|s| {
                !s.settings.check_query.is_empty()
                    && clock::since(server.request_us()) >= s.settings.check_delay
            });
            if needs_check {
                "used"
            } else {
                "idle"
            }
        }
    };
    let close_needed = ctx.pools.is_paused(&server.database);
    let [local_addr, local_port] = addr_cells(server.local);
    vec![
        text("S"),
        text(&server.user),
        text(&server.database),
        text("none"),
        text(state),
        text(&server.addr),
        int(server.port),
        local_addr,
        local_port,
        time(server.connect_us),
        time(server.request_us()),
        int(0),
        int(0),
        int(u8::from(close_needed)),
        text(format!("s{}", server.id)),
        (link != 0).then(|| format!("c{link}")),
        int(server.remote_pid),
        tls(server.tls),
        text_or_null(linked.as_ref().map_or("", |c| c.application_name.as_str()))
            .or_else(|| text("")),
        int(server.prepared()),
        int(server.id),
    ]
}
