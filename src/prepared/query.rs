//! SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`) in a
//! simple Query: each such statement is rewritten to use server-side names, with what
//! pgwarden adds (a PREPARE the server lacks, a DEALLOCATE to make room) as statements of
//! their own in the same Query, their CommandCompletes swallowed. Other statements of the
//! Query go through as written.

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::command::{self, Command, Piece};
use super::entry::{Entry, Expects, Fate, Kind, Rename, Undo};
use super::statements::{Definition, Lookup, ServerStatements, Statement};
use super::{Prepared, ABSENT};
use crate::protocol::answers::Answer;
use crate::protocol::buffer::{Found, Pump};
use crate::protocol::extended;
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::sql::Strings;
use crate::protocol::tags::frontend;

/// Statements that answer `PREPARE` and `DEALLOCATE` and change nothing: the answer to a
/// PREPARE the server already holds, or a DEALLOCATE of a statement it keeps for others.
const PREPARE_NOTHING: &[u8] = b"PREPARE pgwarden_nothing AS SELECT";
const DEALLOCATE_NOTHING: &[u8] = b"DEALLOCATE pgwarden_nothing";
/// A statement that fails with Postgres' 26000 for a name no server holds: stands in for
/// an EXECUTE or DEALLOCATE of a name the client never prepared.
const FAILS: &[u8] = b"DEALLOCATE \"pgwarden.absent\"";
/// Statements a rewritten Query may hold: one bit each in the swallow mask.
const MAX_STATEMENTS: u32 = 64;

/// The rewritten Query being built.
#[derive(Default)]
struct Rewrite {
    text: Vec<u8>,
    /// CommandCompletes to swallow, one bit per statement.
    swallow: u64,
    statements: u32,
    undo: Vec<(u32, Undo)>,
    /// The statement standing in for the client's error, and how its error is renamed.
    fail: Option<(u32, Rename)>,
}

impl Rewrite {
    /// Adds a statement; `hidden` when the client must not see its CommandComplete.
    fn statement(&mut self, parts: &[&[u8]], hidden: bool) {
        if !self.text.is_empty() {
            // A newline first: the statement before may end in a `--` comment.
            self.text.extend_from_slice(b"\n;\n");
        }
        for part in parts {
            self.text.extend_from_slice(part);
        }
        if hidden {
            self.swallow |= 1u64.checked_shl(self.statements).unwrap_or(0);
        }
        self.statements += 1;
    }

    /// Takes back `undo` if the statement added last does not run.
    fn undo(&mut self, undo: Undo) {
        self.undo.push((self.statements.saturating_sub(1), undo));
    }

    /// The client's statement is replaced by `parts`, which fail as the client's would;
    /// the server's error then names the client's statement instead of `rename.provoked`.
    fn fail(&mut self, parts: &[&[u8]], rename: Rename) {
        self.statement(parts, false);
        self.fail = Some((self.statements - 1, rename));
    }

    /// An EXECUTE or DEALLOCATE of `name`, which the client never prepared.
    fn fail_unknown(&mut self, name: &[u8]) {
        let rename = Rename {
            provoked: ABSENT.into(),
            client: name.into(),
        };
        self.fail(&[FAILS], rename);
    }
}

/// `PREPARE pgw_… <definition>` for an SQL-level statement.
pub(super) fn prepare_text(statement: &Statement) -> Vec<u8> {
    let Definition::Sql(definition) = &statement.definition else {
        return Vec::new();
    };
    let mut text = b"PREPARE ".to_vec();
    text.extend_from_slice(statement.server_name());
    text.push(b' ');
    text.extend_from_slice(definition);
    text
}

