//! A pgwarden running in-process on a free port of 127.0.0.1, for integration tests: the
//! configuration from `pgwarden::config::from_toml`, served by `pgwarden::run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{describe, encode, try_connect_tcp};

/// A running proxy. Cancelled (not awaited) on drop; call [`Proxy::stop`] to await it.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// What the proxy's client tasks share: its pools, client caps and refusal counters.
    pub ctx: pgwarden::context::Context,
    /// `None` once [`Proxy::stop`] has taken it.
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

/// Parses `toml` as a pgwarden configuration (panicking on errors), binds 127.0.0.1:0 and
/// spawns `pgwarden::run` on the current runtime. The listener is bound before this
/// returns, so clients may connect at once.
pub async fn start_proxy(toml: &str) -> Proxy {
    let config = pgwarden::config::from_toml(toml)
        .unwrap_or_else(|errors| panic!("invalid test configuration: {errors:?}\n{toml}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let shutdown = CancellationToken::new();
    let ctx = pgwarden::context::Context::new(Arc::new(config), shutdown.clone());
    let run = pgwarden::listener::serve(vec![listener], ctx.clone());
    Proxy {
        addr,
        shutdown,
        ctx,
        handle: Some(tokio::spawn(run)),
    }
}

impl Proxy {
    /// `postgres://user:password@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}/{db}",
            encode(user),
            encode(password),
            self.addr
        )
    }

    /// A connection through the proxy, its connection task spawned; panics on error.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Client {
        let result = self.try_connect(user, password, db).await;
        result.unwrap_or_else(|e| {
            panic!(
                "connect through pgwarden as {user} (db {db}): {}",
                describe(&e)
            )
        })
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        try_connect_tcp("127.0.0.1", self.addr.port(), user, password, db).await
    }

    /// Cancels the shutdown token and waits (up to 10 s) for `run` to return; panics if it
    /// returned an error, panicked or did not stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("stop is called once");
        match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("pgwarden::run failed: {e}"),
            Ok(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Ok(Err(join)) => panic!("pgwarden task: {join}"),
            Err(_) => panic!("pgwarden did not stop within 10s of shutdown"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
