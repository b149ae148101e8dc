//! The rules' memory: the counters of the samples of the last minute (to turn counts since
//! start into counts per minute) and since when each pool has been saturated.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::sample::{Sample, WaitHistogram};

/// What "per minute" means for the rules.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The counters of one sample, by pool name.
struct Counters {
    at: Instant,
    refusals: Vec<(&'static str, u64)>,
    failures: HashMap<String, u64>,
    waits: HashMap<String, WaitHistogram>,
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
        let mut failures = HashMap::new();
        let mut waits = HashMap::new();
        for pool in &sample.pools {
            failures.insert(pool.name(), pool.server_failures);
            if let Some(histogram) = &pool.waits {
                waits.insert(pool.name(), histogram.clone());
            }
        }
        self.now = Some(now);
        self.past.push_back(Counters {
            at: now,
            refusals: sample.refusals.clone(),
            failures,
            waits,
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

    /// Server failures of `pool` over the last minute. A pool not seen a minute ago is
    /// new: all its failures are recent.
    pub fn failures(&self, pool: &str, now_count: u64) -> u64 {
        let before = self.base().and_then(|c| c.failures.get(pool)).copied();
        match before {
            Some(before) if before <= now_count => now_count - before,
            _ => now_count,
        }
    }

    /// The waits of `pool` over the last minute.
    pub fn waits(&self, pool: &str, now: &WaitHistogram) -> WaitHistogram {
        now.since(self.base().and_then(|c| c.waits.get(pool)))
    }

    /// Since when `pool` has been saturated, sample after sample.
    pub fn saturated_since(&self, pool: &str) -> Option<Instant> {
        self.saturated_since.get(pool).copied()
    }
}
