//! The `pgwarden` binary as a user runs it: flags, `PGWARDEN_*` variables and a TOML file,
//! configuration errors at start, signals and draining, and the log lines.
//!
//! Every proxy listens on `127.0.0.1:0`; its port is read from its "listening" log line
//! (the launcher is `common::process`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use common::process::{free_port, Pgwarden};
use common::{describe, PgServer};

fn upstream(pg: &PgServer) -> String {
    pg.url("app", "app_pw")
}

async fn current_user(client: &Client) -> String {
    let row = client.query_one("select current_user::text", &[]).await;
    row.unwrap_or_else(|e| panic!("select current_user: {}", describe(&e)))
        .get(0)
}

/// What pool_size = 1 with query_wait_timeout = 1s looks like while one client holds the
/// server: a second client waits about a second, then gets 53300 naming the setting (at
/// login or at its first query: pgwarden may attach the server lazily); Postgres sees one
/// backend.
async fn assert_one_server_per_pool(proxy: &Pgwarden, pg: &PgServer) {
    let first = proxy.connect_app().await;
    assert_eq!(current_user(&first).await, "app");
    // An open transaction holds the server (transaction pooling is the default).
    first.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    let second = match proxy.try_connect("app", "app_pw", "appdb").await {
        Ok(second) => second.query_one("select 1", &[]).await.map(drop),
        Err(e) => Err(e),
    };
    let waited = started.elapsed();
    let Err(err) = second else {
        panic!(
            "a second client got a server with pool_size = 1:\n{}",
            proxy.output()
        );
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {}", describe(&err)));
    assert_eq!(
        db.code(),
        &SqlState::TOO_MANY_CONNECTIONS,
        "{}",
        describe(&err)
    );
    assert!(
        db.message().contains("query_wait_timeout"),
        "{}",
        describe(&err)
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "the second client waited {waited:?}, not query_wait_timeout = 1s"
    );
    assert_eq!(pg.backend_count("app").await, 1);
    assert_eq!(current_user(&first).await, "app");
}

#[tokio::test]
async fn quick_start_with_listen_and_upstream_flags() {
    let pg = PgServer::start();
    let proxy = Pgwarden::start(
        &["--listen", "127.0.0.1:0", "--upstream", &upstream(&pg)],
        &[],
    )
    .await;
    let client = proxy.connect_app().await;
    assert_eq!(current_user(&client).await, "app");
    let row = client
        .query_one("select current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "appdb");
}

#[tokio::test]
async fn environment_variables_configure_upstream_listen_and_pool() {
    let pg = PgServer::start();
    let url = upstream(&pg);
    let env = [
        ("PGWARDEN_UPSTREAM", url.as_str()),
        ("PGWARDEN_LISTEN", "127.0.0.1:0"),
        ("PGWARDEN_POOL_SIZE", "1"),
        ("PGWARDEN_QUERY_WAIT_TIMEOUT", "1s"),
    ];
    let proxy = Pgwarden::start(&[], &env).await;
    assert_one_server_per_pool(&proxy, &pg).await;
}

#[tokio::test]
async fn flags_override_the_config_file() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgwarden.toml");
    std::fs::write(&file, "pool_size = 5\nquery_wait_timeout = \"1s\"\n").unwrap();
    let args = [
        "--config",
        file.to_str().unwrap(),
        "--pool-size",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream(&pg),
    ];
    let proxy = Pgwarden::start(&args, &[]).await;
    assert_one_server_per_pool(&proxy, &pg).await;
}

#[tokio::test]
async fn invalid_configuration_exits_2_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("pgwarden.toml");
    std::fs::write(&file, "pool_size = 5\nbogus_key = 1\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--config",
        file.to_str().unwrap(),
        "--pool-size",
        "0",
        "--query-wait-timeout",
        "banana",
        "--listen",
        &listen,
        "--upstream",
        "postgres://app:app_pw@127.0.0.1:5432",
    ];
    let mut proxy = Pgwarden::spawn(&args, &[]);
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let stderr = proxy.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(!proxy.output().contains("listening"), "{}", proxy.output());
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "something listens on {listen}"
    );
    // Each problem on a line of its own: the key, then why.
    let problems = [
        ("pool_size:", "at least 1"),
        ("query_wait_timeout:", "banana"),
        ("bogus_key:", "unknown key"),
    ];
    for (key, reason) in problems {
        let named = stderr
            .lines()
            .map(|l| l.trim_start_matches("pgwarden: "))
            .any(|l| l.starts_with(key) && l.contains(reason));
        assert!(named, "no line {key} ... {reason} in stderr:\n{stderr}");
    }
}

