//! The front door as strangers meet it. A client refused for `max_client_conn` is refused
//! after its startup phase (SSLRequest answered first), so psql and pgbench show the cap
//! and its value; a cancel request still gets through while the proxy is full. Connections
//! that have not logged in have a budget of their own (`max_pending_logins`, `…_per_addr`)
//! in which the longest waiting gives way, so silent sockets never lock out a client that
//! logs in promptly, and a flood from one address never crowds out another's logins.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::hostile;
use common::identity::{connect_as, As};
use common::pgbench::pgbench_command;
use common::process::Pgwarden;
use common::raw::{fields, packet, startup, GSSENC_REQUEST, PROTOCOL_3_0, SSL_REQUEST};
use common::segment::Conn;
use common::{pg_bin, start_proxy, PgServer, Proxy};
use pgwarden::refusals::Cap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::NoTls;

/// How long anything awaited here may take; a prompt login takes milliseconds, and the
/// holes fixed here made clients wait `client_login_timeout` (60 s).
const PROMPTLY: Duration = Duration::from_secs(5);

const FULL: &str = "too many client connections (max_client_conn = 5)";

fn config(pg: &PgServer, extra: &str) -> String {
    format!(
        "auth_type = \"scram-sha-256\"\npool_size = 5\nmax_client_conn = 5\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

/// Polls `done` until it holds; panics naming `what` after [`PROMPTLY`].
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP connection from `ip` (a loopback address) that sends nothing, once pgwarden has
/// taken it in: it is the `nth` such socket of the test, and while no login is under way
/// each of them is either pending or has given way.
async fn silent_from(proxy: &Proxy, ip: &str, nth: u64) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap();
    let ctx = proxy.ctx.clone();
    wait_until(&format!("silent socket {nth} taken in"), || {
        let gave_way = ctx.refusals.get(Cap::MaxPendingLogins)
            + ctx.refusals.get(Cap::MaxPendingLoginsPerAddr);
        ctx.prelogin.pending() as u64 + gave_way == nth
    })
    .await;
    stream
}

/// Everything the peer sends until it closes, within [`PROMPTLY`].
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut all))
        .await
        .expect("pgwarden did not close the connection")
        .ok();
    all
}

/// The one FATAL ErrorResponse that is all of `bytes`: its fields.
fn only_error(bytes: &[u8]) -> HashMap<u8, String> {
    assert_eq!(
        bytes.first(),
        Some(&b'E'),
        "not an ErrorResponse: {bytes:?}"
    );
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    assert_eq!(
        len + 1,
        bytes.len(),
        "one ErrorResponse, then close: {bytes:?}"
    );
    let fields = fields(&bytes[5..]);
    assert_eq!(fields.get(&b'V').map(String::as_str), Some("FATAL"));
    fields
}

/// The SQLSTATE and message of what a closed connection was told.
async fn told(stream: &mut TcpStream) -> (String, String) {
    let fields = only_error(&read_to_end(stream).await);
    let get = |c| fields.get(&c).cloned().unwrap_or_default();
    (get(b'C'), get(b'M'))
}

async fn one(client: &tokio_postgres::Client) -> i32 {
    client.query_one("select 1", &[]).await.unwrap().get(0)
}

