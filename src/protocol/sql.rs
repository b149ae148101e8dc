//! A light lexer over the SQL a client sends, used only in transaction and statement pooling
//! to notice statements that leave session state on the server.
//!
//! It reads statement heads (the first words after whitespace and comments) and skips
//! quoted strings, quoted identifiers, dollar quotes and comments, so `SELECT 'set x'` is not
//! a SET. It is not a parser: state created inside functions the client calls is invisible
//! to it (documented in the README).

// ---- Interim API (replaced by the dialect-aware scanner) ----

/// How the server lexes '...' for this session (its standard_conforming_strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strings {
    #[default]
    Standard,
    Escaped,
    Unknown,
}

impl Strings {
    pub fn from_setting(value: &[u8]) -> Strings {
        match value {
            b"on" => Strings::Standard,
            b"off" => Strings::Escaped,
            _ => Strings::Unknown,
        }
    }
}

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
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Features(u8);

impl Features {
    pub const NONE: Features = Features(0);
    pub fn with(self, f: Feature) -> Features {
        Features(self.0 | 1 << f as u8)
    }
    pub fn without(self, f: Feature) -> Features {
        Features(self.0 & !(1 << f as u8))
    }
    pub fn contains(self, f: Feature) -> bool {
        self.0 & (1 << f as u8) != 0
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub settings: bool,
    pub acquires: Features,
    pub releases: bool,
    pub statements: bool,
    pub copy: bool,
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

/// Classifies every statement in `sql`.
pub fn effects(sql: &[u8], _strings: Strings) -> Effects {
    let old = old_effects(sql);
    let acquires = match old.pins {
        Some("LISTEN") => Features::NONE.with(Feature::Listen),
        Some(SQL_PREPARE) => Features::NONE.with(Feature::SqlPrepare),
        Some("WITH HOLD cursor") => Features::NONE.with(Feature::HoldCursor),
        Some("temporary table") => Features::NONE.with(Feature::TempTable),
        Some("LOAD") => Features::NONE.with(Feature::Load),
        Some(_) => Features::NONE.with(Feature::AdvisoryLock),
        None => Features::NONE,
    };
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let releases = [
        "unlock",
        "unlisten",
        "drop",
        "close",
        "discard",
        "deallocate",
        "commit",
        "rollback",
        "end",
        "abort",
    ]
    .iter()
    .any(|w| text.contains(w));
    Effects {
        settings: old.settings,
        acquires,
        releases,
        statements: old.statements,
        copy: text.contains("copy"),
        unsure: false,
    }
}

/// What running a piece of SQL may do to the session, as far as the text shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OldEffects {
    /// Session-level settings may have changed (SET, RESET, set_config, DISCARD).
    pub settings: bool,
    /// State that cannot follow the client to another server; names the feature.
    pub pins: Option<&'static str>,
    /// A statement starts with PREPARE, EXECUTE, DEALLOCATE or DISCARD (prepared
    /// statements may be involved).
    pub statements: bool,
}

impl OldEffects {
    pub fn merge(&mut self, other: OldEffects) {
        self.settings |= other.settings;
        self.pins = self.pins.or(other.pins);
        self.statements |= other.statements;
    }
}

/// The text of `sql` when it holds exactly one statement (without its closing `;`).
pub fn single_statement(sql: &[u8], _strings: Strings) -> Option<&[u8]> {
    let mut count = 0;
    let mut only = &sql[..0];
    for_each_statement(sql, Strings::Standard, |statement| {
        count += 1;
        only = statement;
    });
    (count == 1).then_some(only)
}

/// Calls `f` with the text of each statement in `sql` (without its `;`), skipping empty
/// ones (only blanks and comments).
pub fn for_each_statement<'a>(sql: &'a [u8], _strings: Strings, mut f: impl FnMut(&'a [u8])) {
    let mut words = Words { sql, pos: 0 };
    let mut start = 0;
    let mut has_text = false;
    loop {
        match words.next() {
            Some(Token::End) => {
                if has_text || !blank(&sql[start..words.pos - 1]) {
                    f(&sql[start..words.pos - 1]);
                }
                start = words.pos;
                has_text = false;
            }
            Some(_) => has_text = true,
            None => {
                if has_text || !blank(&sql[start..]) {
                    f(&sql[start..]);
                }
                return;
            }
        }
    }
}

/// Only whitespace and comments.
fn blank(sql: &[u8]) -> bool {
    let mut rest = Words { sql, pos: 0 };
    while rest.pos < sql.len() {
        match &sql[rest.pos..] {
            [b'-', b'-', ..] => rest.skip_until(b"\n"),
            [b'/', b'*', ..] => rest.skip_block_comment(),
            [c, ..] if c.is_ascii_whitespace() => rest.pos += 1,
            _ => return false,
        }
    }
    true
}

/// The pin reason for SQL-level PREPARE.
pub const SQL_PREPARE: &str = "SQL-level PREPARE";

/// How deep dollar-quoted bodies are read as code; hostile nesting cannot recurse further.
const MAX_NESTING: usize = 4;

/// Classifies every statement in `sql`.
fn old_effects(sql: &[u8]) -> OldEffects {
    effects_at(sql, 0)
}

fn effects_at(sql: &[u8], depth: usize) -> OldEffects {
    let mut out = OldEffects::default();
    let mut words = Words { sql, pos: 0 };
    let mut head = Head::default();
    loop {
        match words.next() {
            Some(Token::Word(w)) => {
                out.merge(function_effects(w));
                head.push(w);
            }
            // A dollar-quoted body is usually code (DO blocks, function bodies).
            Some(Token::Body(body)) if depth < MAX_NESTING => {
                out.merge(effects_at(body, depth + 1))
            }
            Some(Token::Body(_)) => {}
            Some(Token::End) | None => {
                out.merge(head.effects());
                head = Head::default();
                if words.pos >= sql.len() {
                    return out;
                }
            }
        }
    }
}

/// What one statement's classification needs: its first two words, and whether `HOLD` or
/// `TEMP`/`TEMPORARY` appear anywhere in it. Fixed size, so classifying a Query on the relay
/// allocates nothing.
#[derive(Default)]
struct Head<'a> {
    first: [&'a [u8]; 2],
    words: usize,
    hold: bool,
    temp: bool,
}

impl<'a> Head<'a> {
    fn push(&mut self, word: &'a [u8]) {
        if let Some(slot) = self.first.get_mut(self.words) {
            *slot = word;
        }
        self.words += 1;
        self.hold |= word.eq_ignore_ascii_case(b"hold");
        self.temp |= word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary");
    }

