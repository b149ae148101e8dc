//! Server pools: one [`Pool`] per (database, user), found or created through [`Pools`].
//!
//! A pool hands out servers as [`PooledServer`] guards. Its counter `open` covers every
//! backend connection it is responsible for (idle, checked out, or being opened), so
//! `pool_size` holds by construction: a slot is taken before a connection is opened and
//! given back only when that connection is gone. The caps that span pools are the
//! [`budget`]'s; who of the waiting clients is served next is the [`queue`]'s.
//!
//! - [`checkout`]: getting a server (fast path, waiting, opening, checking).
//! - [`dispatch`]: giving servers and slots back and handing them to waiters.
//! - [`lifetime`]: client leases, and when a pool is removed.
//! - [`spec`]: a pool's target and settings, made from the configuration and swapped by
//!   a reload ([`Pools::reconfigure`]).

mod budget;
mod checkout;
mod control;
mod dispatch;
mod guard;
mod lifetime;
mod maintenance;
mod pins;
mod queue;
mod reconfigure;
mod snapshot;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::PoolMode;
use crate::protocol::{sqlstate, PgError};
use crate::refusals::Refusals;
use crate::server::{ServerConn, ServerError, ServerTarget};
use crate::stats::{Live, PoolCounters, ServerInfo};

pub use budget::{Account, Budget, BudgetCap};
pub use control::{ControlError, Paused};
pub use guard::{Leaving, PooledServer};
pub use lifetime::PoolLease;
pub use pins::PinGuard;
pub use queue::ClientId;
pub use reconfigure::PoolsReport;
pub use snapshot::{PoolSnapshot, ServerCounts};
pub use spec::{Reconfigured, Settings};

use spec::Spec;

/// The limits and timings of one pool, resolved from global, database and user settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    /// Servers opened beyond `size` for clients that waited `reserve_timeout`.
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    /// Servers one client identity may hold at once (zero: unlimited).
    pub per_client: usize,
    pub mode: PoolMode,
    pub reset_query: String,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub connect_timeout: Duration,
    pub wait_timeout: Duration,
    /// When a waiting client is told it is queued (zero: never).
    pub wait_notify: Duration,
    pub login_retry: Duration,
    pub check_delay: Duration,
    /// Empty: idle servers are handed out untested.
    pub check_query: String,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    /// For a pool made for the wildcard route: removed once unused this long (zero:
    /// never). `None` for named routes, which the configuration bounds.
    pub autodb_idle_timeout: Option<Duration>,
    /// The period the console's averages are taken over.
    pub stats_period: Duration,
}

/// Why a client got no server.
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("{who} got no server connection from pool \"{pool}\" within query_wait_timeout = {} ({cause})", crate::config::duration::format(*timeout))]
    WaitTimeout {
        pool: String,
        who: ClientId,
        timeout: Duration,
        /// The cap or condition the client was waiting on, with its value.
        cause: String,
    },
    #[error("pool \"{0}\" is shutting down")]
    Closed(String),
    #[error("server login has been failing, cached error: {} (server_login_retry = {})", .0.message, crate::config::duration::format(.0.retry))]
    LoginFailing(Arc<Failure>),
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl CheckoutError {
    pub fn to_client_error(&self) -> PgError {
        match self {
            CheckoutError::WaitTimeout { .. } => {
                PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, self.to_string())
            }
            CheckoutError::Closed(_) => PgError::shutting_down(),
            CheckoutError::LoginFailing(failure) => {
                PgError::fatal(failure.code.clone(), self.to_string())
            }
            CheckoutError::Server(e) => e.to_client_error(),
        }
    }
}

/// What a waiter is handed: a ready server, or a slot (counted in `open` and the budget)
/// to open one with.
// A grant only lives for one hand-off through a oneshot; boxing the server would cost an
// allocation per hand-off to save bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
enum Grant {
    Server(Box<ServerConn>),
    Slot,
    /// Logins are failing: the client gets the cached error instead of waiting.
    Failed(Arc<Failure>),
}

/// One queued client: where its grant goes, and since when it waits (for the reserve).
struct Waiting {
    tx: oneshot::Sender<Grant>,
    since: Instant,
}

/// The state of logging in to the server: after a failure the pool backs off
/// (`server_login_retry`) and then tries one connection at a time until one succeeds.
/// A failed server login as clients are told it while the pool backs off.
#[derive(Debug)]
pub struct Failure {
    /// The SQLSTATE the client gets: Postgres' own when it refused the login.
    pub code: String,
    /// What the client is told went wrong (Postgres' message when it refused).
    pub message: String,
    /// The whole error, for logs and the queue's explanations.
    pub text: String,
    /// Postgres pushed back (too many connections, starting up): clients wait, not fail.
    pub backpressure: bool,
    pub retry: Duration,
}

