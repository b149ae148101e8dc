//! **Every setting, declared once.** One entry gives the key, its type, its default, what its
//! value looks like in `--help`, its `--help` section, where else it may be set (per-pool
//! entries only) and its documentation. From it follow: the [`Config`] field, the flag
//! (`--key-with-dashes`), the `PGWARDEN_KEY` variable, the TOML key (top level, and in
//! `[databases.NAME]` / `[users.NAME]` by scope), reading and type errors by key, the default,
//! the `--help` text and the README's settings table (checked by a test).
//!
//! To add a setting: add one entry here (global, or per_pool with its scope), then use
//! `config.key` (or `config.pool_config(route, user).key`). Ranges and relations between
//! settings are checked in `validate::Checker::limits`.
//!
//! Entry syntax: `/// doc` then `key: Type = default; "VALUE NAME", HEADING[, Scope];`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use super::declare::{declare, Scope, Setting};
use super::value::{Scalar, Value};
use super::{AuthType, ClientIdentity, Database, PoolMode, User};
use crate::tls::SslMode;

// `--help` sections, in the order of config/pgwarden.toml.
const CLIENTS: &str = "Clients";
const AUTHENTICATION: &str = "Authentication";
const POOLING: &str = "Pooling";
const SERVERS: &str = "Server connections";
const PROCESS: &str = "Process";
const MONITORING: &str = "Monitoring";

/// 1 GiB, Postgres' own limit for one message.
const GIB: u32 = 1 << 30;

