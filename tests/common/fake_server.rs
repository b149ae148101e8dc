//! A scripted fake Postgres for hostile-server tests: a TcpListener on 127.0.0.1 speaking
//! just enough protocol for pgwarden to log in and run its own queries, and sending
//! scripted hostile bytes when a Query contains a trigger string.
//!
//! Every connection gets AuthenticationOk, a few ParameterStatus, BackendKeyData (its
//! connection number as the pid) and ReadyForQuery `I`. Queries: a [`Fault`] trigger sends
//! its bytes; `SELECT 1` answers one row `1`; `echo:TEXT` answers one row `N:TEXT` with
//! `N` the connection number (so a test sees which server answered); BEGIN / COMMIT /
//! ROLLBACK move the transaction status; anything else (pgwarden's parameter sync,
//! settings read-back, DISCARD ALL, server_check_query) gets `CommandComplete "SELECT 0"`.
//! Extended-protocol messages get their plain completions. What happens is recorded as
//! [`Event`]s a test can wait for.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the fake server sends when a Query contains `trigger`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub trigger: &'static str,
    /// Sent at once, in one write, instead of the query's answer.
    pub bytes: Vec<u8>,
    /// Close the connection after sending `bytes`.
    pub close: bool,
    /// Sent after `bytes` when the test calls [`FakeServer::send_later`], unasked (the
    /// connection sits idle in pgwarden's pool by then).
    pub later: Option<Vec<u8>>,
}

/// What happened on the fake server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Connected(u32),
    Query(u32, String),
    /// A fault's `later` bytes were sent on this connection.
    SentLater(u32),
    /// The connection ended (the peer closed it, or the script did).
    Closed(u32),
}

#[derive(Default)]
struct Shared {
    events: Mutex<Vec<Event>>,
    changed: Notify,
    next_conn: Mutex<u32>,
    /// Lets a connection send its fault's `later` bytes.
    go_later: Notify,
}

impl Shared {
    fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.changed.notify_waiters();
    }
}

pub struct FakeServer {
    pub port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Binds 127.0.0.1:0 and serves connections on the current runtime with `faults`.
    pub async fn start(faults: Vec<Fault>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let faults = Arc::new(faults);
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = {
                    let mut next = accept_shared.next_conn.lock().unwrap();
                    *next += 1;
                    *next
                };
                let shared = accept_shared.clone();
                let faults = faults.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, conn, &shared, &faults).await;
                    shared.record(Event::Closed(conn));
                });
            }
        });
        FakeServer { port, shared, task }
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Waits until an event satisfies `pred`; panics with all events after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&Event) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.events().iter().any(&pred) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, changed).await.is_err() {
                panic!(
                    "the fake server never saw {what} within {within:?}; events: {:?}",
                    self.events()
                );
            }
        }
    }

    /// Lets the connection waiting to send a fault's `later` bytes send them (now, or as
    /// soon as it gets there).
    pub fn send_later(&self) {
        self.shared.go_later.notify_one();
    }

    /// The connection that received a Query containing `trigger`.
    pub fn conn_of(&self, trigger: &str) -> Option<u32> {
        self.events().into_iter().find_map(|e| match e {
            Event::Query(conn, text) if text.contains(trigger) => Some(conn),
            _ => None,
        })
    }

    /// Waits until connection `conn` has ended.
    pub async fn wait_closed(&self, conn: u32, within: Duration) {
        let what = format!("connection {conn} closed");
        self.wait_for(&what, within, |e| *e == Event::Closed(conn))
            .await;
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Backend messages.

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    super::raw::message(tag, body)
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, value);
    msg(b'S', &body)
}

pub fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    msg(b'C', &body)
}

/// An ErrorResponse (`tag` `E`) or NoticeResponse (`N`) with exactly `fields`.
pub fn error_fields(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (code, value) in fields {
        body.push(*code);
        cstr(&mut body, value);
    }
    body.push(0);
    msg(tag, &body)
}

