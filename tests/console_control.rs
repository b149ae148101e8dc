//! The admin console's commands that change things, end to end against Postgres: PAUSE
//! under pgbench (zero errors, no server open while paused, queries waiting rather than
//! failing even past query_wait_timeout), RESUME, DISABLE/ENABLE, RECONNECT, KILL,
//! KILL_CLIENT, RELOAD and SHUTDOWN.

mod common;

use std::time::{Duration, Instant};

use common::console::{ask, console, console_config, refused};
use common::pgbench::{output_text, pgbench_command};
use common::{describe, start_proxy, PgServer, Proxy};
use pgwarden::pool::PoolKey;
use tokio_postgres::Client;

async fn setup(extra: &str) -> (PgServer, Proxy) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&console_config(&pg, extra)).await;
    (pg, proxy)
}

async fn app(proxy: &Proxy) -> Client {
    proxy.connect("app", "app_pw", "appdb").await
}

async fn backend_pid(client: &Client) -> i32 {
    let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
    row.unwrap_or_else(|e| panic!("{}", describe(&e))).get(0)
}

/// Whether a backend with `pid` is still in pg_stat_activity.
async fn alive(pg: &PgServer, pid: i32) -> bool {
    let admin = pg.admin().await;
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1";
    let n: i64 = admin.query_one(sql, &[&pid]).await.unwrap().get(0);
    n == 1
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn xacts(proxy: &Proxy) -> u64 {
    let key = PoolKey {
        database: "appdb".into(),
        user: "app".into(),
    };
    (proxy.ctx.pools.get(&key)).map_or(0, |p| p.snapshot().totals.xact_count)
}

/// pgbench -c 4 over pool_size = 2, query_wait_timeout = 1 s: PAUSE returns once every
/// server is closed, none is open while paused (2 s, longer than query_wait_timeout),
/// clients wait rather than fail, and after RESUME the run ends with zero errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_under_pgbench_closes_every_server_and_loses_no_transaction() {
    let (pg, proxy) = setup("").await;
    let toml = console_config(&pg, "")
        .replace("pool_size = 4", "pool_size = 2")
        .replace("query_wait_timeout = \"5s\"", "query_wait_timeout = \"1s\"");
    drop(proxy);
    let proxy = start_proxy(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let script = script.to_str().unwrap().to_owned();
    let port = proxy.addr.port();
    let args = ["-n", "-c", "4", "-j", "2", "-T", "6", "-f", &script];
    let mut cmd = pgbench_command(port, "app", "app_pw", "appdb", &args);
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("run pgbench"));

    let admin = console(&proxy, "admin", "admin_pw").await;
    eventually("pgbench to be running", async || xacts(&proxy) > 100).await;
    let started = Instant::now();
    ask(&admin, "PAUSE appdb").await;
    let pause_took = started.elapsed();
    // PAUSE returned: every server was released and closed.
    pg.wait_backends("app", 0).await;
    let during = xacts(&proxy);
    let pools = ask(&admin, "SHOW POOLS").await;
    let row = pools.row_where("database", "appdb").unwrap();
    assert_eq!(pools.cell(row, "paused").as_deref(), Some("1"));
    assert_eq!(pools.cell(row, "sv_open").as_deref(), Some("0"));
    eventually("pgbench's clients to queue", async || {
        let pools = ask(&admin, "SHOW POOLS").await;
        let row = pools.row_where("database", "appdb").unwrap();
        pools.cell(row, "cl_waiting").as_deref() == Some("4")
    })
    .await;
    // Paused for 2 s, twice query_wait_timeout: nobody fails, nothing opens.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            pg.backend_count("app").await,
            0,
            "a server opened while paused"
        );
    }
    assert_eq!(xacts(&proxy), during, "a transaction ran while paused");
    ask(&admin, "RESUME appdb").await;
    let out = run.await.unwrap();
    let output = output_text(&out);
    assert!(out.status.success(), "pgbench failed:\n{output}");
    assert!(
        output.contains("number of failed transactions: 0 "),
        "pgbench reports failures:\n{output}"
    );
    assert!(xacts(&proxy) > during, "transactions after RESUME");
    assert!(
        pause_took < Duration::from_secs(5),
        "PAUSE took {pause_took:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_logins_until_enable() {
    let (_pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let connected = app(&proxy).await;
    ask(&admin, "DISABLE appdb").await;
    let databases = ask(&admin, "SHOW DATABASES").await;
    let row = databases.row_where("name", "appdb").unwrap();
    assert_eq!(databases.cell(row, "disabled").as_deref(), Some("1"));
    let Err(err) = proxy.try_connect("app", "app_pw", "appdb").await else {
        panic!("a login to a disabled database");
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "55000");
    assert!(db
        .message()
        .contains("\"appdb\" is not currently accepting connections"));
    assert!(db.message().contains("DISABLE"), "{}", db.message());
    // Who is in stays in.
    connected.simple_query("SELECT 1").await.unwrap();
    ask(&admin, "ENABLE appdb").await;
    app(&proxy).await.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_closes_servers_as_they_are_released() {
    let (pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    // The busy client holds its server first, so the other one gets a second.
    let busy = app(&proxy).await;
    busy.simple_query("BEGIN").await.unwrap();
    let old_busy = backend_pid(&busy).await;
    let idle_client = app(&proxy).await;
    let old_idle = backend_pid(&idle_client).await;
    assert_ne!(old_idle, old_busy);
    ask(&admin, "RECONNECT appdb").await;
    // The idle server went at once; the one in a transaction serves it to its end.
    eventually("the idle server to close", async || {
        !alive(&pg, old_idle).await
    })
    .await;
    assert_eq!(backend_pid(&busy).await, old_busy);
    busy.simple_query("COMMIT").await.unwrap();
    eventually("the released server to close", async || {
        !alive(&pg, old_busy).await
    })
    .await;
    let fresh = backend_pid(&busy).await;
    assert!(fresh != old_busy && fresh != old_idle);
    assert_eq!(pg.backend_count("app").await, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_a_databases_clients_and_servers_and_resume_lets_clients_in() {
    let (pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let busy = app(&proxy).await;
    busy.simple_query("BEGIN").await.unwrap();
    busy.simple_query("SELECT 1").await.unwrap();
    let idle = app(&proxy).await;
    idle.simple_query("SELECT 1").await.unwrap();
    // One server in a transaction, one idle.
    assert_eq!(pg.backend_count("app").await, 2);
    ask(&admin, "KILL appdb").await;
    for client in [&idle, &busy] {
        let err = client.simple_query("SELECT 1").await.err();
        let err = err.expect("a killed client's query fails");
        let text = describe(&err);
        assert!(err.is_closed() || text.contains("57P01"), "{text}");
    }
    pg.wait_backends("app", 0).await;
    assert!(proxy.ctx.clients.all().iter().all(|c| c.console));
    // Paused, as PgBouncer's KILL leaves it: a newcomer waits for RESUME.
    let newcomer = app(&proxy).await;
    let query =
        tokio::spawn(async move { newcomer.simple_query("SELECT 1").await.map(|_| newcomer) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran while killed");
    ask(&admin, "RESUME appdb").await;
    let newcomer = query.await.unwrap().expect("served after RESUME");
    drop(newcomer);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_drops_one_client_and_its_server() {
    let (pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let victim = app(&proxy).await;
    victim.simple_query("BEGIN").await.unwrap();
    let pid = backend_pid(&victim).await;
    let bystander = app(&proxy).await;
    let clients = ask(&admin, "SHOW CLIENTS").await;
    let row = (clients.rows.iter())
        .find(|r| clients.cell(r, "state").as_deref() == Some("active"))
        .expect("the client in a transaction");
    let id = clients.cell(row, "id").unwrap();
    ask(&admin, &format!("KILL_CLIENT {id}")).await;
    let Err(err) = victim.simple_query("SELECT 1").await else {
        panic!("the killed client goes on");
    };
    let text = describe(&err);
    assert!(err.is_closed() || text.contains("57P01"), "{text}");
    eventually("its backend to go", async || !alive(&pg, pid).await).await;
    bystander.simple_query("SELECT 1").await.unwrap();
    let (code, message) = refused(&admin, &format!("KILL_CLIENT {id}")).await;
    assert_eq!(code, "42704", "{message}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_answers_and_shutdown_stops_pgwarden() {
    let (_pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let messages = admin.simple_query("RELOAD").await.unwrap();
    assert!(messages
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_))));
    let (code, message) = refused(&admin, "SET query_wait_timeout = 'soon'").await;
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("query_wait_timeout"), "{message}");
    assert!(!proxy.shutdown.is_cancelled());
    admin.simple_query("SHUTDOWN").await.unwrap();
    assert!(proxy.shutdown.is_cancelled());
    drop(admin);
    proxy.stop().await;
}

/// A server closed for RECONNECT as it comes back hands its slot to the next waiter at
/// once: the waiter gets a fresh server, not a query_wait_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_hands_the_closed_servers_slot_to_a_waiter() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let toml = console_config(&pg, "").replace("pool_size = 4", "pool_size = 1");
    let proxy = start_proxy(&toml).await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let holder = app(&proxy).await;
    holder.simple_query("BEGIN").await.unwrap();
    let old = backend_pid(&holder).await;
    let waiter = app(&proxy).await;
    let waiting = tokio::spawn(async move {
        let pid = backend_pid(&waiter).await;
        (pid, Instant::now())
    });
    eventually("the waiter to queue", async || {
        let pools = ask(&admin, "SHOW POOLS").await;
        let row = pools.row_where("database", "appdb").unwrap();
        pools.cell(row, "cl_waiting").as_deref() == Some("1")
    })
    .await;
    ask(&admin, "RECONNECT appdb").await;
    holder.simple_query("COMMIT").await.unwrap();
    let released = Instant::now();
    let (fresh, served) = waiting.await.unwrap();
    assert_ne!(fresh, old, "the old server was reused after RECONNECT");
    let took = served.duration_since(released);
    assert!(
        took < Duration::from_secs(2),
        "the waiter was served after {took:?}"
    );
    eventually("the old backend to go", async || !alive(&pg, old).await).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_puts_a_setting_in_force_and_show_config_shows_it() {
    let (_pg, proxy) = setup("").await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let shown = async |key: &str| -> Option<String> {
        let rows = admin.simple_query("SHOW CONFIG").await.unwrap();
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(key) => {
                r.get(1).map(str::to_owned)
            }
            _ => None,
        })
    };
    let before = shown("query_wait_timeout").await;
    admin
        .simple_query("SET query_wait_timeout = '7s'")
        .await
        .unwrap();
    let after = shown("query_wait_timeout").await;
    assert_ne!(before, after);
    assert_eq!(after.as_deref(), Some("7s"), "before: {before:?}");
    proxy.stop().await;
}
