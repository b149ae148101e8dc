//! The built-in rules: each reads a sample (and the last minute's memory) and says which
//! pools or caps are in trouble now, with the measured value, the threshold and the
//! application behind it, worded for the WARN line.

use std::time::{Duration, Instant};

use super::sample::{seconds, Holder, PoolSample, Sample};
use super::window::Window;
use crate::config::Config;

/// A built-in alert rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    PoolSaturated,
    WaitP99,
    Refusals,
    ServerFailures,
    CapNearLimit,
    ClientsPinned,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::PoolSaturated,
        Rule::WaitP99,
        Rule::Refusals,
        Rule::ServerFailures,
        Rule::CapNearLimit,
        Rule::ClientsPinned,
    ];

    /// The rule's name in logs, `/metrics` and `SHOW ALERTS`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::PoolSaturated => "pool_saturated",
            Rule::WaitP99 => "wait_p99",
            Rule::Refusals => "refusals",
            Rule::ServerFailures => "server_failures",
            Rule::CapNearLimit => "cap_near_limit",
            Rule::ClientsPinned => "clients_pinned",
        }
    }
}

/// The thresholds of every rule (from the `alert_*` settings); zero turns a rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    pub saturated_for: Duration,
    pub wait_p99: Duration,
    pub refusals_per_minute: usize,
    pub server_failures_per_minute: usize,
    pub cap_near_percent: u8,
    pub pinned_percent: u8,
}

impl Thresholds {
    pub fn of(config: &Config) -> Thresholds {
        Thresholds {
            saturated_for: config.alert_pool_saturated_for,
            wait_p99: config.alert_wait_p99,
            refusals_per_minute: config.alert_refusals_per_minute,
            server_failures_per_minute: config.alert_server_failures_per_minute,
            cap_near_percent: config.alert_cap_near_percent,
            pinned_percent: config.alert_pinned_percent,
        }
    }
}

/// What an alert is about: a pool (database and user) or a cap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Pool { database: String, user: String },
    Cap(String),
}

impl Subject {
    fn pool(pool: &PoolSample) -> Subject {
        Subject::Pool {
            database: pool.database.clone(),
            user: pool.user.clone(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Pool { database, user } => write!(f, "pool {database}/{user}"),
            Subject::Cap(cap) => write!(f, "cap {cap}"),
        }
    }
}

/// One rule breached by one subject now.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    pub subject: Subject,
    /// The measured value against the threshold, and the application behind it.
    pub message: String,
}

/// Every breach in `sample`, rule by rule (rules whose threshold is zero are off).
pub fn check(t: &Thresholds, now: Instant, sample: &Sample, window: &Window) -> Vec<Finding> {
    let mut found = Vec::new();
    for pool in &sample.pools {
        found.extend(saturated(t, now, pool, window));
        found.extend(wait_p99(t, pool, window));
        found.extend(server_failures(t, pool, window));
        found.extend(pinned(t, pool));
    }
    found.extend(refusals(t, sample, window));
    found.extend(caps(t, sample));
    found
}

/// `; top application billing (58 clients from 10.0.0.7)`, when one is known.
fn behind(top: Option<&Holder>) -> String {
    top.map_or_else(String::new, |h| format!("; {}", h.describe()))
}

fn finding(rule: Rule, pool: &PoolSample, measured: String) -> Finding {
    let subject = Subject::pool(pool);
    Finding {
        rule,
        message: format!("{subject} {measured}{}", behind(pool.top.as_ref())),
        subject,
    }
}

fn saturated(t: &Thresholds, now: Instant, pool: &PoolSample, w: &Window) -> Option<Finding> {
    let since = w.saturated_since(&pool.name())?;
    let lasted = now.saturating_duration_since(since);
    if t.saturated_for.is_zero() || lasted < t.saturated_for {
        return None;
    }
    let measured = format!(
        "{}/{} servers busy, {} waiting, saturated for {} > {}, longest wait {}",
        pool.busy,
        pool.size,
        pool.waiting,
        seconds(lasted),
        seconds(t.saturated_for),
        seconds(pool.longest_wait),
    );
    Some(finding(Rule::PoolSaturated, pool, measured))
}

fn wait_p99(t: &Thresholds, pool: &PoolSample, w: &Window) -> Option<Finding> {
    let recent = w.recent(&pool.name(), &pool.totals);
    let p99 = recent.wait_quantile(0.99)?;
    if t.wait_p99.is_zero() || p99 <= t.wait_p99 {
        return None;
    }
    let measured = format!(
        "wait p99 {} > {} over the last minute ({} waits, {} waiting now)",
        seconds(p99),
        seconds(t.wait_p99),
        recent.server_assignments,
        pool.waiting,
    );
    Some(finding(Rule::WaitP99, pool, measured))
}

fn server_failures(t: &Thresholds, pool: &PoolSample, w: &Window) -> Option<Finding> {
    let min = t.server_failures_per_minute as u64;
    let counted = w.recent(&pool.name(), &pool.totals);
    let recent = counted.connect_failures + counted.login_failures;
    if min == 0 || (recent < min && pool.login_failing.is_none()) {
        return None;
    }
    let mut measured =
        format!("{recent} server connect/login failures in the last minute (threshold {min})");
    if let Some(failure) = &pool.login_failing {
        measured.push_str(&format!(", logins failing: {failure}"));
    }
    Some(finding(Rule::ServerFailures, pool, measured))
}

fn pinned(t: &Thresholds, pool: &PoolSample) -> Option<Finding> {
    let percent = usize::from(t.pinned_percent);
    if percent == 0 || pool.pinned == 0 || pool.pinned * 100 < pool.size * percent {
        return None;
    }
    let reasons: Vec<String> = (pool.pin_reasons.iter())
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let measured = format!(
        "{} pinned clients hold {}% of pool_size {} (threshold {percent}%; {})",
        pool.pinned,
        pool.pinned * 100 / pool.size.max(1),
        pool.size,
        reasons.join(", "),
    );
    Some(finding(Rule::ClientsPinned, pool, measured))
}

fn refusals(t: &Thresholds, sample: &Sample, w: &Window) -> Vec<Finding> {
    let min = t.refusals_per_minute as u64;
    if min == 0 {
        return Vec::new();
    }
    let breached = sample.refusals.iter().filter_map(|&(cap, count)| {
        let recent = w.refusals(cap, count);
        (recent >= min).then(|| {
            let subject = Subject::Cap(cap.to_owned());
            let message = format!(
                "{subject}: {recent} clients refused in the last minute (threshold {min}){}",
                behind(sample.top.as_ref())
            );
            Finding {
                rule: Rule::Refusals,
                subject,
                message,
            }
        })
    });
    breached.collect()
}

fn caps(t: &Thresholds, sample: &Sample) -> Vec<Finding> {
    let percent = usize::from(t.cap_near_percent);
    if percent == 0 {
        return Vec::new();
    }
    let near = sample.caps.iter().filter(|c| c.limit > 0);
    let near = near.filter(|c| c.used * 100 >= c.limit * percent);
    let found = near.map(|cap| {
        let subject = Subject::Cap(cap.name());
        let message = format!(
            "{subject} used {}/{} ({}%, threshold {percent}%){}",
            cap.used,
            cap.limit,
            cap.used * 100 / cap.limit,
            behind(sample.top.as_ref())
        );
        Finding {
            rule: Rule::CapNearLimit,
            subject,
            message,
        }
    });
    found.collect()
}
