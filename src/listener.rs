//! Binds the TCP and Unix sockets, runs one task per client, and on shutdown waits for
//! the sessions as its mode says ([`crate::shutdown`]), refusing newcomers meanwhile.
//!
//! What a connection counts against, from accept on: until it has authenticated, a place
//! in the pre-login budget (`max_pending_logins`, `…_per_addr`; [`crate::prelogin`]), where
//! the longest waiting gives way to a newcomer, so silent sockets cannot lock anyone out;
//! once authenticated, `max_client_conn` and the per-identity caps
//! ([`crate::admission`]). A connection accepted while `max_client_conn` is full of
//! logged-in clients is refused after its startup packet ([`client::refuse_full`]), at
//! most [`REFUSING_AT_ONCE`] of them at a time; beyond that the error is written at once.
//! So the sockets held open are at most `max_client_conn + max_pending_logins +
//! REFUSING_AT_ONCE`, plus refusals being written.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::client;
use crate::config::Config;
use crate::context::Context;
use crate::prelogin::Source;
use crate::protocol::PgError;
use crate::refusals::Cap;
use crate::stream::Stream;

/// How long aborted sessions get to let go of their sockets.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Connections refused for `max_client_conn` that may go through their startup phase at
/// once (each for at most [`client::REFUSAL_DEADLINE`]), so that refusing cannot itself be
/// a way to exhaust the proxy.
pub const REFUSING_AT_ONCE: usize = 64;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds every `listen` address (`host:port`; names resolve to all their addresses).
pub async fn bind(listen: &[String]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for entry in listen {
        for addr in tokio::net::lookup_host(entry.as_str()).await? {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(listener);
        }
    }
    Ok(listeners)
}

/// Serves clients on `listeners` (and the configured Unix socket) until shutdown, then
/// drains ([`crate::shutdown`]). `SIGHUP` reloads the configuration given (TLS files read
/// again).
pub async fn run(
    listeners: Vec<TcpListener>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let ctx = Context::new(config, shutdown);
    tokio::spawn(crate::shutdown::on_reload(ctx.clone()));
    serve(listeners, ctx).await
}

/// Where accepted connections run. Shutdown waits for the connections accepted before
/// it started (`sessions`), not for those accepted while draining (`late`: refused with
/// 57P01, or admin console sessions), so a client retrying in a loop cannot hold the
/// process up.
#[derive(Clone)]
struct Spawner {
    ctx: Context,
    refusing: Arc<Semaphore>,
    sessions: TaskTracker,
    late: TaskTracker,
}

impl Spawner {
    fn tasks(&self) -> &TaskTracker {
        match self.ctx.draining() {
            false => &self.sessions,
            true => &self.late,
        }
    }
}

/// [`run`] with a context made by the caller, who can then watch its pools and counters
/// (tests, and later the admin console).
pub async fn serve(listeners: Vec<TcpListener>, ctx: Context) -> io::Result<()> {
    let config = ctx.current_config();
    let spawner = Spawner {
        ctx: ctx.clone(),
        refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
        sessions: TaskTracker::new(),
        late: TaskTracker::new(),
    };
    let (accepting, stop) = (TaskTracker::new(), CancellationToken::new());
    let port = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()?
        .map_or(6432, |a| a.port());
    let (unix, unix_path) = match &config.unix_socket_dir {
        Some(dir) => {
            let (listener, path) = bind_unix(dir, port)?;
            (Some(listener), Some(path))
        }
        None => (None, None),
    };
    // Alerts and /metrics, /health: they outlive the drain, so readiness can report it.
    let _monitoring = crate::http::start(&ctx).await?;
    for listener in listeners {
        info!(addr = %listener.local_addr()?, "listening");
        accepting.spawn(accept_tcp(listener, spawner.clone(), stop.clone()));
    }
    if let (Some(listener), Some(path)) = (unix, &unix_path) {
        info!(path = %path.display(), "listening");
        accepting.spawn(accept_unix(listener, spawner.clone(), stop.clone()));
    }

    ctx.draining_token().cancelled().await;
    drain(&ctx, &spawner.sessions).await;
    stop.cancel();
    accepting.close();
    accepting.wait().await;
    // What is left was accepted while draining: refusals being written, console sessions.
    ctx.abort.cancel();
    spawner.late.close();
    let _ = tokio::time::timeout(ABORT_WAIT, spawner.late.wait()).await;
    ctx.pools.close();
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    info!("shutdown complete");
    Ok(())
}

