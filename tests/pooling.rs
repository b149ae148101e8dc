//! Session pooling through pgwarden: a pool per (database, user) bounded by `pool_size`,
//! waiting clients and `query_wait_timeout`, reuse after `server_reset_query`, per-client
//! startup parameters, `min_pool_size`, `server_idle_timeout`, `server_lifetime`,
//! `server_connect_timeout`, and clients leaving mid-transaction, mid-COPY or mid-query.
//!
//! A session client holds a server from login or from its first query (PgBouncer's way)
//! until it leaves; these tests do not depend on which: a client counts as holding a server
//! once it has run a query, and a refusal may come at login or at that first query.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::clients::{pool_config, text};
use common::{describe, start_proxy, PgServer, Proxy};
use futures_util::SinkExt;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a client that must keep waiting is watched before we call it waiting.
const STILL_WAITING: Duration = Duration::from_millis(300);

/// A proxy configuration routing every database to `pg` with trust auth for clients and
/// app's password for the server. `settings` are top-level `key = value` lines; they replace
/// the defaults given here (a 5 s query_wait_timeout, a 2 s shutdown_timeout).
fn config(pg: &PgServer, settings: &[(&str, &str)]) -> String {
    config_to("127.0.0.1", pg.port, settings)
}

fn config_to(host: &str, port: u16, settings: &[(&str, &str)]) -> String {
    // Session pooling is what these tests are about; transaction mode has tests/transaction.rs.
    let head = "auth_type = \"trust\"\npool_mode = \"session\"\n";
    let defaults = [
        ("query_wait_timeout", "\"5s\""),
        ("shutdown_timeout", "\"2s\""),
    ];
    pool_config(head, &defaults, settings, host, port)
}

/// A client of the proxy that has run a query (so it holds a server), with the connection
/// task kept so that a test can end the connection abruptly (no Terminate) by aborting it.
struct Conn {
    client: Client,
    task: JoinHandle<()>,
    /// The backend serving it: `pg_backend_pid()` from its first query.
    pid: i32,
}

impl Conn {
    /// Leaves politely: drops the client, so tokio-postgres sends Terminate, and waits for
    /// the connection task to finish.
    async fn close(self) {
        drop(self.client);
        let done = tokio::time::timeout(PROMPTLY, self.task).await;
        done.expect("connection task did not finish after Terminate")
            .unwrap();
    }

    /// Leaves abruptly: the socket closes without a Terminate message, as when an
    /// application crashes.
    async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.client);
    }
}

type Attempt = JoinHandle<Result<Conn, tokio_postgres::Error>>;

/// Connects as app to `postgres` through the proxy, with `setup` applied to the config, and
/// runs `SELECT pg_backend_pid()`.
async fn try_open_with(
    port: u16,
    setup: impl FnOnce(&mut tokio_postgres::Config),
) -> Result<Conn, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password("app_pw")
        .dbname("postgres");
    setup(&mut config);
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    match client.query_one("SELECT pg_backend_pid()", &[]).await {
        Ok(row) => Ok(Conn {
            pid: row.get(0),
            client,
            task,
        }),
        Err(err) => {
            task.abort();
            Err(err)
        }
    }
}

async fn open_with(proxy: &Proxy, setup: impl FnOnce(&mut tokio_postgres::Config)) -> Conn {
    let conn = try_open_with(proxy.addr.port(), setup).await;
    conn.unwrap_or_else(|e| panic!("connect through pgwarden and query: {}", describe(&e)))
}

async fn open(proxy: &Proxy) -> Conn {
    open_with(proxy, |_| {}).await
}

async fn try_open(proxy: &Proxy) -> Result<Conn, tokio_postgres::Error> {
    try_open_with(proxy.addr.port(), |_| {}).await
}

/// [`try_open`] in its own task, so the test can watch whether it is still waiting.
fn spawn_open(proxy: &Proxy) -> Attempt {
    let port = proxy.addr.port();
    tokio::spawn(async move { try_open_with(port, |_| {}).await })
}

/// Asserts that a client is still waiting for a server.
async fn assert_waiting(attempt: &mut Attempt, what: &str) {
    if tokio::time::timeout(STILL_WAITING, attempt).await.is_ok() {
        panic!("{what} got an answer while the pool was full; it should be waiting");
    }
}

