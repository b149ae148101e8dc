//! Helpers for the named-prepared-statement tests (issue 4): raw extended-protocol clients
//! whose replies are decoded into comparable values, and scripts run once against Postgres
//! and once through pgwarden so that a test can assert both answered alike.
//!
//! Raw clients log in as `trust_user` (trust on Postgres and through a trust proxy), on
//! database `postgres`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::{fields, message, startup, PROTOCOL_3_0};
use super::{PgServer, Proxy};

/// How long one backend message may take before a raw client gives up (a client waiting
/// for a server it will never get fails after this).
pub const REPLY_DEADLINE: Duration = Duration::from_secs(8);
/// The role and database of raw clients.
pub const RAW_USER: &str = "trust_user";
pub const RAW_DB: &str = "postgres";

/// A transaction-mode configuration routing every database to `pg` with `pool_size`
/// servers: clients log in with trust, app logs in to Postgres with its password, a 5 s
/// query_wait_timeout unless `extra` sets one; `extra` is added as top-level lines.
pub fn transaction_config(pg: &PgServer, pool_size: usize, extra: &str) -> String {
    let wait = if extra.contains("query_wait_timeout") {
        ""
    } else {
        "query_wait_timeout = \"5s\"\n"
    };
    format!(
        "auth_type = \"trust\"\npool_mode = \"transaction\"\npool_size = {pool_size}\n\
         {wait}shutdown_timeout = \"2s\"\n{extra}\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n\
         [users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

/// One backend message, decoded as far as the tests compare it. ParameterStatus messages
/// are not kept (a proxy may send them at other times than Postgres).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// The number of parameters.
    ParameterDescription(usize),
    /// The column names.
    RowDescription(Vec<String>),
    NoData,
    /// The values, in text format.
    DataRow(Vec<Option<String>>),
    CommandComplete(String),
    EmptyQuery,
    PortalSuspended,
    /// SQLSTATE and message.
    Error(String, String),
    /// SQLSTATE and message of a NoticeResponse.
    Notice(String, String),
    /// The transaction status: `I`, `T` or `E`.
    Ready(char),
    Other(char),
}

impl Reply {
    fn decode(tag: u8, body: &[u8]) -> Reply {
        let mut at = 0;
        match tag {
            b'1' => Reply::ParseComplete,
            b'2' => Reply::BindComplete,
            b'3' => Reply::CloseComplete,
            b't' => Reply::ParameterDescription(int16(body, &mut at) as usize),
            b'T' => {
                let n = int16(body, &mut at);
                let names = (0..n)
                    .map(|_| {
                        let name = cstr(body, &mut at);
                        at += 18;
                        name
                    })
                    .collect();
                Reply::RowDescription(names)
            }
            b'n' => Reply::NoData,
            b'D' => {
                let n = int16(body, &mut at);
                let values = (0..n)
                    .map(|_| {
                        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                        at += 4;
                        (len >= 0).then(|| {
                            let value = &body[at..at + len as usize];
                            at += len as usize;
                            String::from_utf8_lossy(value).into_owned()
                        })
                    })
                    .collect();
                Reply::DataRow(values)
            }
            b'C' => Reply::CommandComplete(cstr(body, &mut at)),
            b'I' => Reply::EmptyQuery,
            b's' => Reply::PortalSuspended,
            b'E' | b'N' => {
                let f = fields(body);
                let code = f.get(&b'C').cloned().unwrap_or_default();
                let text = f.get(&b'M').cloned().unwrap_or_default();
                if tag == b'E' {
                    Reply::Error(code, text)
                } else {
                    Reply::Notice(code, text)
                }
            }
            b'Z' => Reply::Ready(body[0] as char),
            other => Reply::Other(other as char),
        }
    }
}

fn int16(body: &[u8], at: &mut usize) -> i16 {
    let value = i16::from_be_bytes([body[*at], body[*at + 1]]);
    *at += 2;
    value
}

fn cstr(body: &[u8], at: &mut usize) -> String {
    let end = body[*at..].iter().position(|b| *b == 0).unwrap() + *at;
    let text = String::from_utf8_lossy(&body[*at..end]).into_owned();
    *at = end + 1;
    text
}

/// The rows of `replies`.
pub fn rows(replies: &[Reply]) -> Vec<Vec<Option<String>>> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::DataRow(values) => Some(values.clone()),
            _ => None,
        })
        .collect()
}

/// The single value of the single row of `replies`; panics otherwise.
pub fn single(replies: &[Reply]) -> String {
    let rows = rows(replies);
    assert!(
        rows.len() == 1 && rows[0].len() == 1,
        "expected one value, got {replies:?}"
    );
    rows[0][0].clone().expect("a NULL value")
}

