//! The SQL statement scanner used in transaction and statement pooling: which statements a
//! Query or Parse holds, and which of them leave session state on the server.
//!
//! It must split text exactly where PostgreSQL does: a statement the scanner cannot see is
//! a statement it cannot guard (`SELECT 'a\'; SET search_path = evil; --'` is one SELECT
//! or a SELECT then a SET, depending on standard_conforming_strings). So the lexer
//! ([`lexer`]) follows the server's `scan.l` for the setting the session has; with the
//! setting unknown both readings are made, and a text they disagree on is reported unsure.
//! It is not a parser: state created inside functions the client calls is invisible to it
//! (documented in the README).

mod classify;
mod lexer;
mod unescape;

#[cfg(test)]
mod oracle;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use lexer::{Lexer, Token};

/// How the server lexes '...' for this session (its standard_conforming_strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strings {
    /// `on` (the default since PostgreSQL 9.1): a backslash is an ordinary character.
    #[default]
    Standard,
    /// `off`: a backslash escapes the next character, as in `E'...'`.
    Escaped,
    /// Not known yet: both readings are made.
    Unknown,
}

impl Strings {
    /// From a ParameterStatus value: "on" -> Standard, "off" -> Escaped, else Unknown.
    pub fn from_setting(value: &[u8]) -> Strings {
        match value {
            b"on" => Strings::Standard,
            b"off" => Strings::Escaped,
            _ => Strings::Unknown,
        }
    }
}

/// Whether the scanner reads text in this client_encoding (a ParameterStatus value) as the
/// server does. In SJIS, BIG5, GBK, UHC, GB18030 and JOHAB (and their aliases) the second
/// byte of a character may be a `\` or an ASCII letter. The server converts a Query to its
/// own encoding before lexing it, so with SJIS `E'<0x95 0x5C>'; SET x = 1; --'` runs the
/// SET (checked on PostgreSQL 15) while the scanner sees one string with an escaped quote.
/// A session in such an encoding must be pinned: no reading of the bytes is safe.
pub fn scannable_encoding(client_encoding: &[u8]) -> bool {
    const UNSAFE: [&[u8]; 18] = [
        b"sjis",
        b"shiftjis",
        b"mskanji",
        b"win932",
        b"windows932",
        b"shiftjis2004",
        b"big5",
        b"win950",
        b"windows950",
        b"gbk",
        b"win936",
        b"windows936",
        b"cp936",
        b"uhc",
        b"win949",
        b"windows949",
        b"gb18030",
        b"johab",
    ];
    // PostgreSQL compares encoding names ignoring case and punctuation.
    let mut name = [0u8; 16];
    let mut len = 0;
    for c in client_encoding.iter().filter(|c| c.is_ascii_alphanumeric()) {
        if len == name.len() {
            return true;
        }
        name[len] = c.to_ascii_lowercase();
        len += 1;
    }
    !UNSAFE.contains(&&name[..len])
}

/// Session state a statement may leave on the server that cannot follow a client to
/// another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    AdvisoryLock,
    Listen,
    HoldCursor,
    TempTable,
    Load,
    SqlPrepare,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::AdvisoryLock,
        Feature::Listen,
        Feature::HoldCursor,
        Feature::TempTable,
        Feature::Load,
        Feature::SqlPrepare,
    ];

    /// What a log line or an error calls it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::AdvisoryLock => "session-level advisory lock",
            Feature::Listen => "LISTEN",
            Feature::HoldCursor => "WITH HOLD cursor",
            Feature::TempTable => "temporary table",
            Feature::Load => "LOAD",
            Feature::SqlPrepare => "SQL-level PREPARE",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A small set of features (a u8 bitset).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Features(u8);

impl Features {
    pub const NONE: Features = Features(0);

    pub fn with(self, f: Feature) -> Features {
        Features(self.0 | f.bit())
    }

    pub fn without(self, f: Feature) -> Features {
        Features(self.0 & !f.bit())
    }

