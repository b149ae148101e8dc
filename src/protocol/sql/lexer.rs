//! The SQL lexer: where strings, quoted identifiers, dollar quotes, comments and statements
//! begin and end, as PostgreSQL's `scan.l` reads them under either reading of backslashes.
//!
//! Only token boundaries matter here, so the lexer agrees with scan.l on every text the
//! server accepts and simply runs to the end on text it rejects (an unterminated quote or
//! comment fails the whole Query, so nothing in it runs). Numbers follow scan.l before
//! PostgreSQL 15 (`1E'x'` is a number then an E string): from 15 on such junk after a
//! number is an error, so reading it the old way can never disagree on a text that runs.

/// How the inside of a string constant is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quote {
    /// `'...'` with standard_conforming_strings on, and `N'...'`: only `''` escapes `'`.
    Standard,
    /// `E'...'`, and `'...'` with standard_conforming_strings off: backslash escapes too.
    Escape,
    /// `U&'...'`: delimited like Standard; its Unicode escapes are decoded afterwards.
    Unicode,
    /// `B'...'` and `X'...'`: nothing escapes, and `''` ends one constant and starts another.
    Bits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or keyword.
    Word(&'a [u8]),
    /// A quoted identifier: the text between its quotes (`""` left doubled); `unicode` for
    /// `U&"..."`.
    Ident { inner: &'a [u8], unicode: bool },
    /// A string constant, from its opening quote (after any prefix) to its last closing
    /// quote, continuations on later lines included.
    Str { quote: Quote, raw: &'a [u8] },
    /// The inside of a dollar-quoted string.
    Dollar(&'a [u8]),
    /// A `;`: the end of a statement.
    End,
    /// Anything else: an operator or punctuation byte, a number, a parameter (`$1`).
    Other,
}

/// Tokens of a text, whitespace and comments skipped. Cheap to clone (for look-ahead).
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    /// standard_conforming_strings is off: plain `'...'` strings take backslash escapes.
    escaped: bool,
}

/// Byte classes, looked up once per byte: the scanner reads every Query on the relay.
const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const TAG: u8 = 8;

static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        // scan.l's `space`, with the vertical tab that PostgreSQL 16 added.
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            table[i] = SPACE;
        }
        // scan.l's `ident_start`: bytes >= 0x80 are letters whatever the encoding.
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            table[i] = IDENT_START | IDENT_CONT | TAG;
        }
        // `ident_cont` adds digits and `$`; `dolq_cont` (a dollar-quote tag) digits only.
        if c.is_ascii_digit() {
            table[i] = IDENT_CONT | TAG;
        }
        if c == b'$' {
            table[i] = IDENT_CONT;
        }
        i += 1;
    }
    table
}

fn class(c: u8, of: u8) -> bool {
    CLASSES[c as usize] & of != 0
}

/// scan.l's `space`.
pub fn is_space(c: u8) -> bool {
    class(c, SPACE)
}

/// scan.l's `ident_start`.
pub fn is_ident_start(c: u8) -> bool {
    class(c, IDENT_START)
}

/// scan.l's `ident_cont`.
pub fn is_ident_cont(c: u8) -> bool {
    class(c, IDENT_CONT)
}

/// scan.l's `dolq_cont`: a dollar-quote tag character (no `$`).
fn is_tag_char(c: u8) -> bool {
    class(c, TAG)
}

/// Where the `--` comment at `i` ends: at the next newline (`\n` or `\r`) or the end.
pub fn line_end(sql: &[u8], i: usize) -> usize {
    sql[i..]
        .iter()
        .position(|c| matches!(c, b'\n' | b'\r'))
        .map_or(sql.len(), |n| i + n)
}

/// After a string constant's closing quote (`i` is just past it): the position of the quote
/// that continues the same constant, if one does. scan.l's `quotecontinue`: whitespace with
/// at least one newline, and `--` comments, between the two quotes; a `/* */` comment ends
/// the constant.
pub fn continuation(sql: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *sql.get(i)? {
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            c if is_space(c) => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => i = line_end(sql, i),
            b'\'' if newline => return Some(i),
            _ => return None,
        }
    }
}

/// Length of the run of dollar-quote tag characters at the start of `sql`.
fn tag_run(sql: &[u8]) -> usize {
    sql.iter()
        .position(|c| !is_tag_char(*c))
        .unwrap_or(sql.len())
}