/// A client logged in (SCRAM) within [`PROMPTLY`], and `select 1` answered.
async fn logs_in_promptly(proxy: &Proxy, who: As<'_>) -> tokio_postgres::Client {
    let login = tokio::time::timeout(PROMPTLY, connect_as(proxy.addr, who));
    let client = login.await.expect("login within 5s").expect("login");
    assert_eq!(one(&client).await, 1);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_proxy_answers_the_encryption_request_then_refuses_after_the_startup_packet() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "")).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(logs_in_promptly(&proxy, As::app()).await);
    }
    for request in [SSL_REQUEST, GSSENC_REQUEST] {
        let mut raw = TcpStream::connect(proxy.addr).await.unwrap();
        raw.write_all(&packet(request, &[])).await.unwrap();
        let mut answer = [0u8; 1];
        raw.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], b'N', "the answer to the encryption request");
        let hello = startup(PROTOCOL_3_0, &[("user", "app"), ("database", "appdb")]);
        raw.write_all(&hello).await.unwrap();
        assert_eq!(told(&mut raw).await, ("53300".to_owned(), FULL.to_owned()));
    }
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConn), 2);

    // A cancel request still reaches the query it is meant for while the proxy is full.
    let sleeper = clients.pop().unwrap();
    let token = sleeper.cancel_token();
    let running = tokio::spawn(async move {
        let result = sleeper.simple_query("select pg_sleep(30)").await;
        (sleeper, result)
    });
    let admin = pg.admin().await;
    let sql = "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'";
    let deadline = Instant::now() + PROMPTLY;
    while admin.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let to_proxy = TcpStream::connect(proxy.addr).await.unwrap();
    token.cancel_query_raw(to_proxy, NoTls).await.unwrap();
    let (sleeper, result) = tokio::time::timeout(PROMPTLY, running)
        .await
        .expect("the cancel request did not reach the query")
        .unwrap();
    let err = result.expect_err("pg_sleep(30) was not cancelled");
    let code = err.as_db_error().map(|e| e.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");
    assert_eq!(one(&sleeper).await, 1);
    // The forwarded cancel request is no refusal.
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConn), 2);

    // Refusing is bounded: while REFUSING_AT_ONCE connections are in their startup phase
    // (here: silent), the next one is told at once, without being read.
    let mut refusing = Vec::new();
    for _ in 0..pgwarden::listener::REFUSING_AT_ONCE {
        refusing.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut beyond = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        told(&mut beyond).await,
        ("53300".to_owned(), FULL.to_owned())
    );
    // Told before any of the silent ones reached their deadline (5 s).
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConn), 3);
    drop(refusing);

    // A slot freed is a slot taken: the next client is in.
    drop(sleeper);
    let admission = proxy.ctx.admission.clone();
    wait_until("the slot freed", || admission.logged_in() == 4).await;
    clients.push(logs_in_promptly(&proxy, As::app()).await);
    drop(clients);
    proxy.stop().await;
}

