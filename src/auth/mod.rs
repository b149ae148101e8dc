//! Authentication: client side (how clients prove who they are to pgwarden), the secrets that
//! back it, and the PgBouncer-style auth file. Logging in to Postgres lives in `server::login`.

pub mod client;
pub mod logins;
pub mod messages;
pub mod sasl;
pub mod scram;
pub mod secret;
pub mod userlist;

pub use client::{authenticate, AuthError};
pub use logins::Logins;
pub use secret::{ScramVerifier, Secret, SecretError};
pub use userlist::UserlistError;

#[cfg(test)]
mod tests;

/// How clients prove who they are to pgwarden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthType {
    #[value(name = "trust")]
    Trust,
    #[value(name = "password")]
    Password,
    #[value(name = "md5")]
    Md5,
    #[value(name = "scram-sha-256")]
    ScramSha256,
}
