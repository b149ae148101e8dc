//! Who may use the admin console and what it never says: stats users read but change
//! nothing (42501), other users are refused (28000); no answer holds a password, a SCRAM
//! secret or a hash; the extended protocol and unknown commands get clear SQLSTATEs.

mod common;

use common::console::{app_client, ask, console, console_config, refused, setup, SHOWS};
use common::{describe, start_proxy, PgServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_read_and_only_admin_users_change_anything() {
    let (_pg, proxy) = setup().await;
    let stats = console(&proxy, "stats", "stats_pw").await;
    for show in SHOWS {
        ask(&stats, &format!("SHOW {show}")).await;
    }
    let changes = [
        "PAUSE",
        "PAUSE appdb",
        "RESUME",
        "DISABLE appdb",
        "ENABLE appdb",
        "RECONNECT",
        "KILL appdb",
        "KILL_CLIENT 1",
        "RELOAD",
        "SET pool_size = 5",
        "SHUTDOWN",
    ];
    for sql in changes {
        let (code, message) = refused(&stats, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.contains("admin_users") && message.contains("\"stats\""),
            "{message}"
        );
    }
    assert_eq!(proxy.ctx.pools.paused(), Default::default());
    assert!(!proxy.ctx.pools.is_disabled("appdb") && !proxy.shutdown.is_cancelled());
    // Nobody else gets in, right password or not.
    let port = proxy.addr.port();
    let err = common::try_connect_tcp("127.0.0.1", port, "app", "app_pw", "pgbouncer").await;
    let Err(err) = err else {
        panic!("app may not use the console")
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("admin_users"), "{}", db.message());
    // The other name works for admins too.
    let admin = common::try_connect_tcp("127.0.0.1", port, "admin", "admin_pw", "pgbouncer").await;
    ask(&admin.unwrap(), "SHOW VERSION").await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_holds_a_password_a_scram_secret_or_a_hash() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let salt = [7u8; 16];
    let v = pgwarden::auth::scram::verifier_from_password("scram_pw", &salt, 4096);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (stored, server) = (b64.encode(v.stored_key), b64.encode(v.server_key));
    let verifier = format!("SCRAM-SHA-256$4096:{}${stored}:{server}", b64.encode(salt));
    let toml =
        console_config(&pg, "") + &format!("[users.scram_user]\npassword = \"{verifier}\"\n");
    let proxy = start_proxy(&toml).await;
    let app = app_client(&proxy, "billing").await;
    app.simple_query("SELECT 1").await.unwrap();
    let admin = console(&proxy, "admin", "admin_pw").await;
    let mut everything = String::new();
    for show in SHOWS {
        everything.push_str(&ask(&admin, &format!("SHOW {show}")).await.text());
    }
    assert!(everything.contains("scram_user") && everything.contains("appdb"));
    for secret in [
        "admin_pw",
        "stats_pw",
        "app_pw",
        "SCRAM-SHA-256",
        &stored,
        &server,
    ] {
        assert!(!everything.contains(secret), "an answer shows {secret}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_and_unknown_commands_are_refused_clearly() {
    let (_pg, proxy) = setup().await;
    let admin = console(&proxy, "admin", "admin_pw").await;
    let Err(err) = admin.query("SHOW POOLS", &[]).await else {
        panic!("the extended protocol must be refused")
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{}", describe(&err)));
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("simple query protocol"),
        "{}",
        db.message()
    );
    ask(&admin, "SHOW VERSION").await; // the session goes on
    let cases = [
        ("SELECT 1", "42601", "unknown command \"SELECT\""),
        ("SHOW FDS", "42601", "SHOW FDS: unknown"),
        ("PAUSE a b", "42601", "unexpected \"b\""),
        ("KILL_CLIENT 999999", "42704", "no client with id 999999"),
        ("PAUSE nosuchdb", "3D000", "no database \"nosuchdb\""),
        ("KILL pgwarden", "3D000", "admin console"),
        ("RESUME", "55000", "nothing is paused"),
        (
            "SET nosuch = 1",
            "42704",
            "unrecognized configuration parameter \"nosuch\"",
        ),
        (
            "SET listen = '127.0.0.1:1'",
            "55P02",
            "listen cannot be changed while running",
        ),
        ("SET pool_size = 'many'", "22023", "pool_size"),
    ];
    for (sql, code, text) in cases {
        let (got, message) = refused(&admin, sql).await;
        assert_eq!(got, code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
    }
    // An empty query is answered as Postgres does.
    assert!(admin.simple_query(";").await.is_ok());
    proxy.stop().await;
}
