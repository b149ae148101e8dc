//! Authenticating a client to pgwarden: the password, md5 and SCRAM exchanges over the
//! client's socket, up to (not including) AuthenticationOk.

use std::sync::OnceLock;

use bytes::{Buf as _, Bytes, BytesMut};
use dashmap::DashMap;
use pgwire::messages::startup::Authentication;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use crate::auth::AuthType;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages::authentication;
use crate::protocol::tags::frontend;
use crate::protocol::{sqlstate, PgError};

use super::scram::{self, ScramError, ScramServer, Verdict};
use super::secret::{md5_hex, md5_password_hash, ScramVerifier, Secret};

/// Why a client was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong password")]
    WrongPassword,
    /// Reported to the client exactly like [`AuthError::WrongPassword`], so that user names
    /// cannot be probed; only pgwarden's own logs can tell them apart.
    #[error("unknown user")]
    UnknownUser,
    /// The client broke the protocol or went away mid-exchange.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The configured method cannot work with the stored secret.
    #[error("{reason}")]
    Unsupported { reason: String },
}

/// How a client broke the authentication exchange.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("failed to write to client: {0}")]
    Write(#[from] std::io::Error),
    #[error("expected a password message, got message type {:?}", char::from(*.0))]
    UnexpectedMessage(u8),
    #[error("malformed password message: {0}")]
    Malformed(&'static str),
    #[error("client selected an invalid SASL authentication mechanism")]
    InvalidMechanism,
    #[error(transparent)]
    Scram(#[from] ScramError),
}

impl AuthError {
    /// The ErrorResponse to send before closing the connection.
    pub fn to_pg_error(&self, user: &str) -> PgError {
        match self {
            AuthError::WrongPassword | AuthError::UnknownUser => PgError::password_failed(user),
            AuthError::Protocol(e) => PgError::protocol_violation(e),
            AuthError::Unsupported { reason } => {
                PgError::fatal(sqlstate::INVALID_AUTHORIZATION, reason.clone())
            }
        }
    }
}

impl From<ReadError> for AuthError {
    fn from(e: ReadError) -> Self {
        AuthError::Protocol(e.into())
    }
}

impl From<ScramError> for AuthError {
    fn from(e: ScramError) -> Self {
        AuthError::Protocol(e.into())
    }
}

/// Runs `method` against the client. Sends the authentication requests and reads the
/// replies, but not AuthenticationOk: the caller sends that batched with what follows it.
///
/// `secret` is `None` for a user pgwarden does not know; the exchange then runs against a
/// mock secret and ends in [`AuthError::UnknownUser`], indistinguishable to the client from
/// a wrong password.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    method: AuthType,
    user: &str,
    secret: Option<&Secret>,
    max_packet: u32,
) -> Result<(), AuthError> {
    if method == AuthType::Trust {
        return Ok(());
    }
    let mut conn = Conn {
        stream,
        buf,
        max_packet,
    };
    match secret {
        None => mock_exchange(&mut conn, method, user, AuthError::UnknownUser).await,
        // Postgres refuses empty passwords outright; without this an empty entry in the
        // auth file would let anyone in who sends an empty password.
        Some(Secret::Plain(p)) if p.is_empty() => {
            mock_exchange(&mut conn, method, user, AuthError::WrongPassword).await
        }
        Some(secret) => exchange(&mut conn, method, user, secret).await,
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    method: AuthType,
    user: &str,
    secret: &Secret,
) -> Result<(), AuthError> {
    match (method, secret) {
        (AuthType::Trust, _) => Ok(()),
        (AuthType::Password, _) => {
            let password = conn.cleartext_password().await?;
            check_cleartext(&password, user, secret).await
        }
        // Like Postgres and PgBouncer: an md5 login cannot be checked against a SCRAM
        // verifier, but the client can do SCRAM instead.
        (AuthType::Md5 | AuthType::ScramSha256, Secret::Scram(verifier)) => {
            scram_exchange(conn, verifier).await
        }
        (AuthType::Md5, _) => md5_exchange(conn, user, secret).await,
        (AuthType::ScramSha256, Secret::Plain(password)) => {
            let verifier = verifier_for_plain(password).await;
            scram_exchange(conn, &verifier).await
        }
        (AuthType::ScramSha256, Secret::Md5(_)) => Err(AuthError::Unsupported {
            reason: format!(
                "cannot use SCRAM authentication with an md5-hashed password for user \"{user}\""
            ),
        }),
    }
}

/// The same exchange as for a real user, against a secret nobody knows, ending in `failure`.
async fn mock_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    method: AuthType,
    user: &str,
    failure: AuthError,
) -> Result<(), AuthError> {
    match method {
        AuthType::Trust => return Ok(()),
        AuthType::Password => drop(conn.cleartext_password().await?),
        AuthType::Md5 => drop(conn.md5_response(rand::random()).await?),
        AuthType::ScramSha256 => {
            let verifier = scram::mock_verifier(user, process_secret());
            match scram_exchange(conn, &verifier).await {
                Ok(()) | Err(AuthError::WrongPassword) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(failure)
}

/// Key for mock salts: random per process, so that an unknown user's salt is stable across
/// attempts (as a real user's is) but cannot be precomputed. Process-wide on purpose: it is
/// a constant for the process's life, like Postgres' mock authentication nonce.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

async fn check_cleartext(password: &[u8], user: &str, secret: &Secret) -> Result<(), AuthError> {
    let matches = match secret {
        Secret::Plain(expected) => expected.as_bytes().ct_eq(password).into(),
        Secret::Md5(expected) => {
            let hash = md5_password_hash(password, user);
            hash.as_bytes().ct_eq(expected.as_bytes()).into()
        }
        Secret::Scram(verifier) => {
            let derived = derive_verifier(password, &verifier.salt, verifier.iterations).await;
            derived.stored_key.ct_eq(&verifier.stored_key).into()
        }
    };
    if matches {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    user: &str,
    secret: &Secret,
) -> Result<(), AuthError> {
    // `exchange` routes SCRAM secrets elsewhere, so there is always an md5 hash here.
    let stored = secret.md5_hash(user);
    let Some(inner) = stored.as_deref().and_then(|h| h.strip_prefix("md5")) else {
        return Err(AuthError::Unsupported {
            reason: format!("cannot use md5 authentication for user \"{user}\""),
        });
    };
    let salt: [u8; 4] = rand::random();
    let response = conn.md5_response(salt).await?;
    // The client sends "md5" + md5(hex(md5(password || user)) || salt).
    let expected = format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]));
    if bool::from(expected.as_bytes().ct_eq(&response)) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    verifier: &ScramVerifier,
) -> Result<(), AuthError> {
    conn.send(Authentication::SASL(vec![scram::MECHANISM.to_owned()]))
        .await?;
    let client_first = match sasl_initial_response(conn.password_message().await?)? {
        Some(data) => data,
        // The client may hold its first message back until asked with an empty challenge.
        None => {
            conn.send(Authentication::SASLContinue(Bytes::new()))
                .await?;
            conn.password_message().await?
        }
    };
    let server = ScramServer::start(verifier, &client_first)?;
    let server_first = Bytes::copy_from_slice(server.server_first_message().as_bytes());
    conn.send(Authentication::SASLContinue(server_first))
        .await?;
    let client_final = conn.password_message().await?;
    match server.finish(&client_final)? {
        Verdict::Accepted { server_final } => {
            conn.send(Authentication::SASLFinal(server_final.into()))
                .await?;
            Ok(())
        }
        Verdict::Rejected => Err(AuthError::WrongPassword),
    }
}

/// PBKDF2 with thousands of iterations takes milliseconds of CPU, which must not stall the
/// other connections sharing this runtime thread.
/// The SCRAM verifier for a configured plain-text password, derived once per process.
/// PBKDF2 costs milliseconds by design; paying it on every login would let a reconnect storm
/// burn the proxy's CPU. Postgres, too, keeps one verifier (one salt) per password.
async fn verifier_for_plain(password: &str) -> ScramVerifier {
    static CACHE: OnceLock<DashMap<String, ScramVerifier>> = OnceLock::new();
    let cache = CACHE.get_or_init(DashMap::new);
    if let Some(verifier) = cache.get(password) {
        return verifier.clone();
    }
    let salt: [u8; scram::SALT_LEN] = rand::random();
    let verifier = derive_verifier(password.as_bytes(), &salt, scram::DEFAULT_ITERATIONS).await;
    cache.entry(password.to_owned()).or_insert(verifier).clone()
}

async fn derive_verifier(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
    let (password, salt) = (password.to_vec(), salt.to_vec());
    let derive = move || scram::verifier_from_bytes(&password, &salt, iterations);
    match tokio::task::spawn_blocking(derive).await {
        Ok(verifier) => verifier,
        // The derivation has no panics of its own; resurface any as they were.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Decodes a SASLInitialResponse: mechanism name, then an `Int32` length (-1: no data)
/// and that many bytes. Decoded here rather than by pgwire, whose decoder panics on
/// truncated bodies.
fn sasl_initial_response(mut body: BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
    let malformed = ProtocolError::Malformed;
    let nul = body
        .iter()
        .position(|b| *b == 0)
        .ok_or(malformed("unterminated SASL mechanism name"))?;
    if &body[..nul] != scram::MECHANISM.as_bytes() {
        return Err(ProtocolError::InvalidMechanism);
    }
    body.advance(nul + 1);
    if body.len() < 4 {
        return Err(malformed("truncated SASL initial response"));
    }
    let len = body.get_i32();
    match usize::try_from(len) {
        Ok(len) if len == body.len() => Ok(Some(body)),
        _ if len == -1 && body.is_empty() => Ok(None),
        _ => Err(malformed("SASL initial response length does not match")),
    }
}

/// The client's socket during authentication.
struct Conn<'a, S> {
    stream: &'a mut S,
    buf: &'a mut BytesMut,
    max_packet: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn send(&mut self, request: Authentication) -> Result<(), ProtocolError> {
        let mut out = BytesMut::new();
        authentication(request, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The body of the client's next message, which must be a password message ('p').
    async fn password_message(&mut self) -> Result<BytesMut, ProtocolError> {
        let message = read_message(self.stream, self.buf, self.max_packet).await?;
        if message.tag != frontend::PASSWORD {
            return Err(ProtocolError::UnexpectedMessage(message.tag));
        }
        Ok(message.body)
    }

    /// Asks for and reads a cleartext password: exactly one NUL-terminated string, taken as
    /// raw bytes (Postgres compares bytes, and lossy UTF-8 decoding could make two different
    /// passwords equal).
    async fn cleartext_password(&mut self) -> Result<Vec<u8>, ProtocolError> {
        self.send(Authentication::CleartextPassword).await?;
        self.c_string_reply().await
    }

    /// Sends an MD5 challenge with `salt` and reads the client's `md5…` response.
    async fn md5_response(&mut self, salt: [u8; 4]) -> Result<Vec<u8>, ProtocolError> {
        self.send(Authentication::MD5Password(salt.to_vec()))
            .await?;
        self.c_string_reply().await
    }

    async fn c_string_reply(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let mut body = self.password_message().await?;
        match body.iter().position(|b| *b == 0) {
            Some(nul) if nul + 1 == body.len() => {
                body.truncate(nul);
                Ok(body.to_vec())
            }
            _ => Err(ProtocolError::Malformed("invalid password packet size")),
        }
    }
}
