//! A console answer as rows: RowDescription, DataRows, CommandComplete, in the text
//! format. Columns say whether they hold text or numbers (int8, so psql aligns them and
//! drivers read them as integers, as PgBouncer's do).

use bytes::{BufMut, BytesMut};

/// Type OIDs of the columns.
const TEXT_OID: u32 = 25;
const INT8_OID: u32 = 20;

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
}

/// One answer: named columns and rows of cells (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<(&'static str, Kind)>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// A cell.
pub fn text(value: impl Into<String>) -> Option<String> {
    Some(value.into())
}

pub fn int(value: impl std::fmt::Display) -> Option<String> {
    Some(value.to_string())
}

/// A text cell, NULL when empty.
pub fn text_or_null(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

impl Table {
    /// A table with these columns and no rows yet.
    pub fn new(columns: &[(&'static str, Kind)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have a cell per column.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "cells per column");
        self.rows.push(row);
    }

    #[cfg(test)]
    pub fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(name, _)| *name).collect()
    }

    /// RowDescription, the DataRows and CommandComplete `tag` (SHOW's is bare, as PgBouncer).
    pub fn encode(&self, tag: &str, out: &mut BytesMut) {
        row_description(&self.columns, out);
        for row in &self.rows {
            data_row(row, out);
        }
        command_complete(tag, out);
    }
}

/// Appends a message: tag, length (patched in), body.
fn message(tag: u8, out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(text: &str, out: &mut BytesMut) {
    // A NUL inside would end the string early; names and values never carry one.
    out.put_slice(text.replace('\0', "").as_bytes());
    out.put_u8(0);
}

fn row_description(columns: &[(&'static str, Kind)], out: &mut BytesMut) {
    message(b'T', out, |out| {
        out.put_u16(columns.len() as u16);
        for (name, kind) in columns {
            cstr(name, out);
            out.put_u32(0); // no table
            out.put_u16(0); // no column number
            let (oid, size) = match kind {
                Kind::Text => (TEXT_OID, -1i16),
                Kind::Int => (INT8_OID, 8),
            };
            out.put_u32(oid);
            out.put_i16(size);
            out.put_i32(-1); // no type modifier
            out.put_u16(0); // text format
        }
    });
}

fn data_row(row: &[Option<String>], out: &mut BytesMut) {
    message(b'D', out, |out| {
        out.put_u16(row.len() as u16);
        for cell in row {
            match cell {
                Some(value) => {
                    out.put_i32(value.len() as i32);
                    out.put_slice(value.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
    });
}

/// CommandComplete with `tag`.
pub fn command_complete(tag: &str, out: &mut BytesMut) {
    message(b'C', out, |out| cstr(tag, out));
}

/// EmptyQueryResponse, for a query with no command in it.
pub fn empty_query(out: &mut BytesMut) {
    message(b'I', out, |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_encodes_as_postgres_would_send_it() {
        let mut table = Table::new(&[("name", Kind::Text), ("n", Kind::Int)]);
        table.push(vec![text("a"), int(7)]);
        table.push(vec![None, int(-1)]);
        let mut out = BytesMut::new();
        table.encode("SHOW", &mut out);
        // T: 4 (len) + 2 (count) + per column name\0 + 18 bytes.
        assert_eq!(out[0], b'T');
        let t_len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(t_len, 4 + 2 + (5 + 18) + (2 + 18));
        let rest = &out[1 + t_len..];
        assert_eq!(&rest[..5], &[b'D', 0, 0, 0, 4 + 2 + 4 + 1 + 4 + 1]);
        assert_eq!(&rest[7..12], &[0, 0, 0, 1, b'a']);
        let second = &rest[1 + 16..];
        assert_eq!(&second[..1], b"D");
        assert_eq!(&second[7..11], &(-1i32).to_be_bytes());
        assert!(out.ends_with(b"C\0\0\0\x09SHOW\0"));
        assert_eq!(table.names(), ["name", "n"]);
        assert_eq!(text_or_null(""), None);
    }
}
