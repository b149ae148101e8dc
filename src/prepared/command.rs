//! The SQL-level statements that touch prepared statements (`PREPARE`, `EXECUTE`,
//! `DEALLOCATE`, `DISCARD ALL`), read from a simple Query that holds only that statement.

use std::borrow::Cow;

use crate::protocol::sql::{for_each_statement, single_statement, Strings};

#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PREPARE name <definition>`, the definition being `[(types)] AS statement`.
    Prepare {
        name: Cow<'a, [u8]>,
        definition: &'a [u8],
    },
    /// `EXECUTE name <arguments>`.
    Execute {
        name: Cow<'a, [u8]>,
        arguments: &'a [u8],
    },
    /// `DEALLOCATE [PREPARE] name`; `None` for `ALL`.
    Deallocate(Option<Cow<'a, [u8]>>),
    DiscardAll,
}

/// One statement of a Query: a command pgwarden rewrites, or text it leaves alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Verbatim(&'a [u8]),
    /// A command, with the statement's text.
    Command(&'a [u8], Command<'a>),
}

/// The statements of a Query's text, if any of them is a command; `None` (without
/// allocating) for the usual Query that holds none.
pub fn read_all(sql: &[u8]) -> Option<Vec<Piece<'_>>> {
    let sql = sql.strip_suffix(b"\0").unwrap_or(sql);
    let mut any = false;
    for_each_statement(sql, Strings::Standard, |statement| {
        any = any || read_statement(statement).is_some()
    });
    if !any {
        return None;
    }
    let mut pieces = Vec::new();
    for_each_statement(sql, Strings::Standard, |statement| {
        pieces.push(match read_statement(statement) {
            Some(command) => Piece::Command(statement, command),
            None => Piece::Verbatim(statement),
        })
    });
    Some(pieces)
}

/// The command in a Query's text, if its only statement is one of them.
pub fn read(sql: &[u8]) -> Option<Command<'_>> {
    let sql = sql.strip_suffix(b"\0").unwrap_or(sql);
    read_statement(single_statement(sql, Strings::Standard)?)
}

/// The command one statement is, if it is one.
fn read_statement(statement: &[u8]) -> Option<Command<'_>> {
    let mut cursor = Cursor {
        sql: statement,
        pos: 0,
    };
    let head = cursor.word()?;
    if head.eq_ignore_ascii_case(b"prepare") {
        let name = cursor.name()?;
        if name.eq_ignore_ascii_case(b"transaction") {
            return None;
        }
        let definition = cursor.rest();
        Some(Command::Prepare { name, definition }).filter(|_| !definition.is_empty())
    } else if head.eq_ignore_ascii_case(b"execute") {
        let name = cursor.name()?;
        Some(Command::Execute {
            name,
            arguments: cursor.rest(),
        })
    } else if head.eq_ignore_ascii_case(b"deallocate") {
        let mut name = cursor.name()?;
        if name.as_ref() == b"prepare" {
            name = cursor.name()?;
        }
        let all = name.as_ref() == b"all";
        cursor
            .at_end()
            .then_some(Command::Deallocate((!all).then_some(name)))
    } else if head.eq_ignore_ascii_case(b"discard") {
        let what = cursor.word()?;
        (what.eq_ignore_ascii_case(b"all") && cursor.at_end()).then_some(Command::DiscardAll)
    } else {
        None
    }
}

struct Cursor<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Skips whitespace and comments.
    fn skip_blank(&mut self) {
        loop {
            match &self.sql[self.pos..] {
                [c, ..] if c.is_ascii_whitespace() => self.pos += 1,
                [b'-', b'-', rest @ ..] => {
                    let line = rest.iter().position(|c| *c == b'\n');
                    self.pos = line.map_or(self.sql.len(), |i| self.pos + 3 + i);
                }
                [b'/', b'*', ..] => self.skip_block_comment(),
                _ => return,
            }
        }
    }

    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.sql.len() {
            match &self.sql[self.pos..] {
                [b'/', b'*', ..] => (depth, self.pos) = (depth + 1, self.pos + 2),
                [b'*', b'/', ..] => {
                    (depth, self.pos) = (depth - 1, self.pos + 2);
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// An unquoted word, as written.
    fn word(&mut self) -> Option<&'a [u8]> {
        self.skip_blank();
        let start = self.pos;
        let first = *self.sql.get(start)?;
        if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
            return None;
        }
        while let Some(&c) = self.sql.get(self.pos) {
            if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80) {
                break;
            }
            self.pos += 1;
        }
        Some(&self.sql[start..self.pos])
    }

    /// An identifier as Postgres resolves it: unquoted ones folded to lower case, quoted
    /// ones as written (with `""` for a quote).
    fn name(&mut self) -> Option<Cow<'a, [u8]>> {
        self.skip_blank();
        if self.sql.get(self.pos) != Some(&b'"') {
            let word = self.word()?;
            return Some(if word.iter().any(u8::is_ascii_uppercase) {
                Cow::Owned(word.to_ascii_lowercase())
            } else {
                Cow::Borrowed(word)
            });
        }
        let mut name = Vec::new();
        self.pos += 1;
        loop {
            match &self.sql[self.pos..] {
                [b'"', b'"', ..] => {
                    name.push(b'"');
                    self.pos += 2;
                }
                [b'"', ..] => {
                    self.pos += 1;
                    return (!name.is_empty()).then_some(Cow::Owned(name));
                }
                [c, ..] => {
                    name.push(*c);
                    self.pos += 1;
                }
                [] => return None,
            }
        }
    }

    /// Everything after the cursor, trimmed.
    fn rest(&mut self) -> &'a [u8] {
        self.skip_blank();
        self.sql[self.pos..].trim_ascii_end()
    }

    fn at_end(&mut self) -> bool {
        self.rest().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Cow<'_, [u8]> {
        Cow::Borrowed(s.as_bytes())
    }

    #[test]
    fn reads_each_command_and_folds_unquoted_names() {
        assert_eq!(
            read(b"PREPARE Foo (int) AS select $1;"),
            Some(Command::Prepare {
                name: name("foo"),
                definition: b"(int) AS select $1"
            })
        );
        assert_eq!(
            read(b"  /* hi */ execute \"Foo\"\"x\" (1, 'a;b')"),
            Some(Command::Execute {
                name: name("Foo\"x"),
                arguments: b"(1, 'a;b')"
            })
        );
        assert_eq!(
            read(b"execute p"),
            Some(Command::Execute {
                name: name("p"),
                arguments: b""
            })
        );
        assert_eq!(
            read(b"DEALLOCATE PREPARE p"),
            Some(Command::Deallocate(Some(name("p"))))
        );
        assert_eq!(read(b"deallocate all"), Some(Command::Deallocate(None)));
        assert_eq!(read(b"discard all\0"), Some(Command::DiscardAll));
    }

    #[test]
    fn other_statements_and_several_statements_are_not_commands() {
        assert_eq!(read(b"select 1"), None);
        assert_eq!(read(b"prepare transaction 'x'"), None);
        assert_eq!(read(b"prepare p as select 1; execute p"), None);
        assert_eq!(read_all(b"select 1; select 2"), None);
        let pieces = read_all(b"begin; prepare y as select 'y'; execute y; commit").unwrap();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0], Piece::Verbatim(b"begin"));
        assert!(matches!(
            pieces[2],
            Piece::Command(_, Command::Execute { .. })
        ));
        assert_eq!(read(b"discard plans"), None);
        assert_eq!(read(b"prepare p"), None);
        assert_eq!(read(b"execute \"unterminated"), None);
    }
}
