//! Raw protocol for tests that speak to pgwarden byte by byte: startup-phase packets,
//! tagged frontend messages, and reading backend messages with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROTOCOL_3_0: i32 = 3 << 16;
pub const PROTOCOL_3_1: i32 = (3 << 16) | 1;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;

/// A startup-phase packet: length, code, body.
pub fn packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A StartupMessage of protocol `version` with `params`.
pub fn startup(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in params {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet(version, &body)
}

/// A tagged frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// One backend message (tag, body), or `None` at end of stream; panics if none arrives
/// within `deadline`.
pub async fn read_message(stream: &mut TcpStream, deadline: Duration) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(deadline, async {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).await.is_err() {
            return None;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        assert!(len >= 4, "backend message length {len}");
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    })
    .await
    .unwrap_or_else(|_| panic!("no message from pgwarden within {deadline:?}"))
}

/// Reads messages up to and including ReadyForQuery, each within `deadline`.
pub async fn read_until_ready(stream: &mut TcpStream, deadline: Duration) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    loop {
        let (tag, body) = read_message(stream, deadline)
            .await
            .unwrap_or_else(|| panic!("connection closed; got so far {}", tags(&messages)));
        messages.push((tag, body));
        if tag == b'Z' {
            return messages;
        }
    }
}

/// Runs `sql` on a raw connection and returns the messages up to ReadyForQuery.
pub async fn raw_query(
    stream: &mut TcpStream,
    sql: &str,
    deadline: Duration,
) -> Vec<(u8, Vec<u8>)> {
    stream.write_all(&query(sql)).await.unwrap();
    read_until_ready(stream, deadline).await
}

/// The tags of `messages`, as a string.
pub fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

/// The fields of an ErrorResponse or NoticeResponse body, by field code.
pub fn fields(body: &[u8]) -> HashMap<u8, String> {
    body.split(|b| *b == 0)
        .filter_map(|f| f.split_first())
        .map(|(code, value)| (*code, String::from_utf8_lossy(value).into_owned()))
        .collect()
}
