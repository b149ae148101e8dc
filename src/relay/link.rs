//! The session loop: wait (holding no server) until the client has sent a complete
//! request, attach a server, relay both ways at once, and do what the protocol machine
//! says at each turn — release the server, check it, or end. Nothing here decides
//! anything about the protocol; it moves bytes and acts on verdicts.
//!
//! Reading and writing of both sockets are driven by readiness in one hand-written poll
//! (`wait`), so a server blocked on a full client socket never stops pgwarden from reading
//! the client (and the other way round): no deadlock, no extra task, no channel. Every turn either
//! waits for a socket or a timer, or acts on I/O that happened: there is no loop without
//! progress, and a safety net ends a session that asks for a server twice without the
//! client having sent anything in between.
//!
//! An idle client's whole state is this task's future, so everything that is not the wait
//! for the client is boxed: its size is paid only while it runs.

use std::future::Future;
use std::mem;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::future::{AbortRegistration, Abortable, Aborted};
use tracing::{debug, info};

use super::io;
use super::machine::pins::Reasons;
use super::machine::{Machine, Verdict};
use super::timeouts::{Expired, Timeouts};
use super::wait::{wait, Shutdown, Wake, Wanted};
use super::End;
use crate::cancel::{CancelHandle, CancelTarget};
use crate::context::Context;
use crate::pool::{ClientId, PinGuard, PoolLease, PooledServer};
use crate::protocol::sql::Strings;
use crate::protocol::{sqlstate, PgError};
use crate::server::ServerConn;
use crate::stats::{clock, ClientInfo, Listed};
use crate::stream::Stream;

/// How long a session that ends waits for its client to take the answers already due.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(2);

/// A logged-in client: its pool, cancel key and settings. It holds no server yet.
pub struct Session {
    /// The client's lease on its pool: the pool stays while the client does.
    pub pool: PoolLease,
    pub cancel: CancelHandle,
    /// The session settings the client asked for, applied to every server it gets.
    pub wanted: Vec<(String, String)>,
    /// Who the fair queue serves this client as.
    pub who: ClientId,
    /// How the server lexes strings, as the client was told at login.
    pub strings: Strings,
    /// Whether SQL in the client's encoding can be read byte by byte (see
    /// [`crate::protocol::sql::scannable_encoding`]).
    pub scannable: bool,
    /// Its entry in SHOW CLIENTS.
    pub listing: Listed<ClientInfo>,
    /// Ends the session where it stands when the console kills the client.
    pub killed: AbortRegistration,
}

/// Runs a logged-in client's session in its pool's mode, and ends it.
///
/// Not an `async fn`: one keeps its arguments in its state beside what is made of them,
/// and this state is every idle client's memory. The [`Link`] is made first and moved in.
pub fn run<'a>(
    client: &'a Stream,
    client_buf: BytesMut,
    session: Session,
    ctx: &'a Context,
) -> impl Future<Output = End> + 'a {
    let (mut link, killed) = Link::new(client, client_buf, session, ctx);
    async move {
        // Killed: the loop is dropped where it stands, its server (if any) closed.
        let end = match Abortable::new(session_loop(&mut link), killed).await {
            Ok(end) => end,
            // Mid-message towards the client, no error can follow: it is just closed.
            Err(Aborted) if link.machine.s2c.quiet() => End::Killed,
            Err(Aborted) => End::Cut(Box::new(End::Killed)),
        };
        link.meter_bytes();
        drop(link);
        Box::pin(finish(client, &end)).await;
        end
    }
}

/// Tells the client why the session ends, where it is still listening.
async fn finish(client: &Stream, end: &End) {
    if let Some(error) = end.to_client_error() {
        let _ = client.write_all_ready(&error.to_bytes()).await;
    }
    client.shutdown_write();
}

