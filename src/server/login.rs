//! Opening a backend connection: socket, startup packet, then the login exchange
//! ([`super::exchange`]: authentication, the server's parameters and cancel key, up to
//! ReadyForQuery) driven over the socket.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::exchange::{self, Exchange, LoginError, Step};
use super::{ServerConn, ServerError};
use crate::protocol::io::ReadError;
use crate::stream::Stream;
use crate::tls::SslMode;

/// Where and as whom the servers of one pool log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Host name or IP, or an absolute directory holding the Unix socket.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub credential: Credential,
    /// `server_allow_cleartext_password`: a cleartext password may go over plain TCP.
    pub allow_cleartext: bool,
    /// TLS towards this server (`server_tls_sslmode`), read at each connect.
    pub tls: ServerTls,
}

/// The TLS state servers are connected with; targets compare equal whatever it holds.
#[derive(Clone)]
pub struct ServerTls(pub Arc<crate::tls::Tls>);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ServerTls {}

/// What pgwarden can answer a server's password challenge with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Password(String),
    /// An `md5…` hash: enough for md5 authentication, not for cleartext or SCRAM.
    Md5Hash(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "None",
            Credential::Password(_) => "Password(<redacted>)",
            Credential::Md5Hash(_) => "Md5Hash(<redacted>)",
        })
    }
}

impl ServerTarget {
    /// `host:port`, or the socket path, for logs and errors.
    pub fn addr_label(&self) -> String {
        if self.is_unix() {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether `other` leads to the same backend (host, port, database, user): servers
    /// opened for one serve the other. Credentials and TLS are not compared; a changed
    /// password does not make an open server wrong.
    pub fn same_endpoint(&self, other: &ServerTarget) -> bool {
        (self.host == other.host && self.port == other.port)
            && (self.dbname == other.dbname && self.user == other.user)
    }

    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Opens a connection to the server, with TLS as `server_tls_sslmode` says (used for
    /// sessions and for cancel requests, which libpq also sends with the same sslmode).
    pub async fn open_socket(&self) -> std::io::Result<Stream> {
        self.open_socket_as(Attempt::First).await
    }

    async fn open_socket_as(&self, attempt: Attempt) -> std::io::Result<Stream> {
        if self.is_unix() {
            Ok(Stream::Unix(UnixStream::connect(self.addr_label()).await?))
        } else {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = self.tls.0.current();
            let mode = attempt.mode(tls.server.mode);
            super::tls::negotiate(tcp, &self.host, &tls.server, mode).await
        }
    }

    /// Whether a login refused over plaintext is tried again over TLS (`allow`).
    fn retries_with_tls(&self) -> bool {
        !self.is_unix() && self.tls.0.current().server.mode == SslMode::Allow
    }
}

/// Which connection of a login this is: `server_tls_sslmode = allow` tries plaintext
/// first and, if the server refuses that login, TLS, as libpq does.
#[derive(Clone, Copy)]
enum Attempt {
    First,
    TlsRetry,
}

impl Attempt {
    fn mode(self, configured: SslMode) -> SslMode {
        match (self, configured) {
            (Attempt::First, SslMode::Allow) => SslMode::Disable,
            (Attempt::TlsRetry, _) => SslMode::Require,
            (Attempt::First, mode) => mode,
        }
    }
}

/// Opens and logs in a backend connection within `timeout`.
pub async fn connect(
    target: Arc<ServerTarget>,
    timeout: Duration,
) -> Result<Box<ServerConn>, ServerError> {
    let addr = target.addr_label();
    match tokio::time::timeout(timeout, open(target)).await {
        // Boxed: a server changes hands (pool, client, pool) every transaction, and a
        // pointer moves for free where the connection's state would be copied.
        Ok(result) => result.map(Box::new),
        Err(_) => Err(ServerError::ConnectTimeout { addr, timeout }),
    }
}

async fn open(target: Arc<ServerTarget>) -> Result<ServerConn, ServerError> {
    match open_as(target.clone(), Attempt::First).await {
        Err(ServerError::Refused { .. }) if target.retries_with_tls() => {
            open_as(target, Attempt::TlsRetry).await
        }
        outcome => outcome,
    }
}

async fn open_as(target: Arc<ServerTarget>, attempt: Attempt) -> Result<ServerConn, ServerError> {
    let allow_cleartext = target.allow_cleartext;
    let stream = target
        .open_socket_as(attempt)
        .await
        .map_err(|source| ServerError::Connect {
            addr: target.addr_label(),
            source,
        })?;
    let mut conn = ServerConn::new(stream, target);
    send_startup(&mut conn).await?;
    log_in(&mut conn, allow_cleartext).await?;
    conn.params.finish_login();
    Ok(conn)
}

async fn send_startup(conn: &mut ServerConn) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    let params = [
        ("user", conn.target.user.as_str()),
        ("database", conn.target.dbname.as_str()),
    ];
    frontend::startup_message(params, &mut out)?;
    conn.stream.write_all(&out).await?;
    Ok(())
}

/// Runs the login exchange ([`Exchange`]) over the socket, from the first authentication
/// request to ReadyForQuery.
async fn log_in(conn: &mut ServerConn, allow_cleartext: bool) -> Result<(), ServerError> {
    let cleartext_ok = allow_cleartext || conn.stream.is_encrypted() || conn.stream.is_unix();
    let target = conn.target.clone();
    let mut exchange = Exchange::new(&target.user, &target.credential, cleartext_ok);
    loop {
        let (tag, body) = next(conn).await?;
        let step = exchange
            .feed(tag, &body)
            .map_err(|e| login_error(&target, e))?;
        match step {
            Step::Send(out) => conn.stream.write_all(&out).await?,
            Step::Read => {}
            Step::Parameter => conn.params.record_status(&body),
            Step::Key(key) => conn.key = key,
            Step::Ready => return Ok(()),
        }
    }
}

/// The next whole message of the login, its header checked by [`exchange::frame`] before
/// its body is read; the buffer grows with the bytes that arrive, not the declared length.
async fn next(conn: &mut ServerConn) -> Result<(u8, BytesMut), ServerError> {
    loop {
        let framed = exchange::frame(&conn.buf).map_err(|e| login_error(&conn.target, e))?;
        if let Some((tag, total)) = framed {
            let mut msg = conn.buf.split_to(total);
            msg.advance(5);
            return Ok((tag, msg));
        }
        conn.buf.reserve(READ_CHUNK);
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            if conn.buf.is_empty() {
                return Err(ServerError::Read(ReadError::Closed));
            }
            let what = "connection closed in the middle of a message";
            return Err(ServerError::Protocol(what.into()));
        }
    }
}

/// How much more room each read during login asks for.
const READ_CHUNK: usize = 4096;

fn login_error(target: &ServerTarget, err: LoginError) -> ServerError {
    match err {
        LoginError::Refused { code, message } => ServerError::Refused { code, message },
        LoginError::Method(reason) => ServerError::Auth {
            user: target.user.clone(),
            reason,
        },
        LoginError::Protocol(what) => ServerError::Protocol(what),
    }
}
