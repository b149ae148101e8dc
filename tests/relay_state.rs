//! Session state that the relay must follow, end to end against a real Postgres with
//! pgwarden in-process (transaction mode; pool_size 1 where a test needs the next client
//! to get the server the previous one used, or to wait behind a pinned one; 2 for the
//! scanner, where a correctly pinned client must not stop the next one being served, and
//! an idle server is reused before a second one opens):
//!
//! - the SQL scanner knows the dialect: a SET or LISTEN hidden behind quoting tricks is
//!   seen, so the next client never inherits it, and the client itself sees its own SET
//!   as on direct Postgres;
//! - `SET SESSION AUTHORIZATION` follows its client;
//! - errors for unknown or duplicate prepared statements are byte for byte Postgres' own;
//! - a pin lasts as long as its reason.
//!
//! The pool user is the superuser `postgres` (SET SESSION AUTHORIZATION needs one);
//! clients log in to pgwarden with trust.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use common::clients::simple_rows;
use common::prepared::{bind, describe, execute, parse, query, sync};
use common::segment::{difference, exchange, replay, step, Cut, Until};
use common::{describe as describe_err, start_proxy, try_connect_tcp, PgServer, Proxy};

const USER: &str = "postgres";
const DB: &str = "postgres";
/// A client that is not pinned out is served well within this (it cannot wait longer than
/// query_wait_timeout anyway: then it gets 53300).
const PROMPTLY: Duration = Duration::from_secs(2);
/// query_wait_timeout: how long a client waits behind a pinned one before its 53300.
const WAIT: &str = "1s";

fn config(pg: &PgServer, pool_size: usize) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"transaction\"\npool_size = {pool_size}\n\
         max_prepared_statements = 200\nquery_wait_timeout = \"{WAIT}\"\n\
         shutdown_timeout = \"2s\"\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.postgres]\npassword = \"postgres\"\n",
        pg.port
    )
}

async fn setup() -> (PgServer, Proxy) {
    setup_with(1).await
}

async fn setup_with(pool_size: usize) -> (PgServer, Proxy) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = start_proxy(&config(&pg, pool_size)).await;
    (pg, proxy)
}

async fn client(proxy: &Proxy) -> Client {
    let port = proxy.addr.port();
    let connected = try_connect_tcp("127.0.0.1", port, USER, "unused", DB).await;
    connected.unwrap_or_else(|e| panic!("connect through pgwarden: {}", describe_err(&e)))
}

/// The rows of a simple query (several statements allowed), as text.
async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let run = tokio::time::timeout(Duration::from_secs(5), client.simple_query(sql));
    let messages = run
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("{sql}: {}", describe_err(&e)));
    simple_rows(&messages)
}

