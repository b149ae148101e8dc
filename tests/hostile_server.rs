//! A server that breaks the protocol (a scripted fake, `common::fake_server`) behind the
//! pgwarden binary (transaction mode, pool_size 2, trust). pgwarden must not forward what a
//! real Postgres never sends: it closes that server connection, tells the client FATAL
//! 08P01 `server protocol violation: <the fault>`, and goes on; the next client gets a
//! fresh server. Each test ends with `assert_healthy`.

mod common;

use std::time::Duration;

use common::fake_server::{
    command_complete, error_fields, msg, parameter_status, ready, Event, FakeServer, Fault,
};
use common::hostile::{config, errors, expect_fatal};
use common::prepared::query;
use common::process::Pgwarden;
use common::segment::{rows, shape, Conn, Until};

const USER: &str = "trust_user";
const DB: &str = "postgres";
const ANSWER: Duration = Duration::from_secs(5);
const PREFIX: &str = "server protocol violation: ";

fn fault(trigger: &'static str, bytes: Vec<u8>) -> Fault {
    Fault {
        trigger,
        bytes,
        close: false,
        later: None,
    }
}

async fn start(faults: Vec<Fault>) -> (FakeServer, Pgwarden) {
    let fake = FakeServer::start(faults).await;
    let proxy = Pgwarden::with_config(&config(fake.port, "transaction", 2, "")).await;
    (fake, proxy)
}

async fn login(proxy: &Pgwarden) -> Conn {
    let conn = Conn::login(proxy.addr(), USER, DB).await;
    conn.unwrap_or_else(|why| panic!("login through pgwarden: {why}\n{}", proxy.output_tail(20)))
}

/// A fresh client's `echo:next` is answered exactly, by a server other than `not`; returns
/// the connection number that answered.
async fn next_client_gets_a_fresh_server(proxy: &Pgwarden, not: u32) -> u32 {
    let mut c = login(proxy).await;
    c.send(&query("echo:next")).await.unwrap();
    let got = c.read_answer(Until::Ready(1), ANSWER).await;
    let got = got.unwrap_or_else(|why| panic!("the next client: {why}\n{}", proxy.output_tail(20)));
    assert_eq!(shape(&got), "TDCZI", "{got:?}");
    let value = rows(&got)[0][0].clone().unwrap();
    let (conn, text) = value.split_once(':').unwrap();
    assert_eq!(text, "next");
    let conn: u32 = conn.parse().unwrap();
    assert_ne!(
        conn, not,
        "the next client got the server that broke the protocol"
    );
    conn
}

