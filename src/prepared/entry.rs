//! What pgwarden expects for each message it sends a server on a client's behalf, and what
//! becomes of the answer: passed to the client, swallowed (pgwarden sent the message
//! itself), renamed (an error pgwarden provoked in place of the client's own mistake), or
//! written by pgwarden for a message it never sent. Entries also carry how to take back
//! what sending a message changed in the statement maps, should the server skip it.
//!
//! The queue these entries wait in belongs to the protocol machine (`relay::machine`,
//! above this layer); this layer only hands entries to it through [`Expects`].

use std::collections::HashMap;
use std::sync::Arc;

use super::statements::{ClientStatements, ServerStatements, Statement};
use crate::protocol::answers::Answer;

/// The queue of answers owed, as this layer needs it.
pub trait Expects {
    fn push(&mut self, entry: Entry);
    /// Nothing is owed.
    fn is_empty(&self) -> bool;
}

/// A server error provoked in place of the client's mistake: Postgres' own error for a
/// name pgwarden chose, which becomes the client's name on the way to the client (so the
/// message is what Postgres would have sent the client, fields and wording alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    pub provoked: Box<[u8]>,
    pub client: Box<[u8]>,
}

/// What becomes of the server's answer.
#[derive(Debug)]
pub enum Fate {
    Pass,
    Swallow,
    /// The message was sent only to fail; its error names the client's statement instead.
    Fail(Rename),
    /// A rewritten Query. Its statements are counted by their CommandCompletes: those
    /// whose bit is set in `swallow` (first = bit 0) were added by pgwarden; statement
    /// `fail.0`, if reached, fails with the server's error renamed by `fail.1`.
    Rewritten {
        swallow: u64,
        fail: Option<(u32, Rename)>,
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

/// An answer awaited from the server, or one pgwarden writes itself when its turn comes.
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

    pub fn swallow(answer: Answer) -> Self {
        Entry::new(Kind::Await(answer, Fate::Swallow))
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

    /// The answer awaited, if the server owes one.
    pub fn answer(&self) -> Option<Answer> {
        match self.kind {
            Kind::Await(answer, _) => Some(answer),
            Kind::Write(_) => None,
        }
    }

    /// Takes back what the statements from `ran` on changed (all of it for `ran` = 0).
    pub fn take_back(
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
