//! Database routing through pgwarden: named entries (real database name, user and password
//! overrides, Unix-socket hosts), and the `"*"` wildcard that forwards any name unchanged.

mod common;

use common::clients::text;
use common::{describe, start_proxy, PgServer};
use tokio_postgres::Client;

async fn current_database(client: &Client) -> String {
    text(client, "current_database()").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_entry_maps_to_its_real_database() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n\
         [databases.alias]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"appdb\"\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let client = proxy.connect("app", "app_pw", "alias").await;
    assert_eq!(current_database(&client).await, "appdb");
    assert_eq!(text(&client, "current_user").await.unwrap(), "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_entry_with_a_user_logs_every_client_in_as_that_user() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\n\
         [databases.shared]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"appdb\"\n\
         user = \"scram_user\"\npassword = \"scram_pw\"\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    for user in ["app", "trust_user", "someone_else"] {
        let client = proxy
            .try_connect(user, "", "shared")
            .await
            .unwrap_or_else(|e| panic!("{user}: {}", describe(&e)));
        assert_eq!(
            text(&client, "current_user").await.unwrap(),
            "scram_user",
            "{user}"
        );
        assert_eq!(
            text(&client, "session_user").await.unwrap(),
            "scram_user",
            "{user}"
        );
        assert_eq!(current_database(&client).await, "appdb", "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wildcard_forwards_any_database_name_unchanged() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    for db in ["postgres", "appdb"] {
        let client = proxy.connect("app", "app_pw", db).await;
        assert_eq!(current_database(&client).await, db);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_entry_wins_over_the_wildcard() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [databases.postgres]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"appdb\"\n\
         [users.app]\npassword = \"app_pw\"\n",
        port = pg.port
    );
    let proxy = start_proxy(&toml).await;
    let named = proxy.connect("app", "app_pw", "postgres").await;
    assert_eq!(current_database(&named).await, "appdb");
    let wildcard = proxy.connect("app", "app_pw", "appdb").await;
    assert_eq!(current_database(&wildcard).await, "appdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_host_may_be_the_unix_socket_directory() {
    let pg = PgServer::start();
    // The socket is `local all all trust`, so app needs no password at the server.
    let toml = format!(
        "auth_type = \"trust\"\n\
         [databases.local]\nhost = {:?}\nport = {}\ndbname = \"appdb\"\n",
        pg.socket_dir.display().to_string(),
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let client = proxy.connect("app", "", "local").await;
    assert_eq!(current_database(&client).await, "appdb");
    assert_eq!(text(&client, "current_user").await.unwrap(), "app");
    // A backend reached over a Unix socket has no server address.
    assert_eq!(text(&client, "inet_server_addr()").await, None);
}
