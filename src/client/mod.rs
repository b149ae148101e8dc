//! One client connection from accept to close: [`handshake`] (startup packet, SSL/GSS
//! refusal, cancel requests), [`login`] (routing, authentication, a server, parameters),
//! then the session itself ([`crate::relay`]).

mod handshake;
mod login;

use std::future::Future;
use std::net::SocketAddr;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use crate::auth::AuthError;
use crate::context::Context;
use crate::pool::CheckoutError;
use crate::protocol::io::ReadError;
use crate::protocol::PgError;
use crate::server::ServerError;
use crate::stream::Stream;

/// Why a client connection ended before or outside a normal session.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Refused with an error the client is sent as is.
    #[error("{0}")]
    Refused(PgError),
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("client_login_timeout ({0:?}) expired before login completed")]
    LoginTimeout(std::time::Duration),
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The ErrorResponse to send, if the client can still be told anything.
    fn to_client_error(&self, user: &str) -> Option<PgError> {
        match self {
            ClientError::Refused(e) => Some(e.clone()),
            ClientError::Auth(e) => Some(e.to_pg_error(user)),
            ClientError::Checkout(e) => Some(e.to_client_error()),
            ClientError::Server(e) => Some(e.to_client_error()),
            ClientError::LoginTimeout(_) => Some(PgError::fatal(
                crate::protocol::sqlstate::PROTOCOL_VIOLATION,
                self.to_string(),
            )),
            ClientError::Read(ReadError::Framing(e)) => Some(PgError::protocol_violation(e)),
            ClientError::Read(ReadError::BadStartupLength(_)) => {
                Some(PgError::protocol_violation(self))
            }
            ClientError::Read(_) | ClientError::Io(_) => None,
        }
    }
}

/// Serves one client connection to the end. Never panics on client input; every refusal
/// is reported to the client as an ErrorResponse before the socket closes.
///
/// Log lines carry the peer as a field rather than through a span: a span would be entered
/// and left on every poll of the relay, a cost paid per message for the sake of four lines.
///
/// Not an `async fn`: one keeps its arguments in its state beside the locals made of them,
/// and this state is every idle client's memory.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve(
    mut stream: Stream,
    peer: Option<SocketAddr>,
    ctx: Context,
) -> impl Future<Output = ()> {
    async move {
        // The handshake and login are boxed: they are large (authentication exchanges)
        // and finished before the session starts, so an idle client does not carry them.
        let Some(admitted) = Box::pin(admit(&mut stream, peer, &ctx)).await else {
            return;
        };
        let Admitted {
            session,
            slots,
            user,
            peer,
            buf,
        } = admitted;
        let reason = crate::relay::run(&stream, buf, session, &ctx).await;
        drop(slots);
        info!(%peer, user = %user, reason = %reason, "client disconnected");
    }
}

/// A client that logged in, and what its session starts with.
struct Admitted {
    session: crate::relay::Session,
    /// Its places under the per-identity caps, held until it leaves.
    slots: crate::admission::Slots,
    user: String,
    peer: String,
    /// What it sent after its login messages.
    buf: BytesMut,
}

/// The handshake and the login; `None` when the connection ended there (refused, or a
/// cancel request).
async fn admit(
    stream: &mut Stream,
    peer_addr: Option<SocketAddr>,
    ctx: &Context,
) -> Option<Admitted> {
    let peer = peer_addr.map_or_else(|| "unix".to_owned(), |p| p.to_string());
    let mut buf = BytesMut::new();
    let login_timeout = ctx.config.client_login_timeout;
    let hello = Box::pin(handshake::with_deadline(
        login_timeout,
        handshake::read_hello(stream, &mut buf, ctx),
    ))
    .await;
    let startup = match hello {
        Ok(Some(startup)) => startup,
        Ok(None) => return None, // a cancel request: answered by closing
        Err(err) => {
            debug!(%peer, cause = %err, "client refused before login");
            refuse(stream, &err, "").await;
            return None;
        }
    };
    let user = startup.user.clone();
    info!(%peer, user = %startup.user, database = %startup.database, "client connected");
    let login = login::login(stream, &mut buf, ctx, &startup, peer_addr);
    match Box::pin(handshake::with_deadline(login_timeout, login)).await {
        Ok((session, slots)) => Some(Admitted {
            session,
            slots,
            user,
            peer,
            buf,
        }),
        Err(err) => {
            info!(%peer, user = %user, cause = %err, "client refused");
            Box::pin(refuse(stream, &err, &user)).await;
            None
        }
    }
}

async fn refuse(stream: &mut Stream, err: &ClientError, user: &str) {
    if let Some(pg) = err.to_client_error(user) {
        let _ = stream.write_all(&pg.to_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    fn size_of_future<F: Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle client's memory is mostly this future (tokio stores it inline in the task),
    /// so its size is guarded: phases that are not the idle wait must stay boxed.
    #[tokio::test]
    async fn a_client_task_stays_small() {
        let config = crate::config::from_toml("[databases.\"*\"]\nhost = \"127.0.0.1\"\n").unwrap();
        let ctx = crate::context::Context::new(std::sync::Arc::new(config), Default::default());
        let (socket, _peer) = tokio::net::UnixStream::pair().unwrap();
        let client = super::serve(crate::stream::Stream::Unix(socket), None, ctx);
        let size = size_of_future(&client);
        eprintln!("client task future: {size} bytes");
        // 1392 bytes today (debug build); 19 KiB before the login and server phases were
        // boxed, 2 KiB while the session's futures kept their arguments twice.
        let limit = 1536;
        assert!(
            size <= limit,
            "a client task's future is {size} bytes (limit {limit})"
        );
    }
}
