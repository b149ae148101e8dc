//! The server side of a SASL (SCRAM-SHA-256) exchange without I/O: fed the body of each
//! password message the client sends, it says what to answer. The socket loop in
//! [`super::client`] only moves bytes; this is what the fuzz target drives.

use super::messages::{self, Expected, MessageError};
use super::scram::{ScramServer, Verdict};
use super::secret::ScramVerifier;

/// Where the exchange stands.
enum State {
    /// AuthenticationSASL sent; the SASLInitialResponse is next.
    Initial(ScramVerifier),
    /// The SASLInitialResponse carried no data; the client-first-message comes in a
    /// SASLResponse to the empty SASLContinue.
    ClientFirst(ScramVerifier),
    /// server-first-message sent; the client-final-message is next.
    ClientFinal(ScramServer),
    Ended,
}

/// What to answer a client's message with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// AuthenticationSASLContinue with this data; another message is owed.
    Continue(Vec<u8>),
    /// The proof is right: AuthenticationSASLFinal with this server-final-message.
    Accepted(String),
    /// The proof is wrong (or the verifier a mock): the password failed.
    Rejected,
}

/// One client's SCRAM exchange against `verifier`.
pub struct SaslExchange {
    state: State,
}

impl SaslExchange {
    /// An exchange that starts once AuthenticationSASL has gone out.
    pub fn new(verifier: ScramVerifier) -> Self {
        SaslExchange {
            state: State::Initial(verifier),
        }
    }

    /// The message the client owes next (and so its size cap).
    pub fn expected(&self) -> Expected {
        match self.state {
            State::Initial(_) => Expected::SaslInitialResponse,
            _ => Expected::SaslResponse,
        }
    }

    /// Takes the body of the client's next password message. After `Accepted`, `Rejected`
    /// or an error the exchange has ended, and any further message is an error.
    pub fn feed(&mut self, body: &[u8]) -> Result<Reply, MessageError> {
        match std::mem::replace(&mut self.state, State::Ended) {
            State::Initial(verifier) => match messages::sasl_initial_response(body)? {
                Some(client_first) => self.start(&verifier, client_first),
                None => {
                    // The client holds its first message back until asked with an empty
                    // challenge.
                    self.state = State::ClientFirst(verifier);
                    Ok(Reply::Continue(Vec::new()))
                }
            },
            State::ClientFirst(verifier) => self.start(&verifier, body),
            State::ClientFinal(server) => Ok(match server.finish(body)? {
                Verdict::Accepted { server_final } => Reply::Accepted(server_final),
                Verdict::Rejected => Reply::Rejected,
            }),
            State::Ended => Err(MessageError::AfterEnd),
        }
    }

    fn start(
        &mut self,
        verifier: &ScramVerifier,
        client_first: &[u8],
    ) -> Result<Reply, MessageError> {
        let server = ScramServer::start(verifier, client_first)?;
        let server_first = server.server_first_message().as_bytes().to_vec();
        self.state = State::ClientFinal(server);
        Ok(Reply::Continue(server_first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::verifier_from_password;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn initial(data: Option<&[u8]>) -> Vec<u8> {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        match data {
            Some(d) => {
                body.extend_from_slice(&(d.len() as i32).to_be_bytes());
                body.extend_from_slice(d);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        body
    }

    /// Runs the exchange against postgres-protocol's client; `deferred` holds the first
    /// message back until the empty challenge.
    fn run(password: &str, attempt: &str, deferred: bool) -> Reply {
        let verifier = verifier_from_password(password, b"0123456789abcdef", 4096);
        let mut exchange = SaslExchange::new(verifier);
        let mut client = ScramSha256::new(attempt.as_bytes(), ChannelBinding::unrequested());
        assert_eq!(exchange.expected(), Expected::SaslInitialResponse);
        let first = if deferred {
            let empty = exchange.feed(&initial(None)).unwrap();
            assert_eq!(empty, Reply::Continue(Vec::new()));
            exchange.feed(client.message()).unwrap()
        } else {
            exchange.feed(&initial(Some(client.message()))).unwrap()
        };
        let Reply::Continue(server_first) = first else {
            panic!("expected server-first, got {first:?}");
        };
        assert_eq!(exchange.expected(), Expected::SaslResponse);
        client.update(&server_first).unwrap();
        let reply = exchange.feed(client.message()).unwrap();
        if let Reply::Accepted(server_final) = &reply {
            client.finish(server_final.as_bytes()).unwrap();
        }
        assert!(matches!(
            exchange.feed(b"more"),
            Err(MessageError::AfterEnd)
        ));
        reply
    }

    #[test]
    fn right_and_wrong_passwords_with_and_without_initial_data() {
        for deferred in [false, true] {
            assert!(matches!(run("pw", "pw", deferred), Reply::Accepted(_)));
            assert_eq!(run("pw", "nope", deferred), Reply::Rejected);
        }
    }

    #[test]
    fn an_error_ends_the_exchange() {
        let verifier = verifier_from_password("pw", b"salt", 1);
        let mut exchange = SaslExchange::new(verifier);
        assert!(exchange.feed(&initial(Some(b"junk"))).is_err());
        assert!(matches!(
            exchange.feed(b"n,,n=,r=x"),
            Err(MessageError::AfterEnd)
        ));
    }
}
