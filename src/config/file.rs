//! The TOML file model (every key optional, unknown keys rejected), the defaults, and the one
//! step that lays flags over the file ([`FileConfig::merge`]). Nothing here is validated yet:
//! values stay as written so that `validate` can report every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::cli::Cli;
use crate::config::{AuthType, ClientIdentity, PoolMode};

/// Every default in one place. They protect the database (small pools, bounded waits) without
/// surprising a new user (local listen address, session pooling, SCRAM).
pub mod defaults {
    use std::time::Duration;

    use crate::config::{AuthType, ClientIdentity, PoolMode};

    pub const LISTEN: &str = "127.0.0.1:6432";
    pub const AUTH_TYPE: AuthType = AuthType::ScramSha256;
    /// Session until transaction pooling is implemented; then transaction becomes the default.
    pub const POOL_MODE: PoolMode = PoolMode::Transaction;
    pub const POOL_SIZE: usize = 20;
    pub const MIN_POOL_SIZE: usize = 0;
    pub const MAX_CLIENT_CONN: usize = 1000;
    /// The per-identity client caps and the cross-pool server caps are off by default, as
    /// in PgBouncer: `pool_size` and `max_client_conn` already bound a new installation.
    pub const UNLIMITED: usize = 0;
    pub const CLIENT_ADDR_PREFIX_V4: u8 = 32;
    pub const CLIENT_ADDR_PREFIX_V6: u8 = 128;
    pub const CLIENT_IDENTITY: ClientIdentity = ClientIdentity::Application;
    pub const RESERVE_POOL_SIZE: usize = 0;
    pub const RESERVE_POOL_TIMEOUT: Duration = Duration::from_secs(5);
    pub const QUERY_WAIT_NOTIFY: Duration = Duration::ZERO;
    pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::ZERO;
    pub const IDLE_TRANSACTION_TIMEOUT: Duration = Duration::ZERO;
    pub const TRANSACTION_TIMEOUT: Duration = Duration::ZERO;
    pub const QUERY_TIMEOUT: Duration = Duration::ZERO;
    pub const SERVER_LOGIN_RETRY: Duration = Duration::from_secs(1);
    /// PgBouncer's default: a wildcard-route pool unused for an hour is freed.
    pub const AUTODB_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// A password goes to a server in cleartext only over TLS or a Unix socket.
    pub const SERVER_ALLOW_CLEARTEXT_PASSWORD: bool = false;
    pub const SERVER_CHECK_DELAY: Duration = Duration::from_secs(30);
    pub const SERVER_CHECK_QUERY: &str = "SELECT 1";
    pub const CANCEL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const SERVER_RESET_QUERY: &str = "DISCARD ALL";
    pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const SERVER_LIFETIME: Duration = Duration::from_secs(3600);
    pub const SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    pub const QUERY_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
    pub const CLIENT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    /// 1 GiB, Postgres' own limit for one message.
    pub const MAX_PACKET_SIZE: u32 = 1 << 30;
    pub const MAX_PREPARED_STATEMENTS: usize = 200;
    pub const LOG_LEVEL: &str = "info";
    pub const WORKERS: usize = 1;
    /// Where a `[databases.NAME]` entry leads when it names no host or port.
    pub const DATABASE_HOST: &str = "127.0.0.1";
    pub const DATABASE_PORT: u16 = 5432;
}

/// The name of the `[databases]` entry that catches every database name not listed.
pub const WILDCARD: &str = "*";