/// The errors (SQLSTATE, message) of `replies`.
pub fn errors(replies: &[Reply]) -> Vec<(String, String)> {
    replies
        .iter()
        .filter_map(|r| match r {
            Reply::Error(code, text) => Some((code.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

/// `replies` must hold exactly one error, `code` with `text`.
pub fn assert_error(replies: &[Reply], code: &str, text: &str) {
    assert_eq!(
        errors(replies),
        vec![(code.to_owned(), text.to_owned())],
        "in {replies:?}"
    );
}

/// The one-letter tags of `replies` (`Z` followed by its status), for compact assertions.
pub fn shape(replies: &[Reply]) -> String {
    let mut out = String::new();
    for reply in replies {
        match reply {
            Reply::ParseComplete => out.push('1'),
            Reply::BindComplete => out.push('2'),
            Reply::CloseComplete => out.push('3'),
            Reply::ParameterDescription(_) => out.push('t'),
            Reply::RowDescription(_) => out.push('T'),
            Reply::NoData => out.push('n'),
            Reply::DataRow(_) => out.push('D'),
            Reply::CommandComplete(_) => out.push('C'),
            Reply::EmptyQuery => out.push('I'),
            Reply::PortalSuspended => out.push('s'),
            Reply::Error(..) => out.push('E'),
            Reply::Notice(..) => out.push('N'),
            Reply::Ready(status) => {
                out.push('Z');
                out.push(*status);
            }
            Reply::Other(tag) => out.push(*tag),
        }
    }
    out
}

// Frontend messages. Parameters and results are in text format.

fn with_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Parse `name` as `sql`, leaving every parameter type to the server.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    with_cstr(&mut body, name);
    with_cstr(&mut body, sql);
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &body)
}

/// Bind `portal` to `statement` with text parameters (`None` for NULL), text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut body = Vec::new();
    with_cstr(&mut body, portal);
    with_cstr(&mut body, statement);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &body)
}

/// Describe a statement (`'S'`) or portal (`'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    with_cstr(&mut body, name);
    message(b'D', &body)
}

/// Execute `portal`, all rows.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = Vec::new();
    with_cstr(&mut body, portal);
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

/// Close a statement (`'S'`) or portal (`'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    with_cstr(&mut body, name);
    message(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    super::raw::query(sql)
}

/// Bind (unnamed portal) + Execute of `statement` with text `params`, then Sync.
pub fn run_named(statement: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<Option<&str>> = params.iter().map(|p| Some(*p)).collect();
    [bind("", statement, &params), execute(""), sync()].concat()
}

/// A raw client, logged in with trust.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Logs in as [`RAW_USER`] to [`RAW_DB`] at `addr` (trust: no password exchange).
    pub async fn login(addr: SocketAddr) -> RawClient {
        RawClient::login_as(addr, RAW_USER, RAW_DB).await
    }

    /// Logs in as `user` to `db` at `addr`, which must not ask for a password.
    pub async fn login_as(addr: SocketAddr, user: &str, db: &str) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut client = RawClient { stream };
        let hello = startup(PROTOCOL_3_0, &[("user", user), ("database", db)]);
        client.stream.write_all(&hello).await.unwrap();
        let replies = client.read(1).await;
        assert!(
            errors(&replies).is_empty(),
            "login to {addr} failed: {replies:?}"
        );
        client
    }

    pub async fn direct(pg: &PgServer) -> RawClient {
        RawClient::login(SocketAddr::from(([127, 0, 0, 1], pg.port))).await
    }

    pub async fn proxied(proxy: &Proxy) -> RawClient {
        RawClient::login(proxy.addr).await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The replies up to and including the `readies`th ReadyForQuery (ParameterStatus,
    /// BackendKeyData and authentication messages left out).
    pub async fn read(&mut self, readies: usize) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut seen = 0;
        while seen < readies {
            let (tag, body) = self.read_message(&replies).await;
            if matches!(tag, b'S' | b'K' | b'R') {
                continue;
            }
            let reply = Reply::decode(tag, &body);
            if matches!(reply, Reply::Ready(_)) {
                seen += 1;
            }
            replies.push(reply);
        }
        replies
    }

    async fn read_message(&mut self, so_far: &[Reply]) -> (u8, Vec<u8>) {
        let read = async {
            let mut header = [0u8; 5];
            self.stream.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>((header[0], body))
        };
        match tokio::time::timeout(REPLY_DEADLINE, read).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => panic!("connection lost ({e}); replies so far: {so_far:?}"),
            Err(_) => panic!("no reply within {REPLY_DEADLINE:?}; replies so far: {so_far:?}"),
        }
    }

    /// The replies until the server closes the connection (after a FATAL error, say).
    pub async fn read_until_closed(&mut self) -> Vec<Reply> {
        self.read_until(false).await
    }

    /// The replies up to a ReadyForQuery, or until the connection closes.
    pub async fn read_until_ready_or_closed(&mut self) -> Vec<Reply> {
        self.read_until(true).await
    }

    async fn read_until(&mut self, stop_at_ready: bool) -> Vec<Reply> {
        let mut replies = Vec::new();
        loop {
            let mut header = [0u8; 5];
            let read = tokio::time::timeout(REPLY_DEADLINE, self.stream.read_exact(&mut header));
            match read.await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return replies,
                Err(_) => panic!("not closed within {REPLY_DEADLINE:?}; replies: {replies:?}"),
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.stream.read_exact(&mut body).await.unwrap();
            if !matches!(header[0], b'S' | b'K' | b'R') {
                replies.push(Reply::decode(header[0], &body));
            }
            if stop_at_ready && header[0] == b'Z' {
                return replies;
            }
        }
    }

    /// Sends `bytes` and reads the replies up to the `readies`th ReadyForQuery.
    pub async fn run(&mut self, bytes: &[u8], readies: usize) -> Vec<Reply> {
        self.send(bytes).await;
        self.read(readies).await
    }

    /// A simple query's replies.
    pub async fn simple(&mut self, sql: &str) -> Vec<Reply> {
        self.run(&query(sql), 1).await
    }

    /// A simple query's single value.
    pub async fn value(&mut self, sql: &str) -> String {
        single(&self.simple(sql).await)
    }
}

