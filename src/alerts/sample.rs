//! What the alert rules read: one sample of the proxy's state at one moment, plain data
//! with no handle to anything live, so the rules can be tested on samples made by hand.

use std::time::Duration;

use crate::stats::Totals;

/// The proxy at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub pools: Vec<PoolSample>,
    /// Refusals since start, by the cap's key.
    pub refusals: Vec<(&'static str, u64)>,
    /// Caps that are on, and their use now.
    pub caps: Vec<CapUse>,
    /// The application with the most clients over all pools.
    pub top: Option<Holder>,
}

/// One (database, user) pool at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSample {
    pub database: String,
    pub user: String,
    /// Servers the pool may open (`pool_size`).
    pub size: usize,
    /// Servers held by clients.
    pub busy: usize,
    pub idle: usize,
    /// Clients waiting for a server.
    pub waiting: usize,
    /// How long the client waiting longest has waited.
    pub longest_wait: Duration,
    /// The pool's counters since start: waits for a server, connect and login failures.
    pub totals: Totals,
    /// While the pool's logins fail: the failure its clients are told.
    pub login_failing: Option<String>,
    /// Clients pinned to their server, and why (a client with two reasons counts twice).
    pub pinned: usize,
    pub pin_reasons: Vec<(&'static str, usize)>,
    /// The application holding or waiting for most of this pool.
    pub top: Option<Holder>,
}

impl PoolSample {
    /// `appdb/app`, as logs and the console name a pool.
    pub fn name(&self) -> String {
        format!("{}/{}", self.database, self.user)
    }

    /// Clients are waiting and no server is idle: every server the pool has is busy.
    pub fn saturated(&self) -> bool {
        self.waiting > 0 && self.idle == 0
    }

    /// Server connects and logins that failed, since start.
    pub fn server_failures(&self) -> u64 {
        self.totals.connect_failures + self.totals.login_failures
    }
}

/// The application behind a load: its name, its clients, and the address most of them
/// come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// `application_name` (empty when the clients set none).
    pub application: String,
    pub clients: usize,
    pub addr: Option<String>,
}

impl Holder {
    /// `top application billing (58 clients from 10.0.0.7)`.
    pub fn describe(&self) -> String {
        format!("top application {}", self.brief())
    }

    /// `billing (58 clients from 10.0.0.7)`.
    pub fn brief(&self) -> String {
        let name = match self.application.as_str() {
            "" => "(no application_name)",
            name => name,
        };
        let from = match &self.addr {
            Some(addr) => format!(" from {addr}"),
            None => String::new(),
        };
        format!("{name} ({} clients{from})", self.clients)
    }
}

/// A cap that is on, with its current use: `max_client_conn`, or `max_db_connections`
/// for one database (`scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapUse {
    pub key: &'static str,
    /// Whom the cap is counted for (a database, a user), empty for a global cap.
    pub scope: String,
    pub used: usize,
    pub limit: usize,
}

impl CapUse {
    /// `max_db_connections for appdb`.
    pub fn name(&self) -> String {
        match self.scope.as_str() {
            "" => self.key.to_owned(),
            scope => format!("{} for {scope}", self.key),
        }
    }
}

/// `3.1 s`, `250 ms`: durations in alert messages and on the status page.
pub fn seconds(duration: Duration) -> String {
    match duration.as_secs_f64() {
        secs if secs < 1.0 => format!("{} ms", duration.as_millis()),
        secs => format!("{secs:.1} s"),
    }
}
