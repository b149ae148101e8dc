//! Client messages of the extended protocol on their way to the server: statement names
//! are rewritten to server-side ones, and statements the server lacks are prepared first.

use std::sync::Arc;

use bytes::Bytes;

use super::command::{self, Command};
use super::expect::{Answer, Entry, Fate, Kind, Undo};
use super::statements::{Definition, Lookup, ServerStatements, Statement};
use super::Prepared;
use crate::client::pump::{Found, Pump};
use crate::protocol::extended::{self, Bind, Parse, Target};
use crate::protocol::tags::frontend;
use crate::protocol::PgError;

/// What the transaction tracker knew as a client message passed.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The server is in COPY FROM STDIN, where it ignores Sync.
    pub copy_in: bool,
    /// The message starts a pipeline outside any transaction, with nothing owed.
    pub fresh: bool,
    /// A Query's statements may involve prepared statements (its text was not seen, or a
    /// statement starts with PREPARE, EXECUTE, DEALLOCATE or DISCARD).
    pub names_statements: bool,
}

impl Prepared {
    /// Handles one client message found by `c2s.next`: forwards, rewrites or answers it.
    pub fn client_message(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        seen: Seen,
    ) {
        let Seen {
            copy_in,
            fresh,
            names_statements,
        } = seen;
        let named_bind = found.tag == frontend::BIND
            && found.whole
            && Bind::read(c2s.message(found)).is_some_and(|b| !b.statement.is_empty());
        let fresh = fresh && self.expect.is_empty();
        self.retry.keep(found, c2s, fresh, named_bind);
        match found.tag {
            frontend::PARSE if found.whole => self.parse(found, c2s, server, names_statements),
            frontend::BIND if found.whole => self.bind(found, c2s, server),
            frontend::DESCRIBE if found.whole => self.describe(found, c2s, server),
            frontend::CLOSE if found.whole => self.close(found, c2s),
            frontend::QUERY if found.whole && names_statements => self.query(found, c2s, server),
            tag => {
                let answer = match tag {
                    frontend::PARSE => Some(Answer::Parse),
                    frontend::BIND => Some(Answer::Bind),
                    frontend::DESCRIBE => Some(Answer::Describe),
                    frontend::CLOSE => Some(Answer::Close),
                    frontend::EXECUTE => Some(Answer::Execute),
                    frontend::SYNC if !copy_in => Some(Answer::Sync),
                    frontend::QUERY | frontend::FUNCTION_CALL => Some(Answer::Query),
                    _ => None,
                };
                if let Some(answer) = answer {
                    self.expect.push(Entry::pass(answer));
                }
                c2s.forward(found.taken);
            }
        }
    }

    pub(super) fn pass(&mut self, answer: Answer, found: Found, c2s: &mut Pump) {
        self.expect.push(Entry::pass(answer));
        c2s.forward(found.taken);
    }

