//! Where transaction pooling gives a server back, for protocol sequences whose boundaries are
//! easy to get wrong: COPY FROM STDIN through the extended protocol (Postgres ignores the
//! Sync sent with the Execute), pipelines with several Syncs, and Flush without Sync.

mod common;

use std::time::Duration;

use common::clients::one_server_config;
use common::raw::{message, startup, PROTOCOL_3_0};
use common::{start_proxy, PgServer, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(pg: &PgServer) -> String {
    one_server_config(pg, "transaction")
}

/// With pool_size 1, `other` can only run a query if `holder` has given the server back.
async fn server_is_free(other: &tokio_postgres::Client) -> bool {
    tokio::time::timeout(Duration::from_secs(2), other.simple_query("select 1"))
        .await
        .is_ok()
}

/// Sends raw frontend messages on an authenticated trust connection and reads the replies
/// up to `readies` ReadyForQuery messages (or until `quiet` passes without a byte).
struct Raw(TcpStream);

impl Raw {
    async fn login(proxy: &Proxy) -> Raw {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let hello = startup(
            PROTOCOL_3_0,
            &[("user", "trust_user"), ("database", "postgres")],
        );
        stream.write_all(&hello).await.unwrap();
        let mut raw = Raw(stream);
        raw.read_until_ready(1).await;
        raw
    }

    async fn send(&mut self, messages: &[(u8, &[u8])]) {
        let mut out = Vec::new();
        for (tag, body) in messages {
            out.extend(message(*tag, body));
        }
        self.0.write_all(&out).await.unwrap();
    }

    /// The tags of the messages read until the `n`th ReadyForQuery.
    async fn read_until_ready(&mut self, n: usize) -> String {
        let mut tags = String::new();
        while tags.matches('Z').count() < n {
            let mut header = [0u8; 5];
            self.0.read_exact(&mut header).await.unwrap();
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.0.read_exact(&mut body).await.unwrap();
            tags.push(header[0] as char);
        }
        tags
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_keeps_the_server_and_sync_gives_it_back() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg)).await;
    let other = proxy.connect("trust_user", "", "postgres").await;
    let mut raw = Raw::login(&proxy).await;

    // Parse + Bind + Execute + Flush: the server answers, but the request is not over.
    raw.send(&[
        (b'P', b"\0select 1\0\0\0"),
        (b'B', b"\0\0\0\0\0\0\0\0"),
        (b'E', b"\0\0\0\0\0"),
        (b'H', b""),
    ])
    .await;
    let mut got = [0u8; 5];
    raw.0.read_exact(&mut got).await.unwrap();
    assert_eq!(got[0], b'1', "ParseComplete after Flush");
    assert!(
        !server_is_free(&other).await,
        "the server was given away between Flush and Sync"
    );

    raw.send(&[(b'S', b"")]).await;
    raw.read_until_ready(1).await;
    assert!(
        server_is_free(&other).await,
        "the server was kept after Sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_several_syncs_is_answered_in_full_on_one_server() {
    let pg = PgServer::start();
    let proxy = start_proxy(&config(&pg)).await;
    let other = proxy.connect("trust_user", "", "postgres").await;
    let mut raw = Raw::login(&proxy).await;
    let mut messages: Vec<(u8, &[u8])> = Vec::new();
    for _ in 0..3 {
        messages.extend([
            (b'P', &b"\0select pg_backend_pid()\0\0\0"[..]),
            (b'B', &b"\0\0\0\0\0\0\0\0"[..]),
            (b'E', &b"\0\0\0\0\0"[..]),
            (b'S', &b""[..]),
        ]);
    }
    raw.send(&messages).await;
    let tags = raw.read_until_ready(3).await;
    assert_eq!(tags, "12DCZ12DCZ12DCZ");
    assert!(
        server_is_free(&other).await,
        "the server was kept after the pipeline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_through_the_extended_protocol_gives_the_server_back() {
    let pg = PgServer::start();
    let admin = pg.admin().await;
    admin
        .batch_execute("create table t (x int); grant all on t to trust_user")
        .await
        .unwrap();
    let proxy = start_proxy(&config(&pg)).await;
    let other = proxy.connect("trust_user", "", "postgres").await;
    let mut raw = Raw::login(&proxy).await;

    // As drivers do: Bind/Execute/Sync at once; Postgres ignores that Sync in COPY-IN mode.
    raw.send(&[
        (b'P', b"\0copy t from stdin\0\0\0"),
        (b'B', b"\0\0\0\0\0\0\0\0"),
        (b'E', b"\0\0\0\0\0"),
        (b'S', b""),
    ])
    .await;
    let mut header = [0u8; 5];
    for expected in [b'1', b'2', b'G'] {
        raw.0.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        raw.0.read_exact(&mut body).await.unwrap();
        assert_eq!(header[0], expected);
    }
    raw.send(&[(b'd', b"1\n2\n3\n"), (b'c', b""), (b'S', b"")])
        .await;
    assert_eq!(raw.read_until_ready(1).await, "CZ");

    assert!(
        server_is_free(&other).await,
        "the COPY's server was never given back"
    );
    let count: i64 = other
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}
