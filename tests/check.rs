//! `pgwarden check` against a real PostgreSQL (max_connections 300, 3 reserved for
//! superusers): the exit code CI reads, and the report naming the numbers and the keys.

mod common;

use std::io::Write;
use std::process::{Command, Output};

use common::PgServer;

/// Runs `pgwarden check --config <file with text>` and returns its output.
fn check(text: &str, extra: &[&str]) -> Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("check")
        .arg("--config")
        .arg(file.path())
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(pg: &PgServer, pool_size: usize) -> String {
    format!(
        "pool_size = {pool_size}\nmax_client_conn = 100\n\
         [databases.appdb]\nport = {port}\n[databases.postgres]\nport = {port}\n\
         [users.app]\npassword = \"app_pw\"\n[users.scram_user]\npassword = \"scram_pw\"\n",
        port = pg.port
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_that_could_exceed_max_connections_exits_2_naming_the_numbers() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    // 2 databases x 2 users x 80 = 320 > 297.
    let out = check(&config(&pg, 80), &[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    let server = format!("127.0.0.1:{}", pg.port);
    assert!(
        report.contains(&format!("error: pool_size: pgwarden may open up to 320 connections to {server}, which accepts 297")),
        "{report}"
    );
    assert!(
        report.contains("max_connections 300, superuser_reserved_connections 3"),
        "{report}"
    );
    // The effective limits per pool are listed.
    assert!(
        report.contains("appdb") && report.contains("scram_user"),
        "{report}"
    );

    // The same configuration bounded by max_server_conn is clean.
    let bounded = check(&config(&pg, 80), &["--max-server-conn", "200"]);
    assert_eq!(bounded.status.code(), Some(0), "{}", stdout(&bounded));
    assert!(
        stdout(&bounded).contains("pgwarden may open 200"),
        "{}",
        stdout(&bounded)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_limits_of_roles_and_databases_are_audited() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "ALTER ROLE scram_user CONNECTION LIMIT 10; ALTER DATABASE appdb CONNECTION LIMIT 15",
        )
        .await
        .unwrap();
    let out = check(&config(&pg, 10), &[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        report.contains(
            "error: max_user_connections: pgwarden may open 20 connections as \"scram_user\""
        ),
        "{report}"
    );
    assert!(report.contains("CONNECTION LIMIT is 10"), "{report}");
    assert!(
        report.contains(
            "error: max_db_connections: pgwarden may open 20 connections to database \"appdb\""
        ),
        "{report}"
    );
    // Capping them at the limits makes the audit clean.
    let capped = format!(
        "{}max_user_connections = 10\n",
        config(&pg, 10).replace(
            "[databases.appdb]\n",
            "[databases.appdb]\nmax_db_connections = 15\n"
        )
    );
    let out = check(&capped, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn warnings_exit_1_and_a_missing_role_or_database_is_an_error() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let out = check(&format!("query_wait_timeout = 0\n{}", config(&pg, 5)), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("warning: query_wait_timeout: 0: clients wait for a server for ever")
    );

    let missing = format!(
        "max_client_conn = 100\n[databases.absentdb]\nport = {port}\ndbname = \"absentdb\"\n[databases.appdb]\nport = {port}\n\
         [users.app]\npassword = \"app_pw\"\n",
        port = pg.port
    );
    let out = check(&missing, &[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        report.contains("database \"absentdb\" does not exist"),
        "{report}"
    );
}

#[test]
fn an_invalid_configuration_exits_2_with_every_problem_by_key() {
    let out = check("pool_size = 0\nworkers = \"many\"\n[databases.app]\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workers: \"many\" is not a whole number"),
        "{err}"
    );
    assert!(
        err.contains("pool_size: must be at least 1, not 0"),
        "{err}"
    );
}

#[test]
fn an_unreachable_server_is_a_warning_and_offline_skips_it() {
    // Port 1 on loopback refuses at once.
    let text = "max_client_conn = 100\n[databases.app]\nport = 1\n[users.a]\npassword = \"x\"\n";
    let out = check(text, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("could not audit 127.0.0.1:1 against the live database"),
        "{}",
        stdout(&out)
    );
    let offline = check(text, &["--offline"]);
    assert_eq!(offline.status.code(), Some(0), "{}", stdout(&offline));
}
