//! A TLS connection driven by readiness through `&self`, like the plain sockets: rustls'
//! sans-IO connection (after tokio-rustls did the handshake) over the TCP socket.
//!
//! The connection sits behind a std mutex: only the one task owning the stream takes it,
//! never across an `.await`, so it is never contended. Two things differ from a socket,
//! and the relay is told about both: plaintext rustls already decrypted makes the stream
//! readable whatever the socket says ([`TlsStream::poll_read_ready`]), and ciphertext the
//! socket did not take yet makes it want to write with nothing new to say
//! ([`TlsStream::wants_write`]).

use std::io::{self, BufRead, Read, Write};
use std::mem::MaybeUninit;
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use rustls::Connection;
use socket2::SockRef;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

pub struct TlsStream {
    tcp: TcpStream,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("tcp", &self.tcp).finish()
    }
}

/// The socket as rustls' blocking-style reader and writer: `WouldBlock` when it has
/// nothing or takes nothing, which also clears tokio's readiness.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS failure is this connection's io error (the session ends; nobody else notices).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS error: {e}"))
}

impl TlsStream {
    pub fn new(tcp: TcpStream, conn: impl Into<Connection>) -> TlsStream {
        TlsStream {
            tcp,
            conn: Mutex::new(conn.into()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TCP socket under the encryption.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Readable when rustls holds plaintext (or the peer's close) already, else when the
    /// socket is.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if has_input(&mut self.lock()) {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    /// Whether ciphertext is waiting for the socket to take it.
    pub fn wants_write(&self) -> bool {
        self.lock().wants_write()
    }

    /// Reads plaintext, at most `room` bytes, handing each piece to `put`. `Ok(0)` at the
    /// end of the stream (a close_notify or a TCP close: Postgres messages carry their
    /// lengths, so a cut is seen by the framing anyway); `WouldBlock` when nothing came.
    fn read_with(&self, room: usize, mut put: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut conn = self.lock();
        let mut total = 0;
        while total < room {
            match conn.reader().fill_buf() {
                Ok([]) => return Ok(total),
                Ok(chunk) => {
                    let n = chunk.len().min(room - total);
                    put(&chunk[..n]);
                    conn.reader().consume(n);
                    total += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(total),
                Err(e) => return Err(e),
            }
            match conn.read_tls(&mut Socket(&self.tcp)) {
                Ok(_) => {
                    let processed = conn.process_new_packets();
                    // Alerts and protocol answers rustls queued go out now if they can.
                    let _ = flush(&mut conn, &self.tcp);
                    processed.map_err(tls_error)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => return Ok(total),
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Reads into `buf`'s spare capacity without waiting; `Ok(0)` is end of stream.
    pub fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        let room = buf.capacity() - buf.len();
        self.read_with(room, |piece| buf.extend_from_slice(piece))
    }

    /// Encrypts what rustls takes of `bufs` once earlier ciphertext is out; `WouldBlock`
    /// while it is not (and for an empty write, just sends what is pending).
    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.lock();
        flush(&mut conn, &self.tcp)?;
        let empty = bufs.iter().all(|b| b.is_empty());
        if empty {
            return Ok(0);
        }
        if conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = conn.writer().write_vectored(bufs)?;
        flush(&mut conn, &self.tcp)?;
        match n {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[io::IoSlice::new(buf)])
    }

    /// Sends close_notify and what is pending (best effort), then a FIN.
    pub fn shutdown_write(&self) {
        let mut conn = self.lock();
        conn.send_close_notify();
        let _ = flush(&mut conn, &self.tcp);
        let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }

    /// True if rustls holds input or the socket has any (a peek: ciphertext stays).
    pub fn has_pending_input(&self) -> bool {
        if has_input(&mut self.lock()) {
            return true;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        !matches!(SockRef::from(&self.tcp).peek(&mut probe),
            Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.read_with(buf.remaining(), |piece| buf.put_slice(piece)) {
                Ok(_) => return Poll::Ready(Ok(())),
                // Ciphertext of an earlier write still waiting (a full socket) goes out
                // before this waits for an answer to it, as a plaintext write_all would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.wants_write() => {
                    ready!(self.poll_flush(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut conn = self.lock();
                flush(&mut conn, &self.tcp)?;
                if !conn.wants_write() {
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().send_close_notify();
        ready!(self.poll_flush(cx))?;
        let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Whether a read would return something without the socket: plaintext, or the end.
fn has_input(conn: &mut Connection) -> bool {
    !matches!(conn.reader().fill_buf(), Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Writes pending ciphertext until done or the socket is full.
fn flush(conn: &mut Connection, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut Socket(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
