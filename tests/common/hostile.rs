//! Helpers for the tests with hostile peers: the binary's configuration in front of a
//! server, and what a client told off with a FATAL error must see.

use std::time::Duration;

use super::raw::fields;
use super::segment::{Answer, Conn, Msg, Until};

/// How long a client may wait for pgwarden to answer a protocol violation and close.
pub const VIOLATION_DEADLINE: Duration = Duration::from_secs(5);

/// A configuration for [`super::process::Pgwarden::with_config`]: `pool_mode`,
/// `pool_size`, trust for clients (and for the server, as `trust_user`), one worker,
/// max_prepared_statements 200, a 16 MiB max_packet_size, a 5 s query_wait_timeout,
/// shutdown_timeout 2 s, every database routed to 127.0.0.1:`port`; `extra` is added as
/// top-level lines.
pub fn config(port: u16, pool_mode: &str, pool_size: usize, extra: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"{pool_mode}\"\npool_size = {pool_size}\n\
         max_prepared_statements = 200\nworkers = 1\nmax_packet_size = {}\n\
         query_wait_timeout = \"5s\"\nshutdown_timeout = \"2s\"\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {port}\n",
        MAX_PACKET_SIZE
    )
}

/// The max_packet_size of [`config`].
pub const MAX_PACKET_SIZE: u32 = 16 << 20;

/// The fields of an ErrorResponse or NoticeResponse, by code.
pub fn error_fields(msg: &Msg) -> std::collections::HashMap<u8, String> {
    fields(&msg.body)
}

/// The ErrorResponses of `answer`: (severity, SQLSTATE, message).
pub fn errors(answer: &Answer) -> Vec<(String, String, String)> {
    answer
        .messages
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            let f = error_fields(m);
            let get = |c: u8| f.get(&c).cloned().unwrap_or_default();
            (get(b'V'), get(b'C'), get(b'M'))
        })
        .collect()
}

/// Reads until the connection closes and asserts that the last message was a FATAL
/// ErrorResponse with `code` whose message satisfies `message` (described by `wanted`);
/// returns the whole answer.
pub async fn expect_fatal(
    conn: &mut Conn,
    code: &str,
    wanted: &str,
    message: impl Fn(&str) -> bool,
) -> Answer {
    let answer = conn
        .read_answer(Until::Closed, VIOLATION_DEADLINE)
        .await
        .unwrap_or_else(|why| panic!("expected FATAL {code} {wanted} and a close: {why}"));
    let last = answer.messages.last();
    let last = last.unwrap_or_else(|| panic!("closed without an error; expected {code} {wanted}"));
    assert_eq!(last.tag, b'E', "the last message: {answer:?}");
    let f = error_fields(last);
    assert_eq!(f.get(&b'V').map(String::as_str), Some("FATAL"), "{last:?}");
    assert_eq!(f.get(&b'C').map(String::as_str), Some(code), "{last:?}");
    let text = f.get(&b'M').cloned().unwrap_or_default();
    assert!(message(&text), "expected {wanted}, got {last:?}");
    answer
}
