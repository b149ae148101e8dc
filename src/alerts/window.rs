//! The rules' memory: the counters of the samples of the last minute (to turn counts since
//! start into counts per minute) and since when each pool has been saturated.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::sample::Sample;
use crate::stats::Totals;

/// What "per minute" means for the rules.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The counters of one sample, by pool name.
struct Counters {
    at: Instant,
    refusals: Vec<(&'static str, u64)>,
    pools: HashMap<String, Totals>,
}

#[derive(Default)]
pub struct Window {
    /// Oldest first; the first is the newest one at least [`WINDOW`] old, if there is one.
    past: VecDeque<Counters>,
    now: Option<Instant>,
    saturated_since: HashMap<String, Instant>,
}

impl Window {
    /// Remembers `sample`'s counters (taken at `now`) and forgets what is older than needed.
    pub fn record(&mut self, now: Instant, sample: &Sample) {
        let pools = (sample.pools.iter())
            .map(|p| (p.name(), p.totals))
            .collect();
        self.now = Some(now);
        self.past.push_back(Counters {
            at: now,
            refusals: sample.refusals.clone(),
            pools,
        });
        while self.past.len() > 1 && self.past[1].at + WINDOW <= now {
            self.past.pop_front();
        }
        let saturated: Vec<String> = (sample.pools.iter())
            .filter(|p| p.saturated())
            .map(|p| p.name())
            .collect();
        self.saturated_since
            .retain(|name, _| saturated.contains(name));
        for name in saturated {
            self.saturated_since.entry(name).or_insert(now);
        }
    }

    /// The counters a minute ago; `None` while the rules run for less than a minute, when
    /// every count since start is recent.
    fn base(&self) -> Option<&Counters> {
        let now = self.now?;
        self.past.front().filter(|c| c.at + WINDOW <= now)
    }

    /// Refusals by `cap` over the last minute.
    pub fn refusals(&self, cap: &str, now_count: u64) -> u64 {
        let before = (self.base().into_iter())
            .flat_map(|c| c.refusals.iter())
            .find(|(key, _)| *key == cap)
            .map_or(0, |(_, n)| *n);
        now_count.saturating_sub(before)
    }

    /// What `pool` counted over the last minute. A pool not seen a minute ago is new: all
    /// its counts are recent (and so are those of a pool made anew, counting from zero).
    pub fn recent(&self, pool: &str, now: &Totals) -> Totals {
        match self.base().and_then(|c| c.pools.get(pool)) {
            Some(before) if !made_anew(before, now) => now.minus(before),
            _ => *now,
        }
    }

    /// Since when `pool` has been saturated, sample after sample.
    pub fn saturated_since(&self, pool: &str) -> Option<Instant> {
        self.saturated_since.get(pool).copied()
    }
}

/// A counter went down: the pool was removed and made again since `before`.
fn made_anew(before: &Totals, now: &Totals) -> bool {
    before.server_assignments > now.server_assignments
        || before.connect_failures > now.connect_failures
        || before.login_failures > now.login_failures
        || before.client_logins > now.client_logins
}