/// A client's query `trigger` makes the fake send `bytes`; the client must get FATAL 08P01
/// whose message starts with `PREFIX` and names the fault (`named`, when given), the next
/// client must be served by another server, and the faulty one must be closed.
async fn server_fault(trigger: &'static str, bytes: Vec<u8>, named: Option<&str>) {
    let (fake, proxy) = start(vec![fault(trigger, bytes)]).await;
    let mut c = login(&proxy).await;
    c.send(&query(trigger)).await.unwrap();
    let wanted = match named {
        Some(name) => format!("{PREFIX}{name}"),
        None => format!("{PREFIX}…"),
    };
    expect_fatal(&mut c, "08P01", &wanted, |m| {
        m.starts_with(PREFIX) && named.is_none_or(|name| m.contains(name))
    })
    .await;
    let faulty = fake
        .conn_of(trigger)
        .expect("the trigger reached the fake server");
    next_client_gets_a_fresh_server(&proxy, faulty).await;
    fake.wait_closed(faulty, ANSWER).await;
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn error_response_without_sqlstate() {
    let bytes = [
        error_fields(b'E', &[(b'S', "ERROR"), (b'V', "ERROR"), (b'M', "boom")]),
        ready(b'I'),
    ]
    .concat();
    server_fault("fault:error", bytes, Some("ErrorResponse without SQLSTATE")).await;
}

#[tokio::test]
async fn notice_response_without_sqlstate() {
    let bytes = [
        error_fields(b'N', &[(b'S', "NOTICE"), (b'V', "NOTICE"), (b'M', "psst")]),
        command_complete("SELECT 0"),
        ready(b'I'),
    ]
    .concat();
    server_fault(
        "fault:notice",
        bytes,
        Some("NoticeResponse without SQLSTATE"),
    )
    .await;
}

#[tokio::test]
async fn message_of_unknown_type() {
    let bytes = [
        msg(b'q', b"what"),
        command_complete("SELECT 0"),
        ready(b'I'),
    ]
    .concat();
    server_fault("fault:unknown", bytes, Some("unknown message type 'q'")).await;
}

#[tokio::test]
async fn ready_for_query_with_invalid_status() {
    let bytes = [command_complete("SELECT 0"), ready(b'X')].concat();
    server_fault(
        "fault:status",
        bytes,
        Some("ReadyForQuery with invalid transaction status 'X'"),
    )
    .await;
}

#[tokio::test]
async fn ready_for_query_with_invalid_length() {
    let mut bytes = command_complete("SELECT 0");
    bytes.extend_from_slice(&[b'Z', 0, 0, 0, 9, b'I', b'I', b'I', b'I', b'I']);
    server_fault(
        "fault:zlength",
        bytes,
        Some("invalid message length 9 for message type 'Z'"),
    )
    .await;
}

#[tokio::test]
async fn length_under_4() {
    let bytes = vec![b'D', 0, 0, 0, 2];
    server_fault(
        "fault:short",
        bytes,
        Some("invalid message length 2 for message type 'D'"),
    )
    .await;
}

#[tokio::test]
async fn authentication_ok_after_login() {
    let bytes = [msg(b'R', &0u32.to_be_bytes()), ready(b'I')].concat();
    server_fault("fault:auth", bytes, None).await;
}

#[tokio::test]
async fn backend_key_data_after_login() {
    let bytes = [msg(b'K', &[0, 0, 0, 9, 0, 0, 0, 9]), ready(b'I')].concat();
    server_fault("fault:key", bytes, None).await;
}

/// The server closes with a message half sent: the client must not get half a message
/// followed by anything. It sees either a FATAL error of class 08 (at a message boundary)
/// and the close, or the close alone, after nothing or after exactly the half message the
/// server sent; the next client gets another server.
#[tokio::test]
async fn server_closes_mid_message() {
    let half = [b'T', 0, 0, 0, 100, 0, 1, b'a', b'b'];
    let mut bytes = parameter_status("application_name", "x");
    bytes.extend_from_slice(&half);
    let (fake, proxy) = start(vec![Fault {
        close: true,
        ..fault("fault:close", bytes)
    }])
    .await;
    let mut c = login(&proxy).await;
    c.send(&query("fault:close")).await.unwrap();
    let got = c.read_answer(Until::Closed, ANSWER).await;
    let got = got.unwrap_or_else(|why| panic!("the client: {why}\n{}", proxy.output_tail(20)));
    let leftover = c.leftover();
    match errors(&got).as_slice() {
        [] => {
            assert!(got.messages.is_empty(), "{got:?}");
            assert!(
                leftover.is_empty() || leftover == half,
                "the client got {leftover:?} at the end"
            );
        }
        [(severity, code, _)] => {
            assert_eq!(severity, "FATAL", "{got:?}");
            assert!(code.starts_with("08"), "{got:?}");
            assert_eq!(got.messages.last().unwrap().tag, b'E', "{got:?}");
            assert!(
                leftover.is_empty(),
                "half a message after the error: {leftover:?}"
            );
        }
        more => panic!("errors {more:?} in {got:?}"),
    }
    let faulty = fake.conn_of("fault:close").unwrap();
    next_client_gets_a_fresh_server(&proxy, faulty).await;
    proxy.assert_healthy().await;
}

/// ReadyForQuery twice for one Query: the client's answer is its own (or it is told the
/// server broke the protocol), that server is closed, and nobody gets the stray one.
#[tokio::test]
async fn more_ready_for_query_than_requests() {
    let bytes = [command_complete("SELECT 0"), ready(b'I'), ready(b'I')].concat();
    let (fake, proxy) = start(vec![fault("fault:twice", bytes)]).await;
    let mut c = login(&proxy).await;
    c.send(&query("fault:twice")).await.unwrap();
    let got = c.read_answer(Until::Ready(1), ANSWER).await;
    match got {
        Ok(answer) => assert_eq!(shape(&answer), "CZI", "{answer:?}"),
        Err(why) => {
            // Only as a FATAL server protocol violation.
            let mut c = c;
            let answer = c.read_answer(Until::Closed, ANSWER).await;
            assert!(
                answer.as_ref().is_ok_and(|a| errors(a)
                    .iter()
                    .any(|(v, code, m)| v == "FATAL" && code == "08P01" && m.starts_with(PREFIX))),
                "{why}; then {answer:?}"
            );
        }
    }
    // The stray ReadyForQuery may be noticed at once or when the server is next checked
    // out: either way the next client gets another server, and that one is closed.
    let faulty = fake.conn_of("fault:twice").unwrap();
    next_client_gets_a_fresh_server(&proxy, faulty).await;
    fake.wait_closed(faulty, ANSWER).await;
    proxy.assert_healthy().await;
}

/// A NoticeResponse arrives while the server sits idle in the pool (Postgres sends one
/// unasked before a fast shutdown, say): it belongs to no client. The next client gets
/// exactly the answer to its own query, with no notice in it.
#[tokio::test]
async fn notice_while_idle_in_the_pool() {
    let later = error_fields(
        b'N',
        &[
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "01000"),
            (b'M', "idle notice"),
        ],
    );
    let (fake, proxy) = start(vec![Fault {
        later: Some(later),
        ..fault(
            "fault:later",
            [command_complete("SELECT 0"), ready(b'I')].concat(),
        )
    }])
    .await;
    let mut c = login(&proxy).await;
    c.send(&query("fault:later")).await.unwrap();
    let got = c.read_answer(Until::Ready(1), ANSWER).await.unwrap();
    assert_eq!(shape(&got), "CZI", "{got:?}");
    let conn = fake.conn_of("fault:later").unwrap();
    // The client has its ReadyForQuery `I`: its server is back in the pool.
    fake.send_later();
    fake.wait_for("the idle notice sent", ANSWER, |e| {
        *e == Event::SentLater(conn)
    })
    .await;
    for client in [&mut c, &mut login(&proxy).await] {
        client.send(&query("echo:after")).await.unwrap();
        let got = client.read_answer(Until::Ready(1), ANSWER).await;
        let got = got.unwrap_or_else(|why| panic!("{why}\n{}", proxy.output_tail(20)));
        assert_eq!(shape(&got), "TDCZI", "{got:?}");
    }
    drop(c);
    proxy.assert_healthy().await;
}
