//! A server that misbehaves while pgwarden logs in to it (a scripted fake per database
//! name) behind the pgwarden binary: an ErrorResponse without SQLSTATE, a 64 KB SCRAM
//! nonce, a huge iteration count, a nonce not extending ours, a forged server signature,
//! AuthenticationOk too early or twice, wrong message types, oversized messages, a close
//! mid-message, a cleartext password request over plain TCP, an unsupported method. Each
//! login fails cleanly: the client gets FATAL with a SQLSTATE and a message naming the
//! fault, and pgwarden goes on serving (`serves` after each, `assert_healthy` at the end).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_server::{error_fields, msg, parameter_status, ready, FakeServer};
use common::process::Pgwarden;
use common::raw::{fields, read_message, startup, PROTOCOL_3_0};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "trust_user";
const ANSWER: Duration = Duration::from_secs(5);

/// What the fake does next during a login.
enum Step {
    Send(Vec<u8>),
    /// Reads one message and sends what this makes of its body.
    Reply(fn(&[u8]) -> Vec<u8>),
    /// Sends these bytes and closes.
    CloseAfter(Vec<u8>),
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    msg(b'R', &body)
}

fn sasl_offer() -> Step {
    Step::Send(auth(10, b"SCRAM-SHA-256\0\0"))
}

/// The client nonce of a SASLInitialResponse body (`name\0`, length, `n,,n=,r=NONCE`).
fn client_nonce(body: &[u8]) -> String {
    let name_end = body.iter().position(|b| *b == 0).unwrap();
    let data = String::from_utf8_lossy(&body[name_end + 5..]).into_owned();
    data.split(",r=").nth(1).unwrap().to_owned()
}

fn server_first(body: &[u8], extra_nonce: &str, iterations: u32) -> Vec<u8> {
    let first = format!(
        "r={}{extra_nonce},s=c2FsdHNhbHRzYWx0,i={iterations}",
        client_nonce(body)
    );
    auth(11, first.as_bytes())
}

fn logged_in() -> Vec<u8> {
    let mut out = auth(0, b"");
    out.extend(parameter_status("server_version", "15.0 (fake)"));
    out.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    out.extend(ready(b'I'));
    out
}

/// The script for each database name, the SQLSTATE the client must get, and a part of
/// the message it must see.
fn cases() -> Vec<(&'static str, Vec<Step>, &'static str, &'static str)> {
    vec![
        (
            "no_sqlstate",
            vec![Step::Send(error_fields(
                b'E',
                &[(b'S', "FATAL"), (b'M', "who knows")],
            ))],
            "08P01",
            "ErrorResponse without a valid SQLSTATE during login: \"who knows\"",
        ),
        (
            "nonce_64k",
            vec![
                sasl_offer(),
                Step::Reply(|body| server_first(body, &"x".repeat(65_536), 4096)),
            ],
            "08P01",
            "during login (the most accepted is 2000)",
        ),
        (
            "iterations",
            vec![
                sasl_offer(),
                Step::Reply(|body| server_first(body, "srv", 2_000_000_000)),
            ],
            "28000",
            "server asks for 2000000000 SCRAM iterations; pgwarden computes at most 100000",
        ),
        (
            "foreign_nonce",
            vec![
                sasl_offer(),
                Step::Reply(|_| auth(11, b"r=notyournonce,s=c2FsdA==,i=4096")),
            ],
            "28000",
            "SCRAM server nonce does not extend pgwarden's",
        ),
        (
            "forged_signature",
            vec![
                sasl_offer(),
                Step::Reply(|body| server_first(body, "srv", 4096)),
                Step::Reply(|_| auth(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            ],
            "28000",
            "SCRAM server signature invalid",
        ),
        (
            "ok_too_early",
            vec![sasl_offer(), Step::Reply(|_| logged_in())],
            "08P01",
            "AuthenticationOk before the SCRAM exchange completed",
        ),
        (
            "ok_twice",
            vec![Step::Send([auth(0, b""), auth(0, b"")].concat())],
            "08P01",
            "unexpected message type 'R' after authentication",
        ),
        (
            "data_row",
            vec![Step::Send(msg(b'D', &[0, 0]))],
            "08P01",
            "unexpected message type 'D' during login",
        ),
        (
            "huge_error",
            vec![Step::Send(b"E\x3f\xff\xff\xff".to_vec())],
            "08P01",
            "(the most accepted is 30000)",
        ),
        (
            "close_mid_message",
            vec![Step::CloseAfter(b"R\0\0\0\x0c\0\0\0".to_vec())],
            "08P01",
            "connection closed in the middle of a message",
        ),
        (
            "cleartext",
            vec![Step::Send(auth(3, b""))],
            "28000",
            "unless server_allow_cleartext_password is set",
        ),
        (
            "gssapi",
            vec![Step::Send(auth(7, b""))],
            "28000",
            "server asks for GSSAPI authentication, which pgwarden does not support",
        ),
        (
            "channel_binding_only",
            vec![Step::Send(auth(10, b"SCRAM-SHA-256-PLUS\0\0"))],
            "28000",
            "pgwarden does not implement channel binding",
        ),
    ]
}

/// Serves each connection the script of the database its startup packet names.
async fn start_login_server(scripts: Vec<(&'static str, Vec<Step>)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let scripts = Arc::new(scripts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let scripts = scripts.clone();
            tokio::spawn(async move {
                let _ = play(stream, &scripts).await;
            });
        }
    });
    port
}

