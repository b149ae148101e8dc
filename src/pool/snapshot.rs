//! What the console, `/metrics` and the alert rules read of the pools: a pool's counts at
//! one moment ([`PoolSnapshot`], PgBouncer's SHOW POOLS and more), its counters, and the
//! listing of its servers for SHOW SERVERS. Read-only: nothing here changes a pool.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Pool, PoolKey, PoolSettings, Pools};
use crate::config::PoolMode;
use crate::server::ServerConn;
use crate::stats::live::ServerLogin;
use crate::stats::{Averages, Live, ServerInfo, ServerState, Totals};

/// A pool's servers by state, as SHOW POOLS counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Linked to a client.
    pub active: usize,
    /// Idle and usable at once.
    pub idle: usize,
    /// Idle longer than `server_check_delay`: tested before use.
    pub used: usize,
    /// Running the reset or check query.
    pub tested: usize,
    /// Being opened (connecting or logging in).
    pub login: usize,
}

/// One pool at one moment.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub database: String,
    pub user: String,
    pub mode: PoolMode,
    /// Logged-in clients not waiting for a server (PgBouncer's `cl_active`: linked or idle).
    pub cl_active: usize,
    /// Clients that asked for a server and wait for one.
    pub cl_waiting: usize,
    /// Clients holding a server right now.
    pub cl_linked: usize,
    pub servers: ServerCounts,
    /// Backend connections the pool answers for (every state together).
    pub open: usize,
    /// How long the oldest waiter has waited.
    pub maxwait: Duration,
    /// Clients pinned to their server, and by reason.
    pub pinned: usize,
    pub pinned_by_reason: Vec<(&'static str, usize)>,
    /// What the next waiter waits on, naming the cap and its value (`None`: no waiter).
    pub waiting_on: Option<String>,
    /// The cached server login error while logins fail.
    pub login_failing: Option<String>,
    /// Where its servers connect (`host:port` or a socket path).
    pub server_addr: String,
    pub settings: PoolSettings,
    pub totals: Totals,
}

impl PoolSnapshot {
    /// Every server busy (or being opened) and clients waiting: the pool is the bottleneck.
    pub fn saturated(&self) -> bool {
        self.cl_waiting > 0 && self.servers.idle + self.servers.used == 0
    }
}

impl Pool {
    /// The pool's counts now.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = Instant::now();
        let spec = self.spec();
        let settings = &spec.settings;
        let opening = self.0.opening.load(Ordering::Relaxed);
        let testing = self.0.testing.load(Ordering::Relaxed);
        let state = self.state();
        let needs_check = |last_used: Instant| {
            !settings.check_query.is_empty()
                && now.duration_since(last_used) >= settings.check_delay
        };
        let used = state
            .idle
            .iter()
            .filter(|s| needs_check(s.last_used))
            .count();
        let idle = state.idle.len();
        let active = state.open.saturating_sub(idle + opening + testing);
        let oldest = state.queue.iter().map(|w| w.since).min();
        let waiting_on = state
            .queue
            .first_identity()
            .map(|who| self.waiting_on(&state, who));
        let cl_waiting = state.queue.len();
        let snapshot = PoolSnapshot {
            database: self.0.key.database.clone(),
            user: self.0.key.user.clone(),
            mode: settings.mode,
            cl_active: state.clients.saturating_sub(cl_waiting),
            cl_waiting,
            cl_linked: active.min(state.clients),
            servers: ServerCounts {
                active,
                idle: idle - used,
                used,
                tested: testing,
                login: opening,
            },
            open: state.open,
            maxwait: oldest.map_or(Duration::ZERO, |since| now.duration_since(since)),
            pinned: 0,
            pinned_by_reason: Vec::new(),
            waiting_on,
            login_failing: state.login.failing.as_ref().map(|f| f.text.clone()),
            server_addr: spec.target.addr_label(),
            settings: settings.clone(),
            totals: self.0.counters.totals(),
        };
        drop(state);
        PoolSnapshot {
            pinned: self.pinned_clients(),
            pinned_by_reason: self.pinned_by_reason(),
            ..snapshot
        }
    }

    /// Its averages over the last `stats_period` (SHOW STATS' `avg_` columns).
    pub fn averages(&self) -> Averages {
        (self.0.counters).averages(Instant::now(), self.spec().settings.stats_period)
    }

    /// What it did over the last `stats_period`, and how long that was.
    pub fn last_period(&self) -> (Totals, Duration) {
        (self.0.counters).last_period(Instant::now(), self.spec().settings.stats_period)
    }

    /// Its waits over the last one to two `stats_period`s, for percentiles.
    pub fn recent_waits(&self) -> Totals {
        (self.0.counters).recent_waits(Instant::now(), self.spec().settings.stats_period)
    }

    /// What the client identity `who` waits on now, if it waits in this pool.
    pub fn waiting_on_for(&self, who: &super::ClientId) -> Option<String> {
        let state = self.state();
        state
            .queue
            .contains(who)
            .then(|| self.waiting_on(&state, who))
    }

    /// Lists a freshly logged-in server for SHOW SERVERS.
    pub(super) fn list_server(&self, server: &mut ServerConn) {
        // The server's own target: after a reload repointed the pool, it may differ.
        let target = server.target.clone();
        let info = ServerInfo::new(
            server.id,
            ServerLogin {
                database: self.0.key.database.clone(),
                pool_user: self.0.key.user.clone(),
                user: target.user.clone(),
                addr: match target.is_unix() {
                    true => target.addr_label(),
                    false => target.host.clone(),
                },
                port: target.port,
                local: server.stream.local_addr(),
                remote_pid: server.key.pid,
                tls: server.stream.is_encrypted(),
            },
        );
        server.listing = Some(self.0.servers.insert(server.id, info));
    }

    /// Marks a server handed out (the relay links it to its client).
    pub(super) fn mark_active(server: &ServerConn) {
        if let Some(listing) = &server.listing {
            listing.set_state(ServerState::Active);
        }
    }

    pub(super) fn mark_idle(server: &ServerConn) {
        if let Some(listing) = &server.listing {
            listing.idle(server.statements.len());
        }
    }

    /// Counts a server as running a reset or check query while the guard lives.
    pub(super) fn testing<'a>(&'a self, server: &ServerConn) -> Busy<'a> {
        if let Some(listing) = &server.listing {
            listing.set_state(ServerState::Tested);
        }
        self.0.testing.fetch_add(1, Ordering::Relaxed);
        Busy(&self.0.testing)
    }

    /// Counts a server as being opened while the guard lives.
    pub(super) fn opening(&self) -> Busy<'_> {
        self.0.opening.fetch_add(1, Ordering::Relaxed);
        Busy(&self.0.opening)
    }
}

/// One server counted in a state (opening, testing) until dropped.
pub(super) struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pools {
    /// Every pool, by database then user.
    pub fn all_sorted(&self) -> Vec<Pool> {
        let mut all = self.all();
        all.sort_by(|a, b| {
            let (a, b) = (&a.0.key, &b.0.key);
            (&a.database, &a.user).cmp(&(&b.database, &b.user))
        });
        all
    }

    /// Every pool's snapshot, by database then user.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let mut all: Vec<PoolSnapshot> = self.all().iter().map(Pool::snapshot).collect();
        all.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        all
    }

    /// The pool for `key`, if there is one now.
    pub fn get(&self, key: &PoolKey) -> Option<Pool> {
        self.0.map.get(key).map(|pool| pool.clone())
    }

    /// Every logged-in server, for SHOW SERVERS.
    pub fn servers(&self) -> &Live<ServerInfo> {
        &self.0.servers
    }
}
