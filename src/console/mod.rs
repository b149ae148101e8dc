//! The admin console: a client that connects to the virtual database `pgwarden` (or
//! `pgbouncer`, for existing scripts and `pgbouncer_exporter`) as a user listed in
//! `admin_users` or `stats_users` talks to pgwarden itself, over the simple query
//! protocol: SHOW commands with PgBouncer's columns, and commands that change things
//! (admin users only, `42501` otherwise). The extended protocol is refused with a clear
//! error; nothing shown ever holds a password, a SCRAM secret or key material.
//!
//! - `command`: the commands, parsed from a Query's text (pure).
//! - `table`: answers as RowDescription/DataRow/CommandComplete (pure).
//! - `show`, `show_config`: the SHOW commands.
//! - `control`: the commands that change something.

mod command;
mod control;
mod show;
mod show_config;
mod table;

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::{AbortRegistration, Abortable, Aborted};
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::cancel::CancelHandle;
use crate::config::Config;
use crate::context::Context;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::tags::frontend;
use crate::protocol::{messages, PgError, TransactionStatus};
use crate::stats::{ClientInfo, Listed};
use crate::stream::Stream;
pub use command::{Command, Show};
pub use control::code;
pub use show_config::RESTART_ONLY;
use table::Table;

/// The database names that open the console.
pub const DATABASES: [&str; 2] = ["pgwarden", "pgbouncer"];

/// Whether a client asking for `database` wants the console.
pub fn is_console(database: &str) -> bool {
    DATABASES.contains(&database)
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads and changes (`admin_users`).
    Admin,
    /// Reads only (`stats_users`).
    Stats,
}

impl Role {
    /// The role of `user`, if it may use the console at all.
    pub fn of(config: &Config, user: &str) -> Option<Role> {
        let listed = |users: &[String]| users.iter().any(|u| u == user);
        if listed(&config.admin_users) {
            Some(Role::Admin)
        } else if listed(&config.stats_users) {
            Some(Role::Stats)
        } else {
            None
        }
    }
}

/// A logged-in console client.
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Its entry in SHOW CLIENTS (KILL_CLIENT ends it too).
    pub listing: Listed<ClientInfo>,
    pub killed: AbortRegistration,
    /// The cancel key it was given (a cancel request for it cancels nothing).
    pub cancel: CancelHandle,
}

/// The parameters a console client is told at login.
pub fn login_parameters(user: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "server_version",
            format!("{} (pgwarden)", env!("CARGO_PKG_VERSION")),
        ),
        ("server_encoding", "UTF8".to_owned()),
        ("client_encoding", "UTF8".to_owned()),
        ("DateStyle", "ISO, MDY".to_owned()),
        ("integer_datetimes", "on".to_owned()),
        ("standard_conforming_strings", "on".to_owned()),
        ("TimeZone", "UTC".to_owned()),
        ("session_authorization", user.to_owned()),
    ]
}

/// Serves a console client until it leaves (or is killed); says why it ended.
pub async fn run(stream: &mut Stream, buf: BytesMut, session: Session, ctx: &Context) -> String {
    let Session {
        user,
        role,
        listing,
        killed,
        cancel,
    } = session;
    let console = Console {
        ctx,
        user: &user,
        role,
    };
    let served = Abortable::new(serve(stream, buf, console), killed).await;
    drop((listing, cancel));
    match served {
        Ok(reason) => reason,
        Err(Aborted) => {
            let error = PgError::fatal(
                crate::protocol::sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command (KILL_CLIENT)",
            );
            let _ = stream.write_all(&error.to_bytes()).await;
            "killed from the admin console".to_owned()
        }
    }
}

struct Console<'a> {
    ctx: &'a Context,
    user: &'a str,
    role: Role,
}

