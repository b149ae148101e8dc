//! Fuzz target: the startup phase as a client drives it, a stream of packets cut into
//! arbitrary reads. Framing (`front`) sees the same packets however the stream is cut; the
//! negotiation honours each encryption request at most once and never panics; the phase
//! ends at the first startup message, cancel request, refusal or malformed packet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::startup::{front, Encryption, Front, Negotiation, StartupPacket};

/// How the phase ended, and the requests honoured on the way.
#[derive(Debug, PartialEq)]
struct Seen {
    honoured: Vec<Encryption>,
    end: String,
}

/// Runs the phase over `stream`, read in pieces whose sizes `sizes` yields.
fn run(stream: &[u8], mut sizes: impl FnMut() -> usize) -> Seen {
    let (mut buf, mut at) = (Vec::new(), 0);
    let mut negotiation = Negotiation::default();
    let mut honoured = Vec::new();
    let end = |honoured, end: String| Seen { honoured, end };
    loop {
        let len = match front(&buf) {
            Err(len) => return end(honoured, format!("bad length {len}")),
            Ok(Front::Whole(len)) => len,
            Ok(Front::NeedMore(need)) => {
                assert!(need > buf.len());
                if at == stream.len() {
                    return end(honoured, "end of stream".into());
                }
                let n = sizes().clamp(1, stream.len() - at);
                buf.extend_from_slice(&stream[at..at + n]);
                at += n;
                continue;
            }
        };
        let packet: Vec<u8> = buf.drain(..len).collect();
        let kind = match negotiation.classify(&packet) {
            Err(why) => return end(honoured, format!("malformed: {why}")),
            Ok(StartupPacket::SslRequest) => Encryption::Ssl,
            Ok(StartupPacket::GssEncRequest) => Encryption::Gss,
            Ok(other) => return end(honoured, format!("{other:?}")),
        };
        assert!(!honoured.contains(&kind), "{kind:?} honoured twice");
        negotiation.answered(kind, false);
        honoured.push(kind);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = run(stream, || usize::MAX);
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let cut = run(stream, || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 16) as usize + 1
    });
    assert_eq!(whole, cut, "cutting the stream changed what was seen");
});
