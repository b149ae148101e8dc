//! Stored secrets: a plain password, an `md5…` hash, or a `SCRAM-SHA-256$…` verifier.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use md5::{Digest as _, Md5};

/// What pgwarden knows about a user's password, in the forms Postgres itself stores.
///
/// `Debug` redacts the contents: configs and users get logged, passwords must not.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// `"md5"` followed by 32 lowercase hex digits of md5(password || username).
    Md5(String),
    Scram(ScramVerifier),
}

/// A SCRAM-SHA-256 verifier as Postgres stores it in `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// Why a secret string could not be used; the message names the offending part.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

const MD5_PREFIX: &str = "md5";
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl Secret {
    /// Classifies a stored password the way Postgres does: `md5` + 32 hex digits is an MD5
    /// hash, `SCRAM-SHA-256$…` a verifier, anything else a plain password.
    ///
    /// Unlike Postgres, which silently treats a malformed hash as a plain password, strings
    /// that clearly meant to be a hash (the exact md5 length, or the SCRAM prefix) must be
    /// well-formed: a typo there would otherwise turn a hash into a password nobody knows.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        if let Some(verifier) = s.strip_prefix(SCRAM_PREFIX) {
            return parse_scram(verifier).map(Secret::Scram);
        }
        match s.strip_prefix(MD5_PREFIX) {
            Some(hex) if hex.len() == 32 => {
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SecretError(
                        "md5 hash: expected 32 hex digits after \"md5\"".into(),
                    ));
                }
                Ok(Secret::Md5(format!(
                    "{MD5_PREFIX}{}",
                    hex.to_ascii_lowercase()
                )))
            }
            _ => Ok(Secret::Plain(s.to_owned())),
        }
    }

    pub fn plain(&self) -> Option<&str> {
        match self {
            Secret::Plain(p) => Some(p),
            _ => None,
        }
    }

    /// The `md5…` string the server-side MD5 login needs (from Plain: compute; from Md5: as
    /// is; Scram: None, since a verifier cannot be turned back into anything else).
    pub fn md5_hash(&self, user: &str) -> Option<String> {
        match self {
            Secret::Plain(password) => Some(md5_password_hash(password.as_bytes(), user)),
            Secret::Md5(hash) => Some(hash.clone()),
            Secret::Scram(_) => None,
        }
    }
}

/// `"md5"` + hex(md5(password || user)): what Postgres stores for an md5 password.
pub(crate) fn md5_password_hash(password: &[u8], user: &str) -> String {
    format!("{MD5_PREFIX}{}", md5_hex(&[password, user.as_bytes()]))
}

/// Lowercase hex md5 of the concatenated parts.
pub(crate) fn md5_hex(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `<iter>:<salt>$<StoredKey>:<ServerKey>` (the part after `SCRAM-SHA-256$`).
fn parse_scram(s: &str) -> Result<ScramVerifier, SecretError> {
    let err = |what: &str| SecretError(format!("SCRAM verifier: {what}"));
    let (params, keys) = s
        .split_once('$')
        .ok_or_else(|| err("missing '$' before the keys"))?;
    let (iterations, salt) = params
        .split_once(':')
        .ok_or_else(|| err("expected <iterations>:<salt>"))?;
    let (stored_key, server_key) = keys
        .split_once(':')
        .ok_or_else(|| err("expected <StoredKey>:<ServerKey>"))?;
    let iterations = iterations
        .parse::<u32>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| {
            err(&format!(
                "iteration count {iterations:?} is not a positive integer"
            ))
        })?;
    let salt = BASE64
        .decode(salt)
        .map_err(|e| err(&format!("salt is not valid base64: {e}")))?;
    if salt.is_empty() {
        return Err(err("salt is empty"));
    }
    Ok(ScramVerifier {
        iterations,
        salt,
        stored_key: decode_key(stored_key, "StoredKey")?,
        server_key: decode_key(server_key, "ServerKey")?,
    })
}

fn decode_key(b64: &str, name: &str) -> Result<[u8; 32], SecretError> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| SecretError(format!("SCRAM verifier: {name} is not valid base64: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        SecretError(format!(
            "SCRAM verifier: {name} must be 32 bytes, got {}",
            bytes.len()
        ))
    })
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Md5(<redacted>)"),
            Secret::Scram(v) => f.debug_tuple("Scram").field(v).finish(),
        }
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &"<redacted>")
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_passwords_stay_plain() {
        for s in ["hunter2", "", "md5", "md5short", "SCRAM-SHA-256"] {
            assert_eq!(Secret::parse(s).unwrap(), Secret::Plain(s.into()));
        }
    }

    #[test]
    fn md5_hashes_are_recognised_and_lowercased() {
        let parsed = Secret::parse("md54D45974E13472B5A0BE3533DE4666414").unwrap();
        assert_eq!(
            parsed,
            Secret::Md5("md54d45974e13472b5a0be3533de4666414".into())
        );
        let err = Secret::parse("md5zz45974e13472b5a0be3533de4666414").unwrap_err();
        assert!(err.to_string().contains("32 hex digits"), "{err}");
    }

    #[test]
    fn md5_hash_of_a_known_pair() {
        // md5("passworduser"), checked against an independent implementation below.
        let expected = "md54d45974e13472b5a0be3533de4666414";
        let plain = Secret::Plain("password".into());
        assert_eq!(plain.md5_hash("user").as_deref(), Some(expected));
        assert_eq!(
            postgres_protocol::password::md5(b"password", "user"),
            expected
        );
        let hashed = Secret::parse(expected).unwrap();
        assert_eq!(hashed.md5_hash("anyone").as_deref(), Some(expected));
        let verifier = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        assert_eq!(verifier.md5_hash("user"), None);
    }

    #[test]
    fn scram_verifier_from_postgres_protocol_parses() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let Secret::Scram(v) = Secret::parse(&text).unwrap() else {
            panic!("not a SCRAM secret: {text}");
        };
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        let again = crate::auth::scram::verifier_from_password("pw", &v.salt, v.iterations);
        assert_eq!(again, v);
    }

    #[test]
    fn malformed_scram_verifiers_name_the_problem() {
        let key = BASE64.encode([7u8; 32]);
        let cases = [
            ("SCRAM-SHA-256$4096:c2FsdA==".to_string(), "missing '$'"),
            (
                format!("SCRAM-SHA-256$4096$${key}:{key}"),
                "<iterations>:<salt>",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
                "<StoredKey>:<ServerKey>",
            ),
            (
                format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
                "iteration count \"0\"",
            ),
            (
                format!("SCRAM-SHA-256$x:c2FsdA==${key}:{key}"),
                "iteration count \"x\"",
            ),
            (
                format!("SCRAM-SHA-256$4096:!!!${key}:{key}"),
                "salt is not valid base64",
            ),
            (format!("SCRAM-SHA-256$4096:${key}:{key}"), "salt is empty"),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==$%%:{key}"),
                "StoredKey is not valid base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${key}:c2FsdA=="),
                "ServerKey must be 32 bytes",
            ),
        ];
        for (text, needle) in cases {
            let err = Secret::parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let secrets = [
            Secret::Plain("hunter2".into()),
            Secret::parse("md54d45974e13472b5a0be3533de4666414").unwrap(),
            Secret::parse(&text).unwrap(),
        ];
        for secret in secrets {
            let debug = format!("{secret:?}");
            assert!(
                !debug.contains("hunter2") && !debug.contains("4d4597"),
                "{debug}"
            );
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }
}
