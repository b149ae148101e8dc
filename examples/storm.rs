//! A connection storm: every client connects at the same moment, runs a few queries and
//! (unless `--hold`) disconnects. Prints JSON: the time to serve everyone and, per identity
//! (the clients' `application_name`), how many were served or failed (with each distinct
//! error and its count) and percentiles of their wait, from the storm's start to the
//! client's first query result.
//!
//! ```text
//! cargo run --release --example storm -- --port 6432 --password secret --clients 5000 \
//!     --identities flood:0.8,billing:0.1,auth:0.1 --queries 1 --sleep-ms 10 --hold --rss-pid PID
//! ```
//!
//! `--hold` keeps every served client connected until all are done, and then samples the
//! proxy's memory (`--rss-pid`): VmRSS before the storm, VmRSS with every client connected
//! and VmHWM (its peak). One task per client: raise `ulimit -n` above `--clients` first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;
use tokio_postgres::{Client, Config, NoTls};

#[derive(Parser)]
#[command(about = "Opens --clients connections at once and reports how long each waited")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "postgres")]
    user: String,
    #[arg(long, default_value = "")]
    password: String,
    #[arg(long, default_value = "postgres")]
    dbname: String,
    #[arg(long)]
    clients: usize,
    /// application_name:weight,... ; the clients are split by weight and interleaved
    #[arg(long, default_value = "storm:1")]
    identities: String,
    /// Queries each client runs
    #[arg(long, default_value_t = 1)]
    queries: u32,
    /// Each query is `SELECT pg_sleep(MS / 1000.0)` rather than `SELECT 1`
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    /// Seconds a client may take from the storm's start to its last result
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Keep served clients connected until every client is done
    #[arg(long)]
    hold: bool,
    /// A process (the proxy) whose memory to report: before, held (with --hold), peak
    #[arg(long)]
    rss_pid: Option<u32>,
}

/// What became of one client.
struct Outcome {
    identity: usize,
    /// Wait (storm start to first result) and done (to last result), or the error.
    result: Result<(Duration, Duration), String>,
    /// With --hold: the connection, kept open until the report.
    held: Option<Client>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let identities = parse_identities(&args.identities)?;
    let plan = interleave(&identities, args.clients);
    let query = if args.sleep_ms > 0 {
        format!("SELECT pg_sleep({})", args.sleep_ms as f64 / 1000.0)
    } else {
        "SELECT 1".to_string()
    };
    let timeout = Duration::from_secs(args.timeout);

    let (go, ready) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(plan.len());
    for &identity in &plan {
        let mut config = Config::new();
        config
            .host(&args.host)
            .port(args.port)
            .user(&args.user)
            .password(&args.password)
            .dbname(&args.dbname)
            .application_name(&identities[identity].0);
        let (mut ready, query, hold) = (ready.clone(), query.clone(), args.hold);
        let queries = args.queries;
        tasks.push(tokio::spawn(async move {
            let start = match ready.wait_for(Option::is_some).await {
                Ok(start) => start.unwrap_or_else(Instant::now),
                Err(_) => Instant::now(),
            };
            let served = tokio::time::timeout(timeout, serve(config, &query, queries, start)).await;
            let (result, client) = match served {
                Ok(Ok((wait, client))) => (Ok((wait, start.elapsed())), Some(client)),
                Ok(Err(error)) => (Err(error), None),
                Err(_) => (
                    Err(format!("timeout: not served within {}s", timeout.as_secs())),
                    None,
                ),
            };
            let held = if hold { client } else { None };
            Outcome {
                identity,
                result,
                held,
            }
        }));
    }

