//! Cancel keys: each client gets a proxy-issued (pid, secret) pair, mapped to the backend it
//! is using at that moment, so a CancelRequest reaches exactly that client's query.
//!
//! A cancel must never reach the next user of a server. So a cancel takes its target and
//! counts itself in flight under the client's lock, and holds its connection to Postgres
//! until Postgres closes it (by then the backend has been signalled); a client giving its
//! server back first clears its target under the same lock, then waits for cancels in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::protocol::messages;
use crate::protocol::tags::startup_code;
use crate::server::{BackendKey, ServerTarget};

/// The backend a client's cancel requests go to right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub server: Arc<ServerTarget>,
    pub key: BackendKey,
}

#[derive(Default)]
struct SlotState {
    target: Option<CancelTarget>,
    /// Cancels sent to `target` whose connection Postgres has not closed yet.
    in_flight: usize,
}

#[derive(Default)]
struct SlotShared {
    state: Mutex<SlotState>,
    /// Woken when `in_flight` drops to zero.
    settled: Notify,
}

type Slot = Arc<SlotShared>;

struct Entry {
    secret: i32,
    target: Slot,
}

/// Every client's cancel key.
#[derive(Clone)]
pub struct CancelRegistry {
    map: Arc<DashMap<i32, Entry>>,
    /// `cancel_wait_timeout`: how long a forwarded cancel (and so the client's server,
    /// which waits for it before going back to the pool) may take.
    wait: Duration,
}

/// A client's registration; dropping it retires the key.
pub struct CancelHandle {
    pub key: BackendKey,
    target: Slot,
    registry: CancelRegistry,
}

impl CancelRegistry {
    pub fn new(wait: Duration) -> CancelRegistry {
        CancelRegistry {
            map: Arc::default(),
            wait,
        }
    }

    /// Issues a fresh key for a new client.
    pub fn register(&self) -> CancelHandle {
        let mut rng = rand::thread_rng();
        let target: Slot = Arc::default();
        loop {
            // Positive pids, like real backends, so tools that print them stay unsurprised.
            let pid = rng.gen_range(1..i32::MAX);
            let secret = rng.gen();
            if let dashmap::mapref::entry::Entry::Vacant(slot) = self.map.entry(pid) {
                slot.insert(Entry {
                    secret,
                    target: target.clone(),
                });
                return CancelHandle {
                    key: BackendKey { pid, secret },
                    target,
                    registry: self.clone(),
                };
            }
        }
    }

    /// Forwards a CancelRequest to the backend behind `key`, if the key is valid and its
    /// client is using a server. A wrong key cancels nothing and says nothing, as in Postgres.
    pub async fn cancel(&self, key: BackendKey) {
        let target = match self.map.get(&key.pid) {
            Some(entry)
                if bool::from(entry.secret.to_be_bytes().ct_eq(&key.secret.to_be_bytes())) =>
            {
                let mut state = lock(&entry.target);
                state.in_flight += usize::from(state.target.is_some());
                state
                    .target
                    .clone()
                    .map(|target| (target, InFlight(entry.target.clone())))
            }
            _ => {
                debug!(pid = key.pid, "cancel request with an unknown key ignored");
                return;
            }
        };
        let Some((target, _in_flight)) = target else {
            return;
        };
        info!(server = %target.server.addr_label(), backend_pid = target.key.pid, "forwarding cancel request");
        if !send(&target.server, target.key, self.wait).await {
            warn!(
                backend_pid = target.key.pid,
                "Postgres did not close a cancel connection within cancel_wait_timeout = {}; \
                 cancel given up",
                crate::config::duration::format(self.wait)
            );
        }
    }
}

/// One cancel in flight; dropping it (sent, timed out or abandoned) settles it.
struct InFlight(Slot);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.in_flight -= 1;
        if state.in_flight == 0 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Sends a CancelRequest for `key` to `server` and waits (at most `wait`) until Postgres
/// closes the connection, which it does once the backend has been signalled. False if
/// `wait` ran out. Postgres never answers a cancel; errors are moot.
pub async fn send(server: &ServerTarget, key: BackendKey, wait: Duration) -> bool {
    let mut packet = BytesMut::new();
    let mut body = key.pid.to_be_bytes().to_vec();
    body.extend_from_slice(&key.secret.to_be_bytes());
    messages::startup_packet(startup_code::CANCEL_REQUEST, &body, &mut packet);
    let exchange = async {
        let mut stream = server.open_socket().await?;
        stream.write_all(&packet).await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    tokio::time::timeout(wait, exchange).await.is_ok()
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, SlotState> {
    slot.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelHandle {
    /// Points this client's key at the server it now uses.
    pub fn set(&self, target: CancelTarget) {
        lock(&self.target).target = Some(target);
    }

    /// Detaches the key from its server before the server goes to anyone else: no new cancel
    /// can reach it, and those already sent have been delivered when this returns.
    pub async fn detach(&self) {
        {
            // Usually nothing is in flight: no need to wait on anything.
            let mut state = lock(&self.target);
            state.target = None;
            if state.in_flight == 0 {
                return;
            }
        }
        loop {
            let settled = self.target.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut state = lock(&self.target);
                state.target = None;
                if state.in_flight == 0 {
                    return;
                }
            }
            settled.await;
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.remove(&self.key.pid);
    }
}
