//! The admin console's SHOW commands: PgBouncer's columns in PgBouncer's order (ours
//! after), through tokio-postgres' simple_query and through psql; what they say about a
//! live client and server; stats users read but change nothing (42501); the extended
//! protocol and unknown commands are refused with their SQLSTATEs; no answer ever holds a
//! password, a SCRAM secret or a hash.

mod common;

use std::process::Command;

use common::console::{ask, console, console_config, refused};
use common::{describe, pg_bin, start_proxy, PgServer, Proxy};
use tokio_postgres::{Client, NoTls};

const SOCKETS: &[&str] = &[
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
fn pgbouncer_columns(show: &str) -> Vec<&'static str> {
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

const SHOWS: [&str; 13] = [
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

async fn setup() -> (PgServer, Proxy) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&console_config(&pg, "")).await;
    (pg, proxy)
}

/// An application client as app, with an application_name.
async fn app_client(proxy: &Proxy, application: &str) -> Client {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncers_columns_in_pgbouncers_order() {
    let (_pg, proxy) = setup().await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let app = app_client(&proxy, "billing").await;
    app.simple_query("SELECT 1").await.unwrap();
    for show in SHOWS {
        let answer = ask(&admin, &format!("SHOW {show}")).await;
        let expected = pgbouncer_columns(show);
        assert!(
            answer.columns.len() >= expected.len()
                && answer.columns[..expected.len()] == expected[..],
            "SHOW {show} columns:\n  got      {:?}\n  expected {expected:?}",
            answer.columns
        );
    }
    assert!(
        ask(&admin, "SHOW ALERTS").await.rows.is_empty(),
        "no alert rules wired"
    );
    let version = ask(&admin, "show version;").await;
    let version = version.rows[0][0].clone().unwrap();
    assert!(
        version.starts_with("pgwarden ") && version.contains("PgBouncer 1.23.0"),
        "{version}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_describe_a_live_client_and_its_server() {
    let (pg, proxy) = setup().await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let app = app_client(&proxy, "billing").await;
    app.simple_query("BEGIN").await.unwrap();
    let row = app.query_one("SELECT pg_backend_pid()", &[]).await.unwrap();
    let pid: i32 = row.get(0);

    let pools = ask(&admin, "SHOW POOLS").await;
    let pool = pools
        .row_where("database", "appdb")
        .expect("a row for appdb");
    let cell = |c: &str| pools.cell(pool, c);
    assert_eq!(cell("user").as_deref(), Some("app"));
    assert_eq!(
        (cell("cl_active"), cell("cl_waiting")),
        (Some("1".into()), Some("0".into()))
    );
    assert_eq!(
        (cell("sv_active"), cell("sv_idle")),
        (Some("1".into()), Some("0".into()))
    );
    assert_eq!(cell("pool_mode").as_deref(), Some("transaction"));
    assert_eq!(cell("pool_size").as_deref(), Some("4"));

    let clients = ask(&admin, "SHOW CLIENTS").await;
    let client = clients
        .row_where("application_name", "billing")
        .expect("the app client");
    let client_id = clients.cell(client, "id").unwrap();
    assert_eq!(clients.cell(client, "state").as_deref(), Some("active"));
    assert_eq!(clients.cell(client, "database").as_deref(), Some("appdb"));
    assert_eq!(clients.cell(client, "addr").as_deref(), Some("127.0.0.1"));
    assert!(
        clients.row_where("database", "pgwarden").is_some(),
        "the console lists itself"
    );

    let servers = ask(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.rows.len(), 1);
    let server = &servers.rows[0];
    assert_eq!(servers.cell(server, "remote_pid"), Some(pid.to_string()));
    assert_eq!(servers.cell(server, "state").as_deref(), Some("active"));
    assert_eq!(servers.cell(server, "link"), Some(format!("c{client_id}")));
    assert_eq!(
        servers.cell(server, "application_name").as_deref(),
        Some("billing")
    );
    assert_eq!(servers.cell(server, "user").as_deref(), Some("app"));
    let server_id = servers.cell(server, "id").unwrap();
    assert_eq!(clients.cell(client, "link"), Some(format!("s{server_id}")));

    app.simple_query("COMMIT").await.unwrap();
    // The client has its answer a moment before its server is back in the pool.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let servers = ask(&admin, "SHOW SERVERS").await;
        let clients = ask(&admin, "SHOW CLIENTS").await;
        let server = &servers.rows[0];
        let client = clients.row_where("id", &client_id).unwrap();
        let idle = servers.cell(server, "state").as_deref() == Some("idle")
            && servers.cell(server, "link").is_none()
            && clients.cell(client, "state").as_deref() == Some("idle");
        if idle {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server and client never idle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let stats = ask(&admin, "SHOW STATS").await;
    let appdb = stats.row_where("database", "appdb").unwrap();
    // BEGIN, the SELECT (extended: a Sync to prepare, one to execute) and COMMIT: four
    // queries, one transaction.
    assert_eq!(stats.cell(appdb, "total_query_count").as_deref(), Some("4"));
    assert_eq!(stats.cell(appdb, "total_xact_count").as_deref(), Some("1"));
    assert_eq!(
        stats.cell(appdb, "total_client_connect_count").as_deref(),
        Some("1")
    );

    let databases = ask(&admin, "SHOW DATABASES").await;
    let appdb = databases.row_where("name", "appdb").unwrap();
    let port = pg.port.to_string();
    assert_eq!(
        databases.cell(appdb, "port").as_deref(),
        Some(port.as_str())
    );
    assert_eq!(databases.cell(appdb, "force_user").as_deref(), Some("app"));
    assert_eq!(
        databases.cell(appdb, "current_connections").as_deref(),
        Some("1")
    );
    assert_eq!(
        databases
            .cell(appdb, "current_client_connections")
            .as_deref(),
        Some("1")
    );

    let users = ask(&admin, "SHOW USERS").await;
    let names: Vec<_> = users.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(names, ["admin", "app", "stats"]);

    let config = ask(&admin, "SHOW CONFIG").await;
    let pool_size = config.row_where("key", "pool_size").unwrap();
    assert_eq!(config.cell(pool_size, "value").as_deref(), Some("4"));
    assert_eq!(config.cell(pool_size, "default").as_deref(), Some("20"));
    assert_eq!(config.cell(pool_size, "changeable").as_deref(), Some("yes"));
    let listen = config.row_where("key", "listen").unwrap();
    assert_eq!(config.cell(listen, "changeable").as_deref(), Some("no"));

    let lists = ask(&admin, "SHOW LISTS").await;
    let items = |list: &str| lists.cell(lists.row_where("list", list).unwrap(), "items");
    assert_eq!(items("pools").as_deref(), Some("1"));
    assert_eq!(items("used_clients").as_deref(), Some("2"));
    assert_eq!(items("used_servers").as_deref(), Some("1"));

    let limits = ask(&admin, "SHOW LIMITS").await;
    let pool_cap = (limits.rows.iter())
        .find(|r| r[0].as_deref() == Some("pool_size") && r[1].as_deref() == Some("pool appdb/app"))
        .expect("pool_size of appdb/app");
    assert_eq!(
        (pool_cap[2].as_deref(), pool_cap[3].as_deref()),
        (Some("4"), Some("1"))
    );
    let total = limits.row_where("cap", "max_client_conn").unwrap();
    assert_eq!(limits.cell(total, "current").as_deref(), Some("1"));
    proxy.stop().await;
}

/// psql -X -A (unaligned, `|`-separated, the header line first), off the runtime's threads.
async fn psql(proxy: &Proxy, user: &str, password: &str, sql: &str) -> std::process::Output {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .args([
            "-X",
            "-A",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.addr.port().to_string(),
        ])
        .args(["-U", user, "-d", "pgwarden", "-c", sql]);
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("run psql"));
    run.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reads_every_show_and_runs_commands() {
    let (_pg, proxy) = setup().await;
    let app = app_client(&proxy, "billing").await;
    app.simple_query("SELECT 1").await.unwrap();
    for show in SHOWS {
        let out = psql(&proxy, "admin", "admin_pw", &format!("SHOW {show};")).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "psql SHOW {show}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = stdout.lines().next().unwrap_or_default();
        let expected = pgbouncer_columns(show).join("|");
        assert!(
            header.starts_with(&expected),
            "SHOW {show} header {header:?}"
        );
        assert!(stdout.trim_end().ends_with(" rows)") || stdout.trim_end().ends_with(" row)"));
    }
    let commands = "PAUSE appdb; RESUME appdb; DISABLE appdb; ENABLE appdb; RECONNECT appdb; \
                    KILL appdb; RESUME; PAUSE; RESUME; RELOAD";
    let out = psql(&proxy, "admin", "admin_pw", commands).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let tags: Vec<&str> = stdout.lines().collect();
    let expected = [
        "PAUSE",
        "RESUME",
        "DISABLE",
        "ENABLE",
        "RECONNECT",
        "KILL",
        "RESUME",
        "PAUSE",
        "RESUME",
        "RELOAD",
    ];
    assert_eq!(tags, expected);
    let out = psql(&proxy, "admin", "admin_pw", "KILL_CLIENT 424242").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no client with id 424242"), "{stderr}");
    let out = psql(&proxy, "admin", "admin_pw", "SET listen = '127.0.0.1:1'").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen cannot be changed while running"),
        "{stderr}"
    );
    let out = psql(&proxy, "stats", "stats_pw", "RELOAD").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("permission denied"),
        "{stderr}"
    );
    let out = psql(&proxy, "admin", "admin_pw", "SHUTDOWN").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proxy.shutdown.is_cancelled());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_read_and_only_admin_users_change_anything() {
    let (_pg, proxy) = setup().await;
    let stats = console(&proxy, "stats", "stats_pw").await;
    for show in SHOWS {
        ask(&stats, &format!("SHOW {show}")).await;
    }
    let changes = [
        "PAUSE",
        "PAUSE appdb",
        "RESUME",
        "DISABLE appdb",
        "ENABLE appdb",
        "RECONNECT",
        "KILL appdb",
        "KILL_CLIENT 1",
        "RELOAD",
        "SET pool_size = 5",
        "SHUTDOWN",
    ];
    for sql in changes {
        let (code, message) = refused(&stats, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.contains("admin_users") && message.contains("\"stats\""),
            "{message}"
        );
    }
    assert_eq!(proxy.ctx.pools.paused(), Default::default());
    assert!(!proxy.ctx.pools.is_disabled("appdb") && !proxy.shutdown.is_cancelled());
    // Nobody else gets in, right password or not.
    let port = proxy.addr.port();
    let err = common::try_connect_tcp("127.0.0.1", port, "app", "app_pw", "pgbouncer").await;
    let Err(err) = err else {
        panic!("app may not use the console")
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("admin_users"), "{}", db.message());
    // The other name works for admins too.
    let admin = common::try_connect_tcp("127.0.0.1", port, "admin", "admin_pw", "pgbouncer").await;
    ask(&admin.unwrap(), "SHOW VERSION").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_holds_a_password_a_scram_secret_or_a_hash() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let salt = [7u8; 16];
    let v = pgwarden::auth::scram::verifier_from_password("scram_pw", &salt, 4096);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (stored, server) = (b64.encode(v.stored_key), b64.encode(v.server_key));
    let verifier = format!("SCRAM-SHA-256$4096:{}${stored}:{server}", b64.encode(salt));
    let toml =
        console_config(&pg, "") + &format!("[users.scram_user]\npassword = \"{verifier}\"\n");
    let proxy = start_proxy(&toml).await;
    let app = app_client(&proxy, "billing").await;
    app.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy, "admin", "admin_pw").await;
    let mut everything = String::new();
    for show in SHOWS {
        everything.push_str(&ask(&admin, &format!("SHOW {show}")).await.text());
    }
    assert!(everything.contains("scram_user") && everything.contains("appdb"));
    for secret in [
        "admin_pw",
        "stats_pw",
        "app_pw",
        "SCRAM-SHA-256",
        &stored,
        &server,
    ] {
        assert!(!everything.contains(secret), "an answer shows {secret}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_and_unknown_commands_are_refused_clearly() {
    let (_pg, proxy) = setup().await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let Err(err) = admin.query("SHOW POOLS", &[]).await else {
        panic!("the extended protocol must be refused")
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("simple query protocol"),
        "{}",
        db.message()
    );
    ask(&admin, "SHOW VERSION").await; // the session goes on
    let cases = [
        ("SELECT 1", "42601", "unknown command \"SELECT\""),
        ("SHOW FDS", "42601", "SHOW FDS: unknown"),
        ("PAUSE a b", "42601", "unexpected \"b\""),
        ("KILL_CLIENT 999999", "42704", "no client with id 999999"),
        ("PAUSE nosuchdb", "3D000", "no database \"nosuchdb\""),
        ("KILL pgwarden", "3D000", "admin console"),
        ("RESUME", "55000", "nothing is paused"),
        (
            "SET nosuch = 1",
            "42704",
            "unrecognized configuration parameter \"nosuch\"",
        ),
        (
            "SET listen = '127.0.0.1:1'",
            "55P02",
            "listen cannot be changed while running",
        ),
        ("SET pool_size = 'many'", "22023", "pool_size"),
    ];
    for (sql, code, text) in cases {
        let (got, message) = refused(&admin, sql).await;
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
    }
    // An empty query is answered as Postgres does.
    assert!(admin.simple_query(";").await.is_ok());
    proxy.stop().await;
}

/// A client waiting for the only server: SHOW CLIENTS names the cap it waits on, SHOW
/// POOLS counts it and its wait, and the wait lands in the percentiles once it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_shows_the_cap_it_waits_on() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let toml = console_config(&pg, "").replace("pool_size = 4", "pool_size = 1");
    let proxy = start_proxy(&toml).await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let holder = app_client(&proxy, "holder").await;
    holder.simple_query("BEGIN").await.unwrap();
    let waiter = app_client(&proxy, "waiter").await;
    let query = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| waiter) });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let clients = loop {
        let clients = ask(&admin, "SHOW CLIENTS").await;
        let row = clients.row_where("application_name", "waiter").cloned();
        if row.is_some_and(|r| clients.cell(&r, "state").as_deref() == Some("waiting")) {
            break clients;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let row = clients.row_where("application_name", "waiter").unwrap();
    assert_eq!(
        clients.cell(row, "waiting_on").as_deref(),
        Some("pool_size = 1")
    );
    let identity = clients.cell(row, "identity");
    assert_eq!(identity.as_deref(), Some("application \"waiter\""));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let pools = ask(&admin, "SHOW POOLS").await;
    let pool = pools.row_where("database", "appdb").unwrap();
    assert_eq!(pools.cell(pool, "cl_waiting").as_deref(), Some("1"));
    assert_eq!(
        pools.cell(pool, "waiting_on").as_deref(),
        Some("pool_size = 1")
    );
    let waited_us: u64 = pools.cell(pool, "maxwait_us").unwrap().parse().unwrap();
    let waited_s: u64 = pools.cell(pool, "maxwait").unwrap().parse().unwrap();
    assert!(
        waited_s > 0 || waited_us >= 50_000,
        "maxwait {waited_s} s {waited_us} us"
    );
    holder.simple_query("COMMIT").await.unwrap();
    let waiter = query
        .await
        .unwrap()
        .expect("served once the server is back");
    let pools = ask(&admin, "SHOW POOLS").await;
    let pool = pools.row_where("database", "appdb").unwrap();
    let p99: u64 = pools.cell(pool, "wait_p99_us").unwrap().parse().unwrap();
    assert!(
        p99 >= 50_000,
        "p99 {p99} us after a wait of more than 50 ms"
    );
    assert_eq!(pools.cell(pool, "waiting_on"), None);
    drop(waiter);
    proxy.stop().await;
}
