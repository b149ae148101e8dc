use proptest::prelude::*;

use super::*;
use crate::auth::scram::{verifier_from_password, ScramServer, Verdict};

fn auth_body(code: i32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    body
}

fn password() -> Credential {
    Credential::Password("pw".into())
}

fn sent(step: Result<Step, LoginError>) -> BytesMut {
    match step {
        Ok(Step::Send(out)) => out,
        other => panic!("expected bytes to send, got {other:?}"),
    }
}

/// The payload of a SASLInitialResponse (`p`, name, length, data) or SASLResponse.
fn sasl_payload(out: &[u8], initial: bool) -> Vec<u8> {
    let body = &out[5..];
    if !initial {
        return body.to_vec();
    }
    let name_end = body.iter().position(|b| *b == 0).unwrap();
    body[name_end + 5..].to_vec()
}

fn method_error(step: Result<Step, LoginError>) -> String {
    match step {
        Err(LoginError::Method(why)) => why,
        other => panic!("expected a refused method, got {other:?}"),
    }
}

fn protocol_error<T: std::fmt::Debug>(step: Result<T, LoginError>) -> String {
    match step {
        Err(LoginError::Protocol(why)) => why,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

const SASL_LIST: &[u8] = b"SCRAM-SHA-256\0\0";

/// Starts a SCRAM exchange; returns the exchange's client-first payload.
fn start_scram(ex: &mut Exchange) -> Vec<u8> {
    let out = sent(ex.feed(b'R', &auth_body(auth::SASL, SASL_LIST)));
    sasl_payload(&out, true)
}

#[test]
fn frame_checks_the_header_before_the_body_arrives() {
    assert_eq!(frame(b"R\0\0"), Ok(None));
    assert_eq!(frame(b"R\0\0\0\x08\0\0"), Ok(None));
    assert_eq!(frame(b"R\0\0\0\x08\0\0\0\0"), Ok(Some((b'R', 9))));
    // 64 KB declared for an authentication request: refused with 5 bytes in hand.
    let why = protocol_error(frame(b"R\0\x01\0\0"));
    assert!(why.contains("65536 bytes") && why.contains("2000"), "{why}");
    assert!(frame(b"E\0\0\x75\x31").is_err()); // 30001 > 30000
    assert!(frame(b"R\0\0\0\x03").is_err()); // under 4
    let why = protocol_error(frame(b"D\0\0\0\x04"));
    assert!(why.contains("'D'"), "{why}");
}

#[test]
fn trust_then_parameters_key_and_ready() {
    let none = Credential::None;
    let mut ex = Exchange::new("u", &none, false);
    assert_eq!(ex.feed(b'R', &auth_body(auth::OK, b"")), Ok(Step::Read));
    assert_eq!(ex.feed(b'S', b"a\0b\0"), Ok(Step::Parameter));
    assert_eq!(ex.feed(b'N', b"SNOTICE\0\0"), Ok(Step::Read));
    let key = ex.feed(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]);
    assert_eq!(key, Ok(Step::Key(BackendKey { pid: 7, secret: 9 })));
    assert_eq!(ex.feed(b'Z', b"I"), Ok(Step::Ready));
    assert!(ex.feed(b'Z', b"I").is_err());
}

#[test]
fn no_credential_accepts_only_trust() {
    let none = Credential::None;
    for (code, data) in [
        (auth::CLEARTEXT_PASSWORD, &b""[..]),
        (auth::MD5_PASSWORD, b"salt"),
        (auth::SASL, SASL_LIST),
    ] {
        let mut ex = Exchange::new("u", &none, true);
        let why = method_error(ex.feed(b'R', &auth_body(code, data)));
        assert!(why.contains("no password is configured"), "{why}");
    }
}

#[test]
fn an_md5_hash_answers_only_md5() {
    let hash = Credential::Md5Hash("md5abc".into());
    let mut ex = Exchange::new("u", &hash, true);
    sent(ex.feed(b'R', &auth_body(auth::MD5_PASSWORD, b"salt")));
    for (code, data) in [
        (auth::CLEARTEXT_PASSWORD, &b""[..]),
        (auth::SASL, SASL_LIST),
    ] {
        let mut ex = Exchange::new("u", &hash, true);
        let why = method_error(ex.feed(b'R', &auth_body(code, data)));
        assert!(why.contains("only an md5 hash"), "{why}");
    }
}

#[test]
fn md5_answer_matches_postgres_formula() {
    let pw = password();
    let mut ex = Exchange::new("alice", &pw, false);
    let out = sent(ex.feed(b'R', &auth_body(auth::MD5_PASSWORD, b"abcd")));
    let expected = md5_hash(b"alice", b"pw", *b"abcd");
    assert_eq!(&out[5..out.len() - 1], expected.as_bytes());
    assert_eq!(ex.feed(b'R', &auth_body(auth::OK, b"")), Ok(Step::Read));
    // AuthenticationOk twice is no login.
    assert!(protocol_error(ex.feed(b'R', &auth_body(auth::OK, b""))).contains("'R'"));
}

#[test]
fn cleartext_only_where_allowed_and_the_refusal_names_the_setting() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, false);
    let why = method_error(ex.feed(b'R', &auth_body(auth::CLEARTEXT_PASSWORD, b"")));
    assert!(why.contains(ALLOW_CLEARTEXT), "{why}");
    let mut ex = Exchange::new("u", &pw, true);
    let out = sent(ex.feed(b'R', &auth_body(auth::CLEARTEXT_PASSWORD, b"")));
    assert_eq!(&out[..], b"p\0\0\0\x07pw\0");
}