    fn is(&self, i: usize, keyword: &str) -> bool {
        i < self.words && self.first[i].eq_ignore_ascii_case(keyword.as_bytes())
    }

    fn effects(&self) -> OldEffects {
        let is = |i, kw| self.is(i, kw);
        let mut out = OldEffects {
            statements: ["prepare", "execute", "deallocate", "discard"]
                .iter()
                .any(|kw| is(0, kw)),
            ..OldEffects::default()
        };
        if is(0, "set") {
            out.settings = !is(1, "local") && !is(1, "transaction") && !is(1, "constraints");
        } else if is(0, "reset") || is(0, "discard") {
            out.settings = true;
        } else if is(0, "listen") {
            out.pins = Some("LISTEN");
        } else if is(0, "prepare") && !is(1, "transaction") {
            out.pins = Some(SQL_PREPARE);
        } else if is(0, "declare") && self.hold {
            out.pins = Some("WITH HOLD cursor");
        } else if (is(0, "create") || is(0, "select")) && self.temp {
            out.pins = Some("temporary table");
        } else if is(0, "load") {
            out.pins = Some("LOAD");
        }
        out
    }
}

/// Functions whose calls change the session wherever they appear in a statement.
fn function_effects(word: &[u8]) -> OldEffects {
    const SESSION_LOCKS: [&str; 4] = [
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    ];
    let mut out = OldEffects::default();
    if word.eq_ignore_ascii_case(b"set_config") {
        out.settings = true;
    } else if SESSION_LOCKS
        .iter()
        .any(|f| word.eq_ignore_ascii_case(f.as_bytes()))
    {
        out.pins = Some("session-level advisory lock");
    }
    out
}

enum Token<'a> {
    Word(&'a [u8]),
    /// The inside of a dollar-quoted string.
    Body(&'a [u8]),
    /// A `;` (end of one statement).
    End,
}

/// Words of SQL text outside quotes and comments; only the first few of each statement
/// matter, but the scan must run to each `;` to find where the next statement starts.
struct Words<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Words<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let sql = self.sql;
        while self.pos < sql.len() {
            let c = sql[self.pos];
            let next = sql.get(self.pos + 1).copied();
            match c {
                b';' => {
                    self.pos += 1;
                    return Some(Token::End);
                }
                b'-' if next == Some(b'-') => self.skip_until(b"\n"),
                b'/' if next == Some(b'*') => self.skip_block_comment(),
                b'\'' => self.skip_quoted(b'\''),
                b'"' => self.skip_quoted(b'"'),
                b'$' if self.dollar_tag().is_some() => {
                    return Some(Token::Body(self.skip_dollar_quote()))
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = self.pos;
                    while self.pos < sql.len()
                        && (sql[self.pos].is_ascii_alphanumeric()
                            || matches!(sql[self.pos], b'_' | b'$'))
                    {
                        self.pos += 1;
                    }
                    return Some(Token::Word(&sql[start..self.pos]));
                }
                _ => self.pos += 1,
            }
        }
        None
    }
}

impl<'a> Words<'a> {
    fn skip_until(&mut self, end: &[u8]) {
        match find(&self.sql[self.pos..], end) {
            Some(i) => self.pos += i + end.len(),
            None => self.pos = self.sql.len(),
        }
    }

