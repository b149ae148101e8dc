//! The timeouts that watch logged-in clients, as a client meets them: the error that ends
//! the session names the timeout and carries Postgres' own SQLSTATE for it; a query that
//! runs too long is cancelled with a NOTICE naming `query_timeout`, and the session goes on.

mod common;

use std::time::{Duration, Instant};

use common::prepared::{transaction_config, RawClient, Reply};
use common::PgServer;
use common::{start_proxy, Proxy};
use pgwarden::refusals::Cap;

async fn proxy_with(pg: &PgServer, pool_mode: &str, extra: &str) -> Proxy {
    let config = transaction_config(pg, 2, extra).replace(
        "pool_mode = \"transaction\"",
        &format!("pool_mode = \"{pool_mode}\""),
    );
    start_proxy(&config).await
}

/// The error a closed session ended with.
fn fatal(replies: &[Reply]) -> (String, String) {
    match replies.last() {
        Some(Reply::Error(code, message)) => (code.clone(), message.clone()),
        other => panic!("session ended without an error: {other:?} (all: {replies:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_after_client_idle_timeout_in_both_modes() {
    let pg = PgServer::start();
    for mode in ["transaction", "session"] {
        let proxy = proxy_with(&pg, mode, "client_idle_timeout = \"300ms\"").await;
        let mut client = RawClient::proxied(&proxy).await;
        assert_eq!(client.value("select 1").await, "1");
        let idle = Instant::now();
        let replies = client.read_until_closed().await;
        let waited = idle.elapsed();
        assert_eq!(
            fatal(&replies),
            (
                "57P05".to_owned(),
                "terminating connection: idle longer than client_idle_timeout = 300ms".to_owned()
            ),
            "{mode}"
        );
        assert!(
            waited >= Duration::from_millis(290),
            "{mode}: closed after {waited:?}"
        );
        assert_eq!(proxy.ctx.refusals.get(Cap::ClientIdleTimeout), 1, "{mode}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_ends_the_session_and_rolls_back() {
    let pg = PgServer::start();
    let direct = pg.connect("postgres", "postgres", "postgres").await;
    direct
        .batch_execute("create table idle_tx (x int); grant all on idle_tx to public")
        .await
        .unwrap();
    let proxy = proxy_with(&pg, "transaction", "idle_transaction_timeout = \"300ms\"").await;
    let mut client = RawClient::proxied(&proxy).await;
    let replies = client.simple("begin; insert into idle_tx values (1)").await;
    assert_eq!(replies.last(), Some(&Reply::Ready('T')), "{replies:?}");
    let replies = client.read_until_closed().await;
    assert_eq!(
        fatal(&replies),
        (
            "25P03".to_owned(),
            "terminating connection: idle in a transaction longer than \
             idle_transaction_timeout = 300ms"
                .to_owned()
        )
    );
    let rows = direct
        .query_one("select count(*) from idle_tx", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.get::<_, i64>(0),
        0,
        "the transaction was not rolled back"
    );
    // A client that keeps its transaction busy is not idle.
    let mut busy = RawClient::proxied(&proxy).await;
    busy.simple("begin").await;
    for _ in 0..4 {
        assert_eq!(busy.value("select pg_sleep(0.1)::text").await, "");
    }
    assert_eq!(busy.simple("commit").await.last(), Some(&Reply::Ready('I')));
    assert_eq!(proxy.ctx.refusals.get(Cap::IdleTransactionTimeout), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_longer_than_transaction_timeout_ends_the_session() {
    let pg = PgServer::start();
    let proxy = proxy_with(&pg, "transaction", "transaction_timeout = \"500ms\"").await;
    let mut client = RawClient::proxied(&proxy).await;
    // Short transactions are untouched.
    for _ in 0..3 {
        client.simple("begin").await;
        assert_eq!(client.value("select 'ok'").await, "ok");
        client.simple("commit").await;
    }
    let started = Instant::now();
    client.simple("begin").await;
    client
        .send(&common::prepared::query("select pg_sleep(30)"))
        .await;
    let replies = client.read_until_closed().await;
    let lasted = started.elapsed();
    assert_eq!(
        fatal(&replies),
        (
            "25P04".to_owned(),
            "terminating connection: in a transaction longer than transaction_timeout = 500ms"
                .to_owned()
        )
    );
    assert!(
        lasted >= Duration::from_millis(490) && lasted < Duration::from_secs(10),
        "ended after {lasted:?}"
    );
    // The abandoned query was cancelled, not left running on a backend.
    let deadline = Instant::now() + Duration::from_secs(10);
    let direct = pg.connect("postgres", "postgres", "postgres").await;
    loop {
        let row = direct
            .query_one(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' \
                 and state = 'active'",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned query still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.ctx.refusals.get(Cap::TransactionTimeout), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_longer_than_query_timeout_is_cancelled_and_the_session_goes_on() {
    let pg = PgServer::start();
    for mode in ["transaction", "session"] {
        let proxy = proxy_with(&pg, mode, "query_timeout = \"300ms\"").await;
        let mut client = RawClient::proxied(&proxy).await;
        let started = Instant::now();
        let replies = client.simple("select pg_sleep(30)").await;
        let lasted = started.elapsed();
        let notices: Vec<&Reply> = replies
            .iter()
            .filter(|r| matches!(r, Reply::Notice(..)))
            .collect();
        assert_eq!(
            notices,
            [&Reply::Notice(
                "00000".to_owned(),
                "pgwarden is cancelling the query: it ran longer than query_timeout = 300ms"
                    .to_owned()
            )],
            "{mode}: {replies:?}"
        );
        assert!(
            replies.contains(&Reply::Error(
                "57014".to_owned(),
                "canceling statement due to user request".to_owned()
            )),
            "{mode}: {replies:?}"
        );
        assert_eq!(replies.last(), Some(&Reply::Ready('I')), "{mode}");
        assert!(lasted < Duration::from_secs(10), "{mode}: took {lasted:?}");
        // Quick queries on the same session are fine, and nothing is cancelled twice.
        for _ in 0..3 {
            assert_eq!(client.value("select 'still here'").await, "still here");
        }
        assert_eq!(proxy.ctx.refusals.get(Cap::QueryTimeout), 1, "{mode}");
        proxy.stop().await;
    }
}
