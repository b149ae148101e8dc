//! What each statement's words say it does to the session: its head keywords, the
//! functions it names anywhere, and the code inside its quotes (function bodies, DO blocks),
//! read the same way to a bounded depth.

use std::mem;

use super::lexer::{Lexer, Quote, Token};
use super::unescape::{ident_value, string_value};
use super::{Effects, Feature};

/// How deep quoted bodies are read as code (the text itself is depth 0); hostile nesting
/// cannot recurse further, and a body past it makes the reading unsure.
pub const MAX_DEPTH: usize = 4;

/// The words a statement's classification looks at inside it (its head is matched
/// separately, in [`Statement::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    /// `set_config`: a call changes settings wherever it appears.
    SetConfig,
    /// A session-level advisory lock function.
    Lock,
    /// An advisory unlock function.
    Unlock,
    Hold,
    With,
    /// TEMP or TEMPORARY.
    Temp,
    /// A word that makes a following TEMP mean a temporary table (CREATE, OR REPLACE,
    /// GLOBAL, LOCAL); `creates` for CREATE.
    BeforeTemp {
        creates: bool,
    },
    Into,
    Execute,
    Other,
}

/// Which [`Word`] `word` is, in any case. Switched on the length first: most words are
/// names of columns and tables, and cost one comparison.
fn word_kind(word: &[u8]) -> Word {
    let any = |keywords: &[&str]| is_any(word, keywords);
    match word.len() {
        4 if is(word, "hold") => Word::Hold,
        4 if is(word, "with") => Word::With,
        4 if is(word, "temp") => Word::Temp,
        4 if is(word, "into") => Word::Into,
        9 if is(word, "temporary") => Word::Temp,
        6 if is(word, "create") => Word::BeforeTemp { creates: true },
        5..=7 if any(&["replace", "global", "local"]) => Word::BeforeTemp { creates: false },
        7 if is(word, "execute") => Word::Execute,
        10 if is(word, "set_config") => Word::SetConfig,
        16 | 20 | 23 | 27
            if any(&[
                "pg_advisory_lock",
                "pg_advisory_lock_shared",
                "pg_try_advisory_lock",
                "pg_try_advisory_lock_shared",
            ]) =>
        {
            Word::Lock
        }
        18 | 22 | 25
            if any(&[
                "pg_advisory_unlock",
                "pg_advisory_unlock_shared",
                "pg_advisory_unlock_all",
            ]) =>
        {
            Word::Unlock
        }
        _ => Word::Other,
    }
}

/// Heads of statements that may release state (ON COMMIT DROP tables end with the
/// transaction).
const RELEASING: [&str; 9] = [
    "unlisten",
    "drop",
    "close",
    "deallocate",
    "commit",
    "end",
    "rollback",
    "abort",
    "discard",
];

/// Inside a PL/pgSQL body a statement also starts after these words (`IF c THEN SET ...`,
/// `BEGIN LISTEN ...`), not only after a `;`.
const BLOCK_WORDS: [&str; 5] = ["begin", "then", "else", "loop", "exception"];

fn is(word: &[u8], keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword.as_bytes())
}

fn is_any(word: &[u8], keywords: &[&str]) -> bool {
    keywords.iter().any(|k| is(word, k))
}

/// A head word in lower case for matching, without allocating; longer words (no head
/// keyword is) come back empty.
fn lower(word: &[u8]) -> Lower {
    let mut out = Lower([0; 8], 0);
    if word.len() <= out.0.len() {
        out.0[..word.len()].copy_from_slice(word);
        out.0.make_ascii_lowercase();
        out.1 = word.len();
    }
    out
}

struct Lower([u8; 8], usize);

