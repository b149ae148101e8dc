use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::evaluator::RESOLVE_AFTER;
use super::sample::{CapUse, Holder, PoolSample, Sample};
use super::*;
use crate::stats::{Totals, WAIT_BUCKETS_US};

fn thresholds() -> Thresholds {
    Thresholds {
        saturated_for: Duration::from_secs(1),
        wait_p99: Duration::from_secs(1),
        refusals_per_minute: 10,
        server_failures_per_minute: 1,
        cap_near_percent: 90,
        pinned_percent: 50,
    }
}

fn billing() -> Holder {
    Holder {
        application: "billing".into(),
        clients: 58,
        addr: Some("127.0.0.1".into()),
    }
}

fn quiet_pool() -> PoolSample {
    PoolSample {
        database: "appdb".into(),
        user: "app".into(),
        size: 5,
        busy: 1,
        idle: 4,
        top: Some(billing()),
        ..PoolSample::default()
    }
}

fn flooded_pool() -> PoolSample {
    PoolSample {
        busy: 5,
        idle: 0,
        waiting: 55,
        longest_wait: Duration::from_millis(3100),
        ..quiet_pool()
    }
}

fn of(pools: Vec<PoolSample>) -> Sample {
    Sample {
        pools,
        ..Sample::default()
    }
}

/// Steps `evaluator` once a second from `start` for `secs` seconds on `sample`, returning
/// every transition with the second it happened at.
fn run_for(
    evaluator: &mut Evaluator,
    start: Instant,
    from: u64,
    secs: u64,
    sample: &Sample,
) -> Vec<(u64, Transition)> {
    let mut out = Vec::new();
    for s in from..from + secs {
        let at = start + Duration::from_secs(s);
        out.extend(evaluator.step(at, sample).into_iter().map(|t| (s, t)));
    }
    out
}

#[test]
fn a_saturated_pool_fires_once_after_the_threshold_and_names_the_application() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let flood = of(vec![flooded_pool()]);
    let changes = run_for(&mut evaluator, start, 0, 10, &flood);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (at, fired) = &changes[0];
    assert_eq!(*at, 1, "fires once saturated for 1 s");
    assert_eq!(
        fired.to_string(),
        "alert pool_saturated firing: pool appdb/app 5/5 servers busy, 55 waiting, \
         saturated for 1.0 s > 1.0 s, longest wait 3.1 s; top application billing \
         (58 clients from 127.0.0.1)"
    );
    let rows = evaluator.alerts().filter(|a| a.is_firing()).count();
    assert_eq!(rows, 1);

    let calm = of(vec![quiet_pool()]);
    let changes = run_for(&mut evaluator, start, 10, 10, &calm);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].0, 10 + RESOLVE_AFTER.as_secs());
    assert_eq!(
        changes[0].1.to_string(),
        "alert pool_saturated resolved: pool appdb/app after 9.0 s"
    );
    assert!(evaluator.alerts().all(|a| !a.is_firing()));
}

#[test]
fn a_short_lull_does_not_resolve_and_refire() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let flood = of(vec![flooded_pool()]);
    let calm = of(vec![quiet_pool()]);
    let mut changes = run_for(&mut evaluator, start, 0, 5, &flood);
    changes.extend(run_for(&mut evaluator, start, 5, 2, &calm));
    changes.extend(run_for(&mut evaluator, start, 7, 5, &flood));
    assert_eq!(changes.len(), 1, "only the first firing: {changes:?}");
}

