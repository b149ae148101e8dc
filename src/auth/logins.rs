//! What client logins share for the life of the process: the key behind per-user SCRAM
//! salts, the verifiers derived from plain passwords, and what the configured users look
//! like, so that unknown users can be made to look the same.

use dashmap::DashMap;

use super::scram::{self, DEFAULT_ITERATIONS};
use super::secret::{ScramVerifier, Secret};

/// The method most configured users get under `auth_type = md5`, which is what a user
/// pgwarden does not know gets too (Postgres uses `password_encryption` for this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md5Lookalike {
    /// Most users have a plain password or an md5 hash: an MD5 challenge.
    Md5,
    /// Most users have a SCRAM verifier, with which md5 logins switch to SCRAM.
    Scram,
}

/// How the configured users' logins look from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonCase {
    pub md5: Md5Lookalike,
    /// The SCRAM iteration count most users show: their verifiers', or
    /// [`DEFAULT_ITERATIONS`] for those pgwarden derives a verifier for.
    pub iterations: u32,
}

impl CommonCase {
    /// The common case of these users' secrets (ties go to md5 and to the larger count).
    pub fn of<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> CommonCase {
        let (mut md5_like, mut scram_like) = (0usize, 0usize);
        let mut counts: Vec<(u32, usize)> = Vec::new();
        for secret in secrets {
            let iterations = match secret {
                Secret::Md5(_) => {
                    md5_like += 1;
                    continue;
                }
                Secret::Plain(_) => {
                    md5_like += 1;
                    DEFAULT_ITERATIONS
                }
                Secret::Scram(v) => {
                    scram_like += 1;
                    v.iterations
                }
            };
            match counts.iter_mut().find(|(i, _)| *i == iterations) {
                Some((_, n)) => *n += 1,
                None => counts.push((iterations, 1)),
            }
        }
        let iterations = (counts.into_iter())
            .max_by_key(|&(i, n)| (n, i))
            .map_or(DEFAULT_ITERATIONS, |(i, _)| i);
        let md5 = if scram_like > md5_like {
            Md5Lookalike::Scram
        } else {
            Md5Lookalike::Md5
        };
        CommonCase { md5, iterations }
    }
}

/// Shared by every login of a process.
pub struct Logins {
    /// Random per process: salts are stable for its life but cannot be precomputed.
    key: [u8; 32],
    /// user → (the plain password, the verifier derived from it).
    plain: DashMap<String, (String, ScramVerifier)>,
    /// Recomputed when a reload changes the users ([`Logins::set_users`]).
    common: std::sync::Mutex<CommonCase>,
}

impl Logins {
    /// Logins for these configured users' secrets.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Logins {
        Logins {
            key: rand::random(),
            plain: DashMap::new(),
            common: std::sync::Mutex::new(CommonCase::of(secrets)),
        }
    }

    pub fn common(&self) -> CommonCase {
        *self.common.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured users changed (a reload): unknown users are made to look like the
    /// new common case. The salt key stays, so every user's salt stays the same.
    pub fn set_users<'a>(&self, secrets: impl IntoIterator<Item = &'a Secret>) {
        let common = CommonCase::of(secrets);
        *self.common.lock().unwrap_or_else(|p| p.into_inner()) = common;
    }

    /// The verifier for a user whose secret is a plain password: its salt is the user's
    /// own ([`scram::user_salt`]), and it is derived once per (user, password): PBKDF2
    /// costs milliseconds by design, and paying that at every login would let a reconnect
    /// storm burn the proxy's CPU.
    pub async fn plain_verifier(&self, user: &str, password: &str) -> ScramVerifier {
        if let Some(entry) = self.plain.get(user) {
            if entry.0 == password {
                return entry.1.clone();
            }
        }
        let salt = scram::user_salt(&self.key, user);
        let verifier = derive_verifier(password.as_bytes(), &salt, DEFAULT_ITERATIONS).await;
        let entry = (password.to_owned(), verifier.clone());
        self.plain.insert(user.to_owned(), entry);
        verifier
    }

    /// The verifier a user is tested against when SCRAM cannot check them (unknown, or an
    /// md5 secret): the salt they would have with a plain password, the common count.
    pub fn mock_verifier(&self, user: &str) -> ScramVerifier {
        scram::mock_verifier(&scram::user_salt(&self.key, user), self.common().iterations)
    }
}

/// PBKDF2 with thousands of iterations takes milliseconds of CPU, which must not stall the
/// other connections sharing this runtime thread.
pub(crate) async fn derive_verifier(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> ScramVerifier {
    let (password, salt) = (password.to_vec(), salt.to_vec());
    let derive = move || scram::verifier_from_bytes(&password, &salt, iterations);
    match tokio::task::spawn_blocking(derive).await {
        Ok(verifier) => verifier,
        // The derivation has no panics of its own; resurface any as they were.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram(iterations: u32) -> Secret {
        Secret::Scram(scram::verifier_from_password("pw", b"salt", iterations))
    }

    fn md5() -> Secret {
        Secret::parse("md54d45974e13472b5a0be3533de4666414").unwrap()
    }

    #[test]
    fn the_common_case_is_what_most_users_show() {
        let plain = Secret::Plain("pw".into());
        let case = |secrets: &[Secret]| CommonCase::of(secrets);
        let md5_4096 = CommonCase {
            md5: Md5Lookalike::Md5,
            iterations: 4096,
        };
        assert_eq!(case(&[]), md5_4096);
        assert_eq!(case(&[plain.clone(), md5()]), md5_4096);
        assert_eq!(case(&[scram(4096), md5()]), md5_4096);
        let scram_10k = CommonCase {
            md5: Md5Lookalike::Scram,
            iterations: 10_000,
        };
        assert_eq!(case(&[scram(10_000), scram(10_000), md5()]), scram_10k);
        assert_eq!(case(&[scram(10_000), scram(10_000), plain]), scram_10k);
        assert_eq!(case(&[scram(10_000), md5(), md5()]).iterations, 10_000);
    }

    #[tokio::test]
    async fn plain_verifiers_are_per_user_and_stable() {
        let logins = Logins::new(&[]);
        let alice = logins.plain_verifier("alice", "same").await;
        let bob = logins.plain_verifier("bob", "same").await;
        assert_ne!(alice.salt, bob.salt);
        assert_eq!(logins.plain_verifier("alice", "same").await, alice);
        // A new password keeps the user's salt and derives anew.
        let changed = logins.plain_verifier("alice", "other").await;
        assert_eq!(changed.salt, alice.salt);
        assert_ne!(changed.stored_key, alice.stored_key);
        // An unknown alice would show the same salt and the common count.
        let mock = logins.mock_verifier("alice");
        assert_eq!((mock.salt, mock.iterations), (alice.salt, 4096));
    }
}