/// Runs `psql` (sslmode as libpq's default, prefer) as `user` on `db` at `port`.
fn psql(port: u16, user: &str, db: &str) -> Output {
    let conninfo = format!("host=127.0.0.1 port={port} user={user} dbname={db}");
    Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d", &conninfo, "-c", "select 'psql ok'"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGGSSENCMODE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_name_max_client_conn_and_silent_sockets_lock_nobody_out() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let toml = hostile::config(pg.port, "session", 5, "max_client_conn = 5");
    let proxy = Pgwarden::with_config(&toml).await;
    let (user, db) = ("trust_user", "postgres");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(Conn::login(proxy.addr(), user, db).await.unwrap());
    }
    let port = proxy.port;
    let psql = tokio::task::spawn_blocking(move || psql(port, user, db));
    let psql = psql.await.unwrap();
    let stderr = String::from_utf8_lossy(&psql.stderr);
    assert!(!psql.status.success(), "psql got in: {stderr}");
    assert!(
        stderr.contains(&format!("FATAL:  {FULL}")),
        "psql said: {stderr}"
    );

    let mut pgbench = pgbench_command(port, user, "", db, &["-n", "-S", "-t", "1"]);
    let pgbench = tokio::task::spawn_blocking(move || pgbench.output().expect("run pgbench"));
    let pgbench = pgbench.await.unwrap();
    let stderr = String::from_utf8_lossy(&pgbench.stderr);
    assert!(
        pgbench.status.code().is_some_and(|code| code != 0),
        "pgbench exited {} (a signal?): {stderr}",
        pgbench.status
    );
    assert!(stderr.contains(FULL), "pgbench said: {stderr}");

    // Free the slots; then fifty sockets that send nothing do not keep anyone out.
    drop(held);
    let deadline = Instant::now() + PROMPTLY;
    while proxy.serves(user, db, PROMPTLY).await.is_err() {
        assert!(Instant::now() < deadline, "the slots were never freed");
    }
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    let mut logged_in = Vec::new();
    for _ in 0..3 {
        let conn = tokio::time::timeout(PROMPTLY, Conn::login(proxy.addr(), user, db));
        logged_in.push(conn.await.expect("login within 5s").unwrap());
    }
    drop(logged_in);
    proxy.assert_healthy().await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_give_way_to_a_client_that_logs_in_promptly() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_pending_logins = 5")).await;
    let mut silent = Vec::new();
    for nth in 1..=5 {
        silent.push(silent_from(&proxy, "127.0.0.1", nth).await);
    }
    // The pending budget is full; a newcomer takes the place of the one waiting longest.
    let first = logs_in_promptly(&proxy, As::app()).await;
    let (code, message) = told(&mut silent[0]).await;
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections logging in at once; this one waited longest \
         (max_pending_logins = 5)"
    );
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLogins), 1);
    assert_eq!(proxy.ctx.prelogin.pending(), 4, "the other four still wait");

    // Fifty more: the budget never grows, and logged-in clients fill max_client_conn.
    for nth in 6..=55 {
        silent.push(silent_from(&proxy, "127.0.0.1", nth).await);
    }
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLogins), 50);
    let mut clients = vec![first];
    for _ in 0..4 {
        clients.push(logs_in_promptly(&proxy, As::app()).await);
    }
    // Only the first of them found the budget full: each place freed by a login is the
    // next one's.
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLogins), 51);
    assert_eq!(proxy.ctx.prelogin.pending(), 4);
    assert_eq!(proxy.ctx.admission.logged_in(), 5);
    // Each of the 51 that gave way was told so (the first one was read above).
    for evicted in &mut silent[1..51] {
        assert_eq!(told(evicted).await.0, "53300");
    }
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConn), 0);
    drop((silent, clients));
    let ctx = proxy.ctx.clone();
    wait_until("every count back to zero", || {
        ctx.prelogin.pending() == 0 && ctx.admission.counted() == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_gives_way_within_itself() {
    let pg = PgServer::start();
    let extra = "max_pending_logins = 10\nmax_pending_logins_per_addr = 3";
    let proxy = start_proxy(&config(&pg, extra)).await;
    // The longest waiting of all, but from another address.
    let mut other = silent_from(&proxy, "127.0.0.3", 1).await;
    let mut flood = Vec::new();
    for nth in 2..=21 {
        flood.push(silent_from(&proxy, "127.0.0.2", nth).await);
    }
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLoginsPerAddr), 17);
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLogins), 0);
    let (code, message) = told(&mut flood[0]).await;
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections logging in at once from address 127.0.0.2; this one waited \
         longest (max_pending_logins_per_addr = 3)"
    );
    // Clients from another address and from the flooding one both get in.
    let from_4 = logs_in_promptly(&proxy, As::app().from("127.0.0.4")).await;
    let from_2 = logs_in_promptly(&proxy, As::app().from("127.0.0.2")).await;
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLoginsPerAddr), 18);
    assert_eq!(
        proxy.ctx.prelogin.pending(),
        3,
        "127.0.0.3 and two of the flood"
    );
    drop(flood);
    let prelogin = proxy.ctx.prelogin.clone();
    wait_until("the flood gone", || prelogin.pending() == 1).await;
    other
        .write_all(&startup(PROTOCOL_3_0, &[("user", "app")]))
        .await
        .unwrap();
    let mut reply = [0u8; 1];
    other.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        reply[0], b'R',
        "the oldest pending login, from elsewhere, is still served"
    );
    drop((from_4, from_2, other));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_finishes_after_the_last_slot_went_is_refused_naming_max_client_conn() {
    let pg = PgServer::start();
    let toml = common::clients::session_config(
        &pg,
        "trust",
        "max_client_conn = 1\nmax_pending_logins = 5",
    );
    let proxy = start_proxy(&toml).await;
    // Accepted while a slot was free; it has not logged in, so it holds none.
    let mut late = silent_from(&proxy, "127.0.0.1", 1).await;
    let prompt = Conn::login(proxy.addr, "trust_user", "postgres")
        .await
        .unwrap();
    let admission = proxy.ctx.admission.clone();
    wait_until("the prompt client counted", || admission.logged_in() == 1).await;
    let hello = startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "postgres")],
    );
    late.write_all(&hello).await.unwrap();
    let (code, message) = told(&mut late).await;
    assert_eq!(code, "53300");
    assert_eq!(message, "too many client connections (max_client_conn = 1)");
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConn), 1);
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxPendingLogins), 0);
    drop(prompt);
    proxy.stop().await;
}
