//! Tests for building and validating the configuration.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::auth::secret::Secret;
use crate::config::{AuthType, ClientIdentity, PoolMode};

const ROUTE: &str = "[databases.\"*\"]\n";

fn keys(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|e| e.key.as_str()).collect()
}

fn errors_of(text: &str) -> ConfigErrors {
    from_toml(text).expect_err("configuration should be invalid")
}

/// Flags as a user would type them (the environment is read too, and flags beat it).
fn parse_flags(args: &[&str]) -> Cli {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("pgwarden").chain(args.iter().copied())).unwrap()
}

fn upstream_cli(url: &str) -> Cli {
    Cli {
        upstream: Some(url.to_owned()),
        ..Cli::default()
    }
}

#[test]
fn defaults_fill_everything_not_given() {
    let config = from_toml(ROUTE).unwrap();
    assert_eq!(config.listen, vec!["127.0.0.1:6432".to_owned()]);
    assert_eq!(config.unix_socket_dir, None);
    assert_eq!(config.auth_type, AuthType::ScramSha256);
    assert_eq!(config.pool_mode, PoolMode::Transaction);
    assert_eq!(config.pool_size, 20);
    assert_eq!(config.min_pool_size, 0);
    assert_eq!(config.max_client_conn, 1000);
    assert_eq!(config.server_reset_query, "DISCARD ALL");
    assert_eq!(config.server_idle_timeout, Duration::from_secs(600));
    assert_eq!(config.server_lifetime, Duration::from_secs(3600));
    assert_eq!(config.server_connect_timeout, Duration::from_secs(15));
    assert_eq!(config.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(config.client_login_timeout, Duration::from_secs(60));
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.max_packet_size, 1_073_741_824);
    assert_eq!(config.log_level, "info");
    let wildcard = config.wildcard.unwrap();
    assert_eq!((wildcard.host.as_str(), wildcard.port), ("127.0.0.1", 5432));
    assert!(config.databases.is_empty() && config.users.is_empty());
}

#[test]
fn every_problem_is_reported_together_by_key() {
    let errors =
        errors_of("pool_size = 0\nquery_wait_timeout = \"soon\"\n[databases.app]\nport = 0\n");
    assert_eq!(
        keys(&errors),
        ["query_wait_timeout", "pool_size", "databases.app.port"]
    );
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    assert!(
        shown.contains("query_wait_timeout: invalid duration \"soon\""),
        "{shown}"
    );
}

#[test]
fn limits_and_relations() {
    let errors = errors_of(&format!(
        "pool_size = 5\nmin_pool_size = 6\nmax_client_conn = 0\nmax_packet_size = 100\n\
         server_connect_timeout = 0\n{ROUTE}\
         [databases.app]\nhost = \"\"\npool_size = 2\nmin_pool_size = 3\ndbname = \"\"\n\
         [users.bob]\npassword = \"x\"\npool_size = 0\n"
    ));
    let expected = [
        "min_pool_size",
        "max_client_conn",
        "server_connect_timeout",
        "max_packet_size",
        "databases.app.host",
        "databases.app.dbname",
        "databases.app.min_pool_size",
        "users.bob.pool_size",
    ];
    assert_eq!(keys(&errors), expected);
}

#[test]
fn durations_accept_integers_and_units_in_the_file() {
    let config = from_toml(&format!(
        "query_wait_timeout = 5\nserver_lifetime = \"2h\"\nclient_login_timeout = \"500ms\"\n\
         server_idle_timeout = 0\n{ROUTE}"
    ))
    .unwrap();
    assert_eq!(config.query_wait_timeout, Duration::from_secs(5));
    assert_eq!(config.server_lifetime, Duration::from_secs(7200));
    assert_eq!(config.client_login_timeout, Duration::from_millis(500));
    assert_eq!(config.server_idle_timeout, Duration::ZERO);
    assert_eq!(
        keys(&errors_of(&format!("shutdown_timeout = -1\n{ROUTE}"))),
        ["shutdown_timeout"]
    );
}

