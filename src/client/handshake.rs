//! The startup phase: TLS when the client asks and `client_tls_sslmode` allows (GSS
//! encryption is refused), cancel requests, the protocol version, and who the client is.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::ClientError;
use crate::context::Context;
use crate::protocol::io::read_startup;
use crate::protocol::startup::{Encryption, Negotiation, StartupPacket};
use crate::protocol::tags::{ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED};
use crate::protocol::{messages, sqlstate, PgError};
use crate::server::BackendKey;
use crate::stream::Stream;
use crate::tls::negotiate::{self, Answer};
use crate::tls::stream::TlsStream;

/// Who a client says it is, and what it asked for.
#[derive(Debug, Clone)]
pub struct Startup {
    pub user: String,
    pub database: String,
    /// Every startup parameter as sent (user and database included).
    pub params: Vec<(String, String)>,
}

/// Runs `fut` within the login deadline (zero: no deadline).
pub async fn with_deadline<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    if limit.is_zero() {
        return fut.await;
    }
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(ClientError::LoginTimeout(limit)))
}

/// Reads startup-phase packets until a StartupMessage (`Some`) or a CancelRequest (`None`).
pub async fn read_hello(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
) -> Result<Option<Startup>, ClientError> {
    let mut negotiation = Negotiation::default();
    loop {
        let packet = read_startup(stream, buf).await?;
        let packet = negotiation.classify(&packet);
        // A second request of a kind (or any after TLS is up) reads as a protocol version,
        // as in Postgres.
        match packet.map_err(|e| ClientError::Refused(PgError::protocol_violation(e)))? {
            StartupPacket::SslRequest => {
                ssl_request(stream, buf, ctx).await?;
                negotiation.answered(Encryption::Ssl, stream.is_encrypted());
            }
            StartupPacket::GssEncRequest => {
                stream.write_all(&[ENCRYPTION_REFUSED]).await?;
                negotiation.answered(Encryption::Gss, false);
            }
            StartupPacket::Cancel { pid, secret } => {
                ctx.cancels.cancel(BackendKey { pid, secret }).await;
                return Ok(None);
            }
            StartupPacket::Unsupported { major, minor } => {
                return Err(ClientError::Refused(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                )));
            }
            StartupPacket::Startup { minor, params } => {
                plaintext_allowed(stream, ctx)?;
                negotiate(stream, minor, &params).await?;
                return identify(params).map(Some);
            }
        }
    }
}

/// Answers an SSLRequest: `S` and the TLS handshake, or `N`.
///
/// Bytes the client sent after its SSLRequest and before the handshake would be taken as
/// if they had been encrypted (a man in the middle injecting commands, CVE-2021-3935's
/// shape): the connection is refused with Postgres' 08P01 instead.
async fn ssl_request(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
) -> Result<(), ClientError> {
    let tls = ctx.tls.current();
    let over_tcp = matches!(stream, Stream::Tcp(_));
    let acceptor = match &tls.client.acceptor {
        Some(acceptor) => acceptor,
        None => return Ok(stream.write_all(&[ENCRYPTION_REFUSED]).await?),
    };
    if negotiate::client_ssl_request(tls.client.mode, true, over_tcp) == Answer::Refuse {
        return Ok(stream.write_all(&[ENCRYPTION_REFUSED]).await?);
    }
    if !buf.is_empty() || stream.has_pending_input() {
        return Err(ClientError::Refused(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        )));
    }
    stream.write_all(&[ENCRYPTION_ACCEPTED]).await?;
    let Stream::Tcp(tcp) = &*stream else {
        return Ok(());
    };
    // The accepted socket is borrowed here: the TLS stream gets a duplicate of its
    // descriptor, and the original closes when the stream is replaced below.
    let socket = socket2::SockRef::from(tcp).try_clone()?;
    let tcp = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let (tcp, conn) = acceptor.accept(tcp).await?.into_inner();
    *stream = Stream::Tls(Box::new(TlsStream::new(tcp, conn)));
    Ok(())
}

/// Refuses a plaintext TCP client where `client_tls_sslmode` requires TLS (after its
/// startup packet, so the message reaches it).
fn plaintext_allowed(stream: &Stream, ctx: &Context) -> Result<(), ClientError> {
    let mode = ctx.tls.current().client.mode;
    let over_tcp = matches!(stream, Stream::Tcp(_));
    if stream.is_encrypted() || negotiate::client_plaintext_allowed(mode, over_tcp) {
        return Ok(());
    }
    Err(ClientError::Refused(PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION,
        format!(
            "TLS required: client_tls_sslmode is {mode}; connect with sslmode=require or stricter"
        ),
    )))
}

/// Protocol 3.x with x > 0, or `_pq_.` options: say we speak 3.0 and which options we
/// ignore, as Postgres does, and carry on in 3.0.
async fn negotiate(
    stream: &mut Stream,
    minor: u16,
    params: &[(String, String)],
) -> Result<(), ClientError> {
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(0, unsupported, &mut out);
        stream.write_all(&out).await?;
    }
    Ok(())
}

fn identify(params: Vec<(String, String)>) -> Result<Startup, ClientError> {
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    // A replication connection speaks another protocol after login; relaying it as a plain
    // session would only fail later and more obscurely.
    let replication = get("replication").map(|v| v.to_ascii_lowercase());
    if let Some(mode) = replication.filter(|v| !matches!(v.as_str(), "false" | "off" | "0" | "no"))
    {
        return Err(ClientError::Refused(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "replication connections (replication={mode}) are not supported by pgwarden; \
                 connect to Postgres directly"
            ),
        )));
    }
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::Refused(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ))
    })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Startup {
        user,
        database,
        params,
    })
}