/// A one-column, one-row result set (text), CommandComplete and ReadyForQuery `status`.
pub fn one_row(column: &str, value: &str, status: u8) -> Vec<u8> {
    let mut desc = 1u16.to_be_bytes().to_vec();
    cstr(&mut desc, column);
    desc.extend_from_slice(&0u32.to_be_bytes()); // table oid
    desc.extend_from_slice(&0u16.to_be_bytes()); // column number
    desc.extend_from_slice(&25u32.to_be_bytes()); // text
    desc.extend_from_slice(&(-1i16).to_be_bytes());
    desc.extend_from_slice(&(-1i32).to_be_bytes());
    desc.extend_from_slice(&0u16.to_be_bytes());
    let mut row = 1u16.to_be_bytes().to_vec();
    row.extend_from_slice(&(value.len() as u32).to_be_bytes());
    row.extend_from_slice(value.as_bytes());
    [
        msg(b'T', &desc),
        msg(b'D', &row),
        command_complete("SELECT 1"),
        ready(status),
    ]
    .concat()
}

const SSL_REQUEST: u32 = 80_877_103;
const CANCEL_REQUEST: u32 = 80_877_102;

async fn serve(
    mut stream: TcpStream,
    conn: u32,
    shared: &Shared,
    faults: &[Fault],
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let len = stream.read_u32().await? as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        match code {
            SSL_REQUEST => stream.write_all(b"N").await?,
            CANCEL_REQUEST => return Ok(()),
            _ => break,
        }
    }
    shared.record(Event::Connected(conn));
    let mut hello = msg(b'R', &0u32.to_be_bytes());
    for (name, value) in [
        ("server_version", "15.0 (fake)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        hello.extend(parameter_status(name, value));
    }
    let mut key = conn.to_be_bytes().to_vec();
    key.extend_from_slice(&0x5ec2e7u32.to_be_bytes());
    hello.extend(msg(b'K', &key));
    hello.extend(ready(b'I'));
    stream.write_all(&hello).await?;
    let mut status = b'I';
    loop {
        let tag = stream.read_u8().await?;
        let len = stream.read_u32().await? as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).await?;
        let out = match tag {
            b'Q' => {
                let text = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_owned();
                shared.record(Event::Query(conn, text.clone()));
                if let Some(fault) = faults.iter().find(|f| text.contains(f.trigger)) {
                    stream.write_all(&fault.bytes).await?;
                    if fault.close {
                        return Ok(());
                    }
                    if let Some(later) = &fault.later {
                        shared.go_later.notified().await;
                        stream.write_all(later).await?;
                        shared.record(Event::SentLater(conn));
                    }
                    continue;
                }
                answer(&text, conn, &mut status)
            }
            b'P' => msg(b'1', b""),
            b'B' => msg(b'2', b""),
            b'D' => msg(b'n', b""),
            b'E' => command_complete("SELECT 0"),
            b'C' => msg(b'3', b""),
            b'S' => ready(status),
            b'X' => return Ok(()),
            _ => Vec::new(),
        };
        stream.write_all(&out).await?;
    }
}

/// The answer to a Query that is no fault.
fn answer(text: &str, conn: u32, status: &mut u8) -> Vec<u8> {
    let upper = text.trim().trim_end_matches(';').to_ascii_uppercase();
    if let Some(rest) = text.trim().strip_prefix("echo:") {
        return one_row("echo", &format!("{conn}:{rest}"), *status);
    }
    match upper.as_str() {
        "SELECT 1" => one_row("?column?", "1", *status),
        "BEGIN" => {
            *status = b'T';
            [command_complete("BEGIN"), ready(*status)].concat()
        }
        "COMMIT" | "ROLLBACK" | "ABORT" | "END" => {
            *status = b'I';
            [command_complete(&upper), ready(*status)].concat()
        }
        _ => [command_complete("SELECT 0"), ready(*status)].concat(),
    }
}
