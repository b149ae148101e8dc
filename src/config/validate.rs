//! Builds the validated [`Config`] from defaults, the file and the flags, reporting every
//! problem at once, each under the TOML key it belongs to (`databases.app.port: …`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::cli::Cli;
use super::value::Scalar;
use crate::config::file::{FileConfig, FileDatabase, DATABASE_HOST, DATABASE_PORT, WILDCARD};
use crate::config::settings;
use crate::config::{Config, Database, Overrides, Scope};

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
    if let (Some(Scalar::Text(auth_file)), Some(config)) =
        (file.settings.get_mut("auth_file"), &cli.config)
    {
        if Path::new(auth_file.as_str()).is_relative() {
            let dir = config.parent().unwrap_or(Path::new(""));
            *auth_file = dir.join(&*auth_file).display().to_string();
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
/// `config` with the top-level setting `key` at `value` (as the file would give it),
/// checked as at start (ranges, relations, TLS files): the console's SET.
pub fn with_setting(config: &Config, key: &str, value: &str) -> Result<Config, ConfigErrors> {
    let mut check = Checker::default();
    let mut new = config.clone();
    match new.set_value(key, value) {
        None => check.error(key, "unknown key"),
        Some(Err(reason)) => check.error(key, reason),
        Some(Ok(())) => {
            check.limits(&mut new);
            check.tls(&new);
        }
    }
    check.finish(new)
}

fn validate(merged: FileConfig) -> Result<Config, ConfigErrors> {
    let mut check = Checker::default();
    for key in merged.settings.keys() {
        if settings::find(key).is_none() {
            check.error(key.as_str(), "unknown key");
        }
    }
    let mut config = Config::read(&merged.settings, &mut |key, reason| {
        check.error(key, reason)
    });
    check.limits(&mut config);
    check.tls(&config);
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

/// Collects problems while the checks go on; each check returns a usable value regardless.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    pub(super) fn error(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(key, reason));
    }

    /// The TLS files the modes need, read and parsed now, so a bad one stops the start
    /// rather than the first TLS client.
    fn tls(&mut self, config: &Config) {
        if let Err(errors) = config.tls_settings().load() {
            for error in errors {
                let key = error.key();
                self.error(
                    key,
                    error.to_string().trim_start_matches(&format!("{key}: ")),
                );
            }
        }
    }

    fn finish(self, config: Config) -> Result<Config, ConfigErrors> {
        match self.errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(self.errors)),
        }
    }

    /// The top-level ranges and relations, checked on the values in force; `listen` and
    /// `log_level` are also checked for form (and the level normalised).
    fn limits(&mut self, config: &mut Config) {
        self.listen(&config.listen);
        config.log_level = self.log_level(&config.log_level);
        // As many logins may be pending as clients may be logged in, from any one source
        // too, unless set: every burst of logins admitted before these budgets existed still
        // fits, so only connections that would have been refused can be displaced.
        if config.max_pending_logins == 0 {
            config.max_pending_logins = config.max_client_conn.max(1);
        }
        if config.max_pending_logins_per_addr == 0 {
            config.max_pending_logins_per_addr = config.max_pending_logins;
        }
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
        if let Some(entry) = &config.metrics_listen {
            if let Err(reason) = addr::check_listen(entry) {
                self.error("metrics_listen", reason);
            }
        }
        self.at_most("alert_cap_near_percent", config.alert_cap_near_percent, 100);
        self.at_most("alert_pinned_percent", config.alert_pinned_percent, 100);
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

    fn listen(&mut self, entries: &[String]) {
        if entries.is_empty() {
            self.error("listen", "no address given".to_owned());
        }
        for entry in entries {
            if let Err(reason) = addr::check_listen(entry) {
                self.error("listen", reason);
            }
        }
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
        let host = host.unwrap_or_else(|| DATABASE_HOST.to_owned());
        if host.trim().is_empty() {
            self.error(key("host"), "empty; leave it out for 127.0.0.1");
        }
        let port = entry.port.unwrap_or(DATABASE_PORT);
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
        let overrides = self.overrides(&entry.settings, Scope::Database, &key);
        if let Some(size) = overrides.pool_size {
            self.at_least(&key("pool_size"), size, 1);
        }
        let min = overrides.min_pool_size.unwrap_or(0);
        self.min_pool_size(
            &key("min_pool_size"),
            min,
            overrides.pool_size.unwrap_or(pool_size),
        );
        Database {
            host,
            port,
            dbname: entry.dbname.clone(),
            user: entry.user.clone(),
            password: entry.password.clone(),
            overrides,
        }
    }

    /// The per-pool settings of one `[databases.NAME]` or `[users.NAME]` entry.
    fn overrides(
        &mut self,
        entries: &std::collections::BTreeMap<String, Scalar>,
        table: Scope,
        key: &dyn Fn(&str) -> String,
    ) -> Overrides {
        Overrides::read(entries, table, key, &mut |key, reason| {
            self.error(key, reason)
        })
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
