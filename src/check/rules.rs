//! Findings the configuration shows on its own, without asking the database: caps that
//! contradict each other, timeouts missing or out of order, too few file descriptors, and
//! pool modes that will break session state. Pure.

use super::capacity::PoolLimits;
use super::{Finding, Level};
use crate::config::{Config, PoolMode};

/// File descriptors a process needs besides its sockets (logs, listeners, resolver, …).
const FD_MARGIN: u64 = 32;

/// Every finding of the configuration itself. `fd_limit` is the soft RLIMIT_NOFILE pgwarden
/// would run with (`None`: unknown).
pub fn findings(config: &Config, pools: &[PoolLimits], fd_limit: Option<u64>) -> Vec<Finding> {
    let mut out = Vec::new();
    caps(config, pools, &mut out);
    timeouts(config, &mut out);
    if let Some(limit) = fd_limit {
        descriptors(config, pools, limit, &mut out);
    }
    modes(config, pools, &mut out);
    out
}

fn caps(config: &Config, pools: &[PoolLimits], out: &mut Vec<Finding>) {
    if config.wildcard.is_some() && config.max_server_conn == 0 && config.max_db_connections == 0 {
        out.push(Finding::new(
            Level::Warning,
            "max_server_conn",
            "the \"*\" route opens a pool for every database name a client asks for, and no \
             max_server_conn or max_db_connections bounds their servers together",
        ));
    }
    let widest = pools.iter().map(PoolLimits::most).max().unwrap_or(0);
    if config.max_client_conn < widest {
        out.push(Finding::new(
            Level::Warning,
            "max_client_conn",
            format!(
                "max_client_conn {} is below what one pool may hold ({widest}); those servers can never all be used",
                config.max_client_conn
            ),
        ));
    }
    for pool in pools {
        let settings = (config.databases.get(&pool.database))
            .or(config.wildcard.as_ref())
            .map(|route| config.pool_config(route, config.users.get(&pool.user)));
        let Some(settings) = settings else { continue };
        for (key, cap) in [
            (
                "max_client_conn_per_database",
                settings.max_client_conn_per_database,
            ),
            (
                "max_client_conn_per_user",
                settings.max_client_conn_per_user,
            ),
        ] {
            if cap > 0 && cap < pool.pool_size {
                out.push(Finding::new(
                    Level::Warning,
                    key,
                    format!(
                        "{key} {cap} is below pool_size {} of pool {}/{}: the pool can never fill",
                        pool.pool_size, pool.database, pool.user
                    ),
                ));
            }
        }
    }
}

fn timeouts(config: &Config, out: &mut Vec<Finding>) {
    let mut warn =
        |key: &str, message: String| out.push(Finding::new(Level::Warning, key, message));
    if config.query_wait_timeout.is_zero() {
        warn(
            "query_wait_timeout",
            "0: clients wait for a server for ever, so an exhausted pool shows as hung \
             applications rather than errors"
                .to_owned(),
        );
    } else if config.server_connect_timeout >= config.query_wait_timeout {
        warn(
            "server_connect_timeout",
            format!(
                "{:?} is not below query_wait_timeout ({:?}): waiting clients give up before a \
                 failed connect is reported to them",
                config.server_connect_timeout, config.query_wait_timeout
            ),
        );
    }
    if config.client_login_timeout.is_zero() {
        warn(
            "client_login_timeout",
            "0: a client that never finishes logging in holds its place for ever".to_owned(),
        );
    }
    let (idle, whole) = (config.idle_transaction_timeout, config.transaction_timeout);
    if !idle.is_zero() && !whole.is_zero() && idle >= whole {
        warn(
            "idle_transaction_timeout",
            format!("{idle:?} is not below transaction_timeout ({whole:?}), so it can never fire"),
        );
    }
    let (idle, life) = (config.server_idle_timeout, config.server_lifetime);
    if !idle.is_zero() && !life.is_zero() && idle > life {
        warn(
            "server_idle_timeout",
            format!("{idle:?} is above server_lifetime ({life:?}), so it can never fire"),
        );
    }
}

fn descriptors(config: &Config, pools: &[PoolLimits], limit: u64, out: &mut Vec<Finding>) {
    let servers = match config.max_server_conn {
        0 => pools.iter().map(PoolLimits::most).sum::<usize>(),
        n => n,
    };
    let needed = (config.max_client_conn + servers) as u64 + FD_MARGIN;
    if limit < needed {
        out.push(Finding::new(
            Level::Warning,
            "max_client_conn",
            format!(
                "the open-file limit is {limit}, below max_client_conn {} + {servers} servers + {FD_MARGIN}; \
                 raise it (ulimit -n, LimitNOFILE=) to at least {needed}",
                config.max_client_conn
            ),
        ));
    }
}

fn modes(config: &Config, pools: &[PoolLimits], out: &mut Vec<Finding>) {
    let mut seen = Vec::new();
    for pool in pools {
        if seen.contains(&pool.pool_mode) {
            continue;
        }
        seen.push(pool.pool_mode);
        match pool.pool_mode {
            PoolMode::Statement => out.push(Finding::new(
                Level::Warning,
                "pool_mode",
                "statement pooling refuses multi-statement transactions (0A000) and pins on \
                 session state; applications that use transactions will fail",
            )),
            PoolMode::Transaction if config.max_prepared_statements == 0 => out.push(Finding::new(
                Level::Warning,
                "max_prepared_statements",
                "0 in transaction pooling: every client that prepares a named statement pins its \
                 server until it leaves, so drivers that prepare (JDBC, asyncpg, pgbench -M \
                 prepared) can exhaust the pool",
            )),
            _ => {}
        }
    }
}
