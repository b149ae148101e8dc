//! Built-in alert rules over the pools' state: pool saturated, wait p99, refusals per
//! minute, server connect/login failures, a cap near its limit, clients pinned. A task
//! samples the proxy every [`INTERVAL`], the sans-IO [`Evaluator`] says what fired or
//! resolved (one WARN line, one INFO line), and the alerts are published in [`Alerts`] for
//! `/metrics`, the status page and the console's `SHOW ALERTS`.
//!
//! - [`sample`]: what the rules read (plain data, made by [`collect`] from the pools).
//! - [`rules`]: each rule's check and wording; [`window`]: the last minute's counters.
//! - [`evaluator`]: firing and resolving.

pub mod apps;
pub mod collect;
pub mod evaluator;
pub mod rules;
pub mod sample;
pub mod window;

#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use evaluator::{Alert, Evaluator, State, Transition};
pub use rules::{Rule, Subject, Thresholds};
pub use sample::Sample;

/// How often the rules are evaluated.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The alerts as last evaluated, shared with whoever shows them. The lock is held only to
/// copy the list in or out.
#[derive(Debug, Default)]
pub struct Alerts {
    current: Mutex<Vec<Alert>>,
}

/// One alert as `SHOW ALERTS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// `pool_saturated`, `wait_p99`, …
    pub rule: &'static str,
    /// The pool's database and user; empty for an alert on a cap.
    pub database: String,
    pub user: String,
    /// The cap's name for an alert on a cap (`max_client_conn`); empty for a pool.
    pub cap: String,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// Firing: for how long. Resolved: how long ago.
    pub since: Duration,
    /// The measured value, the threshold and the application behind it.
    pub message: String,
}

impl Alerts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Alert>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, alerts: Vec<Alert>) {
        *self.lock() = alerts;
    }

    /// Every alert firing or recently resolved, by rule then subject.
    pub fn list(&self) -> Vec<Alert> {
        self.lock().clone()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> Vec<Alert> {
        self.lock()
            .iter()
            .filter(|a| a.is_firing())
            .cloned()
            .collect()
    }

    /// The rows of `SHOW ALERTS`, firing first.
    pub fn rows(&self) -> Vec<AlertRow> {
        let now = Instant::now();
        let mut rows: Vec<AlertRow> = self.lock().iter().map(|a| row(a, now)).collect();
        rows.sort_by_key(|r| r.state != "firing");
        rows
    }
}

fn row(alert: &Alert, now: Instant) -> AlertRow {
    let (database, user, cap) = match &alert.subject {
        Subject::Pool { database, user } => (database.clone(), user.clone(), String::new()),
        Subject::Cap(cap) => (String::new(), String::new(), cap.clone()),
    };
    let (state, since) = match alert.state {
        State::Firing { since, .. } => ("firing", since),
        State::Resolved { at, .. } => ("resolved", at),
    };
    AlertRow {
        rule: alert.rule.name(),
        database,
        user,
        cap,
        state,
        since: now.saturating_duration_since(since),
        message: alert.message.clone(),
    }
}

/// Evaluates the rules every [`INTERVAL`] with the thresholds and on the sample `sample`
/// returns, logs each change and publishes the alerts in `alerts`, until `stop`.
pub async fn run(
    alerts: std::sync::Arc<Alerts>,
    mut sample: impl FnMut() -> (Thresholds, Sample),
    stop: CancellationToken,
) {
    let mut evaluator: Option<Evaluator> = None;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (thresholds, now) = sample();
        let evaluator = evaluator.get_or_insert_with(|| Evaluator::new(thresholds.clone()));
        evaluator.set_thresholds(thresholds);
        for change in evaluator.step(Instant::now(), &now) {
            match change {
                Transition::Fired { .. } => warn!("{change}"),
                Transition::Resolved { .. } => info!("{change}"),
            }
        }
        alerts.publish(evaluator.alerts().cloned().collect());
    }
}
