//! What every client task shares: the configuration (a snapshot per client, and the live
//! one a reload swaps), the pools, the cancel keys, the client caps, the pre-login budget,
//! TLS, the refusal counters and the shutdown signals. Passed in explicitly; nothing in
//! pgwarden reads a global.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::alerts::Alerts;
use crate::auth::Logins;
use crate::cancel::CancelRegistry;
use crate::cli::Cli;
use crate::config::Config;
use crate::pool::Pools;
use crate::prelogin::PreLogin;
use crate::refusals::Refusals;
use crate::stats::{ClientInfo, Live};

#[derive(Clone)]
pub struct Context {
    /// The configuration as it was when this client connected (for the accept loops and
    /// other long-lived holders: as it was at start; they read [`Context::current_config`]).
    pub config: Arc<Config>,
    pub pools: Pools,
    pub cancels: CancelRegistry,
    /// Clients counted against the per-identity client caps.
    pub admission: Arc<Admission>,
    /// Connections still logging in: their own budget, the longest waiting giving way.
    pub prelogin: PreLogin,
    pub refusals: Arc<Refusals>,
    /// The alerts firing or recently resolved, for `/metrics` and `SHOW ALERTS`.
    pub alerts: Arc<Alerts>,
    /// Per-user SCRAM salts, derived verifiers, what unknown users are made to look like.
    pub logins: Arc<Logins>,
    /// The TLS acceptor and connector in force (a reload reads the files again).
    pub tls: Arc<crate::tls::Tls>,
    /// Cancelled when sessions must end at their next idle point (SIGINT, the end of an
    /// in-process server; see [`crate::shutdown`]). Implies draining.
    pub shutdown: CancellationToken,
    /// Cancelled when `shutdown_timeout` ran out: every session ends where it stands.
    pub abort: CancellationToken,
    /// Every logged-in client, for SHOW CLIENTS and KILL.
    pub clients: Live<ClientInfo>,
    /// What a reload changes and what shutdown starts with; one pointer, so that a client
    /// task's copy of the context stays small.
    pub control: Arc<Control>,
}

/// The process-wide state behind reloads and draining.
pub struct Control {
    /// The configuration in force; a reload swaps it whole.
    config: ArcSwap<Config>,
    /// Where a reload reads the configuration from.
    source: Source,
    /// Held while a reload runs, so two reloads never interleave.
    pub(crate) reloading: Mutex<()>,
    /// Cancelled when shutdown starts: new logins are refused (57P01), readiness turns
    /// unready. A child of `Context::shutdown`.
    draining: CancellationToken,
}

/// Where a reload reads the configuration from.
pub enum Source {
    /// The flags (and `PGWARDEN_*` variables) the process started with, and the file they
    /// name: read again as at start.
    Flags(Box<Cli>),
    /// Given in memory (tests, embedding): a reload applies it again (TLS files reread).
    Fixed,
}

impl Context {
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Context {
        Context::with_source(config, shutdown, Source::Fixed)
    }

    /// A context whose reloads read `source`.
    pub fn with_source(
        config: Arc<Config>,
        shutdown: CancellationToken,
        source: Source,
    ) -> Context {
        let refusals = Arc::new(Refusals::default());
        Context {
            pools: Pools::new(config.max_server_conn, refusals.clone()),
            cancels: CancelRegistry::new(config.cancel_wait_timeout),
            admission: Arc::default(),
            prelogin: PreLogin::new(&config, refusals.clone()),
            tls: Arc::new(crate::tls::Tls::new(config.tls_settings())),
            refusals,
            alerts: Arc::default(),
            logins: Arc::new(Logins::new(
                config.users.values().filter_map(|u| u.secret.as_ref()),
            )),
            abort: CancellationToken::new(),
            control: Arc::new(Control {
                config: ArcSwap::new(config.clone()),
                source,
                reloading: Mutex::new(()),
                draining: shutdown.child_token(),
            }),
            clients: Live::default(),
            shutdown,
            config,
        }
    }

    /// The configuration in force now (a reload may have replaced the one this context
    /// started with).
    pub fn current_config(&self) -> Arc<Config> {
        self.control.config.load_full()
    }

    /// This context for a client connecting now: its snapshot of the configuration is
    /// the one in force.
    pub fn for_client(&self) -> Context {
        Context {
            config: self.current_config(),
            ..self.clone()
        }
    }

    /// Whether pgwarden is shutting down: new logins are refused, readiness is unready.
    pub fn draining(&self) -> bool {
        self.control.draining.is_cancelled()
    }

    /// Cancelled when draining starts (for whoever waits for it: readiness, listeners).
    pub fn draining_token(&self) -> &CancellationToken {
        &self.control.draining
    }
}

impl Control {
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    pub(crate) fn store(&self, config: Arc<Config>) {
        self.config.store(config);
    }
}
