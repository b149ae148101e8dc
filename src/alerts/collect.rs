//! Gathers what the rules, `/metrics` and the status page read, at one moment: the pools'
//! snapshots, the clients tallied by application, and the [`Sample`] made of both with the
//! refusal counters and the caps' use.

use std::collections::BTreeMap;

use crate::admission::Admission;
use crate::config::Config;
use crate::pool::{PoolSnapshot, Pools};
use crate::refusals::{Cap, Refusals};
use crate::stats::{ClientInfo, ClientState, Live};

use super::apps::{self, Apps, ClientView, Use};
use super::sample::{CapUse, PoolSample, Sample};

/// What a gathering reads.
pub struct Sources<'a> {
    pub config: &'a Config,
    pub pools: &'a Pools,
    pub clients: &'a Live<ClientInfo>,
    pub refusals: &'a Refusals,
    pub admission: &'a Admission,
}

/// The proxy's state at one moment.
pub struct Gathered {
    /// By database, then user.
    pub pools: Vec<PoolSnapshot>,
    pub apps: Apps,
    pub sample: Sample,
}

pub fn gather(from: &Sources<'_>) -> Gathered {
    let pools = from.pools.snapshot();
    let clients = from.clients.all();
    let views = (clients.iter()).filter(|c| !c.console).map(|c| ClientView {
        database: &c.database,
        user: &c.user,
        application: &c.application_name,
        ip: c.addr.map(|a| a.ip().to_canonical()),
        state: match c.state() {
            ClientState::Idle => Use::Idle,
            ClientState::Waiting => Use::Waiting,
            ClientState::Active => Use::Holding,
        },
    });
    let apps = apps::tally(views, from.config.metrics_top_applications);
    let sample = Sample {
        pools: pools.iter().map(|p| pool(p, &apps)).collect(),
        refusals: (Cap::ALL.iter())
            .map(|&cap| (cap.key(), from.refusals.get(cap)))
            .collect(),
        caps: caps(from, &pools, &apps),
        top: apps.top.clone(),
    };
    Gathered {
        pools,
        apps,
        sample,
    }
}

fn pool(p: &PoolSnapshot, apps: &Apps) -> PoolSample {
    let key = (p.database.clone(), p.user.clone());
    PoolSample {
        size: p.settings.size,
        busy: p.servers.active + p.servers.tested + p.servers.login,
        idle: p.servers.idle + p.servers.used,
        waiting: p.cl_waiting,
        longest_wait: p.maxwait,
        totals: p.totals,
        login_failing: p.login_failing.clone(),
        pinned: p.pinned,
        pin_reasons: p.pinned_by_reason.clone(),
        top: apps.per_pool.get(&key).cloned(),
        database: key.0,
        user: key.1,
    }
}

/// Every cap that is on whose use is known here: clients in total and of the top
/// application, servers in total, per database and per user.
fn caps(from: &Sources<'_>, pools: &[PoolSnapshot], apps: &Apps) -> Vec<CapUse> {
    let config = from.config;
    let cap = |key, scope: &str, used, limit| CapUse {
        key,
        scope: scope.to_owned(),
        used,
        limit,
    };
    let mut caps = vec![cap(
        "max_client_conn",
        "",
        from.admission.logged_in(),
        config.max_client_conn,
    )];
    if let Some(top) = apps
        .top
        .as_ref()
        .filter(|_| config.max_client_conn_per_app > 0)
    {
        let scope = format!("application {}", top.application);
        caps.push(cap(
            "max_client_conn_per_app",
            &scope,
            top.clients,
            config.max_client_conn_per_app,
        ));
    }
    if config.max_server_conn > 0 {
        let used = from.pools.server_connections();
        caps.push(cap("max_server_conn", "", used, config.max_server_conn));
    }
    let mut databases: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut users: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in pools {
        let db = databases.entry(&p.database).or_default();
        db.0 += p.open;
        db.1 = db.1.max(p.settings.max_db_connections);
        let user = users.entry(&p.user).or_default();
        user.0 += p.open;
        user.1 = user.1.max(p.settings.max_user_connections);
    }
    for (key, per, scope) in [
        ("max_db_connections", &databases, "database"),
        ("max_user_connections", &users, "user"),
    ] {
        for (name, (used, limit)) in per.iter().filter(|(_, (_, limit))| *limit > 0) {
            caps.push(cap(key, &format!("{scope} {name}"), *used, *limit));
        }
    }
    caps
}
