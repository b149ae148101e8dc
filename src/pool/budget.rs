//! The budget: whether one more backend connection may open under the caps that span pools
//! (`max_db_connections`, `max_user_connections`, `max_server_conn`), and which pools wait
//! for room. A pool's own `pool_size` is checked by the pool; everything else is here.
//!
//! Lock order: a pool's lock may be held while the budget's is taken, never the reverse;
//! so the budget only records starved pools, and whoever frees room wakes them after
//! dropping its own pool lock ([`Budget::wake`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{Pool, PoolShared};

/// What one pool's connections count against: its database name and user, and the caps
/// that apply to them (zero: unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
}

/// The cross-pool cap that stopped a connection from opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetCap {
    Database { name: Arc<str>, max: usize },
    User { name: Arc<str>, max: usize },
    Total { max: usize },
}

impl BudgetCap {
    /// Whether closing a connection of `account` would make room under this cap.
    fn covers(&self, account: &Account) -> bool {
        match self {
            BudgetCap::Database { name, .. } => *name == account.database,
            BudgetCap::User { name, .. } => *name == account.user,
            BudgetCap::Total { .. } => true,
        }
    }
}

impl fmt::Display for BudgetCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetCap::Database { name, max } => {
                write!(f, "max_db_connections = {max} for database \"{name}\"")
            }
            BudgetCap::User { name, max } => {
                write!(f, "max_user_connections = {max} for user \"{name}\"")
            }
            BudgetCap::Total { max } => write!(f, "max_server_conn = {max}"),
        }
    }
}

#[derive(Default)]
struct State {
    total: usize,
    per_database: HashMap<Arc<str>, usize>,
    per_user: HashMap<Arc<str>, usize>,
    /// Pools with waiters that the budget refused, in the order they were refused.
    starved: Vec<Pool>,
}

/// The process-wide connection budget, shared by every pool.
pub struct Budget {
    /// Changed by a reload; read under the state lock, so no opening sees half a change.
    max_server_conn: AtomicUsize,
    state: Mutex<State>,
    /// Every pool, for finding an idle server to close when a cap is full.
    members: Mutex<Vec<Weak<PoolShared>>>,
}

impl Budget {
    pub fn new(max_server_conn: usize) -> Budget {
        Budget {
            max_server_conn: AtomicUsize::new(max_server_conn),
            state: Mutex::default(),
            members: Mutex::default(),
        }
    }

    /// A std mutex: never held across an `.await`, and only for a few map updates.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn join(&self, pool: &Pool) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&pool.0));
    }

    /// Charges one connection to `account`, or names the full cap. With `starved`, a
    /// refused pool is recorded so that the next connection closed anywhere wakes it.
    pub(super) fn open(&self, account: &Account, starved: Option<&Pool>) -> Result<(), BudgetCap> {
        let mut state = self.state();
        if let Err(cap) = self.room(&state, account) {
            if let Some(pool) = starved {
                if !state.starved.iter().any(|p| Arc::ptr_eq(&p.0, &pool.0)) {
                    state.starved.push(pool.clone());
                }
            }
            return Err(cap);
        }
        state.total += 1;
        *state
            .per_database
            .entry(account.database.clone())
            .or_insert(0) += 1;
        *state.per_user.entry(account.user.clone()).or_insert(0) += 1;
        Ok(())
    }

    fn room(&self, state: &State, account: &Account) -> Result<(), BudgetCap> {
        let count = |map: &HashMap<Arc<str>, usize>, key: &Arc<str>| *map.get(key).unwrap_or(&0);
        let full = |max: usize, n: usize| max > 0 && n >= max;
        let max_server_conn = self.max_server_conn.load(Ordering::Relaxed);
        if full(max_server_conn, state.total) {
            return Err(BudgetCap::Total {
                max: max_server_conn,
            });
        }
        let max = account.max_db_connections;
        if full(max, count(&state.per_database, &account.database)) {
            let name = account.database.clone();
            return Err(BudgetCap::Database { name, max });
        }
        let max = account.max_user_connections;
        if full(max, count(&state.per_user, &account.user)) {
            let name = account.user.clone();
            return Err(BudgetCap::User { name, max });
        }
        Ok(())
    }

    /// Gives back one connection of `account`. True if some pool is starved: the caller
    /// calls [`Budget::wake`] once it holds no pool lock.
    #[must_use]
    pub(super) fn close(&self, account: &Account) -> bool {
        let mut guard = self.state();
        let state = &mut *guard;
        state.total = state.total.saturating_sub(1);
        for (map, key) in [
            (&mut state.per_database, &account.database),
            (&mut state.per_user, &account.user),
        ] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        !state.starved.is_empty()
    }

    /// Lets every starved pool try again, oldest first. Call with no pool lock held.
    pub(super) fn wake(&self) {
        let starved = std::mem::take(&mut self.state().starved);
        for pool in starved {
            pool.serve_waiters();
        }
    }

    /// Closes an idle server of another pool whose connections count against `cap`, so
    /// that `pool`'s waiter can have the room. Call with no pool lock held.
    pub(super) fn make_room(&self, cap: &BudgetCap, pool: &Pool) -> bool {
        let members: Vec<Pool> = {
            let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            members
                .iter()
                .filter_map(|m| m.upgrade().map(Pool))
                .collect()
        };
        members
            .iter()
            .filter(|m| !Arc::ptr_eq(&m.0, &pool.0) && cap.covers(&m.spec().account))
            .any(|m| m.evict_idle(cap))
    }

    /// A new `max_server_conn` (zero: unlimited). Connections above a lowered cap stay
    /// until they close; the caller wakes starved pools after a raise ([`Budget::wake`]).
    pub(super) fn set_max_server_conn(&self, max: usize) {
        let _state = self.state();
        self.max_server_conn.store(max, Ordering::Relaxed);
    }

    /// Backend connections open (or opening) in total.
    pub fn total(&self) -> usize {
        self.state().total
    }
}
