//! Who a client is: `max_client_conn` and the per-identity client caps
//! (`max_client_conn_per_user`, `…_database`, `…_addr`, `…_app`), checked once the client
//! has authenticated so that a failed or unfinished login never holds a slot (connections
//! still logging in have a budget of their own, [`crate::prelogin`]), and the identity the
//! fair queue serves it under.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::config::{ClientIdentity, Config, Database, User};
use crate::pool::ClientId;
use crate::protocol::{sqlstate, PgError};
use crate::refusals::{Cap, Refusals};

/// A source network: an address with all but `prefix` leading bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// The network of `ip` under the configured prefixes; IPv4-mapped IPv6 counts as IPv4.
    pub fn of(ip: IpAddr, config: &Config) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let prefix = config.client_addr_prefix_v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let addr = IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask));
                Network { addr, prefix }
            }
            IpAddr::V6(v6) => {
                let prefix = config.client_addr_prefix_v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let addr = IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask));
                Network { addr, prefix }
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        match self.prefix == full {
            true => write!(f, "{}", self.addr),
            false => write!(f, "{}/{}", self.addr, self.prefix),
        }
    }
}

/// What one client counts against: one entry per cap that is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Every logged-in client: `max_client_conn`.
    All,
    User(String),
    Database(String),
    Addr(Network),
    App(String),
}

impl Key {
    fn cap(&self) -> Cap {
        match self {
            Key::All => Cap::MaxClientConn,
            Key::User(_) => Cap::MaxClientConnPerUser,
            Key::Database(_) => Cap::MaxClientConnPerDatabase,
            Key::Addr(_) => Cap::MaxClientConnPerAddr,
            Key::App(_) => Cap::MaxClientConnPerApp,
        }
    }

    /// `too many connections for user "app" (max_client_conn_per_user = 2)`: what, who, cap.
    fn refusal(&self, max: usize) -> PgError {
        let who = match self {
            Key::All => return PgError::too_many_clients(max),
            Key::User(name) => format!("for user \"{name}\""),
            Key::Database(name) => format!("for database \"{name}\""),
            Key::Addr(network) => format!("from address {network}"),
            Key::App(name) => format!("for application \"{name}\""),
        };
        let key = self.cap().key();
        PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("too many connections {who} ({key} = {max})"),
        )
    }
}

/// Who a logged-in client is, as the caps and the queue see it.
pub struct Client<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub application: &'a str,
    /// `None` for Unix-socket clients, which no address cap applies to.
    pub peer: Option<SocketAddr>,
}

impl Client<'_> {
    /// The identity the fair queue and `max_server_conn_per_client` know this client by,
    /// worded for messages: `application "billing"`, `user "app"`, `address 10.0.0.7`.
    pub fn identity(&self, config: &Config) -> ClientId {
        let text = match (config.client_identity, self.peer) {
            (ClientIdentity::Application, _) if !self.application.is_empty() => {
                format!("application \"{}\"", self.application)
            }
            (ClientIdentity::Address, Some(peer)) => {
                format!("address {}", Network::of(peer.ip(), config))
            }
            (ClientIdentity::Address, None) => "address unix socket".to_owned(),
            _ => format!("user \"{}\"", self.user),
        };
        ClientId::new(text)
    }
}

/// Every client's counts, by identity; only caps that are on are counted.
#[derive(Debug, Default)]
pub struct Admission {
    counts: Mutex<HashMap<Key, usize>>,
}

impl Admission {
    /// Takes a slot under `max_client_conn` and every per-identity cap that is on, or
    /// refuses with the first cap that is full (counted in `refusals`). All or nothing,
    /// under one lock.
    pub fn admit(
        self: &Arc<Self>,
        config: &Config,
        route: &Database,
        user: Option<&User>,
        client: &Client<'_>,
        refusals: &Refusals,
    ) -> Result<Slots, PgError> {
        let caps = caps(config, route, user, client);
        let mut counts = self.lock();
        for (key, max) in &caps {
            if counts.get(key).copied().unwrap_or(0) >= *max {
                refusals.count(key.cap());
                return Err(key.refusal(*max));
            }
        }
        let mut held = Vec::with_capacity(caps.len());
        for (key, _) in caps {
            *counts.entry(key.clone()).or_insert(0) += 1;
            held.push(key);
        }
        Ok(Slots {
            admission: self.clone(),
            held,
        })
    }

