//! Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as Postgres speaks it: message parsing,
//! proof verification and verifier derivation. Pure functions, no IO.
//!
//! Passwords: like Postgres (and libpq, which does the same on its side), a password is
//! run through SASLprep (RFC 4013) before hashing, and used as its raw bytes when it is not
//! UTF-8 or SASLprep refuses it. Without this, a password SASLprep changes (say one with a
//! spacing accent, which NFKC decomposes) would derive a verifier no client could match.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::secret::ScramVerifier;

/// The only mechanism offered: pgwarden has no TLS, so no `-PLUS` channel binding.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations for verifiers pgwarden derives itself (Postgres' default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length for verifiers pgwarden derives itself (Postgres' default).
pub const SALT_LEN: usize = 16;
/// Random bytes in the server's part of the nonce (Postgres' `SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// Why a client's SCRAM message was refused. All of these are protocol violations; a wrong
/// password is not an error here but [`Verdict::Rejected`].
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error(
        "client requested SCRAM channel binding, but only {MECHANISM} without channel binding \
         is offered"
    )]
    ChannelBindingRequested,
    #[error("SCRAM channel binding data does not match the client's first message")]
    ChannelBindingMismatch,
    #[error("client uses a SCRAM authorization identity, which is not supported")]
    AuthzidUnsupported,
    #[error("client requires an unsupported SCRAM extension")]
    ExtensionUnsupported,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
}

/// How the exchange ended once the client's proof was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The proof is right; send this server-final-message (`v=…`) in SASLFinal.
    Accepted { server_final: String },
    /// The proof is wrong: the password does not match the verifier.
    Rejected,
}

/// The server's state between its first message and the client's final one.
#[derive(Debug)]
pub struct ScramServer {
    stored_key: [u8; 32],
    server_key: [u8; 32],
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce followed by the server's; the client must echo it.
    nonce: String,
}

impl ScramServer {
    /// Parses the client-first-message and prepares the server-first-message with a fresh
    /// random nonce.
    pub fn start(verifier: &ScramVerifier, client_first: &[u8]) -> Result<Self, ScramError> {
        let random: [u8; SERVER_NONCE_LEN] = rand::random();
        Self::start_with_nonce(verifier, client_first, &BASE64.encode(random))
    }

    /// [`start`](Self::start) with the server's part of the nonce given, so tests can replay
    /// published exchanges.
    fn start_with_nonce(
        verifier: &ScramVerifier,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<Self, ScramError> {
        let first = ClientFirst::parse(utf8(client_first)?)?;
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ScramServer {
            stored_key: verifier.stored_key,
            server_key: verifier.server_key,
            gs2_header: first.gs2_header.to_owned(),
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
        })
    }

    /// The server-first-message, to send in SASLContinue.
    pub fn server_first_message(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final-message: channel binding and nonce must match (else a
    /// protocol error), then the proof decides the verdict.
    pub fn finish(self, client_final: &[u8]) -> Result<Verdict, ScramError> {
        let last = ClientFinal::parse(utf8(client_final)?)?;
        if last.channel_binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if last.nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, last.without_proof
        );
        let client_signature = hmac(&self.stored_key, auth_message.as_bytes());
        let mut client_key = last.proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored_key.ct_eq(&self.stored_key)) {
            return Ok(Verdict::Rejected);
        }
        let server_signature = hmac(&self.server_key, auth_message.as_bytes());
        Ok(Verdict::Accepted {
            server_final: format!("v={}", BASE64.encode(server_signature)),
        })
    }
}

/// The parts of a client-first-message the exchange needs.
struct ClientFirst<'a> {
    /// `n,,` or `y,,`: echoed back (base64) in the client-final-message's `c=`.
    gs2_header: &'a str,
    /// The message without the gs2 header; part of the AuthMessage.
    bare: &'a str,
    nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    fn parse(msg: &'a str) -> Result<Self, ScramError> {
        let (cbind_flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        match cbind_flag {
            // "y": the client could bind but thinks we cannot. We indeed cannot (no TLS), so
            // there is no downgrade to detect.
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBindingRequested),
            _ => return Err(ScramError::Malformed("invalid channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::AuthzidUnsupported);
        }
        let gs2_header = &msg[..msg.len() - bare.len()];
        let mut attrs = bare.split(',');
        let mut user = attrs.next();
        if user.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::ExtensionUnsupported);
        }
        // Postgres takes the user from the startup packet and ignores this one; so do we,
        // but it must be present.
        attr(user.take(), 'n')?;
        let nonce = attr(attrs.next(), 'r')?;
        if nonce.is_empty() || !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ScramError::Malformed("nonce is not printable"));
        }
        // Any further extensions are optional by definition and ignored, as in Postgres.
        Ok(ClientFirst {
            gs2_header,
            bare,
            nonce,
        })
    }
}

