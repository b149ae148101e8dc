//! The TOML file model and the one step that lays flags over the file
//! ([`FileConfig::merge`]). Top-level settings and those of `[databases.NAME]` and
//! `[users.NAME]` are kept as text by key, checked against the declarations in
//! `config::settings` by `validate`, so that every problem is reported at once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cli::Cli;
use super::value::Scalar;

/// Where a `[databases.NAME]` entry leads when it names no host or port.
pub const DATABASE_HOST: &str = "127.0.0.1";
pub const DATABASE_PORT: u16 = 5432;

/// The name of the `[databases]` entry that catches every database name not listed.
pub const WILDCARD: &str = "*";

/// The whole file, as written.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
pub struct FileConfig {
    pub upstream: Option<String>,
    #[serde(default)]
    pub databases: BTreeMap<String, FileDatabase>,
    #[serde(default)]
    pub users: BTreeMap<String, FileUser>,
    /// Every other top-level key: declared settings, or unknown keys `validate` reports.
    #[serde(flatten)]
    pub settings: BTreeMap<String, Scalar>,
}

/// One `[databases.NAME]` entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct FileDatabase {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Per-pool settings (`pool_size`, …), and unknown keys `validate` reports.
    #[serde(flatten)]
    pub settings: BTreeMap<String, Scalar>,
}

/// One `[users.NAME]` entry.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct FileUser {
    /// A plain password, an `md5…` hash or a `SCRAM-SHA-256$…` verifier.
    pub password: Option<String>,
    /// Per-pool settings (`pool_size`, …), and unknown keys `validate` reports.
    #[serde(flatten)]
    pub settings: BTreeMap<String, Scalar>,
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
        if let Some(upstream) = &cli.upstream {
            self.databases.remove(WILDCARD);
            self.upstream = Some(upstream.clone());
        }
        for (key, value) in &cli.settings.0 {
            self.settings
                .insert(key.clone(), Scalar::Text(value.clone()));
        }
        self
    }

    /// The text of a top-level setting, if given as one value.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.settings.get(key) {
            Some(Scalar::Text(text)) => Some(text),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_as_text_by_key() {
        let file = FileConfig::parse(
            "query_wait_timeout = 5\nserver_lifetime = \"1h\"\nworkers = [1]\n\
             [databases.app]\nport = 6000\npool_size = 3\n",
        )
        .unwrap();
        assert_eq!(file.text("query_wait_timeout"), Some("5"));
        assert_eq!(file.text("server_lifetime"), Some("1h"));
        assert_eq!(file.settings.get("workers"), Some(&Scalar::NotScalar));
        assert_eq!(file.text("shutdown_timeout"), None);
        let app = &file.databases["app"];
        assert_eq!(app.port, Some(6000));
        assert_eq!(
            app.settings.get("pool_size"),
            Some(&Scalar::Text("3".into()))
        );
    }

    #[test]
    fn flags_replace_file_values_and_the_file_wildcard() {
        let file = FileConfig::parse(
            "pool_size = 3\nmax_client_conn = 50\n[databases.\"*\"]\n[databases.app]\n",
        )
        .unwrap();
        let cli = Cli {
            upstream: Some("postgres://db:5432".into()),
            ..Cli::default()
        }
        .with("pool_size", "7");
        let merged = file.merge(&cli);
        assert_eq!(merged.text("pool_size"), Some("7"));
        assert_eq!(merged.text("max_client_conn"), Some("50"));
        assert_eq!(merged.upstream.as_deref(), Some("postgres://db:5432"));
        assert!(!merged.databases.contains_key(WILDCARD));
        assert!(merged.databases.contains_key("app"));
    }
}
