//! End-to-end tests of [`super::authenticate`]: a real client counterpart (postgres-protocol's
//! SCRAM client, hand-written password and md5 messages) over an in-memory duplex.

use bytes::{BufMut as _, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncWriteExt as _, DuplexStream};
use tokio::task::JoinHandle;

use super::client::ProtocolError;
use super::messages::MessageError;
use super::*;
use crate::auth::AuthType;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::sqlstate;
use crate::protocol::tags::{auth, backend};

/// pgwarden's default max_packet_size: the caps before login must hold whatever it is.
const MAX_PACKET: u32 = 1 << 30;

/// The client's end of a connection whose server end runs `authenticate`.
struct TestClient {
    io: DuplexStream,
    buf: BytesMut,
}

fn start(
    method: AuthType,
    user: &'static str,
    secret: Option<Secret>,
) -> (TestClient, JoinHandle<Result<(), AuthError>>) {
    let (client, mut server) = tokio::io::duplex(4096);
    let task = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        authenticate(
            &mut server,
            &mut buf,
            &Logins::new(&[]),
            method,
            user,
            secret.as_ref(),
            MAX_PACKET,
        )
        .await
    });
    (
        TestClient {
            io: client,
            buf: BytesMut::new(),
        },
        task,
    )
}

impl TestClient {
    /// The next authentication request: its code and the data after the code.
    async fn request(&mut self) -> (i32, BytesMut) {
        let mut msg = read_message(&mut self.io, &mut self.buf, MAX_PACKET)
            .await
            .unwrap();
        assert_eq!(msg.tag, backend::AUTHENTICATION);
        let code = i32::from_be_bytes(msg.body[..4].try_into().unwrap());
        (code, msg.body.split_off(4))
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_u32(4 + body.len() as u32);
        out.put_slice(body);
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_password(&mut self, password: &[u8]) {
        self.send(b'p', &[password, b"\0"].concat()).await;
    }

    async fn send_sasl_initial(&mut self, mechanism: &str, data: &[u8]) {
        self.send(b'p', &sasl_initial(mechanism, data)).await;
    }

    /// Answers a SASL request as libpq would; returns the client for a final check.
    async fn scram(&mut self, password: &str) -> ScramSha256 {
        let (code, mechanisms) = self.request().await;
        assert_eq!(
            (code, &mechanisms[..]),
            (auth::SASL, &b"SCRAM-SHA-256\0\0"[..])
        );
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unrequested());
        self.send_sasl_initial("SCRAM-SHA-256", scram.message())
            .await;
        let (code, server_first) = self.request().await;
        assert_eq!(code, auth::SASL_CONTINUE);
        scram.update(&server_first).unwrap();
        self.send(b'p', scram.message()).await;
        scram
    }

    /// Answers an MD5 request with `password` as libpq would.
    async fn md5(&mut self, user: &str, password: &str) {
        let (code, salt) = self.request().await;
        assert_eq!(code, auth::MD5_PASSWORD);
        let response = md5_hash(
            user.as_bytes(),
            password.as_bytes(),
            salt[..].try_into().unwrap(),
        );
        self.send_password(response.as_bytes()).await;
    }

    /// Answers a cleartext request.
    async fn cleartext(&mut self, password: &str) {
        assert_eq!(self.request().await.0, auth::CLEARTEXT_PASSWORD);
        self.send_password(password.as_bytes()).await;
    }

    /// Asserts the server wrote nothing more (in particular no AuthenticationOk) and hung up.
    async fn assert_closed(mut self) {
        let end = read_message(&mut self.io, &mut self.buf, MAX_PACKET).await;
        assert!(matches!(end, Err(ReadError::Closed)), "{end:?}");
    }
}

/// A SASLInitialResponse body.
fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = [mechanism.as_bytes(), b"\0"].concat();
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    body
}

