//! Server-side caps as a user meets them: `max_db_connections`, `max_user_connections`,
//! `max_server_conn`, `max_server_conn_per_client` and the reserve pool bound the backend
//! connections Postgres sees (counted in pg_stat_activity); a client that cannot get one
//! waits and then gets 53300 naming itself, the timeout and the cap; a full cross-pool cap
//! closes another pool's idle server instead of starving a waiter; `query_wait_notify`
//! tells a queued client where it stands.

mod common;

use std::time::{Duration, Instant};

use common::identity::{connect_as, refusal, As};
use common::raw::{fields, read_message, read_until_ready, startup, tags, PROTOCOL_3_0};
use common::{start_proxy, PgServer};
use pgwarden::refusals::Cap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// Session pooling (a client keeps the server it first used), a 1 s query_wait_timeout,
/// users app and scram_user, every database routed to `pg`; `extra` at the top.
fn config(pg: &PgServer, extra: &str) -> String {
    format!(
        "auth_type = \"scram-sha-256\"\npool_mode = \"session\"\npool_size = 5\n\
         query_wait_timeout = \"1s\"\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n[users.scram_user]\npassword = \"scram_pw\"\n",
        pg.port
    )
}

fn scram_user() -> As<'static> {
    As::app().user("scram_user", "scram_pw")
}

/// Connects as `who` and runs a query, so that (in session mode) it holds a server.
async fn holding(addr: std::net::SocketAddr, who: As<'_>) -> Client {
    let client = connect_as(addr, who).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    client
}

/// Backends of every pgwarden user, as Postgres counts them.
async fn backends(pg: &PgServer) -> i64 {
    pg.backend_count("app").await + pg.backend_count("scram_user").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_holds_across_pools_and_an_idle_server_makes_room() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_db_connections = 3")).await;
    let mut app = Vec::new();
    for _ in 0..3 {
        app.push(holding(proxy.addr, As::app()).await);
    }
    // A second pool on the same database: its first client waits, then is refused.
    let started = Instant::now();
    let (code, message) = refusal(connect_as(proxy.addr, scram_user()).await);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "user \"scram_user\" got no server connection from pool \"appdb/scram_user\" within \
         query_wait_timeout = 1s (max_db_connections = 3 for database \"appdb\")"
    );
    assert_eq!(pg.backend_count("app").await, 3);
    assert_eq!(pg.backend_count("scram_user").await, 0);
    assert_eq!(proxy.ctx.refusals.get(Cap::QueryWaitTimeout), 1);

    // One app client leaves: its server goes idle, and is closed for scram_user's sake.
    app.pop();
    let other = holding(proxy.addr, scram_user()).await;
    pg.wait_backends("app", 2).await;
    assert_eq!(pg.backend_count("scram_user").await, 1);
    assert_eq!(proxy.ctx.pools.server_connections(), 3);
    drop((app, other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_per_user_holds_across_databases() {
    let pg = PgServer::start();
    let toml = config(&pg, "max_user_connections = 10").replace(
        "password = \"app_pw\"\n",
        "password = \"app_pw\"\nmax_user_connections = 2\n",
    );
    let proxy = start_proxy(&toml).await;
    let held = [
        holding(proxy.addr, As::app()).await,
        holding(proxy.addr, As::app()).await,
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app().db("postgres")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "user \"app\" got no server connection from pool \"postgres/app\" within \
         query_wait_timeout = 1s (max_user_connections = 2 for user \"app\")"
    );
    assert_eq!(pg.backend_count("app").await, 2);
    // Other users are not bound by app's cap.
    let other = holding(proxy.addr, scram_user()).await;
    assert_eq!(pg.backend_count("scram_user").await, 1);
    drop((held, other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_server_conn_holds_in_total() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_server_conn = 2")).await;
    let held = [
        holding(proxy.addr, As::app()).await,
        holding(proxy.addr, scram_user()).await,
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app().db("postgres")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "user \"app\" got no server connection from pool \"postgres/app\" within \
         query_wait_timeout = 1s (max_server_conn = 2)"
    );
    assert_eq!(backends(&pg).await, 2);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_server_conn_per_client_keeps_one_application_from_taking_the_pool() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_server_conn_per_client = 2")).await;
    let billing = As::app().named("billing");
    let held = [
        holding(proxy.addr, billing).await,
        holding(proxy.addr, billing).await,
    ];
    let third = connect_as(proxy.addr, billing).await.unwrap();
    let (code, message) = refusal(third.simple_query("select 1").await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "application \"billing\" got no server connection from pool \"appdb/app\" within \
         query_wait_timeout = 1s (max_server_conn_per_client = 2 for application \"billing\")"
    );
    // Another application still gets one of the pool's remaining servers.
    let web = holding(proxy.addr, As::app().named("web")).await;
    assert_eq!(pg.backend_count("app").await, 3);
    drop((held, web));
    let pool = &proxy.ctx.pools.all()[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().held > 0 {
        assert!(
            Instant::now() < deadline,
            "holdings not released: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_opens_only_for_clients_that_waited_reserve_pool_timeout() {
    let pg = PgServer::start();
    let extra = "pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = \"300ms\"";
    let proxy = start_proxy(&config(&pg, extra).replace("pool_size = 5\n", "")).await;
    let first = holding(proxy.addr, As::app()).await;
    let second = connect_as(proxy.addr, As::app()).await.unwrap();
    let started = Instant::now();
    second.simple_query("select 1").await.unwrap();
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(280)..Duration::from_millis(900)).contains(&waited),
        "the reserve server came after {waited:?}, not reserve_pool_timeout = 300ms"
    );
    assert_eq!(pg.backend_count("app").await, 2);
    let third = connect_as(proxy.addr, As::app()).await.unwrap();
    let (code, message) = refusal(third.simple_query("select 1").await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "user \"app\" got no server connection from pool \"appdb/app\" within \
         query_wait_timeout = 1s (pool_size = 1, reserve_pool_size = 1)"
    );
    assert_eq!(pg.backend_count("app").await, 2);
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_notify_tells_a_queued_client_where_it_stands() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\npool_mode = \"session\"\npool_size = 1\n\
         query_wait_timeout = \"10s\"\nquery_wait_notify = \"200ms\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let trust = As::app().user("trust_user", "");
    let first = holding(proxy.addr, trust).await;

    let mut raw = TcpStream::connect(proxy.addr).await.unwrap();
    let hello = startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "appdb")],
    );
    raw.write_all(&hello).await.unwrap();
    read_until_ready(&mut raw, Duration::from_secs(5)).await;
    let started = Instant::now();
    raw.write_all(&common::raw::query("select 42"))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut raw, Duration::from_secs(5))
        .await
        .unwrap();
    let notified = started.elapsed();
    assert_eq!(tag, b'N', "a NoticeResponse first");
    let notice = fields(&body);
    assert_eq!(notice[&b'V'], "NOTICE");
    assert_eq!(notice[&b'C'], "00000");
    assert_eq!(
        notice[&b'M'],
        "waiting for a server connection of pool \"appdb/trust_user\" behind 0 other clients \
         (pool_size = 1)"
    );
    assert!(
        notified >= Duration::from_millis(190),
        "notified after {notified:?}"
    );

    // The client is still queued, and gets its answer once the server is free.
    drop(first);
    let answer = read_until_ready(&mut raw, Duration::from_secs(5)).await;
    assert_eq!(tags(&answer), "TDCZ");
}
