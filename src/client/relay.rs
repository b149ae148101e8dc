//! The session loop: bytes flow client ⇄ server untouched, in both directions at once, while
//! two header-only scanners watch for what pgwarden must act on (ReadyForQuery, Terminate).
//!
//! Each direction is a [`Pump`]: read what the socket has, scan the complete headers in it,
//! forward everything scanned with as few writes as the socket allows. Reading and writing
//! are both driven by readiness in one `select!`, so a server blocked on a full client socket
//! never stops pgwarden from reading the client (and the other way round): no deadlock.

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::login::Session;
use crate::context::Context;
use crate::protocol::framing::{Chunk, Framer, FramingError};
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{PgError, TransactionStatus};
use crate::stream::Stream;

/// Read at least this much at a time; small enough that an idle pump costs little.
const READ_CHUNK: usize = 8 * 1024;
/// A buffer grown past this by a large message is freed once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

/// How a session ended.
pub enum End {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// The client broke the protocol; it has been told.
    ClientViolation(FramingError),
    ClientIo(io::Error),
    ServerLost(String),
    Shutdown,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::ClientLeft => f.write_str("client closed the connection"),
            End::ClientViolation(e) => write!(f, "protocol violation: {e}"),
            End::ClientIo(e) => write!(f, "client socket error: {e}"),
            End::ServerLost(e) => write!(f, "server connection lost: {e}"),
            End::Shutdown => f.write_str("pgwarden shutting down"),
        }
    }
}

/// Whether a scanned message is forwarded or ends the session (client Terminate).
#[derive(PartialEq, Eq)]
enum Flow {
    Forward,
    Stop,
}

/// One direction of the relay.
struct Pump {
    buf: BytesMut,
    framer: Framer,
    /// Bytes at the front of `buf` that are scanned and ready to forward.
    ready: usize,
}

impl Pump {
    fn new(buf: BytesMut, max_len: u32) -> Self {
        Pump {
            buf,
            framer: Framer::new(max_len),
            ready: 0,
        }
    }

    /// Reads whatever the socket has. `Ok(false)` at end of stream.
    fn read_from(&mut self, stream: &Stream) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        match stream.try_read_buf(&mut self.buf) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Scans complete headers after `ready`, telling `watch` about each message start
    /// (with the whole message when `inspect` asked for it).
    fn scan(
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
    fn write_to(&mut self, stream: &Stream) -> io::Result<()> {
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

    async fn flush_to(&mut self, stream: &Stream) -> io::Result<()> {
        while self.ready > 0 {
            stream.writable().await?;
            self.write_to(stream)?;
        }
        Ok(())
    }

    fn quiet(&self) -> bool {
        self.ready == 0 && self.framer.at_boundary()
    }
}

/// Where the server stands between requests, from the messages seen both ways.
struct Tracker {
    /// Requests sent (Query, Sync, FunctionCall) whose ReadyForQuery has not come back.
    pending: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    status: TransactionStatus,
}

impl Tracker {
    fn client_message(&mut self, tag: u8) -> Flow {
        match tag {
            frontend::QUERY | frontend::FUNCTION_CALL => self.pending += 1,
            frontend::SYNC => {
                self.pending += 1;
                self.unsynced = false;
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE
            | frontend::FLUSH => self.unsynced = true,
            frontend::TERMINATE => return Flow::Stop,
            _ => {}
        }
        Flow::Forward
    }

    fn server_message(&mut self, tag: u8, msg: Option<&[u8]>) -> Flow {
        if tag == backend::READY_FOR_QUERY {
            self.pending = self.pending.saturating_sub(1);
            if let Some(status) = msg.and_then(|m| TransactionStatus::from_body(&m[5..])) {
                self.status = status;
            }
        }
        Flow::Forward
    }

    /// The server has answered everything and is outside a transaction.
    fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == TransactionStatus::Idle
    }
}

fn client_inspects(tag: u8) -> bool {
    tag == frontend::TERMINATE
}

fn server_inspects(tag: u8) -> bool {
    tag == backend::READY_FOR_QUERY
}

/// Relays a session until it ends, then returns the server to its pool (reset) if it is
/// clean, or closes it.
pub async fn run(
    client: &mut Stream,
    client_buf: BytesMut,
    session: Session,
    ctx: &Context,
) -> End {
    let Session { mut server, cancel } = session;
    let max = ctx.config.max_packet_size;
    let mut c2s = Pump::new(client_buf, max);
    let mut s2c = Pump::new(std::mem::take(&mut server.buf), max);
    let mut track = Tracker {
        pending: 0,
        unsynced: false,
        status: TransactionStatus::Idle,
    };
    let mut draining = false;

    let end = loop {
        let clean = track.idle() && c2s.quiet() && s2c.quiet();
        if draining && clean {
            break End::Shutdown;
        }
        let srv = &server.stream;
        tokio::select! {
            r = client.readable(), if c2s.ready == 0 => {
                if let Err(e) = r { break End::ClientIo(e) }
                match c2s.read_from(client) {
                    Ok(true) => {}
                    Ok(false) => break End::ClientLeft,
                    Err(e) => break End::ClientIo(e),
                }
                match c2s.scan(client_inspects, |tag, _| track.client_message(tag)) {
                    Ok(Flow::Forward) => {}
                    Ok(Flow::Stop) => {
                        if let Err(e) = c2s.flush_to(srv).await {
                            break End::ServerLost(e.to_string());
                        }
                        break End::ClientLeft;
                    }
                    Err(e) => break End::ClientViolation(e),
                }
            }
            r = srv.writable(), if c2s.ready > 0 => {
                if let Err(e) = r.and_then(|_| c2s.write_to(srv)) { break End::ServerLost(e.to_string()) }
            }
            r = srv.readable(), if s2c.ready == 0 => {
                if let Err(e) = r { break End::ServerLost(e.to_string()) }
                match s2c.read_from(srv) {
                    Ok(true) => {}
                    Ok(false) => break End::ServerLost("server closed the connection".into()),
                    Err(e) => break End::ServerLost(e.to_string()),
                }
                if let Err(e) = s2c.scan(server_inspects, |tag, msg| track.server_message(tag, msg)) {
                    break End::ServerLost(e.to_string());
                }
            }
            r = client.writable(), if s2c.ready > 0 => {
                if let Err(e) = r.and_then(|_| s2c.write_to(client)) { break End::ClientIo(e) }
            }
            _ = ctx.shutdown.cancelled(), if !draining => draining = true,
        }
    };

    cancel.set(None);
    let clean =
        track.idle() && c2s.framer.at_boundary() && c2s.ready == 0 && s2c.framer.at_boundary();
    finish(client, &end).await;
    if matches!(end, End::ServerLost(_)) {
        server.close("server connection lost");
    } else {
        server.buf = std::mem::take(&mut s2c.buf);
        let clean = clean && server.buf.is_empty();
        server.release(clean).await;
    }
    end
}

/// Tells the client why the session ends, where it is still listening.
async fn finish(client: &mut Stream, end: &End) {
    let error = match end {
        End::ClientViolation(e) => Some(PgError::protocol_violation(e)),
        End::ServerLost(e) => Some(PgError::fatal(
            crate::protocol::sqlstate::CONNECTION_FAILURE,
            format!("server connection lost: {e}"),
        )),
        End::Shutdown => Some(PgError::shutting_down()),
        End::ClientLeft | End::ClientIo(_) => None,
    };
    if let Some(error) = error {
        let _ = client.write_all(&error.to_bytes()).await;
    }
    let _ = client.shutdown().await;
}
