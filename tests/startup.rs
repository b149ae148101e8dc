//! The edges of the startup phase, spoken byte by byte: SSL and GSS encryption requests,
//! protocol versions, malformed packets and garbage, a missing user, and the other ways in
//! (IPv6, the Unix socket).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use common::clients::{session_config as config, session_setup};
use common::raw::{
    fields, packet, query, raw_query, read_message, read_until_ready, startup, tags,
    GSSENC_REQUEST, PROTOCOL_3_0, PROTOCOL_3_1, SSL_REQUEST,
};
use common::{describe, pg_bin, start_proxy, PgServer, Proxy};

/// How long a raw read waits before the test fails.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// A throwaway Postgres and a pgwarden in front of it: `trust` for the raw clients
/// (`trust_user` needs no password at the server either), and `app` for libpq-style clients.
async fn setup(auth_type: &str) -> (PgServer, Proxy) {
    session_setup(auth_type).await
}

/// Whatever the peer still sends before closing (bounded by the read deadline).
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(READ_DEADLINE, stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| {
            panic!("pgwarden did not close the connection within {READ_DEADLINE:?}")
        })
        .ok();
    rest
}

/// Asserts `bytes` is exactly one ErrorResponse with `code`, and returns its fields.
fn expect_error(bytes: &[u8], code: &str) -> HashMap<u8, String> {
    assert!(
        bytes.first() == Some(&b'E'),
        "expected an ErrorResponse, got {bytes:?}"
    );
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    assert_eq!(
        len + 1,
        bytes.len(),
        "one ErrorResponse, then close: {bytes:?}"
    );
    let fields = fields(&bytes[5..]);
    assert_eq!(
        fields.get(&b'C').map(String::as_str),
        Some(code),
        "{fields:?}"
    );
    fields
}

/// The SQLSTATE of a response that starts with an ErrorResponse.
fn error_code_of(bytes: &[u8]) -> Option<String> {
    match bytes.first() {
        Some(b'E') if bytes.len() > 5 => fields(&bytes[5..]).get(&b'C').cloned(),
        _ => None,
    }
}

/// The value of the single cell of a one-row result (`T D C Z`).
fn single_value(messages: &[(u8, Vec<u8>)]) -> String {
    let row = messages
        .iter()
        .find(|(t, _)| *t == b'D')
        .unwrap_or_else(|| panic!("no DataRow in {}", tags(messages)));
    let body = &row.1;
    assert_eq!(&body[..2], &[0, 1], "one column");
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
    String::from_utf8(body[6..6 + len].to_vec()).unwrap()
}

/// Logs `trust_user` in over `stream` (after whatever negotiation the caller did), expecting
/// the usual AuthenticationOk … ReadyForQuery.
async fn login_trust(stream: &mut TcpStream, version: i32, extra: &[(&str, &str)]) {
    let mut params = vec![("user", "trust_user"), ("database", "appdb")];
    params.extend_from_slice(extra);
    stream.write_all(&startup(version, &params)).await.unwrap();
    expect_login_ok(read_until_ready(stream, READ_DEADLINE).await);
}

fn expect_login_ok(messages: Vec<(u8, Vec<u8>)>) {
    let (tag, body) = &messages[0];
    assert_eq!(
        (*tag, &body[..]),
        (b'R', &0i32.to_be_bytes()[..]),
        "AuthenticationOk first: {}",
        tags(&messages)
    );
    assert!(
        messages.iter().any(|(t, _)| *t == b'K'),
        "BackendKeyData: {}",
        tags(&messages)
    );
    assert_eq!(messages.last().unwrap().1, b"I", "ReadyForQuery idle");
}

/// A query on a raw logged-in connection returns its single value.
async fn raw_select(stream: &mut TcpStream, sql: &str) -> String {
    single_value(&raw_query(stream, sql, READ_DEADLINE).await)
}

async fn dial(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.addr).await.unwrap()
}

