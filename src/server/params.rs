//! Session parameters: what a server has in effect, and the SQL that gives it a client's.
//!
//! Servers are opened with only `user` and `database`, so a reset (`DISCARD ALL`) brings any
//! server back to the same baseline; each client's startup parameters are then applied with
//! one `set_config` query, and only those that differ from what the server already has.

use std::collections::BTreeMap;

use crate::protocol::cstrings;

/// Startup keys that are not session parameters.
const NOT_PARAMETERS: [&str; 4] = ["user", "database", "options", "replication"];

/// Parameter state of one server connection.
#[derive(Debug, Default, Clone)]
pub struct ServerParams {
    /// Latest ParameterStatus value per (canonical) name.
    reported: BTreeMap<String, String>,
    /// What `reported` was right after login: the state a reset returns to.
    baseline: BTreeMap<String, String>,
    /// Values pgwarden set, by lowercase name (covers parameters the server never reports).
    applied: BTreeMap<String, String>,
}

impl ServerParams {
    /// Records a ParameterStatus body (name and value, NUL-terminated).
    pub fn record_status(&mut self, body: &[u8]) {
        let mut fields = cstrings(body);
        if let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            self.reported.insert(name.to_owned(), value.to_owned());
        }
    }

    pub fn finish_login(&mut self) {
        self.baseline = self.reported.clone();
    }

    pub fn after_reset(&mut self) {
        self.reported = self.baseline.clone();
        self.applied.clear();
    }

    pub fn reported(&self) -> &BTreeMap<String, String> {
        &self.reported
    }

    /// Without allocating: this runs for every setting of every attach.
    fn current(&self, name: &str) -> Option<&str> {
        lookup(&self.applied, name).or_else(|| lookup(&self.reported, name))
    }

    /// The query that makes this server's session match `wanted`, or `None` if it already
    /// does: `RESET` for what an earlier client set and this one does not want, then one
    /// `set_config` call per value that differs.
    pub fn sync_query(&self, wanted: &[(String, String)]) -> Option<String> {
        let mut sql = String::new();
        for name in self.applied.keys() {
            if !wanted.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                sql.push_str(&format!("RESET {};", quote_ident(name)));
            }
        }
        let calls: Vec<String> = wanted
            .iter()
            .filter(|(name, value)| self.current(name) != Some(value.as_str()))
            .map(|(name, value)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_literal(name),
                    quote_literal(value)
                )
            })
            .collect();
        if !calls.is_empty() {
            sql.push_str(&format!("SELECT {}", calls.join(", ")));
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records that exactly `wanted` is in effect (after `sync_query` succeeded, or after
    /// reading the session's settings back from the server).
    pub fn mark_applied(&mut self, wanted: &[(String, String)]) {
        self.applied = wanted
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
    }
}

/// A value by name, in any case.
fn lookup<'m>(map: &'m BTreeMap<String, String>, name: &str) -> Option<&'m str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Quotes a parameter name as an identifier (names like `a.b` are quoted as a whole).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string as an SQL literal that means the same whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The session parameters a client's startup packet asks for, `options` (`-c a=b`,
/// `--a=b`) included, in the order given; later values of the same name win.
pub fn client_parameters(startup: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |name: String, value: String| {
        out.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        out.push((name, value));
    };
    for (name, value) in startup {
        if name == "options" {
            for (n, v) in parse_options(value)? {
                push(n, v);
            }
        } else if !NOT_PARAMETERS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
            push(name.clone(), value.clone());
        }
    }
    Ok(out)
}

/// Parses the `options` startup parameter as Postgres does: whitespace-separated words
/// (a backslash escapes the next character), each `-c name=value`, `-cname=value` or `--name=value`.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_words(options);
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next()
                .ok_or_else(|| "option \"-c\" requires a value".to_owned())?
        } else if let Some(rest) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(format!(
                "unsupported startup option \"{word}\" (only -c name=value is accepted)"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("-c {setting} requires a value"))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn options_are_parsed_like_postgres() {
        let parsed =
            parse_options(r"-c statement_timeout=5s --search-path=a,\ b -cwork_mem=4MB").unwrap();
        assert_eq!(
            parsed,
            pairs(&[
                ("statement_timeout", "5s"),
                ("search_path", "a, b"),
                ("work_mem", "4MB")
            ])
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }

    #[test]
    fn only_differing_parameters_are_set() {
        let mut p = ServerParams::default();
        p.record_status(b"TimeZone\0UTC\0");
        p.record_status(b"application_name\0\0");
        let wanted = pairs(&[
            ("timezone", "UTC"),
            ("application_name", "app"),
            ("search_path", "x"),
        ]);
        assert_eq!(
            p.sync_query(&wanted).unwrap(),
            "SELECT pg_catalog.set_config('application_name', 'app', false), \
             pg_catalog.set_config('search_path', 'x', false)"
        );
        p.mark_applied(&wanted);
        assert_eq!(p.sync_query(&wanted), None);
        // Another client wanting less gets the rest reset.
        let fewer = pairs(&[("application_name", "app")]);
        assert_eq!(
            p.sync_query(&fewer).unwrap(),
            "RESET \"search_path\";RESET \"timezone\";"
        );
        p.after_reset();
        assert!(p.sync_query(&wanted).is_some());
    }

    #[test]
    fn literals_are_quoted_safely() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b"), r"E'a\\b'");
    }

    #[test]
    fn startup_keys_that_are_not_parameters_are_skipped() {
        let startup = pairs(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "x"),
            ("options", "-c geqo=off"),
            ("_pq_.ext", "1"),
        ]);
        assert_eq!(
            client_parameters(&startup).unwrap(),
            pairs(&[("application_name", "x"), ("geqo", "off")])
        );
    }
}