#[test]
fn saturation_shorter_than_the_threshold_is_not_an_alert() {
    let mut t = thresholds();
    t.saturated_for = Duration::from_secs(5);
    let mut evaluator = Evaluator::new(t);
    let start = Instant::now();
    let mut changes = Vec::new();
    for s in 0..20 {
        let sample = match s % 5 {
            4 => of(vec![quiet_pool()]),
            _ => of(vec![flooded_pool()]),
        };
        changes.extend(evaluator.step(start + Duration::from_secs(s), &sample));
    }
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_zero_threshold_turns_its_rule_off() {
    let t = Thresholds {
        saturated_for: Duration::ZERO,
        wait_p99: Duration::ZERO,
        refusals_per_minute: 0,
        server_failures_per_minute: 0,
        cap_near_percent: 0,
        pinned_percent: 0,
    };
    let mut evaluator = Evaluator::new(t);
    let mut pool = flooded_pool();
    pool.login_failing = Some("password authentication failed".into());
    pool.pinned = 5;
    let sample = Sample {
        pools: vec![pool],
        caps: vec![cap(100, 100)],
        ..Sample::default()
    };
    let changes = run_for(&mut evaluator, Instant::now(), 0, 5, &sample);
    assert!(changes.is_empty(), "{changes:?}");
}

/// Totals with `fast` waits of 1 ms and `slow` ones of 10 s.
fn waits(fast: u64, slow: u64) -> Totals {
    let mut totals = Totals::default();
    let slow_bucket = WAIT_BUCKETS_US
        .iter()
        .position(|&us| us == 10_000_000)
        .unwrap();
    totals.wait_buckets[0] = fast;
    totals.wait_buckets[slow_bucket] = slow;
    totals.server_assignments = fast + slow;
    totals
}

#[test]
fn wait_p99_counts_the_last_minute_only() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let mut pool = quiet_pool();
    // A thousand slow waits at first, then fast ones only.
    pool.totals = waits(0, 1000);
    let changes = run_for(&mut evaluator, start, 0, 1, &of(vec![pool.clone()]));
    assert_eq!(changes.len(), 1, "slow waits at start fire: {changes:?}");
    assert!(
        changes[0].1.to_string().starts_with(
            "alert wait_p99 firing: pool appdb/app wait p99 10.0 s > 1.0 s over the last \
             minute (1000 waits"
        ),
        "{}",
        changes[0].1
    );
    let mut changes = Vec::new();
    for s in 1..120 {
        pool.totals = waits(100 * s, 1000);
        let sample = of(vec![pool.clone()]);
        changes.extend(evaluator.step(start + Duration::from_secs(s), &sample));
    }
    // The slow waits leave the window after a minute; quiet for 3 s more, it resolves.
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(matches!(changes[0], Transition::Resolved { .. }));
}

#[test]
fn counts_per_minute_start_again_for_a_pool_made_anew() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let mut pool = quiet_pool();
    pool.totals.login_failures = 5;
    run_for(&mut evaluator, start, 0, 70, &of(vec![pool.clone()]));
    // Quiet for a minute: resolved. The pool is then removed and made again; its one
    // failure since is recent, though its count is below the one a minute ago.
    assert!(evaluator.alerts().all(|a| !a.is_firing()));
    pool.totals.login_failures = 1;
    let changes = run_for(&mut evaluator, start, 70, 1, &of(vec![pool]));
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0]
        .1
        .to_string()
        .contains("1 server connect/login failures"));
}

#[test]
fn refusals_fire_per_cap_per_minute() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let mut changes = Vec::new();
    for s in 0..200u64 {
        // 15 refusals a minute for the first two minutes, then none.
        let count = s.min(120) / 4;
        let sample = Sample {
            refusals: vec![
                ("max_client_conn_per_app", count),
                ("query_wait_timeout", 3),
            ],
            top: Some(billing()),
            ..Sample::default()
        };
        changes.extend(
            (evaluator
                .step(start + Duration::from_secs(s), &sample)
                .into_iter())
            .map(|t| (s, t)),
        );
    }
    assert_eq!(changes.len(), 2, "{changes:?}");
    let (at, fired) = &changes[0];
    assert_eq!(*at, 40, "ten refusals after 40 s");
    assert_eq!(
        fired.to_string(),
        "alert refusals firing: cap max_client_conn_per_app: 10 clients refused in the last \
         minute (threshold 10); top application billing (58 clients from 127.0.0.1)"
    );
    let (at, resolved) = &changes[1];
    assert!(matches!(resolved, Transition::Resolved { .. }));
    // 30 refusals by 120 s; fewer than ten in the minute before from 144 s, quiet 3 s more.
    assert_eq!(*at, 144 + RESOLVE_AFTER.as_secs(), "resolved at {at}");
}

