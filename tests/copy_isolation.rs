//! A failed COPY never hands one client's answers to another (pgwarden binary, transaction
//! mode, pool_size = 1). Client A starts `COPY copy_t FROM STDIN`, makes it fail (bad data
//! or CopyFail), then sends its Sync and a slow `SELECT …, 'attacker-row'` in one write;
//! client B asks `SELECT s FROM secrets` while A's SELECT runs. B must get exactly what
//! Postgres answers B, and A exactly what Postgres answers A: after a failed COPY the
//! client's next Sync counts, and the server goes back only once everything it owes has
//! been answered.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::hostile::config;
use common::prepared::{bind, execute, parse, query, sync};
use common::process::Pgwarden;
use common::segment::{
    copy_data, copy_done, copy_fail, difference, rows, step, Answer, Conn, Step, Until,
};
use common::PgServer;

const USER: &str = "trust_user";
const DB: &str = "postgres";
const ANSWER: Duration = Duration::from_secs(5);
const SETUP: &str = "CREATE TABLE copy_t(a int); CREATE TABLE secrets(s text); \
                     INSERT INTO secrets VALUES ('secret-1'), ('secret-2'); \
                     GRANT ALL ON copy_t, secrets TO PUBLIC";
const SECRETS: &str = "SELECT s FROM secrets ORDER BY s";
const SLOW: &str = "SELECT pg_sleep(0.3), 'attacker-row'";

fn extended_copy() -> Vec<u8> {
    [
        parse("", "COPY copy_t FROM STDIN"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]
    .concat()
}

/// A's steps; B's query is sent right after A writes the last one.
fn extended_bad_data() -> Vec<Step> {
    vec![
        step(extended_copy(), Until::Tag(b'G')),
        step(copy_data(b"not a number\n"), Until::Tag(b'E')),
        step(
            [copy_data(b"1\n"), copy_done(), sync(), query(SLOW)].concat(),
            Until::Ready(2),
        ),
    ]
}

/// The client never ends the failed COPY: its Sync ends the failed pipeline.
fn extended_bad_data_then_sync() -> Vec<Step> {
    vec![
        step(extended_copy(), Until::Tag(b'G')),
        step(copy_data(b"not a number\n"), Until::Tag(b'E')),
        step([sync(), query(SLOW)].concat(), Until::Ready(2)),
    ]
}

fn extended_copy_fail() -> Vec<Step> {
    vec![
        step(extended_copy(), Until::Tag(b'G')),
        step(
            [
                copy_data(b"1\n"),
                copy_fail("changed my mind"),
                sync(),
                query(SLOW),
            ]
            .concat(),
            Until::Ready(2),
        ),
    ]
}

fn simple_bad_data() -> Vec<Step> {
    vec![
        step(query("COPY copy_t FROM STDIN"), Until::Tag(b'G')),
        step(copy_data(b"not a number\n"), Until::Ready(1)),
        step(
            [copy_data(b"2\n"), copy_done(), query(SLOW)].concat(),
            Until::Ready(1),
        ),
    ]
}

/// A's answers, and B's when B's query goes in while A's last step runs.
async fn run(addr: SocketAddr, steps: &[Step]) -> Result<(Vec<Answer>, Answer), String> {
    let mut a = Conn::login(addr, USER, DB).await?;
    let mut b = Conn::login(addr, USER, DB).await?;
    let mut answers = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        a.send(&s.send).await?;
        if i + 1 == steps.len() {
            b.send(&query(SECRETS)).await?;
        }
        let got = a.read_answer(s.until, ANSWER).await;
        answers.push(got.map_err(|why| format!("A, step {i}: {why}"))?);
    }
    let b_answer = b.read_answer(Until::Ready(1), ANSWER).await;
    let b_answer = b_answer.map_err(|why| format!("B: {why}"))?;
    Ok((answers, b_answer))
}

async fn isolated(steps: fn() -> Vec<Step>) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.admin().await.batch_execute(SETUP).await.unwrap();
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let (want_a, want_b) = run(direct, &steps()).await.expect("against Postgres");
    assert_eq!(
        rows(&want_b),
        vec![vec![Some("secret-1".into())], vec![Some("secret-2".into())]]
    );
    let proxy = Pgwarden::with_config(&config(pg.port, "transaction", 1, "")).await;
    let (got_a, got_b) = run(proxy.addr(), &steps())
        .await
        .unwrap_or_else(|why| panic!("through pgwarden: {why}\n{}", proxy.output_tail(20)));
    let leaked = rows(&got_b)
        .into_iter()
        .flatten()
        .any(|v| v.as_deref() == Some("attacker-row"));
    assert!(!leaked, "B received A's row: {got_b:?}");
    if let Some(diff) = difference(std::slice::from_ref(&want_b), std::slice::from_ref(&got_b)) {
        panic!("B's answer differs from Postgres': {diff}");
    }
    if let Some(diff) = difference(&want_a, &got_a) {
        panic!("A's answers differ from Postgres': {diff}");
    }
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn bad_data_in_an_extended_copy_then_sync_and_a_slow_select() {
    isolated(extended_bad_data_then_sync).await;
}

#[tokio::test]
async fn bad_data_in_an_extended_copy_then_copy_done() {
    isolated(extended_bad_data).await;
}

#[tokio::test]
async fn copy_fail_in_an_extended_copy() {
    isolated(extended_copy_fail).await;
}

#[tokio::test]
async fn bad_data_in_a_simple_copy() {
    isolated(simple_bad_data).await;
}
