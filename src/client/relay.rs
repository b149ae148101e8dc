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
use super::timeouts::{Expired, Timeouts};
use crate::context::Context;
use crate::prepared::{Prepared, Seen, ServerStatements};
use crate::protocol::framing::FramingError;
use crate::protocol::tags::frontend;
use crate::protocol::{sqlstate, PgError};
use crate::server::{BackendKey, ServerConn};
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
    /// Transaction pooling with named statements following the client; client messages
    /// are then scanned only while a server is attached (rewriting needs to know it).
    pub prepared: Option<Box<Prepared>>,
    /// Idle, transaction and query timeouts, when any is configured.
    pub timeouts: Option<Box<Timeouts>>,
    /// This client's cancel key, for cancelling a query that ran out of time.
    pub cancel_key: BackendKey,
}

impl Link {
    /// `max_prepared`: statements per server when they follow the client (`None`: they
    /// pin it, as in session pooling).
    pub fn new(
        client_buf: BytesMut,
        max_len: u32,
        watch_state: bool,
        refuse_blocks: bool,
        max_prepared: Option<usize>,
    ) -> Self {
        let mut track = Tracker::new(watch_state, refuse_blocks);
        track.statements_follow = max_prepared.is_some();
        Link {
            c2s: Pump::new(client_buf, max_len),
            s2c: Pump::new(BytesMut::new(), max_len),
            track,
            terminating: false,
            draining: false,
            prepared: max_prepared.map(|max| Box::new(Prepared::new(max))),
            timeouts: None,
            cancel_key: BackendKey { pid: 0, secret: 0 },
        }
    }

    /// The server has answered everything, is outside a transaction, and all its output
    /// has reached the client: it may serve someone else.
    pub fn at_boundary(&self) -> bool {
        self.track.idle()
            && self.c2s.quiet()
            && self.s2c.quiet()
            && self.prepared.as_ref().is_none_or(|p| p.quiet())
    }

    /// The client has sent something a server must handle.
    pub fn has_request(&self) -> bool {
        match self.prepared {
            Some(_) => !self.c2s.buf.is_empty(),
            None => self.c2s.has_output(),
        }
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
    /// Without a `server`, statements cannot be rewritten yet: bytes wait unscanned.
    pub fn on_client_readable(
        &mut self,
        client: &Stream,
        server: Option<&mut ServerStatements>,
    ) -> Option<End> {
        match self.c2s.read_from(client) {
            Ok(true) => {}
            Ok(false) => return Some(End::ClientLeft),
            Err(e) => return Some(End::ClientIo(e)),
        }
        if let Some(timeouts) = self.timeouts.as_deref_mut() {
            timeouts.on_client(std::time::Instant::now());
        }
        if self.prepared.is_some() {
            return match server {
                Some(server) => self.scan_client(server),
                None if self.c2s.buf.first() == Some(&frontend::TERMINATE) => Some(End::ClientLeft),
                None => None,
            };
        }
        let inspect = self.track.client_inspects();
        match self
            .c2s
            .scan(inspect, |tag, msg| self.track.client_message(tag, msg))
        {
            Ok(Flow::Forward) => None,
            Ok(Flow::Stop) if !self.c2s.has_output() => Some(End::ClientLeft),
            Ok(Flow::Stop) => {
                self.terminating = true;
                None
            }
            Err(e) => Some(End::ClientViolation(e)),
        }
    }

    /// Scans client messages with statement names rewritten for `server`.
    fn scan_client(&mut self, server: &mut ServerStatements) -> Option<End> {
        let prepared = self.prepared.as_deref_mut()?;
        let track_inspects = self.track.client_inspects();
        let inspect = |tag| Prepared::client_inspects(tag) || track_inspects(tag);
        loop {
            let found = match self.c2s.next(inspect) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => return Some(End::ClientViolation(e)),
            };
            let fresh = self.track.idle();
            let msg = found.whole.then(|| self.c2s.message(found));
            if self.track.client_message(found.tag, msg) == Flow::Stop {
                if !self.c2s.has_output() {
                    return Some(End::ClientLeft);
                }
                self.terminating = true;
                break;
            }
            let seen = Seen {
                copy_in: self.track.copy_in,
                fresh,
                names_statements: self.track.query_names_statements,
            };
            prepared.client_message(found, &mut self.c2s, server, seen);
        }
        prepared.write_due(&mut self.s2c);
        None
    }

    /// Scans server messages, passing, swallowing or replacing answers as the client's
    /// prepared statements require.
    fn scan_server(&mut self, server: &mut ServerStatements) -> Result<Flow, FramingError> {
        let Some(prepared) = self.prepared.as_deref_mut() else {
            return Ok(Flow::Forward);
        };
        let track_inspects = self.track.server_inspects();
        let inspect = |tag| Prepared::server_inspects(tag) || track_inspects(tag);
        let track = &mut self.track;
        while let Some(found) = self.s2c.next(inspect)? {
            let flow =
                prepared.server_message(found, &mut self.s2c, &mut self.c2s, server, |tag, msg| {
                    track.server_message(tag, msg)
                });
            if flow == Flow::Stop {
                return Ok(Flow::Stop);
            }
            let skipped = prepared.take_skipped_requests();
            track.pending -= skipped.min(track.pending);
        }
        prepared.write_due(&mut self.s2c);
        Ok(Flow::Forward)
    }

