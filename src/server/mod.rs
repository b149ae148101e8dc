//! One backend connection: connecting and logging in ([`login`]), the session parameters it
//! carries ([`params`]), and the small request/response exchanges pgwarden runs on it itself
//! (parameter sync, reset). The relay moves a client's bytes over it without going through here.

pub mod exchange;
pub mod login;
pub mod params;
mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::protocol::errors::parse_error_fields;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::tags::backend;
use crate::protocol::{messages, sqlstate, PgError, TransactionStatus};
use crate::stream::Stream;

pub use login::{connect, Credential, ServerTarget, ServerTls};

/// What SET, RESET and set_config left in the session. `session_authorization` and `role`
/// are hidden from pg_settings (`GUC_NO_SHOW_ALL`), so they are asked for by name, in the
/// order they must be applied again (setting the session authorization resets the role).
const SESSION_SETTINGS: &str =
    "SELECT 'session_authorization', pg_catalog.current_setting('session_authorization') \
     UNION ALL SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings \
     WHERE source = 'session' \
     UNION ALL SELECT 'role', pg_catalog.current_setting('role') \
     WHERE pg_catalog.current_setting('role') <> 'none'";

/// What session state the backend holds that cannot move to another server, asked at a
/// transaction boundary (outside any transaction, so every advisory lock left is a
/// session-level one and every open cursor a holdable one). Statements pgwarden prepares
/// itself (`pgw_…`) are not the client's.
const HELD_STATE: &str = "SELECT \
     (SELECT count(*) FROM pg_catalog.pg_locks \
       WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory'), \
     (SELECT count(*) FROM pg_catalog.pg_listening_channels()), \
     (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
     (SELECT count(*) FROM pg_catalog.pg_class \
       WHERE relnamespace = pg_catalog.pg_my_temp_schema()), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements \
       WHERE from_sql AND pg_catalog.left(name, 4) <> 'pgw_'), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements \
       WHERE NOT from_sql AND pg_catalog.left(name, 4) <> 'pgw_')";

/// Session state a backend holds, as [`ServerConn::held_state`] counts it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub advisory_locks: i64,
    pub listens: i64,
    pub hold_cursors: i64,
    pub temp_objects: i64,
    pub sql_statements: i64,
    pub protocol_statements: i64,
}

/// Largest message accepted whole from a server during pgwarden's own exchanges.
const MAX_SERVER_MESSAGE: u32 = 64 * 1024 * 1024;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Why a backend connection failed or was given up.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to server {addr} (server_connect_timeout = {timeout:?})")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("server refused login: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
    #[error("cannot log in to server as \"{user}\": {reason}")]
    Auth { user: String, reason: String },
    #[error("server sent an unexpected message {0:?}")]
    Unexpected(char),
    /// The server broke the protocol during login (what it sent, or closing mid-way).
    #[error("server broke the login protocol: {0}")]
    Protocol(String),
    #[error("server error {code}: {message}")]
    Query { code: String, message: String },
    #[error("server connection lost: {0}")]
    Read(#[from] ReadError),
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
}

/// SQLSTATEs with which Postgres refuses a login for now, not for good: too many
/// connections, and "the database system is starting up / shutting down".
const BACKPRESSURE: [&str; 2] = [sqlstate::TOO_MANY_CONNECTIONS, "57P03"];

impl ServerError {
    /// The server refused a login for lack of room (or while starting up): waiting and
    /// retrying later will work, so clients should keep waiting rather than fail.
    pub fn is_backpressure(&self) -> bool {
        matches!(self, ServerError::Refused { code, .. } if BACKPRESSURE.contains(&code.as_str()))
    }

    /// The error a client sees when its login or session fails because of the server.
    pub fn to_client_error(&self) -> PgError {
        match self {
            ServerError::Refused { code, message } | ServerError::Query { code, message } => {
                PgError::fatal(code.clone(), message.clone())
            }
            ServerError::Auth { .. } => {
                PgError::fatal(sqlstate::INVALID_AUTHORIZATION, self.to_string())
            }
            ServerError::Protocol(_) => {
                PgError::fatal(sqlstate::PROTOCOL_VIOLATION, self.to_string())
            }
            _ => PgError::fatal(sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH, self.to_string()),
        }
    }
}

/// The key a CancelRequest for this backend must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: i32,
}

/// A logged-in backend connection, idle (at ReadyForQuery `I`) whenever pgwarden holds it.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: Stream,
    /// Bytes read but not yet forwarded; empty whenever the server is idle.
    pub buf: BytesMut,
    pub id: u64,
    pub key: BackendKey,
    /// Where cancel requests for this backend go (`host:port` or a socket path).
    pub target: std::sync::Arc<ServerTarget>,
    pub params: params::ServerParams,
    /// Prepared statements pgwarden made here for clients (transaction pooling).
    pub statements: crate::prepared::ServerStatements,
    /// NotificationResponses that arrived during pgwarden's own queries: they are the
    /// client's (its LISTEN), and go to it after the query.
    pub notifications: BytesMut,
    pub created: Instant,
    pub last_used: Instant,
    /// Its entry in SHOW SERVERS, once its pool has listed it; unlisted with it.
    pub listing: Option<crate::stats::Listed<crate::stats::ServerInfo>>,
}