/// The SSLRequest code: answered `N`, as a Postgres without TLS does (pgwarden asks first
/// under the default `server_tls_sslmode = prefer`).
const SSL_REQUEST: [u8; 4] = 80_877_103u32.to_be_bytes();

async fn play(mut stream: TcpStream, scripts: &[(&str, Vec<Step>)]) -> std::io::Result<()> {
    let body = loop {
        let len = stream.read_u32().await? as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        if body != SSL_REQUEST {
            break body;
        }
        stream.write_all(b"N").await?;
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let database = text.split('\0').skip_while(|k| *k != "database").nth(1);
    let Some((_, script)) = scripts.iter().find(|(name, _)| Some(*name) == database) else {
        return Ok(());
    };
    for step in script {
        match step {
            Step::Send(bytes) => stream.write_all(bytes).await?,
            Step::CloseAfter(bytes) => {
                stream.write_all(bytes).await?;
                return Ok(());
            }
            Step::Reply(reply) => {
                let _tag = stream.read_u8().await?;
                let len = stream.read_u32().await? as usize;
                let mut body = vec![0u8; len.saturating_sub(4)];
                stream.read_exact(&mut body).await?;
                stream.write_all(&reply(&body)).await?;
            }
        }
    }
    // Hold the connection until pgwarden closes it.
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// pgwarden in front of the fake Postgres (`*`, trust, for the health checks) and the
/// login server (one route per case); `extra` is added at the top level.
async fn proxy(fake: &FakeServer, login_port: u16, names: &[&str], extra: &str) -> Pgwarden {
    let mut toml = format!(
        "auth_type = \"trust\"\npool_size = 2\nworkers = 1\nquery_wait_timeout = \"5s\"\n\
         shutdown_timeout = \"2s\"\nserver_login_retry = \"100ms\"\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        fake.port
    );
    for name in names {
        toml += &format!("[databases.{name}]\nhost = \"127.0.0.1\"\nport = {login_port}\n");
    }
    toml += &format!("[users.{USER}]\npassword = \"pw\"\n");
    Pgwarden::with_config(&toml).await
}

/// Logs in to `database` and returns the ErrorResponse fields pgwarden answers with.
async fn refusal(proxy: &Pgwarden, database: &str) -> std::collections::HashMap<u8, String> {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let hello = startup(PROTOCOL_3_0, &[("user", USER), ("database", database)]);
    stream.write_all(&hello).await.unwrap();
    loop {
        match read_message(&mut stream, ANSWER).await {
            Some((b'E', body)) => return fields(&body),
            Some((b'Z', _)) => panic!("{database}: logged in, expected a refusal"),
            Some(_) => {}
            None => panic!("{database}: closed without an error"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_during_login_is_refused_cleanly() {
    let fake = FakeServer::start(Vec::new()).await;
    let cases = cases();
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let mut scripts = Vec::new();
    let mut expected = Vec::new();
    for (name, script, code, text) in cases {
        scripts.push((name, script));
        expected.push((name, code, text));
    }
    let login_port = start_login_server(scripts).await;
    let proxy = proxy(&fake, login_port, &names, "").await;
    for (name, code, text) in expected {
        let got = refusal(&proxy, name).await;
        let get = |c: u8| got.get(&c).cloned().unwrap_or_default();
        assert_eq!(get(b'V'), "FATAL", "{name}: {got:?}");
        assert_eq!(get(b'C'), code, "{name}: {got:?}");
        assert!(
            get(b'M').contains(text),
            "{name}: expected {text:?} in {got:?}"
        );
        if let Err(why) = proxy.serves(USER, "postgres", ANSWER).await {
            panic!("after {name}: {why}\n{}", proxy.output_tail(30));
        }
    }
    proxy.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_goes_over_plain_tcp_only_when_allowed() {
    let fake = FakeServer::start(Vec::new()).await;
    let script = vec![
        Step::Send(auth(3, b"")),
        Step::Reply(|body| match body {
            b"pw\0" => logged_in(),
            _ => error_fields(b'E', &[(b'S', "FATAL"), (b'C', "28P01"), (b'M', "bad")]),
        }),
    ];
    let login_port = start_login_server(vec![("cleartext", script)]).await;
    let refusing = proxy(&fake, login_port, &["cleartext"], "").await;
    let got = refusal(&refusing, "cleartext").await;
    assert_eq!(got.get(&b'C').map(String::as_str), Some("28000"), "{got:?}");
    let allowing = proxy(
        &fake,
        login_port,
        &["cleartext"],
        "server_allow_cleartext_password = true",
    )
    .await;
    let within = ANSWER;
    // The fake answers only the login; `serves` wants SELECT 1, so log in by hand.
    let mut stream = TcpStream::connect(allowing.addr()).await.unwrap();
    let hello = startup(PROTOCOL_3_0, &[("user", USER), ("database", "cleartext")]);
    stream.write_all(&hello).await.unwrap();
    loop {
        match read_message(&mut stream, within).await {
            Some((b'Z', _)) => break,
            Some((b'E', body)) => panic!("refused: {:?}", fields(&body)),
            Some(_) => {}
            None => panic!("closed before ReadyForQuery"),
        }
    }
    refusing.assert_healthy().await;
}
