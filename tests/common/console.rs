//! The admin console from a test: a configuration with admin and stats users, connecting
//! to the console database, and reading its answers (column names, rows, SQLSTATEs).

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{describe, start_proxy, try_connect_tcp, PgServer, Proxy};

/// A transaction-pooling configuration (SCRAM) with a route `appdb` to `pg` on which
/// pgwarden logs in as app with the route's password, `admin` (admin_pw) in admin_users,
/// `stats` (stats_pw) in stats_users, and `app` (app_pw) a plain user; `extra` is added as
/// top-level lines.
pub fn console_config(pg: &PgServer, extra: &str) -> String {
    format!(
        r#"pool_mode = "transaction"
pool_size = 4
query_wait_timeout = "5s"
shutdown_timeout = "2s"
admin_users = "admin"
stats_users = "stats"
{extra}
[databases.appdb]
host = "127.0.0.1"
port = {port}
user = "app"
password = "app_pw"
[users.admin]
password = "admin_pw"
[users.stats]
password = "stats_pw"
[users.app]
password = "app_pw"
"#,
        port = pg.port
    )
}

/// A console session as `user`.
pub async fn console(proxy: &Proxy, user: &str, password: &str) -> Client {
    let port = proxy.addr.port();
    let client = try_connect_tcp("127.0.0.1", port, user, password, "pgwarden").await;
    client.unwrap_or_else(|e| panic!("console login as {user}: {}", describe(&e)))
}

/// One SHOW (or other) command's column names and rows.
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Answer {
    /// The cell of `column` in `row`.
    pub fn cell(&self, row: &[Option<String>], column: &str) -> Option<String> {
        let at = self.columns.iter().position(|c| c == column);
        let at = at.unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns));
        row[at].clone()
    }

    /// The first row whose `column` is `value`.
    pub fn row_where(&self, column: &str, value: &str) -> Option<&Vec<Option<String>>> {
        (self.rows.iter()).find(|row| self.cell(row, column).as_deref() == Some(value))
    }

    /// Every cell, for searching the whole answer.
    pub fn text(&self) -> String {
        let cells = self.rows.iter().flatten().flatten();
        cells.cloned().collect::<Vec<_>>().join("|")
    }
}

pub async fn ask(client: &Client, sql: &str) -> Answer {
    let messages = client.simple_query(sql).await;
    let messages = messages.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let mut answer = Answer {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                answer.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => answer.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => {}
        }
    }
    answer
}

/// The SQLSTATE and message of a command that must fail.
pub async fn refused(client: &Client, sql: &str) -> (String, String) {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => panic!("{sql}: not a server error: {}", describe(&e)),
        },
    }
}

pub const SOCKETS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// PgBouncer's columns (1.23: its documentation and its source), in its order.
pub fn pgbouncer_columns(show: &str) -> Vec<&'static str> {
    let counters = [
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
    let renamed = |c: &'static str, prefix: &str, recv: &'static str, sent: &'static str| {
        let name = match c {
            "received" => recv.to_owned(),
            "sent" => sent.to_owned(),
            c => format!("{prefix}{c}"),
        };
        &*Box::leak(name.into_boxed_str())
    };
    match show {
        "POOLS" => vec![
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
        ],
        "STATS" => {
            let mut c = vec!["database"];
            c.extend(counters.map(|n| renamed(n, "total_", "total_received", "total_sent")));
            c.extend(counters.map(|n| renamed(n, "avg_", "avg_recv", "avg_sent")));
            c
        }
        "STATS_TOTALS" => {
            let mut c = vec!["database"];
            c.extend(counters.map(|n| renamed(n, "", "bytes_received", "bytes_sent")));
            c
        }
        "STATS_AVERAGES" => {
            let mut c = vec!["database"];
            c.extend(counters.map(|n| match n {
                "client_parse_count" | "server_parse_count" | "bind_count" => {
                    renamed(n, "avg_", "", "")
                }
                n => renamed(n, "", "bytes_received", "bytes_sent"),
            }));
            c
        }
        "CLIENTS" | "SERVERS" => SOCKETS.to_vec(),
        "DATABASES" => vec![
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ],
        "USERS" => vec![
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
        "CONFIG" => vec!["key", "value", "default", "changeable"],
        "LISTS" => vec!["list", "items"],
        "VERSION" => vec!["version"],
        // Ours.
        "LIMITS" => vec!["cap", "scope", "value", "current", "refusals"],
        "ALERTS" => vec![
            "rule", "database", "user", "cap", "state", "since", "message",
        ],
        other => panic!("no columns for {other}"),
    }
}

pub const SHOWS: [&str; 13] = [
    "POOLS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "CLIENTS",
    "SERVERS",
    "DATABASES",
    "USERS",
    "CONFIG",
    "LISTS",
    "VERSION",
    "LIMITS",
    "ALERTS",
];

pub async fn setup() -> (PgServer, Proxy) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&console_config(&pg, "")).await;
    (pg, proxy)
}

/// An application client as app, with an application_name.
pub async fn app_client(proxy: &Proxy, application: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("app")
        .password("app_pw")
        .dbname("appdb")
        .application_name(application);
    let (client, connection) = config.connect(NoTls).await.expect("app login");
    tokio::spawn(connection);
    client
}
