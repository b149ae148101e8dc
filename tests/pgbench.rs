//! pgbench through an in-process pgwarden in session mode: every query protocol pgbench
//! speaks, and more clients than servers.
//!
//! The pgbench tables are made directly on Postgres (`pgbench -i -s 1`, as postgres on
//! database postgres); the runs go through the proxy as the same user.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::pgbench::{self, output_text, processed};
use common::{start_proxy, PgServer, Proxy};

/// `pgbench` as postgres/postgres against 127.0.0.1:`port`, database postgres, with `args`;
/// run on a blocking thread. Panics if it cannot be started.
fn pgbench_command(port: u16, args: &[&str]) -> Command {
    pgbench::pgbench_command(port, "postgres", "postgres", "postgres", args)
}

async fn pgbench(port: u16, args: &[&str]) -> Output {
    let mut cmd = pgbench_command(port, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}")))
        .await
        .unwrap()
}

/// `pgbench -i -s 1` straight against Postgres.
async fn init_tables(pg: &PgServer) {
    let out = pgbench(pg.port, &["-i", "-q", "-s", "1"]).await;
    assert!(
        out.status.success(),
        "pgbench -i failed ({}):\n{}",
        out.status,
        output_text(&out)
    );
}

/// A session-mode proxy in front of `pg`, logging in to it as postgres/postgres; clients
/// log in to the proxy with `auth_type`.
async fn proxy(pg: &PgServer, pool_size: u32, auth_type: &str) -> Proxy {
    start_proxy(&format!(
        "pool_mode = \"session\"\npool_size = {pool_size}\nquery_wait_timeout = \"60s\"\n\
         auth_type = \"{auth_type}\"\nupstream = \"{}\"\n",
        pg.url("postgres", "postgres")
    ))
    .await
}

/// Opens `n` servers in the pool (the proxy attaches a server at a client's first query)
/// and returns them, so that a timed run measures queries, not server logins: those cost a
/// SCRAM key derivation each, slow in a debug build on a busy machine.
async fn warm_up(proxy: &Proxy, n: usize) {
    let clients = (0..n).map(|_| async {
        let client = proxy.connect("postgres", "postgres", "postgres").await;
        client
            .query_one("select 1", &[])
            .await
            .expect("warm-up query");
        client
    });
    let clients = futures_util::future::join_all(clients).await;
    drop(clients);
}

/// A successful run: exit 0, no failed transaction; returns the output.
fn assert_clean_run(out: &Output) -> String {
    let output = output_text(out);
    assert!(
        out.status.success(),
        "pgbench failed ({}):\n{output}",
        out.status
    );
    assert!(
        output.contains("number of failed transactions: 0 "),
        "pgbench reports failures:\n{output}"
    );
    output
}

/// `pgbench -S -T 3 -c 8 -j 2 -M <mode>` over pool_size = 8.
async fn select_only_for_three_seconds(mode: &str) {
    let pg = PgServer::start();
    init_tables(&pg).await;
    let proxy = proxy(&pg, 8, "scram-sha-256").await;
    warm_up(&proxy, 8).await;
    let args = ["-S", "-T", "3", "-c", "8", "-j", "2", "-M", mode];
    let out = pgbench(proxy.addr.port(), &args).await;
    let output = assert_clean_run(&out);
    assert!(processed(&output) > 0, "no transactions:\n{output}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_over_the_simple_protocol() {
    select_only_for_three_seconds("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_over_the_extended_protocol() {
    select_only_for_three_seconds("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_only_with_prepared_statements() {
    select_only_for_three_seconds("prepared").await;
}

/// 16 clients over 4 servers: each client connects for each transaction (`-C`), so
/// sessions end and their servers serve the clients waiting in line; Postgres never sees a
/// fifth backend.
///
/// Without `-C` pgbench opens all 16 sessions before its first transaction and waits for a
/// fifth server forever. pgbench connects synchronously, so with fewer threads than clients
/// a thread waiting to connect one client cannot finish the transactions of its others,
/// which hold the servers: each client gets a thread. Clients log in to the proxy with
/// trust: 800 SCRAM logins take a minute in a debug build on a busy machine, and the
/// proxy's own server logins (four) still use SCRAM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_share_four_servers() {
    let pg = PgServer::start();
    init_tables(&pg).await;
    let proxy = proxy(&pg, 4, "trust").await;

    let args = [
        "-S", "-C", "-c", "16", "-j", "16", "-t", "50", "-M", "simple",
    ];
    let mut cmd = pgbench_command(proxy.addr.port(), &args);
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("run pgbench"));
    let mut most = 0;
    while !run.is_finished() {
        most = most.max(pg.backend_count("postgres").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run.await.unwrap();

    let output = assert_clean_run(&out);
    assert_eq!(processed(&output), 800, "{output}");
    assert!(most <= 4, "Postgres saw {most} backends with pool_size = 4");
    assert!(most > 0, "no backend was ever seen: the sampling is broken");
    proxy.stop().await;
}