fn scram_secret(password: &str) -> Secret {
    Secret::parse(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
    .unwrap()
}

fn md5_secret(user: &str, password: &str) -> Secret {
    Secret::parse(&postgres_protocol::password::md5(password.as_bytes(), user)).unwrap()
}

async fn scram_login(
    user: &'static str,
    secret: Option<Secret>,
    password: &str,
) -> Result<(), AuthError> {
    let (mut client, server) = start(AuthType::ScramSha256, user, secret);
    let mut scram = client.scram(password).await;
    let result = server.await.unwrap();
    if result.is_ok() {
        let (code, server_final) = client.request().await;
        assert_eq!(code, auth::SASL_FINAL);
        scram
            .finish(&server_final)
            .expect("server signature verifies");
    }
    client.assert_closed().await;
    result
}

async fn md5_login(
    user: &'static str,
    secret: Option<Secret>,
    password: &str,
) -> Result<(), AuthError> {
    let (mut client, server) = start(AuthType::Md5, user, secret);
    client.md5(user, password).await;
    let result = server.await.unwrap();
    client.assert_closed().await;
    result
}

async fn cleartext_login(
    user: &'static str,
    secret: Option<Secret>,
    password: &str,
) -> Result<(), AuthError> {
    let (mut client, server) = start(AuthType::Password, user, secret);
    client.cleartext(password).await;
    let result = server.await.unwrap();
    client.assert_closed().await;
    result
}

/// What a client sees for a wrong password; unknown users must see exactly this too.
fn assert_password_failed(result: Result<(), AuthError>, expected: fn(&AuthError) -> bool) {
    let err = result.unwrap_err();
    assert!(expected(&err), "{err:?}");
    let pg = err.to_pg_error("alice");
    assert_eq!(pg, AuthError::WrongPassword.to_pg_error("alice"));
    assert_eq!(pg.code, sqlstate::INVALID_PASSWORD);
    assert_eq!(
        pg.message,
        "password authentication failed for user \"alice\""
    );
}

fn wrong(e: &AuthError) -> bool {
    matches!(e, AuthError::WrongPassword)
}

fn unknown(e: &AuthError) -> bool {
    matches!(e, AuthError::UnknownUser)
}

#[tokio::test]
async fn trust_needs_no_exchange() {
    let (client, server) = start(AuthType::Trust, "alice", None);
    server.await.unwrap().unwrap();
    client.assert_closed().await;
}

#[tokio::test]
async fn scram_against_a_stored_verifier() {
    scram_login("alice", Some(scram_secret("pw")), "pw")
        .await
        .unwrap();
    assert_password_failed(
        scram_login("alice", Some(scram_secret("pw")), "nope").await,
        wrong,
    );
    assert_password_failed(scram_login("alice", None, "pw").await, unknown);
}

#[tokio::test]
async fn scram_against_a_plain_password() {
    let plain = || Some(Secret::Plain("pw".into()));
    scram_login("alice", plain(), "pw").await.unwrap();
    assert_password_failed(scram_login("alice", plain(), "nope").await, wrong);
}

#[tokio::test]
async fn scram_with_an_md5_hash_fails_like_a_wrong_password() {
    let result = scram_login("alice", Some(md5_secret("alice", "pw")), "pw").await;
    assert_password_failed(result, |e| matches!(e, AuthError::NoScramSecret));
}

#[tokio::test]
async fn scram_without_initial_data_gets_an_empty_challenge() {
    let (mut client, server) = start(AuthType::ScramSha256, "alice", Some(scram_secret("pw")));
    assert_eq!(client.request().await.0, auth::SASL);
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(-1i32).to_be_bytes());
    client.send(b'p', &body).await;
    assert_eq!(
        client.request().await,
        (auth::SASL_CONTINUE, BytesMut::new())
    );
    let mut scram = ScramSha256::new(b"pw", ChannelBinding::unrequested());
    client.send(b'p', scram.message()).await;
    let (_, server_first) = client.request().await;
    scram.update(&server_first).unwrap();
    client.send(b'p', scram.message()).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn md5_against_plain_and_hashed_passwords() {
    let plain = || Some(Secret::Plain("pw".into()));
    md5_login("alice", plain(), "pw").await.unwrap();
    md5_login("alice", Some(md5_secret("alice", "pw")), "pw")
        .await
        .unwrap();
    assert_password_failed(md5_login("alice", plain(), "nope").await, wrong);
    assert_password_failed(
        md5_login("alice", Some(md5_secret("alice", "pw")), "nope").await,
        wrong,
    );
    assert_password_failed(md5_login("alice", None, "pw").await, unknown);
}

#[tokio::test]
async fn md5_falls_back_to_scram_for_a_verifier() {
    let (mut client, server) = start(AuthType::Md5, "alice", Some(scram_secret("pw")));
    client.scram("pw").await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn cleartext_against_every_kind_of_secret() {
    for secret in [
        Secret::Plain("pw".into()),
        md5_secret("alice", "pw"),
        scram_secret("pw"),
    ] {
        cleartext_login("alice", Some(secret.clone()), "pw")
            .await
            .unwrap();
        assert_password_failed(cleartext_login("alice", Some(secret), "nope").await, wrong);
    }
    assert_password_failed(cleartext_login("alice", None, "pw").await, unknown);
}

#[tokio::test]
async fn an_empty_stored_password_never_matches() {
    let empty = || Some(Secret::Plain(String::new()));
    assert_password_failed(cleartext_login("alice", empty(), "").await, wrong);
    assert_password_failed(md5_login("alice", empty(), "").await, wrong);
}

/// Runs `method`, answers its first request with `body`: that must be a protocol violation.
async fn assert_protocol_violation(method: AuthType, body: &[u8], needle: &str) {
    let (mut client, server) = start(method, "alice", Some(scram_secret("pw")));
    client.request().await;
    client.send(b'p', body).await;
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");
    let pg = err.to_pg_error("alice");
    assert_eq!(pg.code, sqlstate::PROTOCOL_VIOLATION);
    assert!(pg.message.contains(needle), "{pg}");
}

#[tokio::test]
async fn malformed_password_messages_are_protocol_violations() {
    let scram = AuthType::ScramSha256;
    assert_protocol_violation(AuthType::Password, b"pw", "invalid password packet size").await;
    assert_protocol_violation(
        AuthType::Password,
        b"p\0w\0",
        "invalid password packet size",
    )
    .await;
    assert_protocol_violation(scram, b"SCRAM-SHA-256", "unterminated SASL mechanism").await;
    assert_protocol_violation(scram, b"SCRAM-SHA-256\0\0\0", "truncated").await;
    assert_protocol_violation(
        scram,
        b"SCRAM-SHA-256\0\0\0\0\x09n,,",
        "length does not match",
    )
    .await;
    assert_protocol_violation(
        scram,
        b"SCRAM-SHA-256\0\xff\xff\xff\xfe",
        "length does not match",
    )
    .await;
    assert_protocol_violation(
        scram,
        b"SCRAM-SHA-256-PLUS\0\0\0\0\0",
        "invalid SASL authentication mechanism",
    )
    .await;
    assert_protocol_violation(
        scram,
        b"SCRAM-SHA-256\0\0\0\0\x04junk",
        "malformed SCRAM message",
    )
    .await;
    let p_binding = sasl_initial("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abcdef");
    assert_protocol_violation(scram, &p_binding, "channel binding").await;
}

#[tokio::test]
async fn garbage_client_final_is_a_protocol_violation() {
    let (mut client, server) = start(AuthType::ScramSha256, "alice", Some(scram_secret("pw")));
    client.request().await;
    client
        .send_sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abcdef")
        .await;
    client.request().await;
    client.send(b'p', b"\xff\x00garbage").await;
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Protocol(ProtocolError::Message(MessageError::Scram(_)))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn other_messages_and_hangups_are_protocol_violations() {
    let (mut client, server) = start(AuthType::Md5, "alice", None);
    client.request().await;
    client.send(b'Q', b"SELECT 1\0").await;
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Protocol(ProtocolError::UnexpectedMessage(b'Q'))
        ),
        "{err:?}"
    );
    assert!(err.to_pg_error("alice").message.contains("'Q'"), "{err}");

    let (mut client, server) = start(AuthType::ScramSha256, "alice", Some(scram_secret("pw")));
    client.request().await;
    drop(client);
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Protocol(ProtocolError::Read(ReadError::Closed))
        ),
        "{err:?}"
    );
}

