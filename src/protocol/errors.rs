//! Errors and notices pgwarden itself sends to clients, with their SQLSTATEs.
//!
//! Every refusal a client sees is built here, so the codes and wording stay consistent.

use std::borrow::Cow;

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::Message;

/// SQLSTATE codes pgwarden reports.
pub mod sqlstate {
    /// DISABLE on the console: the database accepts no new logins.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH: &str = "08001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// How bad an error is: `Fatal` ends the connection, `Error` ends only the current command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error as a Postgres client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let fields = self.fields(self.severity.as_str());
        // Encoding an error into a BytesMut cannot fail short of the 1 GB message limit.
        let _ = ErrorResponse::new(fields).encode(buf);
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }

    fn fields(&self, severity: &str) -> Vec<(u8, String)> {
        let mut info = ErrorInfo::new(
            severity.to_owned(),
            self.code.to_string(),
            self.message.clone(),
        );
        info.detail = self.detail.clone();
        info.hint = self.hint.clone();
        let mut fields = ErrorResponse::from(info).fields;
        // 'V' is the untranslated severity that libpq and drivers prefer to 'S'.
        fields.insert(1, (b'V', severity.to_owned()));
        fields
    }

    /// A NoticeResponse (severity NOTICE, SQLSTATE 00000) carrying `message`: something
    /// pgwarden tells a client without failing anything, such as that it is queued.
    pub fn notice(message: String) -> BytesMut {
        let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), message);
        let mut fields = ErrorResponse::from(info).fields;
        fields.insert(1, (b'V', "NOTICE".to_owned()));
        let mut buf = BytesMut::new();
        // As for errors: encoding into a BytesMut cannot fail short of 1 GB.
        let _ = NoticeResponse::new(fields).encode(&mut buf);
        buf
    }

    // ---- the named refusals ----

    pub fn protocol_violation(cause: impl std::fmt::Display) -> Self {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("protocol violation: {cause}"),
        )
    }

    pub fn password_failed(user: &str) -> Self {
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    pub fn unknown_database(database: &str) -> Self {
        PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )
    }

    pub fn shutting_down() -> Self {
        PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to pgwarden shutdown",
        )
    }

    /// A new connection while pgwarden drains (after its startup packet, so it is shown).
    pub fn not_while_draining() -> Self {
        PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "pgwarden is shutting down and accepts no new connections",
        )
    }

    pub fn too_many_clients(max: usize) -> Self {
        PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("too many client connections (max_client_conn = {max})"),
        )
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

/// Reads the SQLSTATE and message out of an ErrorResponse body (fields after the tag+length).
pub fn parse_error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// Whether an ErrorResponse or NoticeResponse body carries a five-character SQLSTATE, as
/// every one from Postgres does (the fields end with a NUL of their own).
pub fn has_sqlstate(body: &[u8]) -> bool {
    let Some(fields) = body.strip_suffix(&[0]) else {
        return false;
    };
    fields
        .split(|b| *b == 0)
        .any(|field| field.first() == Some(&b'C') && field.len() == 6)
}

/// An ErrorResponse (whole, header included) with `from` replaced by `to` in its message
/// field: Postgres' error for a name pgwarden chose, made the error for the client's name.
/// Every other field stays as the server sent it.
pub fn rename(msg: &[u8], from: &[u8], to: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(msg.len() + to.len());
    out.extend_from_slice(&msg[..1]);
    out.extend_from_slice(&[0; 4]);
    for field in msg[5..].split(|b| *b == 0) {
        if field.is_empty() {
            continue;
        }
        match (field.first(), find(field, from)) {
            (Some(b'M'), Some(at)) => {
                out.extend_from_slice(&field[..at]);
                out.extend_from_slice(to);
                out.extend_from_slice(&field[at + from.len()..]);
            }
            _ => out.extend_from_slice(field),
        }
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(&[0]);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_error_keeps_every_other_field() {
        let mut body = Vec::new();
        for field in [
            &b"SERROR"[..],
            b"VERROR",
            b"C26000",
            b"Mprepared statement \"pgwarden.absent\" does not exist",
            b"Fprepare.c",
            b"L462",
            b"RFetchPreparedStatement",
        ] {
            body.extend_from_slice(field);
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        assert!(has_sqlstate(&body));
        let renamed = rename(&msg, b"pgwarden.absent", b"s1");
        let len = u32::from_be_bytes([renamed[1], renamed[2], renamed[3], renamed[4]]) as usize;
        assert_eq!(len + 1, renamed.len());
        let text = String::from_utf8_lossy(&renamed[5..]).into_owned();
        assert!(text.contains("Mprepared statement \"s1\" does not exist\0"));
        assert!(text.contains("RFetchPreparedStatement\0"));
        assert_eq!(renamed.len(), msg.len() - "pgwarden.absent".len() + 2);
        assert!(!has_sqlstate(b"SERROR\0Mno code\0\0"));
        assert!(!has_sqlstate(b"C26000"));
    }

    #[test]
    fn error_response_carries_code_and_message() {
        let bytes = PgError::too_many_clients(5).to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len + 1, bytes.len());
        let (code, message) = parse_error_fields(&bytes[5..]);
        assert_eq!(code, "53300");
        assert_eq!(message, "too many client connections (max_client_conn = 5)");
    }
}
