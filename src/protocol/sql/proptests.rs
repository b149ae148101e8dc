//! Property tests of the scanner: statements built from random tokens, rendered with the
//! escaping the chosen setting needs, must split exactly as generated and show exactly the
//! heads put in; arbitrary bytes never panic and split into ordered pieces of the input.

use proptest::prelude::*;
use proptest::sample::select;

use super::*;

/// Bytes a string constant or quoted identifier may hold, quotes and escapes included.
const QUOTED: &[&str] = &[
    "a",
    "'",
    "\\",
    ";",
    "\"",
    "$",
    "$$",
    "-",
    "--",
    "/*",
    "*/",
    "*",
    " ",
    "\n",
    "é",
    "E",
    "SET x = 1; ",
    "$a$",
    "U&",
    "\r",
];

/// Bytes of a dollar quote's body, which is read as code: no keyword, and letters only
/// between spaces, so no tag other than `$$` can form inside (nesting stays shallow).
const CODE: &[&str] = &[
    ";", " ", "\n", "\\", "\"", "--", "/*", "*/", "*", "1", "$", "$$", " xyz ", "-",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Plain,
    E,
    U,
    B,
    X,
    N,
}

#[derive(Debug, Clone)]
pub(super) enum Tok {
    Ident(&'static str),
    Quoted {
        unicode: bool,
        text: String,
    },
    Number(&'static str),
    Op(&'static str),
    Param,
    /// A string constant in one or more pieces (continued on later lines); `alt` picks
    /// `\'` over `''` where both escape a quote.
    Str {
        kind: Kind,
        pieces: Vec<String>,
        alt: bool,
    },
    Dollar {
        tag: &'static str,
        body: String,
    },
}

fn text(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(alphabet), 0..max).prop_map(|v| v.concat())
}

fn code_body() -> impl Strategy<Value = String> {
    // At most one `'` pair: strings in bodies are code too, and must not nest deeply.
    (text(CODE, 12), prop::option::of(text(&["a", ";", " "], 4)))
        .prop_map(|(a, s)| s.map_or(a.clone(), |s| format!("{a}'{s}'")))
}

fn tok() -> impl Strategy<Value = Tok> {
    let kind = select(vec![
        Kind::Plain,
        Kind::E,
        Kind::U,
        Kind::B,
        Kind::X,
        Kind::N,
    ]);
    prop_oneof![
        select(&["a", "xE", "é", "é$a$", "a$b$", "_x1", "u", "e", "b", "N", "x$"][..])
            .prop_map(Tok::Ident),
        (
            any::<bool>(),
            text(QUOTED, 8).prop_filter("nonempty", |t| !t.is_empty())
        )
            .prop_map(|(unicode, text)| Tok::Quoted { unicode, text }),
        select(&["1", "42", "1.5", ".5", "1e5", "1.5E-3", "0x1F", "1_000"][..])
            .prop_map(Tok::Number),
        select(&["+", "-", "*", "/", "=", "<>", "(", ")", ",", "::", "||", ".", "@", "&"][..])
            .prop_map(Tok::Op),
        Just(Tok::Param),
        (
            kind,
            prop::collection::vec(text(QUOTED, 8), 1..3),
            any::<bool>()
        )
            .prop_map(|(kind, pieces, alt)| Tok::Str { kind, pieces, alt }),
        (select(&["", "a", "tag", "_x1", "é", "A"][..]), code_body())
            .prop_map(|(tag, body)| Tok::Dollar { tag, body }),
    ]
}

/// Whitespace and comments between tokens. Each starts with a blank, so nothing it
/// follows can join it into an operator, and each `--` comment ends its line.
const SEPARATORS: &[&str] = &[
    " ",
    "\t",
    "\n",
    " /* c; ' */ ",
    " /* a /* b; */ c */ ",
    " -- c; '\n",
    "\r\n",
    "  ",
    " -- c; '\r",
    "\x0c",
];

/// Quote-free separators for between two string constants, where a newline would continue
/// the first one.
const SAME_LINE: &[&str] = &[" ", " /* c */\n", "\t"];

pub(super) fn render_str(kind: Kind, pieces: &[String], alt: bool, strings: Strings) -> String {
    let escaped = strings == Strings::Escaped;
    let body = |s: &str| -> String {
        match kind {
            Kind::Plain | Kind::N if escaped => escape(s, alt),
            Kind::E => escape(s, alt),
            Kind::Plain | Kind::N => s.replace('\'', "''"),
            Kind::U => s.replace('\\', "\\\\").replace('\'', "''"),
            Kind::B | Kind::X => s.replace('\'', ""),
        }
    };
    let prefix = match kind {
        Kind::Plain => "",
        Kind::E => "e",
        Kind::U => "U&",
        Kind::B => "B",
        Kind::X => "x",
        Kind::N => "N",
    };
    let quoted: Vec<String> = pieces.iter().map(|p| format!("'{}'", body(p))).collect();
    let joiner = if alt { "\n" } else { " -- c\n  " };
    format!("{prefix}{}", quoted.join(joiner))
}

fn escape(s: &str, alt: bool) -> String {
    let quote = if alt { "\\'" } else { "''" };
    s.replace('\\', "\\\\").replace('\'', quote)
}

pub(super) fn render_tok(tok: &Tok, strings: Strings) -> String {
    match tok {
        Tok::Ident(s) | Tok::Number(s) | Tok::Op(s) => s.to_string(),
        Tok::Quoted { unicode, text } => {
            let prefix = if *unicode { "U&" } else { "" };
            let text = if *unicode {
                text.replace('\\', "\\\\")
            } else {
                text.clone()
            };
            format!("{prefix}\"{}\"", text.replace('"', "\"\""))
        }
        Tok::Param => "$1".into(),
        Tok::Str { kind, pieces, alt } => render_str(*kind, pieces, *alt, strings),
        Tok::Dollar { tag, body } => {
            let mut tag = tag.to_string();
            // The body must not hold the closing delimiter (nor end in a prefix of it).
            while format!("{body}${tag}$").find(&format!("${tag}$")) != Some(body.len()) {
                tag.push('q');
            }
            format!("${tag}${body}${tag}$")
        }
    }
}

/// Statement heads with what they do; `tail` when random tokens may follow.
struct Template {
    words: &'static [&'static str],
    effects: fn() -> Effects,
    tail: bool,
}

fn with(f: Feature) -> Effects {
    Effects {
        acquires: Features::NONE.with(f),
        ..Effects::default()
    }
}

const TEMPLATES: &[Template] = &[
    Template {
        words: &["SELECT"],
        effects: Effects::default,
        tail: true,
    },
    Template {
        words: &["set", "foo.bar", "="],
        effects: || Effects {
            settings: true,
            ..Effects::default()
        },
        tail: true,
    },
    Template {
        words: &["SET", "Local", "foo.bar", "="],
        effects: Effects::default,
        tail: true,
    },
    Template {
        words: &["RESET", "foo.bar"],
        effects: || Effects {
            settings: true,
            ..Effects::default()
        },
        tail: false,
    },
    Template {
        words: &["Listen", "ch"],
        effects: || with(Feature::Listen),
        tail: true,
    },
    Template {
        words: &["SELECT", "pg_advisory_lock", "(", "1", ")", ","],
        effects: || with(Feature::AdvisoryLock),
        tail: true,
    },
    Template {
        words: &["PREPARE", "p", "AS", "SELECT"],
        effects: || Effects {
            statements: true,
            ..with(Feature::SqlPrepare)
        },
        tail: true,
    },
    Template {
        words: &["DECLARE", "c", "CURSOR", "WITH", "HOLD", "FOR", "SELECT"],
        effects: || with(Feature::HoldCursor),
        tail: true,
    },
    Template {
        words: &["create", "TEMP", "TABLE", "t", "(", "x", "int", ")"],
        effects: || with(Feature::TempTable),
        tail: false,
    },
    Template {
        words: &["LOAD"],
        effects: || with(Feature::Load),
        tail: true,
    },
    Template {
        words: &["COPY", "t", "FROM", "STDIN"],
        effects: || Effects {
            copy: true,
            ..Effects::default()
        },
        tail: true,
    },
    Template {
        words: &["UNLISTEN", "*"],
        effects: || Effects {
            releases: true,
            ..Effects::default()
        },
        tail: true,
    },
    Template {
        words: &["DISCARD", "ALL"],
        effects: || Effects {
            settings: true,
            releases: true,
            statements: true,
            ..Effects::default()
        },
        tail: false,
    },
    Template {
        words: &[],
        effects: Effects::default,
        tail: false,
    },
];

/// One generated statement: a template, its tail and separators; or a `DO` whose body is
/// in a string of some kind (or a dollar quote) escaped one way or the other.
#[derive(Debug, Clone)]
struct Stmt {
    template: usize,
    tail: Vec<Tok>,
    seps: Vec<&'static str>,
    body: Option<(Kind, bool, bool)>,
}

fn stmt() -> impl Strategy<Value = Stmt> {
    let kinds = select(vec![Kind::Plain, Kind::E, Kind::U, Kind::N]);
    let body = prop::option::weighted(0.15, (kinds, any::<bool>(), any::<bool>()));
    (
        0..TEMPLATES.len(),
        prop::collection::vec(tok(), 0..6),
        prop::collection::vec(select(SEPARATORS), 16),
        body,
    )
        .prop_map(|(template, tail, seps, body)| Stmt {
            template,
            tail,
            seps,
            body,
        })
}

/// `DO` bodies: they are read as code, so what they do is found (the `end` may release).
const DO_BODY: &str = "begin perform set_config('a.b', 'c', false); end";

impl Stmt {
    /// The statement's text (without `;`) under `strings`, and what it does.
    fn render(&self, strings: Strings) -> (String, Effects) {
        let mut seps = self.seps.iter().cycle();
        let mut out = seps.next().unwrap().to_string();
        if let Some((kind, dollar, alt)) = self.body {
            let body = if dollar {
                render_tok(
                    &Tok::Dollar {
                        tag: "b",
                        body: DO_BODY.into(),
                    },
                    strings,
                )
            } else {
                render_str(kind, &[DO_BODY.to_string()], alt, strings)
            };
            out.push_str(&format!(
                "DO{}{body}{}",
                seps.next().unwrap(),
                seps.next().unwrap()
            ));
            let does = Effects {
                settings: true,
                releases: true,
                ..Effects::default()
            };
            return (out, does);
        }
        let template = &TEMPLATES[self.template];
        for word in template.words {
            out.push_str(word);
            out.push_str(seps.next().unwrap());
        }
        let tail = if template.tail { &self.tail[..] } else { &[] };
        for (i, tok) in tail.iter().enumerate() {
            out.push_str(&render_tok(tok, strings));
            let strings_meet =
                matches!(tok, Tok::Str { .. }) && matches!(tail.get(i + 1), Some(Tok::Str { .. }));
            // Two constants in a row: keep the second from continuing the first.
            let sep = seps.next().unwrap();
            out.push_str(if strings_meet {
                SAME_LINE[i % SAME_LINE.len()]
            } else {
                sep
            });
        }
        (out, (template.effects)())
    }
}

fn check_generated(statements: &[Stmt], strings: Strings) -> Result<(), TestCaseError> {
    let rendered: Vec<(String, Effects)> = statements.iter().map(|s| s.render(strings)).collect();
    let sql = rendered
        .iter()
        .map(|(s, _)| s.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut expected = Effects::default();
    for (_, e) in &rendered {
        expected.merge(*e);
    }
    let wanted: Vec<&str> = rendered
        .iter()
        .filter(|(s, _)| !is_comments(s))
        .map(|(s, _)| s.as_str())
        .collect();
    let mut got = Vec::new();
    for_each_statement(sql.as_bytes(), strings, |s| {
        got.push(std::str::from_utf8(s).unwrap())
    });
    prop_assert_eq!(&got, &wanted, "split of {:?}", sql);
    prop_assert_eq!(
        effects(sql.as_bytes(), strings),
        expected,
        "effects of {:?}",
        sql
    );
    let unknown = effects(sql.as_bytes(), Strings::Unknown);
    prop_assert!(unknown.unsure || unknown == expected, "unknown: {:?}", sql);
    Ok(())
}

/// Only separators: what the generator writes for an empty statement.
fn is_comments(s: &str) -> bool {
    let mut lexer = lexer::Lexer::new(s.as_bytes(), false);
    lexer.next().is_none()
}

/// Checks the pieces `for_each_statement` gives are in order, apart, and inside `sql`.
fn check_pieces(sql: &[u8], strings: Strings) -> Result<usize, TestCaseError> {
    let base = sql.as_ptr() as usize;
    let mut end = 0;
    let mut count = 0;
    let mut result = Ok(());
    for_each_statement(sql, strings, |piece| {
        let start = piece.as_ptr() as usize - base;
        if start < end || start + piece.len() > sql.len() || piece.is_empty() {
            result = Err(TestCaseError::fail(format!("piece at {start} of {sql:?}")));
        }
        end = start + piece.len();
        count += 1;
    });
    result.map(|()| count)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_statements_split_and_classify_exactly(
        statements in prop::collection::vec(stmt(), 1..6),
        escaped in any::<bool>(),
    ) {
        let strings = if escaped { Strings::Escaped } else { Strings::Standard };
        check_generated(&statements, strings)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_into_pieces_of_the_input(
        sql in prop::collection::vec(
            prop_oneof![any::<u8>(), select(&b"'\"$;-/*\\\n\rEeUu&bBxXnN1 a_\xc3\xa9"[..])],
            0..300,
        )
    ) {
        for strings in [Strings::Standard, Strings::Escaped, Strings::Unknown] {
            let count = check_pieces(&sql, strings)?;
            prop_assert_eq!(single_statement(&sql, strings).is_some(), count == 1);
        }
        let standard = effects(&sql, Strings::Standard);
        let escaped = effects(&sql, Strings::Escaped);
        let unknown = effects(&sql, Strings::Unknown);
        let mut both = standard;
        both.merge(escaped);
        prop_assert_eq!(unknown.acquires.union(both.acquires), unknown.acquires);
        prop_assert!(unknown.settings >= both.settings && unknown.copy >= both.copy);
        if !sql.contains(&b'\\') {
            prop_assert_eq!(standard, escaped);
            prop_assert_eq!(unknown, standard);
        }
    }
}
