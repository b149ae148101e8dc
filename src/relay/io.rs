//! Moving one direction's bytes between a socket and its [`Pump`]: reads that grow the
//! buffer only with what arrives, and writes of what the machine made ready.

use std::io;

use crate::protocol::buffer::Pump;
use crate::stream::Stream;

/// Read at least this much at a time; small enough that an idle pump costs little.
const READ_CHUNK: usize = 8 * 1024;
/// The first read into an empty buffer.
const FIRST_READ: usize = 1024;

/// Reads whatever the socket has. `Ok(false)` at end of stream.
///
/// Room is made for what arrives, never for what a header declares: the buffer at most
/// doubles per read, so memory follows the bytes actually received.
pub fn read_into(pump: &mut Pump, stream: &Stream) -> io::Result<bool> {
    let buf = &mut pump.buf;
    if buf.capacity() == 0 {
        // The first read after idling: most requests are small, and a client may wait
        // for a server holding what it read, so start small and grow on demand.
        buf.reserve(FIRST_READ);
    } else if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK.max(buf.len()));
    }
    match stream.try_read_buf(buf) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // A wake-up with nothing to read (readiness left over from login): give the
            // reservation back, or every idle client would keep it for nothing.
            pump.release_memory();
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Writes as much of the ready bytes as the socket takes now (with none ready, TLS sends
/// the ciphertext it still holds).
pub fn write_from(pump: &mut Pump, stream: &Stream) -> io::Result<()> {
    let (out, ready) = pump.output();
    let result = if out.is_empty() {
        stream.try_write(ready)
    } else {
        stream.try_write_vectored(&[io::IoSlice::new(out), io::IoSlice::new(ready)])
    };
    match result {
        Ok(n) => {
            pump.wrote(n);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes all ready bytes (and, for TLS, their ciphertext), waiting for the socket as
/// needed.
pub async fn flush(pump: &mut Pump, stream: &Stream) -> io::Result<()> {
    while pump.has_output() || stream.wants_write() {
        stream.writable().await?;
        write_from(pump, stream)?;
    }
    Ok(())
}
