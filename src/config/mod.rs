//! The validated configuration every other module reads: built once from defaults, the TOML
//! file, environment variables and flags (see [`load`]), then passed around as `Arc<Config>`.

use std::fmt;

use crate::auth::secret::Secret;

pub mod cli;
mod declare;
pub mod duration;
pub mod file;
pub mod settings;
pub mod validate;
pub mod value;

pub use declare::{Scope, Setting};
pub use settings::{Config, Overrides, PoolConfig, SETTINGS};

pub use validate::{from_sources, from_toml, with_setting};
pub use validate::{load, ConfigError, ConfigErrors};

/// When a client's server goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// When the backend reports idle (`ReadyForQuery` with status `I`).
    Transaction,
    /// After every statement; multi-statement transactions are refused.
    Statement,
}

pub use crate::auth::AuthType;

/// What makes clients "the same" for fair queueing and `max_server_conn_per_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientIdentity {
    /// The client's `application_name`, or its user when it sets none.
    Application,
    /// The user the client logged in as.
    User,
    /// The client's IP address (grouped by `client_addr_prefix_v4`/`_v6`); Unix-socket
    /// clients are one identity.
    Address,
}

/// A user pgwarden knows: how clients authenticate as it, and how pgwarden logs in for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    /// `None` only under `auth_type = trust` for users without a password.
    pub secret: Option<Secret>,
    /// Its `[users.NAME]` settings.
    pub overrides: Overrides,
}

/// Where a client-visible database name leads.
#[derive(Clone, PartialEq)]
pub struct Database {
    /// A host name, an IP address, or an absolute directory holding a Unix socket.
    pub host: String,
    pub port: u16,
    /// The real database name; `None` keeps the name the client asked for.
    pub dbname: Option<String>,
    /// Log in to the server as this user instead of the client's.
    pub user: Option<String>,
    /// Password for `user` (or for the client's user) at the server.
    pub password: Option<String>,
    /// Its `[databases.NAME]` settings.
    pub overrides: Overrides,
}

impl Database {
    /// A route to `host:port` keeping the client's database name and user, with no
    /// settings of its own.
    pub fn at(host: &str, port: u16) -> Database {
        Database {
            host: host.to_owned(),
            port,
            dbname: None,
            user: None,
            password: None,
            overrides: Overrides::default(),
        }
    }
}

/// Never prints the password: routes are logged and shown.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl Config {
    /// The route for a client-visible database name: a named entry, else the wildcard.
    pub fn route(&self, database: &str) -> Option<&Database> {
        self.databases.get(database).or(self.wildcard.as_ref())
    }

    /// The TLS settings, for [`crate::tls`].
    pub fn tls_settings(&self) -> crate::tls::TlsSettings {
        crate::tls::TlsSettings {
            client_mode: self.client_tls_sslmode,
            client_cert: self.client_tls_cert_file.clone(),
            client_key: self.client_tls_key_file.clone(),
            client_ca: self.client_tls_ca_file.clone(),
            server_mode: self.server_tls_sslmode,
            server_ca: self.server_tls_ca_file.clone(),
            server_cert: self.server_tls_cert_file.clone(),
            server_key: self.server_tls_key_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_never_prints_its_password() {
        let mut route = Database::at("db", 5432);
        route.password = Some("hunter2".to_owned());
        let shown = format!("{route:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
