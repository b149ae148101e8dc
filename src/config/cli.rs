//! Command-line flags: one per declared setting (the key with dashes), each also read from
//! `PGWARDEN_<KEY>`; a flag beats its variable, which beats the file (see `config`). The
//! flags are made from [`SETTINGS`] at start, so a new setting needs no code here.
//!
//! Values stay text here; they are read and checked by `config::validate`, so that every
//! problem is reported together, by key. Every flag is global: `pgwarden check --pool-size 5`
//! audits what `pgwarden --pool-size 5` would run with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand};

use super::settings::UPSTREAM_DOC;
use super::{Setting, SETTINGS};

/// Settings given on the command line or in the environment.
#[derive(Parser, Debug, Default, Clone)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Read settings from this TOML file (see config/pgwarden.toml); flags and PGWARDEN_*
    /// variables override it.
    #[arg(long, env = "PGWARDEN_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    #[arg(
        long,
        env = "PGWARDEN_UPSTREAM",
        value_name = "URL",
        hide_env_values = true
    )]
    #[arg(help = UPSTREAM_DOC, global = true)]
    pub upstream: Option<String>,

    #[command(flatten)]
    pub settings: Flags,

    #[command(subcommand)]
    pub command: Option<Run>,
}

/// What to do instead of running the proxy.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Validate the configuration without starting, then audit it against the live database
    /// (backend connections pgwarden may open against max_connections, CONNECTION LIMITs,
    /// timeouts, file descriptors, pool modes). Exits 0 when clean, 1 with warnings, 2 with
    /// errors.
    Check {
        /// Do not connect to any server: audit the configuration alone.
        #[arg(long)]
        offline: bool,
    },
}

impl Cli {
    /// These flags with `key` set to `value`, as if given on the command line.
    pub fn with(mut self, key: &str, value: &str) -> Cli {
        self.settings.0.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// The declared settings given as flags or variables, by key, as text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags(pub BTreeMap<String, String>);

fn flag(setting: &Setting) -> Arg {
    let help = format!("{} Default: {}.", setting.help(), (setting.default)());
    let arg = Arg::new(setting.key)
        .long(setting.flag())
        .env(setting.env())
        .value_name(setting.value_name)
        .help(help)
        .help_heading(setting.heading)
        .global(true);
    let choices = (setting.choices)();
    match choices.is_empty() {
        true => arg,
        false => arg
            .value_parser(PossibleValuesParser::new(choices))
            .ignore_case(true),
    }
}

impl Args for Flags {
    fn augment_args(command: Command) -> Command {
        command.args(SETTINGS.iter().map(flag))
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for Flags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                self.0.insert(setting.key.to_owned(), value.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
        // The struct's doc comment is for rustdoc; --help shows the crate description.
        assert!(Cli::command().get_long_about().is_none());
    }

    #[test]
    fn every_flag_is_its_key_with_dashes_and_has_a_pgwarden_variable() {
        let command = Cli::command();
        let mut seen = 0;
        for arg in command.get_arguments().filter(|a| a.get_long().is_some()) {
            let key = arg.get_id().as_str();
            if key == "help" || key == "version" {
                continue;
            }
            seen += 1;
            assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(
                env,
                Some(format!("PGWARDEN_{}", key.to_uppercase()).as_str())
            );
        }
        assert_eq!(
            seen,
            SETTINGS.len() + 2,
            "every setting, --config and --upstream"
        );
    }

    #[test]
    fn help_states_each_default() {
        let command = Cli::command();
        for setting in SETTINGS {
            let arg = command.get_arguments().find(|a| a.get_id() == setting.key);
            let help = arg.and_then(|a| a.get_help()).map(|h| h.to_string());
            let help = help.unwrap_or_else(|| panic!("no help for {}", setting.key));
            let default = format!("Default: {}.", (setting.default)());
            assert!(help.ends_with(&default), "{}: {help}", setting.key);
        }
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("--pool-size <N>"), "{help}");
        assert!(help.contains("Default: 20."), "{help}");
        assert!(help.contains("Default: 2m."), "{help}");
    }

    #[test]
    fn flags_are_collected_by_key() {
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
        let get = |key: &str| cli.settings.0.get(key).map(String::as_str);
        assert_eq!(get("pool_size"), Some("7"));
        assert_eq!(get("pool_mode"), Some("transaction"));
        assert_eq!(get("auth_type"), Some("md5"));
        assert_eq!(get("listen"), Some("127.0.0.1:6432,[::1]:6432"));
        assert_eq!(get("query_wait_timeout"), Some("500ms"));
        assert_eq!(cli.config, Some(PathBuf::from("pgwarden.toml")));
        assert_eq!(get("max_client_conn"), None);
    }

    #[test]
    fn bad_choices_and_unknown_flags_are_refused() {
        assert!(Cli::try_parse_from(["pgwarden", "--pool-mode=sometimes"]).is_err());
        assert!(Cli::try_parse_from(["pgwarden", "--pool_size=3"]).is_err());
        assert!(Cli::try_parse_from(["pgwarden", "--bogus=3"]).is_err());
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
        let get = |cli: Cli| cli.settings.0.get("shutdown_timeout").cloned();
        assert_eq!(get(from_env.unwrap()).as_deref(), Some("45s"));
        assert_eq!(get(from_flag.unwrap()).as_deref(), Some("5s"));
    }
}
