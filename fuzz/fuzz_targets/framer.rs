//! Fuzz target: the header-only Framer never returns more bytes than it was given,
//! returns whole messages at their declared length, and sees the same messages however
//! the stream is cut into reads.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::framing::{Chunk, Framer, FramingError, HEADER_LEN};

/// What one scan of a stream saw: the (tag, length) of each message started, the error
/// that stopped it if any, and the bytes forwarded.
#[derive(Debug, PartialEq)]
struct Seen {
    messages: Vec<(u8, u32)>,
    error: Option<FramingError>,
    forwarded: usize,
}

/// Feeds `stream` to a framer in reads of the sizes `sizes` yields, checking each step.
fn scan(
    stream: &[u8],
    max: u32,
    inspect: impl Fn(u8) -> bool,
    mut sizes: impl FnMut() -> usize,
) -> Seen {
    let mut framer = Framer::new(max);
    let (mut buf, mut at, mut remaining) = (Vec::new(), 0, 0usize);
    let mut seen = Seen {
        messages: Vec::new(),
        error: None,
        forwarded: 0,
    };
    while at < stream.len() {
        let n = sizes().clamp(1, stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            assert_eq!(framer.at_boundary(), remaining == 0);
            let taken = match framer.next(&buf, &inspect) {
                Err(err) => {
                    seen.error = Some(err);
                    return seen;
                }
                Ok(Chunk::NeedMore { need }) => {
                    assert!(need > buf.len(), "asks for bytes it has");
                    break;
                }
                Ok(Chunk::Start { tag, taken, whole }) => {
                    assert_eq!(remaining, 0, "a start inside a message");
                    assert!(
                        taken >= HEADER_LEN && taken <= buf.len(),
                        "took more than given"
                    );
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                    assert!(len >= 4 && len <= max && tag == buf[0]);
                    let total = 1 + len as usize;
                    if whole {
                        assert_eq!(taken, total, "a whole message of the wrong length");
                    } else {
                        assert!(taken < total && !inspect(tag), "an inspected message cut");
                        remaining = total - taken;
                    }
                    seen.messages.push((tag, len));
                    taken
                }
                Ok(Chunk::Rest { taken }) => {
                    assert!(taken > 0 && taken <= buf.len() && taken <= remaining);
                    remaining -= taken;
                    taken
                }
            };
            assert_eq!(
                &buf[..taken],
                &stream[seen.forwarded..seen.forwarded + taken]
            );
            buf.drain(..taken);
            seen.forwarded += taken;
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mask, hi, lo, seed], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    // Small limits reach TooLong; 0xffff means no practical limit.
    let max = if (hi, lo) == (0xff, 0xff) {
        u32::MAX
    } else {
        u32::from(u16::from_be_bytes([hi, lo]))
    };
    let inspect = move |tag: u8| (tag ^ mask) & 1 == 0;
    let whole = scan(stream, max, inspect, || usize::MAX);
    let mut state = u32::from(seed) | 1;
    let chunked = scan(stream, max, inspect, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 8 == 0 {
            4096
        } else {
            (state % 9) as usize + 1
        }
    });
    assert_eq!(whole, chunked, "chunking changed what the framer saw");
});