#[test]
fn flags_override_the_file() {
    let file = format!("pool_size = 3\nmax_client_conn = 50\nquery_wait_timeout = 9\n{ROUTE}");
    let cli = Cli::default()
        .with("pool_size", "7")
        .with("query_wait_timeout", "1m")
        .with("pool_mode", "transaction");
    let config = from_sources(Some(&file), &cli).unwrap();
    assert_eq!(config.pool_size, 7);
    assert_eq!(config.max_client_conn, 50);
    assert_eq!(config.query_wait_timeout, Duration::from_secs(60));
    assert_eq!(config.pool_mode, PoolMode::Transaction);
}

#[test]
fn bad_flag_values_are_reported_with_the_file_problems_by_key() {
    let cli = parse_flags(&["--shutdown-timeout=later", "--listen=nowhere"]);
    let errors = from_sources(Some("max_client_conn = 0\n"), &cli).unwrap_err();
    assert_eq!(
        keys(&errors),
        ["shutdown_timeout", "listen", "max_client_conn", "upstream"]
    );
}

#[test]
fn quick_start_upstream_with_credentials_makes_a_user() {
    let config = from_sources(None, &upstream_cli("postgres://app:s%3Acret@db:6543")).unwrap();
    let wildcard = config.wildcard.unwrap();
    assert_eq!((wildcard.host.as_str(), wildcard.port), ("db", 6543));
    assert_eq!((wildcard.user, wildcard.password), (None, None));
    let app = &config.users["app"];
    assert_eq!(app.secret, Some(Secret::Plain("s:cret".to_owned())));
}

#[test]
fn upstream_without_credentials_is_only_a_route() {
    let config = from_sources(None, &upstream_cli("postgresql://db")).unwrap();
    assert_eq!(config.wildcard.map(|w| w.port), Some(5432));
    assert!(config.users.is_empty());
}

#[test]
fn an_upstream_user_without_a_password_needs_one_unless_trust() {
    let errors = from_sources(None, &upstream_cli("postgres://app@db")).unwrap_err();
    assert_eq!(keys(&errors), ["users.app.password"]);
    assert!(errors.to_string().contains("upstream URL"), "{errors}");
    let cli = upstream_cli("postgres://app@db").with("auth_type", "trust");
    assert_eq!(from_sources(None, &cli).unwrap().users["app"].secret, None);
}

#[test]
fn upstream_flag_replaces_the_file_wildcard_and_its_password() {
    let file =
        "[databases.\"*\"]\nhost = \"old\"\n[users.app]\npassword = \"old\"\npool_size = 3\n";
    let config = from_sources(Some(file), &upstream_cli("postgres://app:new@db")).unwrap();
    assert_eq!(config.wildcard.unwrap().host, "db");
    let app = &config.users["app"];
    assert_eq!(app.secret, Some(Secret::Plain("new".to_owned())));
    assert_eq!(app.overrides.pool_size, Some(3));
}

#[test]
fn upstream_errors_name_the_key() {
    let errors = from_sources(None, &upstream_cli("postgres://db/app")).unwrap_err();
    assert_eq!(keys(&errors), ["upstream"]);
    assert!(errors.to_string().contains("use [databases] to map names"));
    let errors = errors_of("upstream = \"postgres://db\"\n[databases.\"*\"]\n");
    assert_eq!(keys(&errors), ["upstream"]);
}

#[test]
fn no_route_says_how_to_add_one() {
    let errors = from_sources(None, &Cli::default()).unwrap_err();
    assert_eq!(keys(&errors), ["upstream"]);
    assert!(errors.to_string().contains("--upstream"), "{errors}");
}

#[test]
fn listen_takes_a_list() {
    let config = from_toml(&format!("listen = \"127.0.0.1:1, [::1]:2\"\n{ROUTE}")).unwrap();
    assert_eq!(config.listen, ["127.0.0.1:1", "[::1]:2"]);
    let errors = errors_of(&format!("listen = \"127.0.0.1:1,::1:2,\"\n{ROUTE}"));
    assert_eq!(keys(&errors), ["listen", "listen"]);
}

