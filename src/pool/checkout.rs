//! Getting a server: the fast path (an idle server and nobody waiting: a lock and a pop),
//! else a place in the fair queue until a server or a slot to open one is handed over,
//! within `query_wait_timeout`; then opening the connection or testing the idle one.

use std::future::Future;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::spec::Spec;
use super::{CheckoutError, ClientId, Grant, Pool, PooledServer, Waiting};
use crate::refusals::Cap;
use crate::server::{self, ServerConn, ServerError};

/// How a checkout starts: with an idle server at once, or queued.
// Lives on the stack for one step of a checkout; boxing the server would cost the fast
// path an allocation.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Ready(Box<ServerConn>),
    Queued(Waiter),
    Failed(CheckoutError),
}

impl Pool {
    /// Gets a server for client `who`: an idle one, a new one if the caps allow, or the
    /// next one freed, waiting at most `query_wait_timeout`.
    pub async fn checkout(&self, who: &ClientId) -> Result<PooledServer, CheckoutError> {
        self.checkout_notify(who, |_| async {}).await
    }

    /// [`Pool::checkout`], calling `notify` with a description of the client's place in the
    /// queue once it has waited `query_wait_notify` (if set).
    pub async fn checkout_notify<F, Fut>(
        &self,
        who: &ClientId,
        mut notify: F,
    ) -> Result<PooledServer, CheckoutError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        // Read once: a reload during the wait does not move this client's deadline.
        let (wait_timeout, wait_notify) = {
            let settings = &self.spec().settings;
            (settings.wait_timeout, settings.wait_notify)
        };
        let started = tokio::time::Instant::now();
        let deadline = (!wait_timeout.is_zero()).then(|| started + wait_timeout);
        let mut notify_at = (!wait_notify.is_zero()).then(|| started + wait_notify);
        // The clock is read again only for a client that had to queue.
        let mut queued = false;
        loop {
            if self.0.closed.is_cancelled() {
                return Err(CheckoutError::Closed(self.0.name.clone()));
            }
            let grant = match self.enter(who) {
                Entry::Ready(server) => Grant::Server(server),
                Entry::Failed(err) => return Err(err),
                Entry::Queued(mut waiter) => {
                    queued = true;
                    let times = (deadline, wait_timeout);
                    let wait = self.wait(&mut waiter, times, &mut notify_at, &mut notify);
                    wait.await?
                }
            };
            let ready = match grant {
                Grant::Server(server) => self.ready(server, who).await,
                Grant::Slot => self.open_server(who).await?,
                Grant::Failed(failure) => return Err(CheckoutError::LoginFailing(failure)),
            };
            if let Some(server) = ready {
                let waited = match queued {
                    true => started.elapsed(),
                    false => std::time::Duration::ZERO,
                };
                self.0.counters.assigned(waited);
                return Ok(server);
            }
        }
    }

    /// Takes an idle server if nobody waits and `who` may hold one more; else queues `who`
    /// and hands out whatever the caps allow right away (possibly to `who` itself).
    fn enter(&self, who: &ClientId) -> Entry {
        let mut state = self.state();
        if state.queue.is_empty() && self.may_hold(&state.held, who) {
            if let Some(server) = state.idle.pop() {
                self.hold(&mut state.held, Some(who));
                return Entry::Ready(server);
            }
        }
        if let Some(err) = self.cached_failure(&state) {
            return Entry::Failed(err);
        }
        let (tx, rx) = oneshot::channel();
        state.next_waiter += 1;
        let id = state.next_waiter;
        let since = Instant::now();
        state.queue.push(who, id, Waiting { tx, since });
        let blocked = self.dispatch(&mut state);
        drop(state);
        self.after_dispatch(blocked);
        Entry::Queued(Waiter {
            rx,
            id,
            who: who.clone(),
            pool: self.clone(),
            done: false,
        })
    }

    /// Waits for a grant until `deadline`; on the way, wakes the pool when the reserve
    /// becomes due for this waiter and tells the client it is queued at `notify_at`.
    async fn wait<F, Fut>(
        &self,
        waiter: &mut Waiter,
        (deadline, wait_timeout): (Option<tokio::time::Instant>, std::time::Duration),
        notify_at: &mut Option<tokio::time::Instant>,
        notify: &mut F,
    ) -> Result<Grant, CheckoutError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut reserve_at = {
            let settings = &self.spec().settings;
            (settings.reserve_size > 0)
                .then(|| tokio::time::Instant::now() + settings.reserve_timeout)
        };
        let mut deadline = deadline;
        let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
        loop {
            tokio::select! {
                grant = &mut waiter.rx => {
                    waiter.done = true;
                    return grant.map_err(|_| CheckoutError::Closed(self.0.name.clone()));
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                    // Time spent paused does not count: queries wait for RESUME, not fail.
                    if !self.is_paused() {
                        return Err(self.wait_timeout(&waiter.who, wait_timeout));
                    }
                    deadline = Some(tokio::time::Instant::now() + wait_timeout);
                }
                _ = tokio::time::sleep_until(reserve_at.unwrap_or_else(far)), if reserve_at.is_some() => {
                    reserve_at = None;
                    self.serve_waiters();
                }
                _ = tokio::time::sleep_until(notify_at.unwrap_or_else(far)), if notify_at.is_some() => {
                    *notify_at = None;
                    if let Some(text) = self.queued_notice(&waiter.who, waiter.id) {
                        notify(text).await;
                    }
                }
            }
        }
    }

    fn wait_timeout(&self, who: &ClientId, timeout: std::time::Duration) -> CheckoutError {
        self.0.refusals.count(Cap::QueryWaitTimeout);
        let cause = self.waiting_on(&self.state(), who);
        warn!(pool = %self.0.name, client = %who, cause, "query_wait_timeout reached");
        CheckoutError::WaitTimeout {
            pool: self.0.name.clone(),
            who: who.clone(),
            timeout,
            cause,
        }
    }

    /// Wraps a server from the idle list for `who`, after closing it instead if it died,
    /// aged out, or fails `server_check_query` having been idle `server_check_delay`.
    /// `None`: it was closed, try again.
    async fn ready(&self, server: Box<ServerConn>, who: &ClientId) -> Option<PooledServer> {
        let now = Instant::now();
        let (check, unusable) = {
            let spec = self.spec();
            let settings = &spec.settings;
            let check = !settings.check_query.is_empty()
                && now.duration_since(server.last_used) >= settings.check_delay;
            (check, unusable(&spec, &server, now))
        };
        let mut guard = PooledServer::new(server, self.clone(), self.holder(who));
        if let Some(reason) = unusable {
            guard.close(reason);
            return None;
        }
        if check {
            let spec = self.0.spec.load_full(); // held across the check's await
            let settings = &spec.settings;
            let testing = self.testing(&guard);
            let checked =
                tokio::time::timeout(settings.connect_timeout, guard.exec(&settings.check_query))
                    .await;
            drop(testing);
            if !matches!(checked, Ok(Ok(()))) {
                guard.close("server_check_query failed");
                return None;
            }
        }
        Some(guard)
    }

    /// Opens a backend connection in a slot already counted in `open` and the budget.
    /// `Ok(None)`: the server pushed back (too many connections, starting up); the client
    /// waits on while the pool backs off.
    async fn open_server(&self, who: &ClientId) -> Result<Option<PooledServer>, CheckoutError> {
        let (target, connect_timeout) = {
            let spec = self.spec();
            (spec.target.clone(), spec.settings.connect_timeout)
        };
        let addr = target.addr_label();
        // Boxed: the login is large and rare, and every checkout's future would be its size.
        let connect = Box::pin(server::connect(target, connect_timeout));
        // A client that goes while its server logs in (evicted, cancelled) gives the slot
        // back: a pool not yet proven opens one at a time and would otherwise wait for ever.
        let mut slot = Slot {
            pool: self,
            who,
            abandoned: true,
        };
        let opening = self.opening();
        let outcome = connect.await;
        drop(opening);
        slot.abandoned = false;
        match outcome {
            Ok(mut server) => {
                info!(pool = %self.0.name, server_id = server.id, %addr, "server connected");
                self.list_server(&mut server);
                self.remember_login_params(&server);
                self.login_succeeded();
                Ok(Some(PooledServer::new(
                    server,
                    self.clone(),
                    self.holder(who),
                )))
            }
            Err(err) => {
                warn!(pool = %self.0.name, cause = %err, "server connection failed");
                self.count_failure(&err);
                self.login_failed(&err);
                self.release_slot(self.holder(who).as_ref());
                match err.is_backpressure() {
                    true => Ok(None),
                    false => Err(err.into()),
                }
            }
        }
    }

    /// Counts a failed server connection as a connect failure (unreachable, timed out) or
    /// a login failure (reached, but the login went wrong).
    pub(super) fn count_failure(&self, err: &ServerError) {
        match err {
            ServerError::Connect { .. } | ServerError::ConnectTimeout { .. } => {
                self.0.counters.connect_failed()
            }
            _ => self.0.counters.login_failed(),
        }
    }

    /// `who`, when the pool counts what each identity holds.
    pub(super) fn holder(&self, who: &ClientId) -> Option<ClientId> {
        (self.per_client() > 0).then(|| who.clone())
    }
}