async fn serve(stream: &mut Stream, mut buf: BytesMut, console: Console<'_>) -> String {
    let max = console.ctx.config.max_packet_size;
    // After an extended-protocol message was refused: skip to its Sync.
    let mut skipping = false;
    loop {
        let msg = match read_message(stream, &mut buf, max).await {
            Ok(msg) => msg,
            Err(ReadError::Closed) => return "client closed the connection".to_owned(),
            Err(ReadError::Framing(e)) => {
                let _ = stream
                    .write_all(&PgError::protocol_violation(&e).to_bytes())
                    .await;
                return format!("protocol violation: {e}");
            }
            Err(e) => return format!("client socket error: {e}"),
        };
        let mut out = BytesMut::new();
        match msg.tag {
            frontend::TERMINATE => return "client closed the connection".to_owned(),
            frontend::QUERY => {
                let body = msg.body.strip_suffix(&[0]).unwrap_or(&msg.body);
                console
                    .query(&String::from_utf8_lossy(body), &mut out)
                    .await;
                messages::ready_for_query(TransactionStatus::Idle, &mut out);
            }
            frontend::SYNC => {
                skipping = false;
                messages::ready_for_query(TransactionStatus::Idle, &mut out);
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE
            | frontend::FLUSH => {
                if !skipping {
                    skipping = true;
                    extended_refused().encode(&mut out);
                }
            }
            other => {
                let text = format!("the console does not take message type {:?}", other as char);
                PgError::error(crate::protocol::sqlstate::PROTOCOL_VIOLATION, text)
                    .encode(&mut out);
                messages::ready_for_query(TransactionStatus::Idle, &mut out);
            }
        }
        if stream.write_all(&out).await.is_err() {
            return "client socket error while answering".to_owned();
        }
    }
}

fn extended_refused() -> PgError {
    PgError::error(
        crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
        "the pgwarden console speaks the simple query protocol only",
    )
    .with_hint("use psql, or your driver's simple query call (e.g. tokio-postgres simple_query)")
}

impl Console<'_> {
    /// Answers every command of one Query, stopping at the first error (as Postgres does).
    async fn query(&self, text: &str, out: &mut BytesMut) {
        let statements = command::split(text);
        if statements.iter().all(|s| s.trim().is_empty()) {
            return table::empty_query(out);
        }
        for statement in statements {
            let outcome = match command::parse(statement) {
                Ok(None) => continue,
                Ok(Some(cmd)) => self.execute(&cmd, out).await,
                Err(e) => Err(PgError::error(code::SYNTAX_ERROR, e.to_string())),
            };
            if let Err(error) = outcome {
                return error.encode(out);
            }
        }
    }

    async fn execute(&self, cmd: &Command, out: &mut BytesMut) -> Result<(), PgError> {
        if cmd.changes() && self.role != Role::Admin {
            let text = format!(
                "permission denied: {} changes pgwarden, which only admin_users may do (\"{}\" is in stats_users)",
                cmd.tag(),
                self.user
            );
            return Err(PgError::error(code::INSUFFICIENT_PRIVILEGE, text));
        }
        let config = self.config();
        if let Command::Show(what) = cmd {
            self.show(*what, &config).encode("SHOW", out);
            return Ok(());
        }
        let said = control::run(cmd, self.ctx, &config).await?;
        info!(user = %self.user, command = cmd.tag(), "console command done");
        if let Some(text) = said {
            out.extend_from_slice(&PgError::notice(text));
        }
        table::command_complete(cmd.tag(), out);
        Ok(())
    }

    fn show(&self, what: Show, config: &Config) -> Table {
        let ctx = self.ctx;
        match what {
            Show::Pools => show::pools(ctx),
            Show::Stats => show::stats(ctx),
            Show::StatsTotals => show::stats_totals(ctx),
            Show::StatsAverages => show::stats_averages(ctx),
            Show::Clients => show::clients(ctx),
            Show::Servers => show::servers(ctx),
            Show::Databases => show_config::databases(ctx, config),
            Show::Users => show_config::users(ctx, config),
            Show::Config => show_config::config(config),
            Show::Lists => show_config::lists(ctx, config),
            Show::Version => show_config::version(),
            Show::Limits => show_config::limits(ctx, config),
            Show::Alerts => show_config::alerts(ctx),
        }
    }

    /// The configuration in force (a reload or SET may have changed it since login).
    fn config(&self) -> Arc<Config> {
        self.ctx.current_config()
    }
}
