//! Cancel keys: each client gets a proxy-issued (pid, secret) pair, mapped to the backend it
//! is using at that moment, so a CancelRequest reaches exactly that client's query.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use dashmap::DashMap;
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use crate::protocol::messages;
use crate::protocol::tags::startup_code;
use crate::server::{BackendKey, ServerTarget};

/// The backend a client's cancel requests go to right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub server: Arc<ServerTarget>,
    pub key: BackendKey,
}

type Slot = Arc<Mutex<Option<CancelTarget>>>;

struct Entry {
    secret: i32,
    target: Slot,
}

/// Every client's cancel key.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    map: Arc<DashMap<i32, Entry>>,
}

/// A client's registration; dropping it retires the key.
pub struct CancelHandle {
    pub key: BackendKey,
    target: Slot,
    registry: CancelRegistry,
}

impl CancelRegistry {
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
                lock(&entry.target).clone()
            }
            _ => {
                debug!(pid = key.pid, "cancel request with an unknown key ignored");
                return;
            }
        };
        let Some(target) = target else { return };
        info!(server = %target.server.addr_label(), backend_pid = target.key.pid, "forwarding cancel request");
        send(&target.server, target.key).await;
    }
}

/// Sends a CancelRequest for `key` to `server`. Postgres never answers one; errors are moot.
pub async fn send(server: &ServerTarget, key: BackendKey) {
    let mut packet = BytesMut::new();
    let mut body = key.pid.to_be_bytes().to_vec();
    body.extend_from_slice(&key.secret.to_be_bytes());
    messages::startup_packet(startup_code::CANCEL_REQUEST, &body, &mut packet);
    if let Ok(mut stream) = server.open_socket().await {
        let _ = stream.write_all(&packet).await;
        let _ = stream.shutdown().await;
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<CancelTarget>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelHandle {
    /// Points this client's key at the server it now uses (or at none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *lock(&self.target) = target;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.remove(&self.key.pid);
    }
}
