//! Client-side caps as a user meets them: `max_client_conn` refuses the connection beyond it
//! with 53300 naming the cap (and frees the slot when a client leaves), and
//! `client_login_timeout` ends a handshake that stalls.

mod common;

use std::time::{Duration, Instant};

use common::{describe, start_proxy, PgServer};
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
