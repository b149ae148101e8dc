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
//! by [`expect::Expect`]. Errors a client makes (an unknown name, a name defined twice) are
//! produced by sending the server a message that fails, then replacing its error with
//! Postgres' own wording: so the server skips to Sync and marks a transaction block failed
//! exactly as it would have on a direct connection.

mod client;
mod command;
mod expect;
mod query;
mod retry;
mod statements;

use bytes::BytesMut;

use crate::client::pump::{Flow, Found, Pump};
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{extended, PgError};

pub use client::Seen;
use expect::{Answer, Entry, Expect, Fate, Kind, Undo, Verdict};
pub use statements::{ClientStatements, ServerStatements};

/// Whether pgwarden rewrites a Query's SQL-level PREPARE (so it need not pin).
pub fn handles_query(sql: &[u8]) -> bool {
    command::read_all(sql).is_some()
}

/// One client's prepared statements and the answers its current server still owes.
#[derive(Debug)]
pub struct Prepared {
    pub client: ClientStatements,
    expect: Expect,
    /// Statements one server may hold (`max_prepared_statements`).
    max: usize,
    /// The client is pinned to its server: names pgwarden does not know may be the
    /// server's own (from SQL it passed through unchanged), so they go through as written.
    pub pinned: bool,
    retry: retry::Retry,
}

/// A statement name no server ever holds: describing it fails, which is how an error the
/// client made is put in its place in the pipeline.
const ABSENT: &[u8] = b"pgwarden.absent";

impl Prepared {
    pub fn new(max: usize) -> Self {
        Prepared {
            client: ClientStatements::default(),
            expect: Expect::default(),
            max,
            pinned: false,
            retry: retry::Retry::default(),
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

    pub fn server_inspects(tag: u8) -> bool {
        expect::inspects(tag)
    }

    /// Requests (Query, FunctionCall) the server skipped since last asked, whose
    /// ReadyForQuery the transaction tracker must stop waiting for.
    pub fn take_skipped_requests(&mut self) -> usize {
        std::mem::take(&mut self.expect.skipped_requests)
    }

    /// Every answer owed has reached the client.
    pub fn quiet(&self) -> bool {
        self.expect.is_empty()
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
        self.expect.release_memory();
        self.retry.release_memory();
    }

    /// The server is gone or being given up mid-request: answers owed will never come.
    pub fn abandon(&mut self, server: &mut ServerStatements) {
        self.expect.abandon(&mut self.client, server);
    }

    /// Handles one message from the server, found by `s2c.next`.
    pub fn server_message(
        &mut self,
        found: Found,
        s2c: &mut Pump,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        track: impl FnOnce(u8, Option<&[u8]>) -> Flow,
    ) -> Flow {
        if found.tag == backend::COPY_IN_RESPONSE {
            self.expect.on_copy_in();
        }
        let replay = if found.whole && found.tag == backend::ERROR_RESPONSE {
            let sync_is_last = self.expect.sync_is_last();
            self.retry
                .stale(s2c.message(found), self.expect.front(), sync_is_last)
        } else {
            None
        };
        let verdict = match replay {
            Some(_) => {
                // Skip what the server skipped, and the ReadyForQuery that ends it: the
                // client's own comes after the pipeline is sent again.
                self.expect.on_server(found.tag, &mut self.client, server);
                self.expect.swallow_front();
                Verdict::Swallow
            }
            None => {
                self.retry.on_server(self.expect.front());
                self.expect.on_server(found.tag, &mut self.client, server)
            }
        };
        match &verdict {
            Verdict::Forward => {
                if track(found.tag, found.whole.then(|| s2c.message(found))) == Flow::Stop {
                    return Flow::Stop;
                }
                s2c.forward(found.taken);
            }
            // Only whole messages are ever swallowed or replaced (their tags are inspected).
            Verdict::Swallow if found.whole => s2c.drop_message(found.taken),
            Verdict::Replace(error) if found.whole => {
                s2c.drop_message(found.taken);
                s2c.inject().extend_from_slice(error);
            }
            _ => s2c.forward(found.taken),
        }
        if let Some(replay) = replay {
            self.replay(replay, c2s, server);
        }
        self.write_due(s2c);
        Flow::Forward
    }

    /// Re-prepares a statement whose plan went stale and sends the client's pipeline again
    /// from the message that failed.
    fn replay(&mut self, replay: retry::Replay, c2s: &mut Pump, server: &mut ServerStatements) {
        tracing::debug!(
            statement = %String::from_utf8_lossy(replay.statement.server_name()),
            "statement's result type changed; preparing it again and retrying"
        );
        self.close_on_server(replay.statement, c2s.inject(), server);
        let mut again = Pump::new(BytesMut::from(&replay.messages[..]), u32::MAX);
        while let Ok(Some(found)) = again.next(Self::client_inspects) {
            let seen = Seen {
                copy_in: false,
                fresh: false,
                names_statements: true,
            };
            self.client_message(found, &mut again, server, seen);
        }
        let out = c2s.inject();
        out.extend_from_slice(&again.out);
        out.extend_from_slice(&again.buf[..again.ready]);
    }

    /// Writes the answers pgwarden owes for messages it did not send, once their turn came.
    pub fn write_due(&mut self, s2c: &mut Pump) {
        if !s2c.framer.at_boundary() {
            return;
        }
        while let Some(tag) = self.expect.due_write() {
            extended::empty(tag, s2c.inject());
        }
    }

    /// Puts a message that fails on the server where the client's erroneous one was, so
    /// its error arrives in order; the error is then replaced by `error`.
    fn fail(&mut self, c2s: &mut Pump, error: PgError) {
        extended::statement_target(frontend::DESCRIBE, ABSENT, c2s.inject());
        let error = error.to_bytes().freeze();
        self.expect
            .push(Entry::new(Kind::Await(Answer::Describe, Fate::Fail(error))));
    }

    /// Closes `statement` on the server (it is evicted or its name is needed).
    fn close_on_server(
        &mut self,
        statement: std::sync::Arc<statements::Statement>,
        out: &mut BytesMut,
        server: &mut ServerStatements,
    ) {
        extended::statement_target(frontend::CLOSE, statement.server_name(), out);
        server.remove(statement.hash);
        self.expect.push(
            Entry::new(Kind::Await(Answer::Close, Fate::Swallow))
                .undo(Undo::ServerRestore(statement)),
        );
    }
}
