//! Command-line flags: one per top-level config key (the key with dashes), each also read
//! from `PGWARDEN_<KEY>`; a flag beats its variable, which beats the file (see `config`).
//!
//! Values are only typed here (numbers, modes); ranges, durations, addresses and the upstream
//! URL are checked by `config::validate` so that every problem is reported together, by key.
//! Subcommands (`check`) will become `#[command(subcommand)] command: Option<Command>`, with
//! these flags marked `global = true` so they apply to every subcommand.

use std::path::PathBuf;

use clap::Parser;

use super::{AuthType, ClientIdentity, PoolMode};

// `--help` sections, in the order of config/pgwarden.toml.
const CLIENTS: &str = "Clients";
const AUTHENTICATION: &str = "Authentication";
const POOLING: &str = "Pooling";
const SERVERS: &str = "Server connections";
const PROCESS: &str = "Process";

/// Settings given on the command line or in the environment; `None` means "not given".
///
/// The field docs are the `--help` text, written for a terminal rather than for rustdoc.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Parser, Debug, Default, Clone)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Read settings from this TOML file (see config/pgwarden.toml); flags and PGWARDEN_*
    /// variables override it.
    #[arg(long, env = "PGWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Forward every database to this server: postgres://[USER[:PASSWORD]@]HOST[:PORT].
    /// With credentials, USER becomes a known user with that password (clients log in with
    /// it, and so does pgwarden). A socket directory is a host such as %2Fvar%2Frun%2Fpostgresql.
    #[arg(
        long,
        env = "PGWARDEN_UPSTREAM",
        value_name = "URL",
        hide_env_values = true
    )]
    pub upstream: Option<String>,

    /// Addresses to accept clients on, comma-separated; IPv6 in brackets ([::1]:6432).
    /// Default: 127.0.0.1:6432.
    #[arg(long, env = "PGWARDEN_LISTEN", value_name = "HOST:PORT[,...]")]
    #[arg(help_heading = CLIENTS)]
    pub listen: Option<String>,

    /// Also accept clients on a Unix socket in this directory (.s.PGSQL.<port of the first
    /// listen address>). Default: none.
    #[arg(long, env = "PGWARDEN_UNIX_SOCKET_DIR", value_name = "DIR")]
    #[arg(help_heading = CLIENTS)]
    pub unix_socket_dir: Option<PathBuf>,

    /// Most client connections accepted in total. Default: 1000.
    #[arg(long, env = "PGWARDEN_MAX_CLIENT_CONN", value_name = "N")]
    #[arg(help_heading = CLIENTS)]
    pub max_client_conn: Option<usize>,

    /// Most client connections of one user (0: unlimited). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_CLIENT_CONN_PER_USER", value_name = "N")]
    #[arg(help_heading = CLIENTS)]
    pub max_client_conn_per_user: Option<usize>,

    /// Most client connections to one database name (0: unlimited). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_CLIENT_CONN_PER_DATABASE", value_name = "N")]
    #[arg(help_heading = CLIENTS)]
    pub max_client_conn_per_database: Option<usize>,

    /// Most client connections from one source address, grouped by the client_addr_prefix
    /// settings (0: unlimited; Unix-socket clients are exempt). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_CLIENT_CONN_PER_ADDR", value_name = "N")]
    #[arg(help_heading = CLIENTS)]
    pub max_client_conn_per_addr: Option<usize>,

    /// Leading bits of an IPv4 address that make it "one address" (24: a /24 network).
    /// Default: 32.
    #[arg(long, env = "PGWARDEN_CLIENT_ADDR_PREFIX_V4", value_name = "BITS")]
    #[arg(help_heading = CLIENTS)]
    pub client_addr_prefix_v4: Option<u8>,

    /// Leading bits of an IPv6 address that make it "one address". Default: 128.
    #[arg(long, env = "PGWARDEN_CLIENT_ADDR_PREFIX_V6", value_name = "BITS")]
    #[arg(help_heading = CLIENTS)]
    pub client_addr_prefix_v6: Option<u8>,

    /// Most client connections with one application_name (0: unlimited; clients without
    /// one count together). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_CLIENT_CONN_PER_APP", value_name = "N")]
    #[arg(help_heading = CLIENTS)]
    pub max_client_conn_per_app: Option<usize>,

    /// How long a client may take to log in (0: forever). Default: 1m.
    #[arg(long, env = "PGWARDEN_CLIENT_LOGIN_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = CLIENTS)]
    pub client_login_timeout: Option<String>,

    /// Largest protocol message read whole, in bytes (at least 1024).
    /// Default: 1073741824 (1 GiB).
    #[arg(long, env = "PGWARDEN_MAX_PACKET_SIZE", value_name = "BYTES")]
    #[arg(help_heading = CLIENTS)]
    pub max_packet_size: Option<u32>,

    /// Prepared statements kept per server in transaction pooling, least recently used
    /// closed first (0: named statements pin their client to its server). Default: 200.
    #[arg(long, env = "PGWARDEN_MAX_PREPARED_STATEMENTS", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub max_prepared_statements: Option<usize>,

    /// How clients prove who they are. Default: scram-sha-256.
    #[arg(long, env = "PGWARDEN_AUTH_TYPE", value_name = "TYPE")]
    #[arg(help_heading = AUTHENTICATION)]
    pub auth_type: Option<AuthType>,

    /// A PgBouncer userlist.txt ("user" "password" per line) adding to the file's [users];
    /// its passwords win. Default: none.
    #[arg(long, env = "PGWARDEN_AUTH_FILE", value_name = "FILE")]
    #[arg(help_heading = AUTHENTICATION)]
    pub auth_file: Option<PathBuf>,

    /// When a client's server goes back to the pool. Default: transaction.
    #[arg(long, env = "PGWARDEN_POOL_MODE", value_name = "MODE")]
    #[arg(help_heading = POOLING)]
    pub pool_mode: Option<PoolMode>,

    /// Most server connections per (database, user) pool. Default: 20.
    #[arg(long, env = "PGWARDEN_POOL_SIZE", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub pool_size: Option<usize>,

    /// Server connections each pool keeps open even when idle. Default: 0.
    #[arg(long, env = "PGWARDEN_MIN_POOL_SIZE", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub min_pool_size: Option<usize>,

    /// How long a client waits for a server before an error (0: forever). Default: 2m.
    #[arg(long, env = "PGWARDEN_QUERY_WAIT_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = POOLING)]
    pub query_wait_timeout: Option<String>,

    /// Extra servers a pool may open for clients that waited reserve_pool_timeout. Default: 0.
    #[arg(long, env = "PGWARDEN_RESERVE_POOL_SIZE", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub reserve_pool_size: Option<usize>,

    /// How long a client waits before a reserve server may be opened for it. Default: 5s.
    #[arg(long, env = "PGWARDEN_RESERVE_POOL_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = POOLING)]
    pub reserve_pool_timeout: Option<String>,

    /// Most server connections to one database name, all pools together (0: unlimited).
    /// Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_DB_CONNECTIONS", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub max_db_connections: Option<usize>,

    /// Most server connections of one user, all pools together (0: unlimited). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_USER_CONNECTIONS", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub max_user_connections: Option<usize>,

    /// Most server connections in total (0: unlimited). Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_SERVER_CONN", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub max_server_conn: Option<usize>,

    /// Most servers one client identity may hold at once in one pool (0: unlimited).
    /// Default: 0.
    #[arg(long, env = "PGWARDEN_MAX_SERVER_CONN_PER_CLIENT", value_name = "N")]
    #[arg(help_heading = POOLING)]
    pub max_server_conn_per_client: Option<usize>,

    /// What makes clients one identity for fair queueing and max_server_conn_per_client:
    /// application (application_name, else the user), user or address. Default: application.
    #[arg(long, env = "PGWARDEN_CLIENT_IDENTITY", value_name = "IDENTITY")]
    #[arg(help_heading = POOLING)]
    pub client_identity: Option<ClientIdentity>,

    /// Tell a waiting client it is queued (a NOTICE) after this long (0: never). Default: 0s.
    #[arg(long, env = "PGWARDEN_QUERY_WAIT_NOTIFY", value_name = "DURATION")]
    #[arg(help_heading = POOLING)]
    pub query_wait_notify: Option<String>,

    /// Close a client idle (outside a transaction) longer than this (0: never). Default: 0s.
    #[arg(long, env = "PGWARDEN_CLIENT_IDLE_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = CLIENTS)]
    pub client_idle_timeout: Option<String>,

    /// Close a client idle inside a transaction longer than this (0: never). Default: 0s.
    #[arg(
        long,
        env = "PGWARDEN_IDLE_TRANSACTION_TIMEOUT",
        value_name = "DURATION"
    )]
    #[arg(help_heading = CLIENTS)]
    pub idle_transaction_timeout: Option<String>,

    /// Close a client whose transaction lasts longer than this (0: never). Default: 0s.
    #[arg(long, env = "PGWARDEN_TRANSACTION_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = CLIENTS)]
    pub transaction_timeout: Option<String>,

    /// Cancel a query running longer than this (the session goes on) (0: never). Default: 0s.
    #[arg(long, env = "PGWARDEN_QUERY_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = CLIENTS)]
    pub query_timeout: Option<String>,

    /// Run on a server before another client gets it; empty for none. Default: DISCARD ALL.
    #[arg(long, env = "PGWARDEN_SERVER_RESET_QUERY", value_name = "SQL")]
    #[arg(help_heading = POOLING)]
    pub server_reset_query: Option<String>,

    /// Give up connecting to a server after this long. Default: 15s.
    #[arg(long, env = "PGWARDEN_SERVER_CONNECT_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub server_connect_timeout: Option<String>,

    /// Close servers idle this long (0: never). Default: 10m.
    #[arg(long, env = "PGWARDEN_SERVER_IDLE_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub server_idle_timeout: Option<String>,

    /// Close servers this old when next idle (0: never). Default: 1h.
    #[arg(long, env = "PGWARDEN_SERVER_LIFETIME", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub server_lifetime: Option<String>,

    /// After a failed server connect or login, wait this long before the pool tries again;
    /// waiting clients keep waiting. Default: 1s.
    #[arg(long, env = "PGWARDEN_SERVER_LOGIN_RETRY", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub server_login_retry: Option<String>,

    /// Free a pool made for the wildcard route ("*") once no client has used it this long,
    /// closing its servers (0: never). Default: 1h.
    #[arg(long, env = "PGWARDEN_AUTODB_IDLE_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = POOLING)]
    pub autodb_idle_timeout: Option<String>,

    /// Send the password to a server asking for it in cleartext over plain TCP too (else
    /// only over TLS or a Unix socket). Default: false.
    #[arg(
        long,
        env = "PGWARDEN_SERVER_ALLOW_CLEARTEXT_PASSWORD",
        value_name = "BOOL"
    )]
    #[arg(help_heading = SERVERS)]
    pub server_allow_cleartext_password: Option<bool>,

    /// Test a server idle longer than this with server_check_query before handing it out
    /// (0: every time). Default: 30s.
    #[arg(long, env = "PGWARDEN_SERVER_CHECK_DELAY", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub server_check_delay: Option<String>,

    /// The query testing an idle server; empty for no test. Default: SELECT 1.
    #[arg(long, env = "PGWARDEN_SERVER_CHECK_QUERY", value_name = "SQL")]
    #[arg(help_heading = SERVERS)]
    pub server_check_query: Option<String>,

    /// How long a forwarded cancel request may take before it is given up. Default: 5s.
    #[arg(long, env = "PGWARDEN_CANCEL_WAIT_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = SERVERS)]
    pub cancel_wait_timeout: Option<String>,

    /// How long shutdown waits for running transactions. Default: 30s.
    #[arg(long, env = "PGWARDEN_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    #[arg(help_heading = PROCESS)]
    pub shutdown_timeout: Option<String>,

    /// Threads serving clients. One is the cheapest per transaction (like PgBouncer); more
    /// spread load over cores on a shared proxy. Default: 1.
    #[arg(long, env = "PGWARDEN_WORKERS", value_name = "N")]
    #[arg(help_heading = PROCESS)]
    pub workers: Option<usize>,

    /// error, warn, info, debug or trace, or tracing directives (info,pgwarden=debug).
    /// Default: info.
    #[arg(long, env = "PGWARDEN_LOG_LEVEL", value_name = "LEVEL")]
    #[arg(help_heading = PROCESS)]
    pub log_level: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::duration;
    use crate::config::file::defaults;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
        // The struct's doc comment is for rustdoc; --help shows the crate description.
        assert!(Cli::command().get_long_about().is_none());
    }

    #[test]
    fn every_flag_is_its_key_with_dashes_and_has_a_pgwarden_variable() {
        let command = Cli::command();
        for arg in command.get_arguments().filter(|a| a.get_long().is_some()) {
            let key = arg.get_id().as_str();
            if key == "help" || key == "version" {
                continue;
            }
            assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(
                env,
                Some(format!("PGWARDEN_{}", key.to_uppercase()).as_str())
            );
        }
    }

    #[test]
    fn help_states_each_default() {
        let secs = duration::format;
        let expected = [
            ("listen", defaults::LISTEN.to_owned()),
            ("auth_type", "scram-sha-256".to_owned()),
            ("pool_mode", "transaction".to_owned()),
            ("pool_size", defaults::POOL_SIZE.to_string()),
            ("min_pool_size", defaults::MIN_POOL_SIZE.to_string()),
            ("max_client_conn", defaults::MAX_CLIENT_CONN.to_string()),
            ("max_client_conn_per_user", defaults::UNLIMITED.to_string()),
            (
                "max_client_conn_per_database",
                defaults::UNLIMITED.to_string(),
            ),
            ("max_client_conn_per_addr", defaults::UNLIMITED.to_string()),
            ("max_client_conn_per_app", defaults::UNLIMITED.to_string()),
            (
                "client_addr_prefix_v4",
                defaults::CLIENT_ADDR_PREFIX_V4.to_string(),
            ),
            (
                "client_addr_prefix_v6",
                defaults::CLIENT_ADDR_PREFIX_V6.to_string(),
            ),
            ("client_identity", "application".to_owned()),
            ("reserve_pool_size", defaults::RESERVE_POOL_SIZE.to_string()),
            ("reserve_pool_timeout", secs(defaults::RESERVE_POOL_TIMEOUT)),
            ("max_db_connections", defaults::UNLIMITED.to_string()),
            ("max_user_connections", defaults::UNLIMITED.to_string()),
            ("max_server_conn", defaults::UNLIMITED.to_string()),
            (
                "max_server_conn_per_client",
                defaults::UNLIMITED.to_string(),
            ),
            ("query_wait_notify", secs(defaults::QUERY_WAIT_NOTIFY)),
            ("client_idle_timeout", secs(defaults::CLIENT_IDLE_TIMEOUT)),
            (
                "idle_transaction_timeout",
                secs(defaults::IDLE_TRANSACTION_TIMEOUT),
            ),
            ("transaction_timeout", secs(defaults::TRANSACTION_TIMEOUT)),
            ("query_timeout", secs(defaults::QUERY_TIMEOUT)),
            ("server_login_retry", secs(defaults::SERVER_LOGIN_RETRY)),
            ("server_check_delay", secs(defaults::SERVER_CHECK_DELAY)),
            ("autodb_idle_timeout", secs(defaults::AUTODB_IDLE_TIMEOUT)),
            (
                "server_allow_cleartext_password",
                defaults::SERVER_ALLOW_CLEARTEXT_PASSWORD.to_string(),
            ),
            (
                "server_check_query",
                defaults::SERVER_CHECK_QUERY.to_owned(),
            ),
            ("cancel_wait_timeout", secs(defaults::CANCEL_WAIT_TIMEOUT)),
            (
                "server_reset_query",
                defaults::SERVER_RESET_QUERY.to_owned(),
            ),
            ("server_idle_timeout", secs(defaults::SERVER_IDLE_TIMEOUT)),
            ("server_lifetime", secs(defaults::SERVER_LIFETIME)),
            (
                "server_connect_timeout",
                secs(defaults::SERVER_CONNECT_TIMEOUT),
            ),
            ("query_wait_timeout", secs(defaults::QUERY_WAIT_TIMEOUT)),
            ("client_login_timeout", secs(defaults::CLIENT_LOGIN_TIMEOUT)),
            ("shutdown_timeout", secs(defaults::SHUTDOWN_TIMEOUT)),
            ("max_packet_size", defaults::MAX_PACKET_SIZE.to_string()),
            (
                "max_prepared_statements",
                defaults::MAX_PREPARED_STATEMENTS.to_string(),
            ),
            ("workers", defaults::WORKERS.to_string()),
            ("log_level", defaults::LOG_LEVEL.to_owned()),
        ];
        let command = Cli::command();
        for (key, default) in expected {
            let arg = command.get_arguments().find(|a| a.get_id() == key);
            let help = arg.and_then(|a| a.get_help()).map(|h| h.to_string());
            let help = help.unwrap_or_else(|| panic!("no help for {key}"));
            assert!(
                help.contains(&format!("Default: {default}")),
                "{key}: {help}"
            );
        }
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let cli = Cli::try_parse_from([
            "pgwarden",
            "--pool-size=7",
            "--pool-mode=transaction",
            "--auth-type=md5",
            "--listen",
            "127.0.0.1:6432,[::1]:6432",
            "--query-wait-timeout=500ms",
            "--config=pgwarden.toml",
        ])
        .unwrap();
        assert_eq!(cli.pool_size, Some(7));
        assert_eq!(cli.pool_mode, Some(PoolMode::Transaction));
        assert_eq!(cli.auth_type, Some(AuthType::Md5));
        assert_eq!(cli.listen.as_deref(), Some("127.0.0.1:6432,[::1]:6432"));
        assert_eq!(cli.query_wait_timeout.as_deref(), Some("500ms"));
        assert_eq!(cli.config, Some(PathBuf::from("pgwarden.toml")));
        assert_eq!(cli.max_client_conn, None);
    }

    #[test]
    fn bad_typed_values_and_unknown_flags_are_refused() {
        for args in [
            ["pgwarden", "--pool-size=many"],
            ["pgwarden", "--pool-mode=sometimes"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["pgwarden", "--pool_size=3"]).is_err());
    }

    /// The only test that touches the process environment; it owns PGWARDEN_SHUTDOWN_TIMEOUT,
    /// which no other test reads.
    #[test]
    fn environment_is_read_and_a_flag_beats_it() {
        const VAR: &str = "PGWARDEN_SHUTDOWN_TIMEOUT";
        let saved = std::env::var_os(VAR);
        std::env::set_var(VAR, "45s");
        let from_env = Cli::try_parse_from(["pgwarden"]);
        let from_flag = Cli::try_parse_from(["pgwarden", "--shutdown-timeout", "5s"]);
        match saved {
            Some(value) => std::env::set_var(VAR, value),
            None => std::env::remove_var(VAR),
        }
        assert_eq!(from_env.unwrap().shutdown_timeout.as_deref(), Some("45s"));
        assert_eq!(from_flag.unwrap().shutdown_timeout.as_deref(), Some("5s"));
    }
}
