//! Shutdown of the pgwarden binary as PgBouncer users know it: SIGTERM waits for clients
//! to leave, SIGINT for running transactions (idle clients are closed), a second signal
//! exits at once; newcomers are refused with 57P01 meanwhile, where psql shows why.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::process::Pgwarden;
use common::raw::{fields, query, raw_query, read_message, startup, tags, PROTOCOL_3_0};
use common::{describe, PgServer};

const ANSWER: Duration = Duration::from_secs(5);

/// Transaction pooling to `pg` with trust logins and `shutdown_timeout`.
fn config(pg: &PgServer, shutdown_timeout: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"transaction\"\npool_size = 4\n\
         shutdown_timeout = \"{shutdown_timeout}\"\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

async fn start(shutdown_timeout: &str) -> (PgServer, Pgwarden) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&config(&pg, shutdown_timeout)).await;
    (pg, proxy)
}

/// A raw client of app on appdb, logged in.
async fn raw_login(proxy: &Pgwarden) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let hello = startup(PROTOCOL_3_0, &[("user", "app"), ("database", "appdb")]);
    stream.write_all(&hello).await.unwrap();
    let login = common::raw::read_until_ready(&mut stream, ANSWER).await;
    assert!(tags(&login).ends_with('Z'), "login: {}", tags(&login));
    stream
}

/// SQLSTATE and message of the ErrorResponse among `messages`.
fn error_of(messages: &[(u8, Vec<u8>)]) -> Option<(String, String)> {
    let (_, body) = messages.iter().find(|(tag, _)| *tag == b'E')?;
    let fields = fields(body);
    Some((fields[&b'C'].clone(), fields[&b'M'].clone()))
}

/// A new client is refused with 57P01 after its startup packet: tokio-postgres and psql
/// both show the reason.
async fn assert_newcomers_refused(proxy: &Pgwarden) {
    let refused = proxy.try_connect("app", "app_pw", "appdb").await;
    let Err(err) = refused else {
        panic!("a new client logged in while draining")
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {}", describe(&err)));
    assert_eq!(db.code().code(), "57P01");
    assert_eq!(
        db.message(),
        "pgwarden is shutting down and accepts no new connections"
    );
    let port = proxy.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(common::pg_bin("psql"))
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-d",
                "appdb",
            ])
            .args(["-c", "SELECT 1"])
            .env_remove("PGSSLMODE")
            .output()
            .expect("run psql")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("pgwarden is shutting down"),
        "psql: {stderr}"
    );
}

/// Polls until the process has exited; its exit code.
async fn exit_code(proxy: &mut Pgwarden, within: Duration) -> Option<i32> {
    proxy.wait_exit(within).await.code()
}

#[tokio::test]
async fn sigterm_waits_for_clients_to_leave_and_refuses_newcomers_with_57p01() {
    let (_pg, mut proxy) = start("30s").await;
    let in_tx = proxy.connect_app().await;
    in_tx
        .batch_execute("BEGIN; CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    let idle = proxy.connect_app().await;

    proxy.signal("TERM");
    proxy
        .wait_for_output("shutting down, waiting for clients to disconnect")
        .await;
    assert_newcomers_refused(&proxy).await;
    // Clients go on as usual: the transaction finishes, and more follow.
    in_tx
        .batch_execute("INSERT INTO t VALUES (1); COMMIT")
        .await
        .unwrap();
    let row = in_tx.query_one("SELECT 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    idle.query_one("SELECT 3", &[]).await.unwrap();
    assert!(proxy.is_alive(), "exited with clients still connected");

    drop(in_tx);
    let left = Instant::now();
    drop(idle);
    assert_eq!(exit_code(&mut proxy, Duration::from_secs(5)).await, Some(0));
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?} after the last client left",
        left.elapsed()
    );
    let out = proxy.output();
    assert!(
        out.contains("every client has left") && out.contains("shutdown complete"),
        "{out}"
    );
    assert!(!out.contains("panicked at"), "{out}");
}

