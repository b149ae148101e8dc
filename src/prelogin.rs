//! Connections that have not finished logging in: a budget of their own
//! (`max_pending_logins` in total, `max_pending_logins_per_addr` per source), in which the
//! connection that has waited longest gives way to a newcomer. Silent or slow connections
//! therefore never lock out a client that logs in promptly: a newcomer always gets a place,
//! and loses it only once every connection that arrived before it (from its source, or at
//! all when the total is full) has finished, left or given way.
//!
//! A connection is pending from accept until it has authenticated; from then on it is a
//! logged-in client, counted against `max_client_conn` and the per-identity caps
//! ([`crate::admission`]), and never evicted, however long it then waits for a server.
//!
//! Both budgets default to `max_client_conn`: every burst of logins that fitted when all
//! connections counted against `max_client_conn` still fits, so by default only a
//! connection that would have been refused then can be displaced now.
//!
//! [`Lobby`] is the bookkeeping, sans IO; [`PreLogin`] shares it between client tasks and
//! tells the one that must give way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::admission::Network;
use crate::config::Config;
use crate::protocol::{sqlstate, PgError};
use crate::refusals::{Cap, Refusals};

/// Where a connection comes from, for the per-source budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Network(Network),
    /// Every Unix-socket client: one source, as they all share the host.
    UnixSocket,
}

impl Source {
    pub fn of(peer: Option<SocketAddr>, config: &Config) -> Source {
        match peer {
            Some(peer) => Source::Network(Network::of(peer.ip(), config)),
            None => Source::UnixSocket,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Network(network) => write!(f, "address {network}"),
            Source::UnixSocket => f.write_str("the unix socket"),
        }
    }
}

/// A pending connection's place in the [`Lobby`]; tickets grow with arrival, so the
/// smallest is the one that has waited longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Which budget was full when a connection had to give way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_pending_logins`: the oldest pending connection of all gave way.
    Total,
    /// `max_pending_logins_per_addr`: the oldest of the newcomer's own source gave way.
    Source,
}

/// A connection that gave way to a newcomer.
#[derive(Debug)]
pub struct Evicted<S, T> {
    pub ticket: Ticket,
    pub source: S,
    pub payload: T,
    pub full: Full,
}

/// The pending connections, oldest first, with a payload each (how to tell it to go).
///
/// INVARIANT: at most `total` entries, at most `per_source` of one source; `by_source`
/// holds exactly the tickets of `waiting`, and no empty set.
#[derive(Debug)]
pub struct Lobby<S, T> {
    total: usize,
    per_source: usize,
    next: u64,
    waiting: BTreeMap<Ticket, (S, T)>,
    by_source: HashMap<S, BTreeSet<Ticket>>,
}

