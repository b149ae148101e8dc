//! A TCP or Unix socket, or TLS over TCP, behind one type, used for both client and server
//! connections.
//!
//! The relay works on readiness (`poll_read_ready`/`try_read_buf`,
//! `poll_write_ready`/`try_write`) through `&self`, so one task can wait on both directions
//! of two sockets in a single poll without splitting them; the handshake phases use the
//! ordinary `AsyncRead`/`AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::tls::stream::TlsStream;

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: a TLS connection's state is large, and the plain variants stay small.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// Whether this connection is encrypted (TLS).
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether this is a Unix socket (the peer is on this machine).
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Whether the stream must write with nothing new to say: TLS ciphertext the socket
    /// did not take yet. Never for plain sockets (one compare on the relay's path).
    #[inline]
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Tls(s) => s.wants_write(),
            _ => false,
        }
    }

    /// Waits until a read may make progress. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::Tls(s) => std::future::poll_fn(|cx| s.poll_read_ready(cx)).await,
        }
    }

    /// Waits until a write may make progress. Cancel-safe.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Unix(s) => s.writable().await,
            Stream::Tls(s) => std::future::poll_fn(|cx| s.poll_write_ready(cx)).await,
        }
    }

    /// Whether a read may make progress, for a hand-written poll loop: unlike
    /// [`readable`](Stream::readable) no future is made, moved or queued per wait (the
    /// relay waits on four of these per turn). One waker per direction: one task only.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.poll_read_ready(cx),
        }
    }

    /// Whether a write may make progress; see [`poll_read_ready`](Stream::poll_read_ready).
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            Stream::Unix(s) => s.poll_write_ready(cx),
            Stream::Tls(s) => s.poll_write_ready(cx),
        }
    }

    /// Reads what is available without waiting; `Ok(0)` is end of stream.
    ///
    /// A read that does not fill the buffer's spare room has drained the socket, so it also
    /// clears tokio's readiness (as tokio's own `poll_read` does): otherwise the next wait
    /// would return at once and cost a `recv` that fails with EAGAIN, one per message.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                read_draining(buf, |f| s.try_io(Interest::READABLE, f), SockRef::from(s))
            }
            Stream::Unix(s) => {
                read_draining(buf, |f| s.try_io(Interest::READABLE, f), SockRef::from(s))
            }
            Stream::Tls(s) => s.try_read_buf(buf),
        }
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tls(s) => s.try_write(buf),
        }
    }

    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write_vectored(bufs),
            Stream::Unix(s) => s.try_write_vectored(bufs),
            Stream::Tls(s) => s.try_write_vectored(bufs),
        }
    }

    /// Writes all of `buf`, through `&self` (the relay holds only shared references), and
    /// for TLS the ciphertext it became.
    pub async fn write_all_ready(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() || self.wants_write() {
            self.writable().await?;
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closes the sending side (a FIN after what was written), through `&self`; errors
    /// mean the peer is gone already, which is what this is for.
    pub fn shutdown_write(&self) {
        let socket = match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
            Stream::Tls(s) => return s.shutdown_write(),
        };
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }

    /// This end's TCP address (`None` for a Unix socket), for SHOW CLIENTS and SERVERS.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
            Stream::Tls(s) => s.tcp().local_addr().ok(),
        }
    }

    /// True if the peer has closed or sent something unasked; used on idle servers, which
    /// must have nothing to say.
    pub fn has_pending_input(&self) -> bool {
        let mut probe = [0u8; 1];
        let res = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
            Stream::Tls(s) => return s.has_pending_input(),
        };
        !matches!(res, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// One `recv` into `buf`'s spare capacity inside tokio's `try_io`, reporting a short read
/// to tokio as WouldBlock (which clears readiness) while keeping the bytes it returned.
fn read_draining(
    buf: &mut BytesMut,
    try_io: impl FnOnce(&mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>,
    socket: SockRef<'_>,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let mut short_read = None;
    let mut recv = || {
        let n = socket.recv(spare)?;
        if n > 0 && n < room {
            short_read = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    };
    let result = try_io(&mut recv);
    let n = match (result, short_read) {
        (_, Some(n)) => n,
        (result, None) => result?,
    };
    // SAFETY: recv(2) initialized the first `n` bytes of the spare capacity it was given.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => s.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => s.poll_shutdown(cx),
        }
    }
}
