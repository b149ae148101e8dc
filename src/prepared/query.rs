//! SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`) in a
//! simple Query: each such statement is rewritten to use server-side names, with what
//! pgwarden adds (a PREPARE the server lacks, a DEALLOCATE to make room) as statements of
//! their own in the same Query, their CommandCompletes swallowed. Other statements of the
//! Query go through as written.

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::command::{self, Command, Piece};
use super::expect::{Answer, Entry, Fate, Kind, Undo};
use super::statements::{Definition, Lookup, ServerStatements, Statement};
use super::Prepared;
use crate::client::pump::{Found, Pump};
use crate::protocol::framing::HEADER_LEN;
use crate::protocol::tags::frontend;
use crate::protocol::{extended, PgError};

/// Statements that answer `PREPARE` and `DEALLOCATE` and change nothing: the answer to a
/// PREPARE the server already holds, or a DEALLOCATE of a statement it keeps for others.
const PREPARE_NOTHING: &[u8] = b"PREPARE pgwarden_nothing AS SELECT";
const DEALLOCATE_NOTHING: &[u8] = b"DEALLOCATE pgwarden_nothing";
/// A statement that fails (26000): stands in for one the client got wrong.
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
    /// The statement standing in for the client's error, and Postgres' error for it.
    fail: Option<(u32, Bytes)>,
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

    /// The client's statement fails with `error`, as it would on Postgres.
    fn fail(&mut self, error: PgError) {
        self.statement(&[FAILS], false);
        self.fail = Some((self.statements - 1, error.to_bytes().freeze()));
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
    pub(super) fn query(&mut self, found: Found, c2s: &mut Pump, server: &mut ServerStatements) {
        let text = &c2s.message(found)[HEADER_LEN..];
        let Some(pieces) = command::read_all(text) else {
            return self.pass(Answer::Query, found, c2s);
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
            self.rewrite_piece(piece, &mut rewrite, c2s, server);
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
        self.expect.push(entry);
    }

    fn rewrite_piece(
        &mut self,
        piece: Owned,
        rewrite: &mut Rewrite,
        c2s: &mut Pump,
        server: &mut ServerStatements,
    ) {
        let outcome = match piece.command {
            None => {
                rewrite.statement(&[&piece.text], false);
                Ok(())
            }
            Some(Cmd::Prepare(name, definition)) => {
                self.sql_prepare(name, definition, rewrite, c2s, server)
            }
            Some(Cmd::Execute(name, arguments)) => {
                self.sql_execute(name, arguments, rewrite, c2s, server)
            }
            Some(Cmd::Deallocate(name)) => self.sql_deallocate(name, rewrite),
            Some(Cmd::All) => {
                // Runs as written: the server forgets all its statements, the client all
                // its names.
                rewrite.statement(&[&piece.text], false);
                rewrite.undo(Undo::ClientRestoreAll(self.client.take_all()));
                rewrite.undo(Undo::ServerRestoreAll(server.take_all()));
                Ok(())
            }
        };
        if let Err(error) = outcome {
            rewrite.fail(error);
        }
    }

    fn sql_prepare(
        &mut self,
        name: Box<[u8]>,
        definition: Bytes,
        rewrite: &mut Rewrite,
        c2s: &mut Pump,
        server: &mut ServerStatements,
    ) -> Result<(), PgError> {
        if self.client.get(&name).is_some() {
            return Err(PgError::duplicate_statement(&name));
        }
        let statement = Statement::new(Definition::Sql(definition), None);
        self.client.insert(&name, statement.clone());
        if let Lookup::Present = server.lookup(&statement) {
            server.touch(&statement);
            rewrite.statement(&[PREPARE_NOTHING], false);
            rewrite.undo(Undo::ClientRemove(name));
            rewrite.statement(&[DEALLOCATE_NOTHING], true);
            return Ok(());
        }
        let undo = Undo::ClientRemove(name);
        self.prepare_in_query(&statement, rewrite, c2s, server, false, Some(undo));
        Ok(())
    }

    fn sql_execute(
        &mut self,
        name: Box<[u8]>,
        arguments: Bytes,
        rewrite: &mut Rewrite,
        c2s: &mut Pump,
        server: &mut ServerStatements,
    ) -> Result<(), PgError> {
        let Some(statement) = self.client.get(&name).cloned() else {
            if self.pinned {
                rewrite.statement(&[b"EXECUTE ", &quoted(&name), b" ", &arguments], false);
                return Ok(());
            }
            return Err(PgError::unknown_statement(&name));
        };
        match (&statement.definition, server.lookup(&statement)) {
            (_, Lookup::Present) => server.touch(&statement),
            (Definition::Sql(_), _) => {
                self.prepare_in_query(&statement, rewrite, c2s, server, true, None)
            }
            // A protocol-level statement run with EXECUTE: prepared by a Parse (and a Sync,
            // so a failure cannot make the server skip the Query) ahead of the Query.
            (Definition::Protocol(_), _) => {
                self.ensure(&statement, c2s, server);
                extended::sync(c2s.inject());
                self.expect
                    .push(Entry::new(Kind::Await(Answer::Sync, Fate::Swallow)));
            }
        }
        rewrite.statement(
            &[b"EXECUTE ", statement.server_name(), b" ", &arguments],
            false,
        );
        Ok(())
    }

    fn sql_deallocate(&mut self, name: Box<[u8]>, rewrite: &mut Rewrite) -> Result<(), PgError> {
        let Some(statement) = self.client.remove(&name) else {
            if self.pinned {
                rewrite.statement(&[b"DEALLOCATE ", &quoted(&name)], false);
                return Ok(());
            }
            return Err(PgError::unknown_statement(&name));
        };
        rewrite.statement(&[PREPARE_NOTHING], true);
        rewrite.statement(&[DEALLOCATE_NOTHING], false);
        rewrite.undo(Undo::ClientRestore(name, statement));
        Ok(())
    }

    /// Adds `PREPARE pgw_…` for an SQL-level statement the server lacks, `hidden` when the
    /// client did not ask for it; `client_undo` is taken back if it fails.
    fn prepare_in_query(
        &mut self,
        statement: &Arc<Statement>,
        rewrite: &mut Rewrite,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        hidden: bool,
        client_undo: Option<Undo>,
    ) {
        // The name is freed ahead of the Query by a Close (and a Sync, its answers
        // swallowed): a missing statement is no error there, as it would be for DEALLOCATE.
        // A victim making room goes after the PREPARE, so a PREPARE that fails leaves it.
        let out = c2s.inject();
        extended::statement_target(frontend::CLOSE, statement.server_name(), out);
        extended::sync(out);
        if let Lookup::Taken(other) = server.lookup(statement) {
            server.remove(other.hash);
        }
        let swallow = |answer| Entry::new(Kind::Await(answer, Fate::Swallow));
        self.expect.push(swallow(Answer::Close));
        self.expect.push(swallow(Answer::Sync));
        let victim = server.victim(self.max);
        rewrite.statement(&[&prepare_text(statement)], hidden);
        server.insert(statement.clone());
        rewrite.undo(Undo::ServerRemove(statement.hash));
        if let Some(undo) = client_undo {
            rewrite.undo(undo);
        }
        if let Some(victim) = victim {
            rewrite.statement(&[b"DEALLOCATE ", victim.server_name()], true);
            server.remove(victim.hash);
            rewrite.undo(Undo::ServerRestore(victim));
        }
    }
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
