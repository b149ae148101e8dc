//! The timeouts that watch a logged-in client: idle outside a transaction
//! (`client_idle_timeout`), idle inside one (`idle_transaction_timeout`), a transaction
//! that lasts too long (`transaction_timeout`), a query that runs too long (`query_timeout`:
//! the query is cancelled, the session goes on). Off (zero) by default, and then they cost
//! nothing: a client without any gets no clock at all.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::machine::Progress;
use crate::config::duration::format;
use crate::config::Config;
use crate::protocol::PgError;
use crate::refusals::Cap;

/// SQLSTATEs Postgres uses for its own versions of these timeouts.
const IDLE_SESSION_TIMEOUT: &str = "57P05";
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
const TRANSACTION_TIMEOUT: &str = "25P04";

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    ClientIdle,
    IdleTransaction,
    Transaction,
    Query,
}

/// The configured timeouts and the clocks they run on.
#[derive(Debug)]
pub struct Timeouts {
    client_idle: Duration,
    idle_transaction: Duration,
    transaction: Duration,
    query: Duration,
    /// The client's last message.
    last_client: Instant,
    /// When the current transaction began (the server stopped being idle).
    busy_since: Option<Instant>,
    /// When the request being answered now was sent (or the one before it answered).
    request_since: Option<Instant>,
    /// Requests unanswered at the last look; a change means the next one started.
    pending: usize,
    /// When the server answered everything inside a transaction block.
    idle_in_transaction_since: Option<Instant>,
    /// The running request was already cancelled.
    cancelled: bool,
    /// A NoticeResponse to give the client at its next message boundary.
    pub notice: Option<BytesMut>,
}

impl Timeouts {
    /// The client's timeouts, or `None` when all are off.
    pub fn new(config: &Config) -> Option<Box<Timeouts>> {
        let any = [
            config.client_idle_timeout,
            config.idle_transaction_timeout,
            config.transaction_timeout,
            config.query_timeout,
        ]
        .iter()
        .any(|d| !d.is_zero());
        any.then(|| {
            Box::new(Timeouts {
                client_idle: config.client_idle_timeout,
                idle_transaction: config.idle_transaction_timeout,
                transaction: config.transaction_timeout,
                query: config.query_timeout,
                last_client: Instant::now(),
                busy_since: None,
                request_since: None,
                pending: 0,
                idle_in_transaction_since: None,
                cancelled: false,
                notice: None,
            })
        })
    }

    /// The client sent something.
    pub fn on_client(&mut self, now: Instant) {
        self.last_client = now;
        self.idle_in_transaction_since = None;
    }

    /// Brings the clocks up to date with what the machine knows of the server.
    pub fn observe(&mut self, progress: Progress, now: Instant) {
        if progress.idle {
            self.busy_since = None;
        } else {
            self.busy_since.get_or_insert(now);
        }
        if progress.requests == 0 {
            self.request_since = None;
            self.cancelled = false;
        } else if progress.requests != self.pending || self.request_since.is_none() {
            self.request_since = Some(now);
            self.cancelled = false;
        }
        self.pending = progress.requests;
        if progress.idle_in_block {
            self.idle_in_transaction_since.get_or_insert(now);
        } else {
            self.idle_in_transaction_since = None;
        }
    }

    /// The next timeout to run out, and when.
    pub fn next(&self, progress: Progress) -> Option<(Instant, Expired)> {
        let at = |since: Option<Instant>, limit: Duration, which| {
            since
                .filter(|_| !limit.is_zero())
                .map(|s| (s + limit, which))
        };
        let client_idle = at(
            Some(self.last_client).filter(|_| progress.idle),
            self.client_idle,
            Expired::ClientIdle,
        );
        let idle_transaction = at(
            self.idle_in_transaction_since,
            self.idle_transaction,
            Expired::IdleTransaction,
        );
        let transaction = at(self.busy_since, self.transaction, Expired::Transaction);
        let query = at(
            self.request_since.filter(|_| !self.cancelled),
            self.query,
            Expired::Query,
        );
        [client_idle, idle_transaction, transaction, query]
            .into_iter()
            .flatten()
            .min_by_key(|(when, _)| *when)
    }

    /// The query timed out and is being cancelled: the client is told why, once.
    pub fn cancelling(&mut self) {
        self.cancelled = true;
        self.notice = Some(PgError::notice(format!(
            "pgwarden is cancelling the query: it ran longer than query_timeout = {}",
            format(self.query)
        )));
    }

    /// The error that ends a session for `expired` (not for the query timeout).
    pub fn error(&self, expired: Expired) -> PgError {
        let (code, what, key, limit) = match expired {
            Expired::ClientIdle => (
                IDLE_SESSION_TIMEOUT,
                "idle",
                "client_idle_timeout",
                self.client_idle,
            ),
            Expired::IdleTransaction => (
                IDLE_IN_TRANSACTION_TIMEOUT,
                "idle in a transaction",
                "idle_transaction_timeout",
                self.idle_transaction,
            ),
            Expired::Transaction | Expired::Query => (
                TRANSACTION_TIMEOUT,
                "in a transaction",
                "transaction_timeout",
                self.transaction,
            ),
        };
        PgError::fatal(
            code,
            format!(
                "terminating connection: {what} longer than {key} = {}",
                format(limit)
            ),
        )
    }
}

impl Expired {
    pub fn cap(self) -> Cap {
        match self {
            Expired::ClientIdle => Cap::ClientIdleTimeout,
            Expired::IdleTransaction => Cap::IdleTransactionTimeout,
            Expired::Transaction => Cap::TransactionTimeout,
            Expired::Query => Cap::QueryTimeout,
        }
    }
}
