//! Who is connected now: a registry of clients (SHOW CLIENTS) and one of servers (SHOW
//! SERVERS). An entry is listed once (at login, at connect) and unlisted when its
//! [`Listed`] handle drops, so the registries cost a lock per connection, nothing per
//! message. What changes per transaction (state, link, request time) is in atomics the
//! owner stores into.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::clock;

struct Shared<T> {
    next_id: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Entry<T>>>>,
}

/// A registry of live entries by id, in id order. Cheap to clone.
pub struct Live<T>(Arc<Shared<T>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Default for Live<T> {
    fn default() -> Self {
        Live(Arc::new(Shared {
            next_id: AtomicU64::new(1),
            map: Mutex::default(),
        }))
    }
}

/// One listed item with its id. Derefs to the item.
pub struct Entry<T> {
    id: u64,
    live: Weak<Shared<T>>,
    item: T,
}

impl<T> Entry<T> {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T> Deref for Entry<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T> Live<T> {
    /// A std mutex: held only to insert, remove or copy out the entries.
    fn map(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Entry<T>>>> {
        self.0.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists the entry `make` builds with a fresh id.
    pub fn list(&self, make: impl FnOnce(u64) -> T) -> Listed<T> {
        let id = self.0.next_id.fetch_add(1, Relaxed);
        self.insert(id, make(id))
    }

    /// Lists `item` under an id the caller owns (unique among live entries).
    pub fn insert(&self, id: u64, item: T) -> Listed<T> {
        let entry = Arc::new(Entry {
            id,
            live: Arc::downgrade(&self.0),
            item,
        });
        self.map().insert(id, entry.clone());
        Listed(entry)
    }

    /// Every entry listed now, in id order.
    pub fn all(&self) -> Vec<Arc<Entry<T>>> {
        self.map().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Entry<T>>> {
        self.map().get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// An entry's place in its registry; dropping it unlists the entry. Derefs to the entry.
/// One pointer: it sits in every client's session.
pub struct Listed<T>(Arc<Entry<T>>);

impl<T> Deref for Listed<T> {
    type Target = Entry<T>;
    fn deref(&self) -> &Entry<T> {
        &self.0
    }
}

impl<T> Drop for Listed<T> {
    fn drop(&mut self) {
        if let Some(live) = self.0.live.upgrade() {
            let mut map = live.map.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&self.0.id);
        }
    }
}

impl<T> std::fmt::Debug for Listed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listed({})", self.0.id)
    }
}

/// Where a client stands, as SHOW CLIENTS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, holding no server, nothing asked.
    Idle = 0,
    /// Sent a request and waits in its pool's queue for a server.
    Waiting = 1,
    /// Linked to a server.
    Active = 2,
}

impl ClientState {
    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// One logged-in client.
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// `None` for a Unix-socket client.
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    /// Who the fair queue serves it as (`application "billing"`).
    pub identity: String,
    /// Its cancel key's pid (what `pg_backend_pid()` through pgwarden is not, but what
    /// the client was told).
    pub cancel_pid: i32,
    /// A console session (database `pgwarden` or `pgbouncer`).
    pub console: bool,
    pub connect_us: u64,
    state: AtomicU8,
    request_us: AtomicU64,
    wait_since_us: AtomicU64,
    link: AtomicU64,
    /// When its running query and transaction began (0: none). Written by its session
    /// only; kept here rather than in the session to keep an idle client's task small.
    pub query_us: AtomicU64,
    pub xact_us: AtomicU64,
    /// Ends the client's session at once (KILL, KILL_CLIENT).
    pub kill: futures_util::future::AbortHandle,
}

/// What a [`ClientInfo`] is made of at login (the rest starts idle, unlinked).
pub struct ClientLogin {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    pub identity: String,
    pub cancel_pid: i32,
    pub console: bool,
    pub kill: futures_util::future::AbortHandle,
}

impl ClientInfo {
    pub fn new(id: u64, login: ClientLogin) -> ClientInfo {
        let now = clock::now_us();
        ClientInfo {
            id,
            user: login.user,
            database: login.database,
            application_name: login.application_name,
            addr: login.addr,
            local: login.local,
            tls: login.tls,
            identity: login.identity,
            cancel_pid: login.cancel_pid,
            console: login.console,
            connect_us: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            request_us: AtomicU64::new(now),
            wait_since_us: AtomicU64::new(0),
            link: AtomicU64::new(0),
            query_us: AtomicU64::new(0),
            xact_us: AtomicU64::new(0),
            kill: login.kill,
        }
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Relaxed))
    }

    /// It asked for a server at `now_us` and waits for one.
    pub fn waiting(&self, now_us: u64) {
        self.request_us.store(now_us, Relaxed);
        self.wait_since_us.store(now_us, Relaxed);
        self.state.store(ClientState::Waiting as u8, Relaxed);
    }

    /// It got server `server_id`.
    pub fn linked(&self, server_id: u64) {
        self.wait_since_us.store(0, Relaxed);
        self.link.store(server_id, Relaxed);
        self.state.store(ClientState::Active as u8, Relaxed);
    }

    /// It gave its server back (or got none).
    pub fn unlinked(&self) {
        self.wait_since_us.store(0, Relaxed);
        self.link.store(0, Relaxed);
        self.state.store(ClientState::Idle as u8, Relaxed);
    }

    /// The server it is linked to (0: none).
    pub fn link(&self) -> u64 {
        self.link.load(Relaxed)
    }

    /// When it last asked for a server (its login, before it asked).
    pub fn request_us(&self) -> u64 {
        self.request_us.load(Relaxed)
    }

    /// How long it has been waiting for a server (zero when not waiting).
    pub fn waited(&self) -> std::time::Duration {
        match self.state() {
            ClientState::Waiting => clock::since(self.wait_since_us.load(Relaxed)),
            _ => std::time::Duration::ZERO,
        }
    }
}

/// Where a server stands, as SHOW SERVERS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// In the idle list (SHOW SERVERS says `used` once it needs a check).
    Idle = 0,
    /// Linked to a client.
    Active = 1,
    /// Running the reset or check query.
    Tested = 2,
}

