//! Who is behind a load: the connected clients tallied by `application_name`, per pool (the
//! application holding or waiting for most of it, and the address most of its clients come
//! from; else the one with most clients) and overall (the top N names by clients, the rest as `other`, so the metrics stay
//! bounded whatever names clients make up).

use std::collections::HashMap;
use std::net::IpAddr;

use super::sample::Holder;

/// The name the applications past the top N are counted under.
pub const OTHER: &str = "other";

/// What a client is doing with its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Idle,
    Waiting,
    /// Linked to a server.
    Holding,
}

/// One connected client, as the tally reads it.
#[derive(Debug, Clone, Copy)]
pub struct ClientView<'a> {
    pub database: &'a str,
    pub user: &'a str,
    pub application: &'a str,
    pub ip: Option<IpAddr>,
    pub state: Use,
}

/// The clients of one application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppCount {
    pub application: String,
    pub connected: usize,
    pub waiting: usize,
}

/// The tally of every connected client.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Apps {
    /// Per pool (database, user): the application holding or waiting for most of it (with
    /// nobody holding or waiting: the one with most clients connected).
    pub per_pool: HashMap<(String, String), Holder>,
    /// The application with the most clients overall.
    pub top: Option<Holder>,
    /// The `top_n` applications with the most clients, then `other` (when any is left).
    pub bounded: Vec<AppCount>,
}

#[derive(Default)]
struct Tally {
    connected: usize,
    waiting: usize,
    busy: usize,
    ips: HashMap<Option<IpAddr>, usize>,
}

impl Tally {
    fn add(&mut self, client: &ClientView<'_>) {
        self.connected += 1;
        self.waiting += usize::from(client.state == Use::Waiting);
        self.busy += usize::from(client.state != Use::Idle);
        *self.ips.entry(client.ip).or_default() += 1;
    }

    /// The address most of these clients come from (the lowest among equals).
    fn addr(&self) -> Option<String> {
        let most = self
            .ips
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        most.and_then(|(ip, _)| *ip).map(|ip| ip.to_string())
    }

    fn holder(&self, application: &str, clients: usize) -> Holder {
        Holder {
            application: application.to_owned(),
            clients,
            addr: self.addr(),
        }
    }
}

/// The application of `tallies` with the most of `count` (ties: the first name); `None`
/// when none has any.
fn leader<'a>(
    tallies: &'a HashMap<&str, Tally>,
    count: impl Fn(&Tally) -> usize,
) -> Option<(&'a str, &'a Tally)> {
    let ranked = tallies.iter().filter(|(_, t)| count(t) > 0);
    let best = ranked.max_by(|a, b| count(a.1).cmp(&count(b.1)).then(b.0.cmp(a.0)));
    best.map(|(name, tally)| (*name, tally))
}

pub fn tally<'a>(clients: impl IntoIterator<Item = ClientView<'a>>, top_n: usize) -> Apps {
    let mut overall: HashMap<&str, Tally> = HashMap::new();
    let mut pools: HashMap<(&str, &str), HashMap<&str, Tally>> = HashMap::new();
    for client in clients {
        overall.entry(client.application).or_default().add(&client);
        let pool = pools.entry((client.database, client.user)).or_default();
        pool.entry(client.application).or_default().add(&client);
    }
    let per_pool = pools.iter().filter_map(|((database, user), apps)| {
        let key = (database.to_string(), user.to_string());
        if let Some((name, tally)) = leader(apps, |t| t.busy) {
            return Some((key, tally.holder(name, tally.busy)));
        }
        let (name, tally) = leader(apps, |t| t.connected)?;
        Some((key, tally.holder(name, tally.connected)))
    });
    let top = leader(&overall, |t| t.connected).map(|(name, t)| t.holder(name, t.connected));
    Apps {
        per_pool: per_pool.collect(),
        top,
        bounded: bound(&overall, top_n),
    }
}

fn bound(overall: &HashMap<&str, Tally>, top_n: usize) -> Vec<AppCount> {
    let mut ranked: Vec<AppCount> = (overall.iter())
        .map(|(name, t)| AppCount {
            application: name.to_string(),
            connected: t.connected,
            waiting: t.waiting,
        })
        .collect();
    ranked.sort_by(|a, b| (b.connected, &a.application).cmp(&(a.connected, &b.application)));
    if ranked.len() > top_n {
        let rest = ranked.split_off(top_n);
        let mut other = AppCount {
            application: OTHER.to_owned(),
            ..AppCount::default()
        };
        for app in rest {
            other.connected += app.connected;
            other.waiting += app.waiting;
        }
        ranked.push(other);
    }
    ranked
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn client(app: &'static str, ip: &str, state: Use) -> ClientView<'static> {
        ClientView {
            database: "appdb",
            user: "app",
            application: app,
            ip: Some(ip.parse().unwrap()),
            state,
        }
    }

    #[test]
    fn the_pool_is_behind_whoever_holds_or_waits_for_most_of_it() {
        let mut clients = vec![client("web", "10.0.0.1", Use::Idle); 30];
        clients.extend(vec![client("billing", "10.0.0.7", Use::Waiting); 50]);
        clients.extend(vec![client("billing", "10.0.0.7", Use::Holding); 5]);
        clients.push(client("billing", "10.0.0.8", Use::Waiting));
        clients.push(client("web", "10.0.0.1", Use::Holding));
        let apps = tally(clients, 1);
        let holder = &apps.per_pool[&("appdb".to_owned(), "app".to_owned())];
        assert_eq!(
            holder.describe(),
            "top application billing (56 clients from 10.0.0.7)"
        );
        assert_eq!(apps.top.unwrap().application, "billing");
        let bounded: Vec<_> = (apps.bounded.iter())
            .map(|a| (a.application.as_str(), a.connected, a.waiting))
            .collect();
        assert_eq!(bounded, [("billing", 56, 51), ("other", 31, 0)]);
    }

    #[test]
    fn behind_an_idle_pool_are_its_most_connected() {
        let mut clients = vec![client("web", "10.0.0.1", Use::Idle); 2];
        clients.push(client("cron", "10.0.0.2", Use::Idle));
        let apps = tally(clients, 10);
        let holder = &apps.per_pool[&("appdb".to_owned(), "app".to_owned())];
        assert_eq!(holder.brief(), "web (2 clients from 10.0.0.1)");
        assert_eq!(apps.top.map(|h| h.clients), Some(2));
        assert!(tally(Vec::new(), 10).per_pool.is_empty());
    }

    proptest! {
        /// However many names clients make up, the bounded list has at most top_n + 1
        /// entries and counts every client once.
        #[test]
        fn the_bounded_list_counts_everyone_in_at_most_n_plus_one_rows(
            names in proptest::collection::vec(0u8..40, 0..200),
            top_n in 0usize..8,
        ) {
            let names: Vec<String> = names.iter().map(|n| format!("app{n}")).collect();
            let clients = names.iter().map(|name| ClientView {
                database: "db",
                user: "u",
                application: name,
                ip: None,
                state: Use::Waiting,
            });
            let apps = tally(clients, top_n);
            prop_assert!(apps.bounded.len() <= top_n + 1);
            let counted: usize = apps.bounded.iter().map(|a| a.connected).sum();
            prop_assert_eq!(counted, names.len());
            let waiting: usize = apps.bounded.iter().map(|a| a.waiting).sum();
            prop_assert_eq!(waiting, names.len());
        }
    }
}