    pub fn contains(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, o: Features) -> Features {
        Features(self.0 | o.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// What running a piece of SQL may do to the session, as far as the text shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Session settings may have changed: SET (not SET LOCAL / SET TRANSACTION / SET
    /// CONSTRAINTS), RESET, any set_config call, DISCARD, SET/RESET SESSION AUTHORIZATION,
    /// SET/RESET ROLE. SET SESSION CHARACTERISTICS counts: it sets the session's
    /// default_transaction_* settings.
    pub settings: bool,
    /// State the text may acquire (see [`Feature`]): the session advisory-lock functions
    /// named anywhere, LISTEN, DECLARE ... WITH HOLD, CREATE [GLOBAL|LOCAL] TEMP ..., SELECT
    /// ... INTO TEMP ..., pg_temp in a CREATE or INTO, LOAD, PREPARE name.
    pub acquires: Features,
    /// State the text may release: the advisory-unlock functions, UNLISTEN, DROP, CLOSE,
    /// DISCARD, DEALLOCATE, COMMIT / END / ROLLBACK / ABORT / PREPARE TRANSACTION.
    pub releases: bool,
    /// A statement starts with PREPARE (not PREPARE TRANSACTION), EXECUTE, DEALLOCATE or
    /// DISCARD, or is an EXPLAIN or CREATE ... AS that names EXECUTE.
    pub statements: bool,
    /// A statement starts with COPY.
    pub copy: bool,
    /// The scanner cannot be sure what the text does; the caller pins the client to its
    /// server. Set when the setting is unknown and the two readings split the text or
    /// classify it differently; when quoted bodies nest deeper than the scanner follows;
    /// and when a text that changes settings names standard_conforming_strings (bodies
    /// later in it would be lexed under the new value).
    pub unsure: bool,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.settings |= other.settings;
        self.acquires = self.acquires.union(other.acquires);
        self.releases |= other.releases;
        self.statements |= other.statements;
        self.copy |= other.copy;
        self.unsure |= other.unsure;
    }
}

/// Classifies every statement in `sql` (no allocation on the hot path: it runs on every
/// Query of every client).
pub fn effects(sql: &[u8], strings: Strings) -> Effects {
    match strings {
        Strings::Standard => read(sql, false),
        Strings::Escaped => read(sql, true),
        // Without a backslash the two readings are the same text.
        Strings::Unknown if !sql.contains(&b'\\') => read(sql, false),
        Strings::Unknown => {
            let (standard, escaped) = (read(sql, false), read(sql, true));
            let mut out = standard;
            out.merge(escaped);
            out.unsure |= standard != escaped || !same_split(sql);
            out
        }
    }
}

fn read(sql: &[u8], escaped: bool) -> Effects {
    let mut out = classify::read_code(sql, escaped, 0);
    out.unsure |= out.settings && names_conforming_strings(sql);
    out
}

/// Whether `sql` mentions standard_conforming_strings (in any case, quoted or not).
fn names_conforming_strings(sql: &[u8]) -> bool {
    const NAME: &[u8] = b"standard_conforming_strings";
    sql.windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME))
}

/// Whether both readings end statements at the same `;`s.
fn same_split(sql: &[u8]) -> bool {
    let ends = |escaped| {
        let mut lexer = Lexer::new(sql, escaped);
        std::iter::from_fn(move || loop {
            match lexer.next()? {
                Token::End => return Some(lexer.pos()),
                _ => continue,
            }
        })
    };
    ends(false).eq(ends(true))
}

/// Calls `f` with each statement's text (without its `;`), skipping empty ones (only
/// blanks and comments). `strings` must be Standard or Escaped (callers check
/// `effects(..).unsure` first); Unknown is read as Standard.
pub fn for_each_statement<'a>(sql: &'a [u8], strings: Strings, mut f: impl FnMut(&'a [u8])) {
    let mut lexer = Lexer::new(sql, strings == Strings::Escaped);
    let (mut start, mut any) = (0, false);
    while let Some(token) = lexer.next() {
        if token == Token::End {
            if any {
                f(&sql[start..lexer.pos() - 1]);
            }
            start = lexer.pos();
            any = false;
        } else {
            any = true;
        }
    }
    if any {
        f(&sql[start..]);
    }
}

/// The text of `sql` when it holds exactly one statement (without its closing `;`).
pub fn single_statement(sql: &[u8], strings: Strings) -> Option<&[u8]> {
    let mut count = 0;
    let mut only = &sql[..0];
    for_each_statement(sql, strings, |statement| {
        count += 1;
        only = statement;
    });
    (count == 1).then_some(only)
}
