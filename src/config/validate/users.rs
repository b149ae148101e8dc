//! Who may log in: `[users]` from the file, merged with `auth_file` and the upstream URL's
//! user, each password parsed into a [`Secret`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{table_key, Checker, Upstream};
use crate::auth::secret::Secret;
use crate::auth::userlist;
use crate::config::file::{FileConfig, FileUser};
use crate::config::{AuthType, Scope, User};

impl Checker {
    /// `[users]`, then `auth_file` (its passwords win), then the upstream URL's user (a flag
    /// or the file's `upstream`, which wins over both). Every user needs a password unless
    /// `auth_type = "trust"`.
    pub(super) fn users(
        &mut self,
        merged: &FileConfig,
        upstream: Option<&Upstream>,
        auth_type: AuthType,
    ) -> HashMap<String, User> {
        let mut users = self.file_users(&merged.users);
        if let Some(path) = merged.text("auth_file") {
            for (name, password) in self.auth_file(Path::new(path)) {
                match Secret::parse(&password) {
                    Ok(secret) => user_entry(&mut users, name).secret = Some(secret),
                    Err(e) => self.error("auth_file", format!("user {name:?}: {e}")),
                }
            }
        }
        if let Some((name, password)) = upstream.and_then(|u| u.user.clone()) {
            let user = user_entry(&mut users, name);
            if let Some(password) = password {
                user.secret = Some(Secret::Plain(password));
            }
        }
        if auth_type != AuthType::Trust {
            let mut missing: Vec<&String> = users
                .iter()
                .filter(|(_, u)| u.secret.is_none())
                .map(|(n, _)| n)
                .collect();
            missing.sort();
            for name in missing {
                let reason = "missing: set it here, in auth_file or in the upstream URL \
                              (only auth_type = \"trust\" needs none)";
                self.error(table_key("users", name, "password"), reason);
            }
        }
        users
    }

    fn file_users(&mut self, entries: &BTreeMap<String, FileUser>) -> HashMap<String, User> {
        let mut users = HashMap::new();
        for (name, entry) in entries {
            let key = |field: &str| table_key("users", name, field);
            if name.is_empty() {
                self.error(key(""), "a user name must not be empty");
            }
            let overrides = self.overrides(&entry.settings, Scope::User, &key);
            if let Some(size) = overrides.pool_size {
                self.at_least(&key("pool_size"), size, 1);
            }
            let secret = entry.password.as_deref().and_then(|password| {
                Secret::parse(password)
                    .map_err(|e| self.error(key("password"), e.to_string()))
                    .ok()
            });
            let user = User { secret, overrides };
            users.insert(name.clone(), user);
        }
        users
    }

    fn auth_file(&mut self, path: &Path) -> Vec<(String, String)> {
        let parsed = match std::fs::read_to_string(path) {
            Ok(text) => userlist::parse(&text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        parsed.unwrap_or_else(|reason| {
            self.error("auth_file", format!("{}: {reason}", path.display()));
            Vec::new()
        })
    }
}

fn user_entry(users: &mut HashMap<String, User>, name: String) -> &mut User {
    users.entry(name).or_default()
}
