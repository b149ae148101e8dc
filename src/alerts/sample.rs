//! What the alert rules read: one sample of the proxy's state at one moment, plain data
//! with no handle to anything live, so the rules can be tested on samples made by hand.

use std::time::Duration;

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
    /// Waits for a server since start (`None` while nothing measures them).
    pub waits: Option<WaitHistogram>,
    /// Server connects and logins that failed, since start.
    pub server_failures: u64,
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
        let name = match self.application.as_str() {
            "" => "(no application_name)",
            name => name,
        };
        let from = match &self.addr {
            Some(addr) => format!(" from {addr}"),
            None => String::new(),
        };
        format!("top application {name} ({} clients{from})", self.clients)
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

/// Counts of waits by duration: `counts[i]` waits took at most `bounds[i]` seconds (and
/// more than the bound before); the last count is for longer than every bound.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitHistogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl WaitHistogram {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The waits since `earlier` (a histogram of the same pool, taken before). Counts that
    /// went down (a pool made anew) count from zero.
    pub fn since(&self, earlier: Option<&WaitHistogram>) -> WaitHistogram {
        let mut counts = self.counts.clone();
        let mut sum = self.sum_seconds;
        if let Some(earlier) = earlier.filter(|e| e.bounds == self.bounds) {
            if earlier.counts.iter().zip(&counts).all(|(e, n)| e <= n) {
                for (n, e) in counts.iter_mut().zip(&earlier.counts) {
                    *n -= e;
                }
                sum = (sum - earlier.sum_seconds).max(0.0);
            }
        }
        WaitHistogram {
            bounds: self.bounds,
            counts,
            sum_seconds: sum,
        }
    }

    /// The `q` quantile (0..=1), interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does; beyond the last bound, the last bound. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 || self.bounds.is_empty() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    break; // the overflow bucket
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let into = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(Duration::from_secs_f64(lower + (upper - lower) * into));
            }
            below += count;
        }
        self.bounds.last().map(|&b| Duration::from_secs_f64(b))
    }
}

/// `3.1 s`, `0.25 s`: durations in alert messages.
pub fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 && secs > 0.0 {
        format!("{secs:.2} s")
    } else {
        format!("{secs:.1} s")
    }
}
