//! Our side of a server's login exchange, sans-IO: [`frame`] cuts the server's bytes into
//! messages under per-type caps (checked on the header, before anything is read), and
//! [`Exchange`] is fed each message and answers what to send, or why the login fails. The
//! server is not trusted: only the authentication methods the credential makes sense for
//! are accepted, a password goes in cleartext only over a channel allowed for it, and a
//! SCRAM exchange must complete with a valid server signature before AuthenticationOk.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use thiserror::Error;

use super::login::Credential;
use super::BackendKey;
use crate::protocol::errors::parse_error_fields;
use crate::protocol::tags::{auth, backend};

/// Largest authentication request or NegotiateProtocolVersion accepted, length field
/// included: libpq's limit. Real ones are under 200 bytes (a SCRAM server-first message
/// is about 100), so a 64 KB nonce or a mechanism list of megabytes is refused unread.
pub const MAX_AUTH_MESSAGE: u32 = 2000;
/// Largest ErrorResponse, NoticeResponse, ParameterStatus or BackendKeyData accepted
/// during login: libpq's limit for messages that are not result data. A login error is a
/// sentence or two, a reported parameter a short value.
pub const MAX_INFO_MESSAGE: u32 = 30_000;
/// Most SCRAM iterations pgwarden computes for a server. Postgres uses 4096 by default; a
/// hostile server could ask for 2^31 and keep a pgwarden thread hashing for hours.
pub const MAX_SCRAM_ITERATIONS: u32 = 100_000;
/// The SASL mechanism with channel binding, which pgwarden does not implement.
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The setting that lets a cleartext password go over plain TCP.
pub const ALLOW_CLEARTEXT: &str = "server_allow_cleartext_password";

/// Why a login exchange failed, and whose fault it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoginError {
    /// Postgres refused the login with this SQLSTATE and message.
    #[error("server refused login: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
    /// The server asked for what pgwarden will not or cannot answer.
    #[error("{0}")]
    Method(String),
    /// The server broke the protocol.
    #[error("server broke the login protocol: {0}")]
    Protocol(String),
}

/// The header of the next message in `buf`: `Ok(Some((tag, total length)))` once the
/// whole message is there, `Ok(None)` while more bytes are needed. Refused on the header
/// alone: a tag that has no place in a login, or a length over that tag's cap.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, usize)>, LoginError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let Some(max) = limit(tag) else {
        return Err(LoginError::Protocol(format!(
            "unexpected message type {:?} during login",
            tag as char
        )));
    };
    if !(4..=max).contains(&len) {
        return Err(LoginError::Protocol(format!(
            "message {:?} of {len} bytes during login (the most accepted is {max})",
            tag as char
        )));
    }
    let total = len as usize + 1;
    Ok((buf.len() >= total).then_some((tag, total)))
}

/// The cap for each message type a server may send during login; `None`: not allowed.
fn limit(tag: u8) -> Option<u32> {
    match tag {
        backend::AUTHENTICATION | backend::NEGOTIATE_PROTOCOL_VERSION => Some(MAX_AUTH_MESSAGE),
        backend::ERROR_RESPONSE
        | backend::NOTICE_RESPONSE
        | backend::PARAMETER_STATUS
        | backend::BACKEND_KEY_DATA
        | backend::READY_FOR_QUERY => Some(MAX_INFO_MESSAGE),
        _ => None,
    }
}

/// What to do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the server, then read on.
    Send(BytesMut),
    /// Read on.
    Read,
    /// A ParameterStatus: record its body, then read on.
    Parameter,
    /// The server's cancel key; read on.
    Key(BackendKey),
    /// ReadyForQuery: the connection is logged in.
    Ready,
}

/// Where the exchange stands.
enum State {
    /// Nothing asked yet.
    Start,
    /// Client-first sent; the server's first SCRAM message is due.
    ScramFirst(Box<ScramSha256>, String),
    /// Client-final sent; the server's signature is due.
    ScramFinal(Box<ScramSha256>),
    /// The answer is sent (or SCRAM verified): only AuthenticationOk may come.
    OkDue,
    /// Logged in; parameters and the cancel key until ReadyForQuery.
    Info,
    /// ReadyForQuery seen, or failed: nothing more is accepted.
    Over,
}

