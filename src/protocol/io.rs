//! Whole-message reads for the handshake phases (startup, authentication, server login).
//!
//! The relay does not use these: it streams frames with [`super::framing::Framer`].
//! Reads keep unconsumed bytes in the caller's buffer, so they are cancel-safe as long as the
//! buffer outlives the future.

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::framing::{Chunk, Framer, FramingError, HEADER_LEN};
use super::startup::{self, Front, MAX_STARTUP_PACKET};

/// The most room made for one read. Reads never reserve what a header only declares: a
/// 5-byte header claiming 1 GiB must cost what actually arrives, not 1 GiB.
const READ_CHUNK: usize = 8 * 1024;

/// Why a whole-message read failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(
        "invalid startup packet length {0}: a startup packet is 8 to {max} bytes, its length \
         word included (MAX_STARTUP_PACKET_LENGTH = {MAX_STARTUP_PACKET})",
        max = MAX_STARTUP_PACKET + 4
    )]
    BadStartupLength(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A complete tagged message: the tag and its body (header removed).
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: BytesMut,
}

/// Reads until `buf` holds `need` bytes. The buffer grows with the bytes that arrive (at
/// most [`READ_CHUNK`] of room per read), whatever `need` says.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    need: usize,
) -> Result<(), ReadError> {
    while buf.len() < need {
        buf.reserve((need - buf.len()).min(READ_CHUNK));
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    Ok(())
}

/// Reads one untagged startup-phase packet, returned with its 4-byte length prefix.
pub async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, ReadError> {
    loop {
        match startup::front(buf).map_err(ReadError::BadStartupLength)? {
            Front::Whole(len) => return Ok(buf.split_to(len)),
            Front::NeedMore(need) => fill(stream, buf, need).await?,
        }
    }
}

/// Reads one complete tagged message of at most `max_len` bytes (length field included).
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: u32,
) -> Result<Message, ReadError> {
    let mut framer = Framer::new(max_len);
    loop {
        match framer.next(buf, |_| true)? {
            Chunk::Start { tag, taken, .. } => {
                let mut msg = buf.split_to(taken);
                msg.advance(HEADER_LEN);
                return Ok(Message { tag, body: msg });
            }
            Chunk::NeedMore { need } => fill(stream, buf, need).await?,
            Chunk::Rest { .. } => unreachable!("a fresh framer never streams"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_messages_split_across_many_reads() {
        let mut bytes = vec![b'p', 0, 0, 0, 11];
        bytes.extend_from_slice(b"hunter");
        bytes.push(0);
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let mut builder = tokio_test_reader(&bytes);
        let mut buf = BytesMut::new();
        let first = read_message(&mut builder, &mut buf, 1000).await.unwrap();
        assert_eq!((first.tag, &first.body[..]), (b'p', &b"hunter\0"[..]));
        let second = read_message(&mut builder, &mut buf, 1000).await.unwrap();
        assert_eq!((second.tag, second.body.len()), (b'S', 0));
        assert!(matches!(
            read_message(&mut builder, &mut buf, 1000).await,
            Err(ReadError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_startup_packet_is_refused_unread() {
        let bytes = 1_000_000u32.to_be_bytes();
        let mut reader = tokio_test_reader(&bytes);
        let err = read_startup(&mut reader, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::BadStartupLength(1_000_000)));
    }

    #[tokio::test]
    async fn a_declared_length_reserves_only_what_arrives() {
        // A header declaring 1 GiB, then 20 KB of body, then the peer hangs up.
        let mut bytes = vec![b'p', 0x3f, 0xff, 0xff, 0xff];
        bytes.resize(20_005, b'x');
        let mut reader = &bytes[..];
        let mut buf = BytesMut::new();
        let err = read_message(&mut reader, &mut buf, 1 << 30)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Closed), "{err}");
        assert_eq!(buf.len(), bytes.len());
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[tokio::test]
    async fn startup_length_errors_name_the_limit() {
        for len in [0u32, 7, 10_005, u32::MAX] {
            let bytes = len.to_be_bytes();
            let err = read_startup(&mut &bytes[..], &mut BytesMut::new())
                .await
                .unwrap_err();
            assert!(matches!(err, ReadError::BadStartupLength(l) if l == len as usize));
            assert!(err.to_string().contains("10004 bytes"), "{err}");
        }
        let mut whole = 10_004u32.to_be_bytes().to_vec();
        whole.resize(10_004, 0);
        let packet = read_startup(&mut &whole[..], &mut BytesMut::new()).await;
        assert_eq!(packet.unwrap().len(), 10_004);
    }

    /// A reader that yields one byte per read, to exercise reassembly.
    fn tokio_test_reader(bytes: &[u8]) -> impl AsyncRead + Unpin {
        use std::pin::Pin;
        use std::task::{Context, Poll};
        struct OneByte(Vec<u8>, usize);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                out: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if self.1 < self.0.len() {
                    let b = self.0[self.1];
                    out.put_slice(&[b]);
                    self.1 += 1;
                }
                Poll::Ready(Ok(()))
            }
        }
        OneByte(bytes.to_vec(), 0)
    }
}
