//! SIGHUP reloads the configuration of a running pgwarden (the binary, its file rewritten):
//! a bigger pool under pgbench with no failed transaction, a route repointed to another
//! server, users added and removed, an invalid file refused, restart-only settings named.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::pgbench::{output_text, pgbench_command};
use common::process::Pgwarden;
use common::{describe, PgServer};

/// Rewrites the proxy's configuration file (keeping its listen line), sends SIGHUP and
/// waits for the outcome's log line; returns the log lines the reload added.
async fn reload(proxy: &Pgwarden, toml: &str) -> String {
    let file = proxy.dir.path().join("pgwarden.toml");
    std::fs::write(&file, format!("listen = \"127.0.0.1:0\"\n{toml}")).unwrap();
    let outcomes = |out: &str| {
        out.matches("configuration reloaded").count()
            + out
                .matches("configuration not reloaded; the one in force stays")
                .count()
    };
    let before = proxy.output();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = proxy.output();
        if outcomes(&out) > outcomes(&before) {
            return out[before.len()..].to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome logged:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Transaction pooling to `pg` with trust logins; app logs in to Postgres with its
/// password.
fn trust_config(pg: &PgServer, pool_size: usize, extra: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"transaction\"\npool_size = {pool_size}\n\
         query_wait_timeout = \"30s\"\nshutdown_timeout = \"2s\"\n{extra}\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let row = client.query_one(sql, &[]).await;
    let row = row.unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    row.get::<_, String>(0)
}

/// Polls the backends of app on `pg` until `ok` holds for their count; panics after 10 s.
async fn wait_backends(pg: &PgServer, what: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = pg.backend_count("app").await;
        if ok(count) {
            return count;
        }
        assert!(Instant::now() < deadline, "{what}: still {count} backends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bigger_pool_under_pgbench_fails_no_transaction_and_shows_in_pg_stat_activity() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&trust_config(&pg, 2, "")).await;
    let script = proxy.dir.path().join("tx.sql");
    std::fs::write(
        &script,
        "BEGIN;\nSELECT pg_sleep(0.02);\nSELECT 1;\nCOMMIT;\n",
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    let args = ["-n", "-c", "8", "-j", "2", "-T", "8", "-f", &script];
    let mut cmd = pgbench_command(proxy.port, "app", "", "appdb", &args);
    let bench = tokio::task::spawn_blocking(move || cmd.output().expect("run pgbench"));

    // Eight clients on two servers: the pool is full, and no more than full.
    let full = wait_backends(&pg, "pool_size 2 never filled", |n| n == 2).await;
    assert_eq!(full, 2);
    let log = reload(&proxy, &trust_config(&pg, 6, "")).await;
    assert!(
        log.contains("pool_size 2 -> 6") && log.contains("pools changed: appdb/app"),
        "{log}"
    );
    wait_backends(&pg, "pool_size 6 not reached", |n| n == 6).await;

    let out: Output = bench.await.unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "pgbench failed:\n{text}");
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench reports failures:\n{text}"
    );
    assert!(pg.backend_count("app").await <= 6);
    assert!(
        !proxy.output().contains("panicked at"),
        "{}",
        proxy.output()
    );
}

#[tokio::test]
async fn a_repointed_route_takes_new_transactions_and_old_servers_close_when_released() {
    let (old, new) = tokio::join!(
        tokio::task::spawn_blocking(PgServer::start),
        tokio::task::spawn_blocking(PgServer::start)
    );
    let (old, new) = (old.unwrap(), new.unwrap());
    let proxy = Pgwarden::with_config(&trust_config(&old, 4, "")).await;
    let port = "SELECT inet_server_port()::text";
    let database = "SELECT current_database()::text";
    let (idle, busy) = (proxy.connect_app().await, proxy.connect_app().await);
    assert_eq!(value(&idle, port).await, old.port.to_string());
    busy.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&busy, port).await, old.port.to_string());

    // Same name, another server and database.
    let repointed =
        trust_config(&new, 4, "").replace("[users.app]", "dbname = \"postgres\"\n[users.app]");
    let log = reload(&proxy, &repointed).await;
    assert!(log.contains("routes changed: appdb"), "{log}");
    assert!(
        log.contains(&format!(
            "pool appdb/app: app@127.0.0.1:{}/appdb -> app@127.0.0.1:{}/postgres",
            old.port, new.port
        )),
        "{log}"
    );

    // A new transaction goes to the new server; the open one stays where it is.
    assert_eq!(value(&idle, port).await, new.port.to_string());
    assert_eq!(value(&idle, database).await, "postgres");
    assert_eq!(
        value(&busy, port).await,
        old.port.to_string(),
        "moved mid-transaction"
    );
    assert!(old.backend_count("app").await >= 1);
    busy.batch_execute("COMMIT").await.unwrap();
    assert_eq!(value(&busy, port).await, new.port.to_string());
    old.wait_backends("app", 0).await;
    assert!(
        proxy
            .output()
            .contains("its route now leads elsewhere (reload)"),
        "{}",
        proxy.output()
    );
    // A fresh client too.
    let fresh = proxy.connect_app().await;
    assert_eq!(value(&fresh, port).await, new.port.to_string());
    drop((idle, busy, fresh));
    proxy.assert_healthy_as("app", "appdb").await;
}

