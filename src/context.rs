//! What every client task shares: the configuration snapshot, the pools, the cancel keys,
//! the client caps, the pre-login budget, TLS, the refusal counters and the shutdown signal. Passed in explicitly;
//! nothing in pgwarden reads a global.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::Logins;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::Pools;
use crate::prelogin::PreLogin;
use crate::refusals::Refusals;
use crate::stats::alerts::AlertSource;
use crate::stats::{ClientInfo, Live};

#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub pools: Pools,
    pub cancels: CancelRegistry,
    /// Clients counted against the per-identity client caps.
    pub admission: Arc<Admission>,
    /// Connections still logging in: their own budget, the longest waiting giving way.
    pub prelogin: PreLogin,
    pub refusals: Arc<Refusals>,
    /// Per-user SCRAM salts, derived verifiers, what unknown users are made to look like.
    pub logins: Arc<Logins>,
    /// The TLS acceptor and connector in force (SIGHUP reads the files again).
    pub tls: Arc<crate::tls::Tls>,
    /// Cancelled when pgwarden starts shutting down: clients leave at their next idle point.
    pub shutdown: CancellationToken,
    /// Cancelled when `shutdown_timeout` ran out: every session ends where it stands.
    pub abort: CancellationToken,
    /// Every logged-in client, for SHOW CLIENTS and KILL.
    pub clients: Live<ClientInfo>,
    /// What SHOW ALERTS lists: set by the alert rules; none, no rows.
    pub alert_source: Option<Arc<dyn AlertSource>>,
}

impl Context {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Context {
        let refusals = Arc::new(Refusals::default());
        Context {
            pools: Pools::new(config.max_server_conn, refusals.clone()),
            cancels: CancelRegistry::new(config.cancel_wait_timeout),
            admission: Arc::default(),
            prelogin: PreLogin::new(&config, refusals.clone()),
            tls: Arc::new(crate::tls::Tls::new(config.tls_settings())),
            refusals,
            logins: Arc::new(Logins::new(
                config.users.values().filter_map(|u| u.secret.as_ref()),
            )),
            abort: CancellationToken::new(),
            clients: Live::default(),
            alert_source: None,
            shutdown,
            config,
        }
    }
}
