//! Cancel requests through pgwarden: clients get a proxy-issued key, a CancelRequest with that
//! key cancels the query its client is running, and any other key cancels nothing.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use common::clients::session_setup;
use common::raw::{
    packet, query, raw_query, read_until_ready, startup, CANCEL_REQUEST, PROTOCOL_3_0, SSL_REQUEST,
};
use common::{describe, start_proxy, PgServer, Proxy};

/// How long a raw read waits before the test fails.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// A throwaway Postgres and a pgwarden in front of it: `app` logs in with SCRAM as usual;
/// `trust_user` is trusted by both, for the raw-protocol clients.
async fn setup(auth_type: &str) -> (PgServer, Proxy) {
    session_setup(auth_type).await
}

/// Polls pg_stat_activity until a backend of `user` is running a statement containing
/// `needle` (so a cancel sent now lands on a running query).
async fn wait_running(admin: &Client, user: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = admin
            .query_one(
                "select count(*) from pg_stat_activity where usename = $1 \
                 and state = 'active' and strpos(query, $2) > 0 and pid <> pg_backend_pid()",
                &[&user, &needle],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no backend of {user} ran {needle:?} within 10s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_cancels_a_running_query_and_the_session_goes_on() {
    let (pg, proxy) = setup("scram-sha-256").await;
    let admin = pg.admin().await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    let token = client.cancel_token();

    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("select pg_sleep(30)").await.map(|_| ());
        (client, result)
    });
    wait_running(&admin, "app", "pg_sleep(30)").await;
    token
        .cancel_query(NoTls)
        .await
        .unwrap_or_else(|e| panic!("send cancel request: {}", describe(&e)));

    let (client, result) = sleeper.await.unwrap();
    let err = result.expect_err("pg_sleep(30) was cancelled");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "57014");
    assert_eq!(db.message(), "canceling statement due to user request");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancelled only after {:?}",
        started.elapsed()
    );

    let row = client.query_one("select 'usable'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "usable");

    // Extended protocol, inside a transaction: cancelled, transaction aborted, rollback works.
    client.batch_execute("BEGIN").await.unwrap();
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.execute("select pg_sleep(31)", &[]).await.map(|_| ());
        (client, result)
    });
    wait_running(&admin, "app", "pg_sleep(31)").await;
    token.cancel_query(NoTls).await.unwrap();
    let (client, result) = sleeper.await.unwrap();
    let err = result.expect_err("pg_sleep(31) was cancelled");
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let row = client
        .query_one("select 'after rollback'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "after rollback");
}

// ---- a raw client, to see and forge cancel keys ----

/// The SQLSTATE of the ErrorResponse among `messages`, if any.
fn error_code(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(t, _)| *t == b'E')?;
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// A raw connection logged in as `trust_user`, and the (pid, secret) of its BackendKeyData.
async fn raw_login(proxy: &Proxy) -> (TcpStream, i32, i32) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let hello = startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "appdb")],
    );
    stream.write_all(&hello).await.unwrap();
    let messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(error_code(&messages), None, "login failed");
    let (_, key) = messages
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData during login");
    assert_eq!(key.len(), 8);
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    (stream, pid, secret)
}

/// Sends a CancelRequest on a new connection and waits until pgwarden closes it, which it
/// does once it has dealt with the request.
async fn send_cancel(proxy: &Proxy, pid: i32, secret: i32) {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    cancel_on(stream, pid, secret).await;
}

/// The same, after asking for SSL and being refused, as libpq 17 does for its cancels.
async fn send_cancel_after_ssl_request(proxy: &Proxy, pid: i32, secret: i32) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(&packet(SSL_REQUEST, b"")).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');
    cancel_on(stream, pid, secret).await;
}

async fn cancel_on(mut stream: TcpStream, pid: i32, secret: i32) {
    let mut key = pid.to_be_bytes().to_vec();
    key.extend_from_slice(&secret.to_be_bytes());
    stream
        .write_all(&packet(CANCEL_REQUEST, &key))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(READ_DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("pgwarden closes a cancel connection")
        .ok();
    assert!(
        answer.is_empty(),
        "a cancel request gets no answer: {answer:?}"
    );
}

/// The text of the first cell of the first DataRow.
fn first_value(messages: &[(u8, Vec<u8>)]) -> String {
    let (_, row) = messages
        .iter()
        .find(|(t, _)| *t == b'D')
        .expect("a DataRow");
    let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]) as usize;
    String::from_utf8(row[6..6 + len].to_vec()).unwrap()
}

