//! TLS through pgwarden, end to end: a test CA and certificates made here with rcgen, a
//! Postgres with `ssl = on`, psql and tokio-postgres (rustls) as clients. Both sides
//! encrypted (pg_stat_ssl says so), a wrong CA refused with a message naming certificate
//! verification, plaintext refused under `require`, plaintext injected after an SSLRequest
//! refused with 08P01, a client without a certificate refused under `verify-ca`, and large
//! results and COPY both ways giving what a direct connection gives.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

use common::hostile::config;
use common::process::Pgwarden;
use common::raw::{packet, read_message, startup, PROTOCOL_3_0, SSL_REQUEST};
use common::PgServer;

const USER: &str = "trust_user";
const DB: &str = "postgres";
const ANSWER: Duration = Duration::from_secs(10);
const ENCRYPTED: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A CA, a certificate it signed for `localhost` and 127.0.0.1, a client certificate it
/// signed, and another CA that signed nothing here; all as PEM files in `dir`.
struct Certs {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Certs {
    fn new() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("pgwarden test CA");
        let (wrong_pem, _) = ca("some other CA");
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            (
                params.signed_by(&key, &issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_cert, client_key) = leaf(vec![], USER);
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
        write("ca.crt", &ca_pem);
        write("wrong-ca.crt", &wrong_pem);
        write("server.crt", &server_cert);
        write("server.key", &server_key);
        write("client.crt", &client_cert);
        write("client.key", &client_key);
        // libpq refuses a key file others can read.
        use std::os::unix::fs::PermissionsExt;
        for key in ["server.key", "client.key"] {
            let path = dir.path().join(key);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Certs {
            dir,
            server_cert,
            server_key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TOML lines: TLS towards clients in `client_mode` with the test certificate (and the
    /// CA for client certificates), towards servers in `server_mode` against `server_ca`.
    fn settings(&self, client_mode: &str, server_mode: &str, server_ca: &str) -> String {
        format!(
            "client_tls_sslmode = \"{client_mode}\"\nclient_tls_cert_file = \"{}\"\n\
             client_tls_key_file = \"{}\"\nclient_tls_ca_file = \"{}\"\n\
             server_tls_sslmode = \"{server_mode}\"\nserver_tls_ca_file = \"{}\"\n",
            self.path("server.crt").display(),
            self.path("server.key").display(),
            self.path("ca.crt").display(),
            self.path(server_ca).display(),
        )
    }
}

async fn start(
    certs: &Certs,
    client_mode: &str,
    server_mode: &str,
    ca: &str,
) -> (PgServer, Pgwarden) {
    let (cert, key) = (certs.server_cert.clone(), certs.server_key.clone());
    let pg = tokio::task::spawn_blocking(move || PgServer::start_with_ssl(&cert, &key))
        .await
        .unwrap();
    let extra = certs.settings(client_mode, server_mode, ca);
    let proxy = Pgwarden::with_config(&config(pg.port, "session", 4, &extra)).await;
    (pg, proxy)
}

/// psql's output for `sql` with the libpq connection options `opts`, or its error.
fn psql(port: u16, opts: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("/usr/bin/psql")
        .args(["-X", "-A", "-t", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user={USER} dbname={DB} {opts}"
        ))
        .env_remove("PGSSLMODE")
        .output()
        .expect("run psql");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A tokio-postgres client over TLS (rustls, ring) trusting `ca`.
async fn tls_client(port: u16, ca: &Path) -> Result<Client, tokio_postgres::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user(USER).dbname(DB);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    config.connect_timeout(ANSWER);
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let (client, connection) = config.connect(connector).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn copy_out(client: &Client) -> Vec<u8> {
    let stmt = "COPY (SELECT * FROM copied ORDER BY a) TO STDOUT";
    let stream = client.copy_out(stmt).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

async fn encrypted(client: &Client) -> bool {
    client.query_one(ENCRYPTED, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn psql_and_tokio_postgres_through_tls_on_both_sides_in_verify_full() {
    let certs = Certs::new();
    // prefer: TLS for every client that asks, and the plaintext health check still served.
    let (pg, proxy) = start(&certs, "prefer", "verify-full", "ca.crt").await;
    let ca = certs.path("ca.crt");
    for opts in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full sslrootcert={}", ca.display()),
    ] {
        let got = psql(proxy.port, &opts, ENCRYPTED);
        assert_eq!(
            got,
            Ok("t".to_owned()),
            "psql {opts}\n{}",
            proxy.output_tail(20)
        );
    }
    let client = tls_client(proxy.port, &ca).await.unwrap_or_else(|e| {
        panic!(
            "tokio-postgres over TLS: {}\n{}",
            common::describe(&e),
            proxy.output_tail(20)
        )
    });
    assert!(
        encrypted(&client).await,
        "the server connection is not encrypted"
    );
    let direct = tls_client(pg.port, &ca).await.unwrap();
    assert!(encrypted(&direct).await);

    // A few MB of rows, and COPY both ways, as a direct connection sees them.
    let big = "SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 3000) g";
    let rows = |rows: Vec<tokio_postgres::Row>| -> Vec<(i32, String)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let through = rows(client.query(big, &[]).await.unwrap());
    assert_eq!(through.len(), 3000);
    assert_eq!(through, rows(direct.query(big, &[]).await.unwrap()));

    client
        .batch_execute("CREATE TABLE copied (a int, b text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..40_000 {
        data.push_str(&format!("{i}\tline {i} {}\n", "y".repeat(i % 97)));
    }
    let sink = client
        .copy_in::<_, Bytes>("COPY copied FROM STDIN")
        .await
        .unwrap();
    let mut sink = Box::pin(sink);
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 40_000);
    let out_through = copy_out(&client).await;
    let out_direct = copy_out(&direct).await;
    assert_eq!(out_through.len(), data.len());
    assert_eq!(out_through, out_direct);
    assert_eq!(out_through, data.as_bytes());
    drop((client, direct));
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_naming_verification() {
    let certs = Certs::new();
    let (_pg, proxy) = start(&certs, "prefer", "verify-full", "wrong-ca.crt").await;
    let err = psql(proxy.port, "sslmode=require", "SELECT 1").unwrap_err();
    assert!(
        err.contains("certificate verification failed") && err.contains("127.0.0.1"),
        "psql said: {err}"
    );
}

/// Reads one message; panics at end of stream or after the deadline.
async fn message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    read_message(stream, ANSWER)
        .await
        .expect("a message before the close")
}

#[tokio::test]
async fn require_refuses_plaintext_clients_with_28000_and_serves_tls_ones() {
    let certs = Certs::new();
    let (_pg, proxy) = start(&certs, "require", "require", "ca.crt").await;
    let mut plain = TcpStream::connect(proxy.addr()).await.unwrap();
    plain
        .write_all(&startup(PROTOCOL_3_0, &[("user", USER), ("database", DB)]))
        .await
        .unwrap();
    let (tag, body) = message(&mut plain).await;
    assert_eq!(tag, b'E');
    let fields = common::raw::fields(&body);
    assert_eq!(
        fields.get(&b'C').map(String::as_str),
        Some("28000"),
        "{fields:?}"
    );
    assert!(fields[&b'M'].contains("client_tls_sslmode"), "{fields:?}");
    let err = psql(proxy.port, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(err.contains("TLS required"), "psql said: {err}");
    assert_eq!(
        psql(proxy.port, "sslmode=require", ENCRYPTED),
        Ok("t".to_owned())
    );
}

#[tokio::test]
async fn plaintext_sent_after_an_ssl_request_is_refused_with_08p01() {
    let certs = Certs::new();
    let (_pg, proxy) = start(&certs, "prefer", "prefer", "ca.crt").await;
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    // One write: the SSLRequest and, before any answer, a plaintext startup packet.
    let mut bytes = packet(SSL_REQUEST, &[]);
    bytes.extend(startup(PROTOCOL_3_0, &[("user", USER), ("database", DB)]));
    conn.write_all(&bytes).await.unwrap();
    let (tag, body) = message(&mut conn).await;
    assert_eq!(tag, b'E', "answered {tag:?} instead of an error");
    let fields = common::raw::fields(&body);
    assert_eq!(
        fields.get(&b'C').map(String::as_str),
        Some("08P01"),
        "{fields:?}"
    );
    assert_eq!(fields[&b'M'], "received unencrypted data after SSL request");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(ANSWER, conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "not closed: {closed:?} {rest:?}"
    );
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn verify_ca_refuses_clients_without_a_certificate() {
    let certs = Certs::new();
    let (_pg, proxy) = start(&certs, "verify-ca", "prefer", "ca.crt").await;
    let refused = psql(proxy.port, "sslmode=require", "SELECT 1");
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    let with_cert = format!(
        "sslmode=require sslcert={} sslkey={}",
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );
    // server_tls_sslmode = prefer against a Postgres with ssl = on: encrypted too.
    assert_eq!(psql(proxy.port, &with_cert, ENCRYPTED), Ok("t".to_owned()));
    assert!(
        !proxy.output().contains("panicked at"),
        "{}",
        proxy.output()
    );
}

#[tokio::test]
async fn sighup_reads_the_certificates_again_and_keeps_the_old_ones_on_failure() {
    let certs = Certs::new();
    let (_pg, proxy) = start(&certs, "prefer", "prefer", "ca.crt").await;
    std::fs::write(certs.path("server.key"), "not a key\n").unwrap();
    proxy.signal("HUP");
    proxy.wait_for_output("configuration not reloaded").await;
    assert!(
        proxy.output().contains("client_tls_key_file"),
        "{}",
        proxy.output_tail(5)
    );
    let ca = certs.path("ca.crt");
    let verify = format!("sslmode=verify-full sslrootcert={}", ca.display());
    assert_eq!(psql(proxy.port, &verify, "SELECT 1"), Ok("1".to_owned()));
    std::fs::write(certs.path("server.key"), &certs.server_key).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_output("configuration reloaded").await;
    assert_eq!(psql(proxy.port, &verify, "SELECT 1"), Ok("1".to_owned()));
    proxy.assert_healthy().await;
}

#[tokio::test]
async fn server_allow_logs_in_over_plaintext_and_over_tls_when_plaintext_is_refused() {
    let certs = Certs::new();
    let (pg, proxy) = start(&certs, "disable", "allow", "ca.crt").await;
    // allow: plaintext first, as libpq.
    assert_eq!(
        psql(proxy.port, "sslmode=disable", ENCRYPTED),
        Ok("f".to_owned())
    );

    // Postgres now refuses plaintext TCP logins: a new server connection is made over TLS.
    pg.prepend_hba("hostnossl all all 127.0.0.1/32 reject");
    let deadline = std::time::Instant::now() + ANSWER;
    while psql(pg.port, "sslmode=disable", "SELECT 1").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_hba.conf not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let extra = certs.settings("disable", "allow", "ca.crt");
    let fresh = Pgwarden::with_config(&config(pg.port, "session", 4, &extra)).await;
    assert_eq!(
        psql(fresh.port, "sslmode=disable", ENCRYPTED),
        Ok("t".to_owned()),
        "{}",
        fresh.output_tail(20)
    );
    // disable: Postgres refuses the plaintext login, and the client sees why.
    let extra = certs.settings("disable", "disable", "ca.crt");
    let plain = Pgwarden::with_config(&config(pg.port, "session", 4, &extra)).await;
    let refused = psql(plain.port, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(refused.contains("no encryption"), "{refused}");
    assert!(
        !plain.output().contains("panicked at"),
        "{}",
        plain.output()
    );
    for proxy in [proxy, fresh] {
        proxy.assert_healthy().await;
    }
}
