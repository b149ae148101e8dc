//! One direction of a relayed message stream, without any I/O: bytes that arrived, how far
//! they are framed, and what is ready to go out. The relay reads into it and writes out of
//! it; the protocol machine and the prepared-statement layer decide, message by message,
//! what is forwarded, dropped, rewritten or added.
//!
//! Edits (a rewritten statement name, an answer pgwarden writes itself) go to `out`, which
//! always holds bytes that come before `buf[..ready]`: an edit first moves the ready bytes
//! in front of it into `out`, so unedited traffic is never copied.

use bytes::{Buf, BytesMut};

use super::framing::{Chunk, Framer, FramingError, Rules};

/// A buffer grown past this by a large message is freed once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

pub struct Pump {
    /// Bytes arrived and not yet written out (the first `ready` of them are scanned).
    pub buf: BytesMut,
    pub framer: Framer,
    /// Bytes at the front of `buf` that are scanned and ready to forward.
    pub ready: usize,
    /// Edited bytes to forward before `buf[..ready]`.
    pub out: BytesMut,
    /// Bytes written out since the session last took them for its pool's counters (a
    /// plain add: the pump has one owner). As PgBouncer counts traffic: what is forwarded.
    pub sent: u64,
}

/// The start of a message found by [`Pump::next`], not yet forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub tag: u8,
    /// Bytes of the message in the buffer now (all of it when `whole`).
    pub taken: usize,
    pub whole: bool,
}

impl Pump {
    pub fn new(buf: BytesMut, max_len: u32, rules: Rules) -> Self {
        Pump {
            buf,
            framer: Framer::with_rules(max_len, rules),
            ready: 0,
            out: BytesMut::new(),
            sent: 0,
        }
    }

    /// The next message start after `ready`, left in place for the caller to
    /// [`forward`](Pump::forward), [`drop_message`](Pump::drop_message) or rewrite. The rest
    /// of a streamed message is forwarded on the way. `None` when more bytes are needed.
    ///
    /// Nothing is reserved for a message's declared length: the buffer grows only with
    /// bytes that arrive.
    pub fn next(&mut self, inspect: impl Fn(u8) -> bool) -> Result<Option<Found>, FramingError> {
        loop {
            match self.framer.next(&self.buf[self.ready..], &inspect)? {
                Chunk::Start { tag, taken, whole } => return Ok(Some(Found { tag, taken, whole })),
                Chunk::Rest { taken } => self.ready += taken,
                Chunk::NeedMore { .. } => return Ok(None),
            }
        }
    }

    /// Whether a whole message waits after `ready` (checking the headers on the way, so a
    /// bad one is reported without waiting for its body). Nothing is consumed.
    pub fn has_whole_message(&self) -> Result<bool, FramingError> {
        let mut probe = self.framer.clone();
        match probe.next(&self.buf[self.ready..], |_| true)? {
            Chunk::Start { whole, .. } => Ok(whole),
            Chunk::Rest { .. } | Chunk::NeedMore { .. } => Ok(false),
        }
    }

    /// The bytes of a message [`next`](Pump::next) found.
    pub fn message(&self, found: Found) -> &[u8] {
        &self.buf[self.ready..self.ready + found.taken]
    }

    /// Forwards `len` bytes at `ready` unchanged.
    pub fn forward(&mut self, len: usize) {
        self.ready += len;
    }

    /// Where to append bytes that go out at this point of the stream.
    pub fn inject(&mut self) -> &mut BytesMut {
        if self.ready > 0 {
            let ready = self.buf.split_to(self.ready);
            self.out.extend_from_slice(&ready);
            self.ready = 0;
        }
        &mut self.out
    }

    /// Drops `len` bytes at `ready` (a message, or the front of one) instead of forwarding.
    pub fn drop_message(&mut self, len: usize) {
        self.inject();
        self.buf.advance(len);
    }

    /// True when there is something to write.
    pub fn has_output(&self) -> bool {
        self.ready > 0 || !self.out.is_empty()
    }

    /// The bytes to write, in order.
    pub fn output(&self) -> (&[u8], &[u8]) {
        (&self.out, &self.buf[..self.ready])
    }

    /// `n` bytes of [`output`](Pump::output) were written.
    pub fn wrote(&mut self, mut n: usize) {
        self.sent += n as u64;
        let from_out = n.min(self.out.len());
        self.out.advance(from_out);
        n -= from_out;
        let n = n.min(self.ready);
        self.buf.advance(n);
        self.ready -= n;
        if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
            self.out = BytesMut::new();
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
    }

    /// Nothing scanned waits to be forwarded and no message is half through.
    pub fn quiet(&self) -> bool {
        !self.has_output() && self.framer.at_boundary()
    }

    /// Gives the buffers' memory back while the client is idle.
    pub fn release_memory(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
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

    #[test]
    fn edits_keep_the_order_of_the_stream() {
        let mut pump = Pump::new(BytesMut::new(), 1 << 20, Rules::Any);
        pump.buf.extend_from_slice(&msg(b'A', b"one"));
        pump.buf.extend_from_slice(&msg(b'B', b"two"));
        pump.buf.extend_from_slice(&msg(b'C', b"three"));
        let a = pump.next(|_| true).unwrap().unwrap();
        pump.forward(a.taken);
        let b = pump.next(|_| true).unwrap().unwrap();
        pump.drop_message(b.taken);
        pump.inject().extend_from_slice(&msg(b'b', b"TWO"));
        let c = pump.next(|_| true).unwrap().unwrap();
        pump.forward(c.taken);
        let (out, ready) = pump.output();
        let mut all = out.to_vec();
        all.extend_from_slice(ready);
        let mut want = msg(b'A', b"one");
        want.extend(msg(b'b', b"TWO"));
        want.extend(msg(b'C', b"three"));
        assert_eq!(all, want);
        pump.wrote(all.len());
        assert!(pump.quiet() && pump.buf.is_empty());
    }

    #[test]
    fn a_declared_length_reserves_nothing() {
        let mut pump = Pump::new(BytesMut::new(), 1 << 30, Rules::Any);
        pump.buf
            .extend_from_slice(&[b'Q', 0x3f, 0xff, 0xff, 0xff, b'S']);
        let before = pump.buf.capacity();
        assert!(pump.next(|_| true).unwrap().is_none());
        assert!(!pump.has_whole_message().unwrap());
        assert_eq!(pump.buf.capacity(), before);
    }
}
