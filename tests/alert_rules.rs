//! Every built-in alert rule against a real Postgres, each with a low threshold: it fires
//! (as `ctx.alerts` lists it for `SHOW ALERTS`, and in `/metrics`) with the measured value,
//! the threshold and the application behind it, and `pool_saturated` aside (tests/alerts.rs
//! covers it with the log), resolves when the cause is gone.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{get, metric, wait_status};
use common::identity::{connect_as, As};
use common::process::free_port;
use common::{start_proxy, PgServer, Proxy};
use pgwarden::alerts::AlertRow;

const DEADLINE: Duration = Duration::from_secs(15);

async fn proxy(pg: &PgServer, extra: &str) -> (Proxy, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let size = if extra.contains("pool_size") {
        ""
    } else {
        "pool_size = 2"
    };
    let proxy = start_proxy(&format!(
        "metrics_listen = \"{metrics}\"\n{size}\n{extra}\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    ))
    .await;
    wait_status(metrics, "/health/live", 200).await;
    (proxy, metrics)
}

/// Polls the proxy's alerts until `rule` is in state `state`; that row.
async fn wait_alert(proxy: &Proxy, rule: &str, state: &str) -> AlertRow {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let rows = proxy.ctx.alerts.rows();
        if let Some(row) = rows.iter().find(|r| r.rule == rule && r.state == state) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {state} {rule} within {DEADLINE:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn firing_in_metrics(metrics: SocketAddr, rule: &str) -> f64 {
    let page = get(metrics, "/metrics").await.body;
    metric(&page, "pgwarden_alerts_firing", &format!("rule=\"{rule}\"")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_failures_fire_naming_the_error_and_turn_ready_off() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy(&pg, "server_check_delay = \"0s\"").await;
    let client = connect_as(proxy.addr, As::app().named("billing"))
        .await
        .unwrap();
    client.simple_query("select 1").await.unwrap();
    let _idle = connect_as(proxy.addr, As::app().named("billing"))
        .await
        .unwrap();
    // The outage: Postgres stops accepting pgwarden's logins, and its server goes.
    let admin = pg.admin().await;
    admin
        .simple_query("alter role app password 'changed'")
        .await
        .unwrap();
    admin
        .simple_query(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'",
        )
        .await
        .unwrap();
    let _ = client.simple_query("select 1").await;
    let _ = client.simple_query("select 1").await;

    let row = wait_alert(&proxy, "server_failures", "firing").await;
    assert_eq!((row.database.as_str(), row.user.as_str()), ("appdb", "app"));
    assert!(
        row.message
            .contains("server connect/login failures in the last minute (threshold 1)"),
        "{}",
        row.message
    );
    assert!(row.message.contains("logins failing: "), "{}", row.message);
    assert!(
        row.message.contains("password authentication failed"),
        "{}",
        row.message
    );
    assert!(
        row.message
            .contains("top application billing (1 clients from 127.0.0.1)"),
        "{}",
        row.message
    );
    assert_eq!(firing_in_metrics(metrics, "server_failures").await, 1.0);
    let ready = wait_status(metrics, "/health/ready", 503).await;
    assert!(
        ready.body.contains("password authentication failed"),
        "{}",
        ready.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_per_minute_fire_naming_the_cap() {
    let pg = PgServer::start();
    let extra = "max_client_conn_per_app = 1\nalert_refusals_per_minute = 3";
    let (proxy, metrics) = proxy(&pg, extra).await;
    let _held = connect_as(proxy.addr, As::app().named("billing"))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(connect_as(proxy.addr, As::app().named("billing"))
            .await
            .is_err());
    }
    let row = wait_alert(&proxy, "refusals", "firing").await;
    assert_eq!(row.cap, "max_client_conn_per_app");
    assert_eq!(
        row.message,
        "cap max_client_conn_per_app: 3 clients refused in the last minute (threshold 3); \
         top application billing (1 clients from 127.0.0.1)"
    );
    assert_eq!(firing_in_metrics(metrics, "refusals").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_near_its_limit_fires_and_resolves_when_clients_leave() {
    let pg = PgServer::start();
    let (proxy, _metrics) = proxy(&pg, "max_client_conn = 4\nalert_cap_near_percent = 75").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            connect_as(proxy.addr, As::app().named("web"))
                .await
                .unwrap(),
        );
    }
    let row = wait_alert(&proxy, "cap_near_limit", "firing").await;
    assert_eq!(row.cap, "max_client_conn");
    assert!(
        row.message
            .starts_with("cap max_client_conn used 3/4 (75%, threshold 75%); top application web"),
        "{}",
        row.message
    );
    clients.pop();
    wait_alert(&proxy, "cap_near_limit", "resolved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_fire_with_their_reasons() {
    let pg = PgServer::start();
    let (proxy, metrics) = proxy(&pg, "alert_pinned_percent = 50").await;
    let client = connect_as(proxy.addr, As::app().named("reports"))
        .await
        .unwrap();
    client
        .simple_query("select pg_advisory_lock(42)")
        .await
        .unwrap();
    let row = wait_alert(&proxy, "clients_pinned", "firing").await;
    assert!(
        row.message.starts_with(
            "pool appdb/app 1 pinned clients hold 50% of pool_size 2 (threshold 50%; \
             session-level advisory lock 1); top application reports"
        ),
        "{}",
        row.message
    );
    let page = get(metrics, "/metrics").await.body;
    let labels = "database=\"appdb\",user=\"app\",reason=\"session-level advisory lock\"";
    assert_eq!(
        metric(&page, "pgwarden_pool_pinned_clients_by_reason", labels),
        Some(1.0),
        "{page}"
    );
    client
        .simple_query("select pg_advisory_unlock_all()")
        .await
        .unwrap();
    wait_alert(&proxy, "clients_pinned", "resolved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_waits_fire_wait_p99() {
    let pg = PgServer::start();
    let extra = "pool_size = 1\nalert_wait_p99 = \"200ms\"\nalert_pool_saturated_for = \"0\"";
    let (proxy, _metrics) = proxy(&pg, extra).await;
    let holder = connect_as(proxy.addr, As::app().named("batch"))
        .await
        .unwrap();
    let waiter = connect_as(proxy.addr, As::app().named("batch"))
        .await
        .unwrap();
    let (held, waited) = tokio::join!(holder.simple_query("select pg_sleep(0.6)"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiter.simple_query("select 1").await
    });
    held.unwrap();
    waited.unwrap();
    let row = wait_alert(&proxy, "wait_p99", "firing").await;
    assert!(
        row.message.starts_with("pool appdb/app wait p99 "),
        "{}",
        row.message
    );
    assert!(
        row.message.contains("> 200 ms over the last minute"),
        "{}",
        row.message
    );
    assert!(
        proxy
            .ctx
            .alerts
            .rows()
            .iter()
            .all(|r| r.rule != "pool_saturated"),
        "turned off"
    );
}
