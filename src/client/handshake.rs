//! The startup phase: refuse SSL/GSS encryption, answer cancel requests, negotiate the
//! protocol version, and read who the client is.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::ClientError;
use crate::context::Context;
use crate::protocol::io::read_startup;
use crate::protocol::startup::{Encryption, Negotiation, StartupPacket};
use crate::protocol::tags::ENCRYPTION_REFUSED;
use crate::protocol::{messages, sqlstate, PgError};
use crate::server::BackendKey;
use crate::stream::Stream;

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
        match packet.map_err(|e| ClientError::Refused(PgError::protocol_violation(e)))? {
            StartupPacket::SslRequest => {
                stream.write_all(&[ENCRYPTION_REFUSED]).await?;
                negotiation.answered(Encryption::Ssl, false);
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
                negotiate(stream, minor, &params).await?;
                return identify(params).map(Some);
            }
        }
    }
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
