//! What the session does with its server besides relaying: checks at a boundary (the
//! settings the client left, the state it holds), the pins those checks decide, statement
//! pooling's refusal of transaction blocks, and giving the server up when the session
//! ends — reused only when the machine proves it clean, closed otherwise.

use std::mem;

use tracing::{info, warn};

use super::io;
use super::link::{over_startup, Link};
use super::machine::{Checks, Stop};
use super::End;
use crate::pool::{Leaving, PooledServer};
use crate::protocol::errors::Severity;
use crate::protocol::{sqlstate, PgError};

impl Link<'_> {
    /// Gives the server up at the end of a session: reused if the machine can prove it
    /// clean (reset first in session pooling), closed otherwise.
    pub(super) async fn dispose(&mut self, mut server: PooledServer, end: &End) {
        self.cancel.detach().await;
        let reason = match end {
            End::Stop(Stop::ServerLost(_)) => return server.close("server connection lost"),
            End::Stop(Stop::ServerFault(fault)) => {
                warn!(server_id = server.id, fault = %fault, "closing a server that broke the protocol");
                "server broke the protocol"
            }
            End::Stop(Stop::Lost(_)) => "pgwarden lost track of its answers",
            _ if self.machine.server_clean() => {
                server.buf = mem::take(&mut self.machine.s2c.buf);
                // A server that kept state for its pinned client is reset like a session's.
                // The session's own mode, not the pool's: a reload may have changed that.
                let reset = self.machine.keeps_server();
                return match reset {
                    true => server.release(true).await,
                    false => server.checkin_idle(),
                };
            }
            _ => "client left it mid-transaction or mid-request",
        };
        self.machine.abandon(&mut server.statements);
        let (edited, ready) = self.machine.c2s.output();
        let pending = [edited, ready].concat();
        let leaving = match self.machine.client_terminated() {
            true => Leaving::Terminated,
            false => Leaving::Vanished,
        };
        // Not awaited: the client is told at once; the backend gets its bounded time to
        // finish and exit on its own.
        tokio::spawn(async move { server.retire(&pending, leaving, reason).await });
    }

    /// Runs what the machine asked to know at a boundary.
    pub(super) async fn check(
        &mut self,
        server: &mut PooledServer,
        checks: Checks,
    ) -> Result<(), End> {
        let lost = |e: crate::server::ServerError| End::Stop(Stop::ServerLost(e.to_string()));
        if checks.settings {
            let settings = server.session_settings().await.map_err(lost)?;
            server.params.mark_applied(&settings);
            self.wanted = over_startup(&self.startup, settings);
        }
        let held = match checks.held {
            true => Some(server.held_state().await.map_err(lost)?),
            false => None,
        };
        self.machine.checked(held.as_ref());
        let notifications = mem::take(&mut server.notifications);
        self.machine.s2c.inject().extend_from_slice(&notifications);
        Ok(())
    }

    /// Counts and logs a change of the machine's pins on the pool.
    pub(super) fn sync_pins(&mut self) {
        let now = self.machine.pins();
        let before = mem::replace(&mut self.pinned_for, now);
        if now == before {
            return;
        }
        let pool = self.pool.name();
        if now.is_empty() {
            self.pin = None;
            let reasons = before.names();
            info!(?reasons, %pool, "client unpinned: its server holds nothing it needs");
            return;
        }
        match self.pin.as_mut() {
            Some(pin) => pin.set(now.names()),
            None => self.pin = Some(Box::new(self.pool.pin(now.names()))),
        }
        let reasons = now.names();
        let pinned_clients = self.pool.pinned_clients();
        info!(?reasons, %pool, pinned_clients, "client pinned to its server");
    }

    /// Statement pooling has no room for transaction blocks: the statement that opened one
    /// (BEGIN, or anything leaving the server in a failed block) is rolled back and the
    /// client gets an ERROR and ReadyForQuery `I` in place of the server's ReadyForQuery,
    /// so its session goes on outside a transaction, as the error says.
    pub(super) async fn refuse_block(&mut self, server: &mut PooledServer) -> Result<(), End> {
        let refusal = PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "transaction blocks are not allowed in statement pooling mode",
        )
        .with_hint("run each statement on its own, or use pool_mode = \"transaction\"");
        if io::flush(&mut self.machine.s2c, self.client).await.is_err() {
            self.machine.client_closed();
            return Ok(());
        }
        if self.machine.more_owed() {
            // More requests were pipelined behind it: their answers would be meaningless.
            let fatal = PgError {
                severity: Severity::Fatal,
                ..refusal
            };
            return Err(End::Refused(fatal));
        }
        let lost = |e: crate::server::ServerError| End::Stop(Stop::ServerLost(e.to_string()));
        server.exec("ROLLBACK").await.map_err(lost)?;
        self.machine.refused_block(&refusal);
        Ok(())
    }
}
