//! Clients with an identity of their own, for the cap and queue tests: an
//! `application_name`, and a loopback source address (127.0.0.2, 127.0.0.3, …; all of
//! 127/8 is local on Linux).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_postgres::{Client, NoTls};

/// Who a test client is.
#[derive(Debug, Clone, Copy)]
pub struct As<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub db: &'a str,
    pub app: Option<&'a str>,
    /// Bind the client socket to this address first.
    pub from: Option<IpAddr>,
}

impl<'a> As<'a> {
    /// `app`/`app_pw` on `appdb`, no application_name, from 127.0.0.1.
    pub fn app() -> As<'static> {
        As {
            user: "app",
            password: "app_pw",
            db: "appdb",
            app: None,
            from: None,
        }
    }

    pub fn named(self, app: &'a str) -> As<'a> {
        As {
            app: Some(app),
            ..self
        }
    }

    pub fn from(self, ip: &str) -> As<'a> {
        As {
            from: Some(ip.parse().expect("an IP address")),
            ..self
        }
    }

    pub fn user(self, user: &'a str, password: &'a str) -> As<'a> {
        As {
            user,
            password,
            ..self
        }
    }

    pub fn db(self, db: &'a str) -> As<'a> {
        As { db, ..self }
    }
}

/// Connects to `addr` as `who` over TCP and spawns the connection task.
pub async fn connect_as(addr: SocketAddr, who: As<'_>) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.user(who.user).password(who.password).dbname(who.db);
    if let Some(app) = who.app {
        config.application_name(app);
    }
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = who.from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .expect("bind a loopback source address");
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .expect("TCP connect within 10s")
        .expect("TCP connect to pgwarden");
    let _ = stream.set_nodelay(true);
    let (client, connection) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE and message of a refusal; panics if `result` is not a server error.
pub fn refusal<T>(result: Result<T, tokio_postgres::Error>) -> (String, String) {
    match result {
        Ok(_) => panic!("expected a refusal, got a connection / result"),
        Err(err) => match err.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => panic!("not a server error: {}", super::describe(&err)),
        },
    }
}
