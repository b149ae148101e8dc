//! The validated configuration every other module reads: built once from defaults, the TOML
//! file, environment variables and flags (see [`load`]), then passed around as `Arc<Config>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::secret::Secret;

pub mod cli;
pub mod duration;
pub mod file;
pub mod validate;

pub use validate::{from_sources, from_toml};
pub use validate::{load, ConfigError, ConfigErrors};

/// When a client's server goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `None` only under `auth_type = trust` for users without a password.
    pub secret: Option<Secret>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Overrides the top-level `max_user_connections` for this user.
    pub max_user_connections: Option<usize>,
    /// Overrides the top-level `max_client_conn_per_user` for this user.
    pub max_client_conn_per_user: Option<usize>,
}

/// Where a client-visible database name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub reserve_pool_size: Option<usize>,
    /// Overrides the top-level `max_db_connections` for this database name.
    pub max_db_connections: Option<usize>,
    /// Overrides the top-level `max_client_conn_per_database` for this database name.
    pub max_client_conn_per_database: Option<usize>,
}

/// Everything pgwarden runs with. Durations of zero mean "disabled" where noted.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// TCP addresses to listen on (`host:port`, IPv6 as `[::1]:6432`).
    pub listen: Vec<String>,
    /// Directory for a Unix socket `.s.PGSQL.<port>` (port of the first `listen` entry).
    pub unix_socket_dir: Option<PathBuf>,
    pub auth_type: AuthType,
    /// Known users: `[users]` of the file merged with `auth_file` (the file wins on conflict).
    pub users: HashMap<String, User>,
    /// Named database routes.
    pub databases: HashMap<String, Database>,
    /// The `"*"` route: any database name not listed goes here unchanged.
    pub wildcard: Option<Database>,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub max_client_conn: usize,
    /// Client connections per user, database, source address and `application_name`
    /// (zero: unlimited). Checked once the client has authenticated.
    pub max_client_conn_per_user: usize,
    pub max_client_conn_per_database: usize,
    pub max_client_conn_per_addr: usize,
    pub max_client_conn_per_app: usize,
    /// Source addresses sharing this many leading bits count as one for
    /// `max_client_conn_per_addr` (and for `client_identity = "address"`).
    pub client_addr_prefix_v4: u8,
    pub client_addr_prefix_v6: u8,
    pub client_identity: ClientIdentity,
    /// Extra servers a pool may open for clients that waited `reserve_pool_timeout`.
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    /// Backend connections per database name, per user, in total, and held by one client
    /// identity in one pool (zero: unlimited).
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub max_server_conn: usize,
    pub max_server_conn_per_client: usize,
    /// Tell a waiting client it is queued after this long (zero: never).
    pub query_wait_notify: Duration,
    /// Close a client idle (outside a transaction) longer than this (zero: never).
    pub client_idle_timeout: Duration,
    /// Close a client idle inside a transaction longer than this (zero: never).
    pub idle_transaction_timeout: Duration,
    /// Close a client whose transaction lasts longer than this (zero: never).
    pub transaction_timeout: Duration,
    /// Cancel a query running longer than this (the session goes on) (zero: never).
    pub query_timeout: Duration,
    /// After a failed server connect or login, wait this long before the pool tries again.
    pub server_login_retry: Duration,
    /// Free a pool made for the wildcard route once no client has used it this long
    /// (zero: never), closing its servers.
    pub autodb_idle_timeout: Duration,
    /// Send a password to a server that asks for it in cleartext over plain TCP too (by
    /// default only over TLS or a Unix socket, where nobody on the path can read it).
    pub server_allow_cleartext_password: bool,
    /// Test a server idle longer than this with `server_check_query` before handing it out.
    pub server_check_delay: Duration,
    /// Empty: servers are not tested.
    pub server_check_query: String,
    /// How long a forwarded cancel request may take before it is given up.
    pub cancel_wait_timeout: Duration,
    /// Run on a server before another client gets it; empty for none.
    pub server_reset_query: String,
    /// Close servers idle longer than this (zero: never).
    pub server_idle_timeout: Duration,
    /// Close servers older than this when they are next idle (zero: never).
    pub server_lifetime: Duration,
    pub server_connect_timeout: Duration,
    /// How long a client waits for a server before an error (zero: forever).
    pub query_wait_timeout: Duration,
    /// How long a client may take from connecting to being logged in (zero: forever).
    pub client_login_timeout: Duration,
    /// How long shutdown waits for running transactions.
    pub shutdown_timeout: Duration,
    /// Largest protocol message accepted whole (startup, auth and inspected messages).
    pub max_packet_size: u32,
    /// Prepared statements pgwarden keeps per server for transaction pooling, least
    /// recently used closed first (0: named statements pin their client instead).
    pub max_prepared_statements: usize,
    /// Runtime threads serving clients (1: a single-threaded runtime).
    pub workers: usize,
    pub log_level: String,
}
