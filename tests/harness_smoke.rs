//! The test harness itself works: a throwaway Postgres with every login method pgwarden
//! must speak, and backend counting through pg_stat_activity.

mod common;

use common::{describe, PgServer};

const LOGINS: [(&str, &str); 5] = [
    ("app", "app_pw"),
    ("scram_user", "scram_pw"),
    ("md5_user", "md5_pw"),
    ("pw_user", "pw_pw"),
    ("trust_user", ""),
];

#[tokio::test]
async fn every_test_role_logs_in_over_tcp() {
    let pg = PgServer::start();
    for (user, password) in LOGINS {
        let client = pg.connect(user, password, "postgres").await;
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }
}

#[tokio::test]
async fn password_roles_reject_a_wrong_password_with_28p01() {
    let pg = PgServer::start();
    for (user, _) in LOGINS.iter().filter(|(user, _)| *user != "trust_user") {
        let err = pg.try_connect(user, "wrong", "postgres").await.err();
        let err = err.unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        let code = err.as_db_error().map(|db| db.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("28P01"), "{user}: {}", describe(&err));
    }
}

#[tokio::test]
async fn roles_are_stored_and_checked_as_the_harness_documents() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let sql = "SELECT rolname::text, CASE WHEN rolpassword IS NULL THEN 'none' \
               WHEN rolpassword LIKE 'md5%' THEN 'md5' WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' \
               ELSE rolpassword END FROM pg_authid \
               WHERE rolname IN ('app', 'scram_user', 'md5_user', 'pw_user', 'trust_user') ORDER BY 1";
    let rows = admin.query(sql, &[]).await.unwrap();
    let stored: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("app", "scram"),
        ("md5_user", "md5"),
        ("pw_user", "scram"),
        ("scram_user", "scram"),
        ("trust_user", "none"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .collect();
    assert_eq!(stored, expected);
    let sql = "SELECT auth_method FROM pg_hba_file_rules WHERE user_name = ARRAY[$1] LIMIT 1";
    for (user, method) in [
        ("md5_user", "md5"),
        ("pw_user", "password"),
        ("trust_user", "trust"),
    ] {
        let row = admin.query_one(sql, &[&user]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), method, "hba method of {user}");
    }
}

#[tokio::test]
async fn backend_count_follows_connections() {
    let pg = PgServer::start();
    assert_eq!(pg.backend_count("app").await, 0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(pg.connect("app", "app_pw", "appdb").await);
    }
    pg.wait_backends("app", 3).await;
    clients[0]
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(clients);
    pg.wait_backends("app", 0).await;
}

#[tokio::test]
async fn servers_are_independent() {
    let (a, b) = (PgServer::start(), PgServer::start());
    assert_ne!(a.port, b.port);
    a.admin()
        .await
        .batch_execute("CREATE DATABASE only_in_a")
        .await
        .unwrap();
    let sql = "SELECT count(*) FROM pg_database WHERE datname = 'only_in_a'";
    let in_b: i64 = b.admin().await.query_one(sql, &[]).await.unwrap().get(0);
    assert_eq!(in_b, 0);
}
