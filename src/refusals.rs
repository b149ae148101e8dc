//! Counts of refusals by the cap that caused them: one atomic counter per cap, bumped where
//! the refusal is built, read by tests today and by the metrics exporter later.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cap (or timeout) that can refuse a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    MaxClientConn,
    MaxClientConnPerUser,
    MaxClientConnPerDatabase,
    MaxClientConnPerAddr,
    MaxClientConnPerApp,
    /// A connection still logging in gave way to a newcomer: all pending places were taken.
    MaxPendingLogins,
    /// … all pending places of its source address were taken.
    MaxPendingLoginsPerAddr,
    /// A client waited `query_wait_timeout` for a server without getting one.
    QueryWaitTimeout,
    ClientIdleTimeout,
    IdleTransactionTimeout,
    TransactionTimeout,
    /// A query was cancelled (the client stays).
    QueryTimeout,
}

impl Cap {
    pub const ALL: [Cap; 12] = [
        Cap::MaxClientConn,
        Cap::MaxClientConnPerUser,
        Cap::MaxClientConnPerDatabase,
        Cap::MaxClientConnPerAddr,
        Cap::MaxClientConnPerApp,
        Cap::MaxPendingLogins,
        Cap::MaxPendingLoginsPerAddr,
        Cap::QueryWaitTimeout,
        Cap::ClientIdleTimeout,
        Cap::IdleTransactionTimeout,
        Cap::TransactionTimeout,
        Cap::QueryTimeout,
    ];

    /// The configuration key, as the refusal message and the metrics name it.
    pub fn key(self) -> &'static str {
        match self {
            Cap::MaxClientConn => "max_client_conn",
            Cap::MaxClientConnPerUser => "max_client_conn_per_user",
            Cap::MaxClientConnPerDatabase => "max_client_conn_per_database",
            Cap::MaxClientConnPerAddr => "max_client_conn_per_addr",
            Cap::MaxClientConnPerApp => "max_client_conn_per_app",
            Cap::MaxPendingLogins => "max_pending_logins",
            Cap::MaxPendingLoginsPerAddr => "max_pending_logins_per_addr",
            Cap::QueryWaitTimeout => "query_wait_timeout",
            Cap::ClientIdleTimeout => "client_idle_timeout",
            Cap::IdleTransactionTimeout => "idle_transaction_timeout",
            Cap::TransactionTimeout => "transaction_timeout",
            Cap::QueryTimeout => "query_timeout",
        }
    }
}

/// Refusals since start, by cap. Relaxed atomics: the counts are statistics, ordered with
/// nothing else.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Cap::ALL.len()],
}

impl Refusals {
    pub fn count(&self, cap: Cap) {
        self.counts[cap as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, cap: Cap) -> u64 {
        self.counts[cap as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_has_its_own_counter() {
        let refusals = Refusals::default();
        refusals.count(Cap::MaxClientConnPerApp);
        refusals.count(Cap::MaxClientConnPerApp);
        refusals.count(Cap::QueryWaitTimeout);
        let counts: Vec<u64> = Cap::ALL.iter().map(|c| refusals.get(*c)).collect();
        assert_eq!(counts, [0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0]);
        assert!(Cap::ALL.iter().enumerate().all(|(i, c)| *c as usize == i));
    }
}
