//! Client-side caps as a user meets them: `max_client_conn` and the per-identity caps
//! (`max_client_conn_per_user`, `…_database`, `…_addr`, `…_app`) refuse the connection
//! beyond them with 53300 naming the cap, its value and the identity (and free the slot
//! when a client leaves; failed logins never take one), and `client_login_timeout` ends a
//! handshake that stalls.

mod common;

use std::time::{Duration, Instant};

use common::identity::{connect_as, refusal, As};
use common::{describe, start_proxy, PgServer, Proxy};
use pgwarden::refusals::Cap;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn config(pg: &PgServer, extra: &str) -> String {
    format!(
        "auth_type = \"scram-sha-256\"\npool_size = 5\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_the_next_client_with_53300_and_frees_on_leave() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_client_conn = 2")).await;
    let first = proxy.connect("app", "app_pw", "appdb").await;
    let second = proxy.connect("app", "app_pw", "appdb").await;

    let refused = match proxy.try_connect("app", "app_pw", "appdb").await {
        Ok(_) => panic!("a third client was admitted over max_client_conn = 2"),
        Err(err) => err,
    };
    let db = refused
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {}", describe(&refused)));
    assert_eq!(db.code().code(), "53300");
    assert_eq!(
        db.message(),
        "too many client connections (max_client_conn = 2)"
    );

    // Both admitted clients still work; when one leaves, its slot is free again.
    for client in [&first, &second] {
        let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let third = loop {
        match proxy.try_connect("app", "app_pw", "appdb").await {
            Ok(client) => break client,
            Err(err) if Instant::now() < deadline => {
                let code = err.as_db_error().map(|e| e.code().code().to_owned());
                assert_eq!(code.as_deref(), Some("53300"), "{}", describe(&err));
                tokio::task::yield_now().await;
            }
            Err(err) => panic!("slot not freed after a client left: {}", describe(&err)),
        }
    };
    let row = third
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_ended_by_client_login_timeout() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "client_login_timeout = \"2s\"")).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut answer))
        .await
        .expect("a client that sends nothing was not disconnected")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed too early: {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("08P01") && text.contains("client_login_timeout"),
        "answer: {text:?}"
    );

    // The stalled client took no slot for good: a normal login works.
    let client = proxy.connect("app", "app_pw", "appdb").await;
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

async fn one(client: &tokio_postgres::Client) -> i32 {
    client.query_one("select 1", &[]).await.unwrap().get(0)
}