#[test]
fn login_failures_fire_while_failing_and_resolve_after_a_quiet_minute() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    let mut pool = quiet_pool();
    pool.totals.connect_failures = 4;
    pool.login_failing = Some("FATAL 28P01 password authentication failed".into());
    let changes = run_for(&mut evaluator, start, 0, 5, &of(vec![pool.clone()]));
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].1.to_string().contains(
        "pool appdb/app 4 server connect/login failures in the last minute (threshold 1), \
         logins failing: FATAL 28P01"
    ));
    pool.login_failing = None;
    let changes = run_for(&mut evaluator, start, 5, 100, &of(vec![pool]));
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!((60..70).contains(&changes[0].0), "{changes:?}");
}

fn cap(used: usize, limit: usize) -> CapUse {
    CapUse {
        key: "max_db_connections",
        scope: "appdb".into(),
        used,
        limit,
    }
}

#[test]
fn a_cap_near_its_limit_fires_at_the_percentage() {
    let mut evaluator = Evaluator::new(thresholds());
    let at = |used| Sample {
        caps: vec![cap(used, 20)],
        ..Sample::default()
    };
    let start = Instant::now();
    assert!(evaluator.step(start, &at(17)).is_empty());
    let fired = evaluator.step(start + Duration::from_secs(1), &at(18));
    assert_eq!(
        fired.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        [
            "alert cap_near_limit firing: cap max_db_connections for appdb used 18/20 \
          (90%, threshold 90%)"
        ]
    );
}

#[test]
fn pinned_clients_fire_at_the_share_of_the_pool() {
    let mut evaluator = Evaluator::new(thresholds());
    let mut pool = quiet_pool();
    pool.size = 10;
    pool.pinned = 5;
    pool.pin_reasons = vec![("advisory lock", 3), ("temporary table", 2)];
    let fired = evaluator.step(Instant::now(), &of(vec![pool]));
    assert_eq!(
        fired.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        [
            "alert clients_pinned firing: pool appdb/app 5 pinned clients hold 50% of \
          pool_size 10 (threshold 50%; advisory lock 3, temporary table 2); top application \
          billing (58 clients from 127.0.0.1)"
        ]
    );
}

#[test]
fn the_store_lists_firing_alerts_first_as_rows() {
    let mut evaluator = Evaluator::new(thresholds());
    let start = Instant::now();
    run_for(&mut evaluator, start, 0, 3, &of(vec![flooded_pool()]));
    let alerts = Alerts::default();
    alerts.publish(evaluator.alerts().cloned().collect());
    let rows = alerts.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].rule,
            rows[0].database.as_str(),
            rows[0].user.as_str()
        ),
        ("pool_saturated", "appdb", "app")
    );
    assert_eq!(rows[0].state, "firing");
    assert!(rows[0].message.contains("billing"));
}

fn any_pool() -> impl Strategy<Value = PoolSample> {
    (0usize..3, 0usize..3, 0usize..4, 0u64..3, any::<bool>()).prop_map(
        |(busy, idle, waiting, failures, failing)| PoolSample {
            busy,
            idle,
            waiting,
            totals: Totals {
                connect_failures: failures,
                ..Totals::default()
            },
            login_failing: failing.then(|| "refused".to_owned()),
            ..quiet_pool()
        },
    )
}

proptest! {
    /// Over any sequence of samples, an alert's log lines alternate: fired, resolved,
    /// fired, …; and an alert is listed as firing exactly when its last line was "fired".
    #[test]
    fn fired_and_resolved_alternate(
        steps in proptest::collection::vec((any_pool(), 1u64..3000), 1..80)
    ) {
        let mut evaluator = Evaluator::new(thresholds());
        let mut now = Instant::now();
        let mut last: std::collections::HashMap<Rule, bool> = Default::default();
        for (pool, millis) in steps {
            now += Duration::from_millis(millis);
            for change in evaluator.step(now, &of(vec![pool])) {
                let (rule, fired) = match change {
                    Transition::Fired { rule, .. } => (rule, true),
                    Transition::Resolved { rule, .. } => (rule, false),
                };
                let before = last.insert(rule, fired).unwrap_or(false);
                prop_assert_ne!(before, fired, "{:?} twice in a row", rule);
            }
            for alert in evaluator.alerts() {
                prop_assert_eq!(alert.is_firing(), last.get(&alert.rule) == Some(&true));
            }
        }
    }
}
