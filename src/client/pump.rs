//! One direction of the relay ([`Pump`]) and what pgwarden learns from the headers passing
//! through both directions ([`Tracker`]): where transactions end, and what session state a
//! client leaves on its server.

use std::io;

use bytes::{Buf, BytesMut};

use crate::protocol::framing::{Chunk, Framer, FramingError};
use crate::protocol::sql::{self, Effects, Feature, Strings};
use crate::protocol::tags::{backend, frontend};
use crate::protocol::TransactionStatus;
use crate::stream::Stream;

/// Read at least this much at a time; small enough that an idle pump costs little.
const READ_CHUNK: usize = 8 * 1024;
/// The first read into an empty buffer.
const FIRST_READ: usize = 1024;
/// A buffer grown past this by a large message is freed once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Whether a scanned message is forwarded or ends the session (client Terminate).
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Forward,
    Stop,
}

/// One direction of the relay: bytes read, scanned, and forwarded untouched.
///
/// Transaction pooling sometimes changes the stream (statement names rewritten, answers to
/// pgwarden's own messages dropped, answers it writes itself added). Those edits go to
/// `out`, which always holds bytes that come before `buf[..ready]`: so an edit moves the
/// ready bytes in front of it into `out` first, and unedited traffic is never copied.
pub struct Pump {
    pub buf: BytesMut,
    pub framer: Framer,
    /// Bytes at the front of `buf` that are scanned and ready to forward.
    pub ready: usize,
    /// Edited bytes to forward before `buf[..ready]`.
    pub out: BytesMut,
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
    pub fn new(buf: BytesMut, max_len: u32) -> Self {
        Pump {
            buf,
            framer: Framer::new(max_len),
            ready: 0,
            out: BytesMut::new(),
        }
    }

