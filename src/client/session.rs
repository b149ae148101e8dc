//! A logged-in client's life: wait (holding no server) until it sends something, attach a
//! server, relay, and give the server back as the pool mode says. Transaction pooling gives
//! it back at every boundary (ReadyForQuery `I`, nothing pending); session pooling keeps it
//! until the client leaves, then resets it.
//!
//! The client's session state follows it from server to server: its settings (startup
//! parameters, then whatever SET/RESET/set_config left, read back from the server after a
//! transaction that may have changed them) are applied to each server it gets, and only
//! where they differ. So do its prepared statements ([`crate::prepared`]). State that
//! cannot move (LISTEN, temporary tables, WITH HOLD cursors, session advisory locks) pins
//! the client to its server for the rest of its session; that server is reset before reuse.
//!
//! An idle client's whole state is this task's future, so every phase that is not the
//! relay or the wait for the client is boxed: its size is paid only while it runs.

use std::mem;

use bytes::{Buf, BytesMut};
use tracing::info;

use super::login::Session;
use super::relay::{End, Link, Step};
use crate::cancel::{CancelHandle, CancelTarget};
use crate::config::PoolMode;
use crate::context::Context;
use crate::pool::{ClientId, Pool, PooledServer};
use crate::protocol::errors::Severity;
use crate::protocol::sql::Feature;
use crate::protocol::{messages, sqlstate, PgError, TransactionStatus};
use crate::stream::Stream;

pub async fn run(client: &Stream, client_buf: BytesMut, session: Session, ctx: &Context) -> End {
    let Session {
        pool,
        cancel,
        mut wanted,
        who,
    } = session;
    // What RESET returns to, as on Postgres: the values the client connected with.
    let startup = wanted.clone();
    let mode = pool.settings().mode;
    let mut link = Link::new(
        client_buf,
        ctx.config.max_packet_size,
        mode != PoolMode::Session,
        mode == PoolMode::Statement,
        Some(ctx.config.max_prepared_statements)
            .filter(|max| mode != PoolMode::Session && *max > 0),
    );
    link.timeouts = super::timeouts::Timeouts::new(&ctx.config);
    link.cancel_key = cancel.key;
    loop {
        if let Some(end) = wait_for_client(client, &mut link, ctx).await {
            return end;
        }
        let mut attached = Attached {
            client,
            pool: &pool,
            who: &who,
            cancel: &cancel,
            link: &mut link,
            ctx,
        };
        if let Some(end) = Box::pin(attached.serve(&mut wanted, &startup)).await {
            return end;
        }
        link.c2s.release_memory();
        if let Some(prepared) = link.prepared.as_deref_mut() {
            prepared.release_memory();
        }
    }
}

/// A client with a server: what runs between the client's first message and the server's
/// return to the pool. Boxed by the caller, so an idle client does not carry its size.
struct Attached<'a> {
    client: &'a Stream,
    pool: &'a Pool,
    who: &'a ClientId,
    cancel: &'a CancelHandle,
    link: &'a mut Link,
    ctx: &'a Context,
}

impl Attached<'_> {
    /// Attaches a server and relays until it can go back (`None`: the client is idle again)
    /// or the session ends. A pinned client (and every client in session mode) keeps its
    /// server here until it leaves.
    async fn serve(
        &mut self,
        wanted: &mut Vec<(String, String)>,
        startup: &[(String, String)],
    ) -> Option<End> {
        let mut server = match attach(self, wanted).await {
            Ok(server) => server,
            Err(end) => return Some(end),
        };
        let mut pin = None;
        loop {
            let stop_at_boundary = pin.is_none() && self.pool.settings().mode != PoolMode::Session;
            let step = match self
                .link
                .relay(self.client, &mut server, stop_at_boundary, self.ctx)
                .await
            {
                Step::TransactionBlock => {
                    match refuse_transaction_block(self.client, &mut server, self.link).await {
                        Ok(()) => Step::Boundary,
                        Err(end) => Step::End(end),
                    }
                }
                step => step,
            };
            if let Step::End(end) = step {
                self.cancel.detach().await;
                give_back(server, self.link, &end).await;
                return Some(end);
            }
            let effects = mem::take(&mut self.link.track.effects);
            for status in self.link.track.reported.drain(..) {
                server.record_status(&status);
            }
            if effects.settings {
                match server.session_settings().await {
                    Ok(settings) => {
                        server.params.mark_applied(&settings);
                        *wanted = over_startup(startup, settings);
                    }
                    Err(err) => {
                        server.close("could not read session settings back");
                        return Some(End::ServerLost(err.to_string()));
                    }
                }
            }
            let pinning = effects.acquires.iter().next().map(Feature::name);
            if let Some(feature) = pinning.filter(|_| pin.is_none()) {
                pin = Some(self.pool.pin());
                if let Some(prepared) = self.link.prepared.as_deref_mut() {
                    prepared.pinned = true;
                }
                info!(
                    feature,
                    pool = %self.pool.name(),
                    pinned_clients = self.pool.pinned_clients(),
                    "client pinned to its server for the rest of its session"
                );
            }
            if pin.is_none() {
                self.cancel.detach().await;
                server.buf = mem::take(&mut self.link.s2c.buf);
                server.checkin_idle();
                return None;
            }
        }
    }
}