/// The parts of a client-final-message the exchange needs.
struct ClientFinal<'a> {
    /// Decoded `c=` value: the gs2 header (no channel binding data is ever accepted).
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// The message up to (not including) `,p=`; part of the AuthMessage.
    without_proof: &'a str,
    proof: [u8; 32],
}

impl<'a> ClientFinal<'a> {
    fn parse(msg: &'a str) -> Result<Self, ScramError> {
        // The proof is the last attribute, and base64 never contains ','.
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let channel_binding = BASE64
            .decode(attr(attrs.next(), 'c')?)
            .map_err(|_| ScramError::Malformed("channel binding is not valid base64"))?;
        let nonce = attr(attrs.next(), 'r')?;
        let proof = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| <[u8; 32]>::try_from(p.as_slice()).ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        Ok(ClientFinal {
            channel_binding,
            nonce,
            without_proof,
            proof,
        })
    }
}

/// The value of attribute `name` (`name=value`), which must be the next one.
fn attr(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let malformed = match name {
        'n' => "missing user name attribute",
        'r' => "missing nonce attribute",
        'c' => "missing channel binding attribute",
        _ => "missing attribute",
    };
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed(malformed))
}

fn utf8(bytes: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed("not valid UTF-8"))
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // INVARIANT: HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Derives the verifier Postgres would store for `password` with this salt and iteration
/// count. See the module docs for how non-ASCII passwords are treated.
pub fn verifier_from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
    verifier_from_bytes(password.as_bytes(), salt, iterations)
}

/// [`verifier_from_password`] for a password as the client sent it, which need not be UTF-8.
pub fn verifier_from_bytes(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
    let prepared = std::str::from_utf8(password)
        .ok()
        .and_then(|text| stringprep::saslprep(text).ok());
    let password = prepared.as_deref().map_or(password, str::as_bytes);
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    ScramVerifier {
        iterations,
        salt: salt.to_vec(),
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted, b"Server Key"),
    }
}

/// The SCRAM salt of `user` in this process: a keyed hash of the name, so that it is the
/// same at every login (as a salt stored per user is in Postgres, and as clients that cache
/// derived keys expect), differs between users whatever their passwords, and cannot be
/// predicted without `key`. Users pgwarden knows only a plain password for and users it
/// does not know at all get their salt this one way, so the two look alike.
pub fn user_salt(key: &[u8], user: &str) -> [u8; SALT_LEN] {
    let digest = hmac(key, user.as_bytes());
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&digest[..SALT_LEN]);
    salt
}

