//! The answers still expected from the server, in order, and what to do with each: pass it
//! to the client, swallow it (pgwarden sent the message itself), replace it, or write an
//! answer for a message that was never sent. This is what lets pgwarden add and drop
//! messages in a client's pipeline without the client noticing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::statements::{ClientStatements, ServerStatements, Statement};
use crate::protocol::tags::backend;

/// Which message an answer belongs to; says which tag completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or a FunctionCall: complete at ReadyForQuery.
    Query,
}

const PARSE_COMPLETE: u8 = b'1';
const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
const NO_DATA: u8 = b'n';
const ROW_DESCRIPTION: u8 = b'T';
const COMMAND_COMPLETE: u8 = b'C';
const EMPTY_QUERY: u8 = b'I';
const PORTAL_SUSPENDED: u8 = b's';

/// Tags the answer queue must see whole (the ones that complete an answer, and errors).
pub fn inspects(tag: u8) -> bool {
    matches!(
        tag,
        PARSE_COMPLETE
            | BIND_COMPLETE
            | CLOSE_COMPLETE
            | NO_DATA
            | ROW_DESCRIPTION
            | COMMAND_COMPLETE
            | EMPTY_QUERY
            | PORTAL_SUSPENDED
            | backend::ERROR_RESPONSE
            | backend::READY_FOR_QUERY
    )
}

impl Answer {
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Answer::Parse => tag == PARSE_COMPLETE,
            Answer::Bind => tag == BIND_COMPLETE,
            Answer::Describe => matches!(tag, ROW_DESCRIPTION | NO_DATA),
            Answer::Execute => matches!(tag, COMMAND_COMPLETE | EMPTY_QUERY | PORTAL_SUSPENDED),
            Answer::Close => tag == CLOSE_COMPLETE,
            Answer::Sync | Answer::Query => tag == backend::READY_FOR_QUERY,
        }
    }

    /// Extended-protocol messages: an error completes them and the server then skips
    /// everything up to the next Sync.
    fn extended(self) -> bool {
        !matches!(self, Answer::Sync | Answer::Query)
    }
}

/// What becomes of the server's answer.
#[derive(Debug)]
pub enum Fate {
    Pass,
    Swallow,
    /// The message was sent only to fail; its ErrorResponse is replaced by this one.
    Fail(Bytes),
    /// A rewritten Query. Its statements are counted by their CommandCompletes: those
    /// whose bit is set in `swallow` (first = bit 0) were added by pgwarden; statement
    /// `fail.0`, if reached, fails with the server's error replaced by `fail.1`.
    Rewritten {
        swallow: u64,
        fail: Option<(u32, Bytes)>,
    },
}

/// How to take back what sending a message changed, if the server never ran it.
#[derive(Debug)]
pub enum Undo {
    ClientRemove(Box<[u8]>),
    ClientRestore(Box<[u8]>, Arc<Statement>),
    ClientRestoreAll(HashMap<Box<[u8]>, Arc<Statement>>),
    ServerRemove(u64),
    ServerRestore(Arc<Statement>),
    ServerRestoreAll(HashMap<u64, Arc<Statement>>),
}

impl Undo {
    fn apply(self, client: &mut ClientStatements, server: &mut ServerStatements) {
        match self {
            Undo::ClientRemove(name) => {
                client.remove(&name);
            }
            Undo::ClientRestore(name, statement) => client.insert(&name, statement),
            Undo::ClientRestoreAll(names) => client.restore_all(names),
            Undo::ServerRemove(hash) => {
                server.remove(hash);
            }
            Undo::ServerRestore(statement) => server.insert(statement),
            Undo::ServerRestoreAll(statements) => server.restore_all(statements),
        }
    }
}

/// One expected answer, or one pgwarden writes itself when its turn comes.
#[derive(Debug)]
pub enum Kind {
    Await(Answer, Fate),
    /// An answer (ParseComplete, CloseComplete) for a message that was not sent.
    Write(u8),
}

#[derive(Debug)]
pub struct Entry {
    pub kind: Kind,
    /// What to take back if the server does not run the message. In a rewritten Query,
    /// each undo belongs to one of its statements (by index): those before the failing one
    /// ran and stay done.
    pub undo: Vec<(u32, Undo)>,
    /// The shared statement a Bind ran, for re-preparing it when its plan went stale.
    pub statement: Option<Arc<Statement>>,
    /// Where the client's message starts in the pipeline kept for a retry.
    pub origin: Option<usize>,
}

impl Entry {
    pub fn pass(answer: Answer) -> Self {
        Entry::new(Kind::Await(answer, Fate::Pass))
    }

    pub fn new(kind: Kind) -> Self {
        Entry {
            kind,
            undo: Vec::new(),
            statement: None,
            origin: None,
        }
    }