async fn session_loop(link: &mut Link<'_>) -> End {
    let mut reads_at_attach = None;
    // One wait for shutdown for the whole session: registered with the token once, not
    // once per transaction (a lock each time).
    let ctx = link.ctx;
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        // The verdict is not held across the awaits below: it would sit in every idle
        // client's future.
        let attach = match link.machine.verdict() {
            Verdict::Wait => false,
            Verdict::Attach => true,
            Verdict::End(stop) => return End::Stop(stop),
            other => return internal(&format!("verdict {other:?} without a server")),
        };
        match attach {
            false => {
                if let Some(end) = link.wait_for_client(shutdown.as_mut()).await {
                    return end;
                }
            }
            true => {
                if reads_at_attach == Some(link.reads) {
                    return internal("a server was asked for twice for the same request");
                }
                reads_at_attach = Some(link.reads);
                if let Some(end) = Box::pin(link.serve(shutdown.as_mut())).await {
                    return end;
                }
            }
        }
    }
}

/// A state the machine should never be in: the session ends rather than guess.
fn internal(what: &str) -> End {
    tracing::error!(
        cause = what,
        "ending a session in a state pgwarden cannot handle"
    );
    End::Refused(PgError::fatal(
        sqlstate::INTERNAL_ERROR,
        format!("pgwarden internal error: {what}"),
    ))
}

pub(super) struct Link<'a> {
    pub(super) client: &'a Stream,
    pub(super) ctx: &'a Context,
    pub(super) pool: PoolLease,
    pub(super) cancel: CancelHandle,
    pub(super) who: ClientId,
    pub(super) wanted: Vec<(String, String)>,
    /// What RESET returns to, as on Postgres: the values the client connected with.
    pub(super) startup: Box<[(String, String)]>,
    pub(super) machine: Machine,
    pub(super) timeouts: Option<Box<Timeouts>>,
    /// The pin counted on the pool, and the reasons it was counted for.
    pub(super) pin: Option<Box<PinGuard>>,
    pub(super) pinned_for: Reasons,
    /// Reads from the client so far (wrapping).
    pub(super) reads: u32,
    /// Its entry in SHOW CLIENTS, which also keeps its query and transaction clocks.
    pub(super) listing: Listed<ClientInfo>,
}

impl<'a> Link<'a> {
    /// The link, and what aborts it.
    fn new(
        client: &'a Stream,
        client_buf: BytesMut,
        session: Session,
        ctx: &'a Context,
    ) -> (Self, AbortRegistration) {
        let Session {
            pool,
            cancel,
            wanted,
            who,
            strings,
            scannable,
            listing,
            killed,
        } = session;
        let mode = pool.settings().mode;
        let max_prepared = Some(ctx.config.max_prepared_statements).filter(|max| *max > 0);
        let machine = Machine::new(
            mode,
            client_buf,
            ctx.config.max_packet_size,
            max_prepared,
            (strings, scannable),
        );
        let link = Link {
            client,
            ctx,
            pool,
            cancel,
            who,
            startup: wanted.clone().into_boxed_slice(),
            wanted,
            machine,
            timeouts: Timeouts::new(&ctx.config),
            pin: None,
            pinned_for: Reasons::default(),
            reads: 0,
            listing,
        };
        (link, killed)
    }

    /// Waits, without a server, until the client has sent something complete. `Some` when
    /// the session ends first.
    async fn wait_for_client(&mut self, mut shutdown: Shutdown<'_, '_>) -> Option<End> {
        while self.machine.verdict() == Verdict::Wait {
            let deadline = self.watch_time();
            let wanted = Wanted {
                read_client: true,
                // TLS: the end of the last answer may still be ciphertext in rustls.
                write_client: self.client.wants_write(),
                shutdown: !self.machine.draining(),
                ..Wanted::default()
            };
            match wait(self.client, None, wanted, shutdown.as_mut(), deadline).await {
                Wake::ClientReadable(Ok(())) => self.read_client(None),
                Wake::ClientReadable(Err(_)) => self.machine.client_closed(),
                Wake::ClientWritable(r) => {
                    if r.and_then(|_| io::write_from(&mut self.machine.s2c, self.client))
                        .is_err()
                    {
                        self.machine.client_closed();
                    }
                }
                Wake::Shutdown => self.machine.drain(),
                Wake::Timeout(expired) => {
                    if let Some(end) = self.on_timeout(expired) {
                        return Some(end);
                    }
                }
                Wake::ServerWritable(_) | Wake::ServerReadable(_) => {}
            }
        }
        None
    }

