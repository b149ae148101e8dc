//! The console's commands, parsed from the text of a simple Query (case-insensitive, an
//! optional trailing `;`, names bare or in double quotes, SET values bare or in single
//! quotes). Pure: no I/O, no state.

use thiserror::Error;

/// What SHOW shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Clients,
    Servers,
    Databases,
    Users,
    Config,
    Lists,
    Version,
    Limits,
    Alerts,
}

impl Show {
    const ALL: [(&'static str, Show); 13] = [
        ("POOLS", Show::Pools),
        ("STATS", Show::Stats),
        ("STATS_TOTALS", Show::StatsTotals),
        ("STATS_AVERAGES", Show::StatsAverages),
        ("CLIENTS", Show::Clients),
        ("SERVERS", Show::Servers),
        ("DATABASES", Show::Databases),
        ("USERS", Show::Users),
        ("CONFIG", Show::Config),
        ("LISTS", Show::Lists),
        ("VERSION", Show::Version),
        ("LIMITS", Show::Limits),
        ("ALERTS", Show::Alerts),
    ];

    fn named(word: &str) -> Option<Show> {
        Show::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|(_, show)| *show)
    }

    fn names() -> String {
        let names: Vec<&str> = Show::ALL.iter().map(|(name, _)| *name).collect();
        names.join(", ")
    }
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// A database name, or every database.
    Pause(Option<String>),
    Resume(Option<String>),
    Disable(String),
    Enable(String),
    Reconnect(Option<String>),
    Kill(Option<String>),
    KillClient(u64),
    Reload,
    Shutdown,
    Set {
        key: String,
        value: String,
    },
}

impl Command {
    /// Whether it changes anything (admin users only), rather than only reading.
    pub fn changes(&self) -> bool {
        !matches!(self, Command::Show(_))
    }

    /// The CommandComplete tag PgBouncer sends for it.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Disable(_) => "DISABLE",
            Command::Enable(_) => "ENABLE",
            Command::Reconnect(_) => "RECONNECT",
            Command::Kill(_) => "KILL",
            Command::KillClient(_) => "KILL_CLIENT",
            Command::Reload => "RELOAD",
            Command::Shutdown => "SHUTDOWN",
            Command::Set { .. } => "SET",
        }
    }
}

/// Why a text is no command (SQLSTATE 42601).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("unknown command \"{0}\"; the console knows SHOW, PAUSE [db], RESUME [db], DISABLE db, ENABLE db, RECONNECT [db], KILL [db], KILL_CLIENT id, RELOAD, SET key = value, SHUTDOWN")]
    Unknown(String),
    #[error("SHOW {0}: unknown; SHOW knows {names}", names = Show::names())]
    UnknownShow(String),
    #[error("{0} needs {1}")]
    Missing(&'static str, &'static str),
    #[error("{0}: unexpected \"{1}\"")]
    Extra(&'static str, String),
    #[error("KILL_CLIENT: \"{0}\" is not a client id (see SHOW CLIENTS)")]
    BadId(String),
    #[error("unterminated quoted text")]
    Unterminated,
}

/// One piece of a command's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word (compared case-insensitively) or a double-quoted name (as written).
    Word(String),
    /// A single-quoted string.
    Text(String),
    Equals,
}