#[tokio::test]
async fn durations_accept_units_and_plain_seconds() {
    let pg = PgServer::start();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream(&pg),
        "--query-wait-timeout",
        "500ms",
        "--server-connect-timeout",
        "2s",
        "--server-idle-timeout",
        "5m",
        "--client-login-timeout",
        "30",
        "--shutdown-timeout",
        "1h",
    ];
    let proxy = Pgwarden::start(&args, &[]).await;
    let client = proxy.connect_app().await;
    assert_eq!(current_user(&client).await, "app");
}

/// A transaction runs `pg_sleep(1.5)` when `signal` arrives: new clients are refused at once
/// (57P01), the transaction finishes and commits; then after SIGINT the session ends with
/// 57P01, after SIGTERM it goes on until its client leaves; and the process exits 0 well
/// before its shutdown_timeout.
async fn signal_drains_running_transactions(signal: &str) {
    let pg = PgServer::start();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream(&pg),
        "--shutdown-timeout",
        "20s",
    ];
    let mut proxy = Pgwarden::start(&args, &[]).await;
    let client = proxy.connect_app().await;
    let session = tokio::spawn(async move {
        client.batch_execute("BEGIN").await?;
        client.execute("select pg_sleep(1.5)", &[]).await?;
        client.batch_execute("COMMIT").await?;
        let committed = Instant::now();
        let after = client.query_one("select 1", &[]).await;
        drop(client); // the client leaves
        Ok::<_, tokio_postgres::Error>((committed, after))
    });

    let admin = pg.admin().await;
    let sleeping = "select count(*) from pg_stat_activity \
                    where usename = 'app' and state = 'active' and query like 'select pg_sleep%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .query_one(sleeping, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "pg_sleep never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal(signal);

    // New clients are refused while the transaction still runs (the signal may take a
    // moment to arrive).
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match proxy.try_connect("app", "app_pw", "appdb").await {
            Ok(_) => assert!(
                Instant::now() < deadline,
                "new clients still log in after SIG{signal}"
            ),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        refused.code(),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "{}",
        describe(&refused)
    );
    assert!(
        !session.is_finished(),
        "the transaction ended before the drain was checked"
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "pgwarden exited with a transaction open"
    );

    let (committed, after) = match session.await.unwrap() {
        Ok(done) => done,
        Err(e) => panic!(
            "the draining transaction failed: {}\n{}",
            describe(&e),
            proxy.output()
        ),
    };
    match (signal, after) {
        ("TERM", Ok(_)) => {}
        ("TERM", Err(e)) => panic!("SIGTERM ended a session: {}", describe(&e)),
        (_, Ok(_)) => panic!("the session went on after its transaction during SIGINT"),
        (_, Err(e)) => assert!(
            e.code() == Some(&SqlState::ADMIN_SHUTDOWN) || e.is_closed(),
            "expected 57P01 or a closed connection, got {}",
            describe(&e)
        ),
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(
        committed.elapsed() < Duration::from_secs(10),
        "exit waited for shutdown_timeout, not for the session"
    );
    pg.wait_backends("app", 0).await;
}

#[tokio::test]
async fn sigterm_lets_running_transactions_finish_and_exits_0_when_the_client_leaves() {
    signal_drains_running_transactions("TERM").await;
}

#[tokio::test]
async fn sigint_lets_running_transactions_finish_then_exits_0() {
    signal_drains_running_transactions("INT").await;
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain_of_an_idle_transaction() {
    let pg = PgServer::start();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream(&pg),
        "--shutdown-timeout",
        "1s",
    ];
    let mut proxy = Pgwarden::start(&args, &[]).await;
    let client = proxy.connect_app().await;
    client.batch_execute("BEGIN").await.unwrap();

    let signalled = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with shutdown_timeout = 1s"
    );
    let err = client.query_one("select 1", &[]).await.err();
    assert!(err.is_some(), "the session outlived the process");
    pg.wait_backends("app", 0).await;
}

#[tokio::test]
async fn info_logs_client_and_server_connections() {
    let pg = PgServer::start();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream(&pg),
        "--log-level",
        "info",
    ];
    let proxy = Pgwarden::start(&args, &[]).await;
    let client = proxy.connect_app().await;
    assert_eq!(current_user(&client).await, "app");
    drop(client);
    proxy.wait_for_output("client disconnected").await;

    let output = proxy.output();
    for event in [
        "client connected",
        "client disconnected",
        "server connected",
    ] {
        let lines: Vec<&str> = output.lines().filter(|l| l.contains(event)).collect();
        assert_eq!(lines.len(), 1, "expected one {event:?} line:\n{output}");
        assert!(
            lines[0].contains("INFO"),
            "{event:?} not at info level: {}",
            lines[0]
        );
    }
    let connected = output
        .lines()
        .find(|l| l.contains("client connected"))
        .unwrap();
    assert!(
        connected.contains("user=app") && connected.contains("appdb"),
        "{connected}"
    );
}