    /// Logged-in clients now, as `max_client_conn` counts them.
    pub fn logged_in(&self) -> usize {
        self.lock().get(&Key::All).copied().unwrap_or(0)
    }

    /// Clients counted against caps right now (all caps together); zero when all have left.
    pub fn counted(&self) -> usize {
        self.lock().values().sum()
    }

    /// The lock is never held across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The caps that are on for this client, with their values (per user and per database
/// entries override the top-level ones); `max_client_conn` first, so that it is the one
/// named when several are full.
fn caps(
    config: &Config,
    route: &Database,
    user: Option<&User>,
    client: &Client<'_>,
) -> Vec<(Key, usize)> {
    let pool = config.pool_config(route, user);
    let candidates = [
        (Some(Key::All), config.max_client_conn),
        (
            Some(Key::User(client.user.to_owned())),
            pool.max_client_conn_per_user,
        ),
        (
            Some(Key::Database(client.database.to_owned())),
            pool.max_client_conn_per_database,
        ),
        (
            client.peer.map(|p| Key::Addr(Network::of(p.ip(), config))),
            config.max_client_conn_per_addr,
        ),
        (
            Some(Key::App(client.application.to_owned())),
            config.max_client_conn_per_app,
        ),
    ];
    candidates
        .into_iter()
        .filter(|(_, max)| *max > 0)
        .filter_map(|(key, max)| key.map(|k| (k, max)))
        .collect()
}

/// A client's places under the per-identity caps; dropping it (the client left, or its
/// login failed later on) frees them.
pub struct Slots {
    admission: Arc<Admission>,
    held: Vec<Key>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut counts = self.admission.lock();
        for key in self.held.drain(..) {
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::from_toml(&format!("{extra}\n[databases.\"*\"]\n")).unwrap()
    }

    #[test]
    fn networks_keep_the_configured_prefix() {
        let config = config("client_addr_prefix_v4 = 24\nclient_addr_prefix_v6 = 64");
        let v4 = Network::of("10.1.2.3".parse().unwrap(), &config);
        assert_eq!(v4.to_string(), "10.1.2.0/24");
        let v6 = Network::of("2001:db8::1".parse().unwrap(), &config);
        assert_eq!(v6.to_string(), "2001:db8::/64");
        let mapped = Network::of("::ffff:10.1.2.3".parse().unwrap(), &config);
        assert_eq!(mapped, v4);
        let exact = Network::of("10.1.2.3".parse().unwrap(), &self::config(""));
        assert_eq!(exact.to_string(), "10.1.2.3");
        let none = Network::of(
            "10.1.2.3".parse().unwrap(),
            &self::config("client_addr_prefix_v4 = 0"),
        );
        assert_eq!(none.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn slots_are_all_or_nothing_and_freed_on_drop() {
        let config = config("max_client_conn_per_user = 2\nmax_client_conn_per_app = 1");
        let route = config.wildcard.clone().unwrap();
        let admission = Arc::new(Admission::default());
        let refusals = Refusals::default();
        let client = |application| Client {
            user: "app",
            database: "db",
            application,
            peer: None,
        };
        let admit = |app| admission.admit(&config, &route, None, &client(app), &refusals);
        let first = admit("a").unwrap();
        let refused = admit("a").err().unwrap();
        assert_eq!(
            refused.message,
            "too many connections for application \"a\" (max_client_conn_per_app = 1)"
        );
        // The refused client took nothing: the user still has one slot left.
        let second = admit("b").unwrap();
        let refused = admit("c").err().unwrap();
        assert_eq!(
            refused.message,
            "too many connections for user \"app\" (max_client_conn_per_user = 2)"
        );
        assert_eq!(refusals.get(Cap::MaxClientConnPerApp), 1);
        assert_eq!(refusals.get(Cap::MaxClientConnPerUser), 1);
        assert_eq!(admission.logged_in(), 2);
        assert_eq!(admission.counted(), 6);
        drop((first, second));
        assert_eq!(admission.counted(), 0);
    }
}