/// Every client gone: no slot is still counted, and no refusal beyond `refused` was made.
async fn slots_freed(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.ctx.admission.counted() > 0 {
        assert!(
            Instant::now() < deadline,
            "client slots still counted after every client left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_per_user_refuses_that_user_only_and_failed_logins_take_no_slot() {
    let pg = PgServer::start();
    let toml = format!(
        "{}[users.scram_user]\npassword = \"scram_pw\"\n",
        config(&pg, "max_client_conn_per_user = 2")
    );
    let proxy = start_proxy(&toml).await;
    // Wrong passwords first: refused as such, and holding nothing afterwards.
    for _ in 0..3 {
        let (code, _) = refusal(connect_as(proxy.addr, As::app().user("app", "wrong")).await);
        assert_eq!(code, "28P01");
    }
    let first = connect_as(proxy.addr, As::app()).await.unwrap();
    let second = connect_as(proxy.addr, As::app()).await.unwrap();
    let (code, message) = refusal(connect_as(proxy.addr, As::app()).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections for user \"app\" (max_client_conn_per_user = 2)"
    );
    // Another user is not affected, and both admitted clients work.
    let other = connect_as(proxy.addr, As::app().user("scram_user", "scram_pw")).await;
    assert_eq!(one(&other.unwrap()).await, 1);
    assert_eq!((one(&first).await, one(&second).await), (1, 1));
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConnPerUser), 1);

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let third = loop {
        match connect_as(proxy.addr, As::app()).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(err) => panic!("slot not freed after a client left: {}", describe(&err)),
        }
    };
    assert_eq!(one(&third).await, 1);
    drop((second, third));
    slots_freed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_per_database_and_its_per_database_override() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\nmax_client_conn_per_database = 1\n\
         [databases.appdb]\nport = {port}\nmax_client_conn_per_database = 2\n\
         [databases.postgres]\nport = {port}\n[users.app]\npassword = \"app_pw\"\n",
        port = pg.port
    );
    let proxy = start_proxy(&toml).await;
    let appdb = [
        connect_as(proxy.addr, As::app()).await.unwrap(),
        connect_as(proxy.addr, As::app()).await.unwrap(),
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app()).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections for database \"appdb\" (max_client_conn_per_database = 2)"
    );
    let postgres = connect_as(proxy.addr, As::app().db("postgres"))
        .await
        .unwrap();
    let (code, message) = refusal(connect_as(proxy.addr, As::app().db("postgres")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections for database \"postgres\" (max_client_conn_per_database = 1)"
    );
    assert_eq!(one(&postgres).await + one(&appdb[1]).await, 2);
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConnPerDatabase), 2);
    drop((appdb, postgres));
    slots_freed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_per_addr_counts_source_addresses_or_their_network() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_client_conn_per_addr = 2")).await;
    let from_2 = [
        connect_as(proxy.addr, As::app().from("127.0.0.2"))
            .await
            .unwrap(),
        connect_as(proxy.addr, As::app().from("127.0.0.2"))
            .await
            .unwrap(),
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app().from("127.0.0.2")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections from address 127.0.0.2 (max_client_conn_per_addr = 2)"
    );
    let from_3 = connect_as(proxy.addr, As::app().from("127.0.0.3"))
        .await
        .unwrap();
    assert_eq!(one(&from_3).await + one(&from_2[0]).await, 2);
    drop((from_2, from_3));
    slots_freed(&proxy).await;

    // With a /24 prefix, 127.0.0.2 and 127.0.0.3 are one address.
    let toml = config(
        &pg,
        "max_client_conn_per_addr = 2\nclient_addr_prefix_v4 = 24",
    );
    let proxy = start_proxy(&toml).await;
    let held = [
        connect_as(proxy.addr, As::app().from("127.0.0.2"))
            .await
            .unwrap(),
        connect_as(proxy.addr, As::app().from("127.0.0.3"))
            .await
            .unwrap(),
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app().from("127.0.0.4")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections from address 127.0.0.0/24 (max_client_conn_per_addr = 2)"
    );
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConnPerAddr), 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_clients_are_exempt_from_the_address_cap() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "max_client_conn_per_addr = 1\nunix_socket_dir = \"{}\"",
        dir.path().display()
    );
    let proxy = start_proxy(&config(&pg, &extra)).await;
    let tcp = connect_as(proxy.addr, As::app()).await.unwrap();
    let mut unix = Vec::new();
    for _ in 0..3 {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(dir.path())
            .port(proxy.addr.port())
            .user("app")
            .password("app_pw")
            .dbname("appdb");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        assert_eq!(one(&client).await, 1);
        unix.push(client);
    }
    let (code, _) = refusal(connect_as(proxy.addr, As::app()).await);
    assert_eq!(code, "53300");
    drop((tcp, unix));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_per_app_counts_application_names() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg, "max_client_conn_per_app = 2")).await;
    let billing = [
        connect_as(proxy.addr, As::app().named("billing"))
            .await
            .unwrap(),
        connect_as(proxy.addr, As::app().named("billing"))
            .await
            .unwrap(),
    ];
    let (code, message) = refusal(connect_as(proxy.addr, As::app().named("billing")).await);
    assert_eq!(code, "53300");
    assert_eq!(
        message,
        "too many connections for application \"billing\" (max_client_conn_per_app = 2)"
    );
    let web = connect_as(proxy.addr, As::app().named("web"))
        .await
        .unwrap();
    assert_eq!(one(&web).await + one(&billing[1]).await, 2);
    assert_eq!(proxy.ctx.refusals.get(Cap::MaxClientConnPerApp), 1);
    drop((billing, web));
    slots_freed(&proxy).await;
}