#[tokio::test]
async fn sigint_lets_running_transactions_finish_and_closes_clients_at_their_next_idle_point() {
    let (pg, mut proxy) = start("30s").await;
    let mut in_tx = raw_login(&proxy).await;
    let begun = raw_query(&mut in_tx, "BEGIN", ANSWER).await;
    assert!(tags(&begun).ends_with('Z'));
    let mut idle = raw_login(&proxy).await;

    proxy.signal("INT");
    proxy
        .wait_for_output("waiting for running transactions")
        .await;
    // The idle client is closed at once, told why.
    let told = read_message(&mut idle, ANSWER)
        .await
        .expect("an ErrorResponse");
    assert_eq!(told.0, b'E');
    let fields = fields(&told.1);
    assert_eq!(fields[&b'C'], "57P01");
    assert_eq!(
        fields[&b'M'],
        "terminating connection due to pgwarden shutdown"
    );
    assert!(
        read_message(&mut idle, ANSWER).await.is_none(),
        "not closed"
    );

    assert_newcomers_refused(&proxy).await;
    // The transaction runs to its end, then its client is closed the same way.
    let inside = raw_query(&mut in_tx, "SELECT 1", ANSWER).await;
    assert_eq!(error_of(&inside), None, "{}", tags(&inside));
    in_tx.write_all(&query("COMMIT")).await.unwrap();
    let mut after = Vec::new();
    while let Some(message) = read_message(&mut in_tx, ANSWER).await {
        after.push(message);
    }
    assert!(
        tags(&after).starts_with("CZ"),
        "COMMIT answered {}",
        tags(&after)
    );
    assert_eq!(
        error_of(&after),
        Some((
            "57P01".to_owned(),
            "terminating connection due to pgwarden shutdown".to_owned()
        ))
    );
    assert_eq!(exit_code(&mut proxy, Duration::from_secs(5)).await, Some(0));
    pg.wait_backends("app", 0).await;
    assert!(
        !proxy.output().contains("panicked at"),
        "{}",
        proxy.output()
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let (_pg, mut proxy) = start("60s").await;
    let client = proxy.connect_app().await;
    client.batch_execute("BEGIN").await.unwrap();
    proxy.signal("TERM");
    proxy
        .wait_for_output("shutting down, waiting for clients")
        .await;
    let second = Instant::now();
    proxy.signal("INT");
    assert_eq!(exit_code(&mut proxy, Duration::from_secs(3)).await, Some(1));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    let out = proxy.output();
    assert!(out.contains("second signal: exiting immediately"), "{out}");
    assert!(!out.contains("panicked at"), "{out}");
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_wait_for_clients() {
    let (_pg, mut proxy) = start("1s").await;
    let client = proxy.connect_app().await;
    client.batch_execute("BEGIN").await.unwrap();
    let signalled = Instant::now();
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, Duration::from_secs(5)).await, Some(0));
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(900), "exited after {took:?}");
    let out = proxy.output();
    assert!(
        out.contains("shutdown_timeout reached with sessions still running"),
        "{out}"
    );
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "the session outlived the process"
    );
}

#[tokio::test]
async fn the_console_still_answers_admin_users_while_draining() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let toml = format!(
        "admin_users = \"admin\"\n{}[users.admin]\npassword = \"admin_pw\"\n",
        config(&pg, "30s")
    );
    let mut proxy = Pgwarden::with_config(&toml).await;
    let stays = proxy.connect_app().await;
    proxy.signal("TERM");
    proxy
        .wait_for_output("shutting down, waiting for clients to disconnect")
        .await;
    assert_newcomers_refused(&proxy).await;
    let admin = proxy
        .try_connect("admin", "admin_pw", "pgwarden")
        .await
        .unwrap_or_else(|e| panic!("console while draining: {}", describe(&e)));
    let rows = admin.simple_query("SHOW POOLS").await.unwrap();
    let pools = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(pools, 1, "SHOW POOLS while draining");
    drop(admin);
    drop(stays);
    assert_eq!(exit_code(&mut proxy, Duration::from_secs(5)).await, Some(0));
    assert!(!proxy.output().contains("panicked at"));
}
