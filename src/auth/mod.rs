//! Authentication: client side (how clients prove who they are to pgwarden), the secrets that
//! back it, and the PgBouncer-style auth file. Logging in to Postgres lives in `server::login`.

pub mod client;
pub mod scram;
pub mod secret;
pub mod userlist;

pub use client::{authenticate, AuthError};
pub use secret::{ScramVerifier, Secret, SecretError};
pub use userlist::UserlistError;

#[cfg(test)]
mod tests;
