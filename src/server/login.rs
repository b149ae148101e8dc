//! Opening a backend connection: socket, startup packet, authentication (trust, cleartext,
//! md5, SCRAM-SHA-256), then the server's parameters and cancel key up to ReadyForQuery.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use md5::{Digest, Md5};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use super::{BackendKey, ServerConn, ServerError, MAX_SERVER_MESSAGE};
use crate::protocol::cstrings;
use crate::protocol::errors::parse_error_fields;
use crate::protocol::io::{read_message, Message};
use crate::protocol::tags::{auth, backend};
use crate::stream::Stream;

/// Where and as whom the servers of one pool log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Host name or IP, or an absolute directory holding the Unix socket.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub credential: Credential,
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

    fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Opens a connection to the server, with TLS as `server_tls_sslmode` says (used for
    /// sessions and for cancel requests, which libpq also sends with the same sslmode).
    pub async fn open_socket(&self) -> std::io::Result<Stream> {
        if self.is_unix() {
            Ok(Stream::Unix(UnixStream::connect(self.addr_label()).await?))
        } else {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = self.tls.0.current();
            super::tls::negotiate(tcp, &self.host, &tls.server).await
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
    let stream = target
        .open_socket()
        .await
        .map_err(|source| ServerError::Connect {
            addr: target.addr_label(),
            source,
        })?;
    let mut conn = ServerConn::new(stream, target);
    send_startup(&mut conn).await?;
    authenticate(&mut conn).await?;
    read_info(&mut conn).await?;
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

async fn next(conn: &mut ServerConn) -> Result<Message, ServerError> {
    let msg = read_message(&mut conn.stream, &mut conn.buf, MAX_SERVER_MESSAGE).await?;
    if msg.tag == backend::ERROR_RESPONSE {
        let (code, message) = parse_error_fields(&msg.body);
        return Err(ServerError::Refused { code, message });
    }
    Ok(msg)
}

/// The authentication request code and its data, from an `R` message body.
fn auth_request(msg: &Message) -> Result<(i32, &[u8]), ServerError> {
    if msg.tag != backend::AUTHENTICATION || msg.body.len() < 4 {
        return Err(ServerError::Unexpected(msg.tag as char));
    }
    let code = i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
    Ok((code, &msg.body[4..]))
}

async fn authenticate(conn: &mut ServerConn) -> Result<(), ServerError> {
    loop {
        let msg = next(conn).await?;
        if msg.tag == backend::NEGOTIATE_PROTOCOL_VERSION {
            continue;
        }
        let (code, data) = auth_request(&msg)?;
        let mut out = BytesMut::new();
        match code {
            auth::OK => return Ok(()),
            auth::CLEARTEXT_PASSWORD => {
                let password = plain_password(conn, "cleartext password")?;
                frontend::password_message(password.as_bytes(), &mut out)?;
            }
            auth::MD5_PASSWORD => {
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(ServerError::Unexpected('R'))?;
                let hashed = md5_response(conn, salt)?;
                frontend::password_message(hashed.as_bytes(), &mut out)?;
            }
            auth::SASL => return scram(conn, data).await,
            other => {
                return Err(auth_error(
                    conn,
                    format!("unsupported authentication request {other} from server"),
                ));
            }
        }
        conn.stream.write_all(&out).await?;
    }
}

fn auth_error(conn: &ServerConn, reason: impl Into<String>) -> ServerError {
    ServerError::Auth {
        user: conn.target.user.clone(),
        reason: reason.into(),
    }
}

fn plain_password(conn: &ServerConn, method: &str) -> Result<String, ServerError> {
    match &conn.target.credential {
        Credential::Password(p) => Ok(p.clone()),
        Credential::Md5Hash(_) => Err(auth_error(
            conn,
            format!("server asks for {method} but only an md5 hash of the password is configured"),
        )),
        Credential::None => Err(auth_error(
            conn,
            format!("server asks for {method} but no password is configured"),
        )),
    }
}

fn md5_response(conn: &ServerConn, salt: [u8; 4]) -> Result<String, ServerError> {
    match &conn.target.credential {
        Credential::Password(p) => Ok(md5_hash(conn.target.user.as_bytes(), p.as_bytes(), salt)),
        Credential::Md5Hash(h) => {
            let mut md5 = Md5::new();
            md5.update(h.trim_start_matches("md5").as_bytes());
            md5.update(salt);
            Ok(format!("md5{:x}", md5.finalize()))
        }
        Credential::None => Err(auth_error(
            conn,
            "server asks for an md5 password but no password is configured",
        )),
    }
}

async fn scram(conn: &mut ServerConn, mechanisms: &[u8]) -> Result<(), ServerError> {
    if !cstrings(mechanisms).any(|m| m == SCRAM_SHA_256) {
        return Err(auth_error(
            conn,
            "server offers no SASL mechanism pgwarden supports",
        ));
    }
    let password = plain_password(conn, "SCRAM-SHA-256")?;
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
    conn.stream.write_all(&out).await?;
    loop {
        let msg = next(conn).await?;
        let (code, data) = auth_request(&msg)?;
        match code {
            auth::SASL_CONTINUE => {
                scram
                    .update(data)
                    .map_err(|e| auth_error(conn, format!("SCRAM exchange failed: {e}")))?;
                out.clear();
                frontend::sasl_response(scram.message(), &mut out)?;
                conn.stream.write_all(&out).await?;
            }
            auth::SASL_FINAL => {
                scram.finish(data).map_err(|e| {
                    auth_error(conn, format!("SCRAM server signature invalid: {e}"))
                })?;
            }
            auth::OK => return Ok(()),
            _ => return Err(ServerError::Unexpected('R')),
        }
    }
}

/// Reads ParameterStatus and BackendKeyData up to the first ReadyForQuery.
async fn read_info(conn: &mut ServerConn) -> Result<(), ServerError> {
    loop {
        let msg = next(conn).await?;
        match msg.tag {
            backend::PARAMETER_STATUS => conn.params.record_status(&msg.body),
            backend::BACKEND_KEY_DATA if msg.body.len() >= 8 => {
                let b = &msg.body;
                conn.key = BackendKey {
                    pid: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    secret: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                };
            }
            backend::READY_FOR_QUERY => return Ok(()),
            backend::NOTICE_RESPONSE => {}
            other => return Err(ServerError::Unexpected(other as char)),
        }
    }
}
