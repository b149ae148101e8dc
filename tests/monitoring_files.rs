//! The monitoring files in `config/` hold up: the Prometheus rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`; skipped with a message where
//! promtool is missing), the Grafana dashboard is valid
//! JSON with a query per panel, and every pgwarden metric either names is one `/metrics`
//! exports.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::http::{get, tool, wait_status};
use common::process::free_port;
use common::{start_proxy, PgServer};

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `pgwarden_…` name in `text`, histogram suffixes taken off.
fn names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("pgwarden_") {
        let rest = &text[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        found.insert(name.to_owned());
    }
    found
}

#[test]
fn the_prometheus_rules_pass_promtool_check_rules() {
    let Some(promtool) = tool(
        "promtool",
        "prometheus",
        "the_prometheus_rules_pass_promtool_check_rules",
    ) else {
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus-rules.yml");
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS: 10 rules found"), "{text}");
}

/// The rules fire on series shaped like pgwarden's (config/prometheus-rules.test.yml).
#[test]
fn the_prometheus_rules_fire_on_their_unit_test_series() {
    let Some(promtool) = tool(
        "promtool",
        "prometheus",
        "the_prometheus_rules_fire_on_their_unit_test_series",
    ) else {
        return;
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let out = Command::new(promtool)
        .current_dir(&config)
        .args(["test", "rules", "prometheus-rules.test.yml"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_grafana_dashboard_is_json_with_a_query_per_panel() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("config/grafana-dashboard.json")).expect("valid JSON");
    assert_eq!(dashboard["uid"], "pgwarden");
    let panels = dashboard["panels"].as_array().expect("panels");
    let graphs: Vec<_> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 12, "{} panels", graphs.len());
    for panel in graphs {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("pgwarden_"),
                "panel {}: {expr:?}",
                panel["title"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let pg = PgServer::start();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _proxy = start_proxy(&format!(
        "metrics_listen = \"{metrics}\"\n[databases.appdb]\nport = {}\n[users.app]\npassword = \"app_pw\"\n",
        pg.port
    ))
    .await;
    wait_status(metrics, "/health/live", 200).await;
    let page = get(metrics, "/metrics").await.body;
    let exported: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for file in [
        "config/prometheus-rules.yml",
        "config/grafana-dashboard.json",
    ] {
        let missing: Vec<_> = names(&read(file))
            .into_iter()
            .filter(|n| !exported.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics lacks: {missing:?}\nexported: {exported:?}"
        );
    }
}
