//! The decisions of the SSLRequest exchange, on both sides, without I/O.

use super::SslMode;

/// What pgwarden answers a client's SSLRequest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `S`, then the TLS handshake.
    Accept,
    /// `N`: the client goes on in plaintext (or gives up, if it requires TLS).
    Refuse,
}

/// The answer to a client's SSLRequest: TLS when this side has it and the client is on
/// TCP (on a Unix socket Postgres answers `N` too).
pub fn client_ssl_request(mode: SslMode, has_tls: bool, over_tcp: bool) -> Answer {
    match mode.enabled() && has_tls && over_tcp {
        true => Answer::Accept,
        false => Answer::Refuse,
    }
}

/// Whether a client that did not (or could not) start TLS may log in in plaintext: not on
/// TCP when the mode requires TLS. Unix-socket clients are local and never encrypt.
pub fn client_plaintext_allowed(mode: SslMode, over_tcp: bool) -> bool {
    !(mode.required() && over_tcp)
}

/// Whether pgwarden sends an SSLRequest before logging in to a server.
pub fn asks_server(mode: SslMode, over_tcp: bool) -> bool {
    mode.enabled() && over_tcp
}

/// What follows a server's one-byte answer to the SSLRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAnswer {
    Handshake,
    Plaintext,
}

/// Why a server's answer ends the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerRefusal {
    #[error("server does not support TLS, and server_tls_sslmode is {0}")]
    NoTls(SslMode),
    #[error("server answered the SSLRequest with an error")]
    Error,
    #[error(
        "server sent more than its one-byte answer to the SSLRequest before the TLS handshake"
    )]
    ExtraBytes,
    #[error("server answered the SSLRequest with {0:?}, neither S nor N")]
    Unknown(char),
}

/// The server's answer `byte` under `mode`; `extra` says whether more bytes than that one
/// had arrived (after `S` they would have been sent before the handshake, in plaintext:
/// CVE-2021-23222).
pub fn server_answer(mode: SslMode, byte: u8, extra: bool) -> Result<ServerAnswer, ServerRefusal> {
    match byte {
        b'S' if extra => Err(ServerRefusal::ExtraBytes),
        b'S' => Ok(ServerAnswer::Handshake),
        b'N' if mode.required() => Err(ServerRefusal::NoTls(mode)),
        b'N' if extra => Err(ServerRefusal::ExtraBytes),
        b'N' => Ok(ServerAnswer::Plaintext),
        b'E' => Err(ServerRefusal::Error),
        other => Err(ServerRefusal::Unknown(other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SslMode::*;

    #[test]
    fn clients_get_tls_only_on_tcp_with_a_certificate() {
        assert_eq!(client_ssl_request(Require, true, true), Answer::Accept);
        assert_eq!(client_ssl_request(Prefer, true, true), Answer::Accept);
        assert_eq!(client_ssl_request(Require, true, false), Answer::Refuse);
        assert_eq!(client_ssl_request(Disable, true, true), Answer::Refuse);
        assert_eq!(client_ssl_request(Require, false, true), Answer::Refuse);
    }

    #[test]
    fn required_modes_refuse_plaintext_on_tcp_only() {
        for mode in [Require, VerifyCa, VerifyFull] {
            assert!(!client_plaintext_allowed(mode, true));
            assert!(client_plaintext_allowed(mode, false));
        }
        for mode in [Disable, Allow, Prefer] {
            assert!(client_plaintext_allowed(mode, true));
        }
    }

    #[test]
    fn server_answers_by_mode() {
        assert!(!asks_server(Disable, true) && !asks_server(VerifyFull, false));
        assert!(asks_server(Prefer, true));
        assert_eq!(
            server_answer(Prefer, b'S', false),
            Ok(ServerAnswer::Handshake)
        );
        assert_eq!(
            server_answer(Prefer, b'N', false),
            Ok(ServerAnswer::Plaintext)
        );
        assert_eq!(
            server_answer(Allow, b'N', false),
            Ok(ServerAnswer::Plaintext)
        );
        assert_eq!(
            server_answer(Require, b'N', false),
            Err(ServerRefusal::NoTls(Require))
        );
        assert_eq!(
            server_answer(VerifyFull, b'N', false),
            Err(ServerRefusal::NoTls(VerifyFull))
        );
        assert_eq!(
            server_answer(Require, b'S', true),
            Err(ServerRefusal::ExtraBytes)
        );
        assert_eq!(
            server_answer(Prefer, b'N', true),
            Err(ServerRefusal::ExtraBytes)
        );
        assert_eq!(
            server_answer(Prefer, b'E', false),
            Err(ServerRefusal::Error)
        );
        assert_eq!(
            server_answer(Prefer, b'x', false),
            Err(ServerRefusal::Unknown('x'))
        );
    }
}
