//! One direction of the relay ([`Pump`]) and what pgwarden learns from the headers passing
//! through both directions ([`Tracker`]): where transactions end, and what session state a
//! client leaves on its server.

use std::io;

use bytes::{Buf, BytesMut};

use crate::protocol::framing::{Chunk, Framer, FramingError};
use crate::protocol::sql::{self, Effects};
use crate::protocol::tags::{backend, frontend};
use crate::protocol::TransactionStatus;
use crate::stream::Stream;

/// Read at least this much at a time; small enough that an idle pump costs little.
const READ_CHUNK: usize = 8 * 1024;
/// A buffer grown past this by a large message is freed once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Whether a scanned message is forwarded or ends the session (client Terminate).
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Forward,
    Stop,
}

/// One direction of the relay: bytes read, scanned, and forwarded untouched.
pub struct Pump {
    pub buf: BytesMut,
    pub framer: Framer,
    /// Bytes at the front of `buf` that are scanned and ready to forward.
    pub ready: usize,
}

impl Pump {
    pub fn new(buf: BytesMut, max_len: u32) -> Self {
        Pump {
            buf,
            framer: Framer::new(max_len),
            ready: 0,
        }
    }

    /// Reads whatever the socket has. `Ok(false)` at end of stream.
    pub fn read_from(&mut self, stream: &Stream) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
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
        loop {
            match self.framer.next(&self.buf[self.ready..], &inspect)? {
                Chunk::Start { tag, taken, whole } => {
                    let msg = &self.buf[self.ready..self.ready + taken];
                    if watch(tag, whole.then_some(msg)) == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    self.ready += taken;
                }
                Chunk::Rest { taken } => self.ready += taken,
                Chunk::NeedMore { need } => {
                    self.buf
                        .reserve(need.saturating_sub(self.buf.len() - self.ready));
                    return Ok(Flow::Forward);
                }
            }
        }
    }

    /// Writes as much of the ready bytes as the socket takes now.
    pub fn write_to(&mut self, stream: &Stream) -> io::Result<()> {
        match stream.try_write(&self.buf[..self.ready]) {
            Ok(n) => {
                self.buf.advance(n);
                self.ready -= n;
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
        while self.ready > 0 {
            stream.writable().await?;
            self.write_to(stream)?;
        }
        Ok(())
    }

    /// Nothing scanned waits to be forwarded and no message is half through.
    pub fn quiet(&self) -> bool {
        self.ready == 0 && self.framer.at_boundary()
    }

    /// Gives the buffer's memory back while the client is idle.
    pub fn release_memory(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
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
    copy_in: bool,
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
                if let Some(msg) = msg.filter(|_| self.watch_state) {
                    self.effects.merge(sql::effects(&msg[5..]));
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
        if !name.is_empty() {
            self.effects.pins = self.effects.pins.or(Some("named prepared statement"));
        }
        self.effects
            .merge(sql::effects(parts.next().unwrap_or_default()));
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