/// Sends a header declaring `len` for the message `client` owes after `setup`, and nothing
/// more: the server must refuse the length on the header alone.
async fn assert_too_long(
    method: AuthType,
    secret: Secret,
    sasl_steps: usize,
    len: u32,
    what: &str,
) {
    let (mut client, server) = start(method, "alice", Some(secret));
    client.request().await;
    if sasl_steps > 0 {
        client
            .send_sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abcdef")
            .await;
        client.request().await;
    }
    let mut header = vec![b'p'];
    header.extend_from_slice(&len.to_be_bytes());
    client.io.write_all(&header).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Protocol(ProtocolError::Message(MessageError::TooLong { .. }))
        ),
        "{err:?}"
    );
    let pg = err.to_pg_error("alice");
    assert_eq!(pg.code, sqlstate::PROTOCOL_VIOLATION);
    assert!(pg.message.contains(what), "{pg}");
}

#[tokio::test]
async fn messages_over_postgres_caps_are_refused_on_their_header() {
    let plain = || Secret::Plain("pw".into());
    let pw = AuthType::Password;
    assert_too_long(
        pw,
        plain(),
        0,
        65_536,
        "password message is 65536 bytes, over the limit of 65535 bytes",
    )
    .await;
    assert_too_long(
        AuthType::Md5,
        plain(),
        0,
        0x3fff_ffff,
        "password message is 1073741823 bytes",
    )
    .await;
    let scram = AuthType::ScramSha256;
    let over = "SASLInitialResponse is 1025 bytes, over the limit of 1024 bytes";
    assert_too_long(scram, scram_secret("pw"), 0, 1025, over).await;
    let over = "SASLResponse is 1073741823 bytes, over the limit of 1024 bytes";
    assert_too_long(scram, scram_secret("pw"), 1, 0x3fff_ffff, over).await;
}

#[tokio::test]
async fn messages_at_the_caps_are_read() {
    // A 65,535-byte cleartext password (length word included) is read and checked.
    let (mut client, server) = start(
        AuthType::Password,
        "alice",
        Some(Secret::Plain("pw".into())),
    );
    client.request().await;
    client.send_password(&vec![b'x'; 65_535 - 4 - 1]).await;
    assert_password_failed(server.await.unwrap(), wrong);
}