/// How often a long drain says how many connections it still waits for.
const DRAIN_PROGRESS: Duration = Duration::from_secs(10);

/// Waits for the sessions as the shutdown's mode says, at most `shutdown_timeout` (zero:
/// no limit), then closes those left where they stand.
async fn drain(ctx: &Context, sessions: &TaskTracker) {
    let mode = crate::shutdown::mode(ctx).unwrap_or(crate::shutdown::Mode::WaitForServers);
    let timeout = ctx.current_config().shutdown_timeout;
    info!(
        connections = sessions.len(),
        shutdown_timeout = %crate::config::duration::format(timeout),
        "shutting down, {mode}; new connections are refused (57P01)"
    );
    sessions.close();
    let waited = async {
        let mut progress = tokio::time::interval(DRAIN_PROGRESS);
        progress.tick().await;
        loop {
            tokio::select! {
                _ = sessions.wait() => return,
                _ = progress.tick() => info!(connections = sessions.len(), "shutdown still waiting"),
            }
        }
    };
    let done = match timeout.is_zero() {
        true => {
            waited.await;
            true
        }
        false => tokio::time::timeout(timeout, waited).await.is_ok(),
    };
    if done {
        info!("every client has left");
        return;
    }
    warn!(
        connections = sessions.len(),
        "shutdown_timeout reached with sessions still running; closing them"
    );
    // Every session ends at once: its sockets close, and its server, if it held one, is
    // closed rather than returned (the pools are closing anyway).
    ctx.abort.cancel();
    if tokio::time::timeout(ABORT_WAIT, sessions.wait())
        .await
        .is_err()
    {
        warn!("sessions still running {ABORT_WAIT:?} after being aborted");
    }
}

fn bind_unix(dir: &std::path::Path, port: u16) -> io::Result<(UnixListener, PathBuf)> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
        std::fs::remove_file(&path)?; // stale socket of a process that is gone
    }
    let listener = UnixListener::bind(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
    Ok((listener, path))
}

async fn accept_tcp(listener: TcpListener, spawner: Spawner, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                admit(Stream::Tcp(socket), Some(peer), &spawner);
            }
            Err(err) => accept_failed(err).await,
        }
    }
}

async fn accept_unix(listener: UnixListener, spawner: Spawner, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => admit(Stream::Unix(socket), None, &spawner),
            Err(err) => accept_failed(err).await,
        }
    }
}

async fn accept_failed(err: io::Error) {
    warn!(cause = %err, "failed to accept a connection");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Starts a client task with a place in the pre-login budget (the longest-waiting pending
/// connection may give way for it), or, if `max_client_conn` is full of logged-in clients,
/// refuses it. The client's context holds the configuration in force now.
fn admit(stream: Stream, peer: Option<SocketAddr>, spawner: &Spawner) {
    let ctx = spawner.ctx.for_client();
    let tasks = spawner.tasks();
    if ctx.admission.logged_in() >= ctx.config.max_client_conn {
        return refuse_full(stream, peer, ctx, &spawner.refusing, tasks);
    }
    let pending = ctx.prelogin.arrive(Source::of(peer, &ctx.config));
    tasks.spawn(async move {
        let abort = ctx.abort.clone();
        tokio::select! {
            _ = client::serve(stream, peer, ctx, pending) => {}
            _ = abort.cancelled() => {}
        }
    });
}

/// Refuses a connection for `max_client_conn`: after its startup phase while fewer than
/// [`REFUSING_AT_ONCE`] are being refused so, else at once (a libpq client then shows only
/// "server sent an error response during SSL exchange", but the proxy stays unharmed).
fn refuse_full(
    mut stream: Stream,
    peer: Option<SocketAddr>,
    ctx: Context,
    refusing: &Arc<Semaphore>,
    tasks: &TaskTracker,
) {
    let max = ctx.config.max_client_conn;
    match refusing.clone().try_acquire_owned() {
        Ok(permit) => {
            tasks.spawn(async move {
                let abort = ctx.abort.clone();
                tokio::select! {
                    _ = client::refuse_full(stream, peer, ctx) => {}
                    _ = abort.cancelled() => {}
                }
                drop(permit);
            });
        }
        Err(_) => {
            ctx.refusals.count(Cap::MaxClientConn);
            warn!(peer = ?peer, max_client_conn = max, "client refused at once: max_client_conn reached");
            tasks.spawn(async move {
                let _ = stream
                    .write_all(&PgError::too_many_clients(max).to_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    }
}
