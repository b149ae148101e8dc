//! Authenticating a client to pgwarden: the password, md5 and SCRAM exchanges over the
//! client's socket, up to (not including) AuthenticationOk.
//!
//! Users pgwarden does not know, and users whose secret the method cannot check, go
//! through the same motions as everybody else and fail as a wrong password does, as in
//! Postgres: what a client sees must not tell which user names exist or what they store.

use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::Authentication;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tracing::warn;

use crate::auth::AuthType;
use crate::protocol::framing::FramingError;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages::authentication;
use crate::protocol::tags::frontend;
use crate::protocol::PgError;

use super::logins::{derive_verifier, Logins, Md5Lookalike};
use super::messages::{self, Expected, MessageError};
use super::sasl::{Reply, SaslExchange};
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
    /// `auth_type = scram-sha-256` and the user's secret is an md5 hash, which SCRAM cannot
    /// check. Reported like a wrong password, as Postgres does ("User … does not have a
    /// valid SCRAM secret" goes to its log only).
    #[error("the user's secret is an md5 hash, which SCRAM authentication cannot check")]
    NoScramSecret,
    /// The client broke the protocol or went away mid-exchange.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
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
    #[error(transparent)]
    Message(#[from] MessageError),
}

impl AuthError {
    /// The ErrorResponse to send before closing the connection.
    pub fn to_pg_error(&self, user: &str) -> PgError {
        match self {
            AuthError::WrongPassword | AuthError::UnknownUser | AuthError::NoScramSecret => {
                PgError::password_failed(user)
            }
            AuthError::Protocol(e) => PgError::protocol_violation(e),
        }
    }
}

impl From<MessageError> for AuthError {
    fn from(e: MessageError) -> Self {
        AuthError::Protocol(e.into())
    }
}

