//! Classification of the first packet a client sends (startup, SSL/GSS request, cancel).

use super::tags::startup_code::{self, GSSENC_REQUEST, SSL_REQUEST};

/// Largest startup-phase packet accepted, its 4-byte length word not counted, as in
/// Postgres (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// What the front of a buffer of startup-phase bytes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// A whole packet of this many bytes, its length word included.
    Whole(usize),
    /// Not a whole packet until the buffer holds at least this many bytes.
    NeedMore(usize),
}

/// Where the first startup-phase packet in `buf` ends. `Err(len)`: its length word says
/// `len`, under 8 or over [`MAX_STARTUP_PACKET`] + 4, so it is refused before its body is
/// read (as Postgres does).
pub fn front(buf: &[u8]) -> Result<Front, usize> {
    let Some(word) = buf.first_chunk::<4>() else {
        return Ok(Front::NeedMore(4));
    };
    let len = u32::from_be_bytes(*word) as usize;
    if !(8..=MAX_STARTUP_PACKET + 4).contains(&len) {
        return Err(len);
    }
    Ok(if buf.len() >= len {
        Front::Whole(len)
    } else {
        Front::NeedMore(len)
    })
}

/// What a client's untagged first packet asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x. `minor` above 0 is answered with NegotiateProtocolVersion.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    /// Any other protocol major version.
    Unsupported {
        major: u16,
        minor: u16,
    },
}

/// An encryption a client may ask for before its startup message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    Ssl,
    Gss,
}

/// Which encryption requests a client has made, so that each is honoured once, in either
/// order, as Postgres' `ProcessStartupPacket(ssl_done, gss_done)` does: another SSLRequest
/// after SSL was negotiated (or refused) is not a request any more but an unknown protocol
/// version (1234.5679), and so is a GSSENCRequest once either encryption is in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiation {
    ssl_done: bool,
    gss_done: bool,
}

impl Negotiation {
    /// Classifies the next startup-phase packet in the light of what came before.
    pub fn classify(&self, packet: &[u8]) -> Result<StartupPacket, &'static str> {
        match classify(packet)? {
            StartupPacket::SslRequest if self.ssl_done => Ok(as_version(SSL_REQUEST)),
            StartupPacket::GssEncRequest if self.gss_done => Ok(as_version(GSSENC_REQUEST)),
            other => Ok(other),
        }
    }

    /// Records the answer to a request: `encrypted` when the connection is now encrypted
    /// (then the other kind may not be asked for either).
    pub fn answered(&mut self, request: Encryption, encrypted: bool) {
        match request {
            Encryption::Ssl => {
                self.ssl_done = true;
                self.gss_done |= encrypted;
            }
            Encryption::Gss => {
                self.gss_done = true;
                self.ssl_done |= encrypted;
            }
        }
    }
}

/// A request code taken as the protocol version it spells.
fn as_version(code: i32) -> StartupPacket {
    StartupPacket::Unsupported {
        major: (code >> 16) as u16,
        minor: (code & 0xffff) as u16,
    }
}

/// Classifies a complete startup packet (`packet` includes its 4-byte length).
pub fn classify(packet: &[u8]) -> Result<StartupPacket, &'static str> {
    if packet.len() < 8 {
        return Err("startup packet too short");
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        startup_code::SSL_REQUEST => Ok(StartupPacket::SslRequest),
        startup_code::GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        startup_code::CANCEL_REQUEST => {
            if body.len() < 8 {
                return Err("cancel request too short");
            }
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Ok(StartupPacket::Unsupported { major, minor });
            }
            decode_params(packet).map(|params| StartupPacket::Startup { minor, params })
        }
    }
}

/// Name/value pairs after the protocol code, each NUL-terminated, ending with one more NUL
/// as the very last byte: the layout Postgres insists on.
fn decode_params(packet: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    const LAYOUT: &str = "invalid startup packet layout: expected terminator as last byte";
    let body = &packet[8..];
    let mut params = Vec::new();
    let mut pos = 0;
    loop {
        let name = cstr_at(body, pos).ok_or(LAYOUT)?;
        if name.is_empty() {
            return if pos + 1 == body.len() {
                Ok(params)
            } else {
                Err(LAYOUT)
            };
        }
        pos += name.len() + 1;
        let value = cstr_at(body, pos).ok_or(LAYOUT)?;
        pos += value.len() + 1;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        params.push((text(name), text(value)));
    }
}

/// The NUL-terminated string starting at `pos`, if it is terminated.
fn cstr_at(body: &[u8], pos: usize) -> Option<&[u8]> {
    let rest = body.get(pos..)?;
    rest.iter().position(|b| *b == 0).map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn classifies_each_kind() {
        assert_eq!(
            classify(&packet(80_877_103, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            classify(&packet(80_877_104, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        let mut key = 7i32.to_be_bytes().to_vec();
        key.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            classify(&packet(80_877_102, &key)),
            Ok(StartupPacket::Cancel { pid: 7, secret: -9 })
        );
        assert_eq!(
            classify(&packet(2 << 16, b"")),
            Ok(StartupPacket::Unsupported { major: 2, minor: 0 })
        );
        let params = classify(&packet(196_609, b"user\0alice\0database\0db\0\0")).unwrap();
        assert_eq!(
            params,
            StartupPacket::Startup {
                minor: 1,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn each_encryption_request_is_honoured_once_in_either_order() {
        let (ssl, gss) = (packet(80_877_103, b""), packet(80_877_104, b""));
        let unsupported = |minor| StartupPacket::Unsupported { major: 1234, minor };
        let mut n = Negotiation::default();
        assert_eq!(n.classify(&ssl), Ok(StartupPacket::SslRequest));
        n.answered(Encryption::Ssl, false);
        assert_eq!(n.classify(&ssl), Ok(unsupported(5679)));
        assert_eq!(n.classify(&gss), Ok(StartupPacket::GssEncRequest));
        n.answered(Encryption::Gss, false);
        assert_eq!(n.classify(&gss), Ok(unsupported(5680)));

        let mut n = Negotiation::default();
        n.answered(Encryption::Ssl, true);
        assert_eq!(n.classify(&gss), Ok(unsupported(5680)));
        let mut n = Negotiation::default();
        n.answered(Encryption::Gss, false);
        assert_eq!(n.classify(&ssl), Ok(StartupPacket::SslRequest));
    }

    #[test]
    fn front_finds_packets_and_refuses_lengths_out_of_range() {
        assert_eq!(front(&[0, 0]), Ok(Front::NeedMore(4)));
        assert_eq!(front(&[0, 0, 0, 8, 1]), Ok(Front::NeedMore(8)));
        assert_eq!(front(&packet(80_877_103, b"")), Ok(Front::Whole(8)));
        assert_eq!(front(&[0, 0, 0, 7]), Err(7));
        assert_eq!(front(&10_005u32.to_be_bytes()), Err(10_005));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(classify(&[0, 0, 0, 4]).is_err());
        assert!(classify(&packet(196_608, b"user\0al")).is_err());
        assert!(classify(&packet(80_877_102, b"\0\0")).is_err());
        // A key without a value, a missing final terminator, bytes after it.
        assert!(classify(&packet(196_608, b"user\0\0")).is_err());
        assert!(classify(&packet(196_608, b"user\0al\0")).is_err());
        assert!(classify(&packet(196_608, b"user\0al\0\0x")).is_err());
        assert!(classify(&packet(196_608, b"\0")).is_ok());
    }
}