    fn parse(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        names_statements: bool,
    ) {
        let Some(parse) = Parse::read(c2s.message(found)) else {
            return self.pass(Answer::Parse, found, c2s);
        };
        let command = if names_statements {
            command::read(parse.query())
        } else {
            None
        };
        if let Some(Command::DiscardAll | Command::Deallocate(None)) = command {
            // Run through the extended protocol, it drops every statement when executed;
            // taken as done now (a statement believed missing is closed before it is
            // prepared again, so being wrong costs nothing).
            self.client.take_all();
            server.take_all();
        }
        let executes = match command {
            Some(Command::Execute { name, arguments }) => self.executes(&parse, &name, arguments),
            _ => None,
        };
        if parse.name.is_empty() {
            let Some((depends, definition)) = executes else {
                return self.pass(Answer::Parse, found, c2s);
            };
            c2s.drop_message(found.taken);
            self.ensure(&depends, c2s, server);
            extended::parse(b"", &definition, c2s.inject());
            return self.expect.push(Entry::pass(Answer::Parse));
        }
        let name: Box<[u8]> = parse.name.into();
        if self.client.get(&name).is_some() {
            c2s.drop_message(found.taken);
            return self.fail(c2s, PgError::duplicate_statement(&name));
        }
        let (definition, depends) = match executes {
            Some((depends, definition)) => (Bytes::from(definition), Some(depends)),
            None => (Bytes::copy_from_slice(parse.definition), None),
        };
        let statement = Statement::new(Definition::Protocol(definition.clone()), depends);
        c2s.drop_message(found.taken);
        self.client.insert(&name, statement.clone());
        let undo = Undo::ClientRemove(name);
        match server.lookup(&statement) {
            Lookup::Present => {
                server.touch(&statement);
                self.expect.push(Entry::new(Kind::Write(b'1')).undo(undo));
            }
            lookup => {
                if let Some(depends) = &statement.depends {
                    self.ensure(depends, c2s, server);
                }
                self.make_room(lookup, &statement, c2s, server);
                extended::parse(statement.server_name(), &definition, c2s.inject());
                let hash = statement.hash;
                server.insert(statement);
                self.expect.push(
                    Entry::pass(Answer::Parse)
                        .undo(undo)
                        .undo(Undo::ServerRemove(hash)),
                );
            }
        }
    }

    fn bind(&mut self, found: Found, c2s: &mut Pump, server: &mut ServerStatements) {
        let Some(bind) = Bind::read(c2s.message(found)).filter(|b| !b.statement.is_empty()) else {
            return self.pass(Answer::Bind, found, c2s);
        };
        let statement = match self.named(bind.statement) {
            Ok(statement) => statement,
            Err(error) => return self.unknown(error, Answer::Bind, found, c2s),
        };
        let portal = bind.portal.to_vec();
        let prefix_len = bind.prefix_len;
        c2s.drop_message(prefix_len);
        self.ensure(&statement, c2s, server);
        let rest = found.taken - prefix_len;
        extended::bind_prefix(&portal, statement.server_name(), rest, c2s.inject());
        c2s.forward(rest);
        let mut entry = Entry::pass(Answer::Bind);
        entry.statement = Some(statement);
        entry.origin = self.retry.origin(found);
        self.expect.push(entry);
    }

    fn describe(&mut self, found: Found, c2s: &mut Pump, server: &mut ServerStatements) {
        let target = Target::read(c2s.message(found));
        let Some(target) = target.filter(|t| t.is_statement() && !t.name.is_empty()) else {
            return self.pass(Answer::Describe, found, c2s);
        };
        let statement = match self.named(target.name) {
            Ok(statement) => statement,
            Err(error) => return self.unknown(error, Answer::Describe, found, c2s),
        };
        c2s.drop_message(found.taken);
        self.ensure(&statement, c2s, server);
        let out = c2s.inject();
        extended::statement_target(frontend::DESCRIBE, statement.server_name(), out);
        self.expect.push(Entry::pass(Answer::Describe));
    }

    /// The client's statement called `name`, or Postgres' error for a name it never defined.
    fn named(&self, name: &[u8]) -> Result<Arc<Statement>, PgError> {
        (self.client.get(name).cloned()).ok_or_else(|| PgError::unknown_statement(name))
    }

    /// A message naming a statement the client does not have: it fails as on Postgres, in
    /// its place in the pipeline; or, from a pinned client, goes on as written (the name
    /// may be one the server holds from SQL pgwarden passed through).
    fn unknown(&mut self, error: PgError, answer: Answer, found: Found, c2s: &mut Pump) {
        if self.pinned {
            return self.pass(answer, found, c2s);
        }
        c2s.drop_message(found.taken);
        self.fail(c2s, error);
    }