impl Failure {
    fn new(err: &ServerError, retry: Duration) -> Failure {
        let client = err.to_client_error();
        let message = match err {
            ServerError::Refused { message, .. } => message.clone(),
            _ => client.message,
        };
        Failure {
            code: client.code.into_owned(),
            message,
            text: err.to_string(),
            backpressure: err.is_backpressure(),
            retry,
        }
    }
}

#[derive(Default)]
struct LoginState {
    /// The last failure, while logins are failing.
    failing: Option<Arc<Failure>>,
    /// No new connection before this.
    retry_at: Option<Instant>,
    /// A task will serve the waiters at `retry_at`.
    timer_armed: bool,
    /// A login to this pool's server has succeeded at least once.
    proven: bool,
}

impl LoginState {
    /// Whether another connection may start opening now, with `open` already counted.
    /// Until a first login succeeds, one at a time: a server that is down or refuses
    /// this login sees one attempt, not one per waiting client (the waiters get its
    /// answer). While logins fail, `retry_at` spaces the attempts as well.
    fn may_open(&self, open: usize, now: Instant) -> bool {
        let backing_off = self.retry_at.is_some_and(|at| at > now);
        !backing_off && (self.proven || open == 0)
    }
}

#[derive(Default)]
struct PoolState {
    /// Idle servers, most recently used last (reused first, so the rest can expire).
    /// Boxed: idle servers move in and out on every transaction, as a pointer.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    /// Backend connections this pool answers for: idle + checked out + being opened.
    open: usize,
    queue: queue::FairQueue<Waiting>,
    next_waiter: u64,
    /// Servers (and slots) each identity holds; kept only with `max_server_conn_per_client`.
    held: HashMap<ClientId, usize>,
    login: LoginState,
    /// The budget cap that last stopped a connection from opening, until one opens.
    budget_blocked: Option<BudgetCap>,
    /// Clients holding a [`PoolLease`].
    clients: usize,
    /// Since when no client holds a lease (for `autodb_idle_timeout`).
    unused_since: Option<Instant>,
    /// Removed from the registry: no new lease, maintenance stopped.
    retired: bool,
    /// Its route or user left the configuration: removed when its last client leaves.
    orphaned: bool,
    /// PAUSE: no server handed out or opened, every one returned is closed ([`control`]).
    paused: bool,
    /// RECONNECT: servers opened before this are closed instead of reused.
    reconnect_before: Option<Instant>,
}

pub(crate) struct PoolShared {
    name: String,
    key: PoolKey,
    /// Where the pool is registered, to remove itself when no longer needed.
    registry: Weak<Registry>,
    /// Target, settings and account: one lock-free load per read, swapped by a reload.
    spec: arc_swap::ArcSwap<Spec>,
    /// `max_server_conn_per_client` of the spec in force, read on every checkout and
    /// checkin: a plain load rather than a spec load.
    per_client: AtomicUsize,
    budget: Arc<Budget>,
    refusals: Arc<Refusals>,
    state: Mutex<PoolState>,
    closed: CancellationToken,
    /// Clients pinned to their server (transaction mode, unmovable session state).
    pinned: AtomicUsize,
    /// Pinned clients by reason (a client with two reasons counts under both). Pins
    /// change rarely, so a mutex is cheap enough.
    pin_reasons: Mutex<Vec<(&'static str, usize)>>,
    /// What this pool's servers report right after login; clients are told these (with
    /// their own settings laid over) without waiting for a server.
    login_params: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    /// Transactions, queries, bytes, waits and failures since start.
    counters: PoolCounters,
    /// Servers being opened (SHOW POOLS' `sv_login`).
    opening: AtomicUsize,
    /// Servers running the reset or check query (`sv_tested`).
    testing: AtomicUsize,
    /// Where its servers are listed for SHOW SERVERS (shared by all pools).
    servers: Live<ServerInfo>,
}

/// A cheap-clone handle to one (database, user) pool.
#[derive(Clone)]
pub struct Pool(Arc<PoolShared>);

/// A pool's counts at one moment, for tests, logs and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub open: usize,
    pub idle: usize,
    pub waiting: usize,
    /// Servers held by clients under `max_server_conn_per_client` accounting.
    pub held: usize,
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The settings in force now (a reload may change them; see [`spec`]).
    pub fn settings(&self) -> Settings {
        Settings(self.spec())
    }

