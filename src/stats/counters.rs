//! A pool's counters since start, as PgBouncer's SHOW STATS counts them: a transaction ends
//! at a ReadyForQuery `I`, a query at every ReadyForQuery (one per simple Query, one per
//! extended-protocol Sync), times in microseconds; plus the wait for a server as a
//! histogram (for Prometheus and the percentiles) and server connect and login failures.
//!
//! Writers use `Relaxed` adds: each number is a statistic on its own, ordered with nothing.
//! Readers take a [`Totals`] snapshot; averages compare two snapshots a `stats_period`
//! apart ([`Window`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds of the wait-time histogram's buckets, in microseconds (1 ms to 30 s); one
/// more bucket above holds longer waits (Prometheus' `+Inf`).
pub const WAIT_BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

const BUCKETS: usize = WAIT_BUCKETS_US.len() + 1;

/// One pool's live counters.
#[derive(Debug, Default)]
pub struct PoolCounters {
    xact_count: AtomicU64,
    query_count: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    server_assignments: AtomicU64,
    wait_time_us: AtomicU64,
    /// Checkouts by wait, per bucket (not cumulative).
    wait_buckets: [AtomicU64; BUCKETS],
    client_logins: AtomicU64,
    connect_failures: AtomicU64,
    login_failures: AtomicU64,
    /// The [`Window`] of snapshots the averages are taken over.
    window: Mutex<Option<Window>>,
}

/// A pool's counters at one moment (or the difference of two moments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    /// From clients.
    pub bytes_received: u64,
    /// To clients.
    pub bytes_sent: u64,
    /// Times a server was handed to a client (each one's wait is in the histogram).
    pub server_assignments: u64,
    pub wait_time_us: u64,
    pub wait_buckets: [u64; BUCKETS],
    pub client_logins: u64,
    pub connect_failures: u64,
    pub login_failures: u64,
}

impl PoolCounters {
    /// `queries` requests answered, `xacts` of them ending a transaction, with the time the
    /// queries and the transactions took.
    pub fn finished(&self, queries: u64, xacts: u64, query_time: Duration, xact_time: Duration) {
        if queries > 0 {
            self.query_count.fetch_add(queries, Relaxed);
            self.query_time_us.fetch_add(micros(query_time), Relaxed);
        }
        if xacts > 0 {
            self.xact_count.fetch_add(xacts, Relaxed);
            self.xact_time_us.fetch_add(micros(xact_time), Relaxed);
        }
    }

    /// Bytes received from and sent to clients.
    pub fn bytes(&self, received: u64, sent: u64) {
        if received > 0 {
            self.bytes_received.fetch_add(received, Relaxed);
        }
        if sent > 0 {
            self.bytes_sent.fetch_add(sent, Relaxed);
        }
    }

    /// A client got a server after waiting `wait`.
    pub fn assigned(&self, wait: Duration) {
        let us = micros(wait);
        self.server_assignments.fetch_add(1, Relaxed);
        if us > 0 {
            self.wait_time_us.fetch_add(us, Relaxed);
        }
        self.wait_buckets[bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn client_logged_in(&self) {
        self.client_logins.fetch_add(1, Relaxed);
    }

    /// Connecting to the server failed (refused, unreachable, timed out).
    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    /// The server was reached but the login failed (refused, bad password, protocol).
    pub fn login_failed(&self) {
        self.login_failures.fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Relaxed);
        Totals {
            xact_count: get(&self.xact_count),
            query_count: get(&self.query_count),
            xact_time_us: get(&self.xact_time_us),
            query_time_us: get(&self.query_time_us),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            server_assignments: get(&self.server_assignments),
            wait_time_us: get(&self.wait_time_us),
            wait_buckets: std::array::from_fn(|i| get(&self.wait_buckets[i])),
            client_logins: get(&self.client_logins),
            connect_failures: get(&self.connect_failures),
            login_failures: get(&self.login_failures),
        }
    }

    /// Moves the averaging window on if `period` has passed (called by the pool's
    /// housekeeping, and before reading averages).
    pub fn tick(&self, now: Instant, period: Duration) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.totals();
        match window.as_mut() {
            None => *window = Some(Window::new(now, current)),
            Some(w) => w.rotate(now, current, period),
        }
    }

    /// The averages over the last full `stats_period` (or since start, before one passed).
    pub fn averages(&self, now: Instant, period: Duration) -> Averages {
        let (delta, elapsed) = self.last_period(now, period);
        Averages::of(&delta, elapsed)
    }

    /// What happened over the last full `stats_period`, and how long that was.
    pub fn last_period(&self, now: Instant, period: Duration) -> (Totals, Duration) {
        self.tick(now, period);
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.as_ref().map_or_else(Default::default, Window::delta)
    }

