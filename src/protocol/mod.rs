//! The PostgreSQL v3 wire protocol as pgwarden needs it: tags, header-only framing with the
//! per-type rules, one direction's buffer, what each message is answered with, startup
//! classification, whole-message reads for the handshake, the SQL statement scanner, and
//! the messages and errors pgwarden writes itself. Pure: nothing here does I/O but
//! [`io`], the handshake's reads.

pub mod answers;
pub mod buffer;
pub mod errors;
pub mod extended;
pub mod framing;
pub mod io;
pub mod messages;
pub mod rules;
pub mod sql;
pub mod startup;
pub mod tags;

pub use errors::{sqlstate, PgError};

/// The transaction status a backend reports in ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until it ends).
    Failed,
}

impl TransactionStatus {
    /// Reads the status byte of a ReadyForQuery body.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        match body.first()? {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// Reads NUL-terminated strings out of a body.
pub fn cstrings(body: &[u8]) -> impl Iterator<Item = &str> {
    body.split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
}
