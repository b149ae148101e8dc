//! Giving servers back and handing them on: returned servers and freed slots go to the
//! waiter whose turn it is (the fair queue), as `pool_size`, the reserve, the per-client
//! cap, the budget and the login back-off allow.

use std::collections::HashMap;
use std::time::Instant;

use tracing::info;

use std::sync::Arc;

use super::{BudgetCap, CheckoutError, ClientId, Failure, Grant, Pool, PoolState};
use crate::config::duration;
use crate::server::{ServerConn, ServerError};

/// Stop making room in other pools after this many idle servers closed for one dispatch.
const MAX_EVICTIONS: usize = 8;

impl Pool {
    /// Hands idle servers, then slots for new connections, to waiters in their fair order,
    /// as far as the caps allow. Returns the budget cap that stopped it, if one did: the
    /// caller (with no lock held) may close an idle server elsewhere to make room.
    pub(super) fn dispatch(&self, state: &mut PoolState) -> Option<BudgetCap> {
        if state.paused {
            return None; // waiters wait for RESUME
        }
        let per_client = self.per_client();
        while !state.queue.is_empty() && !state.idle.is_empty() {
            let held = &state.held;
            let Some(at) = state.queue.next(|who, _| may_hold(held, per_client, who)) else {
                break;
            };
            let (Some((who, _, waiting)), Some(server)) = (state.queue.take(at), state.idle.pop())
            else {
                break;
            };
            self.hold(&mut state.held, Some(&who));
            if let Err(Grant::Server(server)) = waiting.tx.send(Grant::Server(server)) {
                state.idle.push(server); // it gave up meanwhile: next one
                self.unhold(&mut state.held, Some(&who));
            }
        }
        self.grant_slots(state)
    }

    /// Lets waiters open new connections while under `pool_size` (or the reserve, for
    /// those that waited `reserve_pool_timeout`), the budget and the login back-off.
    fn grant_slots(&self, state: &mut PoolState) -> Option<BudgetCap> {
        let spec = self.spec();
        let settings = &spec.settings;
        let now = Instant::now();
        let mut spare = false; // a slot handed to a waiter that had just given up
        while !state.queue.is_empty() {
            if !spare && self.backing_off(state, now) {
                break;
            }
            let (open, held) = (state.open, &state.held);
            let Some(at) = state.queue.next(|who, waiting| {
                let reserve_due = now.duration_since(waiting.since) >= settings.reserve_timeout;
                let room = spare
                    || open < settings.size
                    || (open < settings.size + settings.reserve_size && reserve_due);
                room && may_hold(held, settings.per_client, who)
            }) else {
                break;
            };
            if !spare {
                if let Err(cap) = self.0.budget.open(&spec.account, Some(self)) {
                    state.budget_blocked = Some(cap.clone());
                    return Some(cap);
                }
                state.budget_blocked = None;
                state.open += 1;
                if state.login.failing.is_some() {
                    // One attempt per server_login_retry until a login succeeds.
                    state.login.retry_at = Some(now + settings.login_retry);
                }
            }
            let Some((who, _, waiting)) = state.queue.take(at) else {
                break;
            };
            self.hold(&mut state.held, Some(&who));
            spare = waiting.tx.send(Grant::Slot).is_err();
            if spare {
                self.unhold(&mut state.held, Some(&who));
            }
        }
        if spare {
            state.open -= 1;
            if self.0.budget.close(&spec.account) {
                // Rare (a waiter gave up as its slot came); no waking under a pool lock.
                let budget = self.0.budget.clone();
                tokio::spawn(async move { budget.wake() });
            }
        }
        None
    }

    /// After a dispatch, with no lock held: close idle servers of other pools while the
    /// budget is what keeps this pool's waiters waiting.
    pub(super) fn after_dispatch(&self, mut blocked: Option<BudgetCap>) {
        for _ in 0..MAX_EVICTIONS {
            let Some(cap) = blocked else { return };
            if !self.0.budget.make_room(&cap, self) {
                return;
            }
            blocked = self.dispatch(&mut self.state());
        }
    }

    /// Serves waiters as far as possible now (capacity may have appeared).
    pub(super) fn serve_waiters(&self) {
        let blocked = self.dispatch(&mut self.state());
        self.after_dispatch(blocked);
    }

