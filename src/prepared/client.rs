//! Client messages of the extended protocol on their way to the server: statement names
//! are rewritten to server-side ones, and statements the server lacks are prepared first.

use std::sync::Arc;

use bytes::Bytes;

use super::command::{self, Command};
use super::entry::{Entry, Expects, Fate, Kind, Rename, Undo};
use super::statements::{Definition, Lookup, ServerStatements, Statement};
use super::Prepared;
use crate::protocol::answers::Answer;
use crate::protocol::buffer::{Found, Pump};
use crate::protocol::extended::{self, Bind, Parse, Target};
use crate::protocol::sql::Strings;
use crate::protocol::tags::frontend;

/// What the protocol machine knew as a client message passed.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The message starts a pipeline outside any transaction, with nothing owed.
    pub fresh: bool,
    /// A Query's statements may involve prepared statements (its text was not seen, or a
    /// statement starts with PREPARE, EXECUTE, DEALLOCATE or DISCARD).
    pub names_statements: bool,
    /// How the server lexes string constants (the scanner was sure of it).
    pub strings: Strings,
}

impl Prepared {
    /// Handles one client message found by `c2s.next`: forwards, rewrites or answers it.
    pub fn client_message(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        seen: Seen,
        owed: &mut dyn Expects,
    ) {
        let Seen {
            fresh,
            names_statements,
            strings,
        } = seen;
        let named_bind = found.tag == frontend::BIND
            && found.whole
            && Bind::read(c2s.message(found)).is_some_and(|b| !b.statement.is_empty());
        let fresh = fresh && owed.is_empty();
        self.retry.keep(found, c2s, fresh, named_bind);
        match found.tag {
            frontend::PARSE if found.whole => {
                let names_statements = names_statements.then_some(strings);
                self.parse(found, c2s, server, names_statements, owed)
            }
            frontend::BIND if found.whole => self.bind(found, c2s, server, owed),
            frontend::DESCRIBE if found.whole => self.describe(found, c2s, server, owed),
            frontend::CLOSE if found.whole => self.close(found, c2s, owed),
            frontend::QUERY if found.whole && names_statements => {
                self.query(found, c2s, server, strings, owed)
            }
            tag => {
                if let Some(answer) = Answer::to(tag) {
                    owed.push(Entry::pass(answer));
                }
                c2s.forward(found.taken);
            }
        }
    }

    pub(super) fn pass(
        &mut self,
        answer: Answer,
        found: Found,
        c2s: &mut Pump,
        owed: &mut dyn Expects,
    ) {
        owed.push(Entry::pass(answer));
        c2s.forward(found.taken);
    }

