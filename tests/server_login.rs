//! Logging in to a real Postgres: while logins fail (Postgres down, a wrong password)
//! clients get the cached error at once (`server login has been failing, cached error: …`
//! with Postgres' SQLSTATE) and at most one attempt per `server_login_retry` reaches the
//! server; the first success clears it. A password goes in cleartext over plain TCP only
//! when `server_allow_cleartext_password` allows it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{describe, start_proxy, PgServer};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "trust_user";
const CACHED: &str = "server login has been failing, cached error: ";

/// A TCP forwarder to Postgres that counts connections and, while "down", closes each
/// one at once (as a stopped server would refuse it).
struct Forwarder {
    port: u16,
    up: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Forwarder {
    async fn start(pg_port: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (up2, accepted2) = (up.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", pg_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { port, up, accepted }
    }

    fn attempts(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn code_and_message(
    result: Result<tokio_postgres::Client, tokio_postgres::Error>,
) -> (String, String) {
    let err = match result {
        Ok(_) => panic!("connected, expected a refusal"),
        Err(err) => err,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {}", describe(&err)));
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_clients_fail_fast_and_postgres_sees_one_attempt_per_retry() {
    let pg = PgServer::start();
    let forwarder = Forwarder::start(pg.port).await;
    let toml = format!(
        "auth_type = \"trust\"\nserver_login_retry = \"500ms\"\nquery_wait_timeout = \"10s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        forwarder.port
    );
    let proxy = start_proxy(&toml).await;
    forwarder.up.store(false, Ordering::SeqCst);

    // 50 clients at once: each gets its error promptly, and Postgres sees one attempt.
    let started = Instant::now();
    let clients = (0..50).map(|_| {
        let proxy = &proxy;
        async move {
            let at = Instant::now();
            let refused = code_and_message(proxy.try_connect(USER, "", "postgres").await);
            (at.elapsed(), refused)
        }
    });
    let answers = futures_util::future::join_all(clients).await;
    let burst = started.elapsed();
    let mut raw = 0;
    for (waited, (code, message)) in &answers {
        assert!(
            *waited < Duration::from_secs(1),
            "waited {waited:?} for {message}"
        );
        assert_eq!(code, "08001", "{message}");
        match message.strip_prefix(CACHED) {
            Some(rest) => assert!(rest.ends_with("(server_login_retry = 500ms)"), "{message}"),
            None => raw += 1,
        }
    }
    // The client whose attempt failed gets the error itself; every other one the cached
    // error. One attempt per 500 ms started (a loaded machine may stretch the burst).
    let attempts = forwarder.attempts();
    assert_eq!(raw, attempts, "{answers:?}");
    let most = 1 + (burst.as_millis() / 500) as usize;
    assert!(attempts <= most, "{attempts} attempts in {burst:?}");

    // Clients keep coming for two seconds: about one attempt per 500 ms, not one each.
    let before = forwarder.attempts();
    let until = Instant::now() + Duration::from_secs(2);
    let mut clients = 0;
    while Instant::now() < until {
        let (code, _) = code_and_message(proxy.try_connect(USER, "", "postgres").await);
        assert_eq!(code, "08001");
        clients += 1;
    }
    let attempts = forwarder.attempts() - before;
    assert!(
        attempts <= 5,
        "{attempts} attempts reached Postgres for {clients} clients"
    );
    assert!(
        clients > 2 * attempts,
        "{clients} clients, {attempts} attempts"
    );

    // Postgres is back: a client is served within about a second.
    forwarder.up.store(true, Ordering::SeqCst);
    let back = Instant::now();
    loop {
        match proxy.try_connect(USER, "", "postgres").await {
            Ok(client) => {
                client.simple_query("SELECT 1").await.unwrap();
                break;
            }
            Err(err) => {
                assert!(
                    back.elapsed() < Duration::from_secs(2),
                    "{}",
                    describe(&err)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let served = back.elapsed();
    assert!(
        served < Duration::from_millis(1500),
        "served {served:?} after Postgres came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_cached_with_postgres_sqlstate_and_text() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\nserver_login_retry = \"10s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"not_app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let original = "password authentication failed for user \"app\"";
    let (code, message) = code_and_message(proxy.try_connect("app", "", "postgres").await);
    assert_eq!((code.as_str(), message.as_str()), ("28P01", original));
    for _ in 0..5 {
        let (code, message) = code_and_message(proxy.try_connect("app", "", "postgres").await);
        assert_eq!(code, "28P01");
        assert_eq!(
            message,
            format!("{CACHED}{original} (server_login_retry = 10s)")
        );
    }
    let tried = pg.log().matches(original).count();
    assert_eq!(tried, 1, "Postgres saw {tried} logins:\n{}", pg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_goes_over_plain_tcp_only_when_allowed() {
    let pg = PgServer::start();
    let toml = |extra: &str| {
        format!(
            "auth_type = \"trust\"\n{extra}\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
             [users.pw_user]\npassword = \"pw_pw\"\n",
            pg.port
        )
    };
    let proxy = start_proxy(&toml("")).await;
    let (code, message) = code_and_message(proxy.try_connect("pw_user", "", "postgres").await);
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("cleartext") && message.contains("server_allow_cleartext_password"),
        "{message}"
    );
    let proxy = start_proxy(&toml("server_allow_cleartext_password = true")).await;
    let client = proxy.connect("pw_user", "", "postgres").await;
    client.simple_query("SELECT 1").await.unwrap();
}