    let before = args.rss_pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
    let start = Instant::now();
    go.send_replace(Some(start));
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => return Err(format!("a client task failed: {error}")),
        }
    }
    let all_done = start.elapsed();
    let held_count = outcomes.iter().filter(|o| o.held.is_some()).count();
    let held_rss = match (args.rss_pid, args.hold) {
        (Some(pid), true) => {
            // Let the proxy finish handing back servers before reading its memory.
            tokio::time::sleep(Duration::from_secs(1)).await;
            proc_status_kib(pid, "VmRSS")
        }
        _ => None,
    };
    let peak = args.rss_pid.and_then(|pid| proc_status_kib(pid, "VmHWM"));

    let mut json = String::new();
    let _ = write!(
        json,
        "{{\"clients\": {}, \"queries\": {}, \"query\": {}, \"time_to_serve_all_ms\": {:.1}, \"held\": {held_count}",
        args.clients,
        args.queries,
        quote(&query),
        ms(all_done)
    );
    if args.rss_pid.is_some() {
        let _ = write!(
            json,
            ", \"rss_kib\": {{\"before\": {}, \"held\": {}, \"peak\": {}}}",
            opt(before),
            opt(held_rss),
            opt(peak)
        );
    }
    json.push_str(", \"identities\": [");
    for (i, (name, _)) in identities.iter().enumerate() {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.identity == i).collect();
        let mut waits: Vec<Duration> = mine
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|r| r.0))
            .collect();
        let mut errors = BTreeMap::<&str, usize>::new();
        for error in mine.iter().filter_map(|o| o.result.as_ref().err()) {
            *errors.entry(error).or_default() += 1;
        }
        let last_done = mine
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|r| r.1))
            .max();
        waits.sort();
        let _ = write!(
            json,
            "{}{{\"name\": {}, \"clients\": {}, \"ok\": {}, \"failed\": {}, \"last_done_ms\": {}, \"wait_ms\": {{",
            if i > 0 { ", " } else { "" },
            quote(name),
            mine.len(),
            waits.len(),
            mine.len() - waits.len(),
            last_done.map_or("null".to_string(), |d| format!("{:.1}", ms(d)))
        );
        for (j, (label, q)) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
            .iter()
            .enumerate()
        {
            let value =
                percentile(&waits, *q).map_or("null".to_string(), |d| format!("{:.1}", ms(d)));
            let _ = write!(
                json,
                "{}\"{label}\": {value}",
                if j > 0 { ", " } else { "" }
            );
        }
        json.push_str("}, \"errors\": {");
        for (j, (error, count)) in errors.iter().enumerate() {
            let _ = write!(
                json,
                "{}{}: {count}",
                if j > 0 { ", " } else { "" },
                quote(error)
            );
        }
        json.push_str("}}");
    }
    json.push_str("]}");
    println!("{json}");
    drop(outcomes);
    Ok(())
}

/// Connects, runs the queries, and returns the wait until the first result and the client.
async fn serve(
    config: Config,
    query: &str,
    queries: u32,
    start: Instant,
) -> Result<(Duration, Client), String> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| describe("connect", &e))?;
    tokio::spawn(connection);
    let mut wait = None;
    for _ in 0..queries {
        client
            .simple_query(query)
            .await
            .map_err(|e| describe("query", &e))?;
        wait.get_or_insert_with(|| start.elapsed());
    }
    Ok((wait.unwrap_or_else(|| start.elapsed()), client))
}

/// An error as "phase: SQLSTATE message" (from the server) or "phase: what happened".
fn describe(phase: &str, error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{phase}: {} {}", db.code().code(), db.message()),
        None => format!("{phase}: {error}"),
    }
}

fn parse_identities(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (name, weight) = part.split_once(':').unwrap_or((part, "1"));
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| format!("bad weight in {part:?}"))?;
        if name.trim().is_empty() || weight.is_nan() || weight <= 0.0 {
            return Err(format!(
                "bad identity {part:?}: want name:weight with weight > 0"
            ));
        }
        out.push((name.trim().to_string(), weight));
    }
    Ok(out)
}

/// Which identity each client has: counts by weight (largest remainder), spread evenly
/// over the connect order so no identity connects first.
fn interleave(identities: &[(String, f64)], clients: usize) -> Vec<usize> {
    let total: f64 = identities.iter().map(|i| i.1).sum();
    let exact: Vec<f64> = identities
        .iter()
        .map(|i| i.1 / total * clients as f64)
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..identities.len()).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for &k in by_remainder
        .iter()
        .cycle()
        .take(clients - counts.iter().sum::<usize>())
    {
        counts[k] += 1;
    }
    let mut given = vec![0usize; identities.len()];
    (0..clients)
        .map(|_| {
            let k = (0..identities.len())
                .filter(|&k| given[k] < counts[k])
                .min_by(|&a, &b| {
                    let (fa, fb) = (
                        (given[a] + 1) as f64 / counts[a] as f64,
                        (given[b] + 1) as f64 / counts[b] as f64,
                    );
                    fa.total_cmp(&fb)
                })
                .unwrap_or(0);
            given[k] += 1;
            k
        })
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// A field of /proc/PID/status in KiB (e.g. "VmRSS").
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