    fn on_server_readable(
        &mut self,
        server: &Stream,
        statements: &mut ServerStatements,
    ) -> Option<Step> {
        let lost = |e: String| Some(Step::End(End::ServerLost(e)));
        match self.s2c.read_from(server) {
            Ok(true) => {}
            Ok(false) => return lost("server closed the connection".into()),
            Err(e) => return lost(e.to_string()),
        }
        if self.prepared.is_some() {
            return match self.scan_server(statements) {
                Ok(Flow::Forward) => None,
                Ok(Flow::Stop) => Some(Step::TransactionBlock),
                Err(e) => lost(e.to_string()),
            };
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
        server: &mut ServerConn,
        stop_at_boundary: bool,
        ctx: &Context,
    ) -> Step {
        let ServerConn {
            stream: server,
            statements,
            ..
        } = server;
        if let Some(end) = self.scan_client(statements) {
            return Step::End(end);
        }
        // One wait for shutdown for the whole relay: a new one per turn of the loop would
        // register with the token (a lock) every time.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            let deadline = self.watch_time();
            if self.at_boundary() {
                if let Some(end) = self.should_end_at_boundary() {
                    return Step::End(end);
                }
                if stop_at_boundary {
                    return Step::Boundary;
                }
            }
            // Biased: no random start per turn; every branch is a readiness wait, so
            // none can starve another for long.
            tokio::select! {
                biased;
                r = client.readable(), if !self.c2s.has_output() && !self.terminating => {
                    if let Err(e) = r { return Step::End(End::ClientIo(e)) }
                    if let Some(end) = self.on_client_readable(client, Some(statements)) { return Step::End(end) }
                }
                r = server.writable(), if self.c2s.has_output() => {
                    if let Err(e) = r.and_then(|_| self.c2s.write_to(server)) {
                        return Step::End(End::ServerLost(e.to_string()));
                    }
                }
                r = server.readable(), if !self.s2c.has_output() => {
                    if let Err(e) = r { return Step::End(End::ServerLost(e.to_string())) }
                    if let Some(step) = self.on_server_readable(server, statements) { return step }
                }
                r = client.writable(), if self.s2c.has_output() => {
                    if let Err(e) = r.and_then(|_| self.s2c.write_to(client)) { return Step::End(End::ClientIo(e)) }
                }
                // A relay that stops at boundaries leaves shutdown to the wait for the client.
                _ = &mut shutdown, if !self.draining && !stop_at_boundary => self.draining = true,
                expired = until(deadline), if deadline.is_some() => {
                    if let Some(end) = self.on_timeout(expired, ctx) { return Step::End(end) }
                }
            }
        }
    }

    /// Updates the timeout clocks, gives the client a notice that waited for a message
    /// boundary, and says when the next timeout runs out.
    pub fn watch_time(&mut self) -> Option<(std::time::Instant, Expired)> {
        let timeouts = self.timeouts.as_deref_mut()?;
        timeouts.observe(&self.track, std::time::Instant::now());
        if self.s2c.framer.at_boundary() {
            if let Some(notice) = timeouts.notice.take() {
                self.s2c.inject().extend_from_slice(&notice);
            }
        }
        timeouts.next(&self.track)
    }

    /// A timeout ran out: the query is cancelled (`None`: the session goes on), or the
    /// session ends with an error naming the timeout.
    pub fn on_timeout(&mut self, expired: Expired, ctx: &Context) -> Option<End> {
        let timeouts = self.timeouts.as_deref_mut()?;
        ctx.refusals.count(expired.cap());
        if expired != Expired::Query {
            let error = timeouts.error(expired);
            tracing::info!(cause = %error.message, "closing client");
            return Some(End::Refused(error));
        }
        timeouts.cancelling();
        tracing::info!("cancelling a query that ran longer than query_timeout");
        let (cancels, key) = (ctx.cancels.clone(), self.cancel_key);
        tokio::spawn(async move { cancels.cancel(key).await });
        None
    }

    /// Whether the server is in a state another client may have (after a reset).
    pub fn server_clean(&self) -> bool {
        self.track.idle()
            && self.c2s.framer.at_boundary()
            && !self.c2s.has_output()
            && self.s2c.framer.at_boundary()
            && self.prepared.as_ref().is_none_or(|p| p.quiet())
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

/// Waits until `deadline` and says which timeout it was (never, without one). The timer
/// is boxed: the wait for an idle client is part of every client's task, timer or not.
pub fn until(
    deadline: Option<(std::time::Instant, Expired)>,
) -> impl std::future::Future<Output = Expired> {
    let timer =
        deadline.map(|(when, expired)| (Box::pin(tokio::time::sleep_until(when.into())), expired));
    async move {
        match timer {
            Some((sleep, expired)) => {
                sleep.await;
                expired
            }
            None => std::future::pending().await,
        }
    }
}
