//! TLS on both sides with rustls (ring): the certificates and keys of the settings loaded
//! into a rustls `ServerConfig` (towards clients) and `ClientConfig` (towards Postgres) per
//! `sslmode`, held in a [`Tls`] that SIGHUP reads again.
//!
//! - [`mode`]: the six `sslmode`s.
//! - [`files`]: PEM certificates, keys and CA bundles.
//! - [`verify`]: the server-certificate verifiers of `require` (none) and `verify-ca` (the
//!   chain, not the name).
//! - [`negotiate`]: the pure decisions of the SSLRequest exchanges on both sides.
//! - [`stream`]: a TLS connection driven by readiness, for [`crate::stream::Stream`].

pub mod files;
pub mod mode;
pub mod negotiate;
pub mod stream;
pub mod verify;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use thiserror::Error;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use mode::SslMode;

/// ALPN protocol name Postgres 17 and libpq 17 use.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why the TLS settings cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    #[error("{key}: cannot use {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl TlsError {
    /// The setting the problem is under.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::File { key, .. } | TlsError::Invalid { key, .. } => key,
        }
    }
}

/// The eight TLS settings, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub client_mode: SslMode,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub server_mode: SslMode,
    pub server_ca: Option<PathBuf>,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
}

/// The side facing clients: its mode and, where TLS is on, the acceptor.
#[derive(Clone)]
pub struct ClientSide {
    pub mode: SslMode,
    pub acceptor: Option<TlsAcceptor>,
}

/// The side facing Postgres: its mode and, where TLS is on, the connector.
#[derive(Clone)]
pub struct ServerSide {
    pub mode: SslMode,
    pub connector: Option<TlsConnector>,
}

/// Both sides, loaded.
#[derive(Clone)]
pub struct Loaded {
    pub client: ClientSide,
    pub server: ServerSide,
}

/// PgBouncer's defaults: no TLS towards clients (it needs a certificate), `prefer` towards
/// servers.
impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            client_mode: SslMode::Disable,
            client_cert: None,
            client_key: None,
            client_ca: None,
            server_mode: SslMode::Prefer,
            server_ca: None,
            server_cert: None,
            server_key: None,
        }
    }
}

impl TlsSettings {
    /// Reads every file the modes need and builds both sides; every problem found, each
    /// under its key.
    pub fn load(&self) -> Result<Loaded, Vec<TlsError>> {
        let client = self.load_client();
        let server = self.load_server();
        match (client, server) {
            (Ok(client), Ok(server)) => Ok(Loaded { client, server }),
            (client, server) => Err([client.err(), server.err()]
                .into_iter()
                .flatten()
                .flatten()
                .collect()),
        }
    }

    fn load_client(&self) -> Result<ClientSide, Vec<TlsError>> {
        let mode = self.client_mode;
        if !mode.enabled() {
            return Ok(ClientSide {
                mode,
                acceptor: None,
            });
        }
        let mut errors = Vec::new();
        let cert = need(&mut errors, &self.client_cert, "client_tls_cert_file", mode);
        let key = need(&mut errors, &self.client_key, "client_tls_key_file", mode);
        let ca = match mode.verifies() {
            true => need(&mut errors, &self.client_ca, "client_tls_ca_file", mode),
            false => None,
        };
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(errors);
        };
        let chain = files::certificates("client_tls_cert_file", cert);
        let key = files::private_key("client_tls_key_file", key);
        let roots = ca
            .map(|ca| files::roots("client_tls_ca_file", ca))
            .transpose();
        let (chain, key, roots) = match (chain, key, roots) {
            (Ok(chain), Ok(key), Ok(roots)) if errors.is_empty() => (chain, key, roots),
            (chain, key, roots) => {
                errors.extend(chain.err().into_iter().chain(key.err()).chain(roots.err()));
                return Err(errors);
            }
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| vec![invalid("client_tls_sslmode", e)])?;
        let builder = match roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| vec![invalid("client_tls_ca_file", e)])?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| vec![invalid("client_tls_key_file", e)])?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientSide {
            mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
        })
    }

    fn load_server(&self) -> Result<ServerSide, Vec<TlsError>> {
        let mode = self.server_mode;
        if !mode.enabled() {
            return Ok(ServerSide {
                mode,
                connector: None,
            });
        }
        let mut errors = Vec::new();
        let ca = match mode.verifies() {
            true => need(&mut errors, &self.server_ca, "server_tls_ca_file", mode),
            false => None,
        };
        let roots = ca
            .map(|ca| files::roots("server_tls_ca_file", ca))
            .transpose();
        let identity = match (&self.server_cert, &self.server_key) {
            (Some(cert), Some(key)) => Some((
                files::certificates("server_tls_cert_file", cert),
                files::private_key("server_tls_key_file", key),
            )),
            (Some(_), None) => {
                errors.push(missing(
                    "server_tls_key_file",
                    "server_tls_cert_file is set",
                ));
                None
            }
            (None, Some(_)) => {
                errors.push(missing(
                    "server_tls_cert_file",
                    "server_tls_key_file is set",
                ));
                None
            }
            (None, None) => None,
        };
        let roots = roots.map_err(|e| errors.push(e)).ok();
        let identity = match identity {
            Some((Ok(chain), Ok(key))) => Some((chain, key)),
            Some((chain, key)) => {
                errors.extend(chain.err().into_iter().chain(key.err()));
                None
            }
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| vec![invalid("server_tls_sslmode", e)])?;
        let builder = match (mode, roots.flatten()) {
            (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
            (SslMode::VerifyCa, Some(roots)) => {
                builder.dangerous().with_custom_certificate_verifier(
                    verify::ChainOnly::new(roots, provider())
                        .map_err(|e| vec![invalid("server_tls_ca_file", e)])?,
                )
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    verify::NoVerification::new(provider()),
                )),
        };
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| vec![invalid("server_tls_key_file", e)])?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ServerSide {
            mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(key: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        key,
        reason: reason.to_string(),
    }
}

