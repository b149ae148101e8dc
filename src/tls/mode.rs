//! The six `sslmode`s, with what each means on the side facing clients (PgBouncer's
//! `client_tls_sslmode`) and on the side facing Postgres (libpq's `sslmode`).

/// How much TLS one side asks for or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SslMode {
    /// No TLS: clients asking for it get `N`; servers are not asked.
    Disable,
    /// Clients: TLS if they ask (certificates not checked). Servers: plaintext first, and
    /// TLS (certificates not checked) if the server refuses that login, as libpq.
    Allow,
    /// Clients: TLS if they ask (certificates not checked). Servers: TLS if offered, else
    /// plaintext.
    Prefer,
    /// TLS or nothing; certificates are not checked.
    Require,
    /// TLS, with the peer's certificate chain checked against the CA file.
    VerifyCa,
    /// As `verify-ca`; towards servers the host name is checked too.
    VerifyFull,
}

impl SslMode {
    /// Whether this side can speak TLS at all.
    pub fn enabled(self) -> bool {
        self != SslMode::Disable
    }

    /// Whether plaintext is refused.
    pub fn required(self) -> bool {
        self >= SslMode::Require
    }

    /// Whether the peer's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }

    /// The name as written in a configuration.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn modes_read_by_their_libpq_names_and_order_by_strictness() {
        let names: Vec<&str> = SslMode::value_variants().iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full"
            ]
        );
        for mode in SslMode::value_variants() {
            assert_eq!(SslMode::from_str(mode.name(), true), Ok(*mode));
        }
        assert!(!SslMode::Prefer.required() && SslMode::Require.required());
        assert!(!SslMode::Require.verifies() && SslMode::VerifyCa.verifies());
        assert!(!SslMode::Disable.enabled() && SslMode::Allow.enabled());
    }
}