    fn parse(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        names_statements: Option<Strings>,
        owed: &mut dyn Expects,
    ) {
        let Some(parse) = Parse::read(c2s.message(found)) else {
            return self.pass(Answer::Parse, found, c2s, owed);
        };
        let command = names_statements.and_then(|strings| command::read(parse.query(), strings));
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
                return self.pass(Answer::Parse, found, c2s, owed);
            };
            c2s.drop_message(found.taken);
            self.ensure(&depends, c2s, server, owed);
            extended::parse(b"", &definition, c2s.inject());
            return owed.push(Entry::pass(Answer::Parse));
        }
        let name: Box<[u8]> = parse.name.into();
        if let Some(existing) = self.client.get(&name).cloned() {
            return self.fail_duplicate(found, c2s, server, existing, owed);
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
                owed.push(Entry::new(Kind::Write(b'1')).undo(undo));
            }
            lookup => {
                if let Some(depends) = &statement.depends {
                    self.ensure(depends, c2s, server, owed);
                }
                self.make_room(lookup, &statement, c2s, server, owed);
                extended::parse(statement.server_name(), &definition, c2s.inject());
                let hash = statement.hash;
                server.insert(statement);
                owed.push(
                    Entry::pass(Answer::Parse)
                        .undo(undo)
                        .undo(Undo::ServerRemove(hash)),
                );
            }
        }
    }

    /// A Parse of a name the client already has: the client's Parse is sent under the
    /// server-side name of its existing statement (made sure to be there), so Postgres
    /// checks it exactly as it would the client's (a syntax error first, then the name),
    /// and its 42P05 is renamed to the client's name.
    fn fail_duplicate(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        existing: Arc<Statement>,
        owed: &mut dyn Expects,
    ) {
        let definition = match Parse::read(c2s.message(found)) {
            Some(parse) => Bytes::copy_from_slice(parse.definition),
            None => Bytes::new(),
        };
        let client: Box<[u8]> =
            Parse::read(c2s.message(found)).map_or(Box::default(), |p| p.name.into());
        c2s.drop_message(found.taken);
        // Prepared afresh: if the server lacked it after all, the failing Parse would
        // otherwise create it under its shared name with the client's new definition.
        server.remove(existing.hash);
        self.ensure(&existing, c2s, server, owed);
        extended::parse(existing.server_name(), &definition, c2s.inject());
        let rename = Rename {
            provoked: existing.server_name().into(),
            client,
        };
        owed.push(Entry::new(Kind::Await(Answer::Parse, Fate::Fail(rename))));
    }

    fn bind(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        let Some(bind) = Bind::read(c2s.message(found)).filter(|b| !b.statement.is_empty()) else {
            return self.pass(Answer::Bind, found, c2s, owed);
        };
        let Some(statement) = self.client.get(bind.statement).cloned() else {
            let name: Box<[u8]> = bind.statement.into();
            return self.unknown(&name, Answer::Bind, found, c2s, owed);
        };
        self.used.merge(statement.effects);
        let portal = bind.portal.to_vec();
        let prefix_len = bind.prefix_len;
        c2s.drop_message(prefix_len);
        self.ensure(&statement, c2s, server, owed);
        let rest = found.taken - prefix_len;
        extended::bind_prefix(&portal, statement.server_name(), rest, c2s.inject());
        c2s.forward(rest);
        let mut entry = Entry::pass(Answer::Bind);
        entry.statement = Some(statement);
        entry.origin = self.retry.origin(found);
        owed.push(entry);
    }

    fn describe(
        &mut self,
        found: Found,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        let target = Target::read(c2s.message(found));
        let Some(target) = target.filter(|t| t.is_statement() && !t.name.is_empty()) else {
            return self.pass(Answer::Describe, found, c2s, owed);
        };
        let Some(statement) = self.client.get(target.name).cloned() else {
            let name: Box<[u8]> = target.name.into();
            return self.unknown(&name, Answer::Describe, found, c2s, owed);
        };
        c2s.drop_message(found.taken);
        self.ensure(&statement, c2s, server, owed);
        let out = c2s.inject();
        extended::statement_target(frontend::DESCRIBE, statement.server_name(), out);
        owed.push(Entry::pass(Answer::Describe));
    }

    /// A message naming a statement the client does not have: it fails as on Postgres, in
    /// its place in the pipeline; or, from a pinned client, goes on as written (the name
    /// may be one the server holds from SQL pgwarden passed through).
    fn unknown(
        &mut self,
        name: &[u8],
        answer: Answer,
        found: Found,
        c2s: &mut Pump,
        owed: &mut dyn Expects,
    ) {
        if self.pinned {
            return self.pass(answer, found, c2s, owed);
        }
        c2s.drop_message(found.taken);
        self.fail_unknown(c2s, name, owed);
    }

    /// Closing a statement forgets the client's name; the server keeps the statement for
    /// whoever else uses it, and pgwarden answers CloseComplete itself.
    fn close(&mut self, found: Found, c2s: &mut Pump, owed: &mut dyn Expects) {
        let target = Target::read(c2s.message(found));
        let Some(target) = target.filter(|t| t.is_statement() && !t.name.is_empty()) else {
            return self.pass(Answer::Close, found, c2s, owed);
        };
        let name: Box<[u8]> = target.name.into();
        if self.pinned && self.client.get(&name).is_none() {
            return self.pass(Answer::Close, found, c2s, owed);
        }
        c2s.drop_message(found.taken);
        let mut entry = Entry::new(Kind::Write(b'3'));
        if let Some(statement) = self.client.remove(&name) {
            entry = entry.undo(Undo::ClientRestore(name, statement));
        }
        owed.push(entry);
    }

    /// Makes sure the server holds `statement`, preparing it first if not. The answers to
    /// what is added here are swallowed; an error is the client's (its statement no longer
    /// prepares, e.g. a table is gone) and reaches it in place of its own message's answer.
    pub(super) fn ensure(
        &mut self,
        statement: &Arc<Statement>,
        c2s: &mut Pump,
        server: &mut ServerStatements,
        owed: &mut dyn Expects,
    ) {
        if let Some(depends) = &statement.depends {
            self.ensure(depends, c2s, server, owed);
        }
        let lookup = server.lookup(statement);
        if let Lookup::Present = lookup {
            return server.touch(statement);
        }
        self.make_room(lookup, statement, c2s, server, owed);
        let undo = Undo::ServerRemove(statement.hash);
        let swallow = Entry::swallow;
        match &statement.definition {
            Definition::Protocol(definition) => {
                extended::parse(statement.server_name(), definition, c2s.inject());
                owed.push(swallow(Answer::Parse).undo(undo));
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
                owed.push(swallow(Answer::Parse));
                owed.push(swallow(Answer::Bind));
                owed.push(swallow(Answer::Execute).undo(undo));
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
        owed: &mut dyn Expects,
    ) {
        match lookup {
            Lookup::Taken(other) => self.close_on_server(other, c2s.inject(), server, owed),
            _ => {
                let out = c2s.inject();
                extended::statement_target(frontend::CLOSE, statement.server_name(), out);
                owed.push(Entry::swallow(Answer::Close));
            }
        }
        if let Some(victim) = server.victim(self.max) {
            self.close_on_server(victim, c2s.inject(), server, owed);
        }
    }
}