fn tokens(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ';' => {
                chars.next();
            }
            '=' => {
                chars.next();
                out.push(Token::Equals);
            }
            '"' | '\'' => {
                chars.next();
                let quoted = quoted(&mut chars, c)?;
                out.push(match c {
                    '"' => Token::Word(quoted),
                    _ => Token::Text(quoted),
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '=' | '"' | '\'') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// The rest of a text quoted with `quote`, a doubled quote standing for itself.
fn quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Result<String, ParseError> {
    let mut text = String::new();
    loop {
        match chars.next() {
            None => return Err(ParseError::Unterminated),
            Some(c) if c == quote && chars.peek() == Some(&quote) => {
                chars.next();
                text.push(quote);
            }
            Some(c) if c == quote => return Ok(text),
            Some(c) => text.push(c),
        }
    }
}

/// The statements of one Query: split at semicolons outside quotes.
pub fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in text.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (';', None) => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.retain(|s| !s.trim().is_empty());
    if out.is_empty() {
        out.push("");
    }
    out
}

/// Parses one command; `Ok(None)` for an empty text.
pub fn parse(text: &str) -> Result<Option<Command>, ParseError> {
    let tokens = tokens(text)?;
    let mut words = tokens.iter();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let verb = match first {
        Token::Word(w) => w.to_ascii_uppercase(),
        Token::Text(t) => return Err(ParseError::Unknown(t.clone())),
        Token::Equals => return Err(ParseError::Unknown("=".to_owned())),
    };
    let rest: Vec<&Token> = words.collect();
    let command = match verb.as_str() {
        "SHOW" => {
            let what = one_name("SHOW", &rest, "what to show")?;
            Command::Show(Show::named(&what).ok_or(ParseError::UnknownShow(what))?)
        }
        "PAUSE" => Command::Pause(optional_name("PAUSE", &rest)?),
        "RESUME" => Command::Resume(optional_name("RESUME", &rest)?),
        "DISABLE" => Command::Disable(one_name("DISABLE", &rest, "a database name")?),
        "ENABLE" => Command::Enable(one_name("ENABLE", &rest, "a database name")?),
        "RECONNECT" => Command::Reconnect(optional_name("RECONNECT", &rest)?),
        "KILL" => Command::Kill(optional_name("KILL", &rest)?),
        "KILL_CLIENT" => {
            let id = one_name("KILL_CLIENT", &rest, "a client id")?;
            Command::KillClient(id.parse().map_err(|_| ParseError::BadId(id))?)
        }
        "RELOAD" => none_after("RELOAD", &rest, Command::Reload)?,
        "SHUTDOWN" => none_after("SHUTDOWN", &rest, Command::Shutdown)?,
        "SET" => set(&rest)?,
        _ => return Err(ParseError::Unknown(verb)),
    };
    Ok(Some(command))
}

fn word(token: &Token) -> String {
    match token {
        Token::Word(w) | Token::Text(w) => w.clone(),
        Token::Equals => "=".to_owned(),
    }
}

fn optional_name(verb: &'static str, rest: &[&Token]) -> Result<Option<String>, ParseError> {
    match rest {
        [] => Ok(None),
        [Token::Word(name)] => Ok(Some(name.clone())),
        [other] => Err(ParseError::Extra(verb, word(other))),
        [_, extra, ..] => Err(ParseError::Extra(verb, word(extra))),
    }
}

fn one_name(verb: &'static str, rest: &[&Token], what: &'static str) -> Result<String, ParseError> {
    match optional_name(verb, rest)? {
        Some(name) => Ok(name),
        None => Err(ParseError::Missing(verb, what)),
    }
}

fn none_after(verb: &'static str, rest: &[&Token], cmd: Command) -> Result<Command, ParseError> {
    match rest.first() {
        None => Ok(cmd),
        Some(extra) => Err(ParseError::Extra(verb, word(extra))),
    }
}

/// `SET key = value` (or `SET key TO value`).
fn set(rest: &[&Token]) -> Result<Command, ParseError> {
    let (key, value) = match rest {
        [Token::Word(key), Token::Equals, value] => (key, value),
        [Token::Word(key), Token::Word(to), value] if to.eq_ignore_ascii_case("to") => (key, value),
        [_, _, _, extra, ..] => return Err(ParseError::Extra("SET", word(extra))),
        _ => return Err(ParseError::Missing("SET", "key = value")),
    };
    if **value == Token::Equals {
        return Err(ParseError::Missing("SET", "a value"));
    }
    Ok(Command::Set {
        key: key.to_ascii_lowercase(),
        value: word(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Command {
        parse(text).unwrap().unwrap()
    }

    #[test]
    fn show_takes_any_case_and_a_trailing_semicolon() {
        assert_eq!(ok("show pools;"), Command::Show(Show::Pools));
        assert_eq!(
            ok("  SHOW Stats_Totals  "),
            Command::Show(Show::StatsTotals)
        );
        assert_eq!(parse("  ;  "), Ok(None));
        assert!(matches!(parse("SHOW"), Err(ParseError::Missing("SHOW", _))));
        let err = parse("SHOW FDS").unwrap_err();
        assert!(
            err.to_string()
                .contains("SHOW FDS: unknown; SHOW knows POOLS"),
            "{err}"
        );
    }

    #[test]
    fn database_names_are_optional_or_required_as_each_command_says() {
        assert_eq!(ok("PAUSE"), Command::Pause(None));
        assert_eq!(ok("pause appdb"), Command::Pause(Some("appdb".into())));
        assert_eq!(
            ok("RESUME \"My DB\""),
            Command::Resume(Some("My DB".into()))
        );
        assert_eq!(ok("KILL"), Command::Kill(None));
        assert_eq!(
            ok("RECONNECT appdb;"),
            Command::Reconnect(Some("appdb".into()))
        );
        assert_eq!(ok("DISABLE appdb"), Command::Disable("appdb".into()));
        assert_eq!(
            parse("ENABLE"),
            Err(ParseError::Missing("ENABLE", "a database name"))
        );
        assert_eq!(
            parse("PAUSE a b"),
            Err(ParseError::Extra("PAUSE", "b".into()))
        );
        assert_eq!(
            parse("RELOAD now"),
            Err(ParseError::Extra("RELOAD", "now".into()))
        );
        assert_eq!(ok("shutdown"), Command::Shutdown);
    }

    #[test]
    fn a_query_splits_at_semicolons_outside_quotes() {
        assert_eq!(
            split("SHOW POOLS; SHOW STATS;"),
            ["SHOW POOLS", " SHOW STATS"]
        );
        assert_eq!(split("SET a = 'x;y'"), ["SET a = 'x;y'"]);
        assert_eq!(split(" ; "), [""]);
    }

    #[test]
    fn kill_client_takes_a_numeric_id() {
        assert_eq!(ok("KILL_CLIENT 42"), Command::KillClient(42));
        assert_eq!(parse("KILL_CLIENT x"), Err(ParseError::BadId("x".into())));
    }

    #[test]
    fn set_takes_equals_or_to_and_quoted_values() {
        let set = |k: &str, v: &str| Command::Set {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(
            ok("SET query_wait_timeout = '5s'"),
            set("query_wait_timeout", "5s")
        );
        assert_eq!(ok("set Pool_Size=7"), set("pool_size", "7"));
        assert_eq!(
            ok("SET server_reset_query TO 'it''s'"),
            set("server_reset_query", "it's")
        );
        assert_eq!(
            parse("SET pool_size"),
            Err(ParseError::Missing("SET", "key = value"))
        );
        assert_eq!(parse("SET a = 'x"), Err(ParseError::Unterminated));
        assert_eq!(
            parse("SET a = 1 2"),
            Err(ParseError::Extra("SET", "2".into()))
        );
    }

    #[test]
    fn unknown_commands_list_what_there_is() {
        let err = parse("SELECT 1").unwrap_err();
        assert_eq!(err, ParseError::Unknown("SELECT".into()));
        assert!(err.to_string().contains("KILL_CLIENT id"));
        assert!(!ok("SHOW POOLS").changes() && ok("PAUSE").changes());
        assert_eq!(ok("KILL_CLIENT 1").tag(), "KILL_CLIENT");
    }
}
