//! The admin console's SHOW commands: PgBouncer's columns in PgBouncer's order (ours
//! after), through tokio-postgres' simple_query and through psql; what they say about a
//! live client and server, and about a waiting one. Who may use the console is in
//! tests/console_access.rs.

mod common;

use std::process::Command;

use common::console::{app_client, ask, console, console_config, pgbouncer_columns, setup, SHOWS};
use common::{pg_bin, start_proxy, PgServer, Proxy};

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