/// The whole file, as written. Durations are kept as text (an integer becomes its digits).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub unix_socket_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub auth_type: Option<AuthType>,
    pub auth_file: Option<PathBuf>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub max_client_conn: Option<usize>,
    pub max_client_conn_per_user: Option<usize>,
    pub max_client_conn_per_database: Option<usize>,
    pub max_client_conn_per_addr: Option<usize>,
    pub max_client_conn_per_app: Option<usize>,
    pub client_addr_prefix_v4: Option<u8>,
    pub client_addr_prefix_v6: Option<u8>,
    pub client_identity: Option<ClientIdentity>,
    pub reserve_pool_size: Option<usize>,
    #[serde(default, deserialize_with = "duration_text")]
    pub reserve_pool_timeout: Option<String>,
    pub max_db_connections: Option<usize>,
    pub max_user_connections: Option<usize>,
    pub max_server_conn: Option<usize>,
    pub max_server_conn_per_client: Option<usize>,
    #[serde(default, deserialize_with = "duration_text")]
    pub query_wait_notify: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub client_idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub idle_transaction_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub transaction_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub query_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub server_login_retry: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub autodb_idle_timeout: Option<String>,
    pub server_allow_cleartext_password: Option<bool>,
    #[serde(default, deserialize_with = "duration_text")]
    pub server_check_delay: Option<String>,
    pub server_check_query: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub cancel_wait_timeout: Option<String>,
    pub server_reset_query: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub server_idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub server_lifetime: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub server_connect_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub query_wait_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub client_login_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub shutdown_timeout: Option<String>,
    pub max_packet_size: Option<u32>,
    pub max_prepared_statements: Option<usize>,
    pub workers: Option<usize>,
    pub log_level: Option<String>,
    #[serde(default)]
    pub databases: BTreeMap<String, FileDatabase>,
    #[serde(default)]
    pub users: BTreeMap<String, FileUser>,
}

/// One `[databases.NAME]` entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDatabase {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub reserve_pool_size: Option<usize>,
    pub max_db_connections: Option<usize>,
    pub max_client_conn_per_database: Option<usize>,
}

/// One `[users.NAME]` entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    /// A plain password, an `md5…` hash or a `SCRAM-SHA-256$…` verifier.
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub max_user_connections: Option<usize>,
    pub max_client_conn_per_user: Option<usize>,
}

impl FileConfig {
    /// Parses the file's text; the error carries the byte span of the offending key or value.
    pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Lays the flags (and their environment variables, which clap has already folded in)
    /// over the file: a setting given on the command line replaces the file's. `--upstream`
    /// also replaces the file's `"*"` database, since both are the wildcard route.
    pub fn merge(mut self, cli: &Cli) -> FileConfig {
        fn over<T: Clone>(flag: &Option<T>, file: Option<T>) -> Option<T> {
            flag.clone().or(file)
        }
        if cli.upstream.is_some() {
            self.databases.remove(WILDCARD);
        }
        FileConfig {
            listen: over(&cli.listen, self.listen),
            unix_socket_dir: over(&cli.unix_socket_dir, self.unix_socket_dir),
            upstream: over(&cli.upstream, self.upstream),
            auth_type: over(&cli.auth_type, self.auth_type),
            auth_file: over(&cli.auth_file, self.auth_file),
            pool_mode: over(&cli.pool_mode, self.pool_mode),
            pool_size: over(&cli.pool_size, self.pool_size),
            min_pool_size: over(&cli.min_pool_size, self.min_pool_size),
            max_client_conn: over(&cli.max_client_conn, self.max_client_conn),
            max_client_conn_per_user: over(
                &cli.max_client_conn_per_user,
                self.max_client_conn_per_user,
            ),
            max_client_conn_per_database: over(
                &cli.max_client_conn_per_database,
                self.max_client_conn_per_database,
            ),
            max_client_conn_per_addr: over(
                &cli.max_client_conn_per_addr,
                self.max_client_conn_per_addr,
            ),
            max_client_conn_per_app: over(
                &cli.max_client_conn_per_app,
                self.max_client_conn_per_app,
            ),
            client_addr_prefix_v4: over(&cli.client_addr_prefix_v4, self.client_addr_prefix_v4),
            client_addr_prefix_v6: over(&cli.client_addr_prefix_v6, self.client_addr_prefix_v6),
            client_identity: over(&cli.client_identity, self.client_identity),
            reserve_pool_size: over(&cli.reserve_pool_size, self.reserve_pool_size),
            reserve_pool_timeout: over(&cli.reserve_pool_timeout, self.reserve_pool_timeout),
            max_db_connections: over(&cli.max_db_connections, self.max_db_connections),
            max_user_connections: over(&cli.max_user_connections, self.max_user_connections),
            max_server_conn: over(&cli.max_server_conn, self.max_server_conn),
            max_server_conn_per_client: over(
                &cli.max_server_conn_per_client,
                self.max_server_conn_per_client,
            ),
            query_wait_notify: over(&cli.query_wait_notify, self.query_wait_notify),
            client_idle_timeout: over(&cli.client_idle_timeout, self.client_idle_timeout),
            idle_transaction_timeout: over(
                &cli.idle_transaction_timeout,
                self.idle_transaction_timeout,
            ),
            transaction_timeout: over(&cli.transaction_timeout, self.transaction_timeout),
            query_timeout: over(&cli.query_timeout, self.query_timeout),
            server_login_retry: over(&cli.server_login_retry, self.server_login_retry),
            autodb_idle_timeout: over(&cli.autodb_idle_timeout, self.autodb_idle_timeout),
            server_allow_cleartext_password: over(
                &cli.server_allow_cleartext_password,
                self.server_allow_cleartext_password,
            ),
            server_check_delay: over(&cli.server_check_delay, self.server_check_delay),
            server_check_query: over(&cli.server_check_query, self.server_check_query),
            cancel_wait_timeout: over(&cli.cancel_wait_timeout, self.cancel_wait_timeout),
            server_reset_query: over(&cli.server_reset_query, self.server_reset_query),
            server_idle_timeout: over(&cli.server_idle_timeout, self.server_idle_timeout),
            server_lifetime: over(&cli.server_lifetime, self.server_lifetime),
            server_connect_timeout: over(&cli.server_connect_timeout, self.server_connect_timeout),
            query_wait_timeout: over(&cli.query_wait_timeout, self.query_wait_timeout),
            client_login_timeout: over(&cli.client_login_timeout, self.client_login_timeout),
            shutdown_timeout: over(&cli.shutdown_timeout, self.shutdown_timeout),
            max_packet_size: over(&cli.max_packet_size, self.max_packet_size),
            max_prepared_statements: over(
                &cli.max_prepared_statements,
                self.max_prepared_statements,
            ),
            workers: over(&cli.workers, self.workers),
            log_level: over(&cli.log_level, self.log_level),
            databases: self.databases,
            users: self.users,
        }
    }
}