/// The exchange a login runs.
enum Plan<'a> {
    Cleartext(&'a Secret),
    /// An MD5 challenge answered against this `md5…` hash.
    Md5(String),
    Scram(&'a ScramVerifier),
    /// SCRAM against the verifier derived from this plain password.
    PlainScram(&'a str),
    /// The motions of `method` against a secret nobody knows, ending in `failure`.
    Mock {
        method: Mock,
        failure: AuthError,
    },
}

#[derive(Clone, Copy)]
enum Mock {
    Cleartext,
    Md5,
    Scram,
}

/// Which exchange `method` runs for a user with `secret` (`None`: unknown). Like Postgres:
/// md5 with a SCRAM verifier switches to SCRAM; SCRAM with an md5 hash runs a mock SCRAM
/// exchange; an unknown user gets what most users get; an empty stored password never
/// matches (Postgres refuses to store one).
fn plan<'a>(logins: &Logins, method: AuthType, user: &str, secret: Option<&'a Secret>) -> Plan<'a> {
    let mock = |method, failure| Plan::Mock { method, failure };
    let unknown_md5 = match logins.common().md5 {
        Md5Lookalike::Md5 => Mock::Md5,
        Md5Lookalike::Scram => Mock::Scram,
    };
    let as_mock = match method {
        AuthType::Trust | AuthType::Password => Mock::Cleartext,
        AuthType::Md5 => Mock::Md5,
        AuthType::ScramSha256 => Mock::Scram,
    };
    let Some(secret) = secret else {
        let method = if method == AuthType::Md5 {
            unknown_md5
        } else {
            as_mock
        };
        return mock(method, AuthError::UnknownUser);
    };
    match (method, secret) {
        (_, Secret::Plain(p)) if p.is_empty() => mock(as_mock, AuthError::WrongPassword),
        (AuthType::Trust | AuthType::Password, _) => Plan::Cleartext(secret),
        (AuthType::Md5 | AuthType::ScramSha256, Secret::Scram(verifier)) => Plan::Scram(verifier),
        (AuthType::Md5, Secret::Md5(hash)) => Plan::Md5(hash.clone()),
        (AuthType::Md5, Secret::Plain(p)) => Plan::Md5(md5_password_hash(p.as_bytes(), user)),
        (AuthType::ScramSha256, Secret::Plain(password)) => Plan::PlainScram(password),
        (AuthType::ScramSha256, Secret::Md5(_)) => mock(Mock::Scram, AuthError::NoScramSecret),
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
    logins: &Logins,
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
    match plan(logins, method, user, secret) {
        Plan::Cleartext(secret) => {
            let password = conn.cleartext_password().await?;
            check_cleartext(&password, user, secret).await
        }
        Plan::Md5(hash) => md5_exchange(&mut conn, &hash).await,
        Plan::Scram(verifier) => scram_exchange(&mut conn, verifier.clone()).await,
        Plan::PlainScram(password) => {
            let verifier = logins.plain_verifier(user, password).await;
            scram_exchange(&mut conn, verifier).await
        }
        Plan::Mock { method, failure } => {
            if matches!(failure, AuthError::NoScramSecret) {
                warn!(user, "{failure}; the login fails as with a wrong password");
            }
            match method {
                Mock::Cleartext => drop(conn.cleartext_password().await?),
                Mock::Md5 => drop(conn.md5_response(rand::random()).await?),
                Mock::Scram => match scram_exchange(&mut conn, logins.mock_verifier(user)).await {
                    Ok(()) | Err(AuthError::WrongPassword) => {}
                    Err(e) => return Err(e),
                },
            }
            Err(failure)
        }
    }
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

/// An MD5 challenge against `stored`, the `md5…` hash Postgres would keep.
async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    stored: &str,
) -> Result<(), AuthError> {
    let salt: [u8; 4] = rand::random();
    let response = conn.md5_response(salt).await?;
    if md5_matches(stored, salt, &response) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

/// Whether `response` answers an MD5 challenge with `salt` for the stored hash: the client
/// sends "md5" + md5(hex(md5(password || user)) || salt). Constant time.
pub fn md5_matches(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let expected = format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]));
    expected.as_bytes().ct_eq(response).into()
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    verifier: ScramVerifier,
) -> Result<(), AuthError> {
    conn.send(Authentication::SASL(vec![
        super::scram::MECHANISM.to_owned()
    ]))
    .await?;
    let mut exchange = SaslExchange::new(verifier);
    loop {
        let body = conn.password_message(exchange.expected()).await?;
        match exchange.feed(&body)? {
            Reply::Continue(data) => {
                conn.send(Authentication::SASLContinue(Bytes::from(data)))
                    .await?
            }
            Reply::Accepted(server_final) => {
                conn.send(Authentication::SASLFinal(server_final.into()))
                    .await?;
                return Ok(());
            }
            Reply::Rejected => return Err(AuthError::WrongPassword),
        }
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

    /// The body of the client's next message, which must be a password message ('p') of
    /// at most `expected`'s cap: a longer one is refused on its header, unread.
    async fn password_message(&mut self, expected: Expected) -> Result<BytesMut, ProtocolError> {
        let max = expected.max_len().min(self.max_packet);
        let message = match read_message(self.stream, self.buf, max).await {
            Ok(message) => message,
            Err(ReadError::Framing(FramingError::TooLong { len, max, .. })) => {
                let what = expected.name();
                return Err(MessageError::TooLong { what, len, max }.into());
            }
            Err(e) => return Err(e.into()),
        };
        if message.tag != frontend::PASSWORD {
            return Err(ProtocolError::UnexpectedMessage(message.tag));
        }
        Ok(message.body)
    }

    /// Asks for and reads a cleartext password.
    async fn cleartext_password(&mut self) -> Result<Vec<u8>, ProtocolError> {
        self.send(Authentication::CleartextPassword).await?;
        self.password_reply().await
    }

    /// Sends an MD5 challenge with `salt` and reads the client's `md5…` response.
    async fn md5_response(&mut self, salt: [u8; 4]) -> Result<Vec<u8>, ProtocolError> {
        self.send(Authentication::MD5Password(salt.to_vec()))
            .await?;
        self.password_reply().await
    }

    async fn password_reply(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let body = self.password_message(Expected::Password).await?;
        Ok(messages::password(&body)?.to_vec())
    }
}
