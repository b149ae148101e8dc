//! The console's commands that change something (admin users only): PAUSE, RESUME,
//! DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, RELOAD, SET and SHUTDOWN. Each says
//! what it did (a NOTICE, if anything is worth saying) or fails with a real SQLSTATE.

use tracing::{info, warn};

use super::command::Command;
use crate::config::Config;
use crate::context::Context;
use crate::pool::ControlError;
use crate::protocol::PgError;

/// SQLSTATEs of the console's refusals.
pub mod code {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub use crate::protocol::sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE;
    pub const CONFIG_FILE_ERROR: &str = "F0000";
}

/// Carries out a command that changes something; `Ok(Some(text))` to tell the user more.
pub async fn run(cmd: &Command, ctx: &Context, config: &Config) -> Result<Option<String>, PgError> {
    match cmd {
        Command::Pause(db) => pause(ctx, config, db.as_deref()).await,
        Command::Resume(db) => {
            known(config, db.as_deref())?;
            ctx.pools.resume(db.as_deref()).map_err(refused)?;
            info!(database = db.as_deref().unwrap_or("*"), "console: RESUME");
            Ok(None)
        }
        Command::Disable(db) => {
            known(config, Some(db))?;
            let changed = ctx.pools.disable(db);
            info!(database = %db, "console: DISABLE");
            Ok((!changed).then(|| format!("database \"{db}\" was disabled already")))
        }
        Command::Enable(db) => {
            known(config, Some(db))?;
            let changed = ctx.pools.enable(db);
            info!(database = %db, "console: ENABLE");
            Ok((!changed).then(|| format!("database \"{db}\" was not disabled")))
        }
        Command::Reconnect(db) => {
            known(config, db.as_deref())?;
            let pools = ctx.pools.reconnect(db.as_deref());
            info!(
                database = db.as_deref().unwrap_or("*"),
                pools, "console: RECONNECT"
            );
            Ok(None)
        }
        Command::Kill(db) => kill(ctx, config, db.as_deref()),
        Command::KillClient(id) => kill_client(ctx, *id),
        Command::Reload => match crate::reload::reload(ctx) {
            Ok(report) => Ok(Some(report.to_string())),
            Err(why) => Err(PgError::error(code::CONFIG_FILE_ERROR, why.to_string())),
        },
        Command::Set { key, value } => set(ctx, key, value),
        Command::Shutdown => {
            warn!("console: SHUTDOWN");
            crate::shutdown::request(ctx, crate::shutdown::Mode::Immediate);
            Ok(None)
        }
        Command::Show(_) => Ok(None),
    }
}

fn refused(err: ControlError) -> PgError {
    PgError::error(code::OBJECT_NOT_IN_PREREQUISITE_STATE, err.to_string())
}

/// Checks that `db` names a database pgwarden routes (any name, with a wildcard route).
fn known(config: &Config, db: Option<&str>) -> Result<(), PgError> {
    let Some(db) = db else { return Ok(()) };
    if super::is_console(db) {
        let text = format!("\"{db}\" is the admin console, not a database pgwarden routes");
        return Err(PgError::error(code::INVALID_CATALOG_NAME, text));
    }
    if config.databases.contains_key(db) || config.wildcard.is_some() {
        return Ok(());
    }
    let text = format!("no database \"{db}\" is configured");
    Err(PgError::error(code::INVALID_CATALOG_NAME, text))
}

/// PAUSE: returns once every server of the database (or of all) is closed.
async fn pause(
    ctx: &Context,
    config: &Config,
    db: Option<&str>,
) -> Result<Option<String>, PgError> {
    known(config, db)?;
    ctx.pools.pause(db).map_err(refused)?;
    info!(
        database = db.unwrap_or("*"),
        "console: PAUSE, waiting for servers to be released"
    );
    ctx.pools.wait_closed(db).await;
    info!(
        database = db.unwrap_or("*"),
        "console: PAUSE done, every server closed"
    );
    Ok(None)
}

/// KILL: the database's clients (every database's, without a name) are dropped where they
/// stand and their servers closed; new clients wait until RESUME, as after PAUSE.
fn kill(ctx: &Context, config: &Config, db: Option<&str>) -> Result<Option<String>, PgError> {
    known(config, db)?;
    match ctx.pools.pause(db) {
        Ok(()) | Err(ControlError::AlreadyPaused(_) | ControlError::AllPaused) => {}
        Err(other) => return Err(refused(other)),
    }
    let victims: Vec<_> = (ctx.clients.all().into_iter())
        .filter(|c| !c.console && db.is_none_or(|db| c.database == db))
        .collect();
    for client in &victims {
        client.kill.abort();
    }
    let idle = ctx.pools.close_idle_of(db);
    warn!(
        database = db.unwrap_or("*"),
        clients = victims.len(),
        idle_servers = idle,
        "console: KILL"
    );
    Ok(Some(format!(
        "{} clients killed; new clients wait until RESUME",
        victims.len()
    )))
}

fn kill_client(ctx: &Context, id: u64) -> Result<Option<String>, PgError> {
    let Some(client) = ctx.clients.get(id) else {
        let text = format!("no client with id {id} (see SHOW CLIENTS)");
        return Err(PgError::error(code::UNDEFINED_OBJECT, text));
    };
    warn!(client_id = id, user = %client.user, database = %client.database, "console: KILL_CLIENT");
    client.kill.abort();
    Ok(None)
}

/// SET key = value: a known setting that may change while running, at a value that passes
/// the same checks as at start.
fn set(ctx: &Context, key: &str, value: &str) -> Result<Option<String>, PgError> {
    if crate::config::settings::find(key).is_none() {
        let text = format!("unrecognized configuration parameter \"{key}\"");
        return Err(
            PgError::error(code::UNDEFINED_OBJECT, text).with_hint("SHOW CONFIG lists them")
        );
    }
    if super::show_config::RESTART_ONLY.contains(&key) {
        let text = format!(
            "{key} cannot be changed while running; set it in the configuration and restart"
        );
        return Err(PgError::error(code::CANT_CHANGE_RUNTIME_PARAM, text));
    }
    crate::reload::set(ctx, key, value)
        .map_err(|errors| PgError::error(code::INVALID_PARAMETER_VALUE, errors.to_string()))?;
    info!(key, value, "console: SET");
    Ok(None)
}