/// The first value of the last row of `sql`.
async fn value(client: &Client, sql: &str) -> String {
    let all = rows(client, sql).await;
    let last = all.last().unwrap_or_else(|| panic!("{sql}: no row"));
    last[0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// What a fresh client of the pool sees for each of `probes`.
async fn fresh_client_sees(proxy: &Proxy, probes: &[&str]) -> Vec<String> {
    let b = client(proxy).await;
    let mut seen = Vec::new();
    for probe in probes {
        seen.push(value(&b, probe).await);
    }
    seen
}

const PROBES: [&str; 4] = [
    "SHOW search_path",
    "SHOW statement_timeout",
    "SELECT count(*) FROM pg_listening_channels()",
    "SHOW standard_conforming_strings",
];

// The scanner.

/// Runs the queries of `trick` in turn on a client A, then: a fresh client B sees the
/// pool's defaults for every probe; then A sees for every probe what the same queries
/// leave on a direct connection.
async fn hidden_statement(trick: &[&str]) {
    let (pg, proxy) = setup_with(2).await;
    let direct = pg.admin().await;
    let defaults = {
        let mut seen = Vec::new();
        for probe in PROBES {
            seen.push(value(&direct, probe).await);
        }
        seen
    };
    for sql in trick {
        rows(&direct, sql).await;
    }
    let mut wanted = Vec::new();
    for probe in PROBES {
        wanted.push(value(&direct, probe).await);
    }
    assert_ne!(
        wanted, defaults,
        "the trick changes nothing on Postgres: {trick:?}"
    );

    let a = client(&proxy).await;
    for sql in trick {
        rows(&a, sql).await;
    }
    let b_sees = tokio::time::timeout(Duration::from_secs(5), fresh_client_sees(&proxy, &PROBES));
    let b_sees = b_sees.await.unwrap_or_else(|_| {
        panic!("the next client was not served (is A pinned for ever?) after {trick:?}")
    });
    assert_eq!(
        b_sees, defaults,
        "the next client inherited A's session after {trick:?}"
    );
    let mut a_sees = Vec::new();
    for probe in PROBES {
        a_sees.push(value(&a, probe).await);
    }
    assert_eq!(
        a_sees, wanted,
        "A does not see its own {trick:?} as on Postgres"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_is_no_escape_in_standard_strings() {
    hidden_statement(&["SELECT 'a\\'; SET search_path = evil, public; -- '"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_escapes_in_e_strings() {
    hidden_statement(&["SELECT E'a\\'b'; SET statement_timeout = 1234; SELECT 'x'"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_quotes() {
    hidden_statement(&[
        "SELECT $$ it's $$, $q$ $$ ' $q$; SET search_path = evil, public; SELECT 'x'",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_comments() {
    hidden_statement(&["SELECT 1 /* a /* b */ ' */; SET statement_timeout = 4321; -- '"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_identifiers() {
    hidden_statement(&["SELECT 1 AS \"a'\"; LISTEN evil_chan; SELECT 'x'"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_behind_a_standard_string() {
    hidden_statement(&["SELECT 'a\\'; LISTEN evil_chan; -- '"]).await;
}

/// With standard_conforming_strings off a backslash escapes in plain strings too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_escapes_when_standard_conforming_strings_is_off() {
    hidden_statement(&[
        // A query string is lexed before any of it runs: the SET must come first.
        "SET standard_conforming_strings = off",
        "SELECT 'a\\' '; SET search_path = evil, public; -- '",
    ])
    .await;
}

// SET SESSION AUTHORIZATION.

async fn users(client: &Client) -> (String, String) {
    let row = rows(client, "SELECT current_user::text, session_user::text").await;
    let row = &row[0];
    (row[0].clone().unwrap(), row[1].clone().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_authorization_follows_its_client() {
    let (pg, proxy) = setup().await;
    pg.admin()
        .await
        .batch_execute("CREATE ROLE low")
        .await
        .unwrap();
    let low = ("low".to_owned(), "low".to_owned());
    let pool = ("postgres".to_owned(), "postgres".to_owned());
    let a = client(&proxy).await;
    rows(&a, "SET SESSION AUTHORIZATION low").await;
    assert_eq!(users(&a).await, low, "A right after its SET");
    let b = client(&proxy).await;
    assert_eq!(users(&b).await, pool, "the next client on A's server");
    assert_eq!(users(&a).await, low, "A in a later transaction");
    rows(&a, "BEGIN; SELECT 1; COMMIT").await;
    assert_eq!(users(&a).await, low, "A after a transaction block");
    rows(&a, "RESET SESSION AUTHORIZATION").await;
    assert_eq!(users(&a).await, pool, "A after RESET SESSION AUTHORIZATION");
    assert_eq!(users(&b).await, pool, "B at the end");
}

// Error parity.

/// Unknown and duplicate prepared statements: every field of every ErrorResponse is what
/// Postgres sends (file, line and routine included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_errors_are_postgres_own() {
    let (pg, proxy) = setup().await;
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let bind_execute = |statement: &str| [bind("", statement, &[]), execute("")].concat();
    // trust_user: raw clients log in without a password, on Postgres too.
    const USER: &str = "trust_user";
    let ex = exchange(
        "prepared_statement_errors",
        "",
        vec![
            step([bind_execute("nope"), sync()].concat(), Until::Ready(1)),
            step([describe(b'S', "nope"), sync()].concat(), Until::Ready(1)),
            step([parse("dup", "SELECT 1"), sync()].concat(), Until::Ready(1)),
            step([parse("dup", "SELECT 2"), sync()].concat(), Until::Ready(1)),
            step(
                [parse("dup", "SELECT 3"), bind_execute("dup"), sync()].concat(),
                Until::Ready(1),
            ),
            step(query("EXECUTE nope"), Until::Ready(1)),
            step(query("DEALLOCATE nope"), Until::Ready(1)),
            step(query("PREPARE p AS SELECT 1"), Until::Ready(1)),
            step(query("PREPARE p AS SELECT 2"), Until::Ready(1)),
            step(query("BEGIN; EXECUTE nope"), Until::Ready(1)),
            step(query("ROLLBACK"), Until::Ready(1)),
        ],
    );
    let expected = replay(direct, USER, DB, &ex, Cut::Whole).await.unwrap();
    let errors: usize = expected
        .iter()
        .map(|a| a.messages.iter().filter(|m| m.tag == b'E').count())
        .sum();
    assert_eq!(errors, 8, "Postgres' answers: {expected:?}");
    let got = replay(proxy.addr, USER, DB, &ex, Cut::Whole).await.unwrap();
    if let Some(diff) = difference(&expected, &got) {
        panic!("pgwarden's errors are not Postgres': {diff}");
    }
}

// Pins.

/// A fresh client's `SELECT 1`: `Ok(elapsed)` when answered, `Err(sqlstate)` when refused.
async fn other_client(proxy: &Proxy) -> Result<Duration, String> {
    let started = Instant::now();
    let port = proxy.addr.port();
    let attempt = async {
        let b = try_connect_tcp("127.0.0.1", port, USER, "unused", DB).await?;
        b.simple_query("SELECT 1").await?;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e
            .code()
            .map(|c| c.code().to_owned())
            .unwrap_or(describe_err(&e))),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// With pool_size 1: another client is served at once.
async fn not_pinned(proxy: &Proxy, after: &str) {
    match other_client(proxy).await {
        Ok(took) => assert!(
            took < PROMPTLY,
            "another client waited {took:?} after {after:?}"
        ),
        Err(why) => panic!("another client was not served after {after:?}: {why}"),
    }
}

/// With pool_size 1: another client waits out query_wait_timeout and gets 53300.
async fn pinned(proxy: &Proxy, after: &str) {
    match other_client(proxy).await {
        Ok(took) => panic!("another client got the server ({took:?}) after {after:?}"),
        Err(code) => assert_eq!(code, "53300", "after {after:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_released_in_the_same_statement_does_not_pin() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    let sql = "SELECT pg_try_advisory_lock(1) AND pg_advisory_unlock(1)";
    assert_eq!(value(&a, sql).await, "t");
    not_pinned(&proxy, sql).await;
    assert_eq!(value(&a, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_lock_pins_until_unlock_all() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    value(&a, "SELECT pg_advisory_lock(1)").await;
    pinned(&proxy, "pg_advisory_lock(1)").await;
    value(&a, "SELECT pg_advisory_unlock_all()").await;
    not_pinned(&proxy, "pg_advisory_unlock_all()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_until_unlisten_all() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    rows(&a, "LISTEN pin_chan").await;
    pinned(&proxy, "LISTEN").await;
    assert_eq!(
        value(&a, "SELECT count(*) FROM pg_listening_channels()").await,
        "1"
    );
    rows(&a, "UNLISTEN *").await;
    not_pinned(&proxy, "UNLISTEN *").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_until_dropped() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    rows(&a, "CREATE TEMP TABLE pin_t(a int)").await;
    pinned(&proxy, "CREATE TEMP TABLE").await;
    rows(&a, "DROP TABLE pin_t").await;
    not_pinned(&proxy, "DROP TABLE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cursor_pins_until_closed() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    rows(&a, "DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1").await;
    pinned(&proxy, "DECLARE … WITH HOLD").await;
    rows(&a, "CLOSE pin_c").await;
    not_pinned(&proxy, "CLOSE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_unpins_everything() {
    let (_pg, proxy) = setup().await;
    let a = client(&proxy).await;
    rows(
        &a,
        "LISTEN pin_chan; CREATE TEMP TABLE pin_t(a int); SELECT pg_advisory_lock(7); \
         DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1",
    )
    .await;
    pinned(&proxy, "four pins").await;
    rows(&a, "DISCARD ALL").await;
    not_pinned(&proxy, "DISCARD ALL").await;
    assert_eq!(value(&a, "SELECT 3").await, "3");
}
