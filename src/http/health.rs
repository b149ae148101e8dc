//! Readiness for probes: ready while the proxy is not draining and no pool's server logins
//! are failing. Liveness needs no check: answering at all is the proof.
//!
//! A pool's logins count as failing from a failed connect or login until one succeeds;
//! pgwarden tries again only when a client needs a server (or `min_pool_size` asks for
//! one), so a pool nobody uses stays unready until a client comes.

use crate::context::Context;

/// `Err` names why the proxy should get no new clients now.
pub fn ready(ctx: &Context) -> Result<(), String> {
    if ctx.draining() {
        return Err("draining: pgwarden is shutting down".to_owned());
    }
    let pools = ctx.pools.snapshot();
    match pools
        .iter()
        .find_map(|p| Some((p, p.login_failing.as_ref()?)))
    {
        Some((pool, failure)) => Err(format!(
            "server logins of pool {}/{} are failing: {failure}",
            pool.database, pool.user
        )),
        None => Ok(()),
    }
}
