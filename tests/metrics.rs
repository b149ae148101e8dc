//! The monitoring listener as Prometheus and Kubernetes see it: `/metrics` after known
//! traffic (values asserted, the page held against `promtool check metrics`), and
//! `/health/live` / `/health/ready` while Postgres is up, unreachable, and while draining.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, metric, tool, wait_status};
use common::process::free_port;
use common::{start_proxy, PgServer, Proxy};

const APP: &str = "database=\"appdb\",user=\"app\"";

fn config(pg: &PgServer, metrics: SocketAddr, extra: &str) -> String {
    format!(
        "metrics_listen = \"{metrics}\"\npool_size = 3\n{extra}\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    )
}

async fn proxy_with_metrics(pg: &PgServer, extra: &str) -> (Proxy, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start_proxy(&config(pg, metrics, extra)).await;
    wait_status(metrics, "/health/live", 200).await;
    (proxy, metrics)
}

/// Runs `promtool check metrics` on `page`; `None` when promtool is missing.
fn promtool_check_metrics(page: &str, test: &str) -> Option<String> {
    let promtool = tool("promtool", "prometheus", test)?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}\n---\n{page}"
    );
    Some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_pools_and_refusals_and_pass_promtool() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy_with_metrics(&pg, "max_client_conn_per_app = 1").await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    client.simple_query("select 1").await.unwrap();
    // A second client with the same (empty) application_name is refused.
    assert!(proxy.try_connect("app", "app_pw", "appdb").await.is_err());

    let page = get(metrics, "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(
        (page.header("content-type").unwrap_or_default()).starts_with("text/plain; version=0.0.4"),
        "{:?}",
        page.headers
    );
    let body = &page.body;
    assert_eq!(metric(body, "pgwarden_pool_size", APP), Some(3.0), "{body}");
    let idle = metric(
        body,
        "pgwarden_pool_servers",
        &format!("{APP},state=\"idle\""),
    );
    assert_eq!(idle, Some(1.0), "{body}");
    let refused = metric(
        body,
        "pgwarden_refusals_total",
        "cap=\"max_client_conn_per_app\"",
    );
    assert_eq!(refused, Some(1.0), "{body}");
    assert_eq!(metric(body, "pgwarden_ready", ""), Some(1.0), "{body}");
    let rule = metric(body, "pgwarden_alerts_firing", "rule=\"pool_saturated\"");
    assert_eq!(rule, Some(0.0), "{body}");
    if let Some(lint) = promtool_check_metrics(
        body,
        "metrics_show_the_pools_and_refusals_and_pass_promtool",
    ) {
        assert!(lint.trim().is_empty(), "promtool lint findings:\n{lint}");
    }
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_postgres_is_unreachable() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy_with_metrics(&pg, "server_connect_timeout = \"2s\"").await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    let ready = get(metrics, "/health/ready").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    drop(pg);
    // The pool's idle server is dead now; the next query needs a new one, which fails.
    let _ = client.simple_query("select 1").await;
    let _ = proxy.try_connect("app", "app_pw", "appdb").await;
    let unready = wait_status(metrics, "/health/ready", 503).await;
    assert!(
        unready
            .body
            .starts_with("not ready: server logins of pool appdb/app are failing"),
        "{}",
        unready.body
    );
    assert_eq!(get(metrics, "/health/live").await.status, 200);
    let page = get(metrics, "/metrics").await.body;
    assert_eq!(metric(&page, "pgwarden_ready", ""), Some(0.0), "{page}");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining_and_the_listener_stops_after() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy_with_metrics(&pg, "shutdown_timeout = \"10s\"").await;
    let client = proxy.connect("app", "app_pw", "appdb").await;
    client.simple_query("begin").await.unwrap();
    assert_eq!(get(metrics, "/health/ready").await.status, 200);

    proxy.shutdown.cancel();
    let draining = wait_status(metrics, "/health/ready", 503).await;
    assert_eq!(
        draining.body,
        "not ready: draining: pgwarden is shutting down\n"
    );
    assert_eq!(get(metrics, "/health/live").await.status, 200);

    // The open transaction ends; the proxy stops, and so does its monitoring listener.
    client.simple_query("commit").await.unwrap();
    drop(client);
    proxy.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(metrics).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "metrics listener still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_other_methods_405() {
    let pg = PgServer::start();
    let (_proxy, metrics) = proxy_with_metrics(&pg, "").await;
    assert_eq!(get(metrics, "/nothing").await.status, 404);
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}
