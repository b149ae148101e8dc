//! Makes a [`Sample`] from the live pools, the refusal counters and the client caps.

use crate::admission::Admission;
use crate::config::Config;
use crate::pool::{Pool, Pools};
use crate::refusals::{Cap, Refusals};

use super::sample::{CapUse, PoolSample, Sample};

/// What the sample is read from.
pub struct Sources<'a> {
    pub config: &'a Config,
    pub pools: &'a Pools,
    pub refusals: &'a Refusals,
    pub admission: &'a Admission,
}

pub fn sample(from: &Sources<'_>) -> Sample {
    let mut pools: Vec<PoolSample> = from.pools.all().iter().map(pool).collect();
    pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    let refusals = Cap::ALL
        .iter()
        .map(|&cap| (cap.key(), from.refusals.get(cap)))
        .collect();
    let mut caps = vec![CapUse {
        key: "max_client_conn",
        scope: String::new(),
        used: from.admission.logged_in(),
        limit: from.config.max_client_conn,
    }];
    if from.config.max_server_conn > 0 {
        caps.push(CapUse {
            key: "max_server_conn",
            scope: String::new(),
            used: from.pools.server_connections(),
            limit: from.config.max_server_conn,
        });
    }
    Sample {
        pools,
        refusals,
        caps,
        top: None,
    }
}

fn pool(pool: &Pool) -> PoolSample {
    let stats = pool.stats();
    let (database, user) = pool.name().split_once('/').unwrap_or((pool.name(), ""));
    PoolSample {
        database: database.to_owned(),
        user: user.to_owned(),
        size: pool.settings().size,
        busy: stats.open.saturating_sub(stats.idle),
        idle: stats.idle,
        waiting: stats.waiting,
        pinned: pool.pinned_clients(),
        pin_reasons: pool.pinned_by_reason(),
        ..PoolSample::default()
    }
}