    /// The waits recorded over the last one to two `stats_period`s.
    pub fn recent_waits(&self, now: Instant, period: Duration) -> Totals {
        self.tick(now, period);
        let current = self.totals();
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window
            .as_ref()
            .map_or(current, |w| current.minus(&w.older.1))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The histogram bucket a wait of `us` falls in.
fn bucket(us: u64) -> usize {
    WAIT_BUCKETS_US.partition_point(|&bound| bound < us)
}

impl Totals {
    /// What happened between `older` and `self`.
    pub fn minus(&self, older: &Totals) -> Totals {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Totals {
            xact_count: d(self.xact_count, older.xact_count),
            query_count: d(self.query_count, older.query_count),
            xact_time_us: d(self.xact_time_us, older.xact_time_us),
            query_time_us: d(self.query_time_us, older.query_time_us),
            bytes_received: d(self.bytes_received, older.bytes_received),
            bytes_sent: d(self.bytes_sent, older.bytes_sent),
            server_assignments: d(self.server_assignments, older.server_assignments),
            wait_time_us: d(self.wait_time_us, older.wait_time_us),
            wait_buckets: std::array::from_fn(|i| d(self.wait_buckets[i], older.wait_buckets[i])),
            client_logins: d(self.client_logins, older.client_logins),
            connect_failures: d(self.connect_failures, older.connect_failures),
            login_failures: d(self.login_failures, older.login_failures),
        }
    }

    /// Both together (several pools of one database).
    pub fn plus(&self, other: &Totals) -> Totals {
        let s = |a: u64, b: u64| a.saturating_add(b);
        Totals {
            xact_count: s(self.xact_count, other.xact_count),
            query_count: s(self.query_count, other.query_count),
            xact_time_us: s(self.xact_time_us, other.xact_time_us),
            query_time_us: s(self.query_time_us, other.query_time_us),
            bytes_received: s(self.bytes_received, other.bytes_received),
            bytes_sent: s(self.bytes_sent, other.bytes_sent),
            server_assignments: s(self.server_assignments, other.server_assignments),
            wait_time_us: s(self.wait_time_us, other.wait_time_us),
            wait_buckets: std::array::from_fn(|i| s(self.wait_buckets[i], other.wait_buckets[i])),
            client_logins: s(self.client_logins, other.client_logins),
            connect_failures: s(self.connect_failures, other.connect_failures),
            login_failures: s(self.login_failures, other.login_failures),
        }
    }

    /// The histogram as Prometheus wants it: (upper bound in seconds, waits at most that
    /// long), cumulative, ending with `+Inf` (all of them).
    pub fn wait_histogram(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(BUCKETS);
        for (i, count) in self.wait_buckets.iter().enumerate() {
            total += count;
            let bound = WAIT_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((bound, total));
        }
        out
    }

    /// The wait under which a fraction `q` of the waits fell, as the upper bound of the
    /// bucket that reaches it (`None` with no waits; waits beyond the last bound report
    /// it). An estimate, as any histogram quantile.
    pub fn wait_quantile(&self, q: f64) -> Option<Duration> {
        let count: u64 = self.wait_buckets.iter().sum();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.wait_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = WAIT_BUCKETS_US.get(i).or(WAIT_BUCKETS_US.last());
                return us.map(|us| Duration::from_micros(*us));
            }
        }
        WAIT_BUCKETS_US.last().map(|us| Duration::from_micros(*us))
    }
}

/// Per-second rates and per-event means over one period, as PgBouncer's `avg_` columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Microseconds per transaction.
    pub xact_time_us: u64,
    /// Microseconds per query.
    pub query_time_us: u64,
    /// Microseconds per assignment.
    pub wait_time_us: u64,
    pub client_logins: u64,
}

impl Averages {
    /// The averages of what happened in `delta` over `elapsed`.
    pub fn of(delta: &Totals, elapsed: Duration) -> Averages {
        let us = micros(elapsed);
        if us == 0 {
            return Averages::default();
        }
        let rate = |n: u64| (u128::from(n) * 1_000_000 / u128::from(us)) as u64;
        let mean = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        Averages {
            server_assignment_count: rate(delta.server_assignments),
            xact_count: rate(delta.xact_count),
            query_count: rate(delta.query_count),
            bytes_received: rate(delta.bytes_received),
            bytes_sent: rate(delta.bytes_sent),
            xact_time_us: mean(delta.xact_time_us, delta.xact_count),
            query_time_us: mean(delta.query_time_us, delta.query_count),
            wait_time_us: mean(delta.wait_time_us, delta.server_assignments),
            client_logins: rate(delta.client_logins),
        }
    }
}

/// Two snapshots at least a period apart: averages are over what lies between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub older: (Instant, Totals),
    pub newer: (Instant, Totals),
}

impl Window {
    pub fn new(now: Instant, current: Totals) -> Window {
        Window {
            older: (now, Totals::default()),
            newer: (now, current),
        }
    }