impl<S: Copy + Eq + Hash, T> Lobby<S, T> {
    /// Budgets under 1 are taken as 1: a newcomer always needs a place.
    pub fn new(total: usize, per_source: usize) -> Self {
        Lobby {
            total: total.max(1),
            per_source: per_source.max(1),
            next: 0,
            waiting: BTreeMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Gives a newcomer from `source` a place; if a budget was full, the connection that
    /// has waited longest in it (of `source` when the per-source budget was the full one)
    /// gives way and is returned. The newcomer itself never does.
    pub fn arrive(&mut self, source: S, payload: T) -> (Ticket, Option<Evicted<S, T>>) {
        let own = self.by_source.get(&source);
        // A per-source budget no smaller than the total is full only when the total is,
        // and is then named as the total.
        let source_full = own.map_or(0, BTreeSet::len) >= self.per_source;
        let victim = if source_full && self.per_source < self.total {
            own.and_then(|set| set.first()).map(|t| (*t, Full::Source))
        } else if self.waiting.len() >= self.total {
            self.waiting.keys().next().map(|t| (*t, Full::Total))
        } else {
            None
        };
        let evicted = victim.and_then(|(ticket, full)| {
            let (source, payload) = self.remove(ticket)?;
            Some(Evicted {
                ticket,
                source,
                payload,
                full,
            })
        });
        let ticket = Ticket(self.next);
        self.next += 1;
        self.waiting.insert(ticket, (source, payload));
        self.by_source.entry(source).or_default().insert(ticket);
        (ticket, evicted)
    }

    /// The connection logged in or went away; its payload, or `None` if it had already
    /// given way.
    pub fn leave(&mut self, ticket: Ticket) -> Option<T> {
        self.remove(ticket).map(|(_, payload)| payload)
    }

    /// Pending connections now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Pending connections from `source` now.
    pub fn from_source(&self, source: &S) -> usize {
        self.by_source.get(source).map_or(0, BTreeSet::len)
    }

    fn remove(&mut self, ticket: Ticket) -> Option<(S, T)> {
        let (source, payload) = self.waiting.remove(&ticket)?;
        if let Some(set) = self.by_source.get_mut(&source) {
            set.remove(&ticket);
            if set.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some((source, payload))
    }
}

/// Why a pending connection is being closed: a newcomer needed its place.
#[derive(Debug, Clone)]
pub struct GiveWay {
    full: Full,
    source: Source,
    max: usize,
}

impl GiveWay {
    /// The cap it is counted under in `refusals`.
    pub fn cap(&self) -> Cap {
        match self.full {
            Full::Total => Cap::MaxPendingLogins,
            Full::Source => Cap::MaxPendingLoginsPerAddr,
        }
    }

    /// `too many connections logging in at once from address 10.0.0.7; this one waited
    /// longest (max_pending_logins_per_addr = 100)`.
    pub fn to_client_error(&self) -> PgError {
        let from = match self.full {
            Full::Total => String::new(),
            Full::Source => format!(" from {}", self.source),
        };
        PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "too many connections logging in at once{from}; this one waited longest \
                 ({} = {})",
                self.cap().key(),
                self.max
            ),
        )
    }
}

/// The lobby shared by every client task; a cheap-clone handle.
#[derive(Debug, Clone)]
pub struct PreLogin {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    lobby: Mutex<Lobby<Source, oneshot::Sender<GiveWay>>>,
    total: usize,
    per_source: usize,
    refusals: Arc<Refusals>,
}

impl PreLogin {
    pub fn new(config: &Config, refusals: Arc<Refusals>) -> PreLogin {
        let (total, per_source) = (
            config.max_pending_logins,
            config.max_pending_logins_per_addr,
        );
        PreLogin {
            shared: Arc::new(Shared {
                lobby: Mutex::new(Lobby::new(total, per_source)),
                total: total.max(1),
                per_source: per_source.max(1),
                refusals,
            }),
        }
    }

    /// A place for a connection just accepted from `source`, and what tells it to give way.
    /// The connection that gives way for it (if any) is told at once and counted in
    /// `refusals`.
    pub fn arrive(&self, source: Source) -> (Place, Eviction) {
        let (tx, rx) = oneshot::channel();
        let (ticket, evicted) = self.lock().arrive(source, tx);
        if let Some(evicted) = evicted {
            let max = match evicted.full {
                Full::Total => self.shared.total,
                Full::Source => self.shared.per_source,
            };
            let why = GiveWay {
                full: evicted.full,
                source: evicted.source,
                max,
            };
            self.shared.refusals.count(why.cap());
            // Its task may be ending at this very moment; then nobody needs telling.
            let _ = evicted.payload.send(why);
        }
        let place = Place {
            prelogin: self.clone(),
            ticket,
        };
        (place, Eviction(rx))
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// The lock is never held across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Lobby<Source, oneshot::Sender<GiveWay>>> {
        self.shared.lobby.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pending connection's place; dropping it (the client authenticated, or went away)
/// frees it.
#[derive(Debug)]
pub struct Place {
    prelogin: PreLogin,
    ticket: Ticket,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.prelogin.lock().leave(self.ticket);
    }
}

/// Resolves when the connection must give way to a newcomer.
#[derive(Debug)]
pub struct Eviction(oneshot::Receiver<GiveWay>);

impl Eviction {
    /// Why the connection must go; never resolves once its [`Place`] has been freed
    /// (a logged-in client is never evicted). Cancel-safe.
    pub async fn wait(&mut self) -> GiveWay {
        match (&mut self.0).await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests;