impl Lower {
    fn as_slice(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// Reads `sql` as code at `depth`: every statement's effects, merged.
pub fn read_code(sql: &[u8], escaped: bool, depth: usize) -> Effects {
    let mut lexer = Lexer::new(sql, escaped);
    let mut out = Effects::default();
    let mut statement = Statement::new(depth);
    while let Some(token) = lexer.next() {
        match token {
            Token::End => out.merge(mem::replace(&mut statement, Statement::new(depth)).finish()),
            Token::Word(word) if depth > 0 && is_any(word, &BLOCK_WORDS) => {
                out.merge(mem::replace(&mut statement, Statement::new(depth)).finish())
            }
            Token::Word(word) => statement.word(word),
            Token::Ident { inner, unicode } => {
                if let Some(name) = ident_value(inner, unicode, uescape(unicode, &lexer)) {
                    statement.quoted(&name);
                }
            }
            Token::Str { quote, raw } if statement.reads_strings() && quote != Quote::Bits => {
                let value = string_value(raw, quote, uescape(quote == Quote::Unicode, &lexer));
                out.merge(nested(&value, escaped, depth));
            }
            Token::Dollar(body) => out.merge(nested(body, escaped, depth)),
            Token::Str { .. } | Token::Other => {}
        }
    }
    out.merge(statement.finish());
    out
}

/// A quoted body inside text at `depth`, read as code one level down.
fn nested(body: &[u8], escaped: bool, depth: usize) -> Effects {
    if depth + 1 < MAX_DEPTH {
        return read_code(body, escaped, depth + 1);
    }
    Effects {
        unsure: true,
        ..Effects::default()
    }
}

/// The escape character of the `U&` token just read: `\` unless `UESCAPE 'c'` follows.
fn uescape(unicode: bool, lexer: &Lexer<'_>) -> u8 {
    if !unicode {
        return b'\\';
    }
    let mut ahead = lexer.clone();
    match (ahead.next(), ahead.next()) {
        (
            Some(Token::Word(w)),
            Some(Token::Str {
                raw: [b'\'', c, b'\''],
                ..
            }),
        ) if is(w, "uescape") => *c,
        _ => b'\\',
    }
}

/// What one statement's classification needs, gathered word by word: fixed size, so
/// classifying a Query on the relay allocates nothing.
struct Statement<'a> {
    depth: usize,
    /// The first two words; `None` for a quoted identifier (never a keyword).
    head: [Option<&'a [u8]>; 2],
    words: usize,
    /// The word before the current one (`Other` after a quoted identifier).
    prev: Word,
    /// Effects of the functions named so far.
    named: Effects,
    /// `WITH HOLD`.
    hold: bool,
    /// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY`, `INTO TEMP|TEMPORARY`.
    temp: bool,
    /// A word starting with `pg_temp` (the session's temporary schema).
    pg_temp: bool,
    /// The words CREATE or INTO appear (with pg_temp: an object in the temporary schema).
    creates: bool,
    /// The word EXECUTE appears (`EXPLAIN EXECUTE p`, `CREATE TABLE t AS EXECUTE p`).
    execute: bool,
}

impl<'a> Statement<'a> {
    fn new(depth: usize) -> Self {
        Statement {
            depth,
            head: [None; 2],
            words: 0,
            prev: Word::Other,
            named: Effects::default(),
            hold: false,
            temp: false,
            pg_temp: false,
            creates: false,
            execute: false,
        }
    }

    /// Strings in DO and CREATE statements, and in any body, may be code.
    fn reads_strings(&self) -> bool {
        self.depth > 0 || self.head[0].is_some_and(|w| is(w, "do") || is(w, "create"))
    }

    fn word(&mut self, word: &'a [u8]) {
        let kind = word_kind(word);
        self.name(word, kind);
        let prev = mem::replace(&mut self.prev, kind);
        match kind {
            Word::Hold => self.hold |= prev == Word::With,
            Word::Temp => {
                self.temp |= matches!(prev, Word::BeforeTemp { .. } | Word::Into);
            }
            Word::BeforeTemp { creates } => self.creates |= creates,
            Word::Into => self.creates = true,
            Word::Execute => self.execute = true,
            _ => {}
        }
        self.push(Some(word));
    }

    fn quoted(&mut self, name: &[u8]) {
        self.name(name, word_kind(name));
        self.prev = Word::Other;
        self.push(None);
    }

    fn push(&mut self, word: Option<&'a [u8]>) {
        if let Some(slot) = self.head.get_mut(self.words) {
            *slot = word;
        }
        self.words += 1;
    }

    /// A name, bare or quoted (quoted names compare without case too: a false match only
    /// costs a pin).
    fn name(&mut self, name: &[u8], kind: Word) {
        match kind {
            Word::SetConfig => self.named.settings = true,
            Word::Lock => self.named.acquires = self.named.acquires.with(Feature::AdvisoryLock),
            Word::Unlock => self.named.releases = true,
            _ => {}
        }
        self.pg_temp |= name.len() >= 7 && is(&name[..7], "pg_temp");
    }

    fn finish(self) -> Effects {
        if self.words == 0 {
            // Nothing was read (the end after a last `;`): nothing to say.
            return Effects::default();
        }
        let mut out = self.named;
        let word = |i: usize| self.head[i].unwrap_or_default();
        let (first, second) = (word(0), word(1));
        let acquire = |out: &mut Effects, f| out.acquires = out.acquires.with(f);
        match lower(first).as_slice() {
            // SET SESSION CHARACTERISTICS sets default_transaction_* for the session.
            b"set" => out.settings |= !is_any(second, &["local", "transaction", "constraints"]),
            b"reset" | b"discard" => out.settings = true,
            b"listen" => acquire(&mut out, Feature::Listen),
            b"load" => acquire(&mut out, Feature::Load),
            b"declare" if self.hold => acquire(&mut out, Feature::HoldCursor),
            b"prepare" if is(second, "transaction") => out.releases = true,
            b"prepare" => {
                acquire(&mut out, Feature::SqlPrepare);
                out.statements = true;
            }
            b"execute" => out.statements = true,
            b"explain" | b"create" => out.statements = self.execute,
            b"copy" => out.copy = true,
            _ => {}
        }
        out.releases |= is_any(first, &RELEASING);
        out.statements |= is_any(first, &["deallocate", "discard"]);
        if self.temp || (self.pg_temp && self.creates) {
            acquire(&mut out, Feature::TempTable);
        }
        if self.depth > 0 {
            // Only the client's own statements run prepared statements or COPY.
            out.statements = false;
            out.copy = false;
        }
        out
    }
}
