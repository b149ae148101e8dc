//! What a pool is made of, and what a reload changes in it: where its servers log in (the
//! target), its settings, and what its connections count against across pools (the
//! account). Made from the configuration when a pool is created ([`for_route`]) and swapped
//! whole by [`Pool::reconfigure`] while the pool serves: the spec is behind an `ArcSwap`, so
//! a checkout reads it with one lock-free load and a reload never stops a pool.
//!
//! A server belongs to the spec's endpoint (host, port, database, user) it was opened for;
//! once the pool points elsewhere it is closed as it comes back, never taken from a client
//! mid-transaction ([`Pool::is_current`]).

use std::ops::Deref;
use std::sync::Arc;

use arc_swap::Guard;
use tracing::info;

use super::{Account, Pool, PoolKey, PoolSettings};
use crate::auth::Secret;
use crate::config::{Config, Database, User};
use crate::server::{Credential, ServerConn, ServerTarget, ServerTls};

/// One version of a pool's target, settings and account.
pub(crate) struct Spec {
    pub(super) target: Arc<ServerTarget>,
    pub(super) settings: PoolSettings,
    pub(super) account: Account,
}

impl Spec {
    /// Whether `server` leads where this spec does.
    pub(super) fn leads_to(&self, server: &ServerConn) -> bool {
        Arc::ptr_eq(&server.target, &self.target) || server.target.same_endpoint(&self.target)
    }

    pub(super) fn new(key: &PoolKey, target: Arc<ServerTarget>, settings: PoolSettings) -> Spec {
        let account = Account {
            database: key.database.as_str().into(),
            user: key.user.as_str().into(),
            max_db_connections: settings.max_db_connections,
            max_user_connections: settings.max_user_connections,
        };
        Spec {
            target,
            settings,
            account,
        }
    }
}

/// A pool's settings as they were when read; a reload does not change a view already
/// taken. Do not hold one across an `.await`.
pub struct Settings(pub(super) Guard<Arc<Spec>>);

impl Deref for Settings {
    type Target = PoolSettings;
    fn deref(&self) -> &PoolSettings {
        &self.0.settings
    }
}

/// What a reload did to one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconfigured {
    Unchanged,
    /// Limits, timings or credentials changed; its servers stay.
    Changed,
    /// It now leads to another server, database or user: its idle servers were closed,
    /// the others close as they come back. Holds the old and new `host:port/dbname`.
    Repointed {
        from: String,
        to: String,
    },
}

