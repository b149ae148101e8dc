//! Which message types exist in each direction after login, and the lengths each may
//! declare, checked from the 5-byte header before any body is buffered.
//!
//! Client rules follow Postgres' `SocketBackend`: an unknown type is `invalid frontend
//! message type`; Sync, Flush, CopyDone and Terminate carry no body; Close, Describe,
//! Execute and CopyFail are small (`PQ_SMALL_MESSAGE_LIMIT`). Server rules follow the
//! message formats: the answers without a body are exactly 4 bytes, ReadyForQuery 5.

use super::framing::FramingError;
use super::tags::{backend, frontend};

/// Postgres' limit for the small frontend messages (`PQ_SMALL_MESSAGE_LIMIT`).
pub const SMALL_MESSAGE_LIMIT: u32 = 10_000;

/// Which direction's rules a framer applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Any tag, any length from 4 up (the handshake checks messages itself).
    Any,
    /// Messages a logged-in client may send.
    Frontend,
    /// Messages a logged-in server may send.
    Backend,
}

/// What a header may declare.
enum Limit {
    Unknown,
    /// Exists, but not after login.
    NotNow,
    /// Exactly this length.
    Exactly(u32),
    AtMost(u32),
    /// Only the configured maximum applies.
    Any,
}

impl Rules {
    pub fn check(self, tag: u8, len: u32) -> Result<(), FramingError> {
        let limit = match self {
            Rules::Any => Limit::Any,
            Rules::Frontend => frontend_limit(tag),
            Rules::Backend => backend_limit(tag),
        };
        let tag_char = tag as char;
        let bad_length = || FramingError::BadLength { tag: tag_char, len };
        match limit {
            Limit::Unknown => Err(FramingError::UnknownType { tag: tag_char }),
            Limit::NotNow => Err(FramingError::Unexpected { tag: tag_char }),
            Limit::Exactly(n) if len != n => Err(bad_length()),
            Limit::AtMost(n) if len > n => Err(bad_length()),
            _ => Ok(()),
        }
    }
}

fn frontend_limit(tag: u8) -> Limit {
    match tag {
        frontend::SYNC | frontend::FLUSH | frontend::COPY_DONE | frontend::TERMINATE => {
            Limit::Exactly(4)
        }
        frontend::CLOSE | frontend::DESCRIBE | frontend::EXECUTE | frontend::COPY_FAIL => {
            Limit::AtMost(SMALL_MESSAGE_LIMIT)
        }
        frontend::QUERY
        | frontend::PARSE
        | frontend::BIND
        | frontend::COPY_DATA
        | frontend::FUNCTION_CALL => Limit::Any,
        // Authentication messages (PasswordMessage, SASL) are over once logged in.
        frontend::PASSWORD => Limit::NotNow,
        _ => Limit::Unknown,
    }
}

fn backend_limit(tag: u8) -> Limit {
    use backend::*;
    match tag {
        PARSE_COMPLETE | BIND_COMPLETE | CLOSE_COMPLETE | NO_DATA | EMPTY_QUERY
        | PORTAL_SUSPENDED | COPY_DONE => Limit::Exactly(4),
        READY_FOR_QUERY => Limit::Exactly(5),
        ERROR_RESPONSE
        | NOTICE_RESPONSE
        | PARAMETER_STATUS
        | COPY_IN_RESPONSE
        | DATA_ROW
        | NOTIFICATION
        | COMMAND_COMPLETE
        | COPY_DATA
        | ROW_DESCRIPTION
        | COPY_OUT_RESPONSE
        | PARAMETER_DESCRIPTION
        | FUNCTION_CALL_RESPONSE
        | COPY_BOTH_RESPONSE => Limit::Any,
        AUTHENTICATION | BACKEND_KEY_DATA | NEGOTIATE_PROTOCOL_VERSION => Limit::NotNow,
        _ => Limit::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frontend_messages_are_checked_from_the_header() {
        let f = Rules::Frontend;
        assert!(f.check(b'S', 4).is_ok());
        assert!(matches!(
            f.check(b'S', 100_000),
            Err(FramingError::BadLength { .. })
        ));
        assert!(matches!(
            f.check(b'X', 5),
            Err(FramingError::BadLength { .. })
        ));
        assert!(f.check(b'E', 9).is_ok());
        assert!(matches!(
            f.check(b'E', 10_001),
            Err(FramingError::BadLength { .. })
        ));
        assert!(f.check(b'Q', 1 << 29).is_ok());
        assert_eq!(
            f.check(b'q', 10).unwrap_err().client_message(),
            "invalid frontend message type 113"
        );
        assert!(matches!(
            f.check(b'p', 10),
            Err(FramingError::Unexpected { .. })
        ));
    }

    #[test]
    fn backend_answers_have_their_exact_lengths() {
        let b = Rules::Backend;
        assert!(b.check(b'Z', 5).is_ok());
        assert!(matches!(
            b.check(b'Z', 6),
            Err(FramingError::BadLength { .. })
        ));
        assert!(matches!(
            b.check(b'1', 5),
            Err(FramingError::BadLength { .. })
        ));
        assert!(b.check(b'D', 1 << 20).is_ok());
        assert!(matches!(
            b.check(b'K', 12),
            Err(FramingError::Unexpected { .. })
        ));
        assert!(matches!(
            b.check(b'q', 4),
            Err(FramingError::UnknownType { .. })
        ));
    }
}
