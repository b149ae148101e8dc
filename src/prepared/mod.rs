//! Named prepared statements in transaction pooling.
//!
//! A client's statements must follow it from server to server, and clients must never see
//! each other's. So each client keeps its own names ([`ClientStatements`]), each server the
//! statements it holds ([`ServerStatements`]), and names are rewritten on the way through:
//! a statement is prepared on a server as `pgw_<hash of its definition>`, so identical
//! statements from different clients share one server-side statement.
//!
//! When a client's server lacks a statement it uses, pgwarden puts a Parse for it in front
//! of the client's message, in the same write (pipelines stay pipelines); when the server
//! already has a statement the client parses, the Parse is not sent and pgwarden answers
//! ParseComplete itself. Which answers to pass, swallow, replace or write is kept in order
//! by the protocol machine's queue of answers owed, in [`Entry`]s this layer makes. Errors a
//! client makes (an unknown name, a name defined twice) are produced by sending the server
//! a message that fails the same way under a name pgwarden chose, and renaming it back in
//! the server's error: so the client gets Postgres' own error, every field of it, and the
//! server skips to Sync and marks a transaction block failed exactly as it would have on a
//! direct connection.
//!
//! This layer sits below the protocol machine and imports only [`crate::protocol`].

mod client;
mod command;
mod entry;
mod query;
mod retry;
mod statements;

use bytes::BytesMut;

use crate::protocol::answers::Answer;
use crate::protocol::buffer::Pump;
use crate::protocol::extended;
use crate::protocol::framing::Rules;
use crate::protocol::sql::{Effects, Strings};
use crate::protocol::tags::frontend;

pub use client::Seen;
pub use entry::{Entry, Expects, Fate, Kind, Rename, Undo};
pub use retry::Replay;
pub use statements::{ClientStatements, ServerStatements};

/// Whether pgwarden rewrites a Query's SQL-level PREPARE (so it need not pin).
pub fn handles_query(sql: &[u8], strings: Strings) -> bool {
    command::read_all(sql, strings).is_some()
}

/// One client's prepared statements, and the pipeline kept for a retry.
#[derive(Debug)]
pub struct Prepared {
    pub client: ClientStatements,
    /// Statements one server may hold (`max_prepared_statements`).
    max: usize,
    /// The client is pinned to its server: names pgwarden does not know may be the
    /// server's own (from SQL it passed through unchanged), so they go through as written.
    pub pinned: bool,
    retry: retry::Retry,
    /// What the statements the client ran since last asked may do to the session (the
    /// protocol machine takes it after each message).
    pub used: Effects,
}

/// A statement name no server ever holds: using it fails with Postgres' own error for an
/// unknown statement, which is then renamed to the client's name.
const ABSENT: &[u8] = b"pgwarden.absent";

impl Prepared {
    pub fn new(max: usize) -> Self {
        Prepared {
            client: ClientStatements::default(),
            max,
            pinned: false,
            retry: retry::Retry::default(),
            used: Effects::default(),
        }
    }

    /// Client messages whose names may need rewriting, so must be seen whole.
    pub fn client_inspects(tag: u8) -> bool {
        matches!(
            tag,
            frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::CLOSE
                | frontend::QUERY
                | frontend::EXECUTE
                | frontend::SYNC
        )
    }

    /// A server was attached: statements it got for earlier clients are fair game for
    /// eviction, the ones this client uses from now on are not.
    pub fn attach(&mut self, server: &mut ServerStatements) {
        server.lend();
        self.retry.reset();
    }

    /// Gives back what the last transaction grew, while the client is idle (the names it
    /// defined stay).
    pub fn release_memory(&mut self) {
        self.retry.release_memory();
    }

    /// A server message answering `front` arrived: once anything executes, a retry could
    /// run it twice.
    pub fn on_answer(&mut self, front: Option<&Entry>) {
        self.retry.on_server(front);
    }

    /// Whether `error` (a whole ErrorResponse answering `front`) is a stale plan this
    /// pipeline can recover from; if so, what to send again.
    pub fn stale(
        &mut self,
        error: &[u8],
        front: Option<&Entry>,
        sync_is_last: bool,
    ) -> Option<Replay> {
        self.retry.stale(error, front, sync_is_last)
    }

    /// Re-prepares a statement whose plan went stale and sends the client's pipeline again
    /// from the message that failed.
    pub fn replay(
        &mut self,
        replay: Replay,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        tracing::debug!(
            statement = %String::from_utf8_lossy(replay.statement.server_name()),
            "statement's result type changed; preparing it again and retrying"
        );
        self.close_on_server(replay.statement, c2s.inject(), server, owed);
        let mut again = Pump::new(BytesMut::from(&replay.messages[..]), u32::MAX, Rules::Any);
        while let Ok(Some(found)) = again.next(Self::client_inspects) {
            let seen = Seen {
                fresh: false,
                names_statements: true,
                strings: Strings::Standard,
            };
            self.client_message(found, &mut again, server, seen, owed);
        }
        let out = c2s.inject();
        out.extend_from_slice(&again.out);
        out.extend_from_slice(&again.buf[..again.ready]);
    }

    /// Puts a Describe of a statement no server holds where the client's erroneous message
    /// was, so Postgres' error arrives in order; it is renamed to `name` on its way.
    fn fail_unknown(&mut self, c2s: &mut Pump, name: &[u8], owed: &mut dyn Expects) {
        extended::statement_target(frontend::DESCRIBE, ABSENT, c2s.inject());
        let rename = Rename {
            provoked: ABSENT.into(),
            client: name.into(),
        };
        owed.push(Entry::new(Kind::Await(
            Answer::Describe,
            Fate::Fail(rename),
        )));
    }

    /// Closes `statement` on the server (it is evicted or its name is needed).
    fn close_on_server(
        &mut self,
        statement: std::sync::Arc<statements::Statement>,
        out: &mut BytesMut,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        extended::statement_target(frontend::CLOSE, statement.server_name(), out);
        server.remove(statement.hash);
        owed.push(Entry::swallow(Answer::Close).undo(Undo::ServerRestore(statement)));
    }
}