/// Accepts a duration as a TOML integer (seconds) or a string, keeping it as text so a bad
/// one is reported by `validate` alongside every other problem instead of ending the parse.
fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Text;

    impl Visitor<'_> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration: seconds as an integer, or a string like \"500ms\" or \"5m\"")
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Self::Value, E> {
            Ok(Some(seconds.to_string()))
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Self::Value, E> {
            Ok(Some(seconds.to_string()))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_owned()))
        }
    }

    deserializer.deserialize_any(Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_may_be_integers_or_strings() {
        let file = FileConfig::parse("query_wait_timeout = 5\nserver_lifetime = \"1h\"").unwrap();
        assert_eq!(file.query_wait_timeout.as_deref(), Some("5"));
        assert_eq!(file.server_lifetime.as_deref(), Some("1h"));
        assert_eq!(file.shutdown_timeout, None);
    }

    #[test]
    fn a_duration_of_the_wrong_type_says_what_is_expected() {
        let err = FileConfig::parse("shutdown_timeout = true").unwrap_err();
        assert!(err.message().contains("seconds as an integer"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        for text in [
            "bogus = 1",
            "[databases.app]\nprot = 1",
            "[users.app]\npasswd = \"x\"",
        ] {
            let err = FileConfig::parse(text).unwrap_err();
            assert!(err.message().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn flags_replace_file_values_and_the_file_wildcard() {
        let file = FileConfig::parse(
            "pool_size = 3\nmax_client_conn = 50\n[databases.\"*\"]\n[databases.app]\n",
        )
        .unwrap();
        let cli = Cli {
            pool_size: Some(7),
            upstream: Some("postgres://db:5432".into()),
            ..Cli::default()
        };
        let merged = file.merge(&cli);
        assert_eq!(merged.pool_size, Some(7));
        assert_eq!(merged.max_client_conn, Some(50));
        assert_eq!(merged.upstream.as_deref(), Some("postgres://db:5432"));
        assert!(!merged.databases.contains_key(WILDCARD));
        assert!(merged.databases.contains_key("app"));
    }
}
