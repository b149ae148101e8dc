//! Server pools: one [`Pool`] per (database, user), found or created through [`Pools`].
//!
//! A pool hands out servers as [`PooledServer`] guards. Its counter `open` covers every
//! backend connection it is responsible for (idle, checked out, or being opened), so
//! `pool_size` holds by construction: a slot is taken before a connection is opened and
//! given back only when that connection is gone. Waiters queue FIFO and are handed a server
//! (or a slot to open one) directly by whoever frees it.

mod guard;
mod maintenance;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::PoolMode;
use crate::protocol::{sqlstate, PgError};
use crate::server::{self, ServerConn, ServerError, ServerTarget};

pub use guard::PooledServer;

/// The limits and timings of one pool, resolved from global, database and user settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub mode: PoolMode,
    pub reset_query: String,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub connect_timeout: Duration,
    pub wait_timeout: Duration,
}

/// Why a client got no server.
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("no server connection for pool \"{pool}\" became free within query_wait_timeout = {timeout:?} (pool_size = {size})")]
    WaitTimeout {
        pool: String,
        timeout: Duration,
        size: usize,
    },
    #[error("pool \"{0}\" is shutting down")]
    Closed(String),
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
            CheckoutError::Server(e) => e.to_client_error(),
        }
    }
}

/// What a waiter is handed: a ready server, or a slot under `pool_size` to open one with.
// A grant only lives for one hand-off through a oneshot; boxing the server would cost an
// allocation per hand-off to save bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
enum Grant {
    Server(ServerConn),
    Slot,
}

#[derive(Default)]
struct PoolState {
    /// Idle servers, most recently used last (reused first, so the rest can expire).
    idle: Vec<ServerConn>,
    /// Backend connections this pool answers for: idle + checked out + being opened.
    open: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
}

struct PoolShared {
    name: String,
    target: Arc<ServerTarget>,
    settings: PoolSettings,
    state: Mutex<PoolState>,
    closed: CancellationToken,
    /// Clients pinned to their server (transaction mode, unmovable session state).
    pinned: AtomicUsize,
    /// What this pool's servers report right after login; clients are told these (with
    /// their own settings laid over) without waiting for a server.
    login_params: Mutex<Option<Arc<BTreeMap<String, String>>>>,
}

/// A cheap-clone handle to one (database, user) pool.
#[derive(Clone)]
pub struct Pool(Arc<PoolShared>);

impl Pool {
    fn new(
        name: String,
        target: ServerTarget,
        settings: PoolSettings,
        closed: CancellationToken,
    ) -> Pool {
        let pool = Pool(Arc::new(PoolShared {
            name,
            target: Arc::new(target),
            settings,
            state: Mutex::new(PoolState::default()),
            closed,
            pinned: AtomicUsize::new(0),
            login_params: Mutex::new(None),
        }));
        tokio::spawn(maintenance::run(pool.clone()));
        pool
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.0.settings
    }

    /// The lock is never held across an `.await`, so a std mutex is the cheaper choice.
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.0
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a client as pinned for as long as the returned guard lives.
    pub fn pin(&self) -> PinGuard {
        self.0.pinned.fetch_add(1, Ordering::Relaxed);
        PinGuard(self.clone())
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
        if cached.is_none() {
            *cached = Some(Arc::new(server.reported().clone()));
        }
    }

    pub fn pinned_clients(&self) -> usize {
        self.0.pinned.load(Ordering::Relaxed)
    }