    /// Once `period` has passed since the newer snapshot, it becomes the older one.
    pub fn rotate(&mut self, now: Instant, current: Totals, period: Duration) {
        if now.saturating_duration_since(self.newer.0) >= period {
            self.older = self.newer;
            self.newer = (now, current);
        }
    }

    pub fn averages(&self) -> Averages {
        let (delta, elapsed) = self.delta();
        Averages::of(&delta, elapsed)
    }

    /// What lies between the two snapshots, and how long that was.
    pub fn delta(&self) -> (Totals, Duration) {
        let elapsed = self.newer.0.saturating_duration_since(self.older.0);
        (self.newer.1.minus(&self.older.1), elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_their_buckets_and_add_up() {
        let counters = PoolCounters::default();
        for ms in [0, 1, 2, 40, 40, 900, 60_000] {
            counters.assigned(Duration::from_millis(ms));
        }
        let totals = counters.totals();
        assert_eq!(totals.server_assignments, 7);
        assert_eq!(totals.wait_time_us, (1 + 2 + 40 + 40 + 900 + 60_000) * 1000);
        // 0 and 1 ms are "at most 1 ms"; 2 ms at most 2.5 ms; 40 ms at most 50 ms.
        assert_eq!(totals.wait_buckets[0], 2);
        assert_eq!(totals.wait_buckets[1], 1);
        assert_eq!(totals.wait_buckets[5], 2);
        assert_eq!(totals.wait_buckets[BUCKETS - 1], 1);
        let histogram = totals.wait_histogram();
        assert_eq!(histogram.len(), BUCKETS);
        assert_eq!(histogram[0], (0.001, 2));
        assert_eq!(histogram[BUCKETS - 2], (30.0, 6));
        assert_eq!(histogram[BUCKETS - 1].1, 7);
        assert!(histogram[BUCKETS - 1].0.is_infinite());
    }

    #[test]
    fn quantiles_name_the_bucket_that_reaches_the_rank() {
        let counters = PoolCounters::default();
        assert_eq!(counters.totals().wait_quantile(0.99), None);
        for _ in 0..98 {
            counters.assigned(Duration::from_micros(300));
        }
        counters.assigned(Duration::from_millis(200));
        counters.assigned(Duration::from_secs(3));
        let totals = counters.totals();
        assert_eq!(totals.wait_quantile(0.5), Some(Duration::from_millis(1)));
        assert_eq!(totals.wait_quantile(0.98), Some(Duration::from_millis(1)));
        assert_eq!(totals.wait_quantile(0.99), Some(Duration::from_millis(250)));
        assert_eq!(totals.wait_quantile(1.0), Some(Duration::from_secs(5)));
    }

    #[test]
    fn transactions_and_queries_count_with_their_times() {
        let counters = PoolCounters::default();
        counters.finished(3, 1, Duration::from_micros(30), Duration::from_micros(50));
        counters.finished(1, 0, Duration::from_micros(5), Duration::from_micros(99));
        counters.finished(0, 0, Duration::from_secs(1), Duration::from_secs(1));
        counters.bytes(10, 0);
        counters.bytes(0, 7);
        let t = counters.totals();
        assert_eq!((t.query_count, t.query_time_us), (4, 35));
        assert_eq!((t.xact_count, t.xact_time_us), (1, 50));
        assert_eq!((t.bytes_received, t.bytes_sent), (10, 7));
    }

    #[test]
    fn averages_are_rates_and_means_over_the_last_full_period() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let mut window = Window::new(start, Totals::default());
        let mut at_10s = Totals {
            xact_count: 100,
            xact_time_us: 100 * 2000,
            query_count: 300,
            query_time_us: 300 * 500,
            bytes_received: 10_000,
            server_assignments: 100,
            wait_time_us: 100 * 7,
            ..Totals::default()
        };
        window.rotate(start + Duration::from_secs(5), at_10s, period);
        assert_eq!(window.newer.1, Totals::default(), "a period has not passed");
        window.rotate(start + period, at_10s, period);
        let avg = window.averages();
        assert_eq!(avg.xact_count, 10);
        assert_eq!(avg.query_count, 30);
        assert_eq!(avg.bytes_received, 1000);
        assert_eq!(
            (avg.xact_time_us, avg.query_time_us, avg.wait_time_us),
            (2000, 500, 7)
        );
        at_10s.xact_count += 50;
        window.rotate(start + 2 * period, at_10s, period);
        assert_eq!(window.averages().xact_count, 5);
        assert_eq!(window.averages().xact_time_us, 0, "no time added: mean 0");
    }

    #[test]
    fn differences_never_go_below_zero_and_sums_add() {
        let a = Totals {
            xact_count: 5,
            ..Totals::default()
        };
        let b = Totals {
            xact_count: 7,
            ..Totals::default()
        };
        assert_eq!(a.minus(&b).xact_count, 0);
        assert_eq!(a.plus(&b).xact_count, 12);
        assert_eq!(Averages::of(&b, Duration::ZERO), Averages::default());
    }
}
