use std::collections::BTreeMap;

use super::capacity::{self, ServerFacts};
use super::*;
use crate::config::from_toml;

fn config(text: &str) -> Config {
    from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

fn facts(max_connections: usize, roles: &[(&str, i64)], databases: &[(&str, i64)]) -> ServerFacts {
    let map = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
        pairs.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    };
    ServerFacts {
        max_connections,
        superuser_reserved_connections: 3,
        reserved_connections: 0,
        role_limits: map(roles),
        database_limits: map(databases),
        in_use: 1,
    }
}

const TWO_USERS: &str = "[databases.app]\n[databases.reports]\n\
    [users.a]\npassword = \"x\"\n[users.b]\npassword = \"y\"\npool_size = 5\n";

#[test]
fn pools_are_every_route_with_every_user_at_their_effective_limits() {
    let config = config(TWO_USERS);
    let pools = capacity::pools(&config);
    let names: Vec<(String, String, usize)> = pools
        .iter()
        .map(|p| (p.database.clone(), p.user.clone(), p.pool_size))
        .collect();
    let expected = [
        ("app", "a", 20),
        ("app", "b", 5),
        ("reports", "a", 20),
        ("reports", "b", 5),
    ];
    let expected: Vec<(String, String, usize)> = expected
        .iter()
        .map(|(d, u, n)| (d.to_string(), u.to_string(), *n))
        .collect();
    assert_eq!(names, expected);
    let refs: Vec<_> = pools.iter().collect();
    assert_eq!(capacity::most_together(&config, &refs, None), Some(50));
}

#[test]
fn cross_pool_caps_bound_the_total() {
    let capped = config(&format!("max_db_connections = 10\n{TWO_USERS}"));
    let pools = capacity::pools(&capped);
    let refs: Vec<_> = pools.iter().collect();
    assert_eq!(capacity::most_together(&capped, &refs, None), Some(20));
    let total = config(&format!("max_server_conn = 7\n{TWO_USERS}"));
    let pools = capacity::pools(&total);
    let refs: Vec<_> = pools.iter().collect();
    assert_eq!(capacity::most_together(&total, &refs, None), Some(7));
}

#[test]
fn the_wildcard_is_unbounded_until_the_server_says_how_many_databases_it_has() {
    let config = config("[databases.\"*\"]\n[users.a]\npassword = \"x\"\n");
    let pools = capacity::pools(&config);
    let refs: Vec<_> = pools.iter().collect();
    assert_eq!(capacity::most_together(&config, &refs, None), None);
    assert_eq!(capacity::most_together(&config, &refs, Some(3)), Some(60));
    let findings = rules::findings(&config, &pools, None);
    assert!(
        findings.iter().any(|f| f.key == "max_server_conn"),
        "{findings:?}"
    );
}

#[test]
fn a_server_that_cannot_take_every_pool_is_an_error_naming_the_numbers() {
    let config = config(TWO_USERS);
    let pools = capacity::pools(&config);
    let refs: Vec<_> = pools.iter().collect();
    let roles = [("a", -1), ("b", -1)];
    let dbs = [("app", -1), ("reports", -1)];
    let small = capacity::audit_server(&config, "db:5432", &refs, &facts(40, &roles, &dbs));
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(small[0].level, Level::Error);
    assert!(
        small[0]
            .message
            .contains("up to 50 connections to db:5432, which accepts 37"),
        "{}",
        small[0]
    );
    assert!(small[0]
        .message
        .contains("max_connections 40 - superuser_reserved_connections 3"));
    let roomy = capacity::audit_server(&config, "db:5432", &refs, &facts(100, &roles, &dbs));
    assert!(roomy.is_empty(), "{roomy:?}");
}

#[test]
fn role_and_database_connection_limits_and_missing_ones() {
    let config = config(TWO_USERS);
    let pools = capacity::pools(&config);
    let refs: Vec<_> = pools.iter().collect();
    let found = capacity::audit_server(
        &config,
        "db:5432",
        &refs,
        &facts(500, &[("a", 30)], &[("app", 8)]),
    );
    let keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "max_user_connections",
            "users",
            "max_db_connections",
            "databases"
        ],
        "{found:?}"
    );
    assert!(
        found[0].message.contains("40 connections as \"a\""),
        "{}",
        found[0]
    );
    assert!(found[0].message.contains("CONNECTION LIMIT is 30"));
    assert!(found[1].message.contains("role \"b\" does not exist"));
    assert!(
        found[2]
            .message
            .contains("25 connections to database \"app\""),
        "{}",
        found[2]
    );
    assert!(found[3]
        .message
        .contains("database \"reports\" does not exist"));
}

#[test]
fn static_rules_name_their_key() {
    let config = config(
        "query_wait_timeout = 0\nclient_login_timeout = 0\nmax_client_conn = 10\n\
         idle_transaction_timeout = 60\ntransaction_timeout = 30\n\
         server_idle_timeout = \"2h\"\nmax_prepared_statements = 0\n\
         max_client_conn_per_database = 4\n[databases.app]\n[users.a]\npassword = \"x\"\n",
    );
    let pools = capacity::pools(&config);
    let found = rules::findings(&config, &pools, Some(40));
    let mut keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "client_login_timeout",
            "idle_transaction_timeout",
            "max_client_conn",
            "max_client_conn",
            "max_client_conn_per_database",
            "max_prepared_statements",
            "query_wait_timeout",
            "server_idle_timeout",
        ],
        "{found:#?}"
    );
    let clean = from_toml("[databases.app]\n[users.a]\npassword = \"x\"\n").unwrap();
    let pools = capacity::pools(&clean);
    assert_eq!(rules::findings(&clean, &pools, Some(65536)), []);
}

#[test]
fn exit_codes_follow_the_worst_finding() {
    let report = |findings| Report {
        pools: Vec::new(),
        servers: Vec::new(),
        findings,
    };
    assert_eq!(report(Vec::new()).exit_code(), 0);
    let warning = Finding::new(Level::Warning, "k", "w");
    assert_eq!(report(vec![warning.clone()]).exit_code(), 1);
    let error = Finding::new(Level::Error, "k", "e");
    assert_eq!(report(vec![warning, error]).exit_code(), 2);
}