impl ServerState {
    fn from_u8(v: u8) -> ServerState {
        match v {
            1 => ServerState::Active,
            2 => ServerState::Tested,
            _ => ServerState::Idle,
        }
    }
}

/// One logged-in backend connection.
pub struct ServerInfo {
    pub id: u64,
    /// The pool's database and user (as clients name them).
    pub database: String,
    pub pool_user: String,
    /// The user it is logged in to the server as.
    pub user: String,
    /// Where it is connected (`host:port` or a socket path).
    pub addr: String,
    pub port: u16,
    pub local: Option<SocketAddr>,
    /// The backend's pid, from its BackendKeyData.
    pub remote_pid: i32,
    pub tls: bool,
    pub connect_us: u64,
    state: AtomicU8,
    request_us: AtomicU64,
    link: AtomicU64,
    prepared: AtomicUsize,
}

/// What a [`ServerInfo`] is made of at connect.
pub struct ServerLogin {
    pub database: String,
    pub pool_user: String,
    pub user: String,
    pub addr: String,
    pub port: u16,
    pub local: Option<SocketAddr>,
    pub remote_pid: i32,
    pub tls: bool,
}

impl ServerInfo {
    pub fn new(id: u64, login: ServerLogin) -> ServerInfo {
        let now = clock::now_us();
        ServerInfo {
            id,
            database: login.database,
            pool_user: login.pool_user,
            user: login.user,
            addr: login.addr,
            port: login.port,
            local: login.local,
            remote_pid: login.remote_pid,
            tls: login.tls,
            connect_us: now,
            state: AtomicU8::new(ServerState::Idle as u8),
            request_us: AtomicU64::new(now),
            link: AtomicU64::new(0),
            prepared: AtomicUsize::new(0),
        }
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: ServerState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Handed to client `client_id` (0: to pgwarden itself).
    pub fn linked(&self, client_id: u64, now_us: u64) {
        self.link.store(client_id, Relaxed);
        self.request_us.store(now_us, Relaxed);
        self.state.store(ServerState::Active as u8, Relaxed);
    }

    /// Back in the idle list, holding `prepared` statements.
    pub fn idle(&self, prepared: usize) {
        self.link.store(0, Relaxed);
        self.prepared.store(prepared, Relaxed);
        self.state.store(ServerState::Idle as u8, Relaxed);
    }

    pub fn link(&self) -> u64 {
        self.link.load(Relaxed)
    }

    pub fn request_us(&self) -> u64 {
        self.request_us.load(Relaxed)
    }

    pub fn prepared(&self) -> usize {
        self.prepared.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_listed_in_id_order_and_unlisted_on_drop() {
        let live: Live<String> = Live::default();
        let a = live.list(|id| format!("a{id}"));
        let b = live.list(|id| format!("b{id}"));
        assert_eq!((a.id(), b.id()), (1, 2));
        assert_eq!(**live.all()[1], "b2");
        assert_eq!(live.get(1).map(|e| e.to_string()), Some("a1".to_owned()));
        drop(a);
        assert_eq!(live.len(), 1);
        assert!(live.get(1).is_none());
        drop(b);
        assert!(live.is_empty());
    }

    #[test]
    fn an_entry_outliving_its_registry_drops_quietly() {
        let live: Live<u8> = Live::default();
        let entry = live.insert(7, 1);
        drop(live);
        assert_eq!(**entry, 1);
        drop(entry);
    }

    #[test]
    fn client_states_follow_the_session() {
        let (kill, _reg) = futures_util::future::AbortHandle::new_pair();
        let client = ClientInfo::new(
            1,
            ClientLogin {
                user: "u".into(),
                database: "d".into(),
                application_name: String::new(),
                addr: None,
                local: None,
                tls: false,
                identity: "user \"u\"".into(),
                cancel_pid: 1,
                console: false,
                kill,
            },
        );
        assert_eq!(client.state(), ClientState::Idle);
        client.waiting(clock::now_us());
        assert_eq!(client.state().name(), "waiting");
        client.linked(9);
        assert_eq!((client.state(), client.link()), (ClientState::Active, 9));
        assert_eq!(client.waited(), std::time::Duration::ZERO);
        client.unlinked();
        assert_eq!((client.state(), client.link()), (ClientState::Idle, 0));
    }
}
