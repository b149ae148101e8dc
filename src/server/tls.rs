//! TLS towards a server, as libpq negotiates it: an SSLRequest, exactly one byte of answer,
//! then the handshake (with the target's host name, IP addresses as IP names) or plaintext,
//! as `server_tls_sslmode` allows. Unix-socket targets never get here.

use std::io;

use rustls::pki_types::ServerName;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::messages;
use crate::protocol::tags::startup_code;
use crate::stream::Stream;
use crate::tls::negotiate::{self, ServerAnswer};
use crate::tls::stream::TlsStream;
use crate::tls::{ServerSide, SslMode};

/// Turns a connected socket to `host` into what `mode` says (the side's mode, or the one an
/// `allow` attempt uses): TLS, or plaintext.
pub async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    side: &ServerSide,
    mode: SslMode,
) -> io::Result<Stream> {
    if !negotiate::asks_server(mode, true) {
        return Ok(Stream::Tcp(tcp));
    }
    let Some(connector) = &side.connector else {
        // Only when the files broke between validation and start (logged then).
        return match mode.required() {
            true => Err(io::Error::other(format!(
                "server_tls_sslmode is {mode} but the TLS files could not be loaded"
            ))),
            false => Ok(Stream::Tcp(tcp)),
        };
    };
    let mut request = bytes::BytesMut::new();
    messages::startup_packet(startup_code::SSL_REQUEST, &[], &mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    let extra = has_more(&tcp);
    match negotiate::server_answer(mode, answer[0], extra).map_err(io::Error::other)? {
        ServerAnswer::Plaintext => Ok(Stream::Tcp(tcp)),
        ServerAnswer::Handshake => {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                io::Error::other(format!("{host:?} is not a host name TLS can check: {e}"))
            })?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| handshake_error(e, host))?;
            let (tcp, conn) = tls.into_inner();
            Ok(Stream::Tls(Box::new(TlsStream::new(tcp, conn))))
        }
    }
}

/// Whether anything followed the one-byte answer already (a peek: nothing is consumed).
fn has_more(tcp: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(SockRef::from(tcp).peek(&mut probe), Ok(n) if n > 0)
}

/// A failed handshake, saying so plainly when it was the certificate.
fn handshake_error(e: io::Error, host: &str) -> io::Error {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cause)) => io::Error::other(format!(
            "server certificate verification failed for host {host}: {cause:?}"
        )),
        _ => io::Error::other(format!("TLS handshake with host {host} failed: {e}")),
    }
}