    /// Block comments nest in Postgres.
    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.pos < self.sql.len() {
            match &self.sql[self.pos..] {
                [b'/', b'*', ..] => {
                    depth += 1;
                    self.pos += 2;
                }
                [b'*', b'/', ..] => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// A doubled quote inside is an escaped quote; a backslash escape (E'' strings) is
    /// skipped too, which can only make the scan end a string later, never earlier.
    fn skip_quoted(&mut self, quote: u8) {
        self.pos += 1;
        while self.pos < self.sql.len() {
            let c = self.sql[self.pos];
            if c == b'\\' && quote == b'\'' {
                self.pos += 2;
            } else if c == quote {
                self.pos += 1;
                if self.sql.get(self.pos) != Some(&quote) {
                    return;
                }
                self.pos += 1;
            } else {
                self.pos += 1;
            }
        }
    }

    /// The `$tag$` opening a dollar quote at `pos`, if there is one.
    fn dollar_tag(&self) -> Option<usize> {
        let rest = &self.sql[self.pos + 1..];
        let len = rest.iter().position(|c| *c == b'$')?;
        rest[..len]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .then_some(len + 2)
    }

    /// Skips a dollar-quoted string and returns its inside.
    fn skip_dollar_quote(&mut self) -> &'a [u8] {
        let sql = self.sql;
        let Some(tag_len) = self.dollar_tag() else {
            return &[];
        };
        let tag = &sql[self.pos..self.pos + tag_len];
        let start = self.pos + tag_len;
        let (body, end) = match find(&sql[start..], tag) {
            Some(i) => (&sql[start..start + i], start + i + tag_len),
            None => (&sql[start..], sql.len()),
        };
        self.pos = end;
        body
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn single_statement_(s: &[u8]) -> Option<&[u8]> {
        single_statement(s, Strings::Standard)
    }
    fn for_each_statement_<'a>(s: &'a [u8], f: impl FnMut(&'a [u8])) {
        for_each_statement(s, Strings::Standard, f)
    }

    fn fx(sql: &str) -> OldEffects {
        old_effects(sql.as_bytes())
    }

    #[test]
    fn session_settings_are_noticed() {
        assert!(fx("SET search_path = a").settings);
        assert!(fx("select 1; set work_mem='4MB'").settings);
        assert!(fx("  /* c */ -- x\n reset all").settings);
        assert!(fx("select set_config('a.b', '1', false)").settings);
        assert!(fx("SET SESSION AUTHORIZATION bob").settings);
        assert!(fx("set role bob").settings);
        assert!(!fx("SET LOCAL work_mem = '1MB'").settings);
        assert!(!fx("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").settings);
        assert!(!fx("UPDATE t SET x = 1").settings);
        assert!(!fx("select 'set x = 1'; select \"set\" from t").settings);
        assert!(!fx("select 1 offset 2").settings);
        assert!(!fx("select 'set_config(1)'").settings);
        // Dollar-quoted bodies are read as code: DO blocks can change the session.
        assert!(fx("do $$ begin perform set_config('a.b', '1', false); end $$").settings);
        assert!(fx("do $f$ begin perform pg_advisory_lock(1); end $f$")
            .pins
            .is_some());
    }

    #[test]
    fn unmovable_state_pins() {
        assert_eq!(fx("LISTEN chan").pins, Some("LISTEN"));
        assert_eq!(fx("prepare p as select 1").pins, Some("SQL-level PREPARE"));
        assert_eq!(single_statement_(b"select 1"), Some(&b"select 1"[..]));
        assert_eq!(
            single_statement_(b"select ';'; -- done\n ;"),
            Some(&b"select ';'"[..])
        );
        assert_eq!(single_statement_(b"select 1; select 2"), None);
        assert_eq!(single_statement_(b"select 1; 'x'"), None);
        let mut seen = Vec::new();
        for_each_statement_(b"begin; select ';' ; ;/* c */; commit -- end", |s| {
            seen.push(s)
        });
        assert_eq!(seen, [&b"begin"[..], b" select ';' ", b" commit -- end"]);
        assert_eq!(
            fx("declare c cursor with hold for select 1").pins,
            Some("WITH HOLD cursor")
        );
        assert_eq!(
            fx("create temp table t (x int)").pins,
            Some("temporary table")
        );
        assert_eq!(
            fx("CREATE TEMPORARY TABLE t (x int)").pins,
            Some("temporary table")
        );
        assert_eq!(
            fx("select * into temp t from x").pins,
            Some("temporary table")
        );
        assert_eq!(
            fx("select pg_advisory_lock(1)").pins,
            Some("session-level advisory lock")
        );
        assert_eq!(fx("select pg_advisory_xact_lock(1)").pins, None);
        assert_eq!(fx("declare c cursor for select 1").pins, None);
        assert_eq!(fx("create table t (x int)").pins, None);
        assert_eq!(fx("prepare transaction 'x'").pins, None);
        assert_eq!(fx("select 'listen'").pins, None);
    }

    #[test]
    fn hostile_text_never_panics() {
        let nested: String = (0..50_000).map(|i| format!("$t{i}$ ")).collect::<String>()
            + &(0..50_000)
                .rev()
                .map(|i| format!("$t{i}$ "))
                .collect::<String>();
        let _ = fx(&nested);
        for sql in [
            "'", "\"", "$", "$a", "$a$", "/*", "/* /* */", "--", "E'\\", "';", "$$;$",
        ] {
            let _ = fx(sql);
        }
    }
}