    /// While logins fail, no new connection before `retry_at`; a timer serves the waiters
    /// then, so they keep waiting rather than failing. Before a first login succeeds,
    /// none while one is opening ([`LoginState::may_open`]).
    fn backing_off(&self, state: &mut PoolState, now: Instant) -> bool {
        if state.login.may_open(state.open, now) {
            return false;
        }
        // Not proven yet and a first login under way: its outcome serves the waiters.
        let Some(at) = state.login.retry_at.filter(|at| *at > now) else {
            return true;
        };
        if !state.login.timer_armed {
            state.login.timer_armed = true;
            let pool = self.clone();
            tokio::spawn(async move {
                // A removed pool is not kept alive by its timer.
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = pool.0.closed.cancelled() => return,
                }
                pool.state().login.timer_armed = false;
                pool.serve_waiters();
            });
        }
        true
    }

    /// Records a failed login. Unless Postgres only pushed back, the clients waiting get
    /// the cached error now rather than waiting for a retry that would fail the same way.
    pub(super) fn login_failed(&self, err: &ServerError) {
        let retry = self.spec().settings.login_retry;
        let failure = Arc::new(Failure::new(err, retry));
        let mut state = self.state();
        state.login.failing = Some(failure.clone());
        state.login.retry_at = Some(Instant::now() + retry);
        if failure.backpressure {
            return;
        }
        while let Some(at) = state.queue.next(|_, _| true) {
            if let Some((_, _, waiting)) = state.queue.take(at) {
                let _ = waiting.tx.send(Grant::Failed(failure.clone()));
            }
        }
    }

    /// The cached login error a client gets at once instead of queueing: logins are
    /// failing (not for backpressure), the retry is not due, and the pool has no server
    /// a client could wait for (as PgBouncer).
    pub(super) fn cached_failure(&self, state: &PoolState) -> Option<CheckoutError> {
        let login = &state.login;
        let failure = login.failing.as_ref().filter(|f| !f.backpressure)?;
        let backing_off = login.retry_at.is_some_and(|at| at > Instant::now());
        (backing_off && state.open == 0).then(|| CheckoutError::LoginFailing(failure.clone()))
    }

    pub(super) fn login_succeeded(&self) {
        let recovered = {
            let mut state = self.state();
            state.login.retry_at = None;
            let first = !std::mem::replace(&mut state.login.proven, true);
            state.login.failing.take().is_some() || first
        };
        if recovered {
            self.serve_waiters();
        }
    }

    pub(super) fn may_hold(&self, held: &HashMap<ClientId, usize>, who: &ClientId) -> bool {
        may_hold(held, self.per_client(), who)
    }

    /// Counts one more server (or slot) held by `who`, if holdings are counted.
    pub(super) fn hold(&self, held: &mut HashMap<ClientId, usize>, who: Option<&ClientId>) {
        if let Some(who) = who.filter(|_| self.per_client() > 0) {
            *held.entry(who.clone()).or_insert(0) += 1;
        }
    }

    fn unhold(&self, held: &mut HashMap<ClientId, usize>, who: Option<&ClientId>) {
        if let Some(who) = who.filter(|_| self.per_client() > 0) {
            if let Some(n) = held.get_mut(who) {
                *n -= 1;
                if *n == 0 {
                    held.remove(who);
                }
            }
        }
    }

    /// Returns a clean, idle server held by `who`: to the waiter whose turn it is, or to
    /// the idle list.
    pub(super) fn checkin(&self, mut server: Box<ServerConn>, who: Option<&ClientId>) {
        let spec = self.spec();
        if !spec.leads_to(&server) {
            drop(spec);
            return self.discard(server, "its route now leads elsewhere (reload)", who);
        }
        server.last_used = Instant::now();
        Pool::mark_idle(&server);
        let mut state = self.state();
        self.unhold(&mut state.held, who);
        if self.0.closed.is_cancelled() {
            drop(server);
            state.open -= 1;
            let starved = self.0.budget.close(&spec.account);
            drop(state);
            if starved {
                self.0.budget.wake();
            }
            return;
        }
        // Above the pool's limits only after a reload lowered them: the surplus goes.
        let settings = &spec.settings;
        let surplus = state.open > (settings.size + settings.reserve_size).max(settings.min_size);
        let close =
            Pool::must_close(&state, &server).or(surplus.then_some("pool_size lowered (reload)"));
        if let Some(reason) = close {
            // PAUSE, RECONNECT or a smaller pool: its slot goes to whoever may open one now.
            drop(state);
            drop(spec);
            return self.discard(server, reason, None);
        }
        state.idle.push(server);
        if state.queue.is_empty() {
            return;
        }
        let blocked = self.dispatch(&mut state);
        drop(state);
        self.after_dispatch(blocked);
    }

    /// Gives up one counted connection (closed or never opened): pools starved by the
    /// budget get the room first, then this pool's own waiters.
    pub(super) fn release_slot(&self, who: Option<&ClientId>) {
        let starved = {
            let mut state = self.state();
            self.unhold(&mut state.held, who);
            state.open -= 1;
            self.0.budget.close(&self.spec().account)
        };
        if starved {
            self.0.budget.wake();
        }
        self.serve_waiters();
    }

    /// Closes a server that must not be reused.
    pub(super) fn discard(&self, server: Box<ServerConn>, reason: &str, who: Option<&ClientId>) {
        info!(pool = %self.0.name, server_id = server.id, reason, "server closed");
        drop(server);
        self.release_slot(who);
    }

    /// A waiter gave up before anything was handed to it.
    pub(super) fn leave_queue(&self, who: &ClientId, id: u64) {
        self.state().queue.remove(who, id);
    }

    /// Closes this pool's longest-idle server to make room under `cap` for another pool.
    pub(super) fn evict_idle(&self, cap: &BudgetCap) -> bool {
        let mut state = self.state();
        if state.idle.is_empty() {
            return false;
        }
        let server = state.idle.remove(0);
        state.open -= 1;
        // The pool that asked for room takes it; it is not among those to wake.
        let _ = self.0.budget.close(&self.spec().account);
        drop(state);
        info!(pool = %self.0.name, server_id = server.id, reason = %format!("room for a waiter under {cap}"), "server closed");
        true
    }

    /// Closes every idle server (shutdown, or the pool removed); returns how many.
    pub(super) fn close_idle(&self) -> usize {
        let idle = {
            let mut state = self.state();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        let mut starved = false;
        for _ in &idle {
            starved |= self.0.budget.close(&self.spec().account);
        }
        if starved {
            self.0.budget.wake();
        }
        idle.len()
    }

    /// What `who` is waiting on, naming the cap and its value.
    pub(super) fn waiting_on(&self, state: &PoolState, who: &ClientId) -> String {
        let spec = self.spec();
        let settings = &spec.settings;
        if !may_hold(&state.held, settings.per_client, who) {
            return format!(
                "max_server_conn_per_client = {} for {who}",
                settings.per_client
            );
        }
        if let Some(err) = state.login.failing.as_ref().map(|f| &f.text) {
            let retry = duration::format(settings.login_retry);
            return format!(
                "server login failing, retried every server_login_retry = {retry}: {err}"
            );
        }
        match (&state.budget_blocked, settings.reserve_size) {
            (Some(cap), _) if state.open < settings.size => cap.to_string(),
            (_, 0) => format!("pool_size = {}", settings.size),
            (_, reserve) => format!(
                "pool_size = {}, reserve_pool_size = {reserve}",
                settings.size
            ),
        }
    }

    /// The NOTICE text for waiter `id` of `who`: where it is in the queue and why.
    pub(super) fn queued_notice(&self, who: &ClientId, id: u64) -> Option<String> {
        let state = self.state();
        let ahead = state.queue.ahead(who, id)?;
        let cause = self.waiting_on(&state, who);
        let clients = if ahead == 1 { "client" } else { "clients" };
        Some(format!(
            "waiting for a server connection of pool \"{}\" behind {ahead} other {clients} ({cause})",
            self.0.name
        ))
    }
}

/// Whether `who` may hold one more server under `per_client` (zero: unlimited).
fn may_hold(held: &HashMap<ClientId, usize>, per_client: usize, who: &ClientId) -> bool {
    per_client == 0 || held.get(who).copied().unwrap_or(0) < per_client
}
