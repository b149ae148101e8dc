//! Fuzz target: the server side of the client logins (SCRAM-SHA-256 and MD5) never panics
//! on anything a client sends. Arbitrary password messages never pass; an honest client
//! (postgres-protocol's) always does; a client-final-message with any byte changed never
//! does. The first byte picks the case.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::auth::client::md5_matches;
use pgwarden::auth::messages::{self, MessageError};
use pgwarden::auth::sasl::{Reply, SaslExchange};
use pgwarden::auth::scram::{verifier_from_bytes, verifier_from_password};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// Splits `data` into messages, each prefixed by a one-byte length.
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len).min(rest.len());
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// Arbitrary SASL messages against a verifier: nothing passes, the exchange ends once.
fn arbitrary_sasl(data: &[u8]) {
    let mut exchange = SaslExchange::new(verifier_from_password("pw", b"salt", 1));
    let mut ended = false;
    for body in messages(data) {
        let reply = exchange.feed(body);
        if ended {
            assert!(matches!(reply, Err(MessageError::AfterEnd)), "{reply:?}");
            continue;
        }
        match reply {
            Ok(Reply::Continue(first)) => {
                assert!(first.is_empty() || first.starts_with(b"r="), "{first:?}")
            }
            Ok(Reply::Accepted(_)) => panic!("a made-up proof was accepted"),
            Ok(Reply::Rejected) | Err(_) => ended = true,
        }
    }
}

/// An honest client with the fuzzer's password, salt and channel binding choice; then the
/// same exchange with the client-final-message changed at one byte.
fn honest_sasl(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let (password, salt) = rest.split_at(rest.len() / 2);
    let salt = if salt.is_empty() {
        b"s".as_slice()
    } else {
        salt
    };
    let verifier = verifier_from_bytes(password, salt, 1 + u32::from(choice % 3));
    for mutate in [None, Some(choice)] {
        let binding = if choice % 2 == 0 {
            ChannelBinding::unrequested()
        } else {
            ChannelBinding::unsupported()
        };
        let mut client = ScramSha256::new(password, binding);
        let mut exchange = SaslExchange::new(verifier.clone());
        let mut initial = b"SCRAM-SHA-256\0".to_vec();
        initial.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
        initial.extend_from_slice(client.message());
        let Ok(Reply::Continue(server_first)) = exchange.feed(&initial) else {
            panic!("an honest client-first-message was refused");
        };
        client
            .update(&server_first)
            .expect("the client takes our server-first-message");
        let mut last = client.message().to_vec();
        if let Some(at) = mutate {
            let at = usize::from(at) % last.len();
            last[at] ^= 1 + (at as u8 % 255);
        }
        match (exchange.feed(&last), mutate) {
            (Ok(Reply::Accepted(server_final)), None) => client
                .finish(server_final.as_bytes())
                .expect("the client verifies our server signature"),
            (reply, None) => panic!("an honest client was refused: {reply:?}"),
            (Ok(Reply::Accepted(_)), Some(_)) => panic!("a changed client-final was accepted"),
            (_, Some(_)) => {}
        }
    }
}

/// Password messages and MD5 responses: decoding never panics, only the right response
/// matches.
fn md5(data: &[u8]) {
    let _ = messages::password(data);
    let _ = messages::sasl_initial_response(data);
    let (user, password) = data.split_at(data.len() / 2);
    let user = String::from_utf8_lossy(user);
    let stored = postgres_protocol::password::md5(password, &user);
    let salt = [1, 2, 3, 4];
    let right = md5_hash(user.as_bytes(), password, salt);
    assert!(md5_matches(&stored, salt, right.as_bytes()));
    assert!(!md5_matches(&stored, salt, data));
    if let Ok(response) = messages::password(data) {
        assert_eq!(
            md5_matches(&stored, salt, response),
            response == right.as_bytes()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => honest_sasl(rest),
        Some((1, rest)) => md5(rest),
        Some((_, rest)) => arbitrary_sasl(rest),
        None => {}
    }
});