    /// Closing a statement forgets the client's name; the server keeps the statement for
    /// whoever else uses it, and pgwarden answers CloseComplete itself.
    fn close(&mut self, found: Found, c2s: &mut Pump) {
        let target = Target::read(c2s.message(found));
        let Some(target) = target.filter(|t| t.is_statement() && !t.name.is_empty()) else {
            return self.pass(Answer::Close, found, c2s);
        };
        let name: Box<[u8]> = target.name.into();
        if self.pinned && self.client.get(&name).is_none() {
            return self.pass(Answer::Close, found, c2s);
        }
        c2s.drop_message(found.taken);
        let mut entry = Entry::new(Kind::Write(b'3'));
        if let Some(statement) = self.client.remove(&name) {
            entry = entry.undo(Undo::ClientRestore(name, statement));
        }
        self.expect.push(entry);
    }

    /// Makes sure the server holds `statement`, preparing it first if not. The answers to
    /// what is added here are swallowed; an error is the client's (its statement no longer
    /// prepares, e.g. a table is gone) and reaches it in place of its own message's answer.
    pub(super) fn ensure(
        &mut self,
        statement: &Arc<Statement>,
        c2s: &mut Pump,
        server: &mut ServerStatements,
    ) {
        if let Some(depends) = &statement.depends {
            self.ensure(depends, c2s, server);
        }
        let lookup = server.lookup(statement);
        if let Lookup::Present = lookup {
            return server.touch(statement);
        }
        self.make_room(lookup, statement, c2s, server);
        let undo = Undo::ServerRemove(statement.hash);
        let swallow = |answer| Entry::new(Kind::Await(answer, Fate::Swallow));
        match &statement.definition {
            Definition::Protocol(definition) => {
                extended::parse(statement.server_name(), definition, c2s.inject());
                self.expect.push(swallow(Answer::Parse).undo(undo));
            }
            // An SQL-level statement used from the protocol: run its PREPARE through the
            // unnamed statement.
            Definition::Sql(_) => {
                let mut text = super::query::prepare_text(statement);
                text.extend_from_slice(&[0, 0, 0]);
                let out = c2s.inject();
                extended::parse(b"", &text, out);
                extended::bind_unnamed(out);
                extended::execute_unnamed(out);
                self.expect.push(swallow(Answer::Parse));
                self.expect.push(swallow(Answer::Bind));
                self.expect.push(swallow(Answer::Execute).undo(undo));
            }
        }
        server.insert(statement.clone());
    }

    /// A Parse of `EXECUTE name …` for a statement this client prepared: the statement it
    /// runs, and the Parse's definition with the server-side name in the text.
    fn executes(
        &self,
        parse: &Parse<'_>,
        name: &[u8],
        arguments: &[u8],
    ) -> Option<(Arc<Statement>, Vec<u8>)> {
        let query = parse.query();
        let depends = self.client.get(name)?.clone();
        let mut definition = b"EXECUTE ".to_vec();
        definition.extend_from_slice(depends.server_name());
        definition.push(b' ');
        definition.extend_from_slice(arguments);
        // The NUL ending the text, then the parameter types as the client sent them.
        definition.extend_from_slice(&parse.definition[query.len()..]);
        Some((depends, definition))
    }

    /// Frees `statement`'s server-side name and, if the server is full, a slot.
    ///
    /// The name is closed even when pgwarden believes the server lacks it (closing a
    /// missing statement is no error): a statement dropped behind pgwarden's back, say by a
    /// failed DISCARD ALL it took as done, then costs nothing instead of a 42P05.
    pub(super) fn make_room(
        &mut self,
        lookup: Lookup,
        statement: &Statement,
        c2s: &mut Pump,
        server: &mut ServerStatements,
    ) {
        match lookup {
            Lookup::Taken(other) => self.close_on_server(other, c2s.inject(), server),
            _ => {
                let out = c2s.inject();
                extended::statement_target(frontend::CLOSE, statement.server_name(), out);
                self.expect
                    .push(Entry::new(Kind::Await(Answer::Close, Fate::Swallow)));
            }
        }
        if let Some(victim) = server.victim(self.max) {
            self.close_on_server(victim, c2s.inject(), server);
        }
    }
}