impl Prepared {
    pub(super) fn query(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        strings: Strings,
        owed: &mut dyn Expects,
    ) {
        let text = &c2s.message(found)[HEADER_LEN..];
        let Some(pieces) = command::read_all(text, strings) else {
            return self.pass(Answer::Query, found, c2s, owed);
        };
        let pieces: Vec<Owned> = pieces.into_iter().map(owned).collect();
        c2s.drop_message(found.taken);
        let mut rewrite = Rewrite::default();
        for piece in pieces {
            if rewrite.fail.is_some() {
                // Postgres stops at the error: what follows never runs, so it changes
                // nothing here (it still goes to the server, which reports a syntax error
                // anywhere in the Query before running any of it).
                rewrite.statement(&[&piece.text], false);
                continue;
            }
            self.rewrite_piece(piece, &mut rewrite, c2s, server, owed);
        }
        if rewrite.statements > MAX_STATEMENTS {
            tracing::warn!(
                "a Query with more than {MAX_STATEMENTS} statements: answers may be off"
            );
        }
        let out = c2s.inject();
        out.put_u8(frontend::QUERY);
        out.put_u32((4 + rewrite.text.len() + 1) as u32);
        out.put_slice(&rewrite.text);
        out.put_u8(0);
        let fate = Fate::Rewritten {
            swallow: rewrite.swallow,
            fail: rewrite.fail,
        };
        let mut entry = Entry::new(Kind::Await(Answer::Query, fate));
        entry.undo = rewrite.undo;
        owed.push(entry);
    }

    fn rewrite_piece(
        &mut self,
        piece: Owned,
        rewrite: &mut Rewrite,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        let mut at = Place {
            rewrite,
            c2s,
            server,
            owed,
        };
        match piece.command {
            None => at.rewrite.statement(&[&piece.text], false),
            Some(Cmd::Prepare(name, definition)) => self.sql_prepare(name, definition, &mut at),
            Some(Cmd::Execute(name, arguments)) => self.sql_execute(name, arguments, &mut at),
            Some(Cmd::Deallocate(name)) => self.sql_deallocate(name, at.rewrite),
            Some(Cmd::All) => {
                // Runs as written: the server forgets all its statements, the client all
                // its names.
                at.rewrite.statement(&[&piece.text], false);
                at.rewrite
                    .undo(Undo::ClientRestoreAll(self.client.take_all()));
                at.rewrite
                    .undo(Undo::ServerRestoreAll(at.server.take_all()));
            }
        }
    }

    fn sql_prepare(&mut self, name: Box<[u8]>, definition: Bytes, at: &mut Place<'_>) {
        if let Some(existing) = self.client.get(&name).cloned() {
            // Postgres checks the definition first, then the name: so the client's
            // definition is prepared under the name of a statement the server holds.
            self.present_for_query(&existing, at);
            let rename = Rename {
                provoked: existing.server_name().into(),
                client: name,
            };
            let parts: [&[u8]; 4] = [b"PREPARE ", existing.server_name(), b" ", &definition];
            return at.rewrite.fail(&parts, rename);
        }
        let statement = Statement::new(Definition::Sql(definition), None);
        self.client.insert(&name, statement.clone());
        if let Lookup::Present = at.server.lookup(&statement) {
            at.server.touch(&statement);
            at.rewrite.statement(&[PREPARE_NOTHING], false);
            at.rewrite.undo(Undo::ClientRemove(name));
            at.rewrite.statement(&[DEALLOCATE_NOTHING], true);
            return;
        }
        let undo = Undo::ClientRemove(name);
        self.prepare_in_query(&statement, at, false, Some(undo));
    }

    fn sql_execute(&mut self, name: Box<[u8]>, arguments: Bytes, at: &mut Place<'_>) {
        let Some(statement) = self.client.get(&name).cloned() else {
            if self.pinned {
                let parts: [&[u8]; 4] = [b"EXECUTE ", &quoted(&name), b" ", &arguments];
                return at.rewrite.statement(&parts, false);
            }
            return at.rewrite.fail_unknown(&name);
        };
        self.used.merge(statement.effects);
        self.present_for_query(&statement, at);
        at.rewrite.statement(
            &[b"EXECUTE ", statement.server_name(), b" ", &arguments],
            false,
        );
    }

    /// Makes sure the server holds `statement` when the Query runs.
    fn present_for_query(&mut self, statement: &Arc<Statement>, at: &mut Place<'_>) {
        match (&statement.definition, at.server.lookup(statement)) {
            (_, Lookup::Present) => at.server.touch(statement),
            (Definition::Sql(_), _) => self.prepare_in_query(statement, at, true, None),
            // A protocol-level statement run with EXECUTE: prepared by a Parse (and a Sync,
            // so a failure cannot make the server skip the Query) ahead of the Query.
            (Definition::Protocol(_), _) => {
                self.ensure(statement, at.c2s, at.server, at.owed);
                extended::sync(at.c2s.inject());
                at.owed.push(Entry::swallow(Answer::Sync));
            }
        }
    }