/// Our side of one login exchange with a server.
pub struct Exchange<'a> {
    user: &'a str,
    credential: &'a Credential,
    /// Whether a cleartext password may be sent on this connection.
    cleartext_ok: bool,
    state: State,
}

impl<'a> Exchange<'a> {
    /// `cleartext_ok`: the connection is encrypted or a Unix socket, or
    /// `server_allow_cleartext_password` is set.
    pub fn new(user: &'a str, credential: &'a Credential, cleartext_ok: bool) -> Self {
        Exchange {
            user,
            credential,
            cleartext_ok,
            state: State::Start,
        }
    }

    /// Takes the next whole message from the server (`tag`, body without header).
    pub fn feed(&mut self, tag: u8, body: &[u8]) -> Result<Step, LoginError> {
        let step = self.step(tag, body);
        if step.is_err() {
            self.state = State::Over;
        }
        step
    }

    fn step(&mut self, tag: u8, body: &[u8]) -> Result<Step, LoginError> {
        if matches!(self.state, State::Over) {
            return Err(protocol("message after the login ended".into()));
        }
        match tag {
            backend::ERROR_RESPONSE => return Err(refused(body)),
            backend::NOTICE_RESPONSE => return Ok(Step::Read),
            _ => {}
        }
        match std::mem::replace(&mut self.state, State::Over) {
            State::Start if tag == backend::NEGOTIATE_PROTOCOL_VERSION => {
                self.state = State::Start;
                Ok(Step::Read)
            }
            State::Start if tag == backend::AUTHENTICATION => self.request(body),
            State::ScramFirst(scram, nonce) if tag == backend::AUTHENTICATION => {
                self.server_first(scram, &nonce, body)
            }
            State::ScramFinal(scram) if tag == backend::AUTHENTICATION => {
                self.server_final(*scram, body)
            }
            State::OkDue if tag == backend::AUTHENTICATION => match request(body)? {
                (auth::OK, []) => self.logged_in(),
                (code, _) => Err(protocol(format!(
                    "authentication request {code} after the SCRAM exchange completed"
                ))),
            },
            State::Info => self.info(tag, body),
            _ => Err(protocol(format!(
                "unexpected message type {:?} during authentication",
                tag as char
            ))),
        }
    }

    /// The server's first authentication request: the method it wants.
    fn request(&mut self, body: &[u8]) -> Result<Step, LoginError> {
        let (code, data) = request(body)?;
        match code {
            auth::OK if data.is_empty() => self.trust(),
            auth::CLEARTEXT_PASSWORD if data.is_empty() => self.cleartext(),
            auth::MD5_PASSWORD => self.md5(data),
            auth::SASL => self.sasl(data),
            auth::OK | auth::CLEARTEXT_PASSWORD => {
                Err(protocol(format!("authentication request {code} too long")))
            }
            auth::SASL_CONTINUE | auth::SASL_FINAL => Err(protocol(format!(
                "authentication request {code} before any SASL exchange"
            ))),
            other => Err(LoginError::Method(format!(
                "server asks for {}, which pgwarden does not support",
                method_name(other)
            ))),
        }
    }

    fn trust(&mut self) -> Result<Step, LoginError> {
        self.logged_in()
    }

    fn logged_in(&mut self) -> Result<Step, LoginError> {
        self.state = State::Info;
        Ok(Step::Read)
    }

    fn cleartext(&mut self) -> Result<Step, LoginError> {
        let password = self.password("a cleartext password")?;
        if !self.cleartext_ok {
            return Err(LoginError::Method(format!(
                "server asks for the password in cleartext over an unencrypted connection; \
                 pgwarden sends it only over TLS or a Unix socket unless {ALLOW_CLEARTEXT} \
                 is set"
            )));
        }
        let mut out = BytesMut::new();
        frontend::password_message(password.as_bytes(), &mut out).map_err(encode)?;
        self.state = State::OkDue; // only AuthenticationOk may follow
        Ok(Step::Send(out))
    }

