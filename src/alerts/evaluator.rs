//! When an alert fires and resolves, sans-IO: fed a sample and the time, it answers what
//! changed. A breach fires at once (the rules themselves wait where they must, as
//! `alert_pool_saturated_for` does); an alert resolves once its rule has been quiet for
//! [`RESOLVE_AFTER`], so a load that hovers at a threshold logs one line, not one a second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::rules::{self, Finding, Rule, Subject, Thresholds};
use super::sample::Sample;
use super::window::Window;

/// How long a rule must be quiet before its alert resolves.
pub const RESOLVE_AFTER: Duration = Duration::from_secs(3);
/// How long a resolved alert stays listed (as resolved) in `SHOW ALERTS` and `/metrics`.
pub const KEEP_RESOLVED: Duration = Duration::from_secs(15 * 60);

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Breached now, or quiet for less than [`RESOLVE_AFTER`] (`quiet_since`).
    Firing {
        since: Instant,
        quiet_since: Option<Instant>,
    },
    Resolved {
        fired: Instant,
        at: Instant,
    },
}

/// One alert: a rule breached by a subject, and its last words.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: Rule,
    pub subject: Subject,
    pub state: State,
    /// The last measured value against the threshold, as the WARN line said it.
    pub message: String,
}

impl Alert {
    pub fn is_firing(&self) -> bool {
        matches!(self.state, State::Firing { .. })
    }
}

/// A change to log.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fired {
        rule: Rule,
        message: String,
    },
    Resolved {
        rule: Rule,
        subject: Subject,
        lasted: Duration,
    },
}

impl std::fmt::Display for Transition {
    /// The log line: `alert pool_saturated firing: pool appdb/app 5/5 servers busy, …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transition::Fired { rule, message } => {
                write!(f, "alert {} firing: {message}", rule.name())
            }
            Transition::Resolved {
                rule,
                subject,
                lasted,
            } => write!(
                f,
                "alert {} resolved: {subject} after {}",
                rule.name(),
                super::sample::seconds(*lasted)
            ),
        }
    }
}

pub struct Evaluator {
    thresholds: Thresholds,
    window: Window,
    alerts: BTreeMap<(Rule, Subject), Alert>,
}

impl Evaluator {
    pub fn new(thresholds: Thresholds) -> Evaluator {
        Evaluator {
            thresholds,
            window: Window::default(),
            alerts: BTreeMap::new(),
        }
    }

    /// Evaluates from now on with `thresholds` (a reload changed them); firing alerts
    /// resolve, or fire anew, by the new ones.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// Reads `sample`, taken at `now` (never earlier than the last one), and says what
    /// fired and what resolved.
    pub fn step(&mut self, now: Instant, sample: &Sample) -> Vec<Transition> {
        self.window.record(now, sample);
        let findings = rules::check(&self.thresholds, now, sample, &self.window);
        let mut changes = Vec::new();
        let mut breached = Vec::with_capacity(findings.len());
        for finding in findings {
            breached.push((finding.rule, finding.subject.clone()));
            changes.extend(self.breach(now, finding));
        }
        for (key, alert) in &mut self.alerts {
            if !breached.contains(key) {
                changes.extend(quiet(now, alert));
            }
        }
        self.alerts.retain(|_, alert| match alert.state {
            State::Resolved { at, .. } => now.saturating_duration_since(at) < KEEP_RESOLVED,
            State::Firing { .. } => true,
        });
        changes
    }

    fn breach(&mut self, now: Instant, finding: Finding) -> Option<Transition> {
        let key = (finding.rule, finding.subject.clone());
        let fired = Transition::Fired {
            rule: finding.rule,
            message: finding.message.clone(),
        };
        let firing = State::Firing {
            since: now,
            quiet_since: None,
        };
        match self.alerts.get_mut(&key) {
            Some(alert) => {
                alert.message = finding.message;
                match &mut alert.state {
                    State::Firing { quiet_since, .. } => {
                        *quiet_since = None;
                        None
                    }
                    State::Resolved { .. } => {
                        alert.state = firing;
                        Some(fired)
                    }
                }
            }
            None => {
                let alert = Alert {
                    rule: finding.rule,
                    subject: finding.subject,
                    state: firing,
                    message: finding.message,
                };
                self.alerts.insert(key, alert);
                Some(fired)
            }
        }
    }

    /// Every alert, firing or recently resolved, by rule then subject.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }
}

/// A firing alert whose rule is quiet now resolves once quiet for [`RESOLVE_AFTER`].
fn quiet(now: Instant, alert: &mut Alert) -> Option<Transition> {
    let State::Firing { since, quiet_since } = &mut alert.state else {
        return None;
    };
    let quiet = *quiet_since.get_or_insert(now);
    if now.saturating_duration_since(quiet) < RESOLVE_AFTER {
        return None;
    }
    let lasted = quiet.saturating_duration_since(*since);
    alert.state = State::Resolved {
        fired: *since,
        at: now,
    };
    Some(Transition::Resolved {
        rule: alert.rule,
        subject: alert.subject.clone(),
        lasted,
    })
}
