//! Login: route the database, authenticate the client, admit it under the per-identity
//! client caps, get it a server with its session parameters applied, and tell the client
//! it is in.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::future::AbortHandle;
use pgwire::messages::startup::Authentication;
use tokio::io::AsyncWriteExt;

use super::handshake::Startup;
use super::ClientError;
use crate::admission::{Client, Slots};
use crate::auth;
use crate::cancel::CancelHandle;
use crate::config::{Config, Database};
use crate::context::Context;
use crate::pool::{self, ClientId, Pool, PoolKey, PooledServer};
use crate::prelogin::Place;
use crate::protocol::sql::Strings;
use crate::protocol::{messages, sqlstate, PgError, TransactionStatus};
use crate::relay::Session;
use crate::server::params::client_parameters;
use crate::server::ServerError;
use crate::stats::live::ClientLogin;
use crate::stats::ClientInfo;
use crate::stream::Stream;

/// SQLSTATE Postgres uses for a bad startup option value.
const INVALID_PARAMETER_VALUE: &str = "22023";

/// A logged-in client: its session and its places under the client caps.
pub enum LoggedIn {
    Relay {
        session: Session,
        /// Its places under `max_client_conn` and the per-identity caps, until dropped.
        slots: Slots,
    },
    /// The admin console (database `pgwarden` or `pgbouncer`); boxed, being rare.
    Console(Box<crate::console::Session>),
}

/// Logs a client in; the [`Slots`] it gets hold its places under `max_client_conn` and the
/// per-identity client caps until dropped (they are taken only once it has authenticated,
/// which is also when it leaves the pre-login budget: its `place`).
pub async fn login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
    startup: &Startup,
    peer: Option<SocketAddr>,
    place: Place,
) -> Result<LoggedIn, ClientError> {
    // The configuration in force as the login starts (a reload may have come since the
    // client connected).
    let config = &*ctx.current_config();
    if crate::console::is_console(&startup.database) {
        let console = super::console::login(stream, buf, ctx, startup, peer, place).await?;
        return Ok(LoggedIn::Console(Box::new(console)));
    }
    let route = route(config, &startup.database)?;
    if ctx.pools.is_disabled(&startup.database) {
        return Err(ClientError::Refused(PgError::fatal(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "database \"{}\" is not currently accepting connections (DISABLE on the pgwarden console)",
                startup.database
            ),
        )));
    }
    let user = config.users.get(&startup.user);
    authenticate(stream, buf, ctx, config, &startup.user).await?;
    // Logged in: from here on it counts as a client, and is never made to give way (not
    // even while it waits for a server below).
    drop(place);
    let wanted = client_parameters(&startup.params)
        .map_err(|e| ClientError::Refused(PgError::fatal(INVALID_PARAMETER_VALUE, e)))?;
    let client = Client {
        user: &startup.user,
        database: &startup.database,
        application: (startup.params.iter())
            .find(|(k, _)| k == "application_name")
            .map_or("", |(_, v)| v.as_str()),
        peer,
    };
    let slots = (ctx.admission)
        .admit(config, route, user, &client, &ctx.refusals)
        .map_err(ClientError::Refused)?;
    let who = client.identity(config);

    let key = PoolKey {
        database: startup.database.clone(),
        user: startup.user.clone(),
    };
    // Made from the configuration in force when the pool is created: a reload since the
    // login started is not missed (it stores the new configuration before it goes
    // through the pools, and this runs under the pool map's entry lock).
    let pool = ctx.pools.get_or_create(key.clone(), || {
        let (database, user_name) = (&startup.database, &startup.user);
        pool::spec::from_config(&ctx.current_config(), &key, &ctx.tls).unwrap_or_else(|| {
            pool::spec::for_route(config, route, database, user_name, user, &ctx.tls)
        })
    });
    let reported = match pool.login_params() {
        Some(cached) => overlay(&cached, &wanted),
        None => first_login_params(&pool, &wanted, &who).await?,
    };
    let cancel = ctx.cancels.register();
    let (kill, killed) = AbortHandle::new_pair();
    let listing = ctx.clients.list(|id| {
        let login = ClientLogin {
            user: startup.user.clone(),
            database: startup.database.clone(),
            application_name: client.application.to_owned(),
            addr: peer,
            local: stream.local_addr(),
            tls: stream.is_encrypted(),
            identity: who.to_string(),
            cancel_pid: cancel.key.pid,
            console: false,
            kill,
        };
        ClientInfo::new(id, login)
    });
    pool.counters().client_logged_in();
    stream.write_all(&login_ok(&reported, &cancel)).await?;
    let strings = (reported.get("standard_conforming_strings"))
        .map_or(Strings::Standard, |v| Strings::from_setting(v.as_bytes()));
    let encoding = reported.get("client_encoding").map_or("", String::as_str);
    let scannable = crate::protocol::sql::scannable_encoding(encoding.as_bytes());
    let session = Session {
        pool,
        cancel,
        wanted,
        who,
        strings,
        scannable,
        listing,
        killed,
    };
    Ok(LoggedIn::Relay { session, slots })
}

