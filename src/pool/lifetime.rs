//! When a pool goes. Clients hold a [`PoolLease`] for as long as they use a pool; when the
//! last one leaves, a pool whose server login never succeeded is removed at once (a
//! made-up database name must not leave a pool behind), and a pool made for the wildcard
//! route is removed once unused for `autodb_idle_timeout`, and a pool whose route or user
//! a reload removed goes with its last client ([`Pool::orphan`]). A removed pool stops its
//! maintenance, closes its idle servers (releasing their caps) and accepts no lease; a
//! client arriving meanwhile gets a fresh pool. A login failure still fresh is remembered
//! by key, so a new pool for the same name keeps failing fast instead of trying again.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::{Failure, Pool, PoolKey, Registry};

/// Login failures remembered at most: past this, a removed pool's failure is forgotten
/// (its next client simply tries the server again). Each is a few hundred bytes.
const MAX_REMEMBERED: usize = 10_000;

/// A failure remembered for a pool that was removed, until `retry_at`.
pub(super) struct Remembered {
    pub(super) failure: Arc<Failure>,
    pub(super) retry_at: Instant,
}

/// A client's hold on a pool: the pool stays while a lease exists. Derefs to the pool.
pub struct PoolLease(Pool);

impl Deref for PoolLease {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.0
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.state();
            state.clients -= 1;
            if state.clients == 0 {
                state.unused_since = Some(Instant::now());
            }
            state.clients == 0
        };
        if last {
            self.0.retire_if_unneeded();
        }
    }
}

impl Pool {
    /// A lease for one more client, unless the pool has been removed.
    pub(super) fn lease(&self) -> Option<PoolLease> {
        let mut state = self.state();
        if state.retired {
            return None;
        }
        state.clients += 1;
        state.unused_since = None;
        Some(PoolLease(self.clone()))
    }

    pub(super) fn is_retired(&self) -> bool {
        self.state().retired
    }

    /// Removes the pool from the registry if no client uses it and it is not worth
    /// keeping (see the module doc). True if it was removed.
    pub(super) fn retire_if_unneeded(&self) -> bool {
        let Some(registry) = self.0.registry.upgrade() else {
            return false;
        };
        let now = Instant::now();
        // The failure is remembered under the entry's lock, before the pool leaves the map:
        // a client arriving just after finds either this pool or the remembered failure.
        let removed = (registry.map).remove_if(&self.0.key, |_, pool| {
            let go = Arc::ptr_eq(&pool.0, &self.0) && self.mark_retired(now);
            if go {
                self.remember_failure(&registry, now);
            }
            go
        });
        if removed.is_some() {
            self.wind_down();
        }
        removed.is_some()
    }

    /// Marks the pool retired if it should go now. Called under the registry's entry
    /// lock, so no lease can be taken meanwhile.
    fn mark_retired(&self, now: Instant) -> bool {
        let never_logged_in = self.login_params().is_none();
        let auto_idle = self.spec().settings.autodb_idle_timeout;
        let mut state = self.state();
        if state.clients > 0 || state.retired {
            return false;
        }
        let unused_too_long = auto_idle.filter(|t| !t.is_zero()).is_some_and(|timeout| {
            (state.unused_since).is_some_and(|since| now.duration_since(since) >= timeout)
        });
        let go = (never_logged_in && state.open == 0) || unused_too_long || state.orphaned;
        state.retired |= go;
        go
    }

    /// Hands a failure still fresh to the registry, for the next pool of the same key.
    fn remember_failure(&self, registry: &Registry, now: Instant) {
        let remembered = {
            let state = self.state();
            let login = &state.login;
            match (&login.failing, login.retry_at) {
                (Some(failure), Some(retry_at)) if retry_at > now => Some(Remembered {
                    failure: failure.clone(),
                    retry_at,
                }),
                _ => None,
            }
        };
        if let Some(remembered) = remembered {
            registry.remember(self.0.key.clone(), remembered, now);
        }
    }

    /// After removal: stop maintenance, close idle servers.
    fn wind_down(&self) {
        self.0.closed.cancel();
        let closed = self.close_idle();
        info!(pool = %self.0.name, servers_closed = closed, "pool removed");
    }
}

impl Registry {
    fn remember(&self, key: PoolKey, remembered: Remembered, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, r| r.retry_at > now);
        if failures.len() < MAX_REMEMBERED {
            failures.insert(key, remembered);
        }
    }

    /// A failure remembered for `key` and still fresh, taken (a new pool carries it on).
    pub(super) fn recall(&self, key: &PoolKey, now: Instant) -> Option<Remembered> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key).filter(|r| r.retry_at > now)
    }
}
