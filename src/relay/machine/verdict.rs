//! What the protocol machine tells the session loop: the next thing to do
//! ([`Verdict`]), what to ask the server at a boundary ([`Checks`]), and why a session
//! ends ([`Stop`]), with the error its client is told.

use crate::protocol::framing::FramingError;
use crate::protocol::PgError;

/// What the session loop should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No server is attached and the client has sent nothing complete: wait for it.
    Wait,
    /// The client sent a complete request and holds no server: get one.
    Attach,
    /// Keep relaying in both directions.
    Relay,
    /// The server owes nothing, all is delivered, and the client need not keep it.
    Release,
    /// At a boundary, ask the server first: what the client's session set, what it holds.
    Check(Checks),
    /// Statement pooling: the server reported a transaction block; its ReadyForQuery is
    /// held back until the block is rolled back and refused.
    RefuseBlock,
    /// The session is over.
    End(Stop),
}

/// What to ask the server at a boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Read the session's settings back (they follow the client to its next server).
    pub settings: bool,
    /// Ask what session state it holds (pins).
    pub held: bool,
}

impl Checks {
    pub fn any(self) -> bool {
        self.settings || self.held
    }
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Terminate, or end of stream.
    ClientLeft,
    /// The client broke the protocol; it is told so (FATAL 08P01).
    ClientViolation(FramingError),
    /// The server broke the protocol: it is closed, the client told which way.
    ServerFault(String),
    ServerLost(String),
    /// Answers are rewritten and the machine lost track of them: the client cannot be
    /// given correct answers any more, so it is told why and the server closed.
    Lost(&'static str),
    /// Shutdown found the session at a boundary.
    Shutdown,
}

impl Stop {
    /// The error the client is sent, when it is still listening.
    pub fn to_client_error(&self) -> Option<PgError> {
        use crate::protocol::sqlstate;
        match self {
            Stop::ClientLeft => None,
            Stop::ClientViolation(e) => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                e.client_message(),
            )),
            Stop::ServerFault(fault) => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("server protocol violation: {fault}"),
            )),
            Stop::ServerLost(e) => Some(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("server connection lost: {e}"),
            )),
            Stop::Lost(why) => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgwarden lost track of the server's answers: {why}"),
            )),
            Stop::Shutdown => Some(PgError::shutting_down()),
        }
    }
}