    fn md5(&mut self, data: &[u8]) -> Result<Step, LoginError> {
        let salt: [u8; 4] = data
            .try_into()
            .map_err(|_| protocol(format!("MD5 request with {} bytes of salt", data.len())))?;
        let hashed = match self.credential {
            Credential::Password(p) => md5_hash(self.user.as_bytes(), p.as_bytes(), salt),
            Credential::Md5Hash(h) => md5_of_hash(h, salt),
            Credential::None => return Err(self.no_password("an md5 password")),
        };
        let mut out = BytesMut::new();
        frontend::password_message(hashed.as_bytes(), &mut out).map_err(encode)?;
        self.state = State::OkDue;
        Ok(Step::Send(out))
    }

    fn sasl(&mut self, data: &[u8]) -> Result<Step, LoginError> {
        let mechanisms = sasl_mechanisms(data)?;
        if !mechanisms.contains(&SCRAM_SHA_256) {
            let offered = mechanisms.join(", ");
            let why = match mechanisms.contains(&SCRAM_SHA_256_PLUS) {
                true => "pgwarden does not implement channel binding",
                false => "pgwarden supports only SCRAM-SHA-256",
            };
            return Err(LoginError::Method(format!(
                "server offers SASL mechanisms {offered}; {why}"
            )));
        }
        let password = self.password("SCRAM-SHA-256")?;
        let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let first = scram.message();
        let nonce = client_nonce(first).unwrap_or_default().to_owned();
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, first, &mut out).map_err(encode)?;
        self.state = State::ScramFirst(Box::new(scram), nonce);
        Ok(Step::Send(out))
    }

    fn server_first(
        &mut self,
        mut scram: Box<ScramSha256>,
        nonce: &str,
        body: &[u8],
    ) -> Result<Step, LoginError> {
        let data = match request(body)? {
            (auth::SASL_CONTINUE, data) => data,
            (auth::OK, _) => {
                return Err(protocol(
                    "AuthenticationOk before the SCRAM exchange completed".into(),
                ))
            }
            (code, _) => return Err(protocol(format!("{code} where SASLContinue was due"))),
        };
        check_server_first(data, nonce)?;
        scram
            .update(data)
            .map_err(|e| LoginError::Method(format!("SCRAM exchange failed: {e}")))?;
        let mut out = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut out).map_err(encode)?;
        self.state = State::ScramFinal(scram);
        Ok(Step::Send(out))
    }

    fn server_final(&mut self, mut scram: ScramSha256, body: &[u8]) -> Result<Step, LoginError> {
        match request(body)? {
            (auth::SASL_FINAL, data) => {
                scram.finish(data).map_err(|e| {
                    LoginError::Method(format!("SCRAM server signature invalid: {e}"))
                })?;
                self.state = State::OkDue;
                Ok(Step::Read)
            }
            (auth::OK, _) => Err(protocol(
                "AuthenticationOk before the server proved its SCRAM signature".into(),
            )),
            (code, _) => Err(protocol(format!("{code} where SASLFinal was due"))),
        }
    }

    /// After AuthenticationOk: parameters and the cancel key, until ReadyForQuery.
    fn info(&mut self, tag: u8, body: &[u8]) -> Result<Step, LoginError> {
        self.state = State::Info;
        match tag {
            backend::PARAMETER_STATUS => Ok(Step::Parameter),
            backend::BACKEND_KEY_DATA => match body {
                [a, b, c, d, e, f, g, h] => Ok(Step::Key(BackendKey {
                    pid: i32::from_be_bytes([*a, *b, *c, *d]),
                    secret: i32::from_be_bytes([*e, *f, *g, *h]),
                })),
                _ => Err(protocol(format!(
                    "BackendKeyData of {} bytes (8 expected)",
                    body.len()
                ))),
            },
            backend::READY_FOR_QUERY => {
                self.state = State::Over;
                Ok(Step::Ready)
            }
            other => Err(protocol(format!(
                "unexpected message type {:?} after authentication",
                other as char
            ))),
        }
    }

    fn password(&self, method: &str) -> Result<&'a str, LoginError> {
        match self.credential {
            Credential::Password(p) => Ok(p),
            Credential::Md5Hash(_) => Err(LoginError::Method(format!(
                "server asks for {method} but only an md5 hash of the password is configured"
            ))),
            Credential::None => Err(self.no_password(method)),
        }
    }

    fn no_password(&self, method: &str) -> LoginError {
        LoginError::Method(format!(
            "server asks for {method} but no password is configured"
        ))
    }
}