/// The parameters a client is told at login, from a pool that has none cached yet: a real
/// server is opened with the client's settings applied (so bad settings fail the login, as
/// on Postgres), then returned idle.
async fn first_login_params(
    pool: &Pool,
    wanted: &[(String, String)],
    who: &ClientId,
) -> Result<BTreeMap<String, String>, ClientError> {
    let mut server = pool.checkout(who).await?;
    if let Err(err) = apply_parameters(&mut server, wanted).await {
        let clean = matches!(err, ServerError::Query { .. });
        server.release(clean).await;
        return Err(err.into());
    }
    let reported = server.reported().clone();
    server.checkin_idle();
    Ok(reported)
}

/// The pool's cached server parameters with the client's own values where it set them,
/// as Postgres would report them after applying its startup parameters.
fn overlay(
    cached: &BTreeMap<String, String>,
    wanted: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut reported = cached.clone();
    for (name, value) in reported.iter_mut() {
        if let Some((_, v)) = wanted.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            value.clone_from(v);
        }
    }
    reported
}

/// Checks `user`'s credentials as `config` says (a pool client and a console user alike).
pub(super) async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
    config: &Config,
    user: &str,
) -> Result<(), ClientError> {
    let secret = (config.users.get(user)).and_then(|u| u.secret.as_ref());
    auth::authenticate(
        stream,
        buf,
        &ctx.logins,
        config.auth_type,
        user,
        secret,
        config.max_packet_size,
    )
    .await?;
    Ok(())
}
/// The route for a client-visible database name: a named entry, else the wildcard.
fn route<'c>(config: &'c Config, database: &str) -> Result<&'c Database, ClientError> {
    (config.route(database))
        .ok_or_else(|| ClientError::Refused(PgError::unknown_database(database)))
}

async fn apply_parameters(
    server: &mut PooledServer,
    wanted: &[(String, String)],
) -> Result<(), ServerError> {
    if let Some(sql) = server.params.sync_query(wanted) {
        server.exec(&sql).await?;
        server.params.mark_applied(wanted);
    }
    Ok(())
}

/// AuthenticationOk, the server's parameters, our cancel key, ReadyForQuery: one write.
pub(super) fn login_ok(reported: &BTreeMap<String, String>, cancel: &CancelHandle) -> BytesMut {
    let mut out = BytesMut::with_capacity(512);
    messages::authentication(Authentication::Ok, &mut out);
    for (name, value) in reported {
        messages::parameter_status(name, value, &mut out);
    }
    messages::backend_key_data(cancel.key.pid, cancel.key.secret, &mut out);
    messages::ready_for_query(TransactionStatus::Idle, &mut out);
    out
}