#[test]
fn database_entries() {
    let config = from_toml(
        "[databases.app]\nhost = \"10.0.0.5\"\nport = 5433\ndbname = \"app_prod\"\n\
         user = \"svc\"\npassword = \"pw\"\npool_size = 4\nmin_pool_size = 1\n\
         pool_mode = \"transaction\"\n",
    )
    .unwrap();
    assert_eq!(config.wildcard, None);
    let app = &config.databases["app"];
    assert_eq!((app.host.as_str(), app.port), ("10.0.0.5", 5433));
    assert_eq!(app.dbname.as_deref(), Some("app_prod"));
    assert_eq!(
        (app.user.as_deref(), app.password.as_deref()),
        (Some("svc"), Some("pw"))
    );
    let set = &app.overrides;
    assert_eq!((set.pool_size, set.min_pool_size), (Some(4), Some(1)));
    assert_eq!(set.pool_mode, Some(PoolMode::Transaction));
    let errors = errors_of("[databases.\"*\"]\nport = 0\ndbname = \"x\"\n");
    assert_eq!(
        keys(&errors),
        ["databases.\"*\".port", "databases.\"*\".dbname"]
    );
}

#[test]
fn users_need_a_password_unless_trust() {
    let errors = errors_of(&format!("{ROUTE}[users.bob]\npool_size = 2\n"));
    assert_eq!(keys(&errors), ["users.bob.password"]);
    let config = from_toml(&format!("auth_type = \"trust\"\n{ROUTE}[users.bob]\n")).unwrap();
    assert_eq!(config.users["bob"].secret, None);
    let config = from_toml(&format!("{ROUTE}[users.bob]\npassword = \"pw\"\n")).unwrap();
    assert_eq!(config.users["bob"].secret, Secret::parse("pw").ok());
}

#[test]
fn log_level() {
    let level = |text: &str| from_toml(&format!("log_level = {text:?}\n{ROUTE}"));
    assert_eq!(level("DEBUG").unwrap().log_level, "debug");
    assert_eq!(
        level("info,pgwarden=trace").unwrap().log_level,
        "info,pgwarden=trace"
    );
    assert_eq!(keys(&level("verbose").unwrap_err()), ["log_level"]);
    assert_eq!(keys(&level("pgwarden=loud").unwrap_err()), ["log_level"]);
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_file_line_and_key() {
    let cli = Cli {
        config: Some(PathBuf::from("conf/pgwarden.toml")),
        ..Cli::default()
    };
    let errors = from_sources(Some("pool_size = 3\nbogus = 1\n[databases.app]\n"), &cli);
    let errors = errors.unwrap_err();
    assert_eq!(keys(&errors), ["bogus"]);
    assert_eq!(errors.0[0].reason, "unknown key");
    let errors =
        errors_of("[databases.app]\n  prot = 5432\n[users.u]\npassword = \"x\"\nworkers = 2\n");
    assert_eq!(keys(&errors), ["databases.app.prot", "users.u.workers"]);
    assert!(errors.0[1].reason.contains("top level"), "{errors}");
    let errors = from_sources(Some("pool_size = \n"), &cli).unwrap_err();
    assert_eq!(keys(&errors), ["conf/pgwarden.toml:1:13"]);
    assert_eq!(keys(&errors_of("[databases.app]\nport = \"x\"\n")).len(), 1);
}

#[test]
fn an_unreadable_config_or_auth_file_is_reported() {
    let cli = Cli {
        config: Some(PathBuf::from("/nonexistent/pgwarden.toml")),
        ..Cli::default()
    };
    let errors = load(&cli).unwrap_err();
    assert_eq!(keys(&errors), ["config"]);
    assert!(errors.to_string().contains("/nonexistent/pgwarden.toml"));
    let errors = errors_of(&format!("auth_file = \"/nonexistent/users.txt\"\n{ROUTE}"));
    assert_eq!(keys(&errors), ["auth_file"]);
}

#[test]
fn auth_file_is_relative_to_the_config_file_and_wins_over_users() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pgwarden.toml");
    let file = format!(
        "auth_file = \"users.txt\"\n{ROUTE}[users.alice]\npassword = \"old\"\npool_size = 2\n"
    );
    std::fs::write(&config_path, file).unwrap();
    std::fs::write(
        dir.path().join("users.txt"),
        "\"alice\" \"new\"\n\"bob\" \"pw\"\n",
    )
    .unwrap();
    let cli = Cli {
        config: Some(config_path),
        ..Cli::default()
    };
    let config = load(&cli).unwrap();
    assert_eq!(config.users["alice"].secret, Secret::parse("new").ok());
    assert_eq!(config.users["alice"].overrides.pool_size, Some(2));
    assert_eq!(config.users["bob"].secret, Secret::parse("pw").ok());
}