/// Waits for a waiting client to get its server.
async fn served(attempt: Attempt, what: &str) -> Conn {
    let result = tokio::time::timeout(PROMPTLY, attempt).await;
    let result = result.unwrap_or_else(|_| panic!("{what} still waiting after {PROMPTLY:?}"));
    result
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {}", describe(&e)))
}

/// The SQLSTATE and message of a refusal (at login or at the first query).
fn refusal<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> (String, String) {
    let err = match result {
        Ok(_) => panic!("{what}: got a server, expected a refusal"),
        Err(err) => err,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: expected an ErrorResponse, got {}", describe(&err)));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Polls pg_stat_activity until a backend of app is running a statement containing
/// `needle`, so a test knows the statement reached the server.
async fn wait_until_running(admin: &Client, needle: &str) {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
               AND state = 'active' AND strpos(query, $1) > 0";
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let count: i64 = admin.query_one(sql, &[&needle]).await.unwrap().get(0);
        if count > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no backend of app ran {needle:?} within {PROMPTLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_pool_size_waits_then_reuses_the_freed_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "2")])).await;
    let first = open(&proxy).await;
    let second = open(&proxy).await;
    assert_ne!(first.pid, second.pid);
    assert_eq!(pg.backend_count("app").await, 2);

    let mut third = spawn_open(&proxy);
    assert_waiting(&mut third, "a third client").await;
    assert_eq!(pg.backend_count("app").await, 2);

    let first_pid = first.pid;
    first.close().await;
    let third = served(third, "the third client").await;
    assert_eq!(third.pid, first_pid, "the freed server is reused");
    assert_eq!(
        text(&second.client, "pg_backend_pid()").await,
        Some(second.pid.to_string())
    );
    assert_eq!(pg.backend_count("app").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_get_the_server_one_at_a_time() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let holder = open(&proxy).await;
    let server_pid = holder.pid;

    let mut a = spawn_open(&proxy);
    assert_waiting(&mut a, "waiter A").await;
    let mut b = spawn_open(&proxy);
    assert_waiting(&mut b, "waiter B").await;
    assert_waiting(&mut a, "waiter A").await;

    holder.close().await;
    // One waiter gets the server; the other keeps waiting until that one leaves.
    let (first, mut other) = tokio::select! {
        r = &mut a => (r, b),
        r = &mut b => (r, a),
        _ = tokio::time::sleep(PROMPTLY) => panic!("no waiter got the freed server"),
    };
    let first = first
        .unwrap()
        .unwrap_or_else(|e| panic!("first waiter: {}", describe(&e)));
    assert_eq!(first.pid, server_pid);
    assert_waiting(&mut other, "the second waiter").await;
    first.close().await;
    let second = served(other, "the second waiter").await;
    assert_eq!(second.pid, server_pid);
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_refuses_with_53300_naming_the_caps() {
    let pg = PgServer::start();
    let settings = [("pool_size", "1"), ("query_wait_timeout", "\"1s\"")];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let holder = open(&proxy).await;

    let started = Instant::now();
    let result = try_open(&proxy).await;
    let waited = started.elapsed();
    let (code, message) = refusal(result, "a client of a full pool");
    assert_eq!(code, "53300", "{message}");
    assert!(
        message.contains("query_wait_timeout") && message.contains("pool_size = 1"),
        "the message should name query_wait_timeout and pool_size = 1: {message}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "refused after {waited:?}, expected about 1s"
    );

    // The pool still works: the holder's server goes to the next client.
    let holder_pid = holder.pid;
    holder.close().await;
    let next = open(&proxy).await;
    assert_eq!(next.pid, holder_pid);
    assert_eq!(pg.backend_count("app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_server_carries_nothing_of_the_previous_session() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let first = open(&proxy).await;
    first
        .client
        .batch_execute(
            "SET work_mem = '7MB'; CREATE TEMP TABLE t(x int); \
             PREPARE p AS SELECT 1; LISTEN chan",
        )
        .await
        .unwrap_or_else(|e| panic!("session setup: {}", describe(&e)));
    let work_mem = text(&first.client, "current_setting('work_mem')").await;
    assert_eq!(work_mem.as_deref(), Some("7MB"));
    let first_pid = first.pid;
    first.close().await;

    let second = open(&proxy).await;
    assert_eq!(second.pid, first_pid, "pool_size 1: the same server");
    let c = &second.client;
    let work_mem = text(c, "current_setting('work_mem')").await;
    assert_eq!(work_mem.as_deref(), Some("4MB"), "SET work_mem survived");
    let temp_table = text(c, "to_regclass('pg_temp.t')").await;
    assert_eq!(temp_table, None, "temp table t survived");
    let prepared = text(
        c,
        "(SELECT count(*) FROM pg_prepared_statements WHERE name = 'p')",
    );
    assert_eq!(
        prepared.await.as_deref(),
        Some("0"),
        "prepared statement p survived"
    );
    let listening = text(c, "(SELECT count(*) FROM pg_listening_channels())");
    assert_eq!(
        listening.await.as_deref(),
        Some("0"),
        "LISTEN chan survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_apply_to_each_client_of_a_shared_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let settings =
        "current_setting('application_name') || '|' || current_setting('statement_timeout')";

    let one = open_with(&proxy, |c| {
        c.application_name("one");
    })
    .await;
    let server_pid = one.pid;
    assert_eq!(text(&one.client, settings).await.as_deref(), Some("one|0"));
    one.close().await;

    let two = open_with(&proxy, |c| {
        c.application_name("two")
            .options("-c statement_timeout=1234");
    })
    .await;
    assert_eq!(two.pid, server_pid);
    assert_eq!(
        text(&two.client, settings).await.as_deref(),
        Some("two|1234ms")
    );
    two.close().await;

    let three = open(&proxy).await;
    assert_eq!(three.pid, server_pid);
    assert_eq!(text(&three.client, settings).await.as_deref(), Some("|0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open_after_first_use() {
    let pg = PgServer::start();
    let settings = [("pool_size", "5"), ("min_pool_size", "2")];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let client = open(&proxy).await;
    client.close().await;
    pg.wait_backends("app", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers() {
    let pg = PgServer::start();
    let settings = [("server_idle_timeout", "\"1s\""), ("min_pool_size", "0")];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let a = open(&proxy).await;
    let b = open(&proxy).await;
    assert_eq!(pg.backend_count("app").await, 2);
    a.close().await;
    b.close().await;
    let abandoned = Instant::now();
    pg.wait_backends("app", 0).await;
    assert!(
        abandoned.elapsed() < Duration::from_secs(5),
        "the abandoned query ran on for {:?} instead of being cancelled",
        abandoned.elapsed()
    );
    // The pool opens servers again when needed.
    let c = open(&proxy).await;
    assert_eq!(text(&c.client, "1").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_past_server_lifetime_is_not_reused() {
    let pg = PgServer::start();
    let settings = [("pool_size", "1"), ("server_lifetime", "\"1s\"")];
    let proxy = start_proxy(&config(&pg, &settings)).await;
    let a = open(&proxy).await;
    // The server is at least as old as this instant.
    let born = Instant::now();
    let a_pid = a.pid;
    a.close().await;
    // Letting the server age is the condition under test, not synchronisation.
    tokio::time::sleep_until((born + Duration::from_millis(1100)).into()).await;
    let b = open(&proxy).await;
    assert_ne!(
        b.pid, a_pid,
        "a server older than server_lifetime was reused"
    );
    pg.wait_backends("app", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connect_timeout_names_the_setting() {
    // A "server" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let toml = config_to("127.0.0.1", port, &[("server_connect_timeout", "\"1s\"")]);
    let proxy = start_proxy(&toml).await;
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3), try_open(&proxy))
        .await
        .expect("no answer within 3s with server_connect_timeout = 1s");
    let waited = started.elapsed();
    let (code, message) = refusal(result, "a silent server");
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("server_connect_timeout"), "{message}");
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_closed_port_is_a_clear_08001() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = start_proxy(&config_to("127.0.0.1", port, &[])).await;
    let (code, message) = refusal(try_open(&proxy).await, "a closed port");
    assert_eq!(code, "08001", "{message}");
    let expected = format!("could not connect to server 127.0.0.1:{port}");
    assert!(
        message.starts_with(&expected),
        "expected {expected:?}…, got {message:?}"
    );
}

/// How a client walks out on its session.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Terminate, then close (tokio-postgres on drop).
    Terminate,
    /// Close the socket without a word.
    Abort,
}

impl Leave {
    async fn apply(self, conn: Conn) {
        match self {
            Leave::Terminate => conn.close().await,
            Leave::Abort => conn.abort().await,
        }
    }
}

/// A proxy with pool_size 1 in front of `pg`, whose database `postgres` has an empty table
/// `dirty` that app may write.
async fn dirty_setup(pg: &PgServer) -> Proxy {
    let admin = pg.admin().await;
    admin
        .batch_execute("CREATE TABLE dirty(x int); GRANT ALL ON dirty TO app")
        .await
        .unwrap();
    start_proxy(&config(pg, &[("pool_size", "1")])).await
}

/// What the next client must see after a dirty exit: no rows, no open transaction, and the
/// pool back to one backend.
async fn assert_clean_server(pg: &PgServer, proxy: &Proxy, what: &str) {
    let next = open(proxy).await;
    let c = &next.client;
    assert_eq!(
        text(c, "(SELECT count(*) FROM dirty)").await.unwrap(),
        "0",
        "{what}"
    );
    // Inside the old transaction, which inserted, a transaction id would be assigned.
    assert_eq!(text(c, "txid_current_if_assigned()").await, None, "{what}");
    c.batch_execute("BEGIN; INSERT INTO dirty VALUES (42); ROLLBACK")
        .await
        .unwrap_or_else(|e| panic!("{what}: a fresh transaction: {}", describe(&e)));
    pg.wait_backends("app", 1).await;
    next.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_mid_transaction_never_hands_over_a_dirty_server() {
    let pg = PgServer::start();
    let proxy = dirty_setup(&pg).await;
    for leave in [Leave::Terminate, Leave::Abort] {
        let what = format!("after {leave:?} mid-transaction");
        let conn = open(&proxy).await;
        conn.client
            .batch_execute("BEGIN; INSERT INTO dirty VALUES (1)")
            .await
            .unwrap();
        leave.apply(conn).await;
        assert_clean_server(&pg, &proxy, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_mid_copy_never_hands_over_a_dirty_server() {
    let pg = PgServer::start();
    let proxy = dirty_setup(&pg).await;
    for leave in [Leave::Terminate, Leave::Abort] {
        let what = format!("after {leave:?} mid-COPY");
        let conn = open(&proxy).await;
        let sink = conn
            .client
            .copy_in::<_, Bytes>("COPY dirty FROM STDIN")
            .await;
        // The sink is !Unpin; boxed so it can be sent to and dropped at will.
        let mut sink =
            Box::pin(sink.unwrap_or_else(|e| panic!("{what}: copy_in: {}", describe(&e))));
        sink.send(Bytes::from_static(b"1\n2\n3\n")).await.unwrap();
        match leave {
            // Dropping the unfinished sink sends CopyFail; then the client leaves.
            Leave::Terminate => {
                drop(sink);
                leave.apply(conn).await;
            }
            // The socket goes while the server is still in COPY.
            Leave::Abort => {
                leave.apply(conn).await;
                drop(sink);
            }
        }
        assert_clean_server(&pg, &proxy, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_mid_query_frees_the_pool_slot_at_once() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let proxy = start_proxy(&config(&pg, &[("pool_size", "1")])).await;
    let Conn {
        client,
        task,
        pid: busy_pid,
    } = open(&proxy).await;
    let query = tokio::spawn(async move {
        let _ = client.simple_query("SELECT pg_sleep(10)").await;
    });
    wait_until_running(&admin, "pg_sleep(10)").await;
    // The application dies mid-query: its socket closes without a word.
    task.abort();
    let _ = task.await;
    query.abort();
    let _ = query.await;

    // The abandoned query is cancelled and its backend exits before the slot is reused, so
    // Postgres never sees more than pool_size backends from this pool.
    let abandoned = Instant::now();
    pg.wait_backends("app", 0).await;
    assert!(
        abandoned.elapsed() < Duration::from_secs(5),
        "the abandoned query ran on for {:?} instead of being cancelled",
        abandoned.elapsed()
    );

    // The busy server cannot be reused, but its slot is free: the next client gets a new
    // server at once instead of waiting for the 10 s query.
    let started = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(3), open(&proxy))
        .await
        .expect("the next client waited more than 3s for a server");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_ne!(
        next.pid, busy_pid,
        "a server busy with another client's query was handed out"
    );
    assert_eq!(text(&next.client, "1").await.as_deref(), Some("1"));
    assert_eq!(pg.backend_count("app").await, 1, "pool_size = 1 exceeded");
}