    fn sql_deallocate(&mut self, name: Box<[u8]>, rewrite: &mut Rewrite) {
        let Some(statement) = self.client.remove(&name) else {
            if self.pinned {
                return rewrite.statement(&[b"DEALLOCATE ", &quoted(&name)], false);
            }
            return rewrite.fail_unknown(&name);
        };
        rewrite.statement(&[PREPARE_NOTHING], true);
        rewrite.statement(&[DEALLOCATE_NOTHING], false);
        rewrite.undo(Undo::ClientRestore(name, statement));
    }

    /// Adds `PREPARE pgw_…` for an SQL-level statement the server lacks, `hidden` when the
    /// client did not ask for it; `client_undo` is taken back if it fails.
    fn prepare_in_query(
        &mut self,
        statement: &Arc<Statement>,
        at: &mut Place<'_>,
        hidden: bool,
        client_undo: Option<Undo>,
    ) {
        // The name is freed ahead of the Query by a Close (and a Sync, its answers
        // swallowed): a missing statement is no error there, as it would be for DEALLOCATE.
        // A victim making room goes after the PREPARE, so a PREPARE that fails leaves it.
        let out = at.c2s.inject();
        extended::statement_target(frontend::CLOSE, statement.server_name(), out);
        extended::sync(out);
        if let Lookup::Taken(other) = at.server.lookup(statement) {
            at.server.remove(other.hash);
        }
        at.owed.push(Entry::swallow(Answer::Close));
        at.owed.push(Entry::swallow(Answer::Sync));
        let victim = at.server.victim(self.max);
        let rewrite = &mut *at.rewrite;
        rewrite.statement(&[&prepare_text(statement)], hidden);
        at.server.insert(statement.clone());
        rewrite.undo(Undo::ServerRemove(statement.hash));
        if let Some(undo) = client_undo {
            rewrite.undo(undo);
        }
        if let Some(victim) = victim {
            rewrite.statement(&[b"DEALLOCATE ", victim.server_name()], true);
            at.server.remove(victim.hash);
            rewrite.undo(Undo::ServerRestore(victim));
        }
    }
}

/// Where a statement of a rewritten Query is being put: the Query, the messages that go
/// ahead of it, the server's statements and the answers owed.
struct Place<'a> {
    rewrite: &'a mut Rewrite,
    c2s: &'a mut Pump,
    server: &'a mut ServerStatements,
    owed: &'a mut dyn Expects,
}

/// A name as a quoted identifier.
fn quoted(name: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &c in name {
        if c == b'"' {
            out.push(b'"');
        }
        out.push(c);
    }
    out.push(b'"');
    out
}

/// One statement of the Query with what pgwarden needs copied out of the client's buffer.
struct Owned {
    text: Bytes,
    command: Option<Cmd>,
}

enum Cmd {
    Prepare(Box<[u8]>, Bytes),
    Execute(Box<[u8]>, Bytes),
    Deallocate(Box<[u8]>),
    /// `DEALLOCATE ALL` or `DISCARD ALL`.
    All,
}

fn owned(piece: Piece<'_>) -> Owned {
    let (text, command) = match piece {
        Piece::Verbatim(text) => (text, None),
        Piece::Command(text, command) => (text, Some(command)),
    };
    let command = command.map(|command| match command {
        Command::Prepare { name, definition } => {
            Cmd::Prepare(name.as_ref().into(), Bytes::copy_from_slice(definition))
        }
        Command::Execute { name, arguments } => {
            Cmd::Execute(name.as_ref().into(), Bytes::copy_from_slice(arguments))
        }
        Command::Deallocate(Some(name)) => Cmd::Deallocate(name.as_ref().into()),
        Command::Deallocate(None) | Command::DiscardAll => Cmd::All,
    });
    Owned {
        text: Bytes::copy_from_slice(text),
        command,
    }
}