/// SCRAM logins to pgwarden for app and scram_user as listed.
fn users_config(pg: &PgServer, users: &[(&str, &str)]) -> String {
    let mut toml = format!(
        "pool_mode = \"transaction\"\npool_size = 2\nshutdown_timeout = \"2s\"\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    );
    for (user, password) in users {
        toml.push_str(&format!("[users.{user}]\npassword = \"{password}\"\n"));
    }
    toml
}

#[tokio::test]
async fn users_added_can_log_in_and_users_removed_cannot_while_connected_ones_stay() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&users_config(&pg, &[("app", "app_pw")])).await;
    let app = proxy.connect_app().await;
    let refused = proxy.try_connect("scram_user", "scram_pw", "appdb").await;
    let Err(err) = refused else {
        panic!("scram_user is not configured yet")
    };
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("28P01"),
        "{}",
        describe(&err)
    );

    let swapped = users_config(&pg, &[("scram_user", "scram_pw")]);
    let log = reload(&proxy, &swapped).await;
    assert!(
        log.contains("users added: scram_user") && log.contains("users removed: app"),
        "{log}"
    );
    let scram = proxy.try_connect("scram_user", "scram_pw", "appdb").await;
    let scram = scram.unwrap_or_else(|e| panic!("scram_user after the reload: {}", describe(&e)));
    assert_eq!(
        value(&scram, "SELECT current_user::text").await,
        "scram_user"
    );
    let refused = proxy.try_connect("app", "app_pw", "appdb").await;
    let Err(err) = refused else {
        panic!("app was removed")
    };
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("28P01"),
        "{}",
        describe(&err)
    );
    // Never dropped: the connected app client still runs transactions.
    for _ in 0..3 {
        assert_eq!(value(&app, "SELECT current_user::text").await, "app");
    }
    drop(app);
    // Its pool goes with its last client.
    pg.wait_backends("app", 0).await;
    assert!(
        !proxy.output().contains("panicked at"),
        "{}",
        proxy.output()
    );
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_with_its_reasons_and_the_old_one_stays() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&trust_config(&pg, 1, "")).await;
    let client = proxy.connect_app().await;
    assert_eq!(value(&client, "SELECT 'up'::text").await, "up");

    let broken = trust_config(&pg, 5, "max_client_conn = \"many\"\nno_such_key = 1\n");
    let log = reload(&proxy, &broken).await;
    assert!(
        log.contains("configuration not reloaded; the one in force stays"),
        "{log}"
    );
    assert!(
        log.contains("key=max_client_conn") && log.contains("key=no_such_key"),
        "every reason, by key:\n{log}"
    );
    assert!(!log.contains("configuration reloaded:"), "{log}");
    // The old configuration serves on: pool_size is still 1.
    let other = proxy.connect_app().await;
    other.batch_execute("BEGIN").await.unwrap();
    assert_eq!(value(&other, "SELECT 'second'::text").await, "second");
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        client.query_one("SELECT 1", &[]),
    );
    assert!(
        waiting.await.is_err(),
        "a second server opened: pool_size changed"
    );
    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(value(&client, "SELECT 'again'::text").await, "again");

    // Restart-only settings are named, and the rest is taken.
    let log = reload(&proxy, &trust_config(&pg, 3, "workers = 2\n")).await;
    assert!(
        log.contains("workers changed in the configuration but only takes effect after a restart"),
        "{log}"
    );
    assert!(
        log.contains("pool_size 1 -> 3") && log.contains("needs restart: workers"),
        "{log}"
    );
    drop((client, other));
    proxy.assert_healthy_as("app", "appdb").await;
}

#[tokio::test]
async fn a_smaller_pool_closes_its_surplus_as_servers_come_back_never_mid_transaction() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&trust_config(&pg, 3, "")).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = proxy.connect_app().await;
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(value(&client, "SELECT 'in'::text").await, "in");
        clients.push(client);
    }
    pg.wait_backends("app", 3).await;
    let log = reload(&proxy, &trust_config(&pg, 1, "")).await;
    assert!(log.contains("pool_size 3 -> 1"), "{log}");
    // Nobody is cut: every transaction goes on and commits.
    for client in &clients {
        assert_eq!(value(client, "SELECT 'still'::text").await, "still");
        client.batch_execute("COMMIT").await.unwrap();
    }
    pg.wait_backends("app", 1).await;
    assert!(
        proxy
            .output()
            .contains("reason=\"pool_size lowered (reload)\""),
        "{}",
        proxy.output()
    );
    for client in &clients {
        assert_eq!(value(client, "SELECT 'after'::text").await, "after");
    }
    assert_eq!(pg.backend_count("app").await, 1);
    drop(clients);
    proxy.assert_healthy_as("app", "appdb").await;
}
