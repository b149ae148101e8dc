//! Logging in to the admin console: the user authenticates as anywhere else, then must be
//! in `admin_users` or `stats_users`; it gets console parameters and a cancel key, and is
//! listed in SHOW CLIENTS. It holds no pool and no place under the client caps.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::future::AbortHandle;
use tokio::io::AsyncWriteExt;

use super::handshake::Startup;
use super::ClientError;
use crate::console::{self, Role};
use crate::context::Context;
use crate::prelogin::Place;
use crate::protocol::{sqlstate, PgError};
use crate::stats::live::ClientLogin;
use crate::stats::ClientInfo;
use crate::stream::Stream;

pub async fn login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &Context,
    startup: &Startup,
    peer: Option<SocketAddr>,
    place: Place,
) -> Result<console::Session, ClientError> {
    let config = &*ctx.current_config();
    super::login::authenticate(stream, buf, ctx, config, &startup.user).await?;
    drop(place);
    let Some(role) = Role::of(config, &startup.user) else {
        return Err(ClientError::Refused(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "user \"{}\" may not use the admin console \"{}\" (it is in neither admin_users nor stats_users)",
                startup.user, startup.database
            ),
        )));
    };
    let cancel = ctx.cancels.register();
    let (kill, killed) = AbortHandle::new_pair();
    let application = (startup.params.iter()).find(|(k, _)| k == "application_name");
    let listing = ctx.clients.list(|id| {
        let login = ClientLogin {
            user: startup.user.clone(),
            database: startup.database.clone(),
            application_name: application.map_or_else(String::new, |(_, v)| v.clone()),
            addr: peer,
            local: stream.local_addr(),
            tls: stream.is_encrypted(),
            identity: format!("console user \"{}\"", startup.user),
            cancel_pid: cancel.key.pid,
            console: true,
            kill,
        };
        ClientInfo::new(id, login)
    });
    let mut params: BTreeMap<String, String> = console::login_parameters(&startup.user)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if let Some((_, app)) = application {
        params.insert("application_name".to_owned(), app.clone());
    }
    stream
        .write_all(&super::login::login_ok(&params, &cancel))
        .await?;
    Ok(console::Session {
        user: startup.user.clone(),
        role,
        listing,
        killed,
        cancel,
    })
}