/// The first `tag` (`$name$`) at or after `from`. Every `$` is a place scan.l tries the
/// closing delimiter, and each try reads a maximal run of tag characters, so this is a
/// plain search that never looks at a byte more than twice (hostile tags cost linear time).
fn find_tag(sql: &[u8], mut from: usize, tag: &[u8]) -> Option<usize> {
    loop {
        let at = from + sql[from..].iter().position(|c| *c == b'$')?;
        let run = tag_run(&sql[at + 1..]);
        let end = at + 1 + run;
        if run + 2 == tag.len() && sql.get(end) == Some(&b'$') && &sql[at..=end] == tag {
            return Some(at);
        }
        from = end;
    }
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a [u8], escaped: bool) -> Self {
        Lexer {
            sql,
            pos: 0,
            escaped,
        }
    }

    /// Bytes read so far: just past the last token returned.
    pub fn pos(&self) -> usize {
        self.pos
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.sql.get(self.pos + offset).copied()
    }

    /// The next token, or `None` at the end of the text.
    #[allow(clippy::should_implement_trait)] // an Iterator impl would hide `pos`
    pub fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let c = self.at(0)?;
            match c {
                c if is_space(c) => self.pos += 1,
                b'-' if self.at(1) == Some(b'-') => self.pos = line_end(self.sql, self.pos),
                b'/' if self.at(1) == Some(b'*') => self.block_comment(),
                _ => return Some(self.token(c)),
            }
        }
    }

    fn token(&mut self, c: u8) -> Token<'a> {
        match c {
            b';' => self.one(Token::End),
            b'\'' if self.escaped => self.string(Quote::Escape),
            b'\'' => self.string(Quote::Standard),
            b'"' => self.quoted_ident(false),
            b'$' => self.dollar(),
            b'0'..=b'9' => self.number(),
            b'.' if self.at(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
            c if is_ident_start(c) => self.word(c),
            // One byte at a time, so a `--` or `/*` inside an operator still starts a
            // comment (scan.l cuts operators there).
            _ => self.one(Token::Other),
        }
    }

    fn one(&mut self, token: Token<'a>) -> Token<'a> {
        self.pos += 1;
        token
    }

    /// A token starting with a letter: a prefixed string or identifier, or a word.
    fn word(&mut self, c: u8) -> Token<'a> {
        let quote_next = self.at(1) == Some(b'\'');
        match c.to_ascii_lowercase() {
            b'e' if quote_next => return self.prefixed(1, Quote::Escape),
            b'b' | b'x' if quote_next => return self.prefixed(1, Quote::Bits),
            // N'...' is the keyword NCHAR then a plain string.
            b'n' if quote_next && self.escaped => return self.prefixed(1, Quote::Escape),
            b'n' if quote_next => return self.prefixed(1, Quote::Standard),
            b'u' if self.at(1) == Some(b'&') => match self.at(2) {
                Some(b'\'') => return self.prefixed(2, Quote::Unicode),
                Some(b'"') => {
                    self.pos += 2;
                    return self.quoted_ident(true);
                }
                _ => {}
            },
            _ => {}
        }
        let start = self.pos;
        let rest = &self.sql[start + 1..];
        self.pos += 1 + rest
            .iter()
            .position(|c| !is_ident_cont(*c))
            .unwrap_or(rest.len());
        Token::Word(&self.sql[start..self.pos])
    }

    fn prefixed(&mut self, prefix: usize, quote: Quote) -> Token<'a> {
        self.pos += prefix;
        self.string(quote)
    }

    /// A string constant; `pos` is at its opening quote.
    fn string(&mut self, quote: Quote) -> Token<'a> {
        let start = self.pos;
        self.pos += 1;
        while let Some(c) = self.at(0) {
            match c {
                b'\\' if quote == Quote::Escape => self.pos = (self.pos + 2).min(self.sql.len()),
                b'\'' if quote != Quote::Bits && self.at(1) == Some(b'\'') => self.pos += 2,
                b'\'' => match continuation(self.sql, self.pos + 1) {
                    Some(next) => self.pos = next + 1,
                    None => {
                        self.pos += 1;
                        break;
                    }
                },
                _ => self.pos += 1,
            }
        }
        Token::Str {
            quote,
            raw: &self.sql[start..self.pos],
        }
    }

    /// A quoted identifier; `pos` is at its opening `"`. Only `""` escapes a `"`.
    fn quoted_ident(&mut self, unicode: bool) -> Token<'a> {
        let start = self.pos + 1;
        let mut i = start;
        let end = loop {
            match self.sql[i..].iter().position(|c| *c == b'"') {
                None => break self.sql.len(),
                Some(n) if self.sql.get(i + n + 1) == Some(&b'"') => i += n + 2,
                Some(n) => break i + n,
            }
        };
        self.pos = (end + 1).min(self.sql.len());
        Token::Ident {
            inner: &self.sql[start..end],
            unicode,
        }
    }

    /// At a `$` that starts a token: a parameter, a dollar quote, or a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        if self.at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.skip_digits();
            return Token::Other;
        }
        let tag_end = self.pos + 1 + tag_run(&self.sql[self.pos + 1..]);
        if self.sql.get(tag_end) != Some(&b'$') {
            // scan.l's dolqfailed: the `$` alone; what follows is lexed afresh.
            return self.one(Token::Other);
        }
        let tag = &self.sql[self.pos..=tag_end];
        let body = tag_end + 1;
        let (body_end, end) = match find_tag(self.sql, body, tag) {
            Some(at) => (at, at + tag.len()),
            None => (self.sql.len(), self.sql.len()),
        };
        self.pos = end;
        Token::Dollar(&self.sql[body..body_end])
    }

    /// A number: digits, a fraction, and an exponent only when digits follow its `E` (else
    /// scan.l gives the `E` back, and it may start an E string).
    fn number(&mut self) -> Token<'a> {
        self.skip_digits();
        if self.at(0) == Some(b'.') && self.at(1) != Some(b'.') {
            self.pos += 1;
            self.skip_digits();
        }
        let sign = usize::from(matches!(self.at(1), Some(b'+' | b'-')));
        if matches!(self.at(0), Some(b'e' | b'E'))
            && self.at(1 + sign).is_some_and(|c| c.is_ascii_digit())
        {
            self.pos += 1 + sign;
            self.skip_digits();
        }
        Token::Other
    }

    fn skip_digits(&mut self) {
        let rest = self.sql.get(self.pos..).unwrap_or_default();
        self.pos += rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
    }

    /// A block comment; `pos` is at its `/*`. They nest.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.at(0) {
            match (c, self.at(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', Some(b'/')) => {
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
}
