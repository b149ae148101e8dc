//! The client's side of the machine: each message the client sends, as it is forwarded,
//! rewritten or answered, and what it owes, changes or may leave on the server.

use super::pins::Reasons;
use super::{ClientEnd, CopyMode, Machine, Phase, Pipeline, Stop};
use crate::config::PoolMode;
use crate::prepared::{self, Entry, Expects, Prepared, Seen, ServerStatements};
use crate::protocol::answers::Answer;
use crate::protocol::buffer::Found;
use crate::protocol::extended::Parse;
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::sql::{self, Effects, Feature, Strings};
use crate::protocol::tags::frontend;

impl Machine {
    /// Bytes arrived from the client. Without a server they wait, unscanned (statement
    /// names can only be rewritten for the server they go to); with one they are scanned.
    pub fn client_read(&mut self, server: Option<&mut ServerStatements>) {
        if let (Phase::Attached, Some(server)) = (&self.phase, server) {
            self.scan_client(server);
        }
    }

    /// Which client messages must be seen whole: those whose SQL is read or whose names
    /// are rewritten, and Terminate.
    fn client_inspects(&self) -> impl Fn(u8) -> bool {
        let watch = self.mode != PoolMode::Session;
        let prepared = self.prepared.is_some();
        move |tag| {
            tag == frontend::TERMINATE
                || (watch && matches!(tag, frontend::QUERY | frontend::PARSE))
                || (prepared && Prepared::client_inspects(tag))
        }
    }

    fn scan_client(&mut self, server: &mut ServerStatements) {
        let inspect = self.client_inspects();
        while self.phase == Phase::Attached && self.client == ClientEnd::Connected {
            match self.c2s.next(&inspect) {
                Ok(Some(found)) => self.client_message(found, server),
                Ok(None) => break,
                Err(e) => return self.stop(Stop::ClientViolation(e)),
            }
        }
        self.write_due();
    }

    fn client_message(&mut self, found: Found, server: &mut ServerStatements) {
        let tag = found.tag;
        if tag == frontend::TERMINATE {
            // Not forwarded: whoever closes the server decides what it is sent.
            self.c2s.drop_message(found.taken);
            self.client = ClientEnd::Terminated;
            return;
        }
        if self.in_copy(found) || self.passes_untracked(found) {
            return;
        }
        match tag {
            frontend::COPY_DATA => {
                if self.copy == CopyMode::Idle {
                    self.copy = CopyMode::DataSent;
                }
                return self.c2s.forward(found.taken);
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.copy = CopyMode::EndSent;
                return self.c2s.forward(found.taken);
            }
            frontend::QUERY | frontend::EXECUTE | frontend::FUNCTION_CALL => {
                self.copy = CopyMode::Idle;
            }
            _ => {}
        }
        self.tally.started |= self.owed.is_empty();
        let fresh = self.owed.is_empty()
            && self.pipeline == Pipeline::Synced
            && self.status == crate::protocol::TransactionStatus::Idle;
        let (names_statements, strings) = self.read_effects(found);
        match tag {
            frontend::SYNC => {
                self.pipeline = Pipeline::Synced;
                self.owed.synced();
            }
            frontend::QUERY | frontend::FUNCTION_CALL | frontend::FLUSH => {}
            _ => self.pipeline = Pipeline::Open,
        }
        let Some(prepared) = self.prepared.as_deref_mut() else {
            if let Some(answer) = Answer::to(tag) {
                self.owed.push(Entry::pass(answer));
            }
            return self.c2s.forward(found.taken);
        };
        let seen = Seen {
            fresh,
            names_statements,
            strings,
        };
        prepared.client_message(found, &mut self.c2s, server, seen, &mut self.owed);
        let used = std::mem::take(&mut prepared.used);
        self.pending.effects.merge(used);
    }

