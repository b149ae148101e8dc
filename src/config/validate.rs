//! Builds the validated [`Config`] from defaults, the file and the flags, reporting every
//! problem at once, each under the TOML key it belongs to (`databases.app.port: …`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::cli::Cli;
use crate::config::duration;
use crate::config::file::{defaults, FileConfig, FileDatabase, WILDCARD};
use crate::config::{Config, Database};

mod addr;
#[cfg(test)]
mod tests;
mod users;

use addr::Upstream;

/// Smallest `max_packet_size` accepted: startup and authentication messages must fit.
pub const MIN_MAX_PACKET_SIZE: u32 = 1024;

/// What `log_level` may be when it is a single word.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// One problem with the configuration: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The TOML key (`pool_size`, `databases.app.port`), or `FILE:LINE:COLUMN` when the file
    /// itself does not parse.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found, in the order of the checks; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

/// Reads the file named by `--config` (if any) and builds the configuration from it and the
/// flags; see [`from_sources`].
pub fn load(cli: &Cli) -> Result<Config, ConfigErrors> {
    let text = match &cli.config {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            let error = ConfigError::new("config", format!("cannot read {}: {e}", path.display()));
            with_flag_errors(error.into(), cli)
        })?),
        None => None,
    };
    from_sources(text.as_deref(), cli)
}

/// The configuration a file's text describes, with no flags; for tests and tools.
pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
    from_sources(Some(text), &Cli::default())
}

/// The one merge step: defaults < file < environment < flags (clap has already put each flag
/// over its `PGWARDEN_*` variable). A relative `auth_file` in the file is taken relative to
/// the file named by `cli.config`; one given as a flag, relative to the working directory.
pub fn from_sources(file_text: Option<&str>, cli: &Cli) -> Result<Config, ConfigErrors> {
    let mut file = match file_text.map(FileConfig::parse) {
        Some(Ok(file)) => file,
        Some(Err(e)) => {
            return Err(with_flag_errors(
                syntax_error(file_text.unwrap_or(""), cli, &e),
                cli,
            ))
        }
        None => FileConfig::default(),
    };
    if let (Some(auth_file), Some(config)) = (&mut file.auth_file, &cli.config) {
        if auth_file.is_relative() {
            *auth_file = config.parent().unwrap_or(Path::new("")).join(&*auth_file);
        }
    }
    validate(file.merge(cli))
}

/// A file that cannot be read still leaves the flags to check: every problem is reported in
/// one go. Without the file, a missing route is a consequence, not a problem of its own.
fn with_flag_errors(mut errors: ConfigErrors, cli: &Cli) -> ConfigErrors {
    if let Err(flag_errors) = validate(FileConfig::default().merge(cli)) {
        let no_route = |e: &ConfigError| e.key == "upstream" && cli.upstream.is_none();
        errors
            .0
            .extend(flag_errors.0.into_iter().filter(|e| !no_route(e)));
    }
    errors
}

/// A file that is not valid TOML, has an unknown key or a value of the wrong type, reported
/// compiler-style as `FILE:LINE:COLUMN: message`.
fn syntax_error(text: &str, cli: &Cli, error: &toml::de::Error) -> ConfigErrors {
    let file = match &cli.config {
        Some(path) => path.display().to_string(),
        None => "<config>".to_owned(),
    };
    let start = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::new(format!("{file}:{line}:{column}"), error.message().trim()).into()
}

/// Checks the merged settings and builds the [`Config`], or lists everything wrong with them:
/// top-level settings first, then routes, then users.
fn validate(merged: FileConfig) -> Result<Config, ConfigErrors> {
    let mut check = Checker::default();
    let mut config = top_level(&mut check, &merged);
    let upstream = merged
        .upstream
        .as_deref()
        .and_then(|url| check.upstream(url));
    (config.databases, config.wildcard) = check.databases(&merged, config.pool_size);
    config.users = check.users(&merged, upstream.as_ref(), config.auth_type);
    if let Some(upstream) = upstream {
        config.wildcard = Some(upstream.route);
    }
    check.finish(config)
}

