//! SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`) in a
//! simple Query: the statement is rewritten to use server-side names, with the statements
//! pgwarden adds (a PREPARE the server lacks, a DEALLOCATE to make room) ahead of it in the
//! same Query, their CommandCompletes swallowed.

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::command::{self, Command};
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

/// The rewritten Query being built: statements, and which CommandCompletes to swallow.
#[derive(Default)]
struct Rewrite {
    text: Vec<u8>,
    swallow: u8,
    statements: u8,
    undo: Vec<(u8, Undo)>,
}

impl Rewrite {
    /// Adds a statement; `hidden` when the client must not see its CommandComplete.
    fn statement(&mut self, parts: &[&[u8]], hidden: bool) {
        if !self.text.is_empty() {
            self.text.extend_from_slice(b"; ");
        }
        for part in parts {
            self.text.extend_from_slice(part);
        }
        if hidden {
            self.swallow |= 1u8.checked_shl(self.statements.into()).unwrap_or(0);
        }
        self.statements = self.statements.saturating_add(1);
    }

    /// Takes back `undo` if the statement added last does not run.
    fn undo(&mut self, undo: Undo) {
        self.undo.push((self.statements.saturating_sub(1), undo));
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
        let command = match command::read(text) {
            Some(command) => owned(command),
            None => return self.pass(Answer::Query, found, c2s),
        };
        let mut rewrite = Rewrite::default();
        let outcome = match command {
            Owned::Prepare(name, definition) => {
                self.sql_prepare(name, definition, &mut rewrite, server)
            }
            Owned::Execute(name, arguments) => {
                self.sql_execute(name, arguments, &mut rewrite, c2s, server)
            }
            Owned::Deallocate(Some(name)) => self.sql_deallocate(name, &mut rewrite),
            Owned::Deallocate(None) | Owned::DiscardAll => {
                // Runs as written: the server forgets all its statements, the client all
                // its names.
                let entry = Entry::pass(Answer::Query)
                    .undo(Undo::ClientRestoreAll(self.client.take_all()))
                    .undo(Undo::ServerRestoreAll(server.take_all()));
                self.expect.push(entry);
                return c2s.forward(found.taken);
            }
        };
        c2s.drop_message(found.taken);
        match outcome {
            Ok(()) => {
                let out = c2s.inject();
                out.put_u8(frontend::QUERY);
                out.put_u32((4 + rewrite.text.len() + 1) as u32);
                out.put_slice(&rewrite.text);
                out.put_u8(0);
                let fate = Fate::SwallowCompletes(rewrite.swallow);
                let mut entry = Entry::new(Kind::Await(Answer::Query, fate));
                entry.undo = rewrite.undo;
                self.expect.push(entry);
            }
            Err(error) => {
                // A statement that fails on the server, its error replaced by Postgres' own.
                let out = c2s.inject();
                crate::protocol::messages::query("DEALLOCATE \"pgwarden.absent\"", out);
                let error = error.to_bytes().freeze();
                self.expect
                    .push(Entry::new(Kind::Await(Answer::Query, Fate::Fail(error))));
            }
        }
    }

    fn sql_prepare(
        &mut self,
        name: Box<[u8]>,
        definition: Bytes,
        rewrite: &mut Rewrite,
        server: &mut ServerStatements,
    ) -> Result<(), PgError> {
        if self.client.get(&name).is_some() {
            return Err(PgError::duplicate_statement(&name));
        }
        let statement = Statement::new(Definition::Sql(definition));
        self.client.insert(&name, statement.clone());
        if let Lookup::Present = server.lookup(&statement) {
            server.touch(&statement);
            rewrite.statement(&[PREPARE_NOTHING], false);
            rewrite.undo(Undo::ClientRemove(name));
            rewrite.statement(&[DEALLOCATE_NOTHING], true);
            return Ok(());
        }
        let undo = Undo::ClientRemove(name);
        self.prepare_in_query(&statement, rewrite, server, false, Some(undo));
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
                rewrite.statement(&[b"EXECUTE \"", &name, b"\" ", &arguments], false);
                return Ok(());
            }
            return Err(PgError::unknown_statement(&name));
        };
        match (&statement.definition, server.lookup(&statement)) {
            (_, Lookup::Present) => server.touch(&statement),
            (Definition::Sql(_), _) => {
                self.prepare_in_query(&statement, rewrite, server, true, None)
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
                rewrite.statement(&[b"DEALLOCATE \"", &name, b"\""], false);
                return Ok(());
            }
            return Err(PgError::unknown_statement(&name));
        };
        rewrite.statement(&[PREPARE_NOTHING], true);
        rewrite.statement(&[DEALLOCATE_NOTHING], false);
        rewrite.undo(Undo::ClientRestore(name, statement));
        Ok(())
    }

    /// Adds `PREPARE pgw_…` for an SQL-level statement the server lacks (after a
    /// DEALLOCATE of whatever must make room), `hidden` when the client did not ask for it.
    fn prepare_in_query(
        &mut self,
        statement: &Arc<Statement>,
        rewrite: &mut Rewrite,
        server: &mut ServerStatements,
        hidden: bool,
        client_undo: Option<Undo>,
    ) {
        // A different statement under the same server-side name (a hash collision) must go
        // first; a victim making room goes after the PREPARE, so a PREPARE that fails
        // leaves it in place.
        if let Lookup::Taken(other) = server.lookup(statement) {
            rewrite.statement(&[b"DEALLOCATE ", other.server_name()], true);
            server.remove(other.hash);
            rewrite.undo(Undo::ServerRestore(other));
        }
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

/// A command with its parts copied out of the client's buffer.
enum Owned {
    Prepare(Box<[u8]>, Bytes),
    Execute(Box<[u8]>, Bytes),
    Deallocate(Option<Box<[u8]>>),
    DiscardAll,
}

fn owned(command: Command<'_>) -> Owned {
    match command {
        Command::Prepare { name, definition } => {
            Owned::Prepare(name.as_ref().into(), Bytes::copy_from_slice(definition))
        }
        Command::Execute { name, arguments } => {
            Owned::Execute(name.as_ref().into(), Bytes::copy_from_slice(arguments))
        }
        Command::Deallocate(name) => Owned::Deallocate(name.map(|n| n.as_ref().into())),
        Command::DiscardAll => Owned::DiscardAll,
    }
}