/// pgwarden still logs in a normal client and answers it.
async fn still_serves(proxy: &Proxy) {
    let client = proxy.connect("app", "app_pw", "appdb").await;
    let row = client.query_one("select 'alive'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_request_is_refused_with_n_and_startup_continues() {
    let (_pg, proxy) = setup("trust").await;
    let mut stream = dial(&proxy).await;
    stream.write_all(&packet(SSL_REQUEST, b"")).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');

    login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
    assert_eq!(
        raw_select(&mut stream, "select 'over plain tcp'").await,
        "over plain tcp"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_refused_with_n_and_startup_continues() {
    let (_pg, proxy) = setup("trust").await;
    let mut stream = dial(&proxy).await;
    stream
        .write_all(&packet(GSSENC_REQUEST, b""))
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');

    // libpq may try GSS, then SSL, then plain: both refusals on one connection.
    stream.write_all(&packet(SSL_REQUEST, b"")).await.unwrap();
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');

    login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
    assert_eq!(raw_select(&mut stream, "select 2 + 2").await, "4");
}

fn psql(conninfo: &str) -> Output {
    Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", "select 'psql ok'"])
        .env("PGPASSWORD", "app_pw")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGGSSENCMODE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .output()
        .expect("run psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sslmode_prefer_falls_back_and_require_fails_client_side() {
    let (_pg, proxy) = setup("scram-sha-256").await;
    let base = format!(
        "host=127.0.0.1 port={} user=app dbname=appdb",
        proxy.addr.port()
    );
    let (prefer, require) = tokio::task::spawn_blocking(move || {
        (
            psql(&format!("{base} sslmode=prefer")),
            psql(&format!("{base} sslmode=require")),
        )
    })
    .await
    .unwrap();

    let stderr = String::from_utf8_lossy(&prefer.stderr);
    assert!(prefer.status.success(), "sslmode=prefer failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&prefer.stdout), "psql ok\n");

    let stderr = String::from_utf8_lossy(&require.stderr);
    assert!(!require.status.success(), "sslmode=require succeeded");
    assert!(
        stderr.contains("server does not support SSL, but SSL was required"),
        "{stderr}"
    );
    assert!(require.stdout.is_empty());
}

/// The body of a NegotiateProtocolVersion: newest minor version, unrecognised options.
fn negotiate_body(body: &[u8]) -> (i32, Vec<String>) {
    let minor = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let count = i32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let names: Vec<String> = body[8..]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    assert_eq!(names.len(), count, "option count in {body:?}");
    (minor, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_1_is_negotiated_down_to_3_0() {
    let (_pg, proxy) = setup("trust").await;

    // 3.1 with two protocol options: NegotiateProtocolVersion(0, both), then a 3.0 session.
    let mut stream = dial(&proxy).await;
    let params = [
        ("user", "trust_user"),
        ("database", "appdb"),
        ("_pq_.first_option", "on"),
        ("_pq_.second", "1"),
    ];
    stream
        .write_all(&startup(PROTOCOL_3_1, &params))
        .await
        .unwrap();
    let mut messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    let (tag, body) = messages.remove(0);
    assert_eq!(tag, b'v', "NegotiateProtocolVersion first");
    let (minor, mut options) = negotiate_body(&body);
    options.sort();
    assert_eq!(minor, 0);
    assert_eq!(options, ["_pq_.first_option", "_pq_.second"]);
    expect_login_ok(messages);
    assert_eq!(
        raw_select(&mut stream, "select 'three oh'").await,
        "three oh"
    );

    // 3.1 without options: the message lists none.
    let mut stream = dial(&proxy).await;
    stream
        .write_all(&startup(PROTOCOL_3_1, &params[..2]))
        .await
        .unwrap();
    let mut messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    let (tag, body) = messages.remove(0);
    assert_eq!(tag, b'v');
    assert_eq!(negotiate_body(&body), (0, vec![]));
    expect_login_ok(messages);

    // 3.0 with an option: negotiated too, as Postgres does.
    let mut stream = dial(&proxy).await;
    stream
        .write_all(&startup(PROTOCOL_3_0, &[params[0], params[1], params[3]]))
        .await
        .unwrap();
    let mut messages = read_until_ready(&mut stream, READ_DEADLINE).await;
    let (tag, body) = messages.remove(0);
    assert_eq!(tag, b'v');
    assert_eq!(negotiate_body(&body), (0, vec!["_pq_.second".to_owned()]));
    expect_login_ok(messages);

    // Plain 3.0: no negotiation message at all.
    let mut stream = dial(&proxy).await;
    login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
}

/// The ParameterStatus values among login messages, by name.
fn parameter_statuses(messages: &[(u8, Vec<u8>)]) -> HashMap<String, String> {
    messages
        .iter()
        .filter(|(t, _)| *t == b'S')
        .map(|(_, body)| {
            let mut parts = body.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s));
            let name = parts.next().unwrap_or_default().into_owned();
            (name, parts.next().unwrap_or_default().into_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reports_the_same_parameters_as_postgres() {
    let (pg, proxy) = setup("trust").await;
    let params = [
        ("user", "trust_user"),
        ("database", "appdb"),
        ("application_name", "raw-client"),
        ("client_encoding", "LATIN1"),
        ("DateStyle", "SQL, DMY"),
        ("options", "-c search_path=pg_catalog,public"),
    ];
    let hello = startup(PROTOCOL_3_0, &params);

    let mut direct = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
    direct.write_all(&hello).await.unwrap();
    let direct_login = read_until_ready(&mut direct, READ_DEADLINE).await;
    let mut through = dial(&proxy).await;
    through.write_all(&hello).await.unwrap();
    let proxy_login = read_until_ready(&mut through, READ_DEADLINE).await;
    expect_login_ok(proxy_login.clone());

    let expected = parameter_statuses(&direct_login);
    assert_eq!(expected["application_name"], "raw-client");
    assert_eq!(expected["client_encoding"], "LATIN1");
    assert_eq!(parameter_statuses(&proxy_login), expected);
    for (sql, value) in [
        ("show application_name", "raw-client"),
        ("show client_encoding", "LATIN1"),
        ("show datestyle", "SQL, DMY"),
        ("show search_path", "pg_catalog,public"),
    ] {
        assert_eq!(raw_select(&mut direct, sql).await, value, "direct: {sql}");
        assert_eq!(
            raw_select(&mut through, sql).await,
            value,
            "pgwarden: {sql}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_right_behind_the_startup_packet_is_answered() {
    // With trust there is no authentication round trip, so a client may send its first
    // query in the same write as its StartupMessage.
    let (_pg, proxy) = setup("trust").await;
    let mut stream = dial(&proxy).await;
    let mut bytes = startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "appdb")],
    );
    bytes.extend(query("select 'eager'"));
    stream.write_all(&bytes).await.unwrap();
    expect_login_ok(read_until_ready(&mut stream, READ_DEADLINE).await);
    let answer = read_until_ready(&mut stream, READ_DEADLINE).await;
    assert_eq!(tags(&answer), "TDCZ");
    assert_eq!(single_value(&answer), "eager");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_packet_trickling_in_byte_by_byte_is_read_whole() {
    let (_pg, proxy) = setup("trust").await;
    let mut stream = dial(&proxy).await;
    stream.set_nodelay(true).unwrap();
    let mut bytes = packet(SSL_REQUEST, b"");
    bytes.extend(startup(
        PROTOCOL_3_0,
        &[("user", "trust_user"), ("database", "appdb")],
    ));
    let (ssl, rest) = bytes.split_at(8);
    for byte in ssl {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');
    for byte in rest {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    expect_login_ok(read_until_ready(&mut stream, READ_DEADLINE).await);
    assert_eq!(raw_select(&mut stream, "select 'whole'").await, "whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_are_08p01_as_in_postgres() {
    let (pg, proxy) = setup("trust").await;
    let unterminated = {
        let mut p = startup(PROTOCOL_3_0, &[("user", "trust_user")]);
        p.pop();
        p[3] -= 1;
        p
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing final terminator", unterminated),
        ("key without a value", packet(PROTOCOL_3_0, b"user\0")),
    ];
    let mut wrong = Vec::new();
    for (what, bytes) in cases {
        // What Postgres itself answers, then what pgwarden answers.
        let mut direct = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
        direct.write_all(&bytes).await.unwrap();
        let postgres_says = error_code_of(&read_to_end(&mut direct).await);
        assert_eq!(
            postgres_says.as_deref(),
            Some("08P01"),
            "Postgres on {what}"
        );
        let mut stream = dial(&proxy).await;
        stream.write_all(&bytes).await.unwrap();
        let answer = read_to_end(&mut stream).await;
        if error_code_of(&answer) != postgres_says {
            wrong.push(format!(
                "{what}: got {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused with 08P01 as Postgres does:\n{}",
        wrong.join("\n")
    );
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_startup_is_not_silently_turned_into_a_plain_session() {
    // Postgres answers `replication=database` with a walsender (or an error saying why
    // not); a pooler that cannot relay replication must refuse it, not hand out a normal
    // session that then fails on IDENTIFY_SYSTEM.
    let (pg, proxy) = setup("trust").await;
    let hello = startup(
        PROTOCOL_3_0,
        &[
            ("user", "trust_user"),
            ("database", "appdb"),
            ("replication", "database"),
        ],
    );
    let mut direct = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
    direct.write_all(&hello).await.unwrap();
    let postgres_says = read_to_end(&mut direct).await;
    // (Here: max_wal_senders = 0, so 53300; a role without REPLICATION would get 42501.)
    assert!(
        error_code_of(&postgres_says).is_some(),
        "Postgres refuses this replication connection: {postgres_says:?}"
    );

    let mut stream = dial(&proxy).await;
    stream.write_all(&hello).await.unwrap();
    let first = read_message(&mut stream, READ_DEADLINE).await;
    match first {
        Some((b'E', body)) => {
            let fields = fields(&body);
            assert_eq!(fields[&b'S'], "FATAL", "{fields:?}");
        }
        other => {
            let login = read_until_ready(&mut stream, READ_DEADLINE).await;
            panic!(
                "pgwarden accepted a replication connection as a plain session: {:?} then {}",
                other.map(|(t, _)| t as char),
                tags(&login)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_2_0_is_refused_with_0a000() {
    let (_pg, proxy) = setup("trust").await;
    let mut stream = dial(&proxy).await;
    // A v2 startup packet is 296 bytes: database, user, options, unused, tty.
    let mut body = vec![0u8; 288];
    body[..5].copy_from_slice(b"appdb");
    body[64..74].copy_from_slice(b"trust_user");
    stream.write_all(&packet(2 << 16, &body)).await.unwrap();
    let fields = expect_error(&read_to_end(&mut stream).await, "0A000");
    let message = &fields[&b'M'];
    assert!(
        message.contains("unsupported frontend protocol 2.0"),
        "{message}"
    );
    assert_eq!(fields[&b'S'], "FATAL");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_lengths_out_of_range_are_refused_and_others_still_served() {
    let (_pg, proxy) = setup("scram-sha-256").await;
    let bystander = proxy.connect("app", "app_pw", "appdb").await;

    for len in [0u32, 4, 7, 10_005, 1 << 20, u32::MAX] {
        let mut stream = dial(&proxy).await;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        // Refused or not, writing may race with the close.
        let _ = stream.write_all(&bytes).await;
        let answer = read_to_end(&mut stream).await;
        if !answer.is_empty() {
            let fields = expect_error(&answer, "08P01");
            assert!(fields[&b'M'].contains("length"), "{fields:?}");
        }
    }

    let row = bystander
        .query_one("select 'bystander'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "bystander");
    still_serves(&proxy).await;
}

/// A StartupMessage for `trust_user` padded with a custom setting `x.pad` to exactly `len`
/// bytes, and the length of the padding.
fn startup_of_length(len: usize) -> (Vec<u8>, usize) {
    let mut params = vec![("user", "trust_user"), ("database", "appdb"), ("x.pad", "")];
    let pad = "p".repeat(len - startup(PROTOCOL_3_0, &params).len());
    params[2].1 = &pad;
    let packet = startup(PROTOCOL_3_0, &params);
    assert_eq!(packet.len(), len);
    (packet, pad.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packets_as_long_as_postgres_takes_are_accepted() {
    // Postgres' MAX_STARTUP_PACKET_LENGTH (10000) bounds the packet without its length word:
    // 10004 bytes in all is the longest it accepts.
    let (pg, proxy) = setup("trust").await;
    let (longest, pad_len) = startup_of_length(10_004);
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], pg.port));
    let mut refused = Vec::new();
    for (name, addr) in [("Postgres", direct), ("pgwarden", proxy.addr)] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&longest).await.unwrap();
        let first = read_message(&mut stream, READ_DEADLINE).await;
        if first.as_ref().map(|(tag, _)| *tag) != Some(b'R') {
            let said = match &first {
                Some((b'E', body)) => format!("{:?}", fields(body)[&b'M']),
                other => format!("{other:?}"),
            };
            refused.push(format!("{name}: {said}"));
            continue;
        }
        read_until_ready(&mut stream, READ_DEADLINE).await;
        let sql = "select length(current_setting('x.pad'))::text";
        assert_eq!(
            raw_select(&mut stream, sql).await,
            pad_len.to_string(),
            "{name}"
        );

        // One byte more is refused (Postgres closes; pgwarden may say why first).
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&startup_of_length(10_005).0).await;
        let answer = read_to_end(&mut stream).await;
        if !answer.is_empty() {
            expect_error(&answer, "08P01");
        }
    }
    assert!(
        refused.is_empty(),
        "a 10004-byte StartupMessage was refused:\n{}",
        refused.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_length_after_login_is_08p01_then_close() {
    let (pg, proxy) = setup("trust").await;

    let mut stream = dial(&proxy).await;
    login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
    stream.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let fields = expect_error(&read_to_end(&mut stream).await, "08P01");
    assert_eq!(fields[&b'S'], "FATAL");

    // A length over max_packet_size (1 GiB by default) is refused before anything is read.
    let mut stream = dial(&proxy).await;
    login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
    stream
        .write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    expect_error(&read_to_end(&mut stream).await, "08P01");

    still_serves(&proxy).await;
    // The proxy's servers went back to the pool or were closed: no more than the pool.
    assert!(pg.backend_count("trust_user").await <= 5);
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_crashes_the_proxy() {
    let (_pg, proxy) = setup("trust").await;
    let bystander = proxy.connect("app", "app_pw", "appdb").await;

    let started = Instant::now();
    for seed in 0..40u64 {
        let len = 1 + (seed as usize * 37) % 300;
        let mut bytes = garbage(seed, len);
        if seed % 4 == 1 {
            // A plausible length, so the junk reaches the packet parser.
            bytes.splice(..4.min(len), ((len as u32).max(8)).to_be_bytes());
        }
        let mut stream = dial(&proxy).await;
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await; // end of input: the proxy must not wait for more
        let answer = read_to_end(&mut stream).await;
        if let Some(&tag) = answer.first() {
            assert!(
                tag == b'E' || tag == b'N' || tag == b'v',
                "seed {seed}: unexpected answer {answer:?}"
            );
        }
    }

    // Garbage after a successful login: it goes to the server, which complains or hangs up.
    for seed in 100..110u64 {
        let mut stream = dial(&proxy).await;
        login_trust(&mut stream, PROTOCOL_3_0, &[]).await;
        let _ = stream.write_all(&garbage(seed, 200)).await;
        let _ = stream.shutdown().await;
        read_to_end(&mut stream).await;
    }
    assert!(started.elapsed() < Duration::from_secs(30));

    let row = bystander.query_one("select 'unharmed'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "unharmed");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_without_a_user_is_refused_with_28000() {
    let (_pg, proxy) = setup("trust").await;
    for params in [
        &[("database", "appdb")][..],
        &[("user", ""), ("database", "appdb")],
    ] {
        let mut stream = dial(&proxy).await;
        stream
            .write_all(&startup(PROTOCOL_3_0, params))
            .await
            .unwrap();
        let fields = expect_error(&read_to_end(&mut stream).await, "28000");
        assert_eq!(
            fields[&b'M'],
            "no PostgreSQL user name specified in startup packet"
        );
        assert_eq!(fields[&b'S'], "FATAL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_clients_on_ipv6() {
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(listener) => listener,
        Err(e) => {
            println!("skipped: cannot bind [::1]:0 on this machine ({e})");
            return;
        }
    };
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = pgwarden::config::from_toml(&config(&pg, "scram-sha-256", "")).unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(pgwarden::run(
        vec![listener],
        Arc::new(config),
        shutdown.clone(),
    ));

    let client = common::try_connect_tcp("::1", port, "app", "app_pw", "appdb")
        .await
        .unwrap_or_else(|e| panic!("connect to [::1]:{port}: {}", describe(&e)));
    let row = client
        .query_one("select current_user::text, $1::text", &[&"v6"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("app".to_owned(), "v6".to_owned())
    );
    drop(client);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("pgwarden stops")
        .unwrap()
        .unwrap();
}

/// Waits for a path to appear (the proxy binds its Unix socket as it starts running).
async fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within 5s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_clients_on_a_unix_socket_and_removes_it_on_stop() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("unix_socket_dir = {:?}", dir.path().to_str().unwrap());
    let proxy = start_proxy(&config(&pg, "scram-sha-256", &extra)).await;
    let port = proxy.addr.port();
    let socket = dir.path().join(format!(".s.PGSQL.{port}"));
    wait_for(&socket).await;

    // psql, the way a libpq user would point at a socket directory.
    let dir_path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(&dir_path)
            .args(["-p", &port.to_string(), "-U", "app", "appdb", "-c"])
            .arg("select 'via socket', current_user")
            .env("PGPASSWORD", "app_pw")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .output()
            .expect("run psql")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "psql over the socket failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via socket|app\n");

    // tokio-postgres with host=<dir>.
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir.path())
        .port(port)
        .user("app")
        .password("app_pw")
        .dbname("appdb")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect over the socket: {}", describe(&e)));
    let conn = tokio::spawn(connection);
    let row = client.query_one("select 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    drop(client);
    let _ = conn.await;

    proxy.stop().await;
    assert!(!socket.exists(), "{} left behind", socket.display());
}
