//! Authentication through pgwarden: clients logging in to the proxy (trust, cleartext, md5,
//! SCRAM against plain passwords, md5 hashes and SCRAM verifiers from `[users]` or an
//! `auth_file`), the proxy logging in to Postgres (trust, cleartext, md5, SCRAM), and the
//! errors a client sees when either fails.

mod common;

use std::io::Write;

use common::{describe, start_proxy, PgServer, Proxy};
use tokio_postgres::Client;

/// Where a user's secret is stored for the proxy.
#[derive(Debug, Clone, Copy)]
enum Source {
    Users,
    AuthFile,
}

/// How the secret of `app` (password `app_pw`) is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    Md5,
    Scram,
}

const KINDS: [Kind; 3] = [Kind::Plain, Kind::Md5, Kind::Scram];
const SOURCES: [Source; 2] = [Source::Users, Source::AuthFile];

/// A proxy configuration for `app`, whose secret `secret` is kept in `source`. Where the
/// secret is not a plain password the wildcard route carries `app_pw`, so the proxy can
/// still log in to Postgres (SCRAM) as `app`.
struct AppConfig {
    toml: String,
    /// Keeps the auth file alive while the proxy reads it (it reads it at config parse).
    _file: Option<tempfile::NamedTempFile>,
}

fn app_config(
    pg: &PgServer,
    auth_type: &str,
    kind: Kind,
    secret: &str,
    source: Source,
) -> AppConfig {
    let route_password = match kind {
        Kind::Plain => "",
        Kind::Md5 | Kind::Scram => "password = \"app_pw\"\n",
    };
    let (file, users) = match source {
        Source::Users => (None, format!("[users.app]\npassword = \"{secret}\"\n")),
        Source::AuthFile => (Some(auth_file(&[("app", secret)])), String::new()),
    };
    let auth_file_line = match &file {
        Some(file) => format!("auth_file = {:?}\n", file.path().display().to_string()),
        None => String::new(),
    };
    let toml = format!(
        "auth_type = \"{auth_type}\"\npool_size = 2\nshutdown_timeout = \"2s\"\n{auth_file_line}\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n{route_password}{users}",
        pg.port
    );
    AppConfig { toml, _file: file }
}

/// A PgBouncer-style userlist.txt with `"user" "secret"` lines.
fn auth_file(entries: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create auth file");
    writeln!(file, ";; written by tests/auth.rs").unwrap();
    for (user, secret) in entries {
        writeln!(file, "\"{user}\" \"{secret}\"").unwrap();
    }
    file.flush().unwrap();
    file
}

/// `app_pw` stored as `kind`: the md5 hash and the SCRAM verifier come from Postgres itself.
async fn app_secret(pg: &PgServer, kind: Kind) -> String {
    let admin = pg.admin().await;
    let sql = match kind {
        Kind::Plain => return "app_pw".to_owned(),
        Kind::Md5 => "SELECT 'md5' || md5('app_pw' || 'app')",
        Kind::Scram => "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
    };
    let secret: String = admin.query_one(sql, &[]).await.unwrap().get(0);
    let prefix = if kind == Kind::Md5 {
        "md5"
    } else {
        "SCRAM-SHA-256$"
    };
    assert!(secret.starts_with(prefix), "{kind:?} secret: {secret}");
    secret
}

/// Connects through the proxy and runs a first query: whether a server is assigned at login
/// or at the first query, a failure to get one surfaces by the end of this.
async fn login(
    proxy: &Proxy,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let client = proxy.try_connect(user, password, db).await?;
    client.simple_query("SELECT 1").await?;
    Ok(client)
}

async fn current_user(client: &Client) -> String {
    let row = client.query_one("SELECT current_user::text", &[]).await;
    row.unwrap_or_else(|e| panic!("select current_user: {}", describe(&e)))
        .get(0)
}