/// The top-level settings, with defaults for those not given; no routes or users yet.
fn top_level(check: &mut Checker, merged: &FileConfig) -> Config {
    /// A duration key: parsed from the merged text, or its default from `defaults`.
    macro_rules! duration {
        ($key:ident, $default:ident) => {
            check.duration(stringify!($key), &merged.$key, defaults::$default)
        };
    }
    let config = Config {
        listen: check.listen(merged.listen.as_deref().unwrap_or(defaults::LISTEN)),
        unix_socket_dir: merged.unix_socket_dir.clone(),
        auth_type: merged.auth_type.unwrap_or(defaults::AUTH_TYPE),
        users: HashMap::new(),
        databases: HashMap::new(),
        wildcard: None,
        pool_mode: merged.pool_mode.unwrap_or(defaults::POOL_MODE),
        pool_size: merged.pool_size.unwrap_or(defaults::POOL_SIZE),
        min_pool_size: merged.min_pool_size.unwrap_or(defaults::MIN_POOL_SIZE),
        max_client_conn: merged.max_client_conn.unwrap_or(defaults::MAX_CLIENT_CONN),
        max_client_conn_per_user: cap(merged.max_client_conn_per_user),
        max_client_conn_per_database: cap(merged.max_client_conn_per_database),
        max_client_conn_per_addr: cap(merged.max_client_conn_per_addr),
        max_client_conn_per_app: cap(merged.max_client_conn_per_app),
        client_addr_prefix_v4: (merged.client_addr_prefix_v4)
            .unwrap_or(defaults::CLIENT_ADDR_PREFIX_V4),
        client_addr_prefix_v6: (merged.client_addr_prefix_v6)
            .unwrap_or(defaults::CLIENT_ADDR_PREFIX_V6),
        client_identity: merged.client_identity.unwrap_or(defaults::CLIENT_IDENTITY),
        reserve_pool_size: (merged.reserve_pool_size).unwrap_or(defaults::RESERVE_POOL_SIZE),
        reserve_pool_timeout: duration!(reserve_pool_timeout, RESERVE_POOL_TIMEOUT),
        max_db_connections: cap(merged.max_db_connections),
        max_user_connections: cap(merged.max_user_connections),
        max_server_conn: cap(merged.max_server_conn),
        max_server_conn_per_client: cap(merged.max_server_conn_per_client),
        query_wait_notify: duration!(query_wait_notify, QUERY_WAIT_NOTIFY),
        client_idle_timeout: duration!(client_idle_timeout, CLIENT_IDLE_TIMEOUT),
        idle_transaction_timeout: duration!(idle_transaction_timeout, IDLE_TRANSACTION_TIMEOUT),
        transaction_timeout: duration!(transaction_timeout, TRANSACTION_TIMEOUT),
        query_timeout: duration!(query_timeout, QUERY_TIMEOUT),
        server_login_retry: duration!(server_login_retry, SERVER_LOGIN_RETRY),
        autodb_idle_timeout: duration!(autodb_idle_timeout, AUTODB_IDLE_TIMEOUT),
        server_allow_cleartext_password: (merged.server_allow_cleartext_password)
            .unwrap_or(defaults::SERVER_ALLOW_CLEARTEXT_PASSWORD),
        server_check_delay: duration!(server_check_delay, SERVER_CHECK_DELAY),
        server_check_query: (merged.server_check_query.clone())
            .unwrap_or_else(|| defaults::SERVER_CHECK_QUERY.to_owned()),
        cancel_wait_timeout: duration!(cancel_wait_timeout, CANCEL_WAIT_TIMEOUT),
        server_reset_query: (merged.server_reset_query.clone())
            .unwrap_or_else(|| defaults::SERVER_RESET_QUERY.to_owned()),
        server_idle_timeout: duration!(server_idle_timeout, SERVER_IDLE_TIMEOUT),
        server_lifetime: duration!(server_lifetime, SERVER_LIFETIME),
        server_connect_timeout: duration!(server_connect_timeout, SERVER_CONNECT_TIMEOUT),
        query_wait_timeout: duration!(query_wait_timeout, QUERY_WAIT_TIMEOUT),
        client_login_timeout: duration!(client_login_timeout, CLIENT_LOGIN_TIMEOUT),
        shutdown_timeout: duration!(shutdown_timeout, SHUTDOWN_TIMEOUT),
        max_packet_size: merged.max_packet_size.unwrap_or(defaults::MAX_PACKET_SIZE),
        max_prepared_statements: (merged.max_prepared_statements)
            .unwrap_or(defaults::MAX_PREPARED_STATEMENTS),
        workers: merged.workers.unwrap_or(defaults::WORKERS),
        log_level: check.log_level(merged.log_level.as_deref().unwrap_or(defaults::LOG_LEVEL)),
    };
    check.limits(&config);
    config
}

