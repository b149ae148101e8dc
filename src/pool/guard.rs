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
    server: Option<Box<ServerConn>>,
    pool: Pool,
    /// The client identity holding it, when the pool counts holdings
    /// (`max_server_conn_per_client`); `None` otherwise, so no clone on the hot path.
    who: Option<ClientId>,
}

impl PooledServer {
    pub(super) fn new(server: Box<ServerConn>, pool: Pool, who: Option<ClientId>) -> Self {
        Pool::mark_active(&server);
        PooledServer {
            server: Some(server),
            pool,
            who,
        }
    }

    /// Returns the server to the pool after running the reset query, if the session left it
    /// `clean` (idle, nothing in flight); otherwise closes it.
    pub async fn release(self, clean: bool) {
        if !clean {
            let reason = "client left it mid-transaction or mid-request";
            return self.retire(&[], Leaving::Vanished, reason).await;
        }
        let mut this = self;
        let Some(mut server) = this.server.take() else {
            return;
        };
        // The settings as an Arc: held across the reset's await.
        let spec = this.pool.0.spec.load_full();
        let settings = &spec.settings;
        let testing = this.pool.testing(&server);
        let reset = tokio::time::timeout(
            settings.connect_timeout,
            server.reset(&settings.reset_query),
        )
        .await;
        drop(testing);
        match reset {
            Ok(Ok(())) => this.pool.checkin(server, this.who.as_ref()),
            Ok(Err(err)) => {
                debug!(cause = %err, "reset failed");
                this.pool
                    .discard(server, "reset query failed", this.who.as_ref());
            }
            Err(_) => this
                .pool
                .discard(server, "reset query timed out", this.who.as_ref()),
        }
    }

    /// Closes a server whose client left mid-request. A client that said goodbye
    /// (`Leaving::Terminated`) has `pending` (what it sent before) and a Terminate
    /// delivered, so its backend finishes what it was asked and exits, as on Postgres; the
    /// request of a client that vanished is cancelled first. The slot is freed once the
    /// backend is gone (or given up on, see [`abandon`]).
    pub async fn retire(mut self, pending: &[u8], leaving: Leaving, reason: &str) {
        if let Some(mut server) = self.server.take() {
            abandon(&mut server, pending, leaving).await;
            self.pool.discard(server, reason, self.who.as_ref());
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

/// How a client left a server mid-request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// With a Terminate: what it sent is run to the end.
    Terminated,
    /// Without a word: nobody waits for its request any more.
    Vanished,
}

/// How long a server left mid-request gets to stop before it is cancelled, and then
/// before its slot is freed regardless.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Stops a backend left mid-request. Closing the socket alone would let a running query go
/// on (Postgres notices a gone client only when it next reads or writes) while the slot is
/// already reused, exceeding `pool_size` for as long as the query runs. So: send what the
/// client sent and a Terminate, and wait (bounded) until the backend has exited; a backend
/// still busy then has its query cancelled and gets a last bounded wait.
async fn abandon(server: &mut ServerConn, pending: &[u8], leaving: Leaving) {
    if leaving == Leaving::Vanished {
        cancel(server).await;
    }
    let mut out = bytes::BytesMut::from(pending);
    crate::protocol::messages::terminate(&mut out);
    let stream = &mut server.stream;
    let gone = async {
        stream.write_all(&out).await?;
        // End of stream too: a backend in the middle of a message sees it end there.
        stream.shutdown().await?;
        let mut sink = vec![0u8; 8192];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(ABANDON_WAIT, gone).await.is_ok() {
        return;
    }
    if leaving == Leaving::Terminated {
        cancel(server).await;
    }
    let stream = &mut server.stream;
    let gone = async {
        let mut sink = vec![0u8; 8192];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(ABANDON_WAIT, gone).await.is_err() {
        warn!(
            server_id = server.id,
            "server still busy {ABANDON_WAIT:?} after cancel; closing it anyway"
        );
    }
}

async fn cancel(server: &ServerConn) {
    if !crate::cancel::send(&server.target, server.key, ABANDON_WAIT).await {
        warn!(
            server_id = server.id,
            "cancel of an abandoned request not confirmed"
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
