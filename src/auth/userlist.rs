//! PgBouncer `auth_file` (`userlist.txt`) parsing: `"user" "password"` lines.
//!
//! Differences from PgBouncer, all of them refusals where PgBouncer would guess: only
//! whitespace may separate the two fields (PgBouncer skips anything up to the next quote),
//! an empty user name is an error, and parsing reports the bad line instead of silently
//! stopping there. Like PgBouncer, anything after the password field is ignored. Duplicate
//! user names are all returned, in file order; the caller decides which wins.

use std::fmt;

/// A line of the auth file that is neither an entry, a comment nor blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserlistError {
    /// 1-based, as editors count.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for UserlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for UserlistError {}

/// Parses the whole file into (user, password) pairs. The password is returned as written;
/// [`super::Secret::parse`] decides whether it is plain, md5 or SCRAM.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, UserlistError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let entry = parse_line(line).map_err(|reason| UserlistError {
            line: index + 1,
            reason: reason.to_owned(),
        })?;
        entries.extend(entry);
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Result<Option<(String, String)>, &'static str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted(line).ok_or("expected a double-quoted user name")?;
    if user.is_empty() {
        return Err("empty user name");
    }
    let (password, _ignored) =
        quoted(rest.trim_start()).ok_or("expected a double-quoted password after the user name")?;
    Ok(Some((user, password)))
}

/// Reads a `"…"` field at the start of `s` (`""` inside stands for `"`), returning the
/// unescaped value and what follows the closing quote; `None` if `s` does not start with a
/// quote or the quote is never closed.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut value = String::new();
    let mut rest = body;
    loop {
        let end = rest.find('"')?;
        value.push_str(&rest[..end]);
        let after = &rest[end + 1..];
        match after.strip_prefix('"') {
            Some(more) => {
                value.push('"');
                rest = more;
            }
            None => return Some((value, after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let text = "; PgBouncer style comment\n\
                    # shell style comment\n\
                    \n   \t\n\
                    \"alice\" \"md54d45974e13472b5a0be3533de4666414\"\r\n\
                    \t\"bob\"\t\"pw with spaces\" \"extra field\" ignored\n\
                    \"carol\" \"\"\n";
        let expected = entries(&[
            ("alice", "md54d45974e13472b5a0be3533de4666414"),
            ("bob", "pw with spaces"),
            ("carol", ""),
        ]);
        assert_eq!(parse(text).unwrap(), expected);
    }

    #[test]
    fn doubled_quotes_are_escaped_quotes() {
        let text = r#""say ""hi""" "a""b""""#;
        assert_eq!(parse(text).unwrap(), entries(&[(r#"say "hi""#, r#"a"b""#)]));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let cases = [
            ("alice \"pw\"", "line 1: expected a double-quoted user name"),
            ("\n\"alice\"", "line 2: expected a double-quoted password"),
            ("\"alice\" pw", "line 1: expected a double-quoted password"),
            (
                "\"alice\" \"pw",
                "line 1: expected a double-quoted password",
            ),
            (
                "; ok\n\"alice",
                "line 2: expected a double-quoted user name",
            ),
            ("\"\" \"pw\"", "line 1: empty user name"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }
}
