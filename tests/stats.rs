//! The per-pool counters and the live registries, read through the snapshot API the
//! console and `/metrics` use: exact transaction and query counts (simple and extended
//! protocol, blocks), bytes both ways, the wait histogram, and clients and servers listed
//! while connected and gone after.

mod common;

use std::time::{Duration, Instant};

use common::clients::one_server_config;
use common::{start_proxy, PgServer, Proxy};
use pgwarden::pool::{PoolKey, PoolSnapshot};

fn snapshot(proxy: &Proxy, db: &str, user: &str) -> PoolSnapshot {
    let key = PoolKey {
        database: db.to_owned(),
        user: user.to_owned(),
    };
    let pool = proxy.ctx.pools.get(&key).expect("a pool for the key");
    pool.snapshot()
}

/// Polls `check` until it holds, for at most 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_queries_are_counted_exactly() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&one_server_config(&pg, "transaction")).await;
    let client = proxy.connect("trust_user", "", "appdb").await;
    for _ in 0..100 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    client
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT 2").await.unwrap();
    client.simple_query("COMMIT").await.unwrap();
    // Extended protocol: one Sync per query (prepare is one more round trip).
    let statement = client.prepare("SELECT $1::int").await.unwrap();
    for i in 0..10 {
        client.query_one(&statement, &[&i]).await.unwrap();
    }
    let stats = snapshot(&proxy, "appdb", "trust_user").totals;
    // 100 + 1 (one Query of three statements) + 3 + 1 (prepare) + 10.
    assert_eq!(stats.query_count, 115);
    assert_eq!(stats.xact_count, 100 + 1 + 1 + 1 + 10);
    assert!(stats.query_time_us > 0 && stats.xact_time_us >= stats.query_time_us / 2);
    assert!(stats.bytes_received > 100 * 14 && stats.bytes_sent > stats.bytes_received);
    // The first-login checkout and then one per transaction (the three-query block, one).
    assert_eq!(stats.server_assignments, 1 + 113);
    assert_eq!(stats.wait_histogram().last().map(|b| b.1), Some(114));
    assert_eq!(stats.client_logins, 1);
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_servers_are_listed_while_connected() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&one_server_config(&pg, "session")).await;
    let client = proxy.connect("trust_user", "", "appdb").await;
    client.simple_query("SELECT 1").await.unwrap();
    let clients = proxy.ctx.clients.all();
    assert_eq!(clients.len(), 1);
    let listed = &clients[0];
    assert_eq!(
        (listed.user.as_str(), listed.database.as_str()),
        ("trust_user", "appdb")
    );
    assert_eq!(
        listed.state().name(),
        "active",
        "session mode keeps its server"
    );
    let servers = proxy.ctx.pools.servers().all();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].link(), listed.id());
    assert!(servers[0].remote_pid > 0);
    let pool = snapshot(&proxy, "appdb", "trust_user");
    assert_eq!(
        (pool.cl_active, pool.cl_waiting, pool.servers.active),
        (1, 0, 1)
    );
    drop(client);
    eventually("the client to be unlisted", || proxy.ctx.clients.is_empty()).await;
    eventually("the server to be idle", || {
        snapshot(&proxy, "appdb", "trust_user").servers.idle == 1
    })
    .await;
    proxy.stop().await;
}

/// A client as app whose connection task the test holds, to cut its socket at will.
async fn cuttable(proxy: &Proxy) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("app")
        .password("app_pw")
        .dbname("appdb");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Bad logins count nothing; a client whose socket is cut mid-transaction counts its
/// answered queries and no transaction; a storm of 50 logins counts each of its
/// transactions once: the totals are exact, in the snapshot and in SHOW STATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_after_bad_logins_a_cut_socket_and_a_storm() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&common::console::console_config(&pg, "")).await;
    for _ in 0..10 {
        let refused = proxy.try_connect("app", "wrong", "appdb").await;
        assert!(refused.is_err(), "a wrong password logs in");
    }
    let steady = proxy.connect("app", "app_pw", "appdb").await;
    for _ in 0..100 {
        steady.simple_query("SELECT 1").await.unwrap();
    }
    let (cut, task) = cuttable(&proxy).await;
    cut.simple_query("BEGIN").await.unwrap();
    cut.simple_query("SELECT 1").await.unwrap();
    task.abort(); // the socket closes without a Terminate, mid-transaction
    eventually("the cut client to leave", || proxy.ctx.clients.len() == 1).await;
    let storm: Vec<_> = (0..50)
        .map(|_| {
            let url = proxy.url("app", "app_pw", "appdb");
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("storm login");
                tokio::spawn(connection);
                client.simple_query("SELECT 1").await.unwrap();
                client.simple_query("SELECT 2").await.unwrap();
            })
        })
        .collect();
    for login in storm {
        login.await.unwrap();
    }
    eventually("the storm to leave", || proxy.ctx.clients.len() == 1).await;
    let totals = snapshot(&proxy, "appdb", "app").totals;
    assert_eq!(totals.xact_count, 100 + 100);
    assert_eq!(totals.query_count, 100 + 2 + 100);
    assert_eq!(totals.client_logins, 1 + 1 + 50, "bad logins are no logins");
    let admin = common::console::console(&proxy, "admin", "admin_pw").await;
    let stats = common::console::ask(&admin, "SHOW STATS").await;
    let row = stats.row_where("database", "appdb").unwrap();
    assert_eq!(stats.cell(row, "total_xact_count").as_deref(), Some("200"));
    assert_eq!(stats.cell(row, "total_query_count").as_deref(), Some("202"));
    assert_eq!(
        stats.cell(row, "total_client_connect_count").as_deref(),
        Some("52")
    );
    let totals_row = common::console::ask(&admin, "SHOW STATS_TOTALS").await;
    let row = totals_row.row_where("database", "appdb").unwrap();
    assert_eq!(totals_row.cell(row, "xact_count").as_deref(), Some("200"));
    drop(steady);
    proxy.stop().await;
}
