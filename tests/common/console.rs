//! The admin console from a test: a configuration with admin and stats users, connecting
//! to the console database, and reading its answers (column names, rows, SQLSTATEs).

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{describe, try_connect_tcp, PgServer, Proxy};

/// A transaction-pooling configuration (SCRAM) with a route `appdb` to `pg` on which
/// pgwarden logs in as app with the route's password, `admin` (admin_pw) in admin_users,
/// `stats` (stats_pw) in stats_users, and `app` (app_pw) a plain user; `extra` is added as
/// top-level lines.
pub fn console_config(pg: &PgServer, extra: &str) -> String {
    format!(
        r#"pool_mode = "transaction"
pool_size = 4
query_wait_timeout = "5s"
shutdown_timeout = "2s"
admin_users = "admin"
stats_users = "stats"
{extra}
[databases.appdb]
host = "127.0.0.1"
port = {port}
user = "app"
password = "app_pw"
[users.admin]
password = "admin_pw"
[users.stats]
password = "stats_pw"
[users.app]
password = "app_pw"
"#,
        port = pg.port
    )
}

/// A console session as `user`.
pub async fn console(proxy: &Proxy, user: &str, password: &str) -> Client {
    let port = proxy.addr.port();
    let client = try_connect_tcp("127.0.0.1", port, user, password, "pgwarden").await;
    client.unwrap_or_else(|e| panic!("console login as {user}: {}", describe(&e)))
}

/// One SHOW (or other) command's column names and rows.
pub struct Answer {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Answer {
    /// The cell of `column` in `row`.
    pub fn cell(&self, row: &[Option<String>], column: &str) -> Option<String> {
        let at = self.columns.iter().position(|c| c == column);
        let at = at.unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns));
        row[at].clone()
    }

    /// The first row whose `column` is `value`.
    pub fn row_where(&self, column: &str, value: &str) -> Option<&Vec<Option<String>>> {
        (self.rows.iter()).find(|row| self.cell(row, column).as_deref() == Some(value))
    }

    /// Every cell, for searching the whole answer.
    pub fn text(&self) -> String {
        let cells = self.rows.iter().flatten().flatten();
        cells.cloned().collect::<Vec<_>>().join("|")
    }
}

pub async fn ask(client: &Client, sql: &str) -> Answer {
    let messages = client.simple_query(sql).await;
    let messages = messages.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let mut answer = Answer {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                answer.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => answer.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => {}
        }
    }
    answer
}

/// The SQLSTATE and message of a command that must fail.
pub async fn refused(client: &Client, sql: &str) -> (String, String) {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => panic!("{sql}: not a server error: {}", describe(&e)),
        },
    }
}
