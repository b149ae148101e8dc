//! The monitoring listener as Prometheus and Kubernetes see it: `/metrics` after known
//! traffic (values asserted, the page held against `promtool check metrics`), and
//! `/health/live` / `/health/ready` while Postgres is up, unreachable, and while draining.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, metric, tool, wait_status};
use common::identity::{connect_as, As};
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
async fn metrics_count_known_traffic_and_pass_promtool() {
    let pg = PgServer::start();
    let extra = "max_client_conn_per_app = 2\nmetrics_top_applications = 1";
    let (proxy, metrics) = proxy_with_metrics(&pg, extra).await;
    let billing = connect_as(proxy.addr, As::app().named("billing"))
        .await
        .unwrap();
    let web = connect_as(proxy.addr, As::app().named("web"))
        .await
        .unwrap();
    let also_billing = connect_as(proxy.addr, As::app().named("billing"))
        .await
        .unwrap();
    for _ in 0..10 {
        billing.simple_query("select 1").await.unwrap();
    }
    web.batch_execute("begin; select 1; select 2; commit")
        .await
        .unwrap();
    // A third billing client is refused by max_client_conn_per_app.
    assert!(connect_as(proxy.addr, As::app().named("billing"))
        .await
        .is_err());
    // One client holds a server in an open transaction.
    also_billing.simple_query("begin").await.unwrap();

    let page = get(metrics, "/metrics").await;
    assert_eq!(page.status, 200);
    let content_type = page.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = &page.body;
    let value = |name: &str, labels: &str| {
        metric(body, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{body}"))
    };
    let state = |s: &str| format!("{APP},state=\"{s}\"");
    // 10 single-statement transactions, one of 4 statements (one ReadyForQuery), a BEGIN.
    assert_eq!(value("pgwarden_pool_transactions_total", APP), 11.0);
    assert_eq!(value("pgwarden_pool_queries_total", APP), 12.0);
    let snapshot = &proxy.ctx.pools.snapshot()[0];
    let totals = &snapshot.totals;
    let received = value("pgwarden_pool_received_bytes_total", APP);
    assert!(received >= 10.0 * 14.0, "{received}");
    assert_eq!(received, totals.bytes_received as f64);
    assert_eq!(
        value("pgwarden_pool_sent_bytes_total", APP),
        totals.bytes_sent as f64
    );
    assert_eq!(
        value("pgwarden_pool_wait_seconds_count", APP),
        totals.server_assignments as f64
    );
    let inf = value(
        "pgwarden_pool_wait_seconds_bucket",
        &format!("{APP},le=\"+Inf\""),
    );
    assert_eq!(inf, totals.server_assignments as f64);
    assert_eq!(value("pgwarden_pool_client_logins_total", APP), 3.0);
    assert_eq!(
        value("pgwarden_pool_server_connect_failures_total", APP),
        0.0
    );
    assert_eq!(value("pgwarden_pool_size", APP), 3.0);
    assert_eq!(value("pgwarden_pool_servers", &state("active")), 1.0);
    assert_eq!(value("pgwarden_pool_clients", &state("active")), 3.0);
    assert_eq!(value("pgwarden_pool_clients", &state("waiting")), 0.0);
    assert_eq!(value("pgwarden_pool_login_failing", APP), 0.0);
    assert_eq!(
        value("pgwarden_refusals_total", "cap=\"max_client_conn_per_app\""),
        1.0
    );
    assert_eq!(
        value("pgwarden_refusals_total", "cap=\"max_client_conn\""),
        0.0
    );
    // The top application by name, the rest as other.
    let app = |name: &str, s: &str| {
        value(
            "pgwarden_application_clients",
            &format!("application=\"{name}\",state=\"{s}\""),
        )
    };
    assert_eq!(
        (app("billing", "connected"), app("other", "connected")),
        (2.0, 1.0)
    );
    assert_eq!(
        value("pgwarden_cap_used", "cap=\"max_client_conn\",scope=\"\""),
        3.0
    );
    let per_app = "cap=\"max_client_conn_per_app\",scope=\"application billing\"";
    assert_eq!(
        (
            value("pgwarden_cap_used", per_app),
            value("pgwarden_cap_limit", per_app)
        ),
        (2.0, 2.0)
    );
    assert_eq!(value("pgwarden_ready", ""), 1.0);
    assert_eq!(
        value("pgwarden_alerts_firing", "rule=\"pool_saturated\""),
        0.0
    );
    if let Some(lint) =
        promtool_check_metrics(body, "metrics_count_known_traffic_and_pass_promtool")
    {
        assert!(lint.trim().is_empty(), "promtool lint findings:\n{lint}");
    }
    drop((billing, web, also_billing));
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

    // Draining as SIGTERM starts it: connected clients go on, readiness is off at once.
    proxy.ctx.draining_token().cancel();
    let draining = wait_status(metrics, "/health/ready", 503).await;
    assert_eq!(
        draining.body,
        "not ready: draining: pgwarden is shutting down\n"
    );
    assert_eq!(get(metrics, "/health/live").await.status, 200);
    client.simple_query("select 1").await.unwrap();
    let page = get(metrics, "/metrics").await.body;
    assert_eq!(metric(&page, "pgwarden_ready", ""), Some(0.0), "{page}");

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

/// application_name is the client's to choose: in /metrics it stays inside its label
/// (escaped as the format says, still parsed by promtool), and on the status page it is text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_application_names_stay_inside_their_label_and_their_cell() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy_with_metrics(&pg, "").await;
    let name = "a\"b\\c\nd} 9\n<script>x</script>";
    let client = connect_as(proxy.addr, As::app().named(name)).await.unwrap();
    client.simple_query("select 1").await.unwrap();

    let body = get(metrics, "/metrics").await.body;
    let escaped = "application=\"a\\\"b\\\\c\\nd} 9\\n<script>x</script>\",state=\"connected\"";
    assert_eq!(
        metric(&body, "pgwarden_application_clients", escaped),
        Some(1.0),
        "{body}"
    );
    promtool_check_metrics(
        &body,
        "hostile_application_names_stay_inside_their_label_and_their_cell",
    );
    let page = get(metrics, "/").await.body;
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"), "{page}");
    drop(client);
}

/// The monitoring port serves 64 connections at once: a 65th is closed at once, and the
/// places come back when those connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_port_serves_a_bounded_number_of_connections() {
    use tokio::io::AsyncReadExt;
    let pg = PgServer::start();
    let (_proxy, metrics) = proxy_with_metrics(&pg, "").await;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(metrics).await.unwrap());
    }
    // Each silent connection has been accepted once a later one is answered or closed.
    let mut extra = tokio::net::TcpStream::connect(metrics).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the 65th connection is closed: {read:?}"
    );
    drop(silent);
    let live = wait_status(metrics, "/health/live", 200).await;
    assert_eq!(live.body, "live\n");
}
