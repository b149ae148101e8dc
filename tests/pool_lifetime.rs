//! How long pools live: a pool whose server login never succeeded goes when its last
//! client leaves (300 made-up database names under the wildcard route leave no pool
//! behind), and a pool made for the wildcard route goes after `autodb_idle_timeout`
//! unused, closing its servers, while named routes' pools stay.

mod common;

use std::time::{Duration, Instant};

use common::{describe, start_proxy, PgServer};

const USER: &str = "trust_user";

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_database_names_leave_no_pool() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    for batch in 0..12 {
        let attempts = (0..25).map(|i| {
            let proxy = &proxy;
            async move {
                let db = format!("made_up_{batch}_{i}");
                let err = match proxy.try_connect(USER, "", &db).await {
                    Ok(_) => panic!("{db}: connected"),
                    Err(err) => err,
                };
                let code = err.as_db_error().map(|e| e.code().code().to_owned());
                assert_eq!(code.as_deref(), Some("3D000"), "{db}: {}", describe(&err));
            }
        });
        futures_util::future::join_all(attempts).await;
    }
    let pools = &proxy.ctx.pools;
    until("every pool of a made-up name is gone", || pools.is_empty()).await;
    assert_eq!(pools.server_connections(), 0);
    // A real database still gets a pool, and a served client.
    let client = proxy.connect(USER, "", "postgres").await;
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pools.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wildcard_pool_goes_after_autodb_idle_timeout_and_closes_its_servers() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\npool_mode = \"session\"\nautodb_idle_timeout = \"1s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {port}\n",
        port = pg.port
    );
    let proxy = start_proxy(&toml).await;
    let pools = &proxy.ctx.pools;
    let named = proxy.connect(USER, "", "appdb").await;
    named.simple_query("SELECT 1").await.unwrap();
    drop(named);
    let auto = proxy.connect(USER, "", "postgres").await;
    auto.simple_query("SELECT 1").await.unwrap();
    // In use past the timeout: it stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    auto.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pools.len(), 2);
    drop(auto);
    pg.wait_backends(USER, 2).await;

    until("the idle wildcard pool is gone", || pools.len() == 1).await;
    // Its server closed; the named route's pool and its server stay.
    pg.wait_backends(USER, 1).await;
    let left: Vec<String> = pools.all().iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(left, ["appdb/trust_user"]);
    assert_eq!(pools.server_connections(), 1);

    // A client arriving afterwards gets a fresh pool.
    let again = proxy.connect(USER, "", "postgres").await;
    again.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pools.len(), 2);
}