#[test]
fn every_declared_key_is_accepted_in_the_file_and_as_a_flag_at_its_default() {
    let mut file = String::new();
    let mut args = Vec::new();
    for setting in crate::config::SETTINGS {
        let default = (setting.default)();
        if default == "none" {
            continue;
        }
        file.push_str(&format!("{} = {:?}\n", setting.key, default));
        args.push(format!("--{}={default}", setting.flag()));
    }
    let from_file = from_toml(&format!("{file}{ROUTE}")).unwrap();
    let defaults = from_toml(ROUTE).unwrap();
    assert_eq!(from_file, defaults);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let from_flags = from_sources(Some(ROUTE), &parse_flags(&args)).unwrap();
    assert_eq!(from_flags, defaults);
}

#[test]
fn the_example_files_are_valid() {
    let example = from_toml(include_str!("../../../config/pgwarden.toml")).unwrap();
    let wildcard = example.wildcard.unwrap();
    assert_eq!((wildcard.host.as_str(), wildcard.port), ("127.0.0.1", 5432));
    assert_eq!(example.listen, ["127.0.0.1:6432"]);
    assert!(example.users.contains_key("postgres"));
    let sidecar = from_toml(include_str!("../../../config/sidecar.toml")).unwrap();
    assert_eq!(sidecar.listen, ["127.0.0.1:6432"]);
    assert!(sidecar.wildcard.is_some());
}

#[test]
fn config_errors_display_one_per_line() {
    let errors = ConfigErrors(vec![
        ConfigError::new("pool_size", "must be at least 1, not 0"),
        ConfigError::new("listen", "bad"),
    ]);
    assert_eq!(
        errors.to_string(),
        "pool_size: must be at least 1, not 0\nlisten: bad"
    );
}

#[test]
fn a_broken_file_does_not_hide_bad_flags() {
    let cli = Cli::default()
        .with("pool_size", "0")
        .with("query_wait_timeout", "banana");
    let errors = from_sources(Some("bogus_key = \n"), &cli)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("<config>:1:"), "{errors}");
    assert!(errors.contains("pool_size"), "{errors}");
    assert!(errors.contains("query_wait_timeout"), "{errors}");
    let no_route = errors.lines().any(|line| line.starts_with("upstream:"));
    assert!(
        !no_route,
        "no route is a consequence, not a problem: {errors}"
    );
}