/// Whether some backend of `user` is still running a statement containing `needle`.
async fn still_running(admin: &Client, user: &str, needle: &str) -> bool {
    let row = admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = $1 \
             and state = 'active' and strpos(query, $2) > 0",
            &[&user, &needle],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_key_cancels() {
    let (pg, proxy) = setup("trust").await;
    let admin = pg.admin().await;
    let (mut stream, pid, secret) = raw_login(&proxy).await;

    // Wrong secret, and an unknown pid, while a short query runs: it completes.
    stream
        .write_all(&query("select pg_sleep(2), 'slept'"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(2)").await;
    send_cancel(&proxy, pid, secret.wrapping_add(1)).await;
    send_cancel(&proxy, pid, !secret).await;
    send_cancel(&proxy, pid.wrapping_add(1), secret).await;
    send_cancel(&proxy, 0x1234_5678 ^ pid, 0x0bad_cafe).await;
    assert!(
        still_running(&admin, "trust_user", "pg_sleep(2)").await,
        "the query ended before the wrong keys were all tried (machine too slow?)"
    );
    let messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(
        error_code(&messages),
        None,
        "a wrong key cancelled the query"
    );
    assert_eq!(
        messages.iter().map(|(t, _)| *t as char).collect::<String>(),
        "TDCZ"
    );

    // The right key cancels a long query.
    let started = Instant::now();
    stream
        .write_all(&query("select pg_sleep(30)"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(30)").await;
    send_cancel(&proxy, pid, secret).await;
    let messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(error_code(&messages).as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // The session goes on.
    assert_eq!(
        first_value(&raw_query(&mut stream, "select 'next'", READ_DEADLINE).await),
        "next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gets_the_proxy_key_not_the_backend_key() {
    let (pg, proxy) = setup("trust").await;
    let admin = pg.admin().await;
    let (mut stream, pid, secret) = raw_login(&proxy).await;

    let backend_pid: i32 =
        first_value(&raw_query(&mut stream, "select pg_backend_pid()", READ_DEADLINE).await)
            .parse()
            .unwrap();
    assert_ne!(
        pid, backend_pid,
        "BackendKeyData carries the backend's own pid"
    );

    // The backend's real pid with the proxy's secret means nothing to pgwarden.
    stream
        .write_all(&query("select pg_sleep(2), 'slept'"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(2)").await;
    send_cancel(&proxy, backend_pid, secret).await;
    let messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(
        error_code(&messages),
        None,
        "the backend pid cancelled the query"
    );

    // The proxy's key works (sent after a refused SSLRequest this time).
    stream
        .write_all(&query("select pg_sleep(30)"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(30)").await;
    send_cancel_after_ssl_request(&proxy, pid, secret).await;
    let messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(error_code(&messages).as_deref(), Some("57014"));

    // Two clients get different keys.
    let (_other, other_pid, other_secret) = raw_login(&proxy).await;
    assert_ne!((pid, secret), (other_pid, other_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_clients_key_cancels_nothing_on_its_old_server() {
    // pool_size 1: the second client gets the very server the first one used.
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&format!(
        r#"
auth_type = "trust"
pool_mode = "session"
pool_size = 1
[databases."*"]
host = "127.0.0.1"
port = {}
"#,
        pg.port
    ))
    .await;
    let admin = pg.admin().await;

    let (mut first, old_pid, old_secret) = raw_login(&proxy).await;
    let first_backend =
        first_value(&raw_query(&mut first, "select pg_backend_pid()", READ_DEADLINE).await);
    first.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    drop(first);

    let (mut second, pid, secret) = raw_login(&proxy).await;
    let second_backend =
        first_value(&raw_query(&mut second, "select pg_backend_pid()", READ_DEADLINE).await);
    assert_eq!(first_backend, second_backend, "the server was reused");
    assert_ne!((pid, secret), (old_pid, old_secret), "keys are not reused");

    second
        .write_all(&query("select pg_sleep(2), 'slept'"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(2)").await;
    send_cancel(&proxy, old_pid, old_secret).await;
    let messages = read_until_ready(&mut second, READ_DEADLINE).await;
    assert_eq!(
        error_code(&messages),
        None,
        "a retired key cancelled another client's query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_transaction_mode_a_key_follows_its_client_not_the_server() {
    // pool_size 1: both clients take turns on the same server.
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&format!(
        r#"
auth_type = "trust"
pool_mode = "transaction"
pool_size = 1
[databases."*"]
host = "127.0.0.1"
port = {}
"#,
        pg.port
    ))
    .await;
    let admin = pg.admin().await;

    let (mut a, a_pid, a_secret) = raw_login(&proxy).await;
    let (mut b, _, _) = raw_login(&proxy).await;
    let a_backend = first_value(&raw_query(&mut a, "select pg_backend_pid()", READ_DEADLINE).await);
    let b_backend = first_value(&raw_query(&mut b, "select pg_backend_pid()", READ_DEADLINE).await);
    assert_eq!(a_backend, b_backend, "one server for both");

    // A is idle (holds no server) while B runs on the server A used: A's key cancels nothing.
    b.write_all(&query("select pg_sleep(2), 'slept'"))
        .await
        .unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(2)").await;
    send_cancel(&proxy, a_pid, a_secret).await;
    let messages = read_until_ready(&mut b, READ_DEADLINE).await;
    assert_eq!(error_code(&messages), None, "A's key cancelled B's query");

    // While A runs a query, A's key cancels it.
    let started = Instant::now();
    a.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_running(&admin, "trust_user", "pg_sleep(30)").await;
    send_cancel(&proxy, a_pid, a_secret).await;
    let messages = read_until_ready(&mut a, READ_DEADLINE).await;
    assert_eq!(error_code(&messages).as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        first_value(&raw_query(&mut b, "select 'b goes on'", READ_DEADLINE).await),
        "b goes on"
    );
    assert_eq!(
        first_value(&raw_query(&mut a, "select 'a goes on'", READ_DEADLINE).await),
        "a goes on"
    );
}
