//! Hostile and clumsy clients against the pgwarden binary (transaction mode, one worker):
//! messages split across reads, huge parameters in random chunks, lengths and tags that
//! break the protocol, clients that leave mid-pipeline or mid-COPY, garbage. Each test
//! asserts what the client sees, then that the proxy is healthy (`assert_healthy`: alive,
//! idle, serving a fresh client, no panic, exits on SIGTERM with a session stuck).
//!
//! Protocol violations after login end the offending client with FATAL 08P01 and a close;
//! the proxy goes on serving the others and never hands the server that client held to
//! anyone dirty.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::hostile::{config, errors, expect_fatal, MAX_PACKET_SIZE};
use common::prepared::{bind, execute, flush, parse, query, sync};
use common::process::Pgwarden;
use common::raw::message;
use common::segment::{
    copy_data, copy_done, copy_fail, difference, exchange, replay, rows, shape, step, terminate,
    Conn, Cut, SplitMix, Until,
};
use common::PgServer;

const USER: &str = "trust_user";
const DB: &str = "postgres";
/// How long one answer may take.
const ANSWER: Duration = Duration::from_secs(5);
/// A pause between two writes that makes the second one a separate read for pgwarden
/// (it synchronises nothing: the answer is awaited, not slept for).
const READ_BOUNDARY: Duration = Duration::from_millis(50);
/// How soon a client waiting behind one that left must be served.
const PROMPTLY: Duration = Duration::from_secs(2);

async fn start(pool_size: usize) -> (PgServer, Pgwarden) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let proxy = Pgwarden::with_config(&config(pg.port, "transaction", pool_size, "")).await;
    (pg, proxy)
}

async fn login(proxy: &Pgwarden) -> Conn {
    let conn = Conn::login(proxy.addr(), USER, DB).await;
    conn.unwrap_or_else(|why| panic!("login through pgwarden: {why}\n{}", proxy.output_tail(20)))
}

async fn answer(conn: &mut Conn, readies: usize, proxy: &Pgwarden) -> common::segment::Answer {
    let got = conn.read_answer(Until::Ready(readies), ANSWER).await;
    got.unwrap_or_else(|why| panic!("{why}\npgwarden: {}", proxy.output_tail(20)))
}

fn text_rows(values: &[&[&str]]) -> Vec<Vec<Option<String>>> {
    values
        .iter()
        .map(|row| row.iter().map(|v| Some(v.to_string())).collect())
        .collect()
}

/// Bind of the unnamed portal and statement with text parameters, then Execute.
fn bind_execute(params: &[&str]) -> Vec<u8> {
    let params: Vec<Option<&str>> = params.iter().map(|p| Some(*p)).collect();
    [bind("", "", &params), execute("")].concat()
}