impl Pool {
    /// Puts a new target and settings in force. Clients keep their servers; servers that
    /// lead to an old endpoint close when released; waiters are served at once if the new
    /// limits leave room.
    pub fn reconfigure(&self, target: ServerTarget, settings: PoolSettings) -> Reconfigured {
        let old = self.0.spec.load_full();
        let repointed = !old.target.same_endpoint(&target);
        let outcome = match (repointed, *old.target == target && old.settings == settings) {
            (_, true) => Reconfigured::Unchanged,
            (false, false) => Reconfigured::Changed,
            (true, _) => Reconfigured::Repointed {
                from: endpoint_label(&old.target),
                to: endpoint_label(&target),
            },
        };
        if outcome == Reconfigured::Unchanged && !self.state().orphaned {
            return outcome;
        }
        // The old target's Arc is kept when only settings changed: servers compare by
        // pointer first.
        let target = match *old.target == target {
            true => old.target.clone(),
            false => Arc::new(target),
        };
        let stop_holding = settings.per_client == 0 && old.settings.per_client > 0;
        let most = settings.size + settings.reserve_size;
        let per_client = settings.per_client;
        self.0
            .spec
            .store(Arc::new(Spec::new(&self.0.key, target, settings)));
        (self.0.per_client).store(per_client, std::sync::atomic::Ordering::Relaxed);
        let extra = {
            let mut state = self.state();
            state.orphaned = false;
            if stop_holding {
                state.held.clear(); // no longer counted: stale counts must not block later
            }
            if repointed {
                // The new server gets a fresh attempt. `proven` stays: unproven means one
                // opening at a time while `open` is zero, and the servers of the old
                // endpoint still held keep `open` above zero until they come back.
                state.login.failing = None;
                state.login.retry_at = None;
                *self
                    .0
                    .login_params
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            let keep = if repointed {
                0
            } else {
                state
                    .idle
                    .len()
                    .saturating_sub(state.open.saturating_sub(most))
            };
            let extra = state.idle.len() - keep;
            // Oldest-used first: the longest idle go.
            let closed: Vec<_> = state.idle.drain(..extra).collect();
            state.open -= closed.len();
            closed
        };
        let reason = match repointed {
            true => "its route now leads elsewhere (reload)",
            false => "pool_size lowered (reload)",
        };
        self.closed_idle(extra, reason);
        self.serve_waiters();
        outcome
    }

    /// The pool's route or user is gone from the configuration: it keeps serving the
    /// clients it has with what it had, and is removed when the last one leaves.
    pub fn orphan(&self) {
        self.state().orphaned = true;
        self.retire_if_unneeded();
    }

    /// Whether `server` leads where the pool leads now (else it is closed, not reused).
    pub(super) fn is_current(&self, server: &ServerConn) -> bool {
        self.spec().leads_to(server)
    }

    /// Gives back the budget of idle servers already taken out of the pool's count.
    #[allow(clippy::vec_box)] // the idle list's own boxes, moved out as they are
    fn closed_idle(&self, servers: Vec<Box<ServerConn>>, reason: &str) {
        let account = self.spec().account.clone();
        let mut starved = false;
        for server in &servers {
            info!(pool = %self.0.name, server_id = server.id, reason, "server closed");
            starved |= self.0.budget.close(&account);
        }
        drop(servers);
        if starved {
            self.0.budget.wake();
        }
    }
}

/// `host:port/dbname` (user@ when not the client's), for logs.
fn endpoint_label(target: &ServerTarget) -> String {
    format!("{}@{}/{}", target.user, target.addr_label(), target.dbname)
}

/// The target and settings of the pool for `key`, or `None` when no route leads there.
pub fn from_config(
    config: &Config,
    key: &PoolKey,
    tls: &Arc<crate::tls::Tls>,
) -> Option<(ServerTarget, PoolSettings)> {
    let route = config.route(&key.database)?;
    let user = config.users.get(&key.user);
    Some(for_route(
        config,
        route,
        &key.database,
        &key.user,
        user,
        tls,
    ))
}

/// How the servers of a pool for `database` and `user` on `route` log in, and the pool's
/// limits.
pub fn for_route(
    config: &Config,
    route: &Database,
    database: &str,
    user_name: &str,
    user: Option<&User>,
    tls: &Arc<crate::tls::Tls>,
) -> (ServerTarget, PoolSettings) {
    let credential = match (&route.password, &route.user) {
        (Some(password), _) => Credential::Password(password.clone()),
        (None, Some(forced)) => {
            credential(config.users.get(forced).and_then(|u| u.secret.as_ref()))
        }
        (None, None) => credential(user.and_then(|u| u.secret.as_ref())),
    };
    let target = ServerTarget {
        host: route.host.clone(),
        port: route.port,
        dbname: route.dbname.clone().unwrap_or_else(|| database.to_owned()),
        user: route.user.clone().unwrap_or_else(|| user_name.to_owned()),
        credential,
        allow_cleartext: config.server_allow_cleartext_password,
        tls: ServerTls(tls.clone()),
    };
    (target, settings(config, route, database, user))
}

fn settings(
    config: &Config,
    route: &Database,
    database: &str,
    user: Option<&User>,
) -> PoolSettings {
    let pool = config.pool_config(route, user);
    PoolSettings {
        size: pool.pool_size,
        min_size: pool.min_pool_size,
        reserve_size: pool.reserve_pool_size,
        reserve_timeout: config.reserve_pool_timeout,
        per_client: config.max_server_conn_per_client,
        wait_notify: config.query_wait_notify,
        login_retry: config.server_login_retry,
        check_delay: config.server_check_delay,
        check_query: config.server_check_query.clone(),
        max_db_connections: pool.max_db_connections,
        max_user_connections: pool.max_user_connections,
        mode: pool.pool_mode,
        reset_query: config.server_reset_query.clone(),
        idle_timeout: config.server_idle_timeout,
        lifetime: config.server_lifetime,
        connect_timeout: config.server_connect_timeout,
        wait_timeout: config.query_wait_timeout,
        // A pool made for a name only the wildcard route matched: removable when idle.
        autodb_idle_timeout: (!config.databases.contains_key(database))
            .then_some(config.autodb_idle_timeout),
        stats_period: config.stats_period,
    }
}

/// What pgwarden can log in to a server with, given the user's stored secret. A SCRAM
/// verifier cannot answer a server's challenge; such users need a password in the route.
fn credential(secret: Option<&Secret>) -> Credential {
    match secret {
        Some(Secret::Plain(p)) => Credential::Password(p.clone()),
        Some(Secret::Md5(h)) => Credential::Md5Hash(h.clone()),
        Some(Secret::Scram(_)) | None => Credential::None,
    }
}
