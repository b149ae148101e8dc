//! Encoders for the backend messages pgwarden writes itself; each appends to the caller's buffer.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ReadyForQuery, TransactionStatus as PgTxStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

use super::TransactionStatus;

// Encoding into a BytesMut only fails for messages over pgwire's size limits, which these
// small, bounded messages never reach; the results are therefore ignored.

pub fn authentication(auth: Authentication, buf: &mut BytesMut) {
    let _ = auth.encode(buf);
}

pub fn parameter_status(name: &str, value: &str, buf: &mut BytesMut) {
    let _ = ParameterStatus::new(name.to_owned(), value.to_owned()).encode(buf);
}

pub fn backend_key_data(pid: i32, secret: i32, buf: &mut BytesMut) {
    let _ = BackendKeyData::new(pid, SecretKey::I32(secret)).encode(buf);
}

pub fn ready_for_query(status: TransactionStatus, buf: &mut BytesMut) {
    let status = match status {
        TransactionStatus::Idle => PgTxStatus::Idle,
        TransactionStatus::InTransaction => PgTxStatus::Transaction,
        TransactionStatus::Failed => PgTxStatus::Error,
    };
    let _ = ReadyForQuery::new(status).encode(buf);
}

pub fn negotiate_protocol_version(newest_minor: i32, unsupported: Vec<String>, buf: &mut BytesMut) {
    let _ = NegotiateProtocolVersion::new(newest_minor, unsupported).encode(buf);
}

/// A simple-protocol Query message.
pub fn query(sql: &str, buf: &mut BytesMut) {
    buf.put_u8(super::tags::frontend::QUERY);
    buf.put_u32((4 + sql.len() + 1) as u32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// A Terminate message, sent before closing a server connection politely.
pub fn terminate(buf: &mut BytesMut) {
    buf.put_u8(super::tags::frontend::TERMINATE);
    buf.put_u32(4);
}

/// A startup-phase packet: length, protocol code, then body.
pub fn startup_packet(code: i32, body: &[u8], buf: &mut BytesMut) {
    buf.put_u32((8 + body.len()) as u32);
    buf.put_i32(code);
    buf.put_slice(body);
}
