//! One client connection from accept to close: [`handshake`] (startup packet, SSL/GSS
//! refusal, cancel requests), [`login`] (routing, authentication, a server, parameters),
//! then the session itself ([`crate::relay`]). Until it has authenticated it holds a place
//! in the pre-login budget ([`crate::prelogin`]) and is closed if it must give way; a
//! connection accepted while `max_client_conn` is full goes through the startup phase
//! only, to be refused where its client can show why ([`refuse_full`]).

mod console;
mod handshake;
mod login;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::auth::AuthError;
use crate::context::Context;
use crate::pool::CheckoutError;
use crate::prelogin::{Eviction, GiveWay, Place};
use crate::protocol::io::ReadError;
use crate::protocol::PgError;
use crate::refusals::Cap;
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
    /// Still logging in when a newcomer needed its place in the pre-login budget.
    #[error("gave way to a newer connection ({} full)", .0.cap().key())]
    GaveWay(GiveWay),
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
            ClientError::GaveWay(why) => Some(why.to_client_error()),
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
    pending: (Place, Eviction),
) -> impl Future<Output = ()> {
    async move {
        // The handshake and login are boxed: they are large (authentication exchanges)
        // and finished before the session starts, so an idle client does not carry them.
        let Some(admitted) = Box::pin(admit(&mut stream, peer, &ctx, pending)).await else {
            return;
        };
        let Admitted {
            logged_in,
            user,
            peer,
            buf,
        } = admitted;
        let (session, slots) = logged_in;
        let reason = crate::relay::run(&stream, buf, session, &ctx).await;
        drop(slots);
        info!(%peer, user = %user, reason = %reason, "client disconnected");
    }
}

/// A client that logged in, and what its session starts with.
struct Admitted {
    /// Its session and its places under the client caps.
    logged_in: (crate::relay::Session, crate::admission::Slots),
    user: String,
    peer: String,
    /// What it sent after its login messages.
    buf: BytesMut,
}

/// The handshake and the login, raced against having to give way in the pre-login
/// budget; `None` when the connection ended there (refused, evicted, or a cancel request).
async fn admit(
    stream: &mut Stream,
    peer_addr: Option<SocketAddr>,
    ctx: &Context,
    (place, mut eviction): (Place, Eviction),
) -> Option<Admitted> {
    let peer = peer_addr.map_or_else(|| "unix".to_owned(), |p| p.to_string());
    let mut buf = BytesMut::new();
    // Biased: a client that has just logged in is in, whatever arrived meanwhile.
    let outcome = tokio::select! {
        biased;
        outcome = log_in(stream, &mut buf, ctx, peer_addr, place, &peer) => outcome,
        why = eviction.wait() => Err(Failure { err: ClientError::GaveWay(why), user: None }),
    };
    match outcome {
        Ok(Some((user, login::LoggedIn::Console(console)))) => {
            // Served here, inside the boxed login: the session future every idle client
            // is made of does not carry the console.
            let buf = std::mem::take(&mut buf);
            let reason = crate::console::run(stream, buf, *console, ctx).await;
            info!(%peer, user = %user, reason = %reason, "console client disconnected");
            None
        }
        Ok(Some((user, login::LoggedIn::Relay { session, slots }))) => Some(Admitted {
            logged_in: (session, slots),
            user,
            peer,
            buf,
        }),
        Ok(None) => None, // a cancel request: answered by closing
        Err(Failure { err, user }) => {
            match (&err, &user) {
                (ClientError::GaveWay(_), _) => info!(%peer, cause = %err, "client closed"),
                (_, Some(user)) => info!(%peer, user = %user, cause = %err, "client refused"),
                (_, None) => debug!(%peer, cause = %err, "client refused before login"),
            }
            let user = user.unwrap_or_default();
            Box::pin(refuse(stream, &err, &user)).await;
            None
        }
    }
}

/// Why a login failed, and who the client said it was if it got that far.
struct Failure {
    err: ClientError,
    user: Option<String>,
}

/// The startup phase then the login, each within `client_login_timeout`; `None` for a
/// cancel request.
async fn log_in(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
    peer_addr: Option<SocketAddr>,
    place: Place,
    peer: &str,
) -> Result<Option<(String, login::LoggedIn)>, Failure> {
    let login_timeout = ctx.config.client_login_timeout;
    let hello = Box::pin(handshake::with_deadline(
        login_timeout,
        handshake::read_hello(stream, buf, ctx),
    ))
    .await;
    let startup = match hello {
        Ok(Some(startup)) => startup,
        Ok(None) => return Ok(None),
        Err(err) => return Err(Failure { err, user: None }),
    };
    info!(%peer, user = %startup.user, database = %startup.database, "client connected");
    if ctx.draining() && !crate::shutdown::admitted_while_draining(&startup.database) {
        return Err(Failure {
            err: ClientError::Refused(PgError::not_while_draining()),
            user: Some(startup.user),
        });
    }
    let login = login::login(stream, buf, ctx, &startup, peer_addr, place);
    match Box::pin(handshake::with_deadline(login_timeout, login)).await {
        Ok(logged_in) => Ok(Some((startup.user, logged_in))),
        Err(err) => Err(Failure {
            err,
            user: Some(startup.user),
        }),
    }
}

/// How long a connection refused for `max_client_conn` may take over its startup phase
/// (or `client_login_timeout` if that is shorter): long enough for a TLS handshake over a
/// slow link, short enough that refusing is cheap.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// A connection accepted while `max_client_conn` is full: the same startup phase as any
/// client (answering SSLRequest and GSSENCRequest first, which libpq sends before
/// anything else), then FATAL 53300 naming the cap, after its startup packet, as Postgres
/// and PgBouncer do; so psql and pgbench show the reason. A cancel request is forwarded
/// as usual: it is how a user stops a runaway query while the proxy is full. A client
/// that does not finish within [`REFUSAL_DEADLINE`] gets the same 53300.
pub async fn refuse_full(mut stream: Stream, peer: Option<SocketAddr>, ctx: Context) {
    let peer = peer.map_or_else(|| "unix".to_owned(), |p| p.to_string());
    let mut buf = BytesMut::new();
    let login_timeout = ctx.config.client_login_timeout;
    let deadline = match login_timeout.is_zero() {
        true => REFUSAL_DEADLINE,
        false => login_timeout.min(REFUSAL_DEADLINE),
    };
    let hello =
        handshake::with_deadline(deadline, handshake::read_hello(&mut stream, &mut buf, &ctx));
    let max = ctx.config.max_client_conn;
    let full = ClientError::Refused(PgError::too_many_clients(max));
    match Box::pin(hello).await {
        Ok(None) => {} // a cancel request, forwarded
        Ok(Some(_)) | Err(ClientError::LoginTimeout(_)) => {
            ctx.refusals.count(Cap::MaxClientConn);
            warn!(%peer, max_client_conn = max, "client refused: max_client_conn reached");
            refuse(&mut stream, &full, "").await;
        }
        Err(err) => refuse(&mut stream, &err, "").await,
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
        let pending = ctx.prelogin.arrive(crate::prelogin::Source::UnixSocket);
        let client = super::serve(crate::stream::Stream::Unix(socket), None, ctx, pending);
        let size = size_of_future(&client);
        eprintln!("client task future: {size} bytes");
        // 1400 bytes today (debug build; 1424 before the session was abortable and
        // metered, 1392 before the pre-login place); 19 KiB before the login and server phases were
        // boxed, 2 KiB while the session's futures kept their arguments twice.
        let limit = 1536;
        assert!(
            size <= limit,
            "a client task's future is {size} bytes (limit {limit})"
        );
    }
}
