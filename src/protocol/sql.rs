//! A light lexer over the SQL a client sends, used only in transaction and statement pooling
//! to notice statements that leave session state on the server.
//!
//! It reads statement heads (the first words after whitespace and comments) and skips
//! quoted strings, quoted identifiers, dollar quotes and comments, so `SELECT 'set x'` is not
//! a SET. It is not a parser: state created inside functions the client calls is invisible
//! to it (documented in the README).

/// What running a piece of SQL may do to the session, as far as the text shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Session-level settings may have changed (SET, RESET, set_config, DISCARD).
    pub settings: bool,
    /// State that cannot follow the client to another server; names the feature.
    pub pins: Option<&'static str>,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.settings |= other.settings;
        self.pins = self.pins.or(other.pins);
    }
}

/// Classifies every statement in `sql`.
pub fn effects(sql: &[u8]) -> Effects {
    let mut out = Effects::default();
    if contains_ci(sql, b"set_config") {
        out.settings = true;
    }
    if contains_ci(sql, b"pg_advisory_lock") || contains_ci(sql, b"pg_try_advisory_lock") {
        out.pins = Some("session-level advisory lock");
    }
    let mut words = Words { sql, pos: 0 };
    let mut statement: Vec<&[u8]> = Vec::with_capacity(4);
    loop {
        match words.next() {
            Some(Token::Word(w)) => statement.push(w),
            Some(Token::End) | None => {
                out.merge(statement_effects(&statement));
                statement.clear();
                if words.pos >= sql.len() {
                    return out;
                }
            }
        }
    }
}

fn statement_effects(words: &[&[u8]]) -> Effects {
    let is = |i: usize, kw: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()))
    };
    let has = |kw: &str| words.iter().any(|w| w.eq_ignore_ascii_case(kw.as_bytes()));
    let mut out = Effects::default();
    if is(0, "set") {
        out.settings = !is(1, "local") && !is(1, "transaction") && !is(1, "constraints");
    } else if is(0, "reset") || is(0, "discard") {
        out.settings = true;
    } else if is(0, "listen") {
        out.pins = Some("LISTEN");
    } else if is(0, "prepare") && !is(1, "transaction") {
        out.pins = Some("SQL-level PREPARE");
    } else if is(0, "declare") && has("hold") {
        out.pins = Some("WITH HOLD cursor");
    } else if (is(0, "create") || is(0, "select")) && (has("temp") || has("temporary")) {
        out.pins = Some("temporary table");
    } else if is(0, "load") {
        out.pins = Some("LOAD");
    }
    out
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

enum Token<'a> {
    Word(&'a [u8]),
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
                b'$' if self.dollar_tag().is_some() => self.skip_dollar_quote(),
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

impl Words<'_> {
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

    fn skip_dollar_quote(&mut self) {
        let Some(tag_len) = self.dollar_tag() else {
            return;
        };
        let tag = &self.sql[self.pos..self.pos + tag_len];
        self.pos += tag_len;
        match find(&self.sql[self.pos..], tag) {
            Some(i) => self.pos += i + tag_len,
            None => self.pos = self.sql.len(),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(sql: &str) -> Effects {
        effects(sql.as_bytes())
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
        assert!(!fx("select $$ ; set x = 1 $$").settings);
        assert!(!fx("select $f$ ; set x = 1 $f$, 1 offset 2").settings);
    }

    #[test]
    fn unmovable_state_pins() {
        assert_eq!(fx("LISTEN chan").pins, Some("LISTEN"));
        assert_eq!(fx("prepare p as select 1").pins, Some("SQL-level PREPARE"));
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
        for sql in [
            "'", "\"", "$", "$a", "$a$", "/*", "/* /* */", "--", "E'\\", "';", "$$;$",
        ] {
            let _ = fx(sql);
        }
    }
}