declare! {
    global {
        /// Addresses to accept clients on, comma-separated; IPv6 in brackets ([::1]:6432).
        listen: Vec<String> = vec!["127.0.0.1:6432".to_owned()]; "HOST:PORT[,...]", CLIENTS;
        /// Also accept clients on a Unix socket in this directory (.s.PGSQL.<port of the
        /// first listen address>).
        unix_socket_dir: Option<PathBuf> = None; "DIR", CLIENTS;
        /// Most logged-in client connections in total.
        max_client_conn: usize = 1000; "N", CLIENTS;
        /// Most connections that have not finished logging in at once; when full, the one
        /// that has waited longest is closed (53300) to make room (0: as many as
        /// max_client_conn).
        max_pending_logins: usize = 0; "N", CLIENTS;
        /// The same per source address, grouped by the client_addr_prefix settings (the Unix
        /// socket is one source); set it lower on a proxy strangers can reach (0: as many as
        /// max_pending_logins).
        max_pending_logins_per_addr: usize = 0; "N", CLIENTS;
        /// Most client connections from one source address, grouped by the
        /// client_addr_prefix settings (0: unlimited; Unix-socket clients are exempt).
        max_client_conn_per_addr: usize = 0; "N", CLIENTS;
        /// Leading bits of an IPv4 address that make it "one address" (24: a /24 network).
        client_addr_prefix_v4: u8 = 32; "BITS", CLIENTS;
        /// Leading bits of an IPv6 address that make it "one address".
        client_addr_prefix_v6: u8 = 128; "BITS", CLIENTS;
        /// Most client connections with one application_name (0: unlimited; clients
        /// without one count together).
        max_client_conn_per_app: usize = 0; "N", CLIENTS;
        /// TLS towards clients: disable, allow, prefer (TLS for clients that ask), require
        /// (plaintext TCP clients refused), verify-ca or verify-full (a client certificate
        /// signed by client_tls_ca_file needed). Unix-socket clients never use TLS.
        client_tls_sslmode: SslMode = SslMode::Disable; "MODE", CLIENTS;
        /// PEM certificate chain pgwarden shows clients (needed above disable).
        client_tls_cert_file: Option<PathBuf> = None; "FILE", CLIENTS;
        /// PEM private key of client_tls_cert_file.
        client_tls_key_file: Option<PathBuf> = None; "FILE", CLIENTS;
        /// PEM CA certificates client certificates are checked against (verify-ca, verify-full).
        client_tls_ca_file: Option<PathBuf> = None; "FILE", CLIENTS;
        /// How long a client may take to log in (0: forever).
        client_login_timeout: Duration = Duration::from_secs(60); "DURATION", CLIENTS;
        /// Largest protocol message read whole, in bytes (at least 1024).
        max_packet_size: u32 = GIB; "BYTES", CLIENTS;
        /// Close a client idle (outside a transaction) longer than this, with 57P05 (0: never).
        client_idle_timeout: Duration = Duration::ZERO; "DURATION", CLIENTS;
        /// Close a client idle inside a transaction longer than this, with 25P03; its
        /// transaction is rolled back (0: never).
        idle_transaction_timeout: Duration = Duration::ZERO; "DURATION", CLIENTS;
        /// Close a client whose transaction lasts longer than this, with 25P04; it is rolled
        /// back (0: never).
        transaction_timeout: Duration = Duration::ZERO; "DURATION", CLIENTS;
        /// Cancel a query running longer than this: a NOTICE naming the timeout, then
        /// Postgres' 57014; the session goes on (0: never).
        query_timeout: Duration = Duration::ZERO; "DURATION", CLIENTS;

        /// How clients prove who they are.
        auth_type: AuthType = AuthType::ScramSha256; "TYPE", AUTHENTICATION;
        /// A PgBouncer userlist.txt ("user" "password" per line) adding to the file's
        /// [users]; its passwords win.
        auth_file: Option<PathBuf> = None; "FILE", AUTHENTICATION;

        /// Prepared statements kept per server in transaction pooling, least recently used
        /// closed first (0: named statements pin their client to its server).
        max_prepared_statements: usize = 200; "N", POOLING;
        /// How long a client waits for a server before an error (0: forever).
        query_wait_timeout: Duration = Duration::from_secs(120); "DURATION", POOLING;
        /// How long a client waits before a reserve server may be opened for it.
        reserve_pool_timeout: Duration = Duration::from_secs(5); "DURATION", POOLING;
        /// Most server connections in total (0: unlimited).
        max_server_conn: usize = 0; "N", POOLING;
        /// Most servers one client identity may hold at once in one pool (0: unlimited).
        max_server_conn_per_client: usize = 0; "N", POOLING;
        /// What makes clients one identity for fair queueing and max_server_conn_per_client:
        /// application (application_name, else the user), user or address.
        client_identity: ClientIdentity = ClientIdentity::Application; "IDENTITY", POOLING;
        /// Tell a waiting client it is queued (a NOTICE) after this long (0: never).
        query_wait_notify: Duration = Duration::ZERO; "DURATION", POOLING;
        /// Run on a server before another client gets it; empty for none.
        server_reset_query: String = "DISCARD ALL".to_owned(); "SQL", POOLING;

        /// Give up connecting to a server after this long.
        server_connect_timeout: Duration = Duration::from_secs(15); "DURATION", SERVERS;
        /// Close servers idle this long (0: never).
        server_idle_timeout: Duration = Duration::from_secs(600); "DURATION", SERVERS;
        /// Close servers this old when next idle (0: never).
        server_lifetime: Duration = Duration::from_secs(3600); "DURATION", SERVERS;
        /// After a failed server connect or login, wait this long before the pool tries
        /// again; waiting clients keep waiting.
        server_login_retry: Duration = Duration::from_secs(1); "DURATION", SERVERS;
        /// Test a server idle longer than this with server_check_query before handing it
        /// out (0: every time).
        server_check_delay: Duration = Duration::from_secs(30); "DURATION", SERVERS;
        /// Free a pool made for the wildcard route once no client has used it this long,
        /// closing its servers (0: never).
        autodb_idle_timeout: Duration = Duration::from_secs(3600); "DURATION", SERVERS;
        /// Send the password to a server asking for it in cleartext over plain TCP too (else
        /// only over TLS or a Unix socket).
        server_allow_cleartext_password: bool = false; "BOOL", SERVERS;
        /// The query testing an idle server; empty for no test.
        server_check_query: String = "SELECT 1".to_owned(); "SQL", SERVERS;
        /// TLS towards servers, as libpq's sslmode: disable, allow (plaintext, TLS if the
        /// server refuses that login), prefer (TLS if the server offers it), require (TLS, certificate not checked), verify-ca (chain checked
        /// against server_tls_ca_file), verify-full (and the host name). Not for Unix sockets.
        server_tls_sslmode: SslMode = SslMode::Prefer; "MODE", SERVERS;
        /// PEM CA certificates server certificates are checked against (verify-ca, verify-full).
        server_tls_ca_file: Option<PathBuf> = None; "FILE", SERVERS;
        /// PEM client certificate chain pgwarden shows servers (optional).
        server_tls_cert_file: Option<PathBuf> = None; "FILE", SERVERS;
        /// PEM private key of server_tls_cert_file.
        server_tls_key_file: Option<PathBuf> = None; "FILE", SERVERS;
        /// How long a forwarded cancel request may take before it is given up.
        cancel_wait_timeout: Duration = Duration::from_secs(5); "DURATION", SERVERS;

        /// How long shutdown waits (for clients to leave after SIGTERM, for running
        /// transactions after SIGINT) before closing the sessions left (0: no limit).
        shutdown_timeout: Duration = Duration::from_secs(30); "DURATION", PROCESS;
        /// Threads serving clients. One is the cheapest per transaction (like PgBouncer);
        /// more spread load over cores on a shared proxy.
        workers: usize = 1; "N", PROCESS;
        /// error, warn, info, debug or trace, or tracing directives (info,pgwarden=debug).
        log_level: String = "info".to_owned(); "LEVEL", PROCESS;
        /// Users who may use the admin console (database pgwarden or pgbouncer) to read
        /// and to change things (PAUSE, KILL, SET, ...), comma-separated. They log in as
        /// any user does (auth_type, [users], auth_file).
        admin_users: Vec<String> = Vec::new(); "USER[,...]", PROCESS;
        /// Users who may read the admin console (SHOW ...) but change nothing.
        stats_users: Vec<String> = Vec::new(); "USER[,...]", PROCESS;
        /// The period SHOW STATS' averages (avg_ columns) and the console's recent wait
        /// percentiles are taken over.
        stats_period: Duration = Duration::from_secs(60); "DURATION", PROCESS;

        /// Serve /metrics (Prometheus), /health/live, /health/ready and a status page at /
        /// over HTTP on this address, e.g. 127.0.0.1:9930 (none: off).
        metrics_listen: Option<String> = None; "HOST:PORT", MONITORING;
        /// application_name values shown one by one in /metrics and the status page, the
        /// most connected first; the rest count together as "other".
        metrics_top_applications: usize = 10; "N", MONITORING;
        /// Alert when every server of a pool is busy with clients waiting for longer than
        /// this (0: off).
        alert_pool_saturated_for: Duration = Duration::from_secs(5); "DURATION", MONITORING;
        /// Alert when the 99th percentile of a pool's wait for a server over the last
        /// minute is above this (0: off).
        alert_wait_p99: Duration = Duration::from_secs(1); "DURATION", MONITORING;
        /// Alert when a cap refused at least this many clients in the last minute (0: off).
        alert_refusals_per_minute: usize = 10; "N", MONITORING;
        /// Alert when at least this many server connects or logins of a pool failed in
        /// the last minute, or its logins are failing now (0: off).
        alert_server_failures_per_minute: usize = 1; "N", MONITORING;
        /// Alert when a cap is used to at least this percentage of its value (0: off).
        alert_cap_near_percent: u8 = 90; "PERCENT", MONITORING;
        /// Alert when pinned clients hold at least this percentage of a pool's servers
        /// (0: off).
        alert_pinned_percent: u8 = 50; "PERCENT", MONITORING;
    }
    per_pool {
        /// When a client's server goes back to the pool: session, transaction or statement.
        pool_mode: PoolMode = PoolMode::Transaction; "MODE", POOLING, Both;
        /// Most server connections per (database, user) pool.
        pool_size: usize = 20; "N", POOLING, Both;
        /// Server connections each pool keeps open even when idle.
        min_pool_size: usize = 0; "N", POOLING, Database;
        /// Extra servers a pool may open for clients that waited reserve_pool_timeout.
        reserve_pool_size: usize = 0; "N", POOLING, Database;
        /// Most server connections to one database name, all pools together (0: unlimited).
        max_db_connections: usize = 0; "N", POOLING, Database;
        /// Most server connections of one user, all pools together (0: unlimited).
        max_user_connections: usize = 0; "N", POOLING, User;
        /// Most client connections to one database name (0: unlimited).
        max_client_conn_per_database: usize = 0; "N", CLIENTS, Database;
        /// Most client connections of one user (0: unlimited).
        max_client_conn_per_user: usize = 0; "N", CLIENTS, User;
    }
}

