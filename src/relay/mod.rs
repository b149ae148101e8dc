//! A logged-in client's session: bytes moving between the client and whichever server it
//! holds, and the decisions about that server.
//!
//! - [`machine`]: THE protocol state machine, sans-IO. It is fed the bytes that arrive
//!   either way and says what to do ([`machine::Verdict`]).
//! - [`link`]: the session loop. It waits on the sockets, moves bytes ([`io`]), and acts
//!   on the machine's verdicts: attach a server, release it, check it, close it.
//! - `boundary`: what the loop does with its server between relaying: checks, pins,
//!   statement pooling's refusals, and giving the server up at the end.
//! - [`timeouts`]: the idle, transaction and query timeouts.
//! - `wait`: the one wait per turn of the loop (sockets, shutdown, a deadline).
//! - `meter`: the pool's counters (queries, transactions, bytes) as the session goes.

mod boundary;
pub mod io;
mod link;
pub mod machine;
mod meter;
pub mod timeouts;
mod wait;

use std::fmt;

use crate::protocol::PgError;
pub use link::{run, Session};
use machine::Stop;

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// As the protocol machine decided.
    Stop(Stop),
    ClientIo(std::io::Error),
    /// pgwarden refused to go on (no server in time, a failed parameter sync, a timeout).
    Refused(PgError),
    /// Ended with the client's stream in the middle of a message: nothing more can be
    /// said to it, the connection just closes.
    Cut(Box<End>),
    /// Killed from the admin console (KILL, KILL_CLIENT): dropped where it stood.
    Killed,
}

impl End {
    /// What the client is told, if it is still listening.
    fn to_client_error(&self) -> Option<PgError> {
        match self {
            End::Stop(stop) => stop.to_client_error(),
            End::Refused(e) => Some(e.clone()),
            End::Killed => Some(PgError::fatal(
                crate::protocol::sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command (KILL on the pgwarden console)",
            )),
            End::ClientIo(_) | End::Cut(_) => None,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Stop(Stop::ClientLeft) => f.write_str("client closed the connection"),
            End::Stop(Stop::ClientViolation(e)) => write!(f, "protocol violation: {e}"),
            End::Stop(Stop::ServerFault(e)) => write!(f, "server protocol violation: {e}"),
            End::Stop(Stop::ServerLost(e)) => write!(f, "server connection lost: {e}"),
            End::Stop(Stop::Lost(e)) => write!(f, "lost track of the server's answers: {e}"),
            End::Stop(Stop::Shutdown) => f.write_str("pgwarden shutting down"),
            End::ClientIo(e) => write!(f, "client socket error: {e}"),
            End::Refused(e) => write!(f, "refused: {}", e.message),
            End::Cut(end) => write!(f, "{end} (mid-message, the client was told nothing)"),
            End::Killed => f.write_str("killed from the admin console"),
        }
    }
}
