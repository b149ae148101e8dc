//! Zero-copy views of the extended-query messages that name statements (Parse, Bind,
//! Describe, Close), and encoders for the ones pgwarden writes itself when it prepares
//! statements on a client's behalf.

use bytes::{BufMut, BytesMut};

use super::framing::HEADER_LEN;
use super::tags::frontend;

/// `S` in Describe and Close: the target is a prepared statement (not a portal).
pub const STATEMENT: u8 = b'S';

/// ParseComplete, CloseComplete and friends: a tag and an empty body.
pub fn empty(tag: u8, buf: &mut BytesMut) {
    buf.put_u8(tag);
    buf.put_u32(4);
}

/// Splits a NUL-terminated string off the front of `body`.
fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|b| *b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

/// A Parse message: the statement name, and everything after it (query text and parameter
/// types), which is what makes two statements the same.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub definition: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Reads a whole Parse message (header included).
    pub fn read(msg: &'a [u8]) -> Option<Self> {
        let (name, definition) = cstr(msg.get(HEADER_LEN..)?)?;
        // The query text must be terminated too, or the server will say so itself.
        cstr(definition)?;
        Some(Parse { name, definition })
    }

    /// The query text.
    pub fn query(&self) -> &'a [u8] {
        cstr(self.definition).map_or(&[][..], |(q, _)| q)
    }
}

/// Appends a Parse of `definition` (query text and parameter types) under `name`.
pub fn parse(name: &[u8], definition: &[u8], buf: &mut BytesMut) {
    buf.put_u8(frontend::PARSE);
    buf.put_u32((4 + name.len() + 1 + definition.len()) as u32);
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(definition);
}

/// The front of a Bind message: the portal and statement names. The parameters that
/// follow are never read.
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Bytes from the start of the message to the end of the statement name.
    pub prefix_len: usize,
}

impl<'a> Bind<'a> {
    pub fn read(msg: &'a [u8]) -> Option<Self> {
        let (portal, rest) = cstr(msg.get(HEADER_LEN..)?)?;
        let (statement, _) = cstr(rest)?;
        Some(Bind {
            portal,
            statement,
            prefix_len: HEADER_LEN + portal.len() + 1 + statement.len() + 1,
        })
    }
}

/// Appends the front of a Bind naming `statement`, for a message whose bytes after the
/// original prefix (`rest_len` of them) follow unchanged.
pub fn bind_prefix(portal: &[u8], statement: &[u8], rest_len: usize, buf: &mut BytesMut) {
    buf.put_u8(frontend::BIND);
    buf.put_u32((4 + portal.len() + 1 + statement.len() + 1 + rest_len) as u32);
    buf.put_slice(portal);
    buf.put_u8(0);
    buf.put_slice(statement);
    buf.put_u8(0);
}

/// Describe or Close: what kind of object (statement or portal) and its name.
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    pub fn read(msg: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = msg.get(HEADER_LEN..)?.split_first()?;
        let (name, _) = cstr(rest)?;
        Some(Target { kind, name })
    }

    pub fn is_statement(&self) -> bool {
        self.kind == STATEMENT
    }
}

/// Appends a Describe or Close (`tag`) of the prepared statement `name`.
pub fn statement_target(tag: u8, name: &[u8], buf: &mut BytesMut) {
    buf.put_u8(tag);
    buf.put_u32((4 + 1 + name.len() + 1) as u32);
    buf.put_u8(STATEMENT);
    buf.put_slice(name);
    buf.put_u8(0);
}

/// Appends a Bind of the unnamed portal to the unnamed statement, without parameters.
pub fn bind_unnamed(buf: &mut BytesMut) {
    buf.put_u8(frontend::BIND);
    buf.put_u32(4 + 1 + 1 + 2 + 2 + 2);
    buf.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
}

/// Appends an Execute of the unnamed portal, all rows.
pub fn execute_unnamed(buf: &mut BytesMut) {
    buf.put_u8(frontend::EXECUTE);
    buf.put_u32(4 + 1 + 4);
    buf.put_u8(0);
    buf.put_u32(0);
}

/// Appends a Sync.
pub fn sync(buf: &mut BytesMut) {
    empty(frontend::SYNC, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_through_its_view() {
        let mut buf = BytesMut::new();
        parse(b"s1", b"select $1\0\0\x01\0\0\0\x17", &mut buf);
        let view = Parse::read(&buf).unwrap();
        assert_eq!(view.name, b"s1");
        assert_eq!(view.query(), b"select $1");
        assert_eq!(view.definition, b"select $1\0\0\x01\0\0\0\x17");
    }

    #[test]
    fn bind_prefix_rewrites_only_the_names() {
        let mut original = BytesMut::new();
        bind_prefix(b"", b"client_name", 6, &mut original);
        original.put_slice(&[0, 0, 0, 0, 0, 0]);
        let view = Bind::read(&original).unwrap();
        assert_eq!(view.statement, b"client_name");
        let rest = &original[view.prefix_len..];
        let mut rewritten = BytesMut::new();
        bind_prefix(view.portal, b"pgw_1", rest.len(), &mut rewritten);
        rewritten.put_slice(rest);
        let again = Bind::read(&rewritten).unwrap();
        assert_eq!(again.statement, b"pgw_1");
        let len = u32::from_be_bytes(rewritten[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, rewritten.len());
    }

    #[test]
    fn truncated_messages_have_no_view() {
        assert!(Parse::read(b"P\0\0\0\x08s1").is_none());
        assert!(Bind::read(b"B\0\0\0\x06\0s").is_none());
        assert!(Target::read(b"D\0\0\0\x04").is_none());
    }

    #[test]
    fn unnamed_bind_and_execute_are_well_formed() {
        let mut buf = BytesMut::new();
        bind_unnamed(&mut buf);
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, buf.len());
        let view = Bind::read(&buf).unwrap();
        assert_eq!((view.portal, view.statement), (&b""[..], &b""[..]));
        buf.clear();
        execute_unnamed(&mut buf);
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, buf.len());
    }
}
