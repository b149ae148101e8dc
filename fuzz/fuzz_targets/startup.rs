//! Fuzz target: classifying one startup-phase packet never panics, and a StartupMessage's
//! parameters are exactly its body: re-encoded (when they are UTF-8) they give back the
//! bytes after the protocol code.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::startup::{classify, front, Front, StartupPacket, MAX_STARTUP_PACKET};

/// The input as a packet: its own bytes after a length word that counts them, so most
/// inputs reach the parameter parser; odd first bytes keep the input's own length word.
fn packet(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((flag, rest)) if flag % 2 == 0 => {
            let mut out = ((rest.len() + 4) as u32).to_be_bytes().to_vec();
            out.extend_from_slice(rest);
            out
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = packet(data);
    let len = match front(&bytes) {
        Ok(Front::Whole(len)) => len,
        Ok(Front::NeedMore(need)) => {
            assert!(need > bytes.len() && need <= MAX_STARTUP_PACKET + 4);
            return;
        }
        Err(len) => {
            assert!(!(8..=MAX_STARTUP_PACKET + 4).contains(&len));
            return;
        }
    };
    let packet = &bytes[..len];
    let Ok(StartupPacket::Startup { params, .. }) = classify(packet) else {
        return;
    };
    let body = &packet[8..];
    let mut encoded = Vec::new();
    for (name, value) in &params {
        assert!(!name.is_empty(), "a parameter without a name");
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(0);
        encoded.extend_from_slice(value.as_bytes());
        encoded.push(0);
    }
    encoded.push(0);
    if std::str::from_utf8(body).is_ok() {
        assert_eq!(encoded, body, "parameters do not re-encode to the body");
    } else {
        assert_eq!(
            encoded.iter().filter(|b| **b == 0).count(),
            body.iter().filter(|b| **b == 0).count()
        );
    }
});