/// The SQLSTATE and message of a refused connection.
fn refusal(result: Result<Client, tokio_postgres::Error>, what: &str) -> (String, String) {
    let err = match result {
        Ok(_) => panic!("{what}: connected, expected a refusal"),
        Err(err) => err,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: expected an ErrorResponse, got {}", describe(&err)));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Logs in as `app` with the right password (current_user must be app) and with a wrong one
/// (28P01), for every secret kind in `kinds` from both sources, under `auth_type`.
async fn check_matrix(auth_type: &str, kinds: &[Kind]) {
    let pg = PgServer::start();
    for &kind in kinds {
        let secret = app_secret(&pg, kind).await;
        for source in SOURCES {
            let what = format!("auth_type {auth_type}, {kind:?} secret in {source:?}");
            let config = app_config(&pg, auth_type, kind, &secret, source);
            let proxy = start_proxy(&config.toml).await;
            let client = login(&proxy, "app", "app_pw", "postgres")
                .await
                .unwrap_or_else(|e| panic!("{what}: {}", describe(&e)));
            assert_eq!(current_user(&client).await, "app", "{what}");
            drop(client);
            let (code, message) = refusal(login(&proxy, "app", "nope", "postgres").await, &what);
            assert_eq!(code, "28P01", "{what}: {message}");
            assert_eq!(
                message, "password authentication failed for user \"app\"",
                "{what}"
            );
            proxy.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_checks_plain_md5_and_scram_secrets() {
    check_matrix("password", &KINDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_auth_checks_plain_and_md5_secrets_and_falls_back_to_scram_for_verifiers() {
    // With a SCRAM verifier the proxy asks for SCRAM instead of md5, as Postgres does;
    // tokio-postgres follows whichever method it is asked for.
    check_matrix("md5", &KINDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_auth_checks_plain_and_scram_secrets() {
    check_matrix("scram-sha-256", &[Kind::Plain, Kind::Scram]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_auth_with_an_md5_secret_fails_like_a_wrong_password() {
    // As in Postgres: SCRAM cannot check an md5 hash, and saying so would tell a stranger
    // that the user exists and what they store; the reason goes to pgwarden's log only.
    let pg = PgServer::start();
    let secret = app_secret(&pg, Kind::Md5).await;
    for source in SOURCES {
        let config = app_config(&pg, "scram-sha-256", Kind::Md5, &secret, source);
        let proxy = start_proxy(&config.toml).await;
        let what = format!("md5 secret in {source:?} under scram-sha-256");
        let (code, message) = refusal(login(&proxy, "app", "app_pw", "postgres").await, &what);
        assert_eq!(code, "28P01", "{what}: {message}");
        assert_eq!(
            message, "password authentication failed for user \"app\"",
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_accepts_any_password() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    for password in ["app_pw", "wrong", ""] {
        let client = login(&proxy, "app", password, "postgres")
            .await
            .unwrap_or_else(|e| panic!("password {password:?}: {}", describe(&e)));
        assert_eq!(current_user(&client).await, "app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_gets_the_same_error_as_a_wrong_password() {
    let pg = PgServer::start();
    for auth_type in ["password", "md5", "scram-sha-256"] {
        let toml = format!(
            "auth_type = \"{auth_type}\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
             [users.app]\npassword = \"app_pw\"\n",
            pg.port
        );
        let proxy = start_proxy(&toml).await;
        for (user, password) in [("app", "wrong"), ("nosuch", "wrong"), ("nosuch", "app_pw")] {
            let what = format!("{auth_type}: {user}/{password}");
            let (code, message) = refusal(login(&proxy, user, password, "postgres").await, &what);
            assert_eq!(code, "28P01", "{what}: {message}");
            assert_eq!(
                message,
                format!("password authentication failed for user \"{user}\""),
                "{what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_logs_in_to_postgres_with_md5_cleartext_trust_and_scram() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let md5_hash: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(md5_hash.starts_with("md5"), "{md5_hash}");
    // Clients log in to the proxy with trust; the proxy logs in to Postgres with whatever
    // each role's pg_hba line asks for: md5_user with the md5 hash from the auth file (all
    // md5 server auth needs), pw_user in cleartext, scram_user with SCRAM, trust_user with
    // nothing at all (it is in no list).
    let file = auth_file(&[("md5_user", &md5_hash)]);
    // pw_user's cleartext password goes over plain TCP here only because it is allowed.
    let toml = format!(
        "auth_type = \"trust\"\nauth_file = {:?}\nserver_allow_cleartext_password = true\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.pw_user]\npassword = \"pw_pw\"\n\
         [users.scram_user]\npassword = \"scram_pw\"\n",
        file.path().display().to_string(),
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    for user in ["md5_user", "pw_user", "trust_user", "scram_user"] {
        let client = login(&proxy, user, "anything", "postgres")
            .await
            .unwrap_or_else(|e| panic!("{user}: {}", describe(&e)));
        assert_eq!(current_user(&client).await, user);
    }

    // And md5_user with a plain password.
    let toml = format!(
        "auth_type = \"trust\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.md5_user]\npassword = \"md5_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let client = proxy.connect("md5_user", "", "postgres").await;
    assert_eq!(current_user(&client).await, "md5_user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_proxy_cannot_answer_the_server_with_is_a_clear_28000() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pw_hash: String = admin
        .query_one("SELECT 'md5' || md5('pw_pw' || 'pw_user')", &[])
        .await
        .unwrap()
        .get(0);
    // Client auth succeeds (the verifier checks scram_pw), then the server asks the proxy for
    // SCRAM, which a verifier cannot answer; pw_user's server wants cleartext, which an md5
    // hash cannot give.
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.scram_user]\npassword = \"{verifier}\"\n\
         [users.pw_user]\npassword = \"{pw_hash}\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let (code, message) = refusal(
        login(&proxy, "scram_user", "scram_pw", "postgres").await,
        "scram_user with only a verifier",
    );
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("\"scram_user\"")
            && message.contains("SCRAM")
            && message.contains("password"),
        "the message should name the user, SCRAM and the missing password: {message}"
    );

    let proxy_pw = start_proxy(&toml.replace("scram-sha-256", "md5")).await;
    let (code, message) = refusal(
        login(&proxy_pw, "pw_user", "pw_pw", "postgres").await,
        "pw_user with only an md5 hash",
    );
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("\"pw_user\"") && message.contains("cleartext") && message.contains("md5"),
        "the message should name the user, cleartext and the md5 hash: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_password_passes_on_the_server_error() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"trust\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"not_app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let (code, message) = refusal(login(&proxy, "app", "app_pw", "postgres").await, "app");
    assert_eq!(code, "28P01", "{message}");
    assert_eq!(message, "password authentication failed for user \"app\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_without_a_wildcard_is_3d000() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n[databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let (code, message) = refusal(login(&proxy, "app", "app_pw", "nosuch").await, "nosuch");
    assert_eq!(code, "3D000", "{message}");
    assert_eq!(message, "database \"nosuch\" does not exist");
    // The named route itself works.
    let client = proxy.connect("app", "app_pw", "appdb").await;
    assert_eq!(current_user(&client).await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_with_a_wildcard_passes_on_the_postgres_error() {
    let pg = PgServer::start();
    let toml = format!(
        "auth_type = \"scram-sha-256\"\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    );
    let proxy = start_proxy(&toml).await;
    let (code, message) = refusal(login(&proxy, "app", "app_pw", "nosuch").await, "nosuch");
    assert_eq!(code, "3D000", "{message}");
    assert_eq!(message, "database \"nosuch\" does not exist");
}
