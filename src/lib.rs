//! pgwarden: a transparent PostgreSQL connection proxy that pools backend connections and
//! enforces connection caps, so no application misconfiguration can exhaust the database.
//!
//! # Layout
//!
//! - [`check`]: `pgwarden check`, the audit of a configuration against the live database.
//! - [`admission`]: the per-identity client caps (user, database, address, application).
//! - [`config`]: the validated [`config::Config`] (defaults < file < env < flags).
//! - [`cli`] (in [`config`]): the command-line flags, one per config key.
//! - [`prelogin`]: the budget of connections still logging in, where the longest waiting
//!   gives way to a newcomer.
//! - [`listener`]: binds TCP and Unix sockets, admits clients (client caps), one task each.
//! - [`protocol`]: tags, header-only framing, startup classification, errors we send.
//! - [`auth`]: client authentication (trust, password, md5, SCRAM) and secret storage.
//! - [`client`]: one client connection: handshake, login (with the per-identity client
//!   caps), then its session in [`relay`].
//! - [`relay`]: a logged-in client's session: the sans-IO protocol state machine
//!   ([`relay::machine`]) and the loop that moves bytes and acts on its verdicts.
//! - [`server`]: one backend connection: connect, log in (the sans-IO login exchange in
//!   [`server::exchange`]), parameters, reset.
//! - [`pool`]: a pool per (database, user) with a checkout guard and client leases (a pool
//!   goes when no longer needed); the budget (server caps across pools) and the fair
//!   queue (who of the waiting clients is served next).
//! - [`prepared`]: named prepared statements that follow a client from server to server.
//! - [`cancel`]: proxy-issued cancel keys mapped to the server a client uses now.
//! - [`shutdown`]: signals and draining (SIGTERM waits for clients, SIGINT for
//!   transactions).
//! - [`reload`]: SIGHUP and RELOAD: the configuration read again and put in force
//!   without dropping a client.
//! - [`stream`]: TCP and Unix sockets, and TLS over TCP, behind one type.
//! - [`tls`]: rustls acceptor (clients) and connector (servers) per `sslmode`, reloadable.
//! - [`console`]: the admin console (database `pgwarden` or `pgbouncer`): SHOW, PAUSE,
//!   KILL, RELOAD, SET... with PgBouncer's columns.
//! - [`context`]: what every client task shares.
//! - [`refusals`]: counts of refusals by cap.
//! - [`stats`]: per-pool counters (transactions, queries, bytes, waits) and the live
//!   registries of clients and servers, read by the console and the metrics.
//! - [`http`]: `metrics_listen`: `/metrics`, `/health/live`, `/health/ready`, the status page.
//! - [`alerts`]: the built-in alert rules, evaluated every second over the pools' state.

pub mod admission;
pub mod alerts;
pub mod auth;
pub mod cancel;
pub mod check;
pub use config::cli;
pub mod client;
pub mod config;
pub mod console;
pub mod context;
pub mod http;
pub mod listener;
pub mod pool;
pub mod prelogin;
pub mod prepared;
pub mod protocol;
pub mod refusals;
pub mod relay;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod stream;
pub mod tls;

pub use listener::run;