    /// Reads whatever the socket has. `Ok(false)` at end of stream.
    pub fn read_from(&mut self, stream: &Stream) -> io::Result<bool> {
        if self.buf.capacity() == 0 {
            // The first read after idling: most requests are small, and a client may wait
            // for a server holding what it read, so start small and grow on demand.
            self.buf.reserve(FIRST_READ);
        } else if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        match stream.try_read_buf(&mut self.buf) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A wake-up with nothing to read (readiness left over from login): give the
                // reservation back, or every idle client would keep READ_CHUNK for nothing.
                self.release_memory();
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Scans complete headers after `ready`, telling `watch` about each message start
    /// (with the whole message, header included, when `inspect` asked for it).
    pub fn scan(
        &mut self,
        inspect: impl Fn(u8) -> bool,
        mut watch: impl FnMut(u8, Option<&[u8]>) -> Flow,
    ) -> Result<Flow, FramingError> {
        while let Some(found) = self.next(&inspect)? {
            let msg = &self.buf[self.ready..self.ready + found.taken];
            if watch(found.tag, found.whole.then_some(msg)) == Flow::Stop {
                return Ok(Flow::Stop);
            }
            self.ready += found.taken;
        }
        Ok(Flow::Forward)
    }

    /// The next message start after `ready`, left in place for the caller to
    /// [`forward`](Pump::forward), [`drop_message`](Pump::drop_message) or rewrite. The rest of
    /// a streamed message is forwarded on the way. `None` when more bytes are needed.
    pub fn next(&mut self, inspect: impl Fn(u8) -> bool) -> Result<Option<Found>, FramingError> {
        loop {
            match self.framer.next(&self.buf[self.ready..], &inspect)? {
                Chunk::Start { tag, taken, whole } => return Ok(Some(Found { tag, taken, whole })),
                Chunk::Rest { taken } => self.ready += taken,
                Chunk::NeedMore { need } => {
                    self.buf
                        .reserve(need.saturating_sub(self.buf.len() - self.ready));
                    return Ok(None);
                }
            }
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

    /// Moves the ready bytes into `out`, so something can be added after them.
    fn settle(&mut self) -> &mut BytesMut {
        if self.ready > 0 {
            let ready = self.buf.split_to(self.ready);
            self.out.extend_from_slice(&ready);
            self.ready = 0;
        }
        &mut self.out
    }

    /// Where to append bytes that go out at this point of the stream.
    pub fn inject(&mut self) -> &mut BytesMut {
        self.settle()
    }

    /// Drops `len` bytes at `ready` (a message, or the front of one) instead of forwarding.
    pub fn drop_message(&mut self, len: usize) {
        self.settle();
        self.buf.advance(len);
    }

    /// True when there is something to write.
    pub fn has_output(&self) -> bool {
        self.ready > 0 || !self.out.is_empty()
    }

    /// Writes as much of the ready bytes as the socket takes now.
    pub fn write_to(&mut self, stream: &Stream) -> io::Result<()> {
        let result = if self.out.is_empty() {
            stream.try_write(&self.buf[..self.ready])
        } else {
            let bufs = [
                io::IoSlice::new(&self.out),
                io::IoSlice::new(&self.buf[..self.ready]),
            ];
            stream.try_write_vectored(&bufs)
        };
        match result {
            Ok(mut n) => {
                let from_out = n.min(self.out.len());
                self.out.advance(from_out);
                n -= from_out;
                self.buf.advance(n);
                self.ready -= n;
                if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
                    self.out = BytesMut::new();
                }
                if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                    self.buf = BytesMut::new();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes all ready bytes, waiting for the socket as needed.
    pub async fn flush_to(&mut self, stream: &Stream) -> io::Result<()> {
        while self.has_output() {
            stream.writable().await?;
            self.write_to(stream)?;
        }
        Ok(())
    }

    /// Nothing scanned waits to be forwarded and no message is half through.
    pub fn quiet(&self) -> bool {
        !self.has_output() && self.framer.at_boundary()
    }

    /// Gives the buffer's memory back while the client is idle.
    pub fn release_memory(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
    }
}

/// Where the server stands between requests, from the messages seen both ways.
pub struct Tracker {
    /// Requests sent (Query, Sync, FunctionCall) whose ReadyForQuery has not come back.
    pub pending: usize,
    /// Extended-protocol messages sent since the last Sync.
    pub unsynced: bool,
    pub status: TransactionStatus,
    /// Whether to read SQL text and ParameterStatus (transaction pooling needs them).
    watch_state: bool,
    /// Statement pooling: hold back a ReadyForQuery that reports an open transaction block.
    refuse_blocks: bool,
    /// What the client's statements since the last boundary may have left on the server.
    pub effects: Effects,
    /// ParameterStatus bodies the server sent since the last boundary.
    pub reported: Vec<Vec<u8>>,
    /// Syncs sent since the last Execute or Query: if that request starts a COPY FROM
    /// STDIN, the server ignores them (as it ignores every Sync until CopyDone/CopyFail).
    syncs_since_request: usize,
    /// The server is in COPY-IN mode and the client has not ended it yet.
    pub copy_in: bool,
    /// Prepared statements follow the client (see [`crate::prepared`]): statement names
    /// and SQL-level PREPARE no longer pin it.
    pub statements_follow: bool,
    /// The last Query or Parse may involve prepared statements (or was not read).
    pub query_names_statements: bool,
}

impl Tracker {
    pub fn new(watch_state: bool, refuse_blocks: bool) -> Self {
        Tracker {
            refuse_blocks,
            pending: 0,
            unsynced: false,
            status: TransactionStatus::Idle,
            watch_state,
            effects: Effects::default(),
            reported: Vec::new(),
            syncs_since_request: 0,
            copy_in: false,
            statements_follow: false,
            query_names_statements: true,
        }
    }

    /// Which client messages must be seen whole. Returned as a closure that owns what it
    /// needs, so the tracker itself stays free for [`Tracker::client_message`].
    pub fn client_inspects(&self) -> impl Fn(u8) -> bool {
        let watch_state = self.watch_state;
        move |tag| {
            tag == frontend::TERMINATE
                || (watch_state && matches!(tag, frontend::QUERY | frontend::PARSE))
        }
    }

    pub fn server_inspects(&self) -> impl Fn(u8) -> bool {
        let watch_state = self.watch_state;
        move |tag| {
            tag == backend::READY_FOR_QUERY || (watch_state && tag == backend::PARAMETER_STATUS)
        }
    }

    pub fn client_message(&mut self, tag: u8, msg: Option<&[u8]>) -> Flow {
        match tag {
            frontend::QUERY => {
                self.pending += 1;
                self.syncs_since_request = 0;
                self.query_names_statements = true;
                if let Some(msg) = msg.filter(|_| self.watch_state) {
                    let mut effects = sql::effects(&msg[5..], Strings::Standard);
                    self.query_names_statements = effects.statements;
                    if self.statements_follow
                        && effects.acquires.contains(Feature::SqlPrepare)
                        && crate::prepared::handles_query(&msg[5..])
                    {
                        effects.acquires = effects.acquires.without(Feature::SqlPrepare);
                    }
                    self.effects.merge(effects);
                }
            }
            frontend::FUNCTION_CALL => self.pending += 1,
            frontend::SYNC if self.copy_in => {}
            frontend::SYNC => {
                self.pending += 1;
                self.syncs_since_request += 1;
                self.unsynced = false;
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => self.copy_in = false,
            frontend::EXECUTE => {
                self.unsynced = true;
                self.syncs_since_request = 0;
            }
            frontend::PARSE => {
                self.unsynced = true;
                self.query_names_statements = true;
                if let Some(msg) = msg.filter(|_| self.watch_state) {
                    self.parse_message(&msg[5..]);
                }
            }
            frontend::BIND | frontend::DESCRIBE | frontend::CLOSE | frontend::FLUSH => {
                self.unsynced = true
            }
            frontend::TERMINATE => return Flow::Stop,
            _ => {}
        }
        Flow::Forward
    }

    /// A Parse body: statement name, query text, parameter types.
    fn parse_message(&mut self, body: &[u8]) {
        let mut parts = body.splitn(3, |b| *b == 0);
        let name = parts.next().unwrap_or_default();
        if !name.is_empty() && !self.statements_follow {
            self.effects.acquires = self.effects.acquires.with(Feature::SqlPrepare);
        }
        let effects = sql::effects(parts.next().unwrap_or_default(), Strings::Standard);
        self.query_names_statements = effects.statements;
        self.effects.merge(effects);
    }

    pub fn server_message(&mut self, tag: u8, msg: Option<&[u8]>) -> Flow {
        match tag {
            backend::READY_FOR_QUERY => {
                self.pending = self.pending.saturating_sub(1);
                if let Some(status) = msg.and_then(|m| TransactionStatus::from_body(&m[5..])) {
                    self.status = status;
                }
                if self.refuse_blocks && self.status != TransactionStatus::Idle {
                    return Flow::Stop;
                }
            }
            // COPY FROM STDIN began: Syncs the client sent after the request that started it
            // were ignored by the server, and an extended-protocol request still needs one.
            backend::COPY_IN_RESPONSE => {
                self.pending -= self.syncs_since_request.min(self.pending);
                self.unsynced |= self.syncs_since_request > 0;
                self.syncs_since_request = 0;
                self.copy_in = true;
            }
            // A reported parameter changed under the client's own statements: remember the
            // value for the server's record, and read the session back at the boundary.
            backend::PARAMETER_STATUS if self.watch_state => {
                self.effects.settings = true;
                if let Some(msg) = msg {
                    self.reported.push(msg[5..].to_vec());
                }
            }
            _ => {}
        }
        Flow::Forward
    }

    /// The server has answered everything and is outside a transaction.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == TransactionStatus::Idle
    }
}