/// A verifier nobody knows the password of, for a user that does not exist or whose secret
/// SCRAM cannot use: the exchange runs as for a wrong password. `salt` and `iterations`
/// must be what a real user would show (see [`user_salt`]); the random keys make every
/// proof fail.
pub fn mock_verifier(salt: &[u8], iterations: u32) -> ScramVerifier {
    ScramVerifier {
        iterations,
        salt: salt.to_vec(),
        stored_key: rand::random(),
        server_key: rand::random(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    // RFC 7677 section 3: user "user", password "pencil".
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_verifier(password: &str) -> ScramVerifier {
        verifier_from_password(password, &BASE64.decode(RFC_SALT).unwrap(), 4096)
    }

    fn rfc_start(password: &str) -> ScramServer {
        let verifier = rfc_verifier(password);
        ScramServer::start_with_nonce(&verifier, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE)
            .unwrap()
    }

    fn rfc_final(channel_binding: &str, nonce: &str, proof: &str) -> String {
        format!("c={channel_binding},r={nonce},p={proof}")
    }

    #[test]
    fn replays_the_rfc_7677_exchange() {
        let server = rfc_start("pencil");
        let expected_first = format!("r={RFC_NONCE},s={RFC_SALT},i=4096");
        assert_eq!(server.server_first_message(), expected_first);
        let verdict = server.finish(rfc_final("biws", RFC_NONCE, RFC_PROOF).as_bytes());
        let server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_owned();
        assert_eq!(verdict.unwrap(), Verdict::Accepted { server_final });
    }

    #[test]
    fn a_proof_for_another_password_is_rejected() {
        let verdict =
            rfc_start("not pencil").finish(rfc_final("biws", RFC_NONCE, RFC_PROOF).as_bytes());
        assert_eq!(verdict.unwrap(), Verdict::Rejected);
    }

    #[test]
    fn postgres_protocol_client_agrees() {
        for binding in [ChannelBinding::unrequested(), ChannelBinding::unsupported()] {
            let verifier = verifier_from_password("s3cret", b"0123456789abcdef", 4096);
            let mut client = ScramSha256::new(b"s3cret", binding);
            let server = ScramServer::start(&verifier, client.message()).unwrap();
            client
                .update(server.server_first_message().as_bytes())
                .unwrap();
            let Verdict::Accepted { server_final } = server.finish(client.message()).unwrap()
            else {
                panic!("right password rejected");
            };
            client.finish(server_final.as_bytes()).unwrap();
        }
    }

    #[test]
    fn malformed_client_first_messages_are_refused() {
        let verifier = rfc_verifier("pencil");
        let cases: [(&[u8], &str); 9] = [
            (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
            (b"n,a=admin,n=,r=abc", "authorization identity"),
            (b"n,,m=ext,n=,r=abc", "extension"),
            (b"x,,n=,r=abc", "channel binding flag"),
            (b"n,,r=abc", "user name"),
            (b"n,,n=", "nonce attribute"),
            (b"n,,n=,r=a\x01b", "not printable"),
            (b"n", "gs2 header"),
            (b"n,,n=\xff,r=abc", "UTF-8"),
        ];
        for (msg, needle) in cases {
            let err = ScramServer::start(&verifier, msg).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn malformed_client_final_messages_are_refused() {
        let cases = [
            (
                rfc_final("eSws", RFC_NONCE, RFC_PROOF),
                "channel binding data does not match",
            ),
            (
                rfc_final("biws", "rOprNGfwEbeRWgbNEkqO", RFC_PROOF),
                "nonce does not match",
            ),
            (rfc_final("b!ws", RFC_NONCE, RFC_PROOF), "not valid base64"),
            (
                rfc_final("biws", RFC_NONCE, "c2hvcnQ="),
                "proof is not 32 bytes",
            ),
            (format!("c=biws,r={RFC_NONCE}"), "missing proof"),
            (
                format!("r={RFC_NONCE},p={RFC_PROOF}"),
                "channel binding attribute",
            ),
            (format!("c=biws,p={RFC_PROOF}"), "nonce attribute"),
        ];
        for (msg, needle) in cases {
            let err = rfc_start("pencil")
                .finish(msg.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{msg}: {err}");
        }
    }

    #[test]
    fn passwords_are_saslprepped_like_libpq_does() {
        // U+02DD (a spacing double acute) is changed by SASLprep; a fuzz run found that an
        // honest client could not log in with it. A control character (SASLprep refuses
        // it) and bytes that are not UTF-8 are used raw, on both sides.
        let passwords: [&[u8]; 6] = [
            "\u{2dd}".as_bytes(),
            "I\u{ad}X".as_bytes(),
            "\u{2168}".as_bytes(),
            b"pencil",
            b"a\x07b",
            b"\xcb\xff",
        ];
        for password in passwords {
            let verifier = verifier_from_bytes(password, b"0123456789abcdef", 1);
            let mut client = ScramSha256::new(password, ChannelBinding::unrequested());
            let server = ScramServer::start(&verifier, client.message()).unwrap();
            client
                .update(server.server_first_message().as_bytes())
                .unwrap();
            let verdict = server.finish(client.message()).unwrap();
            assert!(matches!(verdict, Verdict::Accepted { .. }), "{password:?}");
        }
    }

    #[test]
    fn user_salts_are_stable_per_user_and_key_and_mock_keys_unguessable() {
        let salt = user_salt(b"k", "alice");
        assert_eq!(salt, user_salt(b"k", "alice"));
        assert_ne!(salt, user_salt(b"k", "bob"));
        assert_ne!(salt, user_salt(b"other process", "alice"));
        let (a, b) = (mock_verifier(&salt, 10_000), mock_verifier(&salt, 10_000));
        assert_eq!((a.salt.len(), a.iterations), (SALT_LEN, 10_000));
        assert_eq!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
    }
}