    /// During COPY FROM STDIN the server reads only copy messages. Sync and Flush would be
    /// ignored, so they are dropped (the count of answers stays exact); anything else
    /// would fail the COPY in a way that cannot be accounted for.
    fn in_copy(&mut self, found: Found) -> bool {
        if self.copy != CopyMode::In {
            return false;
        }
        match found.tag {
            frontend::COPY_DATA => self.c2s.forward(found.taken),
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.copy = CopyMode::InEnded;
                self.c2s.forward(found.taken);
            }
            frontend::SYNC | frontend::FLUSH => self.c2s.drop_message(found.taken),
            _ => {
                self.lose("a message other than COPY data arrived during COPY FROM STDIN");
                self.c2s.forward(found.taken);
            }
        }
        true
    }

    /// Messages the server will not answer, or whose answers are no longer followed:
    /// after the machine lost track, and while the server skips to the next Sync.
    fn passes_untracked(&mut self, found: Found) -> bool {
        let skipping = self.owed.skipping() && found.tag != frontend::SYNC;
        if !skipping && self.trust == super::Trust::Exact {
            return false;
        }
        self.c2s.forward(found.taken);
        true
    }

    /// Reads a Query's or Parse's SQL for what it may do to the session (transaction and
    /// statement pooling). Says whether prepared statements may be involved, and the
    /// dialect the text was read in when the scanner was sure of it.
    fn read_effects(&mut self, found: Found) -> (bool, Strings) {
        if self.mode == PoolMode::Session || !found.whole {
            return (true, Strings::Standard);
        }
        let msg = self.c2s.message(found);
        let strings = self.dialect.current();
        let (text, named) = match found.tag {
            frontend::QUERY => {
                let body = &msg[HEADER_LEN..];
                (body.strip_suffix(&[0]).unwrap_or(body), false)
            }
            frontend::PARSE => match Parse::read(msg) {
                Some(parse) => (parse.query(), !parse.name.is_empty()),
                None => return (true, Strings::Standard),
            },
            frontend::BIND if bind_is_unnamed(msg) => {
                let unnamed = self.unnamed;
                self.pending.effects.merge(unnamed);
                return (true, Strings::Standard);
            }
            _ => return (true, Strings::Standard),
        };
        let mut effects = read_text(text, strings);
        effects.unsure |= !self.dialect.scannable;
        if effects.unsure && mentions_load(text) {
            // What a LOAD did cannot be asked of the server afterwards: a text that may
            // hide one pins for good.
            effects.acquires = effects.acquires.with(Feature::Load);
        }
        let sure = if effects.unsure {
            Strings::Standard
        } else {
            strings
        };
        if effects.acquires.contains(Feature::SqlPrepare)
            && self.prepared.is_some()
            && found.tag == frontend::QUERY
            && !effects.unsure
            && prepared::handles_query(text, sure)
        {
            effects.acquires = effects.acquires.without(Feature::SqlPrepare);
        }
        if found.tag == frontend::PARSE && !named {
            self.unnamed = effects;
        }
        self.pending.named |= named && self.prepared.is_none();
        self.pending.effects.merge(effects);
        self.pins = self.pins.union(Reasons::sticky_in(effects.acquires));
        if effects.settings {
            self.dialect.in_flight = true;
        }
        (effects.statements || effects.unsure, sure)
    }

    /// Writes the answers pgwarden owes for messages it did not send, once their turn came.
    pub(super) fn write_due(&mut self) {
        if !self.s2c.framer.at_boundary() {
            return;
        }
        while let Some(tag) = self.owed.due_write() {
            crate::protocol::extended::empty(tag, self.s2c.inject());
        }
    }
}

/// What a text may do, under every reading the dialect allows: when the scanner cannot
/// tell how the server will lex it, it is read both ways and the effects of both count.
fn read_text(text: &[u8], strings: Strings) -> Effects {
    let mut effects = sql::effects(text, strings);
    if effects.unsure {
        effects.merge(sql::effects(text, Strings::Standard));
        effects.merge(sql::effects(text, Strings::Escaped));
        effects.unsure = true;
    }
    effects
}

/// Whether `load` appears anywhere in the text, in any case.
fn mentions_load(text: &[u8]) -> bool {
    text.windows(4).any(|w| w.eq_ignore_ascii_case(b"load"))
}

/// A Bind of the unnamed statement (its portal name, then an empty statement name).
fn bind_is_unnamed(msg: &[u8]) -> bool {
    crate::protocol::extended::Bind::read(msg).is_some_and(|bind| bind.statement.is_empty())
}
