//! Transparent re-prepare after a schema change. A shared statement whose result columns
//! changed fails with `cached plan must not change result type` (0A000). When the failing
//! pipeline began outside a transaction and nothing in it has executed yet, pgwarden hides
//! the error, re-prepares the statement and sends the client's messages again, so the
//! client never sees it. Otherwise the error reaches the client, as it would from Postgres.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::entry::{Entry, Fate, Kind};
use super::statements::Statement;
use crate::protocol::answers::Answer;
use crate::protocol::buffer::{Found, Pump};
use crate::protocol::errors::parse_error_fields;
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::sqlstate;
use crate::protocol::tags::frontend;

/// A pipeline longer than this is not kept for a retry.
const MAX_KEPT: usize = 64 * 1024;
const STALE_PLAN: &str = "cached plan must not change result type";

/// The client's current pipeline, kept while a retry is still possible.
#[derive(Debug, Default)]
pub struct Retry {
    kept: BytesMut,
    state: State,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Not keeping: the pipeline began inside a transaction, grew too long, ran something,
    /// or was retried once already.
    #[default]
    Off,
    /// The pipeline began outside a transaction; nothing worth keeping yet (only a Bind of
    /// a named statement can fail on a stale plan, and a retry starts there).
    Armed,
    /// Keeping the client's messages as they arrive.
    Keeping,
    /// The pipeline ended with a Sync; nothing after it yet.
    Synced,
}

/// What to send again: the statement to re-prepare and the client's messages from the
/// one that failed to its Sync.
pub struct Replay {
    pub statement: Arc<Statement>,
    pub messages: Bytes,
}

impl Retry {
    pub fn reset(&mut self) {
        self.kept.clear();
        self.state = State::Off;
    }

    /// Frees a buffer grown by a long pipeline (a short one is kept: it is reused).
    pub fn release_memory(&mut self) {
        if self.kept.capacity() > 1024 {
            self.kept = BytesMut::new();
        }
    }

    /// Keeps a client message. `fresh`: it starts a pipeline on a server that owes nothing
    /// and is outside a transaction. `named_bind`: it binds a named statement.
    pub fn keep(&mut self, found: Found, c2s: &Pump, fresh: bool, named_bind: bool) {
        if fresh {
            self.reset();
            self.state = State::Armed;
        }
        if self.state == State::Armed {
            if found.tag == frontend::SYNC {
                // The pipeline ended without binding a named statement.
                return self.reset();
            }
            if !named_bind {
                return;
            }
            self.state = State::Keeping;
        }
        let kept_kind = matches!(
            found.tag,
            frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE
                | frontend::SYNC
                | frontend::FLUSH
        );
        if self.state != State::Keeping
            || !found.whole
            || !kept_kind
            || self.kept.len() + found.taken > MAX_KEPT
        {
            return self.reset();
        }
        self.kept.extend_from_slice(c2s.message(found));
        if found.tag == frontend::SYNC {
            self.state = State::Synced;
        }
    }

    /// Where the message just kept starts in the pipeline.
    pub fn origin(&self, found: Found) -> Option<usize> {
        (self.state == State::Keeping).then(|| self.kept.len() - found.taken)
    }

    /// Notes a server message answering `front`: once anything executes, a retry could
    /// run it twice.
    pub fn on_server(&mut self, front: Option<&Entry>) {
        if let Some(Entry {
            kind: Kind::Await(Answer::Execute | Answer::Query, Fate::Pass),
            ..
        }) = front
        {
            self.reset();
        }
    }

    /// Whether `error` (a whole ErrorResponse answering `front`) is a stale plan this
    /// pipeline can recover from; if so, what to send again. `sync_is_last`: the client
    /// sent nothing after the pipeline's Sync.
    pub fn stale(
        &mut self,
        error: &[u8],
        front: Option<&Entry>,
        sync_is_last: bool,
    ) -> Option<Replay> {
        if self.state != State::Synced || !sync_is_last {
            return None;
        }
        let Entry {
            kind: Kind::Await(Answer::Bind, Fate::Pass),
            statement: Some(statement),
            origin: Some(origin),
            ..
        } = front?
        else {
            return None;
        };
        let (code, message) = parse_error_fields(error.get(HEADER_LEN..)?);
        if code != sqlstate::FEATURE_NOT_SUPPORTED || message != STALE_PLAN {
            return None;
        }
        let messages = Bytes::copy_from_slice(self.kept.get(*origin..)?);
        let statement = statement.clone();
        // Once only: a statement that keeps failing is the client's to see.
        self.reset();
        Some(Replay {
            statement,
            messages,
        })
    }
}
