//! The scanner against PostgreSQL itself: generated texts that the server accepts, run
//! through `psql` as one simple Query, must split where the server's own lexer does.
//! Ignored by default (it needs a server); run it with a libpq connection string:
//!
//! ```text
//! PGWARDEN_SQL_ORACLE="host=/tmp port=5432 user=postgres" \
//!     cargo test --lib protocol::sql::oracle -- --ignored
//! ```

use std::process::Command;

use proptest::prelude::*;
use proptest::sample::select;

use super::proptests::{render_str, render_tok, Kind, Tok};
use super::*;

/// String contents the server accepts in every kind of constant: no `\` before a digit
/// (octal escapes could spell invalid UTF-8) or `u`/`U` (Unicode escapes).
const VALID: &[&str] = &[
    "a", "'", "'", "\\", ";", "\"", "$", "$$", "--", "/*", "*/", " ", "\n", "é", "E", "SET x;",
];

fn item(strings: Strings) -> impl Strategy<Value = String> {
    let kinds = if strings == Strings::Escaped {
        vec![Kind::Plain, Kind::E, Kind::E, Kind::N, Kind::B, Kind::X]
    } else {
        vec![
            Kind::Plain,
            Kind::E,
            Kind::E,
            Kind::N,
            Kind::B,
            Kind::X,
            Kind::U,
        ]
    };
    let piece = prop::collection::vec(select(VALID), 0..6).prop_map(|v| v.concat());
    let constant = (
        select(kinds),
        prop::collection::vec(piece, 1..3),
        any::<bool>(),
    )
        .prop_map(move |(kind, pieces, alt)| {
            let pieces: Vec<String> = match kind {
                Kind::B => pieces.iter().map(|p| "01".repeat(p.len() % 4)).collect(),
                Kind::X => pieces.iter().map(|p| "1F".repeat(p.len() % 4)).collect(),
                // U& takes `\\` only: the renderer doubles each backslash.
                _ => pieces,
            };
            render_str(kind, &pieces, alt, strings)
        });
    // Dollar bodies are read as code: no keywords, no quotes (which would nest).
    const BODY: &[&str] = &[";", " ", "\n", "\"", "--", "/*", "*/", "$", "a ", "\\"];
    let dollar = (
        select(&["", "a", "é", "_t1"][..]),
        prop::collection::vec(select(BODY), 0..8),
    )
        .prop_map(move |(tag, body)| {
            render_tok(
                &Tok::Dollar {
                    tag,
                    body: body.concat(),
                },
                strings,
            )
        });
    let alias = (any::<bool>(), prop::collection::vec(select(VALID), 1..5)).prop_map(
        move |(unicode, text)| {
            let text = text.concat().replace(['\\', '\n'], "x");
            render_tok(&Tok::Quoted { unicode, text }, strings)
        },
    );
    let number = select(&["1", "1.5", ".5", "1e5", "1.5E-3"][..]).prop_map(String::from);
    (
        prop_oneof![3 => constant, 1 => dollar, 1 => number],
        prop::option::of(alias),
    )
        .prop_map(|(e, a)| match a {
            Some(a) => format!("{e} AS {a}"),
            None => e,
        })
}

/// Separators the server accepts, comments included.
const GAPS: &[&str] = &[
    " ",
    "\n",
    " /* ' ; */ ",
    " /* a /* ; */ b */ ",
    " -- ' ;\n",
    " -- ;\r",
];

/// `SELECT 'm<i>', <items>` statements (or only a comment), joined with `;`.
fn text(strings: Strings) -> impl Strategy<Value = (String, usize)> {
    let statement = prop_oneof![
        4 => prop::collection::vec((item(strings), select(GAPS)), 0..4),
        1 => Just(Vec::new()),
    ];
    prop::collection::vec((statement, any::<bool>(), select(GAPS)), 1..5).prop_map(|stmts| {
        let mut marks = 0;
        let rendered: Vec<String> = stmts
            .into_iter()
            .map(|(items, comment_only, gap)| {
                if comment_only && items.is_empty() {
                    return format!("{gap}/* empty */");
                }
                let mut s = format!("{gap}SELECT 'm{marks}'");
                marks += 1;
                // The commas keep two constants from meeting (a newline would join them).
                for (item, gap) in items {
                    s.push_str(&format!(",{gap}{item}"));
                }
                s + gap
            })
            .collect();
        (rendered.join(";"), marks)
    })
}

/// The first column of each row the server returns for `sql` run as one Query.
fn run(conninfo: &str, sql: &str, strings: Strings) -> Result<Vec<String>, String> {
    let scs = if strings == Strings::Escaped {
        "off"
    } else {
        "on"
    };
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-F",
            "\x1f",
            "--record-separator-zero",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
        .env("PGOPTIONS", format!("-c standard_conforming_strings={scs}"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let records = out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty());
    Ok(records
        .map(|r| r.split(|b| *b == 0x1f).next().unwrap_or_default())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    #[ignore = "needs a PostgreSQL server: set PGWARDEN_SQL_ORACLE"]
    fn splits_where_postgresql_does(
        (strings, (sql, marks)) in select(vec![Strings::Standard, Strings::Escaped])
            .prop_flat_map(|strings| (Just(strings), text(strings)))
    ) {
        let Ok(conninfo) = std::env::var("PGWARDEN_SQL_ORACLE") else {
            return Ok(());
        };
        let rows = run(&conninfo, &sql, strings).map_err(|e| TestCaseError::fail(format!("{sql:?}: {e}")))?;
        let expected: Vec<String> = (0..marks).map(|i| format!("m{i}")).collect();
        prop_assert_eq!(&rows, &expected, "server rows for {:?}", sql);
        let mut pieces = 0;
        for_each_statement(sql.as_bytes(), strings, |_| pieces += 1);
        prop_assert_eq!(pieces, marks, "scanner split of {:?}", sql);
        prop_assert_eq!(effects(sql.as_bytes(), strings), Effects::default(), "{:?}", sql);
    }
}
