//! Durations as users write them, in flags and in the file: plain seconds (`30`) or a number
//! with a unit (`500ms`, `2s`, `5m`, `1h`, `1h 30m`).

use std::time::Duration;

/// What a duration must look like; every duration error ends with it.
pub const HINT: &str = "use seconds (30) or a number with a unit (500ms, 2s, 5m, 1h)";

/// A duration that does not parse, with the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?} ({cause}); {HINT}")]
pub struct DurationError {
    pub text: String,
    pub cause: String,
}

/// Parses `text` as whole seconds when it is only digits, otherwise as a humantime duration.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let error = |cause: String| DurationError {
        text: text.to_owned(),
        cause,
    };
    if trimmed.is_empty() {
        return Err(error("empty".to_owned()));
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| error("too large".to_owned()));
    }
    humantime::parse_duration(trimmed).map_err(|e| error(e.to_string()))
}

/// Formats a duration the way users write it (`10m`, `1h 30m`, `500ms`), for help and logs.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 30 "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn garbage_is_an_error_that_quotes_the_text() {
        for bad in [
            "",
            "soon",
            "5x",
            "-5",
            "1.5",
            "s",
            "99999999999999999999999",
        ] {
            let err = parse(bad).expect_err(bad);
            let shown = err.to_string();
            assert!(shown.contains(&format!("{bad:?}")), "{shown}");
            assert!(shown.ends_with(HINT), "{shown}");
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["10m", "1h", "500ms", "15s"] {
            let parsed = parse(text).expect(text);
            assert_eq!(format(parsed), text);
        }
    }
}