/// An ErrorResponse during login. Postgres always sends a SQLSTATE; one without is not
/// passed on as if it were Postgres' verdict.
fn refused(body: &[u8]) -> LoginError {
    let (code, message) = parse_error_fields(body);
    if code.len() != 5 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return protocol(format!(
            "ErrorResponse without a valid SQLSTATE during login: {message:?}"
        ));
    }
    LoginError::Refused { code, message }
}

/// The request code and the rest of an authentication message body.
fn request(body: &[u8]) -> Result<(i32, &[u8]), LoginError> {
    match body.split_first_chunk::<4>() {
        Some((code, rest)) => Ok((i32::from_be_bytes(*code), rest)),
        None => Err(protocol(format!(
            "authentication request of {} bytes",
            body.len()
        ))),
    }
}

/// The mechanisms of an AuthenticationSASL body: strings, each NUL-terminated, then a NUL.
fn sasl_mechanisms(data: &[u8]) -> Result<Vec<&str>, LoginError> {
    let list = data
        .strip_suffix(&[0, 0])
        .ok_or_else(|| protocol("malformed SASL mechanism list".into()))?;
    list.split(|b| *b == 0)
        .map(|m| std::str::from_utf8(m).ok().filter(|m| !m.is_empty()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| protocol("malformed SASL mechanism list".into()))
}

/// The nonce of our client-first message (`n,,n=,r=NONCE`).
fn client_nonce(first: &[u8]) -> Option<&str> {
    std::str::from_utf8(first).ok()?.split(",r=").nth(1)
}

/// What the SCRAM library does not check before it starts hashing: the server nonce
/// extends ours, and the iteration count is within [`MAX_SCRAM_ITERATIONS`].
fn check_server_first(data: &[u8], nonce: &str) -> Result<(), LoginError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| protocol("SCRAM server-first message is not UTF-8".into()))?;
    let field = |key: &str| text.split(',').find_map(|f| f.strip_prefix(key));
    let server_nonce = field("r=").unwrap_or_default();
    if nonce.is_empty() || server_nonce.len() <= nonce.len() || !server_nonce.starts_with(nonce) {
        return Err(LoginError::Method(
            "SCRAM server nonce does not extend pgwarden's".into(),
        ));
    }
    let iterations = field("i=").and_then(|i| i.parse::<u32>().ok());
    match iterations {
        Some(i) if (1..=MAX_SCRAM_ITERATIONS).contains(&i) => Ok(()),
        Some(i) => Err(LoginError::Method(format!(
            "server asks for {i} SCRAM iterations; pgwarden computes at most \
             {MAX_SCRAM_ITERATIONS}"
        ))),
        None => Err(protocol(
            "SCRAM server-first message without a valid i=".into(),
        )),
    }
}

/// The md5 answer from a stored `md5…` hash: `md5(hash_hex + salt)`.
fn md5_of_hash(hash: &str, salt: [u8; 4]) -> String {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    md5.update(hash.trim_start_matches("md5").as_bytes());
    md5.update(salt);
    format!("md5{:x}", md5.finalize())
}

fn method_name(code: i32) -> String {
    match code {
        2 => "Kerberos V5 authentication".into(),
        6 => "SCM credential authentication".into(),
        7 | 8 => "GSSAPI authentication".into(),
        9 => "SSPI authentication".into(),
        other => format!("authentication method {other}"),
    }
}

fn protocol(what: String) -> LoginError {
    LoginError::Protocol(what)
}

/// Encoding our own messages fails only on an interior NUL (a password with one).
fn encode(err: std::io::Error) -> LoginError {
    LoginError::Method(format!("cannot encode the answer: {err}"))
}

#[cfg(test)]
mod tests;