/// A slot being opened; dropped only if its opening was abandoned midway.
struct Slot<'a> {
    pool: &'a Pool,
    who: &'a ClientId,
    abandoned: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.abandoned {
            self.pool.release_slot(self.pool.holder(self.who).as_ref());
        }
    }
}

/// A place in a pool's queue. Dropping it (timeout, cancelled task) leaves the queue and
/// gives back anything handed to it in the meantime, so no server or slot is ever lost.
struct Waiter {
    rx: oneshot::Receiver<Grant>,
    id: u64,
    who: ClientId,
    pool: Pool,
    /// The grant was received: nothing to give back or leave.
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.rx.close();
        let holder = self.pool.holder(&self.who);
        match self.rx.try_recv() {
            Ok(Grant::Server(server)) => self.pool.checkin(server, holder.as_ref()),
            Ok(Grant::Slot) => self.pool.release_slot(holder.as_ref()),
            Ok(Grant::Failed(_)) => {}
            Err(_) => self.pool.leave_queue(&self.who, self.id),
        }
    }
}

/// Why an idle server must not be handed out under `spec`, if it must not.
pub(super) fn unusable(spec: &Spec, server: &ServerConn, now: Instant) -> Option<&'static str> {
    if !spec.leads_to(server) {
        return Some("its route now leads elsewhere (reload)");
    }
    let lifetime = spec.settings.lifetime;
    if !lifetime.is_zero() && now.duration_since(server.created) >= lifetime {
        return Some("server_lifetime reached");
    }
    if server.stream.has_pending_input() {
        return Some("server closed the connection or sent data while idle");
    }
    None
}