/// The one setting that is not in the table: it makes a route and a user rather than a
/// value (`config::validate` reads it). Shown first in `--help` and in the README.
pub const UPSTREAM_DOC: &str = "Forward every database to this server: \
    postgres://[USER[:PASSWORD]@]HOST[:PORT]. With credentials, USER becomes a known user with \
    that password (clients log in with it, and so does pgwarden). A socket directory is a host \
    such as %2Fvar%2Frun%2Fpostgresql.";

/// The setting named `key`.
pub fn find(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// Reads one value, reporting a value that does not read and falling back to the default.
fn read_value<T: Value>(
    raw: Option<&Scalar>,
    key: &str,
    default: impl FnOnce() -> T,
    report: &mut dyn FnMut(&str, String),
) -> T {
    match raw {
        None => default(),
        Some(Scalar::Text(text)) => T::parse(text).unwrap_or_else(|reason| {
            report(key, reason);
            default()
        }),
        Some(Scalar::NotScalar) => {
            report(key, "expected one value, not a table or a list".to_owned());
            default()
        }
    }
}

/// Why `name` cannot be in a table of kind `table`.
fn misplaced(name: &str, table: Scope) -> String {
    let kind = match table {
        Scope::User => "user",
        _ => "database",
    };
    match find(name) {
        Some(_) => format!("{name} cannot be set per {kind}; set it at the top level"),
        None => "unknown key".to_owned(),
    }
}

/// The README's settings table, generated from the declarations.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | meaning |\n| --- | --- | --- |\n");
    out.push_str(&format!(
        "| `upstream` | none | {} |\n",
        UPSTREAM_DOC.replace('|', "\\|")
    ));
    for setting in SETTINGS {
        let default = (setting.default)();
        let default = match default.as_str() {
            "" => "empty".to_owned(),
            "none" => "none".to_owned(),
            _ => format!("`{default}`"),
        };
        let scope = match setting.scope {
            Scope::Global => "",
            Scope::Database => " Also per `[databases.NAME]`.",
            Scope::User => " Also per `[users.NAME]`.",
            Scope::Both => " Also per `[databases.NAME]` and `[users.NAME]` (the user's wins).",
        };
        let meaning = format!("{}{scope}", setting.help()).replace('|', "\\|");
        out.push_str(&format!("| `{}` | {default} | {meaning} |\n", setting.key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "<!-- settings table: generated from src/config/settings.rs -->\n";
    const END: &str = "<!-- end of settings table -->";

    /// The README's table is the declarations' own; `PGWARDEN_BLESS=1 cargo test --lib
    /// settings` writes it after a change.
    #[test]
    fn the_readme_table_is_generated_from_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme
            .find(START)
            .expect("README lacks the table's start marker")
            + START.len();
        let end = readme[start..]
            .find(END)
            .expect("README lacks the table's end marker")
            + start;
        let table = markdown_table();
        if readme[start..end] != table {
            if std::env::var_os("PGWARDEN_BLESS").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
                std::fs::write(path, updated).unwrap();
            } else {
                panic!("README.md's settings table is out of date; run PGWARDEN_BLESS=1 cargo test --lib settings");
            }
        }
    }

    #[test]
    fn keys_are_unique_and_every_default_reads_back() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "a key is declared twice");
        let config = Config::read(&BTreeMap::new(), &mut |k, r| panic!("{k}: {r}"));
        let shown: BTreeMap<String, Scalar> = SETTINGS
            .iter()
            .map(|s| (s.key.to_owned(), Scalar::Text((s.default)())))
            .filter(|(_, v)| *v != Scalar::Text("none".to_owned()))
            .collect();
        let again = Config::read(&shown, &mut |k, r| panic!("{k}: {r}"));
        assert_eq!(config, again);
    }

    #[test]
    fn per_pool_values_resolve_user_then_database_then_top_level() {
        let mut config = Config::read(&BTreeMap::new(), &mut |_, _| {});
        config.pool_size = 7;
        let mut route = Database::at("db", 5432);
        route.overrides.pool_size = Some(5);
        route.overrides.min_pool_size = Some(2);
        let mut user = User::default();
        user.overrides.pool_size = Some(3);
        let both = config.pool_config(&route, Some(&user));
        assert_eq!((both.pool_size, both.min_pool_size), (3, 2));
        assert_eq!(config.pool_config(&route, None).pool_size, 5);
        let plain = Database::at("db", 5432);
        assert_eq!(config.pool_config(&plain, None).pool_size, 7);
    }

    #[test]
    fn tables_accept_their_scope_only() {
        let entries: BTreeMap<String, Scalar> = [
            ("pool_size", "4"),
            ("max_user_connections", "2"),
            ("workers", "3"),
            ("prot", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Scalar::Text(v.to_owned())))
        .collect();
        let mut errors = Vec::new();
        let key = |field: &str| format!("databases.app.{field}");
        let got = Overrides::read(&entries, Scope::Database, &key, &mut |k, r| {
            errors.push(format!("{k}: {r}"))
        });
        assert_eq!(got.pool_size, Some(4));
        assert_eq!(
            errors,
            [
                "databases.app.max_user_connections: max_user_connections cannot be set per \
                 database; set it at the top level",
                "databases.app.prot: unknown key",
                "databases.app.workers: workers cannot be set per database; set it at the top level",
            ]
        );
    }
}
