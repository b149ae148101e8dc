//! What differs between the configuration in force and the one a reload read: settings
//! with their old and new values, routes and users added, removed or changed; and the
//! settings only a restart can change, which keep their running value.

use std::collections::HashMap;
use std::fmt;

use crate::config::Config;

macro_rules! restart_only {
    ($($key:ident),+ $(,)?) => {
        /// Settings a running process cannot take: the sockets it listens on, its threads,
        /// its logging, and the budgets made once at start.
        pub const RESTART_ONLY: &[&str] = &[$(stringify!($key)),+];

        /// Puts the running value of every restart-only setting back into `new`, so that
        /// what is in force is what is shown; the keys that differed.
        pub fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
            let mut differ = Vec::new();
            $( if old.$key != new.$key {
                new.$key = old.$key.clone();
                differ.push(stringify!($key));
            } )+
            differ
        }
    };
}

restart_only!(
    listen,
    unix_socket_dir,
    workers,
    log_level,
    max_pending_logins,
    max_pending_logins_per_addr,
    cancel_wait_timeout,
    metrics_listen,
);

/// What a reload changes, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// `(key, old value, new value)`, in the order of the settings table.
    pub settings: Vec<(&'static str, String, String)>,
    /// Database names (`*` for the wildcard route).
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    /// A new secret or new per-user settings.
    pub users_changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// The differences from `old` to `new`.
pub fn changes(old: &Config, new: &Config) -> Changes {
    let settings = (old.values().into_iter().zip(new.values()))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((key, a), (_, b))| (key, a, b))
        .collect();
    let routes = |config: &Config| {
        let mut all: HashMap<String, _> = config.databases.clone();
        if let Some(wildcard) = &config.wildcard {
            all.insert("*".to_owned(), wildcard.clone());
        }
        all
    };
    let (routes_added, routes_removed, routes_changed) = keyed(&routes(old), &routes(new));
    let (users_added, users_removed, users_changed) = keyed(&old.users, &new.users);
    Changes {
        settings,
        routes_added,
        routes_removed,
        routes_changed,
        users_added,
        users_removed,
        users_changed,
    }
}

/// Keys only in `new`, only in `old`, and in both with another value; sorted.
fn keyed<V: PartialEq>(
    old: &HashMap<String, V>,
    new: &HashMap<String, V>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let sorted = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    let added = new.keys().filter(|k| !old.contains_key(*k)).cloned();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).cloned();
    let changed = (new.iter())
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone());
    (
        sorted(added.collect()),
        sorted(removed.collect()),
        sorted(changed.collect()),
    )
}

/// One line: `pool_size 5 -> 20; routes added: b; users removed: carol`, or `no change`.
impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = (self.settings.iter())
            .map(|(key, old, new)| format!("{key} {} -> {}", shown(old), shown(new)))
            .collect();
        for (what, names) in [
            ("routes added", &self.routes_added),
            ("routes removed", &self.routes_removed),
            ("routes changed", &self.routes_changed),
            ("users added", &self.users_added),
            ("users removed", &self.users_removed),
            ("users changed", &self.users_changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {}", names.join(", ")));
            }
        }
        match parts.is_empty() {
            true => f.write_str("no change"),
            false => f.write_str(&parts.join("; ")),
        }
    }
}

fn shown(value: &str) -> &str {
    match value {
        "" => "(empty)",
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    const BASE: &str = "pool_size = 5\nauth_type = \"md5\"\n\
        [databases.a]\nhost = \"127.0.0.1\"\n[databases.b]\nhost = \"127.0.0.1\"\n\
        [users.alice]\npassword = \"a\"\n[users.bob]\npassword = \"b\"\n";

    fn config(text: &str) -> Config {
        from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let changes = changes(&config(BASE), &config(BASE));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(changes.to_string(), "no change");
    }

    #[test]
    fn settings_routes_and_users_are_told_apart() {
        let new = "pool_size = 20\nquery_timeout = \"3s\"\nauth_type = \"md5\"\n\
            [databases.a]\nhost = \"127.0.0.1\"\nport = 5433\n[databases.c]\nhost = \"127.0.0.1\"\n\
            [databases.\"*\"]\nhost = \"127.0.0.1\"\n\
            [users.alice]\npassword = \"a2\"\n[users.carol]\npassword = \"c\"\n";
        let changes = changes(&config(BASE), &config(new));
        assert_eq!(
            changes.settings,
            [
                ("query_timeout", "0s".to_owned(), "3s".to_owned()),
                ("pool_size", "5".to_owned(), "20".to_owned()),
            ]
        );
        assert_eq!(changes.routes_added, ["*", "c"]);
        assert_eq!(changes.routes_removed, ["b"]);
        assert_eq!(changes.routes_changed, ["a"]);
        assert_eq!(changes.users_added, ["carol"]);
        assert_eq!(changes.users_removed, ["bob"]);
        assert_eq!(changes.users_changed, ["alice"]);
        assert_eq!(
            changes.to_string(),
            "query_timeout 0s -> 3s; pool_size 5 -> 20; routes added: *, c; routes removed: b; \
             routes changed: a; users added: carol; users removed: bob; users changed: alice"
        );
    }

    #[test]
    fn restart_only_settings_keep_their_running_value() {
        let old = config(BASE);
        let mut new = config(&format!(
            "listen = \"127.0.0.1:7000\"\nworkers = 4\n{}",
            BASE.replace("pool_size = 5", "pool_size = 6")
        ));
        assert_eq!(keep_restart_only(&old, &mut new), ["listen", "workers"]);
        assert_eq!(
            (new.listen.clone(), new.workers),
            (old.listen.clone(), old.workers)
        );
        assert_eq!(new.pool_size, 6, "the rest is taken");
        let changes = changes(&old, &new);
        assert_eq!(changes.settings.len(), 1, "{changes}");
    }

    #[test]
    fn every_restart_only_key_is_a_setting() {
        for key in RESTART_ONLY {
            assert!(crate::config::settings::find(key).is_some(), "{key}");
        }
    }
}