/// The client's settings: its startup values, overridden by what its session set since.
fn over_startup(
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

/// Waits, without a server, until the client has sent something for one. `Some` when the
/// session ends first (the client left, or shutdown found it idle).
async fn wait_for_client(client: &Stream, link: &mut Link, ctx: &Context) -> Option<End> {
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        if link.has_request() {
            return None;
        }
        if link.draining {
            return Some(End::Shutdown);
        }
        let deadline = link.watch_time();
        tokio::select! {
            r = client.readable() => {
                if let Err(e) = r { return Some(End::ClientIo(e)) }
                if let Some(end) = link.on_client_readable(client, None) { return Some(end) }
            }
            _ = &mut shutdown, if !link.draining => link.draining = true,
            expired = super::relay::until(deadline), if deadline.is_some() => {
                if let Some(end) = link.on_timeout(expired, ctx) { return Some(end) }
            }
        }
    }
}

/// Statement pooling has no room for transaction blocks: the statement that opened one
/// (BEGIN, or anything leaving the server in a failed block) is rolled back and the client
/// gets an ERROR and ReadyForQuery `I` in place of the server's ReadyForQuery, so its
/// session goes on outside a transaction, as the error says.
async fn refuse_transaction_block(
    client: &Stream,
    server: &mut PooledServer,
    link: &mut Link,
) -> Result<(), End> {
    const READY_FOR_QUERY_LEN: usize = 6;
    let refusal = PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "transaction blocks are not allowed in statement pooling mode",
    )
    .with_hint("run each statement on its own, or use pool_mode = \"transaction\"");
    link.s2c.flush_to(client).await.map_err(End::ClientIo)?;
    link.s2c
        .buf
        .advance(READY_FOR_QUERY_LEN.min(link.s2c.buf.len()));
    if link.track.pending > 0 || !link.s2c.buf.is_empty() {
        // More requests were pipelined behind it: their answers would be meaningless.
        return Err(End::Refused(PgError {
            severity: Severity::Fatal,
            ..refusal
        }));
    }
    server
        .exec("ROLLBACK")
        .await
        .map_err(|e| End::ServerLost(e.to_string()))?;
    link.track.status = TransactionStatus::Idle;
    let mut out = refusal.to_bytes();
    messages::ready_for_query(TransactionStatus::Idle, &mut out);
    client.write_all_ready(&out).await.map_err(End::ClientIo)
}

/// Gets a server for the client's next transaction and gives it the client's settings.
/// A client still queued after `query_wait_notify` is told so with a NOTICE.
async fn attach(
    attached: &mut Attached<'_>,
    wanted: &[(String, String)],
) -> Result<PooledServer, End> {
    let Attached {
        client,
        pool,
        who,
        cancel,
        ..
    } = *attached;
    let link = &mut *attached.link;
    let notify = |text: String| async move {
        let _ = client.write_all_ready(&PgError::notice(text)).await;
    };
    let mut server = pool
        .checkout_notify(who, notify)
        .await
        .map_err(|e| End::Refused(e.to_client_error()))?;
    if let Some(sql) = server.params.sync_query(wanted) {
        if let Err(err) = server.exec(&sql).await {
            server.close("parameter sync failed");
            return Err(End::Refused(err.to_client_error()));
        }
        server.params.mark_applied(wanted);
    }
    cancel.set(CancelTarget {
        server: server.target.clone(),
        key: server.key,
    });
    link.s2c.buf = mem::take(&mut server.buf);
    if let Some(prepared) = link.prepared.as_deref_mut() {
        prepared.attach(&mut server.statements);
    }
    Ok(server)
}

/// Returns a server at the end of a session: reset and reused if the session left it
/// clean, closed otherwise.
pub async fn give_back(mut server: PooledServer, link: &mut Link, end: &End) {
    if matches!(end, End::ServerLost(_)) {
        server.close("server connection lost");
        return;
    }
    server.buf = mem::take(&mut link.s2c.buf);
    let clean = link.server_clean() && server.buf.is_empty();
    server.release(clean).await;
}