impl ServerConn {
    fn new(stream: Stream, target: std::sync::Arc<ServerTarget>) -> Self {
        let now = Instant::now();
        ServerConn {
            stream,
            buf: BytesMut::new(),
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            key: BackendKey { pid: 0, secret: 0 },
            target,
            params: params::ServerParams::default(),
            statements: Default::default(),
            notifications: BytesMut::new(),
            created: now,
            last_used: now,
            listing: None,
        }
    }

    /// Runs a simple-protocol query whose results pgwarden does not need, up to ReadyForQuery.
    pub async fn exec(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_rows(sql).await.map(drop)
    }

    /// Runs a query and returns its rows as text (NULL as `None`). ParameterStatus updates
    /// are recorded; an ErrorResponse becomes `ServerError::Query`. pgwarden runs its own
    /// queries only on idle servers, so anything but an idle ReadyForQuery is unexpected.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        messages::query(sql, &mut out);
        self.stream.write_all(&out).await?;
        let (mut rows, mut failure) = (Vec::new(), None);
        loop {
            let msg = read_message(&mut self.stream, &mut self.buf, MAX_SERVER_MESSAGE).await?;
            match msg.tag {
                backend::DATA_ROW => {
                    rows.push(data_row(&msg.body).ok_or(ServerError::Unexpected('D'))?)
                }
                backend::PARAMETER_STATUS => self.params.record_status(&msg.body),
                backend::NOTIFICATION => {
                    let out = &mut self.notifications;
                    out.extend_from_slice(&[backend::NOTIFICATION]);
                    out.extend_from_slice(&(msg.body.len() as u32 + 4).to_be_bytes());
                    out.extend_from_slice(&msg.body);
                }
                backend::ERROR_RESPONSE => {
                    let (code, message) = parse_error_fields(&msg.body);
                    failure = Some(ServerError::Query { code, message });
                }
                backend::READY_FOR_QUERY => {
                    return match (failure, TransactionStatus::from_body(&msg.body)) {
                        (Some(err), _) => Err(err),
                        (None, Some(TransactionStatus::Idle)) => Ok(rows),
                        (None, _) => Err(ServerError::Unexpected('Z')),
                    };
                }
                _ => {}
            }
        }
    }

    /// The session-level settings in effect (what SET, RESET and set_config left), read
    /// back from the server so they can follow the client to another server.
    pub async fn session_settings(&mut self) -> Result<Vec<(String, String)>, ServerError> {
        let rows = self.query_rows(SESSION_SETTINGS).await?;
        let login_user = self.target.user.clone();
        Ok(rows
            .into_iter()
            .filter_map(|mut row| {
                let value = row.pop()??;
                let name = row.pop()??;
                Some((name, value))
            })
            // The session authorization pgwarden logged in with is no setting of the client's.
            .filter(|(name, value)| name != "session_authorization" || *value != login_user)
            .collect())
    }

    /// What the backend holds that would pin its client (see [`HELD_STATE`]).
    pub async fn held_state(&mut self) -> Result<Held, ServerError> {
        let rows = self.query_rows(HELD_STATE).await?;
        let count = |i: usize| -> i64 {
            let cell = rows.first().and_then(|row| row.get(i)).cloned().flatten();
            cell.and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok(Held {
            advisory_locks: count(0),
            listens: count(1),
            hold_cursors: count(2),
            temp_objects: count(3),
            sql_statements: count(4),
            protocol_statements: count(5),
        })
    }

    /// Brings the server back to a fresh session with `reset_query` (e.g. `DISCARD ALL`).
    pub async fn reset(&mut self, reset_query: &str) -> Result<(), ServerError> {
        if !reset_query.is_empty() {
            self.exec(reset_query).await?;
        }
        self.params.after_reset();
        // DISCARD ALL or DEALLOCATE ALL would have dropped them; any other reset query
        // leaves statements pgwarden no longer knows about, so they are dropped here too.
        if !self.statements.is_empty() {
            if !reset_query.eq_ignore_ascii_case("discard all") {
                self.exec("DEALLOCATE ALL").await?;
            }
            self.statements.take_all();
        }
        Ok(())
    }

    /// Records a ParameterStatus the server sent while relaying to a client.
    pub fn record_status(&mut self, body: &[u8]) {
        self.params.record_status(body);
    }

    /// Sends Terminate so the backend exits cleanly; errors are irrelevant at this point.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&out)).await;
    }

    /// Parameter values reported by the server, as sent to a client at login.
    pub fn reported(&self) -> &BTreeMap<String, String> {
        self.params.reported()
    }
}

/// The columns of a DataRow body as text.
fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut pos = 2;
    let mut cols = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let value = body.get(pos..pos + len as usize)?;
        pos += len as usize;
        cols.push(Some(String::from_utf8_lossy(value).into_owned()));
    }
    Some(cols)
}
