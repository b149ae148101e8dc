//! Client-side helpers shared by the integration tests: proxy configurations in front of a
//! [`PgServer`], and small query helpers over tokio-postgres.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{describe, start_proxy, PgServer, Proxy};

/// A session-mode configuration (pool_size 5) routing every database to `pg`: clients log
/// in with `auth_type`, app's password logs in to the server; `extra` is added as top-level
/// lines.
pub fn session_config(pg: &PgServer, auth_type: &str, extra: &str) -> String {
    format!(
        r#"
auth_type = "{auth_type}"
pool_mode = "session"
pool_size = 5
{extra}
[databases."*"]
host = "127.0.0.1"
port = {}
[users.app]
password = "app_pw"
"#,
        pg.port
    )
}

/// A throwaway Postgres and a pgwarden with [`session_config`] in front of it.
pub async fn session_setup(auth_type: &str) -> (PgServer, Proxy) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&session_config(&pg, auth_type, "")).await;
    (pg, proxy)
}

/// A `pool_mode` configuration with a single server (pool_size 1, a 3 s
/// query_wait_timeout) routing every database to `pg`; clients and server use trust.
pub fn one_server_config(pg: &PgServer, pool_mode: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"{pool_mode}\"\npool_size = 1\nquery_wait_timeout = \"3s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    )
}

/// `head`, then the top-level `key = value` lines of `settings`, preceded by those of
/// `defaults` that `settings` does not set, then a wildcard route to `host`:`port` on which
/// app logs in with its password.
pub fn pool_config(
    head: &str,
    defaults: &[(&str, &str)],
    settings: &[(&str, &str)],
    host: &str,
    port: u16,
) -> String {
    let mut toml = String::from(head);
    for (key, value) in defaults {
        if !settings.iter().any(|(k, _)| k == key) {
            toml.push_str(&format!("{key} = {value}\n"));
        }
    }
    for (key, value) in settings {
        toml.push_str(&format!("{key} = {value}\n"));
    }
    toml.push_str(&format!(
        "[databases.\"*\"]\nhost = \"{host}\"\nport = {port}\n[users.app]\npassword = \"app_pw\"\n"
    ));
    toml
}

/// `SELECT <expr>::text` on `client`, as one string (NULL as `None`).
pub async fn text(client: &Client, expr: &str) -> Option<String> {
    let sql = format!("SELECT ({expr})::text");
    let row = client.query_one(sql.as_str(), &[]).await;
    row.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

/// The text of every cell of every row a simple query returned, row by row.
pub fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
