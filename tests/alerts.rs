//! The built-in alert rules as an operator meets them: in a flood (pool_size 5, 60 clients
//! of application `billing` holding or waiting for every server) pgwarden logs one WARN
//! line `alert pool_saturated firing: …` naming the pool and `billing` within 30 s, shows
//! it in `/metrics`, and logs one INFO `resolved` line once the flood stops.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, metric};
use common::identity::{connect_as, As};
use common::process::Pgwarden;
use common::{describe, PgServer};

const FLOOD: usize = 60;
const FIRE_DEADLINE: Duration = Duration::from_secs(30);

/// Polls the proxy's output until a line contains every one of `parts`; that line, or a
/// panic with the output after `within`.
async fn wait_line(proxy: &Pgwarden, parts: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let output = proxy.output();
        if let Some(line) = output.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        if Instant::now() > deadline {
            panic!(
                "no line with {parts:?} within {within:?}:\n{}",
                proxy.output_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The monitoring address from the "serving metrics and health addr=…" line.
async fn metrics_addr(proxy: &Pgwarden) -> SocketAddr {
    let line = wait_line(
        proxy,
        &["serving metrics and health"],
        Duration::from_secs(10),
    )
    .await;
    let addr = line
        .split("addr=")
        .nth(1)
        .expect("addr=")
        .split_whitespace()
        .next();
    addr.and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_fires_pool_saturated_naming_billing_and_resolves_when_it_stops() {
    let pg = PgServer::start();
    let proxy = Pgwarden::with_config(&format!(
        "metrics_listen = \"127.0.0.1:0\"\npool_size = 5\nalert_pool_saturated_for = \"2s\"\n\
         query_wait_timeout = \"120s\"\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    ))
    .await;
    let metrics = metrics_addr(&proxy).await;

    // Sixty clients of billing from 127.0.0.7, each in a loop of short transactions: five
    // hold the pool's servers, the rest wait for one.
    let stop = Arc::new(AtomicBool::new(false));
    let who = As::app().named("billing").from("127.0.0.7");
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let client = connect_as(proxy.addr(), who).await.unwrap_or_else(|e| {
            panic!(
                "billing client: {}\n{}",
                describe(&e),
                proxy.output_tail(20)
            )
        });
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sql = "begin; select pg_sleep(0.2); commit";
                client.batch_execute(sql).await.map_err(|e| describe(&e))?;
            }
            Ok::<_, String>(())
        }));
    }

    let started = Instant::now();
    let fired = wait_line(&proxy, &["alert pool_saturated firing"], FIRE_DEADLINE).await;
    assert!(started.elapsed() < FIRE_DEADLINE);
    assert!(fired.contains(" WARN "), "{fired}");
    for part in [
        "pool appdb/app 5/5 servers busy",
        "waiting",
        "> 2.0 s",
        "top application billing",
    ] {
        assert!(fired.contains(part), "{part:?} missing from {fired}");
    }
    assert!(fired.contains("from 127.0.0.7"), "{fired}");
    let page = get(metrics, "/metrics").await.body;
    let labels = "rule=\"pool_saturated\",database=\"appdb\",user=\"app\",cap=\"\"";
    assert_eq!(
        metric(&page, "pgwarden_alert_firing", labels),
        Some(1.0),
        "{page}"
    );

    stop.store(true, Ordering::Relaxed);
    for task in flood {
        let ended = task.await.expect("flood task");
        ended.unwrap_or_else(|e| panic!("flood query: {e}\n{}", proxy.output_tail(20)));
    }
    let resolved = wait_line(
        &proxy,
        &["alert pool_saturated resolved: pool appdb/app"],
        Duration::from_secs(30),
    )
    .await;
    assert!(resolved.contains(" INFO "), "{resolved}");
    eprintln!("{fired}\n{resolved}");
    let lines = proxy.output();
    let firings = lines
        .lines()
        .filter(|l| l.contains("alert pool_saturated firing"))
        .count();
    assert_eq!(firings, 1, "one WARN line for one flood:\n{lines}");
    let page = get(metrics, "/metrics").await.body;
    assert_eq!(
        metric(&page, "pgwarden_alert_firing", labels),
        Some(0.0),
        "{page}"
    );
}
