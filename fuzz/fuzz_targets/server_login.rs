//! Our client side of a server's login exchange (`pgwarden::server::exchange`) against an
//! arbitrary server. The first byte chooses the credential (none, a password, an md5 hash)
//! and whether cleartext is allowed; the rest is what the server sends, cut into messages
//! by `frame`. `@@` in a message body becomes pgwarden's SCRAM client nonce, so the fuzzer
//! reaches the later SCRAM steps. Checked: no panic; `frame` never takes more than it has;
//! once the exchange refused, it refuses everything after; nothing is ever sent without a
//! password or an md5 hash to send; the password never goes out in cleartext where that is
//! not allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::server::exchange::{frame, Exchange, Step};
use pgwarden::server::Credential;

const PASSWORD: &str = "fuzz-secret-pw";

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut stream)) = data.split_first() else {
        return;
    };
    let credential = match choice % 3 {
        0 => Credential::None,
        1 => Credential::Password(PASSWORD.into()),
        _ => Credential::Md5Hash("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
    };
    let cleartext_ok = choice & 0x80 != 0;
    let mut exchange = Exchange::new("fuzzer", &credential, cleartext_ok);
    let mut nonce = Vec::new();
    let mut failed = false;
    loop {
        let (tag, total) = match frame(stream) {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(_) => return,
        };
        assert!((5..=stream.len()).contains(&total));
        let body = substitute(&stream[5..total], &nonce);
        stream = &stream[total..];
        let step = exchange.feed(tag, &body);
        assert!(!(failed && step.is_ok()), "accepted a message after refusing");
        failed |= step.is_err();
        if let Ok(Step::Send(out)) = step {
            assert!(!matches!(credential, Credential::None), "sent without a credential");
            let plain = out.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes());
            assert!(!plain || cleartext_ok, "cleartext password where not allowed");
            if let Some(at) = out.windows(3).position(|w| w == b",r=") {
                nonce = out[at + 3..].to_vec();
            }
        }
    }
});

/// `body` with every `@@` replaced by `nonce`.
fn substitute(body: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.windows(2).position(|w| w == b"@@") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(nonce);
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    out
}
