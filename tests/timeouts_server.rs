//! Server-side timeouts as a user meets them: `server_login_retry` (a pool whose logins
//! fail backs off instead of storming Postgres, and a Postgres answering 53300 is
//! backpressure: clients keep waiting and get in once there is room, or get 53300 naming
//! the cause after `query_wait_timeout`), `server_check_delay` + `server_check_query` (an
//! idle server failing the check is closed and another used, unseen by the client), and
//! `cancel_wait_timeout` (a cancel request Postgres does not complete is given up).

mod common;

use std::time::{Duration, Instant};

use common::identity::{connect_as, refusal, As};
use common::raw::{packet, query, read_until_ready, startup, tags};
use common::raw::{CANCEL_REQUEST, PROTOCOL_3_0};
use common::{start_proxy, PgServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Postgres' refusals of scram_user logins so far, from its log.
fn role_refusals(pg: &PgServer) -> usize {
    pg.log()
        .matches("too many connections for role \"scram_user\"")
        .count()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_53300_is_backpressure_retried_every_server_login_retry() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    admin
        .batch_execute("ALTER ROLE scram_user CONNECTION LIMIT 1")
        .await
        .unwrap();
    // Someone else holds scram_user's only connection.
    let direct = pg.connect("scram_user", "scram_pw", "appdb").await;
    let toml = format!(
        "auth_type = \"scram-sha-256\"\npool_mode = \"session\"\npool_size = 3\n\
         query_wait_timeout = \"1s\"\nserver_login_retry = \"200ms\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.scram_user]\npassword = \"scram_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let scram_user = As::app().user("scram_user", "scram_pw");

    // No room all along: the client waits query_wait_timeout, then learns why.
    let started = Instant::now();
    let (code, message) = refusal(connect_as(proxy.addr, scram_user).await);
    let waited = started.elapsed();
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "user \"scram_user\" got no server connection from pool \"appdb/scram_user\" within \
         query_wait_timeout = 1s (server login failing, retried every server_login_retry = \
         200ms: server refused login: too many connections for role \"scram_user\" \
         (SQLSTATE 53300))"
    );
    assert!(
        waited >= Duration::from_millis(950),
        "refused after {waited:?}"
    );
    // One attempt, then one per 200 ms: about 6 in that second, not a storm.
    let attempts = role_refusals(&pg);
    assert!(
        (3..=8).contains(&attempts),
        "{attempts} logins tried in {waited:?}"
    );

    // Room appears while a client waits: it gets in instead of failing.
    let waiting =
        tokio::spawn(async move { connect_as(proxy.addr, scram_user).await.map(|_| proxy) });
    until("the waiting client's login was refused", || {
        role_refusals(&pg) > attempts
    })
    .await;
    drop(direct);
    let proxy = waiting
        .await
        .unwrap()
        .expect("the waiting client got in once there was room");
    pg.wait_backends("scram_user", 1).await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_failing_server_check_query_is_replaced_unseen() {
    let pg = PgServer::start();
    let pids = |check_query: &'static str| {
        let toml = format!(
            "auth_type = \"scram-sha-256\"\npool_size = 1\nserver_check_delay = 0\n\
             server_check_query = \"{check_query}\"\n\
             [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
             [users.app]\npassword = \"app_pw\"\n",
            pg.port
        );
        async move {
            let proxy = start_proxy(&toml).await;
            let client = connect_as(proxy.addr, As::app()).await.unwrap();
            let mut pids = Vec::new();
            for _ in 0..3 {
                // Simple protocol: a named prepared statement would pin the client.
                let rows = client.simple_query("select pg_backend_pid()").await;
                let rows =
                    common::clients::simple_rows(&rows.expect("no error reaches the client"));
                pids.push(rows[0][0].clone().expect("a pid"));
            }
            pids
        }
    };
    let passing = pids("SELECT 1").await;
    assert!(passing.iter().all(|p| *p == passing[0]), "{passing:?}");
    let failing = pids("SELECT 1/0").await;
    assert!(
        failing[0] != failing[1] && failing[1] != failing[2],
        "each reuse should fail the check and get a new server: {failing:?}"
    );
    // The failed servers were closed, not kept: pool_size = 1 holds.
    pg.wait_backends("app", 0).await;
}

/// A TCP hop in front of Postgres that passes sessions through but holds every cancel
/// request open without forwarding it: a Postgres that never completes a cancel.
async fn cancel_swallowing_hop(pg_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if socket.read_exact(&mut head).await.is_err() {
                    return;
                }
                // pgwarden asks for TLS first (server_tls_sslmode = prefer), cancels too, as
                // libpq does: answer as a Postgres without TLS and read what comes next.
                if head[4..] == 80_877_103u32.to_be_bytes()
                    && (socket.write_all(b"N").await.is_err()
                        || socket.read_exact(&mut head).await.is_err())
                {
                    return;
                }
                if head[4..] == CANCEL_REQUEST.to_be_bytes() {
                    let mut sink = [0u8; 64];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                let Ok(mut pg) = TcpStream::connect(("127.0.0.1", pg_port)).await else {
                    return;
                };
                if pg.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut pg).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_postgres_does_not_complete_is_given_up_after_cancel_wait_timeout() {
    let pg = PgServer::start();
    let hop = cancel_swallowing_hop(pg.port).await;
    let toml = format!(
        "auth_type = \"trust\"\npool_mode = \"session\"\ncancel_wait_timeout = \"300ms\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {hop}\n"
    );
    let proxy = start_proxy(&toml).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let hello = startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "appdb")],
    );
    client.write_all(&hello).await.unwrap();
    let login = read_until_ready(&mut client, Duration::from_secs(10)).await;
    let (_, key) = login
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .expect("BackendKeyData");
    client
        .write_all(&query("select pg_sleep(1)"))
        .await
        .unwrap();
    until_running(&pg).await;

    let started = Instant::now();
    let mut cancel = TcpStream::connect(proxy.addr).await.unwrap();
    cancel
        .write_all(&packet(CANCEL_REQUEST, key))
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), cancel.read_to_end(&mut rest))
        .await
        .expect("the cancel connection should be closed after cancel_wait_timeout")
        .unwrap();
    let held = started.elapsed();
    assert!(
        (Duration::from_millis(280)..Duration::from_millis(1500)).contains(&held),
        "the cancel was held {held:?}, not cancel_wait_timeout = 300ms"
    );
    // The cancel never arrived: the query completes normally.
    let answer = read_until_ready(&mut client, Duration::from_secs(10)).await;
    assert_eq!(tags(&answer), "TDCZ");
}

async fn until_running(pg: &PgServer) {
    let admin = pg.admin().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sql = "select count(*) from pg_stat_activity where state = 'active' \
                   and strpos(query, 'pg_sleep(1)') > 0 and pid <> pg_backend_pid()";
        let running: i64 = admin.query_one(sql, &[]).await.unwrap().get(0);
        if running > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
