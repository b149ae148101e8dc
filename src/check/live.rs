//! Asking a live server what it accepts: `max_connections`, the reserved slots, roles' and
//! databases' `CONNECTION LIMIT`s and the connections in use, over one ordinary login as
//! one of the configured users.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::capacity::{PoolLimits, ServerFacts};
use crate::auth::Secret;
use crate::config::{Config, Database};
use crate::server::{self, Credential, ServerError, ServerTarget, ServerTls};
use crate::tls::Tls;

/// Reads the facts of the server `pool` leads to, logging in as its server user (over TLS
/// as `server_tls_sslmode` says).
pub async fn facts(
    config: &Config,
    pool: &PoolLimits,
    tls: &Arc<Tls>,
    timeout: Duration,
) -> Result<ServerFacts, ServerError> {
    let route = (config.databases.get(&pool.database))
        .or(config.wildcard.as_ref())
        .ok_or(ServerError::Unexpected('?'))?;
    let target = target(config, route, pool, tls);
    let mut conn = server::login::connect(Arc::new(target), timeout).await?;
    let number = |rows: &[Vec<Option<String>>], what: &str| -> Result<usize, ServerError> {
        let text = rows.first().and_then(|r| r.first()).cloned().flatten();
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| ServerError::Query {
                code: "XX000".to_owned(),
                message: format!("unreadable {what}"),
            })
    };
    let max_connections = number(
        &conn.query_rows("SHOW max_connections").await?,
        "max_connections",
    )?;
    let superuser_reserved_connections = number(
        &conn
            .query_rows("SHOW superuser_reserved_connections")
            .await?,
        "superuser_reserved_connections",
    )?;
    let reserved_connections = number(
        &conn
            .query_rows("SELECT coalesce(current_setting('reserved_connections', true), '0')")
            .await?,
        "reserved_connections",
    )?;
    let limits = |rows: Vec<Vec<Option<String>>>| -> BTreeMap<String, i64> {
        rows.into_iter()
            .filter_map(|row| match row.as_slice() {
                [Some(name), Some(limit)] => Some((name.clone(), limit.parse().unwrap_or(-1))),
                _ => None,
            })
            .collect()
    };
    let role_limits = limits(
        conn.query_rows("SELECT rolname, rolconnlimit FROM pg_roles WHERE rolcanlogin")
            .await?,
    );
    let database_limits = limits(
        conn.query_rows("SELECT datname, datconnlimit FROM pg_database WHERE datallowconn")
            .await?,
    );
    let in_use = number(
        &conn
            .query_rows(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            )
            .await?,
        "connections in use",
    )?;
    conn.terminate().await;
    Ok(ServerFacts {
        max_connections,
        superuser_reserved_connections,
        reserved_connections,
        role_limits,
        database_limits,
        in_use,
    })
}

/// How pgwarden would log in for `pool`; the wildcard route connects to `postgres`.
fn target(config: &Config, route: &Database, pool: &PoolLimits, tls: &Arc<Tls>) -> ServerTarget {
    let credential = match &route.password {
        Some(password) => Credential::Password(password.clone()),
        None => match config
            .users
            .get(&pool.server_user)
            .and_then(|u| u.secret.as_ref())
        {
            Some(Secret::Plain(p)) => Credential::Password(p.clone()),
            Some(Secret::Md5(h)) => Credential::Md5Hash(h.clone()),
            Some(Secret::Scram(_)) | None => Credential::None,
        },
    };
    let dbname = match pool.database.as_str() {
        "*" => "postgres".to_owned(),
        _ => pool.server_database.clone(),
    };
    ServerTarget {
        host: route.host.clone(),
        port: route.port,
        dbname,
        user: pool.server_user.clone(),
        credential,
        allow_cleartext: config.server_allow_cleartext_password,
        tls: ServerTls(tls.clone()),
    }
}