/// The header of a message of type `tag` declaring `len` (the length counts itself).
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Backends of the raw clients' role that are not idle (an open or implicit transaction,
/// or a running query), polled until there are none; panics after `within`.
async fn wait_no_busy_backends(pg: &PgServer, within: Duration) {
    let admin = pg.admin().await;
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'trust_user' \
               AND backend_type = 'client backend' AND state <> 'idle'";
    let deadline = Instant::now() + within;
    loop {
        let busy: i64 = admin.query_one(sql, &[]).await.unwrap().get(0);
        if busy == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{busy} backends still busy (not idle) {within:?} later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh client's `SELECT 1` answered exactly, within [`PROMPTLY`]; returns how long.
async fn served_promptly(proxy: &Pgwarden) -> Duration {
    let started = Instant::now();
    let work = async {
        let mut c = login(proxy).await;
        c.send(&query("SELECT 1")).await.unwrap();
        c.read_answer(Until::Ready(1), PROMPTLY).await
    };
    let got = tokio::time::timeout(PROMPTLY, work).await;
    let got = got
        .unwrap_or_else(|_| panic!("no SELECT 1 within {PROMPTLY:?}\n{}", proxy.output_tail(20)));
    let got = got.unwrap_or_else(|why| panic!("SELECT 1: {why}"));
    assert_eq!(shape(&got), "TDCZI", "{got:?}");
    assert_eq!(rows(&got), text_rows(&[&["1"]]));
    started.elapsed()
}

// Messages that arrive in more than one read.

#[tokio::test]
async fn header_then_body_with_pauses() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    c.send_in_pieces(&query("SELECT 1"), &[5], READ_BOUNDARY)
        .await
        .unwrap();
    let got = answer(&mut c, 1, &proxy).await;
    assert_eq!(rows(&got), text_rows(&[&["1"]]), "{got:?}");
    for msg in [
        parse("", "SELECT $1::int * 2"),
        bind("", "", &[Some("21")]),
        execute(""),
        sync(),
    ] {
        c.send_in_pieces(&msg, &[5], READ_BOUNDARY).await.unwrap();
    }
    let got = answer(&mut c, 1, &proxy).await;
    assert_eq!(shape(&got), "12DCZI", "{got:?}");
    assert_eq!(rows(&got), text_rows(&[&["42"]]));
    drop(c);
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn query_over_1_kib_after_an_idle_moment() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    c.send(&query("SELECT 1")).await.unwrap();
    answer(&mut c, 1, &proxy).await;
    // The idle moment is the scenario: the server has gone back to the pool and the
    // client's task waits for its next request without one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sql = format!("SELECT length('{}')", "k".repeat(2000));
    c.send(&query(&sql)).await.unwrap();
    let got = answer(&mut c, 1, &proxy).await;
    assert_eq!(rows(&got), text_rows(&[&["2000"]]), "{got:?}");
    drop(c);
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn eight_mb_parameter_in_random_chunks_with_pauses() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    let value = "ab".repeat(4 << 20);
    let bytes = [
        parse(
            "",
            "SELECT length($1::text), left($1::text, 3), right($1::text, 3)",
        ),
        bind_execute(&[&value]),
        sync(),
    ]
    .concat();
    let mut rng = SplitMix(8);
    let mut pieces = Vec::new();
    let mut total = 0;
    while total < bytes.len() {
        // Log-uniform sizes from 1 byte to 256 KiB: headers split as often as bodies.
        let scale = 1u64 << (rng.next() % 19);
        let len = 1 + (rng.next() % scale) as usize;
        pieces.push(len);
        total += len;
    }
    c.send_in_pieces(&bytes, &pieces, Duration::from_millis(2))
        .await
        .unwrap();
    let got = answer(&mut c, 1, &proxy).await;
    assert_eq!(
        rows(&got),
        text_rows(&[&["8388608", "aba", "bab"]]),
        "{got:?}"
    );
    drop(c);
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn sqlx_with_an_eight_mb_text_parameter() {
    use sqlx::Connection;
    let (_pg, proxy) = start(2).await;
    let url = format!("postgres://{USER}@127.0.0.1:{}/{DB}", proxy.port);
    let connect = sqlx::PgConnection::connect(&url);
    let mut conn = tokio::time::timeout(ANSWER, connect)
        .await
        .expect("sqlx connects in time")
        .expect("sqlx connects");
    let big = "s".repeat(8 << 20);
    let fetch = sqlx::query_scalar::<_, i32>("SELECT length($1)")
        .bind(&big)
        .fetch_one(&mut conn);
    let n = tokio::time::timeout(Duration::from_secs(20), fetch).await;
    let n = n
        .unwrap_or_else(|_| panic!("no answer within 20 s\n{}", proxy.output_tail(20)))
        .expect("SELECT length($1)");
    assert_eq!(n, 8 << 20);
    let again = sqlx::query_scalar::<_, i32>("SELECT 7").fetch_one(&mut conn);
    assert_eq!(
        tokio::time::timeout(ANSWER, again).await.unwrap().unwrap(),
        7
    );
    drop(conn);
    proxy.assert_healthy().await;
}

// Lengths and tags that break the protocol.

#[tokio::test]
async fn sync_declaring_100000_bytes() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    c.send(&header(b'S', 100_000)).await.unwrap();
    expect_fatal(&mut c, "08P01", "invalid message length", |m| {
        m == "invalid message length"
    })
    .await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn fixed_length_messages_with_another_length() {
    let (_pg, proxy) = start(2).await;
    for (tag, len) in [(b'S', 5u32), (b'H', 8), (b'c', 6), (b'X', 5), (b'S', 100)] {
        let mut c = login(&proxy).await;
        let mut bytes = header(tag, len);
        bytes.resize(1 + len as usize, 0);
        c.send(&bytes).await.unwrap();
        expect_fatal(&mut c, "08P01", "invalid message length", |m| {
            m == "invalid message length"
        })
        .await;
    }
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn small_messages_declaring_more_than_10000_bytes() {
    let (_pg, proxy) = start(2).await;
    for tag in [b'D', b'C', b'E', b'f'] {
        let mut c = login(&proxy).await;
        // Only the header and a few bytes: pgwarden must not wait for the rest.
        let mut bytes = header(tag, 20_000);
        bytes.extend_from_slice(b"S\0");
        c.send(&bytes).await.unwrap();
        expect_fatal(&mut c, "08P01", "invalid message length", |m| {
            m == "invalid message length"
        })
        .await;
    }
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn lengths_under_4() {
    let (_pg, proxy) = start(2).await;
    for len in [0u32, 3] {
        let mut c = login(&proxy).await;
        c.send(&header(b'Q', len)).await.unwrap();
        expect_fatal(&mut c, "08P01", "invalid message length", |m| {
            m == "invalid message length"
        })
        .await;
    }
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn message_over_max_packet_size() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    let mut bytes = header(b'Q', 2 * MAX_PACKET_SIZE);
    bytes.extend_from_slice(&[b'x'; 1024]);
    c.send(&bytes).await.unwrap();
    expect_fatal(&mut c, "08P01", "a message naming max_packet_size", |m| {
        m.contains("max_packet_size")
    })
    .await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn unknown_message_types() {
    let (_pg, proxy) = start(2).await;
    for tag in [b'y', b'!', 0xff] {
        let mut c = login(&proxy).await;
        c.send(&message(tag, b"")).await.unwrap();
        let wanted = format!("invalid frontend message type {tag}");
        expect_fatal(&mut c, "08P01", &wanted, |m| m == wanted).await;
    }
    proxy.assert_healthy().await;
}

/// The wording asserted above is Postgres' own.
#[tokio::test]
async fn postgres_words_an_unknown_message_type_so() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let mut c = Conn::login(direct, USER, DB).await.unwrap();
    c.send(&message(b'y', b"")).await.unwrap();
    expect_fatal(&mut c, "08P01", "Postgres' text", |m| {
        m == "invalid frontend message type 121"
    })
    .await;
}

#[tokio::test]
async fn garbage_after_login() {
    let (_pg, proxy) = start(2).await;
    let mut c = login(&proxy).await;
    c.send(b"GET / HTTP/1.1\r\nHost: pgwarden\r\n\r\n")
        .await
        .unwrap();
    let wanted = "invalid frontend message type 71";
    expect_fatal(&mut c, "08P01", wanted, |m| m == wanted).await;

    let mut rng = SplitMix(71);
    let mut garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    garbage[0] = 1;
    let mut c = login(&proxy).await;
    c.send(&garbage).await.unwrap();
    let wanted = "invalid frontend message type 1";
    expect_fatal(&mut c, "08P01", wanted, |m| m == wanted).await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn a_violation_mid_transaction_does_not_hand_the_server_on_dirty() {
    let (pg, proxy) = start(1).await;
    let admin = pg.admin().await;
    admin
        .batch_execute("CREATE TABLE hostile_t(a int); GRANT ALL ON hostile_t TO PUBLIC")
        .await
        .unwrap();
    let mut a = login(&proxy).await;
    a.send(&query("BEGIN; INSERT INTO hostile_t VALUES (1)"))
        .await
        .unwrap();
    let got = answer(&mut a, 1, &proxy).await;
    assert!(shape(&got).ends_with("ZT"), "{got:?}");
    a.send(&message(b'y', b"")).await.unwrap();
    expect_fatal(&mut a, "08P01", "unknown type", |m| {
        m == "invalid frontend message type 121"
    })
    .await;
    let mut b = login(&proxy).await;
    b.send(&query("SELECT count(*) FROM hostile_t"))
        .await
        .unwrap();
    let got = answer(&mut b, 1, &proxy).await;
    assert_eq!(shape(&got), "TDCZI", "{got:?}");
    assert_eq!(rows(&got), text_rows(&[&["0"]]));
    drop(b);
    proxy.assert_healthy().await;
}

// Clients that leave in the middle of something.

/// Two clients of a pool of two leave mid-pipeline (Parse, Bind, Execute, then `ending`,
/// no Sync); a third must be served at once and no backend stays busy.
async fn two_clients_leave_mid_pipeline(ending: &[u8]) {
    let (pg, proxy) = start(2).await;
    let pipeline = [parse("", "SELECT 1"), bind_execute(&[]), ending.to_vec()].concat();
    let mut a = login(&proxy).await;
    let mut b = login(&proxy).await;
    a.send(&pipeline).await.unwrap();
    b.send(&pipeline).await.unwrap();
    if ending.is_empty() {
        // EOF: both close their sockets.
        drop(a);
        drop(b);
    } else {
        // Terminate: the connection must end, as on Postgres.
        for c in [&mut a, &mut b] {
            let closed = c.read_answer(Until::Closed, PROMPTLY).await;
            closed.unwrap_or_else(|why| panic!("not closed after Terminate: {why}"));
        }
    }
    served_promptly(&proxy).await;
    served_promptly(&proxy).await;
    let backends = pg.backend_count(USER).await;
    assert!(backends <= 2, "{backends} backends with pool_size = 2");
    wait_no_busy_backends(&pg, PROMPTLY).await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn terminate_mid_pipeline() {
    two_clients_leave_mid_pipeline(&terminate()).await;
}

#[tokio::test]
async fn eof_mid_pipeline() {
    two_clients_leave_mid_pipeline(&[]).await;
}

#[tokio::test]
async fn eof_mid_copy() {
    let (pg, proxy) = start(1).await;
    let admin = pg.admin().await;
    admin
        .batch_execute("CREATE TABLE hostile_copy(a int); GRANT ALL ON hostile_copy TO PUBLIC")
        .await
        .unwrap();
    let mut a = login(&proxy).await;
    a.send(&query("COPY hostile_copy FROM STDIN"))
        .await
        .unwrap();
    let got = a.read_answer(Until::Tag(b'G'), ANSWER).await.unwrap();
    assert_eq!(shape(&got), "G");
    a.send(&copy_data(b"1\n2\n3\n")).await.unwrap();
    drop(a);
    let mut b = login(&proxy).await;
    b.send(&query("SELECT count(*) FROM hostile_copy"))
        .await
        .unwrap();
    let got = b.read_answer(Until::Ready(1), PROMPTLY).await;
    let got = got.unwrap_or_else(|why| panic!("the next client: {why}"));
    assert_eq!(shape(&got), "TDCZI", "{got:?}");
    assert_eq!(rows(&got), text_rows(&[&["0"]]));
    drop(b);
    wait_no_busy_backends(&pg, PROMPTLY).await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn pipelines_without_sync() {
    let (_pg, proxy) = start(2).await;
    let mut a = login(&proxy).await;
    // Nothing is owed yet: Postgres answers an extended query at Sync or Flush.
    a.send(&[parse("", "SELECT 5"), bind_execute(&[])].concat())
        .await
        .unwrap();
    // Meanwhile another client is served by the other server.
    served_promptly(&proxy).await;
    a.send(&flush()).await.unwrap();
    let got = a.read_answer(Until::Tag(b'C'), ANSWER).await.unwrap();
    assert_eq!(shape(&got), "12DC", "{got:?}");
    a.send(&bind_execute(&[])).await.unwrap();
    a.send(&sync()).await.unwrap();
    let got = answer(&mut a, 1, &proxy).await;
    assert_eq!(shape(&got), "2DCZI", "{got:?}");
    assert_eq!(rows(&got), text_rows(&[&["5"]]));
    drop(a);
    proxy.assert_healthy().await;
}

/// Postgres ignores CopyData, CopyDone and CopyFail outside COPY; through pgwarden the
/// client must see the same.
#[tokio::test]
async fn copy_messages_outside_copy() {
    let (pg, proxy) = start(2).await;
    let direct = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let ex = exchange(
        "copy_messages_outside_copy",
        "",
        vec![
            step(
                [copy_data(b"junk\n"), copy_done(), copy_fail("nothing")].concat(),
                Until::Nothing,
            ),
            step(query("SELECT 1"), Until::Ready(1)),
            step(
                [
                    query("BEGIN"),
                    copy_data(b"x"),
                    copy_done(),
                    query("COMMIT"),
                ]
                .concat(),
                Until::Ready(2),
            ),
        ],
    );
    let expected = replay(direct, USER, DB, &ex, Cut::Whole).await.unwrap();
    assert!(errors(&expected[1]).is_empty(), "{expected:?}");
    let got = replay(proxy.addr(), USER, DB, &ex, Cut::Whole).await;
    let got = got.unwrap_or_else(|why| panic!("{why}\n{}", proxy.output_tail(20)));
    if let Some(diff) = difference(&expected, &got) {
        panic!("pgwarden and Postgres differ: {diff}");
    }
    proxy.assert_healthy().await;
}