#[test]
fn unsupported_methods_and_channel_binding_only_are_refused() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, true);
    let why = method_error(ex.feed(b'R', &auth_body(7, b"")));
    assert!(why.contains("GSSAPI"), "{why}");
    let mut ex = Exchange::new("u", &pw, true);
    let plus = auth_body(auth::SASL, b"SCRAM-SHA-256-PLUS\0\0");
    assert!(method_error(ex.feed(b'R', &plus)).contains("channel binding"));
    let mut ex = Exchange::new("u", &pw, true);
    assert!(ex.feed(b'R', &auth_body(auth::SASL, b"SCRAM")).is_err());
}

#[test]
fn error_response_without_sqlstate_is_a_protocol_error() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, true);
    let why = protocol_error(ex.feed(b'E', b"SFATAL\0Mnope\0\0"));
    assert!(why.contains("SQLSTATE") && why.contains("nope"), "{why}");
    let mut ex = Exchange::new("u", &pw, true);
    let refused = ex.feed(b'E', b"SFATAL\0C28P01\0Mbad password\0\0");
    let expected = LoginError::Refused {
        code: "28P01".into(),
        message: "bad password".into(),
    };
    assert_eq!(refused, Err(expected));
}

#[test]
fn wrong_message_types_during_authentication() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, true);
    assert!(protocol_error(ex.feed(b'S', b"a\0b\0")).contains("'S'"));
    let mut ex = Exchange::new("u", &pw, true);
    assert!(ex
        .feed(b'R', &auth_body(auth::SASL_CONTINUE, b"r=x"))
        .is_err());
}

/// A server side of SCRAM for `password`, with `iterations`.
fn scram_server(client_first: &[u8], iterations: u32) -> ScramServer {
    let verifier = verifier_from_password("pw", b"0123456789abcdef", iterations);
    ScramServer::start(&verifier, client_first).unwrap()
}

#[test]
fn a_full_scram_exchange_verifies_the_server() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, false);
    let first = start_scram(&mut ex);
    let server = scram_server(&first, 4096);
    let server_first = server.server_first_message().as_bytes().to_vec();
    let out = sent(ex.feed(b'R', &auth_body(auth::SASL_CONTINUE, &server_first)));
    let Ok(Verdict::Accepted { server_final }) = server.finish(&sasl_payload(&out, false)) else {
        panic!("the server rejected our proof");
    };
    let fin = auth_body(auth::SASL_FINAL, server_final.as_bytes());
    assert_eq!(ex.feed(b'R', &fin), Ok(Step::Read));
    assert_eq!(ex.feed(b'R', &auth_body(auth::OK, b"")), Ok(Step::Read));
}

#[test]
fn a_bad_server_signature_is_refused() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, false);
    let first = start_scram(&mut ex);
    let server = scram_server(&first, 4096);
    let server_first = server.server_first_message().as_bytes().to_vec();
    sent(ex.feed(b'R', &auth_body(auth::SASL_CONTINUE, &server_first)));
    let forged = auth_body(
        auth::SASL_FINAL,
        b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    assert!(method_error(ex.feed(b'R', &forged)).contains("signature"));
}

#[test]
fn authentication_ok_before_scram_completes_is_refused() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, false);
    start_scram(&mut ex);
    let why = protocol_error(ex.feed(b'R', &auth_body(auth::OK, b"")));
    assert!(why.contains("before the SCRAM exchange completed"), "{why}");
}

#[test]
fn huge_iterations_and_foreign_nonces_are_refused_before_hashing() {
    let pw = password();
    let mut ex = Exchange::new("u", &pw, false);
    let first = start_scram(&mut ex);
    let nonce = String::from_utf8(first).unwrap();
    let nonce = nonce.split(",r=").nth(1).unwrap().to_owned();
    let huge = format!("r={nonce}xyz,s=c2FsdA==,i=2000000000");
    let why = method_error(ex.feed(b'R', &auth_body(auth::SASL_CONTINUE, huge.as_bytes())));
    assert!(
        why.contains("2000000000") && why.contains("100000"),
        "{why}"
    );

    let mut ex = Exchange::new("u", &pw, false);
    start_scram(&mut ex);
    let foreign = b"r=someoneelsesnonce,s=c2FsdA==,i=4096";
    let why = method_error(ex.feed(b'R', &auth_body(auth::SASL_CONTINUE, foreign)));
    assert!(why.contains("nonce"), "{why}");
}

proptest! {
    /// Whatever a server sends, the exchange answers or refuses; it never panics, and once
    /// it refused it accepts nothing more.
    #[test]
    fn arbitrary_server_messages_never_panic(
        messages in proptest::collection::vec(
            (prop::sample::select(vec![b'R', b'E', b'N', b'S', b'K', b'Z', b'v', b'D']),
             proptest::collection::vec(any::<u8>(), 0..64)),
            0..8,
        ),
        cleartext in any::<bool>(),
    ) {
        let pw = password();
        let mut ex = Exchange::new("u", &pw, cleartext);
        let mut failed = false;
        for (tag, body) in messages {
            let step = ex.feed(tag, &body);
            prop_assert!(!(failed && step.is_ok()));
            failed |= step.is_err();
        }
    }
}