/// One step of a script: what `client` sends, and how many ReadyForQuery end its replies.
pub struct Step {
    pub client: usize,
    pub send: Vec<u8>,
    pub readies: usize,
}

pub fn step(client: usize, send: Vec<u8>, readies: usize) -> Step {
    Step {
        client,
        send,
        readies,
    }
}

/// Runs `steps` with `clients` raw clients logged in to `addr`, one step at a time; the
/// replies of each step.
pub async fn run_script(addr: SocketAddr, clients: usize, steps: &[Step]) -> Vec<Vec<Reply>> {
    let mut raw = Vec::new();
    for _ in 0..clients {
        raw.push(RawClient::login(addr).await);
    }
    let mut out = Vec::new();
    for step in steps {
        out.push(raw[step.client].run(&step.send, step.readies).await);
    }
    out
}

/// Runs `steps` against Postgres directly, then through `proxy`, and asserts that every
/// step got the same replies; returns them.
pub async fn same_as_direct(
    pg: &PgServer,
    proxy: &Proxy,
    clients: usize,
    steps: &[Step],
) -> Vec<Vec<Reply>> {
    let direct_addr = SocketAddr::from(([127, 0, 0, 1], pg.port));
    let direct = run_script(direct_addr, clients, steps).await;
    let proxied = run_script(proxy.addr, clients, steps).await;
    for (i, (d, p)) in direct.iter().zip(&proxied).enumerate() {
        assert_eq!(
            p, d,
            "step {i} (client {}): pgwarden (left) and Postgres (right) differ",
            steps[i].client
        );
    }
    proxied
}

// tokio-postgres helpers.

/// The first column of the first row of a simple query; panics on error or no row.
pub async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", super::describe(&e)));
    let rows = super::clients::simple_rows(&messages);
    rows.into_iter()
        .next()
        .and_then(|row| row.into_iter().next()?)
        .unwrap_or_else(|| panic!("{sql}: no row or NULL"))
}

/// Runs `sql` (simple protocol); panics on error.
pub async fn exec(client: &tokio_postgres::Client, sql: &str) {
    let result = client.batch_execute(sql).await;
    result.unwrap_or_else(|e| panic!("{sql}: {}", super::describe(&e)));
}

/// The backend serving `client`'s next transaction.
pub async fn pid(client: &tokio_postgres::Client) -> String {
    value(client, "select pg_backend_pid()").await
}

/// With pool_size 2: makes one of `holders` hold the server whose backend is `avoid` in an
/// open transaction, so that the next transaction of any other client runs on the other
/// server. Returns the holder, whose transaction [`release`] ends.
pub async fn hold<'a>(
    holders: [&'a tokio_postgres::Client; 2],
    avoid: &str,
) -> &'a tokio_postgres::Client {
    let [first, second] = holders;
    exec(first, "begin").await;
    if pid(first).await == avoid {
        return first;
    }
    // `first` holds the other server; `second` can only get `avoid`.
    exec(second, "begin").await;
    assert_eq!(pid(second).await, avoid, "pool_size is not 2?");
    exec(first, "commit").await;
    second
}

/// Ends the transaction [`hold`] opened.
pub async fn release(holder: &tokio_postgres::Client) {
    exec(holder, "commit").await;
}
