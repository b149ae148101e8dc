//! The checkout guard: a server on loan to one client, returned to its pool on release or drop.

use std::ops::{Deref, DerefMut};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::{ClientId, Pool};
use crate::server::ServerConn;

/// A server checked out of a pool. [`PooledServer::release`] resets a clean server and
/// returns it; dropping the guard instead closes the server and frees its slot, so a server
/// whose state is unknown can never reach another client.
pub struct PooledServer {
    server: Option<ServerConn>,
    pool: Pool,
    /// The client identity holding it, when the pool counts holdings
    /// (`max_server_conn_per_client`); `None` otherwise, so no clone on the hot path.
    who: Option<ClientId>,
}

impl PooledServer {
    pub(super) fn new(server: ServerConn, pool: Pool, who: Option<ClientId>) -> Self {
        PooledServer {
            server: Some(server),
            pool,
            who,
        }
    }

    /// Returns the server to the pool after running the reset query, if the session left it
    /// `clean` (idle, nothing in flight); otherwise closes it.
    pub async fn release(mut self, clean: bool) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if !clean {
            abandon(&mut server).await;
            self.pool.discard(
                server,
                "client left it mid-transaction or mid-request",
                self.who.as_ref(),
            );
            return;
        }
        let settings = self.pool.settings();
        let reset = tokio::time::timeout(
            settings.connect_timeout,
            server.reset(&settings.reset_query),
        )
        .await;
        match reset {
            Ok(Ok(())) => self.pool.checkin(server, self.who.as_ref()),
            Ok(Err(err)) => {
                debug!(cause = %err, "reset failed");
                self.pool
                    .discard(server, "reset query failed", self.who.as_ref());
            }
            Err(_) => self
                .pool
                .discard(server, "reset query timed out", self.who.as_ref()),
        }
    }

    /// Returns an idle server as it is, without a reset: transaction pooling, where the
    /// next client's settings are applied on checkout.
    pub fn checkin_idle(mut self) {
        if let Some(server) = self.server.take() {
            self.pool.checkin(server, self.who.as_ref());
        }
    }

    /// Closes the server: it is broken or its state cannot be trusted.
    pub fn close(mut self, reason: &str) {
        if let Some(server) = self.server.take() {
            self.pool.discard(server, reason, self.who.as_ref());
        }
    }
}

/// How long a server left mid-request gets to stop before its slot is freed regardless.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Stops a backend left mid-request. Closing the socket alone would let a running query go
/// on (Postgres notices a gone client only when it next reads or writes) while the slot is
/// already reused, exceeding `pool_size` for as long as the query runs. So: cancel the
/// query, ask the backend to exit, and wait (bounded) until it has.
async fn abandon(server: &mut ServerConn) {
    if !crate::cancel::send(&server.target, server.key, ABANDON_WAIT).await {
        warn!(
            server_id = server.id,
            "cancel of an abandoned request not confirmed"
        );
    }
    let mut out = bytes::BytesMut::new();
    crate::protocol::messages::terminate(&mut out);
    let gone = async {
        server.stream.write_all(&out).await?;
        let mut sink = vec![0u8; 8192];
        while server.stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(ABANDON_WAIT, gone).await.is_err() {
        warn!(
            server_id = server.id,
            "server still busy {ABANDON_WAIT:?} after cancel; closing it anyway"
        );
    }
}

impl Deref for PooledServer {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // INVARIANT: `server` is Some until release/close/drop consume the guard.
        self.server
            .as_ref()
            .expect("server present until the guard is consumed")
    }
}

impl DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.server
            .as_mut()
            .expect("server present until the guard is consumed")
    }
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            (self.pool).discard(server, "dropped without release", self.who.as_ref());
        }
    }
}