    pub fn undo(mut self, undo: Undo) -> Self {
        self.undo.push((0, undo));
        self
    }

    /// Takes back what the statements from `ran` on changed (all of it for `ran` = 0).
    fn take_back(
        &mut self,
        ran: u32,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
    ) {
        for (step, undo) in self.undo.drain(..).rev() {
            if step >= ran {
                undo.apply(client, server);
            }
        }
    }
}

/// What to do with one message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Swallow,
    Replace(Bytes),
}

/// The queue of answers still expected.
#[derive(Debug, Default)]
pub struct Expect {
    queue: VecDeque<Entry>,
    /// CommandCompletes already seen in the Query at the front.
    completes_seen: u32,
    /// Queries and function calls the server skipped after an error (a client sent them
    /// before the Sync that ends an extended-protocol request): their ReadyForQuery will
    /// never come.
    pub skipped_requests: usize,
}

impl Expect {
    pub fn push(&mut self, entry: Entry) {
        self.queue.push_back(entry);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The answer pgwarden must write now, if one is due (everything before it answered).
    pub fn due_write(&mut self) -> Option<u8> {
        match self.queue.front()?.kind {
            Kind::Write(tag) => {
                self.queue.pop_front();
                Some(tag)
            }
            Kind::Await(..) => None,
        }
    }

    /// The entry the server is answering now, if any.
    pub fn front(&self) -> Option<&Entry> {
        self.queue.front()
    }

    /// Decides what becomes of a server message and moves the queue on. `Forward` for
    /// messages that answer nothing in particular (notices, notifications, parameters).
    pub fn on_server(
        &mut self,
        tag: u8,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
    ) -> Verdict {
        if matches!(tag, b'N' | b'A' | b'S') {
            return Verdict::Forward;
        }
        let Some(Entry {
            kind: Kind::Await(answer, fate),
            ..
        }) = self.queue.front_mut()
        else {
            return Verdict::Forward;
        };
        let answer = *answer;
        let verdict = match fate {
            Fate::Pass => Verdict::Forward,
            Fate::Swallow if tag == backend::ERROR_RESPONSE => Verdict::Forward,
            Fate::Swallow => Verdict::Swallow,
            Fate::Fail(error) if tag == backend::ERROR_RESPONSE => Verdict::Replace(error.clone()),
            Fate::Fail(_) => Verdict::Forward,
            Fate::Rewritten { swallow, .. } if tag == COMMAND_COMPLETE => {
                let bit = 1u64.checked_shl(self.completes_seen).unwrap_or(0);
                self.completes_seen = self.completes_seen.saturating_add(1);
                if *swallow & bit != 0 {
                    Verdict::Swallow
                } else {
                    Verdict::Forward
                }
            }
            Fate::Rewritten {
                fail: Some((at, error)),
                ..
            } if tag == backend::ERROR_RESPONSE && *at == self.completes_seen => {
                Verdict::Replace(error.clone())
            }
            Fate::Rewritten { .. } => Verdict::Forward,
        };
        if tag == backend::ERROR_RESPONSE {
            self.on_error(answer, client, server);
        } else if answer.completed_by(tag) {
            self.complete();
        }
        verdict
    }

    /// The front entry is answered as it should be: its changes stand.
    fn complete(&mut self) {
        self.queue.pop_front();
        self.completes_seen = 0;
    }

    /// An ErrorResponse for the front entry: what it changed is taken back; in the extended
    /// protocol the server then skips every message until Sync, so those are taken back too
    /// (last first) and their answers will never come.
    fn on_error(
        &mut self,
        answer: Answer,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
    ) {
        if !answer.extended() {
            // Query or Sync: still completed by its ReadyForQuery; the statements from the
            // failing one on did not run.
            if let Some(front) = self.queue.front_mut() {
                front.take_back(self.completes_seen, client, server);
            }
            return;
        }
        let until = self
            .queue
            .iter()
            .position(|e| matches!(e.kind, Kind::Await(Answer::Sync, _)))
            .unwrap_or(self.queue.len());
        let skipped: Vec<Entry> = self.queue.drain(..until).collect();
        self.skipped_requests += (skipped.iter())
            .filter(|e| match &e.kind {
                Kind::Await(Answer::Query, fate) => !matches!(fate, Fate::Swallow),
                _ => false,
            })
            .count();
        for mut entry in skipped.into_iter().rev() {
            entry.take_back(0, client, server);
        }
        self.completes_seen = 0;
    }

    /// COPY FROM STDIN began for the front entry: the server ignored the Syncs sent right
    /// after it, so their answers will not come.
    pub fn on_copy_in(&mut self) {
        while let Some(second) = self.queue.get(1) {
            if !matches!(second.kind, Kind::Await(Answer::Sync, _)) {
                break;
            }
            self.queue.remove(1);
        }
    }

    /// Drops every entry, taking back their changes (the server is going away).
    pub fn abandon(&mut self, client: &mut ClientStatements, server: &mut ServerStatements) {
        while let Some(mut entry) = self.queue.pop_back() {
            entry.take_back(0, client, server);
        }
    }

    /// Frees a queue grown by a long pipeline (a short one is kept: it is reused).
    pub fn release_memory(&mut self) {
        if self.queue.capacity() > 8 {
            self.queue = VecDeque::new();
        }
    }

    /// The first Sync still owed is the last thing owed.
    pub fn sync_is_last(&self) -> bool {
        let sync = self
            .queue
            .iter()
            .position(|e| matches!(e.kind, Kind::Await(Answer::Sync, _)));
        sync.is_some_and(|i| i + 1 == self.queue.len())
    }

    /// The answer at the front is swallowed instead of passed on.
    pub fn swallow_front(&mut self) {
        if let Some(Entry {
            kind: Kind::Await(_, fate),
            ..
        }) = self.queue.front_mut()
        {
            *fate = Fate::Swallow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use super::super::statements::Definition;

    fn run(expect: &mut Expect, tags: &[u8]) -> Vec<Verdict> {
        let (mut client, mut server) = (ClientStatements::default(), ServerStatements::default());
        tags.iter()
            .map(|&tag| expect.on_server(tag, &mut client, &mut server))
            .collect()
    }

    #[test]
    fn injected_parse_is_swallowed_and_writes_wait_their_turn() {
        let mut expect = Expect::default();
        expect.push(Entry::new(Kind::Await(Answer::Parse, Fate::Swallow)));
        expect.push(Entry::pass(Answer::Bind));
        expect.push(Entry::pass(Answer::Execute));
        expect.push(Entry::new(Kind::Write(CLOSE_COMPLETE)));
        expect.push(Entry::pass(Answer::Sync));
        assert_eq!(expect.due_write(), None);
        let verdicts = run(&mut expect, b"12DDC");
        assert_eq!(verdicts[0], Verdict::Swallow);
        assert!(verdicts[1..].iter().all(|v| *v == Verdict::Forward));
        assert_eq!(expect.due_write(), Some(CLOSE_COMPLETE));
        assert_eq!(run(&mut expect, b"Z"), [Verdict::Forward]);
        assert!(expect.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_takes_back_what_was_skipped() {
        let mut expect = Expect::default();
        let (mut client, mut server) = (ClientStatements::default(), ServerStatements::default());
        let statement = Statement::new(Definition::Protocol(Bytes::from_static(b"x\0\0\0")), None);
        client.insert(b"s2", statement.clone());
        server.insert(statement.clone());
        expect.push(Entry::pass(Answer::Bind));
        expect.push(
            Entry::pass(Answer::Parse)
                .undo(Undo::ClientRemove(b"s2"[..].into()))
                .undo(Undo::ServerRemove(statement.hash)),
        );
        expect.push(Entry::new(Kind::Write(b'1')));
        expect.push(Entry::pass(Answer::Sync));
        let verdict = expect.on_server(b'E', &mut client, &mut server);
        assert_eq!(verdict, Verdict::Forward);
        assert!(client.get(b"s2").is_none() && server.is_empty());
        assert_eq!(expect.due_write(), None, "skipped writes are never written");
        assert_eq!(run(&mut expect, b"Z"), [Verdict::Forward]);
        assert!(expect.is_empty());
    }

    #[test]
    fn a_fail_entry_replaces_the_servers_error() {
        let mut expect = Expect::default();
        let ours = Bytes::from_static(b"our error");
        expect.push(Entry::new(Kind::Await(
            Answer::Describe,
            Fate::Fail(ours.clone()),
        )));
        expect.push(Entry::pass(Answer::Execute));
        expect.push(Entry::pass(Answer::Sync));
        assert_eq!(
            run(&mut expect, b"EZ"),
            [Verdict::Replace(ours), Verdict::Forward]
        );
        assert!(expect.is_empty());
    }

    #[test]
    fn a_rewritten_query_swallows_only_the_added_completes() {
        let mut expect = Expect::default();
        let fate = Fate::Rewritten {
            swallow: 0b01,
            fail: None,
        };
        expect.push(Entry::new(Kind::Await(Answer::Query, fate)));
        let verdicts = run(&mut expect, b"CTDCZ");
        assert_eq!(verdicts[0], Verdict::Swallow);
        assert!(verdicts[1..].iter().all(|v| *v == Verdict::Forward));
        assert!(expect.is_empty());
    }
}
