//! The session loop: bytes flow client ⇄ server untouched, in both directions at once, while
//! the [`Tracker`] watches headers for what pgwarden must act on.
//!
//! Reading and writing of both sockets are driven by readiness in one `select!`, so a server
//! blocked on a full client socket never stops pgwarden from reading the client (and the
//! other way round): no deadlock, no extra task, no channel.

use std::fmt;
use std::io;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::login::Session;
use super::pump::{Flow, Pump, Tracker};
use crate::context::Context;
use crate::protocol::framing::FramingError;
use crate::protocol::{sqlstate, PgError};
use crate::stream::Stream;

/// How a session ended.
pub enum End {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// The client broke the protocol; it is told so.
    ClientViolation(FramingError),
    ClientIo(io::Error),
    ServerLost(String),
    /// pgwarden refused to go on (no server in time, a failed parameter sync).
    Refused(PgError),
    Shutdown,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientLeft => f.write_str("client closed the connection"),
            End::ClientViolation(e) => write!(f, "protocol violation: {e}"),
            End::ClientIo(e) => write!(f, "client socket error: {e}"),
            End::ServerLost(e) => write!(f, "server connection lost: {e}"),
            End::Refused(e) => write!(f, "refused: {}", e.message),
            End::Shutdown => f.write_str("pgwarden shutting down"),
        }
    }
}

/// Why [`Link::relay`] returned.
pub enum Step {
    /// The server may be given back (only when asked to stop at boundaries).
    Boundary,
    /// Statement pooling: the server reported an open transaction block; its ReadyForQuery
    /// is held back, at the front of `s2c` after the `ready` bytes.
    TransactionBlock,
    End(End),
}

/// Both directions of a client's relay and what is known of its server's state.
pub struct Link {
    pub c2s: Pump,
    pub s2c: Pump,
    pub track: Tracker,
    /// The client sent Terminate after the bytes still `ready`: finish those, then end.
    pub terminating: bool,
    /// Shutdown has begun: end the session at its next idle point.
    pub draining: bool,
}

impl Link {
    pub fn new(client_buf: BytesMut, max_len: u32, watch_state: bool, refuse_blocks: bool) -> Self {
        Link {
            c2s: Pump::new(client_buf, max_len),
            s2c: Pump::new(BytesMut::new(), max_len),
            track: Tracker::new(watch_state, refuse_blocks),
            terminating: false,
            draining: false,
        }
    }

    /// The server has answered everything, is outside a transaction, and all its output
    /// has reached the client: it may serve someone else.
    pub fn at_boundary(&self) -> bool {
        self.track.idle() && self.c2s.quiet() && self.s2c.quiet()
    }

    /// Whether the session should end now that it is at a boundary.
    pub fn should_end_at_boundary(&self) -> Option<End> {
        if self.terminating {
            Some(End::ClientLeft)
        } else if self.draining {
            Some(End::Shutdown)
        } else {
            None
        }
    }

    /// Reads from the client and scans what arrived; `Some` when the session must end.
    pub fn on_client_readable(&mut self, client: &Stream) -> Option<End> {
        match self.c2s.read_from(client) {
            Ok(true) => {}
            Ok(false) => return Some(End::ClientLeft),
            Err(e) => return Some(End::ClientIo(e)),
        }
        let inspect = self.track.client_inspects();
        match self
            .c2s
            .scan(inspect, |tag, msg| self.track.client_message(tag, msg))
        {
            Ok(Flow::Forward) => None,
            Ok(Flow::Stop) if self.c2s.ready == 0 => Some(End::ClientLeft),
            Ok(Flow::Stop) => {
                self.terminating = true;
                None
            }
            Err(e) => Some(End::ClientViolation(e)),
        }
    }

    fn on_server_readable(&mut self, server: &Stream) -> Option<Step> {
        let lost = |e: String| Some(Step::End(End::ServerLost(e)));
        match self.s2c.read_from(server) {
            Ok(true) => {}
            Ok(false) => return lost("server closed the connection".into()),
            Err(e) => return lost(e.to_string()),
        }
        let inspect = self.track.server_inspects();
        match self
            .s2c
            .scan(inspect, |tag, msg| self.track.server_message(tag, msg))
        {
            Ok(Flow::Forward) => None,
            Ok(Flow::Stop) => Some(Step::TransactionBlock),
            Err(e) => lost(e.to_string()),
        }
    }

    /// Relays both ways until the session ends, or, when `stop_at_boundary`, until the
    /// server may be given back. Cancel-safe at every await: all state lives in
    /// `self` and reads/writes happen only after readiness.
    pub async fn relay(
        &mut self,
        client: &Stream,
        server: &Stream,
        stop_at_boundary: bool,
        ctx: &Context,
    ) -> Step {
        loop {
            if self.at_boundary() {
                if let Some(end) = self.should_end_at_boundary() {
                    return Step::End(end);
                }
                if stop_at_boundary {
                    return Step::Boundary;
                }
            }
            tokio::select! {
                r = client.readable(), if self.c2s.ready == 0 && !self.terminating => {
                    if let Err(e) = r { return Step::End(End::ClientIo(e)) }
                    if let Some(end) = self.on_client_readable(client) { return Step::End(end) }
                }
                r = server.writable(), if self.c2s.ready > 0 => {
                    if let Err(e) = r.and_then(|_| self.c2s.write_to(server)) {
                        return Step::End(End::ServerLost(e.to_string()));
                    }
                }
                r = server.readable(), if self.s2c.ready == 0 => {
                    if let Err(e) = r { return Step::End(End::ServerLost(e.to_string())) }
                    if let Some(step) = self.on_server_readable(server) { return step }
                }
                r = client.writable(), if self.s2c.ready > 0 => {
                    if let Err(e) = r.and_then(|_| self.s2c.write_to(client)) { return Step::End(End::ClientIo(e)) }
                }
                _ = ctx.shutdown.cancelled(), if !self.draining => self.draining = true,
            }
        }
    }

    /// Whether the server is in a state another client may have (after a reset).
    pub fn server_clean(&self) -> bool {
        self.track.idle()
            && self.c2s.framer.at_boundary()
            && self.c2s.ready == 0
            && self.s2c.framer.at_boundary()
    }
}

/// Runs a logged-in client's session in its pool's mode, and ends it.
pub async fn run(
    client: &mut Stream,
    client_buf: BytesMut,
    session: Session,
    ctx: &Context,
) -> End {
    let end = super::session::run(client, client_buf, session, ctx).await;
    Box::pin(finish(client, &end)).await;
    end
}

/// Tells the client why the session ends, where it is still listening.
async fn finish(client: &mut Stream, end: &End) {
    let error = match end {
        End::ClientViolation(e) => Some(PgError::protocol_violation(e)),
        End::ServerLost(e) => Some(PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("server connection lost: {e}"),
        )),
        End::Refused(e) => Some(e.clone()),
        End::Shutdown => Some(PgError::shutting_down()),
        End::ClientLeft | End::ClientIo(_) => None,
    };
    if let Some(error) = error {
        let _ = client.write_all(&error.to_bytes()).await;
    }
    let _ = client.shutdown().await;
}
