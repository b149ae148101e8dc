//! The status page at `/` as a browser shows it: headless Chromium loads it from a proxy
//! under load (a saturated pool, its alert firing, a quiet pool), and its DOM holds a row per
//! pool with the use against `pool_size`, the waiting clients, the top application and the
//! alert. A screenshot is taken too; `PGWARDEN_BLESS=1` stores it as docs/status-page.png
//! (shown in the README). Skipped with a message where Chromium is missing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{get, tool, wait_status};
use common::identity::{connect_as, As};
use common::process::free_port;
use common::{start_proxy, PgServer};

const TEST: &str = "the_status_page_shows_each_pool_its_use_and_the_alerts_in_chromium";

/// Runs Chromium headless on `url` with `args` (off the runtime's threads: the proxy
/// serving the page runs on them).
async fn chromium(binary: &Path, args: Vec<String>) -> String {
    let binary = binary.to_owned();
    let passed = args.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(&passed)
            .output()
            .expect("run chromium")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_pool_its_use_and_the_alerts_in_chromium() {
    let Some(browser) = tool("chromium", "chromium", TEST) else {
        return;
    };
    let pg = PgServer::start();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = start_proxy(&format!(
        "metrics_listen = \"{metrics}\"\npool_size = 2\nalert_pool_saturated_for = \"1s\"\n\
         [databases.appdb]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [databases.postgres]\nhost = \"127.0.0.1\"\nport = {port}\npool_size = 4\n\
         [users.app]\npassword = \"app_pw\"\n",
        port = pg.port
    ))
    .await;
    wait_status(metrics, "/health/live", 200).await;

    // A quiet pool: one client, one idle server.
    let quiet = proxy.connect("app", "app_pw", "postgres").await;
    quiet.simple_query("select 1").await.unwrap();
    // A saturated one: billing holds both servers of appdb/app, two more of it wait.
    let billing = As::app().named("billing").from("127.0.0.9");
    let mut held = Vec::new();
    for _ in 0..4 {
        let client = connect_as(proxy.addr, billing).await.unwrap();
        held.push(tokio::spawn(async move {
            let _ = client.simple_query("select pg_sleep(30)").await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(metrics, "/")
        .await
        .body
        .contains("class=\"alert firing\"")
    {
        assert!(
            Instant::now() < deadline,
            "no alert on the page within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("http://{metrics}/");
    let dom = chromium(&browser, vec!["--dump-dom".into(), url.clone()]).await;
    assert!(dom.contains("<title>pgwarden status</title>"), "{dom}");
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "the page refreshes itself: {dom}"
    );
    let row = |pool: &str| {
        let start = dom
            .find(&format!("data-pool=\"{pool}\""))
            .unwrap_or_else(|| panic!("no row for {pool}:\n{dom}"));
        dom[start..start + dom[start..].find("</tr>").unwrap()].to_owned()
    };
    let appdb = row("appdb/app");
    assert!(
        appdb.contains("<td class=\"use\">2/2 "),
        "both servers busy: {appdb}"
    );
    assert!(
        appdb.contains("<td class=\"waiting\">2</td>"),
        "two waiting: {appdb}"
    );
    let top = "<td class=\"text top\">billing (4 clients from 127.0.0.9)</td>";
    assert!(appdb.contains(top), "billing behind it: {appdb}");
    let postgres = row("postgres/app");
    assert!(
        postgres.contains("<td class=\"use\">0/4 "),
        "quiet pool: {postgres}"
    );
    assert!(
        postgres.contains("<td class=\"idle\">1</td>"),
        "quiet pool: {postgres}"
    );
    let alert = &dom[dom
        .find("<tr class=\"alert firing\">")
        .expect("a firing alert row")..];
    let alert = &alert[..alert.find("</tr>").unwrap()];
    assert!(
        alert.contains("pool_saturated") && alert.contains("pool appdb/app 2/2 servers busy"),
        "{alert}"
    );
    assert!(alert.contains("top application billing"), "{alert}");
    assert!(
        dom.contains("<td>billing</td><td>4</td><td>2</td>"),
        "top applications: {dom}"
    );

    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("status-page.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(&browser, vec![arg, "--window-size=1200,760".into(), url]).await;
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if std::env::var_os("PGWARDEN_BLESS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("status-page.png"), png).unwrap();
    }
    for task in held {
        task.abort();
    }
    drop(quiet);
}
