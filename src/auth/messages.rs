//! What a client sends while it authenticates: the password messages ('p') and their size
//! caps, and their decoding. Pure, so the exchanges in [`super::client`] and the fuzz
//! targets share it.

use super::scram::{self, ScramError};

/// Postgres' `PG_MAX_AUTH_TOKEN_LENGTH`: the cap on a cleartext password or md5 response,
/// its length word included (as `pq_getmessage` counts).
pub const MAX_PASSWORD_MESSAGE: u32 = 65_535;
/// Postgres' `PG_MAX_SASL_MESSAGE_LENGTH` (auth-sasl.c): one cap for SASLInitialResponse
/// and SASLResponse alike. SCRAM's messages are a few hundred bytes at most, channel
/// binding data included.
pub const MAX_SASL_MESSAGE: u32 = 1024;

/// Which password message a client owes next. Each has its own cap, checked on the header
/// before any of the body is read: before login, nobody may make pgwarden buffer much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// A cleartext password, or an md5 response (`md5…`).
    Password,
    SaslInitialResponse,
    SaslResponse,
}

impl Expected {
    /// The message's name in the protocol documentation, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Expected::Password => "password message",
            Expected::SaslInitialResponse => "SASLInitialResponse",
            Expected::SaslResponse => "SASLResponse",
        }
    }

    /// The largest length word accepted.
    pub fn max_len(self) -> u32 {
        match self {
            Expected::Password => MAX_PASSWORD_MESSAGE,
            Expected::SaslInitialResponse | Expected::SaslResponse => MAX_SASL_MESSAGE,
        }
    }
}

/// How a password message broke the protocol; reported as 08P01.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{what} is {len} bytes, over the limit of {max} bytes during authentication")]
    TooLong {
        what: &'static str,
        len: u32,
        max: u32,
    },
    #[error("malformed password message: {0}")]
    Malformed(&'static str),
    #[error("client selected an invalid SASL authentication mechanism")]
    InvalidMechanism,
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// A message after the exchange had already ended (a caller bug, never a client's).
    #[error("unexpected SASL message after the exchange ended")]
    AfterEnd,
}

/// A cleartext password or md5 response: exactly one NUL-terminated string, taken as raw
/// bytes (Postgres compares bytes; lossy UTF-8 decoding could make two passwords equal).
pub fn password(body: &[u8]) -> Result<&[u8], MessageError> {
    match body.split_last() {
        Some((0, text)) if !text.contains(&0) => Ok(text),
        _ => Err(MessageError::Malformed("invalid password packet size")),
    }
}

/// A SASLInitialResponse: the mechanism name, then an `Int32` length (-1: no data) and
/// that many bytes. Decoded here rather than by pgwire, whose decoder panics on truncated
/// bodies.
pub fn sasl_initial_response(body: &[u8]) -> Result<Option<&[u8]>, MessageError> {
    let malformed = MessageError::Malformed;
    let nul =
        (body.iter().position(|b| *b == 0)).ok_or(malformed("unterminated SASL mechanism name"))?;
    let (mechanism, rest) = body.split_at(nul);
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(MessageError::InvalidMechanism);
    }
    let rest = rest.get(1..).unwrap_or_default();
    let Some((len, data)) = rest.split_first_chunk::<4>() else {
        return Err(malformed("truncated SASL initial response"));
    };
    let len = i32::from_be_bytes(*len);
    match usize::try_from(len) {
        Ok(len) if len == data.len() => Ok(Some(data)),
        _ if len == -1 && data.is_empty() => Ok(None),
        _ => Err(malformed("SASL initial response length does not match")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_one_terminated_string() {
        assert_eq!(password(b"pw\0").unwrap(), b"pw");
        assert_eq!(password(b"\0").unwrap(), b"");
        for bad in [&b""[..], b"pw", b"p\0w\0", b"pw\0\0"] {
            assert!(password(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sasl_initial_responses_decode_or_name_the_problem() {
        let ok = b"SCRAM-SHA-256\0\0\0\0\x03abc";
        assert_eq!(sasl_initial_response(ok).unwrap(), Some(&b"abc"[..]));
        let none = b"SCRAM-SHA-256\0\xff\xff\xff\xff";
        assert_eq!(sasl_initial_response(none).unwrap(), None);
        let cases: [(&[u8], &str); 5] = [
            (b"SCRAM-SHA-256", "unterminated"),
            (b"SCRAM-SHA-256\0\0\0", "truncated"),
            (b"SCRAM-SHA-256\0\0\0\0\x09n,,", "does not match"),
            (b"SCRAM-SHA-256\0\xff\xff\xff\xffx", "does not match"),
            (b"PLAIN\0\0\0\0\0", "invalid SASL authentication mechanism"),
        ];
        for (body, needle) in cases {
            let err = sasl_initial_response(body).unwrap_err().to_string();
            assert!(err.contains(needle), "{body:?}: {err}");
        }
    }

    #[test]
    fn caps_are_postgres_own() {
        assert_eq!(Expected::Password.max_len(), 65_535);
        assert_eq!(Expected::SaslInitialResponse.max_len(), 1024);
        assert_eq!(Expected::SaslResponse.max_len(), 1024);
    }
}
