//! Header-only framing of a v3 message stream that is forwarded in arbitrary chunks.
//!
//! The relay never decodes what it only forwards: it reads the 5-byte header (tag + length),
//! and either the whole message is already buffered (so it may be inspected), or the message
//! is streamed through as its bytes arrive, so a 100 MB row is never held whole in memory.

use thiserror::Error;

pub use super::rules::Rules;

/// Bytes in a message header: one tag byte and a four-byte length that counts itself.
pub const HEADER_LEN: usize = 5;

/// A stream that breaks the framing rules; reported to the peer as SQLSTATE 08P01.
/// Detected from the header alone, before any of the body is buffered.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum FramingError {
    /// Under 4, or not what this message type may have.
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: u32 },
    #[error("message of type {tag:?} is {len} bytes, over max_packet_size = {max}")]
    TooLong { tag: char, len: u32, max: u32 },
    /// No message of this type exists in this direction.
    #[error("unknown message type {tag:?}")]
    UnknownType { tag: char },
    /// A message that exists, but not after login (authentication, BackendKeyData).
    #[error("unexpected message type {tag:?} after login")]
    Unexpected { tag: char },
}

impl FramingError {
    /// What a client is told when it broke the rules: Postgres' own wording.
    pub fn client_message(&self) -> String {
        match self {
            FramingError::BadLength { .. } => "invalid message length".to_owned(),
            FramingError::UnknownType { tag } | FramingError::Unexpected { tag } => {
                format!("invalid frontend message type {}", *tag as u32)
            }
            FramingError::TooLong { .. } => self.to_string(),
        }
    }
}

/// One step of scanning a buffer; `taken` counts bytes from the start of the buffer given.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// The start of a message. `whole` when all of its `taken` bytes are the complete message.
    Start { tag: u8, taken: usize, whole: bool },
    /// More bytes of a message whose start was already returned.
    Rest { taken: usize },
    /// Nothing can be taken until the buffer holds at least `need` bytes.
    NeedMore { need: usize },
}

/// Scanning state of one direction of a connection; it survives between reads.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Bytes of a streamed message still to come.
    rest: usize,
    max_len: u32,
    rules: Rules,
}

impl Framer {
    /// A framer that accepts any tag (the handshake phases check messages themselves).
    pub fn new(max_len: u32) -> Self {
        Framer::with_rules(max_len, Rules::Any)
    }

    /// A framer that checks each header against `rules` (known tags, lengths per type).
    pub fn with_rules(max_len: u32, rules: Rules) -> Self {
        Framer {
            rest: 0,
            max_len,
            rules,
        }
    }

    /// True when the stream stands at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.rest == 0
    }

    /// Looks at the front of `buf` and says what can be taken from it.
    ///
    /// Messages whose tag satisfies `inspect` are only ever returned whole (the caller must
    /// buffer up to `need` bytes); any other message is returned as soon as its header is
    /// in, together with whatever part of its body is, so it can be streamed on.
    pub fn next(
        &mut self,
        buf: &[u8],
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Chunk, FramingError> {
        if self.rest > 0 {
            if buf.is_empty() {
                return Ok(Chunk::NeedMore { need: 1 });
            }
            let taken = self.rest.min(buf.len());
            self.rest -= taken;
            return Ok(Chunk::Rest { taken });
        }
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(Chunk::NeedMore { need: HEADER_LEN });
        };
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len < 4 {
            return Err(FramingError::BadLength {
                tag: tag as char,
                len,
            });
        }
        self.rules.check(tag, len)?;
        if len > self.max_len {
            return Err(FramingError::TooLong {
                tag: tag as char,
                len,
                max: self.max_len,
            });
        }
        let total = 1 + len as usize;
        if buf.len() >= total {
            return Ok(Chunk::Start {
                tag,
                taken: total,
                whole: true,
            });
        }
        if inspect(tag) {
            return Ok(Chunk::NeedMore { need: total });
        }
        self.rest = total - buf.len();
        Ok(Chunk::Start {
            tag,
            taken: buf.len(),
            whole: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feeds `stream` to a framer in chunks of `size` bytes, as a relay would, and returns
    /// the tags seen and the bytes forwarded.
    fn scan_in_chunks(stream: &[u8], size: usize, inspect: fn(u8) -> bool) -> (Vec<u8>, Vec<u8>) {
        let mut framer = Framer::new(1 << 20);
        let (mut tags, mut out, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        for piece in stream.chunks(size) {
            buf.extend_from_slice(piece);
            loop {
                match framer.next(&buf, inspect).unwrap() {
                    Chunk::Start { tag, taken, whole } => {
                        if inspect(tag) {
                            assert!(whole, "inspected messages come whole");
                        }
                        tags.push(tag);
                        out.extend(buf.drain(..taken));
                    }
                    Chunk::Rest { taken } => out.extend(buf.drain(..taken)),
                    Chunk::NeedMore { need } => {
                        assert!(need > buf.len());
                        break;
                    }
                }
            }
        }
        assert!(buf.is_empty() && framer.at_boundary());
        (tags, out)
    }

    #[test]
    fn any_chunking_yields_the_same_messages_and_bytes() {
        let mut stream = msg(b'T', b"row description");
        stream.extend(msg(b'D', &vec![7u8; 10_000]));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        stream.extend(msg(b'Z', b"T"));
        for size in [1, 2, 3, 4, 5, 6, 7, 13, 4096, 100_000] {
            let (tags, out) = scan_in_chunks(&stream, size, |t| t == b'Z');
            assert_eq!(tags, b"TDCZZ", "chunk size {size}");
            assert_eq!(out, stream, "chunk size {size}");
        }
    }

    #[test]
    fn lengths_under_four_are_protocol_violations() {
        let mut framer = Framer::new(1 << 20);
        let bad = [b'Q', 0, 0, 0, 3];
        assert_eq!(
            framer.next(&bad, |_| false),
            Err(FramingError::BadLength { tag: 'Q', len: 3 })
        );
    }

    #[test]
    fn lengths_over_the_limit_are_refused_before_buffering() {
        let mut framer = Framer::new(1000);
        let big = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            framer.next(&big, |_| true),
            Err(FramingError::TooLong { max: 1000, .. })
        ));
    }

    #[test]
    fn empty_body_message_is_whole_at_five_bytes() {
        let mut framer = Framer::new(100);
        let sync = msg(b'S', b"");
        assert_eq!(
            framer.next(&sync, |_| true),
            Ok(Chunk::Start {
                tag: b'S',
                taken: 5,
                whole: true
            })
        );
    }
}
