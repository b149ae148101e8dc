//! Real drivers run as processes against the pgwarden binary: tests/drivers/asyncpg_check.py
//! (asyncpg's type introspection of arrays, enums and composites). Skipped, with a line on
//! stderr saying so, when `python3 -c "import asyncpg"` fails.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hostile::config;
use common::process::Pgwarden;
use common::PgServer;

const USER: &str = "trust_user";
const DB: &str = "postgres";
/// The script gives itself 15 s; this is its hard limit from outside.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(30);

fn has_asyncpg() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import asyncpg"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    probe.is_ok_and(|s| s.success())
}

/// Runs the script against `port`; its output, killed after [`SCRIPT_DEADLINE`].
async fn asyncpg_check(port: u16) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/asyncpg_check.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([&port.to_string(), USER, DB])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn asyncpg_arrays_enums_and_composites() {
    if !has_asyncpg() {
        eprintln!("skipped: asyncpg is not installed (pip install asyncpg)");
        return;
    }
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.admin()
        .await
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
             CREATE TYPE pair AS (a int, b text)",
        )
        .await
        .unwrap();
    let direct = asyncpg_check(pg.port).await;
    assert!(
        direct.status.success(),
        "the check fails on Postgres itself:\n{}",
        text(&direct)
    );
    let proxy = Pgwarden::with_config(&config(pg.port, "transaction", 2, "")).await;
    let proxied = asyncpg_check(proxy.port).await;
    assert!(
        proxied.status.success(),
        "asyncpg through pgwarden:\n{}\npgwarden:\n{}",
        text(&proxied),
        proxy.output_tail(20)
    );
    proxy.assert_healthy().await;
}
