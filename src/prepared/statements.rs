//! Prepared statements as pgwarden keeps them: what defines one ([`Statement`]), the names a
//! client gave its statements ([`ClientStatements`]), and the statements one server holds
//! ([`ServerStatements`], bounded, least recently used closed first).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::protocol::sql::{self, Effects, Strings};

/// How a statement was defined; both kinds share one namespace, as on Postgres.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Definition {
    /// A protocol-level Parse: query text and parameter types, as the Parse body carries
    /// them after the name.
    Protocol(Bytes),
    /// SQL `PREPARE name …`: the text after the name (`[(types)] AS statement`).
    Sql(Bytes),
}

/// One statement definition and the name it has on every server.
#[derive(Debug)]
pub struct Statement {
    pub definition: Definition,
    /// What running it may do to the session, read from its text under either lexing of
    /// strings (it may be run in sessions with either).
    pub effects: Effects,
    /// The SQL-level statement this one EXECUTEs: it must be on the server too.
    pub depends: Option<Arc<Statement>>,
    pub hash: u64,
    name: [u8; SERVER_NAME_LEN],
}

const SERVER_NAME_PREFIX: &[u8] = b"pgw_";
const SERVER_NAME_LEN: usize = 4 + 16;

/// Hash keys drawn once per process: clients cannot craft two definitions that share a
/// server-side name, so one client's statement never runs another's text.
fn keys() -> &'static RandomState {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new)
}

impl Statement {
    pub fn new(definition: Definition, depends: Option<Arc<Statement>>) -> Arc<Statement> {
        let hash = keys().hash_one(&definition);
        let text = match &definition {
            Definition::Protocol(d) | Definition::Sql(d) => d,
        };
        let mut effects = sql::effects(text, Strings::Standard);
        effects.merge(sql::effects(text, Strings::Escaped));
        let mut name = [0u8; SERVER_NAME_LEN];
        name[..4].copy_from_slice(SERVER_NAME_PREFIX);
        for (i, byte) in hash.to_be_bytes().iter().enumerate() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            name[4 + 2 * i] = HEX[(byte >> 4) as usize];
            name[5 + 2 * i] = HEX[(byte & 15) as usize];
        }
        Arc::new(Statement {
            definition,
            effects,
            depends,
            hash,
            name,
        })
    }

    /// The statement's name on servers: the same for every client that defines it alike.
    pub fn server_name(&self) -> &[u8] {
        &self.name
    }

    fn same_as(self: &Arc<Self>, other: &Arc<Statement>) -> bool {
        Arc::ptr_eq(self, other) || self.definition == other.definition
    }
}

/// A client's statement names. Names are the client's own; only it can see them.
#[derive(Debug, Default)]
pub struct ClientStatements {
    names: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }

    pub fn insert(&mut self, name: &[u8], statement: Arc<Statement>) {
        self.names.insert(name.into(), statement);
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.names.remove(name)
    }

    /// Forgets every name (DEALLOCATE ALL, DISCARD ALL), returning them for an undo.
    pub fn take_all(&mut self) -> HashMap<Box<[u8]>, Arc<Statement>> {
        std::mem::take(&mut self.names)
    }

    pub fn restore_all(&mut self, names: HashMap<Box<[u8]>, Arc<Statement>>) {
        self.names = names;
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Whether a server holds a statement.
pub enum Lookup {
    Present,
    Absent,
    /// Another definition holds the same server-side name (a hash collision): it must be
    /// closed first.
    Taken(Arc<Statement>),
}

/// The statements prepared on one server, shared by every client it serves.
#[derive(Debug, Default)]
pub struct ServerStatements {
    held: HashMap<u64, Held>,
    /// Advances on every use; orders statements by recency.
    clock: u64,
    /// `clock` when the current client got the server: statements used since then may have
    /// portals open in its transaction, so they are never the ones closed.
    lent_at: u64,
}

#[derive(Debug)]
struct Held {
    statement: Arc<Statement>,
    used: u64,
}

impl ServerStatements {
    /// A new client has the server from now on.
    pub fn lend(&mut self) {
        self.clock += 1;
        self.lent_at = self.clock;
    }

    pub fn lookup(&self, statement: &Arc<Statement>) -> Lookup {
        match self.held.get(&statement.hash) {
            None => Lookup::Absent,
            Some(held) if held.statement.same_as(statement) => Lookup::Present,
            Some(held) => Lookup::Taken(held.statement.clone()),
        }
    }

    /// Marks a held statement as just used.
    pub fn touch(&mut self, statement: &Statement) {
        self.clock += 1;
        if let Some(held) = self.held.get_mut(&statement.hash) {
            held.used = self.clock;
        }
    }

    pub fn insert(&mut self, statement: Arc<Statement>) {
        self.clock += 1;
        let used = self.clock;
        self.held.insert(statement.hash, Held { statement, used });
    }

    pub fn remove(&mut self, hash: u64) -> Option<Arc<Statement>> {
        self.held.remove(&hash).map(|held| held.statement)
    }

    /// The statement to close before preparing another when `max` are held: the least
    /// recently used one not used by the current client.
    pub fn victim(&self, max: usize) -> Option<Arc<Statement>> {
        if self.held.len() < max {
            return None;
        }
        self.held
            .values()
            .filter(|held| held.used < self.lent_at)
            .min_by_key(|held| held.used)
            .map(|held| held.statement.clone())
    }

    /// Forgets everything (the server ran DISCARD ALL or DEALLOCATE ALL).
    pub fn take_all(&mut self) -> HashMap<u64, Arc<Statement>> {
        self.held
            .drain()
            .map(|(hash, held)| (hash, held.statement))
            .collect()
    }

    pub fn restore_all(&mut self, statements: HashMap<u64, Arc<Statement>>) {
        for statement in statements.into_values() {
            self.insert(statement);
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &'static str) -> Arc<Statement> {
        Statement::new(
            Definition::Protocol(Bytes::from_static(sql.as_bytes())),
            None,
        )
    }

    #[test]
    fn alike_definitions_share_a_server_name_and_others_do_not() {
        let (a, b, c) = (stmt("select 1\0"), stmt("select 1\0"), stmt("select 2\0"));
        assert_eq!(a.server_name(), b.server_name());
        assert_ne!(a.server_name(), c.server_name());
        assert!(a.server_name().starts_with(b"pgw_"));
        let sql = Statement::new(Definition::Sql(Bytes::from_static(b"select 1\0")), None);
        assert_ne!(a.server_name(), sql.server_name(), "kinds do not mix");
    }

    #[test]
    fn the_victim_is_the_least_recently_used_not_lent_out_now() {
        let mut server = ServerStatements::default();
        let (a, b, c) = (stmt("a"), stmt("b"), stmt("c"));
        server.insert(a.clone());
        server.insert(b.clone());
        server.touch(&a);
        assert!(server.victim(3).is_none(), "room left");
        server.lend();
        assert_eq!(server.victim(2).unwrap().hash, b.hash);
        server.touch(&b);
        assert_eq!(server.victim(2).unwrap().hash, a.hash);
        server.touch(&a);
        assert!(server.victim(2).is_none(), "both in use by this client");
        server.insert(c.clone());
        assert!(matches!(server.lookup(&c), Lookup::Present));
    }
}