    /// Reads what the client sent and hands it to the machine.
    fn read_client(&mut self, server: Option<&mut crate::prepared::ServerStatements>) {
        match io::read_into(&mut self.machine.c2s, self.client) {
            Ok(true) => {}
            Ok(false) => return self.machine.client_closed(),
            Err(e) => {
                debug!(cause = %e, "client socket error");
                return self.machine.client_closed();
            }
        }
        self.reads = self.reads.wrapping_add(1);
        if let Some(timeouts) = self.timeouts.as_deref_mut() {
            timeouts.on_client(Instant::now());
        }
        self.machine.client_read(server);
    }

    /// Attaches a server and follows the machine's verdicts until the server goes back
    /// (`None`: the client is idle again) or the session ends.
    async fn serve(&mut self, mut shutdown: Shutdown<'_, '_>) -> Option<End> {
        let mut server = match self.attach().await {
            Ok(server) => server,
            Err(end) => return Some(end),
        };
        loop {
            self.meter();
            self.sync_pins();
            let step = match self.machine.verdict() {
                Verdict::Relay => self.relay(&mut server, shutdown.as_mut()).await,
                Verdict::Release => {
                    self.release(server).await;
                    return None;
                }
                Verdict::Check(checks) => self.check(&mut server, checks).await.err(),
                Verdict::RefuseBlock => self.refuse_block(&mut server).await.err(),
                Verdict::End(stop) => Some(End::Stop(stop)),
                other => Some(internal(&format!("verdict {other:?} with a server"))),
            };
            if let Some(end) = step {
                // Boxed: rare, and large; the transaction's future stays small.
                Box::pin(self.dispose(server, &end)).await;
                return Some(self.deliver_before(end).await);
            }
        }
    }

    /// Before the session's last word, the client gets what the server answered up to the
    /// end (bounded: a client that does not read is not waited for). If that leaves it in
    /// the middle of a message, no error can follow: the connection just closes.
    async fn deliver_before(&mut self, end: End) -> End {
        if matches!(end, End::Stop(super::machine::Stop::ClientLeft)) {
            return end;
        }
        let flush = io::flush(&mut self.machine.s2c, self.client);
        let delivered = matches!(tokio::time::timeout(LAST_WORDS, flush).await, Ok(Ok(())));
        match delivered && self.machine.s2c.framer.at_boundary() {
            true => end,
            false => End::Cut(Box::new(end)),
        }
    }

    /// Relays both ways while the machine says so. `Some` when a timeout ends the session.
    async fn relay(
        &mut self,
        server: &mut PooledServer,
        mut shutdown: Shutdown<'_, '_>,
    ) -> Option<End> {
        let ServerConn {
            stream,
            statements,
            params,
            ..
        } = &mut **server;
        let client = self.client;
        while self.machine.verdict() == Verdict::Relay {
            let deadline = self.watch_time();
            let m = &self.machine;
            let wanted = Wanted {
                read_client: m.wants_client(),
                // `wants_write`: TLS ciphertext still to go (always false for sockets).
                write_server: m.c2s.has_output() || stream.wants_write(),
                read_server: m.wants_server(),
                write_client: m.s2c.has_output() || client.wants_write(),
                // Shutdown is watched only where the server is kept across boundaries:
                // else the next boundary hands the session to the wait for the client,
                // which watches it (a wait registered here would cost every transaction).
                shutdown: !m.draining() && m.keeps_server(),
            };
            if !wanted.any() && deadline.is_none() {
                return Some(internal("a relay with nothing to wait for"));
            }
            match wait(client, Some(stream), wanted, shutdown.as_mut(), deadline).await {
                Wake::ClientReadable(Ok(())) => self.read_client(Some(statements)),
                Wake::ClientReadable(Err(_)) => self.machine.client_closed(),
                Wake::ServerWritable(r) => {
                    if let Err(e) = r.and_then(|_| io::write_from(&mut self.machine.c2s, stream)) {
                        self.machine.server_lost(e.to_string());
                    }
                }
                Wake::ServerReadable(r) => {
                    match r.and_then(|_| io::read_into(&mut self.machine.s2c, stream)) {
                        Ok(true) => self.machine.server_read(statements, params),
                        Ok(false) => self
                            .machine
                            .server_lost("server closed the connection".into()),
                        Err(e) => self.machine.server_lost(e.to_string()),
                    }
                }
                Wake::ClientWritable(r) => {
                    if r.and_then(|_| io::write_from(&mut self.machine.s2c, client))
                        .is_err()
                    {
                        self.machine.client_closed();
                    }
                }
                Wake::Shutdown => self.machine.drain(),
                Wake::Timeout(expired) => {
                    if let Some(end) = self.on_timeout(expired) {
                        return Some(end);
                    }
                }
            }
            self.meter();
        }
        None
    }