fn missing(key: &'static str, why: &str) -> TlsError {
    invalid(key, format!("must be set: {why}"))
}

/// The path of a file `mode` needs, or an error naming its key.
fn need<'a>(
    errors: &mut Vec<TlsError>,
    path: &'a Option<PathBuf>,
    key: &'static str,
    mode: SslMode,
) -> Option<&'a PathBuf> {
    if path.is_none() {
        let side = key.split('_').next().unwrap_or("client");
        errors.push(missing(key, &format!("{side}_tls_sslmode is {mode}")));
    }
    path.as_ref()
}

/// The TLS state every connection reads when it negotiates, which SIGHUP replaces.
pub struct Tls {
    /// Replaced by a reload that changes them ([`Tls::apply`]).
    settings: RwLock<TlsSettings>,
    loaded: RwLock<Arc<Loaded>>,
}

impl Tls {
    /// Loads the settings. A failure here (a file that changed since the configuration was
    /// validated) fails closed: that side offers no TLS, and refuses plaintext where its
    /// mode requires TLS.
    pub fn new(settings: TlsSettings) -> Tls {
        let loaded = settings.load().unwrap_or_else(|errors| {
            for error in &errors {
                tracing::error!(cause = %error, "TLS settings cannot be used");
            }
            Loaded {
                client: ClientSide {
                    mode: settings.client_mode,
                    acceptor: None,
                },
                server: ServerSide {
                    mode: settings.server_mode,
                    connector: None,
                },
            }
        });
        Tls {
            settings: RwLock::new(settings),
            loaded: RwLock::new(Arc::new(loaded)),
        }
    }

    /// What new connections use now.
    pub fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the certificate files again; on failure the old ones stay.
    pub fn reload(&self) -> Result<(), Vec<TlsError>> {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.apply(settings)
    }

    /// Puts `settings` in force, their files read now; on failure nothing changes.
    pub fn apply(&self, settings: TlsSettings) -> Result<(), Vec<TlsError>> {
        let loaded = settings.load()?;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(errors: Vec<TlsError>) -> Vec<&'static str> {
        errors.iter().map(TlsError::key).collect()
    }

    #[test]
    fn defaults_need_no_files() {
        let loaded = TlsSettings::default().load().unwrap();
        assert_eq!(loaded.client.mode, SslMode::Disable);
        assert!(loaded.client.acceptor.is_none());
        assert_eq!(loaded.server.mode, SslMode::Prefer);
        assert!(loaded.server.connector.is_some());
    }

    #[test]
    fn modes_name_the_files_they_lack() {
        let settings = TlsSettings {
            client_mode: SslMode::VerifyCa,
            server_mode: SslMode::VerifyFull,
            ..TlsSettings::default()
        };
        let Err(errors) = settings.load() else {
            panic!("loaded without the files")
        };
        assert_eq!(
            keys(errors.clone()),
            [
                "client_tls_cert_file",
                "client_tls_key_file",
                "client_tls_ca_file",
                "server_tls_ca_file"
            ]
        );
        assert!(errors[0]
            .to_string()
            .contains("client_tls_sslmode is verify-ca"));
    }

    #[test]
    fn unreadable_and_unparsable_files_name_key_and_file() {
        let dir = std::env::temp_dir().join(format!("pgwarden-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let settings = TlsSettings {
            client_mode: SslMode::Require,
            client_cert: Some(garbage.clone()),
            client_key: Some(dir.join("missing.key")),
            server_mode: SslMode::VerifyCa,
            server_ca: Some(garbage.clone()),
            ..TlsSettings::default()
        };
        let Err(errors) = settings.load() else {
            panic!("loaded without the files")
        };
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("client_tls_cert_file: cannot use ")
                && text[0].contains("garbage.pem")
        );
        assert!(
            text[1].starts_with("client_tls_key_file: cannot use ")
                && text[1].contains("missing.key")
        );
        assert!(text[2].starts_with("server_tls_ca_file: cannot use "));
        let _ = std::fs::remove_dir_all(dir);
    }
}