/// A cap that is off unless given (zero: unlimited).
fn cap(value: Option<usize>) -> usize {
    value.unwrap_or(defaults::UNLIMITED)
}

/// Collects problems while the checks go on; each check returns a usable value regardless.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn error(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(key, reason));
    }

    fn finish(self, config: Config) -> Result<Config, ConfigErrors> {
        match self.errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(self.errors)),
        }
    }

    /// The top-level ranges and relations, checked on the values in force.
    fn limits(&mut self, config: &Config) {
        if (config.unix_socket_dir.as_ref()).is_some_and(|dir| dir.as_os_str().is_empty()) {
            self.error("unix_socket_dir", "empty; leave it out for no Unix socket");
        }
        self.at_least("pool_size", config.pool_size, 1);
        self.min_pool_size("min_pool_size", config.min_pool_size, config.pool_size);
        self.at_least("max_client_conn", config.max_client_conn, 1);
        self.at_least("workers", config.workers, 1);
        for (key, value) in [
            ("server_connect_timeout", config.server_connect_timeout),
            ("cancel_wait_timeout", config.cancel_wait_timeout),
            // Zero would let a pool whose server pushes back retry in a tight loop.
            ("server_login_retry", config.server_login_retry),
        ] {
            if value.is_zero() {
                self.error(key, "must be more than 0");
            }
        }
        self.at_most("client_addr_prefix_v4", config.client_addr_prefix_v4, 32);
        self.at_most("client_addr_prefix_v6", config.client_addr_prefix_v6, 128);
        self.at_least(
            "max_packet_size",
            config.max_packet_size,
            MIN_MAX_PACKET_SIZE,
        );
    }

    fn at_least<T: PartialOrd + fmt::Display>(&mut self, key: &str, value: T, min: T) {
        if value < min {
            self.error(key, format!("must be at least {min}, not {value}"));
        }
    }

    fn at_most<T: PartialOrd + fmt::Display>(&mut self, key: &str, value: T, max: T) {
        if value > max {
            self.error(key, format!("must be at most {max}, not {value}"));
        }
    }

    fn min_pool_size(&mut self, key: &str, min: usize, pool_size: usize) {
        if min > pool_size {
            self.error(key, format!("{min} is more than pool_size ({pool_size})"));
        }
    }

    fn duration(&mut self, key: &str, text: &Option<String>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        duration::parse(text).unwrap_or_else(|e| {
            self.error(key, e.to_string());
            default
        })
    }

    fn listen(&mut self, text: &str) -> Vec<String> {
        let entries: Vec<String> = text.split(',').map(|e| e.trim().to_owned()).collect();
        for entry in &entries {
            if let Err(reason) = addr::check_listen(entry) {
                self.error("listen", reason);
            }
        }
        entries
    }

    fn upstream(&mut self, url: &str) -> Option<Upstream> {
        addr::parse_upstream(url)
            .map_err(|reason| self.error("upstream", reason))
            .ok()
    }

    fn log_level(&mut self, text: &str) -> String {
        let level = text.trim().to_ascii_lowercase();
        if LOG_LEVELS.contains(&level.as_str()) {
            return level;
        }
        if !text.contains(['=', ',']) {
            let reason = format!(
                "{text:?} is not one of {} (or directives like info,pgwarden=debug)",
                LOG_LEVELS.join(", ")
            );
            self.error("log_level", reason);
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(text) {
            self.error("log_level", format!("{text:?}: {e}"));
        }
        text.trim().to_owned()
    }

    /// The named routes and the wildcard route from `[databases]`; also checks that some
    /// route exists and that the file does not give two wildcards.
    fn databases(
        &mut self,
        merged: &FileConfig,
        pool_size: usize,
    ) -> (HashMap<String, Database>, Option<Database>) {
        let mut named = HashMap::new();
        let mut wildcard = None;
        for (name, entry) in &merged.databases {
            let database = self.database(name, entry, pool_size);
            if name == WILDCARD {
                wildcard = Some(database);
            } else {
                named.insert(name.clone(), database);
            }
        }
        match (&merged.upstream, &wildcard) {
            (Some(_), Some(_)) => self.error(
                "upstream",
                "the file also has [databases.\"*\"]; both route every database, keep one",
            ),
            (None, None) if named.is_empty() => self.error(
                "upstream",
                "no route to a server: pass --upstream postgres://HOST:PORT or add [databases]",
            ),
            _ => {}
        }
        (named, wildcard)
    }

    fn database(&mut self, name: &str, entry: &FileDatabase, pool_size: usize) -> Database {
        let key = |field: &str| table_key("databases", name, field);
        if name.is_empty() {
            self.error(key(""), "a database name must not be empty");
        }
        let host = entry.host.clone();
        let host = host.unwrap_or_else(|| defaults::DATABASE_HOST.to_owned());
        if host.trim().is_empty() {
            self.error(key("host"), "empty; leave it out for 127.0.0.1");
        }
        let port = entry.port.unwrap_or(defaults::DATABASE_PORT);
        if port == 0 {
            self.error(key("port"), "must be a port from 1 to 65535, not 0");
        }
        if name == WILDCARD && entry.dbname.is_some() {
            let reason = "the \"*\" route keeps the name each client asked for; map names in \
                          their own [databases.NAME] entries";
            self.error(key("dbname"), reason);
        }
        for (field, value) in [("dbname", &entry.dbname), ("user", &entry.user)] {
            if value.as_deref().is_some_and(str::is_empty) {
                self.error(key(field), "empty; leave it out to use the client's");
            }
        }
        if let Some(size) = entry.pool_size {
            self.at_least(&key("pool_size"), size, 1);
        }
        let min = entry.min_pool_size.unwrap_or(0);
        self.min_pool_size(
            &key("min_pool_size"),
            min,
            entry.pool_size.unwrap_or(pool_size),
        );
        Database {
            host,
            port,
            dbname: entry.dbname.clone(),
            user: entry.user.clone(),
            password: entry.password.clone(),
            pool_size: entry.pool_size,
            min_pool_size: entry.min_pool_size,
            pool_mode: entry.pool_mode,
            reserve_pool_size: entry.reserve_pool_size,
            max_db_connections: entry.max_db_connections,
            max_client_conn_per_database: entry.max_client_conn_per_database,
        }
    }
}

/// `table.name.field` with `name` quoted as TOML would need it (`databases."*".port`);
/// `field` may be empty (`databases.app`).
fn table_key(table: &str, name: &str, field: &str) -> String {
    let bare = !name.is_empty()
        && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let name = if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    };
    match field {
        "" => format!("{table}.{name}"),
        _ => format!("{table}.{name}.{field}"),
    }
}