    /// Gets a server: an idle one, a new one if under `pool_size`, or the next one freed,
    /// waiting at most `query_wait_timeout`.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        if self.0.closed.is_cancelled() {
            return Err(CheckoutError::Closed(self.0.name.clone()));
        }
        let rx = {
            let mut state = self.state();
            if let Some(server) = self.take_idle(&mut state) {
                return Ok(PooledServer::new(server, self.clone()));
            }
            if state.open < self.0.settings.size {
                state.open += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.waiters.push_back(tx);
                Some(rx)
            }
        };
        match rx {
            None => self.open_server().await,
            Some(rx) => self.wait(rx).await,
        }
    }

    /// Pops the most recently used idle server that is still usable, closing dead or
    /// over-age ones on the way.
    fn take_idle(&self, state: &mut PoolState) -> Option<ServerConn> {
        while let Some(server) = state.idle.pop() {
            if let Some(reason) = self.unusable(&server, Instant::now()) {
                state.open -= 1;
                info!(pool = %self.0.name, server_id = server.id, reason, "server closed");
                continue;
            }
            return Some(server);
        }
        None
    }

    /// Why an idle server must not be handed out, if it must not.
    fn unusable(&self, server: &ServerConn, now: Instant) -> Option<&'static str> {
        let lifetime = self.0.settings.lifetime;
        if !lifetime.is_zero() && now.duration_since(server.created) >= lifetime {
            return Some("server_lifetime reached");
        }
        if server.stream.has_pending_input() {
            return Some("server closed the connection or sent data while idle");
        }
        None
    }

    async fn wait(&self, rx: oneshot::Receiver<Grant>) -> Result<PooledServer, CheckoutError> {
        let mut waiter = Waiter {
            rx,
            pool: self.clone(),
        };
        let timeout = self.0.settings.wait_timeout;
        let grant = if timeout.is_zero() {
            (&mut waiter.rx).await.ok()
        } else {
            match tokio::time::timeout(timeout, &mut waiter.rx).await {
                Ok(grant) => grant.ok(),
                Err(_) => {
                    return Err(CheckoutError::WaitTimeout {
                        pool: self.0.name.clone(),
                        timeout,
                        size: self.0.settings.size,
                    })
                }
            }
        };
        match grant {
            Some(Grant::Server(server)) => Ok(PooledServer::new(server, self.clone())),
            Some(Grant::Slot) => self.open_server().await,
            None => Err(CheckoutError::Closed(self.0.name.clone())),
        }
    }

    /// Opens a backend connection in a slot already counted in `open`.
    async fn open_server(&self) -> Result<PooledServer, CheckoutError> {
        match server::connect(self.0.target.clone(), self.0.settings.connect_timeout).await {
            Ok(server) => {
                info!(pool = %self.0.name, server_id = server.id, addr = %self.0.target.addr_label(), "server connected");
                self.remember_login_params(&server);
                Ok(PooledServer::new(server, self.clone()))
            }
            Err(err) => {
                warn!(pool = %self.0.name, cause = %err, "server connection failed");
                self.release_slot();
                Err(err.into())
            }
        }
    }

    /// Returns a clean, idle server: straight to the longest waiter, or to the idle list.
    fn checkin(&self, mut server: ServerConn) {
        server.last_used = Instant::now();
        let mut state = self.state();
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(Grant::Server(server)) {
                Ok(()) => return,
                Err(Grant::Server(back)) => server = back,
                Err(Grant::Slot) => unreachable!("send returns what it was given"),
            }
        }
        if self.0.closed.is_cancelled() {
            state.open -= 1;
            return;
        }
        state.idle.push(server);
    }

    /// Gives up one counted connection (closed or never opened), passing the slot to a waiter.
    fn release_slot(&self) {
        let mut state = self.state();
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.send(Grant::Slot).is_ok() {
                return;
            }
        }
        state.open -= 1;
    }

    /// Closes a server that must not be reused.
    fn discard(&self, server: ServerConn, reason: &str) {
        info!(pool = %self.0.name, server_id = server.id, reason, "server closed");
        drop(server);
        self.release_slot();
    }
}

/// A pinned client's mark on its pool; dropped when the client leaves.
pub struct PinGuard(Pool);

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.0 .0.pinned.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place in a pool's queue. Dropping it (timeout, cancelled task) gives back anything
/// that was handed to it in the meantime, so no server or slot is ever lost.
struct Waiter {
    rx: oneshot::Receiver<Grant>,
    pool: Pool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Grant::Server(server)) => self.pool.checkin(server),
            Ok(Grant::Slot) => self.pool.release_slot(),
            Err(_) => {}
        }
    }
}

/// Identifies a pool: the database name the client asked for and the client's user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// All pools of the process.
#[derive(Clone, Default)]
pub struct Pools {
    map: Arc<DashMap<PoolKey, Pool>>,
    closed: CancellationToken,
}

impl Pools {
    /// The pool for `key`, created with `make` on first use.
    pub fn get_or_create(
        &self,
        key: PoolKey,
        make: impl FnOnce() -> (ServerTarget, PoolSettings),
    ) -> Pool {
        if let Some(pool) = self.map.get(&key) {
            return pool.clone();
        }
        self.map
            .entry(key.clone())
            .or_insert_with(|| {
                let (target, settings) = make();
                Pool::new(
                    format!("{}/{}", key.database, key.user),
                    target,
                    settings,
                    self.closed.child_token(),
                )
            })
            .clone()
    }

    pub fn all(&self) -> Vec<Pool> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    /// Stops maintenance and closes every idle server; servers in use close when returned.
    pub fn close(&self) {
        self.closed.cancel();
        for pool in self.all() {
            let mut state = pool.state();
            state.open -= state.idle.len();
            state.idle.clear();
        }
    }
}
