//! The fair queue under load: a flooding client identity does not starve a quiet one
//! (round-robin across identities; with one identity for everybody, FIFO, the quiet client
//! waits behind the whole flood), and a storm of 2,000 clients from three identities never
//! takes Postgres past the caps, refuses only with 53300 naming the cap, keeps the quiet
//! identities' waits bounded, and leaves every count at zero afterwards.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::identity::{connect_as, As};
use common::{describe, start_proxy, PgServer, Proxy};
use pgwarden::refusals::Cap;

fn trust_config(pg: &PgServer, extra: &str) -> String {
    format!(
        "auth_type = \"trust\"\npool_mode = \"transaction\"\nquery_wait_timeout = \"30s\"\n\
         {extra}\n[databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        pg.port
    )
}

fn trust() -> As<'static> {
    As::app().user("trust_user", "")
}

/// Clients waiting in all of the proxy's pools.
fn waiting(proxy: &Proxy) -> usize {
    proxy
        .ctx
        .pools
        .all()
        .iter()
        .map(|p| p.stats().waiting)
        .sum()
}

/// The longest of 10 `select 1` round trips of a quiet client while 30 clients of the
/// application "flood" keep both servers of the pool busy with 80 ms transactions.
async fn quiet_wait_under_flood(pg: &PgServer, extra: &str) -> Duration {
    let proxy = start_proxy(&trust_config(pg, &format!("pool_size = 2\n{extra}"))).await;
    let quiet = connect_as(proxy.addr, trust().named("quiet"))
        .await
        .unwrap();
    quiet.simple_query("select 1").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..30 {
        let (addr, stop) = (proxy.addr, stop.clone());
        flood.push(tokio::spawn(async move {
            let client = connect_as(addr, trust().named("flood")).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                client.simple_query("select pg_sleep(0.08)").await.unwrap();
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting(&proxy) < 20 {
        assert!(
            Instant::now() < deadline,
            "the flood never queued 20 clients"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut longest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        quiet.simple_query("select 1").await.unwrap();
        longest = longest.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_application_does_not_starve_a_quiet_one() {
    let pg = PgServer::start();
    let fair = quiet_wait_under_flood(&pg, "").await;
    eprintln!("quiet client's longest wait, fair queue: {fair:?}");
    assert!(
        fair < Duration::from_millis(400),
        "the quiet application waited {fair:?} behind the flood"
    );
    // The same load with one identity for everyone (the user): first come, first served,
    // so the quiet client queues behind ~20 flood transactions of 80 ms on 2 servers.
    let fifo = quiet_wait_under_flood(&pg, "client_identity = \"user\"").await;
    eprintln!("quiet client's longest wait, one identity for all: {fifo:?}");
    assert!(
        fifo > Duration::from_millis(400),
        "without per-application fairness the quiet client should wait; it waited {fifo:?}"
    );
}

/// Raises the open-file limit to what 2,000 clients (and pgwarden's side of each) need.
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "RLIMIT_NOFILE is {} (hard {}); the storm needs {wanted}",
        limit.rlim_cur,
        limit.rlim_max
    );
}

/// What one storm client saw.
enum Outcome {
    Refused(String, String),
    Served {
        identity: &'static str,
        longest: Duration,
    },
}

const FLOOD: usize = 1600;
const QUIET: usize = 200;
const PER_ADDR: usize = 1200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_2000_clients_never_exceeds_the_caps() {
    raise_fd_limit(6000);
    let pg = PgServer::start();
    let extra = format!(
        "pool_size = 10\nreserve_pool_size = 5\nreserve_pool_timeout = \"100ms\"\n\
         max_db_connections = 12\nmax_client_conn = 3000\nmax_client_conn_per_addr = {PER_ADDR}"
    );
    let proxy = start_proxy(&trust_config(&pg, &extra)).await;
    // The pool exists (and caches its login parameters) before the storm.
    drop(connect_as(proxy.addr, trust()).await.unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, admin) = (done.clone(), pg.admin().await);
        tokio::spawn(async move {
            let sql = "select count(*) from pg_stat_activity where usename = 'trust_user' \
                       and backend_type = 'client backend'";
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                let n: i64 = admin.query_one(sql, &[]).await.unwrap().get(0);
                peak = peak.max(n);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };

    // Every client connects first; queries start once all have connected or been refused,
    // so exactly FLOOD - PER_ADDR flood clients are refused.
    let connected = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let total = FLOOD + 2 * QUIET;
    let identities = (0..FLOOD)
        .map(|_| ("flood", "127.0.0.2", 5))
        .chain((0..QUIET).map(|_| ("quiet-a", "127.0.0.3", 3)))
        .chain((0..QUIET).map(|_| ("quiet-b", "127.0.0.4", 3)));
    let mut clients = Vec::new();
    for (identity, from, queries) in identities {
        let (addr, connected, gate) = (proxy.addr, connected.clone(), gate.clone());
        clients.push(tokio::spawn(async move {
            let result = connect_as(addr, trust().named(identity).from(from)).await;
            let opened = gate.notified();
            if connected.fetch_add(1, Ordering::SeqCst) + 1 == total {
                gate.notify_waiters();
            } else {
                opened.await;
            }
            let client = match result {
                Ok(client) => client,
                Err(err) => {
                    let db = err
                        .as_db_error()
                        .unwrap_or_else(|| panic!("{}", describe(&err)));
                    return Outcome::Refused(db.code().code().to_owned(), db.message().to_owned());
                }
            };
            let mut longest = Duration::ZERO;
            for _ in 0..queries {
                let started = Instant::now();
                let rows = client.simple_query("select 1").await;
                rows.unwrap_or_else(|e| panic!("{identity}: {}", describe(&e)));
                longest = longest.max(started.elapsed());
            }
            Outcome::Served { identity, longest }
        }));
    }
    let mut refused = Vec::new();
    let mut longest = std::collections::HashMap::new();
    for client in clients {
        match client.await.unwrap() {
            Outcome::Refused(code, message) => refused.push((code, message)),
            Outcome::Served {
                identity,
                longest: l,
            } => {
                let entry = longest.entry(identity).or_insert((0, Duration::ZERO));
                *entry = (entry.0 + 1, entry.1.max(l));
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    eprintln!("storm: peak backends {peak}, served and longest query per identity {longest:?}");

    assert!(
        peak <= 12,
        "Postgres saw {peak} backends; max_db_connections = 12"
    );
    assert_eq!(refused.len(), FLOOD - PER_ADDR);
    let expected = format!(
        "too many connections from address 127.0.0.2 (max_client_conn_per_addr = {PER_ADDR})"
    );
    for (code, message) in &refused {
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("53300", expected.as_str())
        );
    }
    assert_eq!(
        proxy.ctx.refusals.get(Cap::MaxClientConnPerAddr),
        refused.len() as u64
    );
    assert_eq!(proxy.ctx.refusals.get(Cap::QueryWaitTimeout), 0);
    assert_eq!(longest["flood"].0, PER_ADDR);
    for quiet in ["quiet-a", "quiet-b"] {
        let (served, wait) = longest[quiet];
        assert_eq!(served, QUIET, "{quiet}: every client served");
        assert!(
            wait < Duration::from_secs(5),
            "{quiet} waited up to {wait:?}"
        );
    }

    // Everyone has left: nothing is counted, waiting or checked out any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Vec<_> = proxy.ctx.pools.all().iter().map(|p| p.stats()).collect();
        let settled = proxy.ctx.admission.counted() == 0
            && stats
                .iter()
                .all(|s| s.waiting == 0 && s.held == 0 && s.open == s.idle);
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts did not settle: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.ctx.pools.server_connections() <= 12);
}