    /// Where its servers log in now.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.spec().target.clone()
    }

    fn spec(&self) -> arc_swap::Guard<Arc<Spec>> {
        self.0.spec.load()
    }

    /// `max_server_conn_per_client` in force (0: holdings are not counted).
    fn per_client(&self) -> usize {
        self.0.per_client.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its counters, which the relay adds to at the end of each request.
    pub fn counters(&self) -> &PoolCounters {
        &self.0.counters
    }

    pub fn key(&self) -> &PoolKey {
        &self.0.key
    }

    /// The lock is never held across an `.await`, so a std mutex is the cheaper choice.
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.0
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.state();
        PoolStats {
            open: state.open,
            idle: state.idle.len(),
            waiting: state.queue.len(),
            held: state.held.values().sum(),
        }
    }

    pub fn login_params(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.0
            .login_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Caches a freshly logged-in server's parameters (the first one's are kept).
    fn remember_login_params(&self, server: &ServerConn) {
        let mut cached = self
            .0
            .login_params
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cached.is_none() && self.is_current(server) {
            *cached = Some(Arc::new(server.reported().clone()));
        }
    }
}

/// Identifies a pool: the database name the client asked for and the client's user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// All pools of the process, and the budget they share.
#[derive(Clone)]
pub struct Pools(Arc<Registry>);

pub(crate) struct Registry {
    map: DashMap<PoolKey, Pool>,
    /// Login failures of removed pools, by key, while still fresh ([`lifetime`]).
    failures: Mutex<HashMap<PoolKey, lifetime::Remembered>>,
    budget: Arc<Budget>,
    refusals: Arc<Refusals>,
    closed: CancellationToken,
    servers: Live<ServerInfo>,
    /// What the console paused or disabled, for pools made later too.
    control: Mutex<control::Control>,
}

impl Pools {
    pub fn new(max_server_conn: usize, refusals: Arc<Refusals>) -> Pools {
        Pools(Arc::new(Registry {
            map: DashMap::new(),
            failures: Mutex::default(),
            budget: Arc::new(Budget::new(max_server_conn)),
            refusals,
            closed: CancellationToken::new(),
            servers: Live::default(),
            control: Mutex::default(),
        }))
    }

    /// A lease on the pool for `key`, created with `make` if there is none (or the one
    /// there is being removed).
    pub fn get_or_create(
        &self,
        key: PoolKey,
        make: impl Fn() -> (ServerTarget, PoolSettings),
    ) -> PoolLease {
        loop {
            if let Some(lease) = self.0.map.get(&key).and_then(|pool| pool.lease()) {
                return lease;
            }
            let mut created = None;
            let lease = match self.0.map.entry(key.clone()) {
                dashmap::Entry::Occupied(entry) => entry.get().lease(),
                dashmap::Entry::Vacant(entry) => {
                    let (target, settings) = make();
                    let pool = self.new_pool(&key, target, settings);
                    let lease = pool.lease();
                    created = Some(pool.clone());
                    entry.insert(pool);
                    lease
                }
            };
            if let Some(pool) = created {
                self.0.budget.join(&pool);
                tokio::spawn(maintenance::run(pool));
            }
            if let Some(lease) = lease {
                return lease;
            }
            // A pool being removed is still in the map for an instant: take it out.
            self.0.map.remove_if(&key, |_, pool| pool.is_retired());
        }
    }

    fn new_pool(&self, key: &PoolKey, target: ServerTarget, settings: PoolSettings) -> Pool {
        let spec = Spec::new(key, Arc::new(target), settings);
        let mut state = PoolState {
            paused: self.is_paused(&key.database),
            ..PoolState::default()
        };
        if let Some(remembered) = self.0.recall(key, Instant::now()) {
            state.login.failing = Some(remembered.failure);
            state.login.retry_at = Some(remembered.retry_at);
        }
        Pool(Arc::new(PoolShared {
            name: format!("{}/{}", key.database, key.user),
            key: key.clone(),
            registry: Arc::downgrade(&self.0),
            per_client: AtomicUsize::new(spec.settings.per_client),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            budget: self.0.budget.clone(),
            refusals: self.0.refusals.clone(),
            state: Mutex::new(state),
            closed: self.0.closed.child_token(),
            pinned: AtomicUsize::new(0),
            pin_reasons: Mutex::default(),
            login_params: Mutex::new(None),
            counters: PoolCounters::default(),
            opening: AtomicUsize::new(0),
            testing: AtomicUsize::new(0),
            servers: self.0.servers.clone(),
        }))
    }

    pub fn all(&self) -> Vec<Pool> {
        self.0.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Pools registered now.
    pub fn len(&self) -> usize {
        self.0.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.map.is_empty()
    }

    /// Backend connections open or opening, all pools together.
    pub fn server_connections(&self) -> usize {
        self.0.budget.total()
    }

    /// Stops maintenance and closes every idle server; servers in use close when returned.
    pub fn close(&self) {
        self.0.closed.cancel();
        for pool in self.all() {
            pool.close_idle();
        }
    }
}