    /// Gets a server for the client's next transaction and gives it the client's settings.
    /// A client still queued after `query_wait_notify` is told so with a NOTICE.
    async fn attach(&mut self) -> Result<PooledServer, End> {
        let client = self.client;
        let notify = |text: String| async move {
            let _ = client.write_all_ready(&PgError::notice(text)).await;
        };
        let asked = clock::now_us();
        self.listing.waiting(asked);
        let checkout = self.pool.checkout_notify(&self.who, notify).await;
        let mut server = checkout.map_err(|e| {
            self.listing.unlinked();
            End::Refused(e.to_client_error())
        })?;
        self.listing.linked(server.id);
        if let Some(listing) = &server.listing {
            listing.linked(self.listing.id(), asked);
        }
        if let Some(sql) = server.params.sync_query(&self.wanted) {
            if let Err(err) = server.exec(&sql).await {
                server.close("parameter sync failed");
                return Err(End::Refused(err.to_client_error()));
            }
            server.params.mark_applied(&self.wanted);
        }
        self.cancel.set(CancelTarget {
            server: server.target.clone(),
            key: server.key,
        });
        self.machine.s2c.buf = mem::take(&mut server.buf);
        self.machine.attach(&mut server.statements);
        Ok(server)
    }

    /// The server goes back to its pool as it is (transaction and statement pooling).
    async fn release(&mut self, mut server: PooledServer) {
        self.cancel.detach().await;
        server.buf = mem::take(&mut self.machine.s2c.buf);
        server.checkin_idle();
        self.listing.unlinked();
        self.machine.detach();
    }

    /// Updates the timeout clocks, gives the client a notice that waited for a message
    /// boundary, and says when the next timeout runs out.
    fn watch_time(&mut self) -> Option<(Instant, Expired)> {
        let timeouts = self.timeouts.as_deref_mut()?;
        let progress = self.machine.progress();
        timeouts.observe(progress, Instant::now());
        if self.machine.s2c.framer.at_boundary() {
            if let Some(notice) = timeouts.notice.take() {
                self.machine.s2c.inject().extend_from_slice(&notice);
            }
        }
        timeouts.next(progress)
    }

    /// A timeout ran out: the query is cancelled (`None`: the session goes on), or the
    /// session ends with an error naming the timeout.
    fn on_timeout(&mut self, expired: Expired) -> Option<End> {
        let timeouts = self.timeouts.as_deref_mut()?;
        self.ctx.refusals.count(expired.cap());
        if expired != Expired::Query {
            let error = timeouts.error(expired);
            info!(cause = %error.message, "closing client");
            return Some(End::Refused(error));
        }
        timeouts.cancelling();
        info!("cancelling a query that ran longer than query_timeout");
        let (cancels, key) = (self.ctx.cancels.clone(), self.cancel.key);
        tokio::spawn(async move { cancels.cancel(key).await });
        None
    }
}

/// The client's settings: its startup values, overridden by what its session set since.
pub(super) fn over_startup(
    startup: &[(String, String)],
    session: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut settings = startup.to_vec();
    for (name, value) in session {
        match settings
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some((_, v)) => *v = value,
            None => settings.push((name, value)),
        }
    }
    settings
}
