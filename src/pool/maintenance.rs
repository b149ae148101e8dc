//! Per-pool housekeeping: remove the pool when it is no longer needed ([`super::lifetime`]),
//! close servers idle past `server_idle_timeout` or older than `server_lifetime`, and keep
//! `min_pool_size` connections open (within the budget, and while logins are failing
//! only one attempt per `server_login_retry`).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Pool;
use crate::server;

/// How often a pool looks after itself; the timeouts it enforces are coarser than this.
const TICK: Duration = Duration::from_millis(500);

pub(super) async fn run(pool: Pool) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pool.0.closed.cancelled() => return,
            _ = tick.tick() => {}
        }
        if pool.retire_if_unneeded() {
            return;
        }
        (pool.0.counters).tick(Instant::now(), pool.spec().settings.stats_period);
        close_expired(&pool);
        fill_to_minimum(&pool).await;
    }
}

fn close_expired(pool: &Pool) {
    let spec = pool.spec();
    let settings = &spec.settings;
    let now = Instant::now();
    let mut closed = 0;
    {
        let mut state = pool.state();
        let mut keep = Vec::with_capacity(state.idle.len());
        // Oldest-used first, so the servers closed for idleness are the longest idle.
        let idle = std::mem::take(&mut state.idle);
        let mut open = state.open;
        for server in idle {
            let idle_too_long = !settings.idle_timeout.is_zero()
                && now.duration_since(server.last_used) >= settings.idle_timeout
                && open > settings.min_size;
            let reason = super::checkout::unusable(&spec, &server, now)
                .or(idle_too_long.then_some("server_idle_timeout reached"));
            match reason {
                Some(reason) => {
                    open -= 1;
                    closed += 1;
                    info!(pool = %pool.0.name, server_id = server.id, reason, "server closed");
                }
                None => keep.push(server),
            }
        }
        state.open = open;
        state.idle = keep;
    }
    let mut starved = false;
    for _ in 0..closed {
        starved |= pool.0.budget.close(&spec.account);
    }
    if starved {
        pool.0.budget.wake();
    }
}

/// Slots for the connections `min_pool_size` still wants, as far as the budget allows.
fn min_slots(pool: &Pool) -> usize {
    let spec = pool.spec();
    let mut state = pool.state();
    if state.paused {
        return 0;
    }
    if !state.login.may_open(state.open, Instant::now()) {
        return 0;
    }
    // While logins fail or none has succeeded yet, one attempt at a time, as for clients.
    let most = match state.login.failing.is_none() && state.login.proven {
        true => usize::MAX,
        false => 1,
    };
    let mut slots = 0;
    while slots < most
        && state.open < spec.settings.min_size
        && pool.0.budget.open(&spec.account, None).is_ok()
    {
        state.open += 1;
        slots += 1;
    }
    if slots > 0 && state.login.failing.is_some() {
        state.login.retry_at = Some(Instant::now() + spec.settings.login_retry);
    }
    slots
}

async fn fill_to_minimum(pool: &Pool) {
    for _ in 0..min_slots(pool) {
        let (target, timeout) = {
            let spec = pool.spec();
            (spec.target.clone(), spec.settings.connect_timeout)
        };
        let opening = pool.opening();
        let outcome = server::connect(target, timeout).await;
        drop(opening);
        match outcome {
            Ok(mut server) => {
                info!(pool = %pool.0.name, server_id = server.id, reason = "min_pool_size", "server connected");
                pool.list_server(&mut server);
                pool.remember_login_params(&server);
                pool.login_succeeded();
                pool.checkin(server, None);
            }
            Err(err) => {
                warn!(pool = %pool.0.name, cause = %err, "could not open a server for min_pool_size");
                pool.count_failure(&err);
                pool.login_failed(&err);
                pool.release_slot(None);
            }
        }
    }
}
