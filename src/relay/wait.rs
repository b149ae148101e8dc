//! The session's one wait per turn: socket readiness in either direction, shutdown and a
//! timeout, polled by hand (see [`wait`]).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use tokio_util::sync::WaitForCancellationFuture;

use super::timeouts::Expired;
use crate::stream::Stream;

/// The session's wait for shutdown.
pub(super) type Shutdown<'p, 't> = Pin<&'p mut WaitForCancellationFuture<'t>>;

/// What one turn of the relay waits for.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Wanted {
    pub(super) read_client: bool,
    pub(super) write_server: bool,
    pub(super) read_server: bool,
    pub(super) write_client: bool,
    pub(super) shutdown: bool,
}

impl Wanted {
    pub(super) fn any(self) -> bool {
        self.read_client
            || self.write_server
            || self.read_server
            || self.write_client
            || self.shutdown
    }
}

/// What ended a turn's wait.
pub(super) enum Wake {
    ClientReadable(std::io::Result<()>),
    ServerWritable(std::io::Result<()>),
    ServerReadable(std::io::Result<()>),
    ClientWritable(std::io::Result<()>),
    Shutdown,
    Timeout(Expired),
}

/// Waits for the first of what `wanted` names, or the deadline, in a fixed order (every one
/// is a readiness wait, so none starves another for long). Polled by hand rather than by
/// `select!`: no future is made, moved and dropped per socket per turn, and each socket
/// keeps one waker per direction instead of queueing a waiter every time.
pub(super) async fn wait(
    client: &Stream,
    server: Option<&Stream>,
    wanted: Wanted,
    mut shutdown: Shutdown<'_, '_>,
    deadline: Option<(Instant, Expired)>,
) -> Wake {
    let timer = until(deadline);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        if wanted.read_client {
            if let Poll::Ready(r) = client.poll_read_ready(cx) {
                return Poll::Ready(Wake::ClientReadable(r));
            }
        }
        if let Some(server) = server {
            if wanted.write_server {
                if let Poll::Ready(r) = server.poll_write_ready(cx) {
                    return Poll::Ready(Wake::ServerWritable(r));
                }
            }
            if wanted.read_server {
                if let Poll::Ready(r) = server.poll_read_ready(cx) {
                    return Poll::Ready(Wake::ServerReadable(r));
                }
            }
        }
        if wanted.write_client {
            if let Poll::Ready(r) = client.poll_write_ready(cx) {
                return Poll::Ready(Wake::ClientWritable(r));
            }
        }
        if wanted.shutdown && shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Shutdown);
        }
        match deadline {
            Some(_) => timer.as_mut().poll(cx).map(Wake::Timeout),
            None => Poll::Pending,
        }
    })
    .await
}

/// Waits until `deadline` and says which timeout it was (never, without one). The timer
/// is boxed: the wait for an idle client is part of every client's task, timer or not.
fn until(deadline: Option<(Instant, Expired)>) -> impl Future<Output = Expired> {
    let timer =
        deadline.map(|(when, expired)| (Box::pin(tokio::time::sleep_until(when.into())), expired));
    async move {
        match timer {
            Some((sleep, expired)) => {
                sleep.await;
                expired
            }
            None => std::future::pending().await,
        }
    }
}
