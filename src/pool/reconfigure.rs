//! A reload applied to every pool: each takes the target and settings the new
//! configuration gives its (database, user) ([`Pool::reconfigure`]); a pool whose route or
//! user is gone keeps serving the clients it has and goes with the last of them; the
//! budget takes the new `max_server_conn`. Pools not made yet are made from the new
//! configuration at their first login.

use std::sync::Arc;

use super::spec::{self, Reconfigured};
use super::Pools;
use crate::config::Config;

/// What a reload did to the pools, by pool name (`database/user`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolsReport {
    /// New limits, timings or credentials.
    pub changed: Vec<String>,
    /// Now leading to another server: `appdb/app: app@host:5432/appdb -> …`.
    pub repointed: Vec<String>,
    /// Route or user removed: the pool goes when its clients leave.
    pub orphaned: Vec<String>,
}

impl Pools {
    /// Puts `new` in force in every pool (`old` is the configuration it replaces).
    pub fn reconfigure(
        &self,
        old: &Config,
        new: &Config,
        tls: &Arc<crate::tls::Tls>,
    ) -> PoolsReport {
        self.0.budget.set_max_server_conn(new.max_server_conn);
        let mut report = PoolsReport::default();
        let mut pools = self.all();
        pools.sort_by(|a, b| a.name().cmp(b.name()));
        for pool in pools {
            let key = &pool.0.key;
            let user_gone = old.users.contains_key(&key.user) && !new.users.contains_key(&key.user);
            let made = spec::from_config(new, key, tls).filter(|_| !user_gone);
            let name = pool.name().to_owned();
            let Some((target, settings)) = made else {
                pool.orphan();
                report.orphaned.push(name);
                continue;
            };
            match pool.reconfigure(target, settings) {
                Reconfigured::Unchanged => {}
                Reconfigured::Changed => report.changed.push(name),
                Reconfigured::Repointed { from, to } => {
                    report.repointed.push(format!("{name}: {from} -> {to}"))
                }
            }
        }
        // Raised caps: pools the budget held back may open now.
        self.0.budget.wake();
        report
    }
}