#[test]
fn caps_default_to_unlimited_and_can_be_set_globally_and_per_entry() {
    let config = from_toml(ROUTE).unwrap();
    assert_eq!(
        (
            config.max_client_conn_per_user,
            config.max_client_conn_per_app
        ),
        (0, 0)
    );
    assert_eq!((config.max_db_connections, config.max_server_conn), (0, 0));
    assert_eq!(config.client_identity, ClientIdentity::Application);
    assert_eq!(
        (config.client_addr_prefix_v4, config.client_addr_prefix_v6),
        (32, 128)
    );
    assert_eq!(config.server_check_query, "SELECT 1");
    assert_eq!(config.cancel_wait_timeout, Duration::from_secs(5));

    let config = from_toml(
        "max_client_conn_per_addr = 3\nclient_addr_prefix_v4 = 24\nclient_identity = \"user\"\n\
         max_db_connections = 12\nreserve_pool_size = 2\nreserve_pool_timeout = \"250ms\"\n\
         query_wait_notify = 1\nserver_login_retry = \"100ms\"\n\
         [databases.app]\nmax_db_connections = 4\nreserve_pool_size = 1\n\
         max_client_conn_per_database = 9\n\
         [users.bob]\npassword = \"x\"\nmax_user_connections = 3\nmax_client_conn_per_user = 7\n",
    )
    .unwrap();
    assert_eq!(config.max_client_conn_per_addr, 3);
    assert_eq!(config.client_addr_prefix_v4, 24);
    assert_eq!(config.client_identity, ClientIdentity::User);
    assert_eq!(config.max_db_connections, 12);
    assert_eq!(config.reserve_pool_timeout, Duration::from_millis(250));
    assert_eq!(config.query_wait_notify, Duration::from_secs(1));
    assert_eq!(config.server_login_retry, Duration::from_millis(100));
    let app = &config.databases["app"].overrides;
    assert_eq!(
        (
            app.max_db_connections,
            app.reserve_pool_size,
            app.max_client_conn_per_database
        ),
        (Some(4), Some(1), Some(9))
    );
    let bob = &config.users["bob"].overrides;
    assert_eq!(
        (bob.max_user_connections, bob.max_client_conn_per_user),
        (Some(3), Some(7))
    );
}

#[test]
fn cap_settings_out_of_range_are_reported_by_key() {
    let errors = errors_of(&format!(
        "client_addr_prefix_v4 = 33\nclient_addr_prefix_v6 = 129\ncancel_wait_timeout = 0\n\
         query_wait_notify = \"soon\"\n{ROUTE}"
    ));
    assert_eq!(
        keys(&errors),
        [
            "query_wait_notify",
            "cancel_wait_timeout",
            "client_addr_prefix_v4",
            "client_addr_prefix_v6"
        ]
    );
    let bad_identity = errors_of(&format!("client_identity = \"host\"\n{ROUTE}"));
    assert_eq!(keys(&bad_identity), ["client_identity"]);
    assert!(
        bad_identity
            .to_string()
            .contains("application, user, address"),
        "{bad_identity}"
    );
}

#[test]
fn the_example_configurations_are_valid_and_show_the_defaults() {
    for (name, text) in [
        (
            "config/pgwarden.toml",
            include_str!("../../../config/pgwarden.toml"),
        ),
        (
            "config/sidecar.toml",
            include_str!("../../../config/sidecar.toml"),
        ),
    ] {
        if let Err(errors) = from_toml(text) {
            panic!("{name}: {errors}");
        }
    }
    let example = from_toml(include_str!("../../../config/pgwarden.toml")).unwrap();
    let defaults = from_toml(ROUTE).unwrap();
    assert_eq!(
        example.max_prepared_statements,
        defaults.max_prepared_statements
    );
    assert_eq!(example.query_timeout, defaults.query_timeout);
    assert_eq!(example.client_idle_timeout, defaults.client_idle_timeout);
}

#[test]
fn pending_login_budgets_default_to_max_client_conn_then_the_total() {
    let pending = |extra: &str| {
        let config = from_toml(&format!("{extra}\n{ROUTE}")).unwrap();
        (
            config.max_pending_logins,
            config.max_pending_logins_per_addr,
        )
    };
    assert_eq!(pending(""), (1000, 1000));
    assert_eq!(pending("max_client_conn = 50"), (50, 50));
    assert_eq!(
        pending("max_client_conn = 50\nmax_pending_logins = 70"),
        (70, 70)
    );
    assert_eq!(pending("max_pending_logins_per_addr = 7"), (1000, 7));
    assert_eq!(
        pending("max_pending_logins = 9\nmax_pending_logins_per_addr = 0"),
        (9, 9)
    );
}
