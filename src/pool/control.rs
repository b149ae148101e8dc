//! What the admin console changes in the pools: PAUSE (no server handed out or opened,
//! every server closed as it comes back; clients wait, not fail), RESUME, DISABLE (new
//! logins to a database refused, checked by the login), RECONNECT (servers closed as they
//! come back) and closing idle servers. What is paused or disabled is kept by database
//! name, so a pool made later (a wildcard route) starts paused too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Pool, PoolState, Pools};
use crate::server::ServerConn;

/// How often PAUSE looks whether the last server has closed.
const PAUSE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub(super) struct Control {
    /// PAUSE without a database: every pool.
    all: bool,
    databases: BTreeSet<String>,
    disabled: BTreeSet<String>,
}

/// What is paused now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Paused {
    pub all: bool,
    pub databases: Vec<String>,
}

/// Why a console command cannot be carried out as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("everything is paused already")]
    AllPaused,
    #[error("database \"{0}\" is paused already")]
    AlreadyPaused(String),
    #[error("nothing is paused")]
    NotPaused,
    #[error("database \"{0}\" is not paused")]
    DatabaseNotPaused(String),
    #[error("every database is paused: RESUME without a name resumes them")]
    ResumeAll,
}

impl Pools {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        (self.0.control.lock()).unwrap_or_else(|p| p.into_inner())
    }

    /// Pools of `database` (all of them for `None`).
    fn pools_of(&self, database: Option<&str>) -> Vec<Pool> {
        let all = self.all().into_iter();
        all.filter(|p| database.is_none_or(|db| p.0.key.database == db))
            .collect()
    }

    /// Pauses `database` (every database for `None`): its idle servers close now, the others
    /// as they are returned, and no server is handed out or opened until RESUME.
    pub fn pause(&self, database: Option<&str>) -> Result<(), ControlError> {
        {
            let mut control = self.control();
            if control.all {
                return Err(ControlError::AllPaused);
            }
            match database {
                None => control.all = true,
                Some(db) if !control.databases.insert(db.to_owned()) => {
                    return Err(ControlError::AlreadyPaused(db.to_owned()));
                }
                Some(_) => {}
            }
        }
        for pool in self.pools_of(database) {
            pool.set_paused(true);
        }
        Ok(())
    }

    /// Waits until the pools of `database` have no server left (or the pause was lifted).
    pub async fn wait_closed(&self, database: Option<&str>) {
        loop {
            let pools = self.pools_of(database);
            let paused = match database {
                Some(db) => self.is_paused(db),
                None => self.control().all,
            };
            if !paused || pools.iter().all(|p| p.state().open == 0) {
                return;
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }
    }

    /// Lifts a PAUSE (or KILL) of `database`, or of everything for `None`.
    pub fn resume(&self, database: Option<&str>) -> Result<(), ControlError> {
        {
            let mut control = self.control();
            match database {
                None if !control.all && control.databases.is_empty() => {
                    return Err(ControlError::NotPaused);
                }
                None => {
                    control.all = false;
                    control.databases.clear();
                }
                Some(_) if control.all => return Err(ControlError::ResumeAll),
                Some(db) if !control.databases.remove(db) => {
                    return Err(ControlError::DatabaseNotPaused(db.to_owned()));
                }
                Some(_) => {}
            }
        }
        for pool in self.pools_of(database) {
            pool.set_paused(false);
        }
        Ok(())
    }

    pub fn is_paused(&self, database: &str) -> bool {
        let control = self.control();
        control.all || control.databases.contains(database)
    }

    pub fn paused(&self) -> Paused {
        let control = self.control();
        Paused {
            all: control.all,
            databases: control.databases.iter().cloned().collect(),
        }
    }

    /// DISABLE: new logins to `database` are refused until ENABLE. False if it was already.
    pub fn disable(&self, database: &str) -> bool {
        self.control().disabled.insert(database.to_owned())
    }

    /// ENABLE; false if it was not disabled.
    pub fn enable(&self, database: &str) -> bool {
        self.control().disabled.remove(database)
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        self.control().disabled.contains(database)
    }

    /// RECONNECT: every server of `database` (all for `None`) is closed as it is returned,
    /// the idle ones now; new ones open as needed.
    pub fn reconnect(&self, database: Option<&str>) -> usize {
        let now = Instant::now();
        let pools = self.pools_of(database);
        for pool in &pools {
            pool.state().reconnect_before = Some(now);
            pool.close_idle();
        }
        pools.len()
    }

    /// Closes the idle servers of `database` (all for `None`); returns how many.
    pub fn close_idle_of(&self, database: Option<&str>) -> usize {
        self.pools_of(database).iter().map(Pool::close_idle).sum()
    }
}

impl Pool {
    /// Pauses or resumes this pool: pausing closes its idle servers; resuming serves its
    /// waiters.
    fn set_paused(&self, paused: bool) {
        self.state().paused = paused;
        match paused {
            true => {
                self.close_idle();
            }
            false => self.serve_waiters(),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.state().paused
    }

    /// Whether a returned server must be closed rather than reused: the pool is paused,
    /// or RECONNECT came after the server was opened.
    pub(super) fn must_close(state: &PoolState, server: &ServerConn) -> Option<&'static str> {
        if state.paused {
            return Some("pool paused (PAUSE or KILL)");
        }
        let stale = state.reconnect_before.is_some_and(|at| server.created < at);
        stale.then_some("RECONNECT")
    }
}
