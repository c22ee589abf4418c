//! The connected clients, for `SHOW CLIENTS`, `SHOW SERVERS` and `KILL`.
//!
//! The shared map is locked only at login and logout. A client's state changes (waiting,
//! active, idle) are atomics in its own entry, written by its own task at checkout and after
//! each relay: per transaction, never per message, and never under a shared lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
    Ordering::SeqCst,
};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use rand::RngExt;

use crate::clock::now_us;
use crate::peers;
use crate::pool::Pool;
use crate::server::ServerConn;
use crate::session_state::Kind;
use crate::wakeup::Wakeup;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, no request pending.
    Idle,
    /// Queued for a server.
    Waiting,
    /// Linked to a server.
    Active,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        }
    }
}

/// What one stretch of relaying did, for the pool's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relayed {
    /// Bytes read from the client, and from the server.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub queries: u64,
    /// Session-state statements let through under `warn`, and refused under `error`.
    pub warned: u64,
    pub refused: u64,
}

/// One connected client as the admin console sees it.
pub struct ClientInfo {
    pub id: u64,
    /// The names are shared with the other clients of the pool that have the same ones.
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub application_name: Arc<str>,
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connected_us: u64,
    /// None for admin console sessions.
    pub pool: Option<Arc<Pool>>,
    fd: RawFd,
    state: AtomicU8,
    request_us: AtomicU64,
    wait_since_us: AtomicU64,
    server_id: AtomicU64,
    server_pid: AtomicI32,
    server_secret: AtomicI32,
    /// Which of the pool's hosts the server is on (`ServerTarget::address`).
    server_host: AtomicUsize,
    server_connected_us: AtomicU64,
    /// Woken by the shutdown supervisor: the session looks at the shutdown phase.
    pub stop: Wakeup,
    /// The BackendKeyData the pooler gave this client (its CancelRequest key).
    pub cancel_key: (i32, i32),
    /// 1 + index in `session_state::Kind::ALL` once the client is pinned to its server.
    pinned: AtomicU8,
    /// CancelRequests for this client on their way to its server. While one is, the server
    /// is not handed to anyone else: a late cancel must never hit the next client's query.
    cancels_in_flight: AtomicU32,
    /// KILL_CLIENT: the session ends at its next wake-up with `admin forced disconnect`.
    killed: AtomicBool,
    /// The client's named prepared statements (transaction mode), for SHOW CLIENTS.
    prepared: AtomicU32,
}

/// The server a client is linked to, as far as `SHOW SERVERS` needs it.
#[derive(Debug, Clone, Copy)]
pub struct LinkedServer {
    pub id: u64,
    /// Which of the pool's hosts it is on.
    pub host: usize,
    pub backend_pid: i32,
    pub connected_us: u64,
}

impl ClientInfo {
    /// Whether the console's KILL_CLIENT asked this session to end.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Relaxed)
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    pub fn request_us(&self) -> u64 {
        self.request_us.load(Relaxed)
    }

    /// When the client started waiting, if it is waiting.
    pub fn waiting_since_us(&self) -> Option<u64> {
        (self.state() == ClientState::Waiting).then(|| self.wait_since_us.load(Relaxed))
    }

    pub fn linked_server(&self) -> Option<LinkedServer> {
        (self.state() == ClientState::Active).then(|| LinkedServer {
            id: self.server_id.load(Relaxed),
            host: self.server_host.load(Relaxed),
            backend_pid: self.server_pid.load(Relaxed),
            connected_us: self.server_connected_us.load(Relaxed),
        })
    }

    /// The client asked for a server; returns when, as a `clock` stamp (the one clock read
    /// of a checkout).
    pub fn waiting(&self) -> u64 {
        let us = now_us();
        self.request_us.store(us, Relaxed);
        self.wait_since_us.store(us, Relaxed);
        self.state.store(ClientState::Waiting as u8, Relaxed);
        us
    }

    /// The client got `server`.
    pub fn attached(&self, server: &ServerConn) {
        self.server_id.store(server.id, Relaxed);
        self.server_pid.store(server.backend_pid, Relaxed);
        self.server_secret.store(server.backend_secret, Relaxed);
        self.server_host.store(server.host, Relaxed);
        self.server_connected_us.store(server.created_us, Relaxed);
        // SeqCst, paired with `cancel_target`: see `cancels_settled`.
        self.state.store(ClientState::Active as u8, SeqCst);
    }

    /// A stretch of relaying from `attached` to `now` (`clock` stamps) ended: account its
    /// bytes and queries to the pool, and the transaction when one completed (`xact_done`:
    /// transaction mode, server clean and idle).
    pub fn relayed(
        &self,
        pool: &Pool,
        counts: Relayed,
        (attached, now): (u64, u64),
        xact_done: bool,
    ) {
        pool.stats
            .transferred(counts.bytes_in, counts.bytes_out, counts.queries);
        if xact_done {
            pool.stats.transaction(crate::clock::between(attached, now));
        }
        pool.stats
            .session_state_seen(false, counts.warned, counts.refused);
        self.state.store(ClientState::Idle as u8, SeqCst);
    }

    /// How many named prepared statements the client has (SHOW CLIENTS).
    pub fn set_prepared_statements(&self, n: usize) {
        self.prepared
            .store(u32::try_from(n).unwrap_or(u32::MAX), Relaxed);
    }

    pub fn prepared_statements(&self) -> u32 {
        self.prepared.load(Relaxed)
    }

    /// Waits, at most `limit`, until no CancelRequest for this client is on its way to the
    /// server it just left; false if one still is (the caller closes that server instead of
    /// reusing it). Called after `relayed` marked the client idle: a canceller counts itself
    /// in flight, then checks the client is active; this marks idle, then checks the count.
    /// Both in SeqCst order, so either the canceller sees idle and sends nothing, or this
    /// sees its count and waits until the cancel has reached Postgres (where a cancel that
    /// arrives for an idle backend is ignored).
    pub fn cancels_in_flight(&self) -> bool {
        self.cancels_in_flight.load(SeqCst) > 0
    }

    pub async fn cancels_settled(&self, limit: std::time::Duration) -> bool {
        if self.cancels_in_flight.load(SeqCst) == 0 {
            return true;
        }
        tokio::time::timeout(limit, async {
            loop {
                let settled = CANCELS_SETTLED.notified();
                if self.cancels_in_flight.load(SeqCst) == 0 {
                    return;
                }
                settled.await;
            }
        })
        .await
        .is_ok()
    }

    /// The client created session state under `session_state = pin`: shown in SHOW CLIENTS
    /// and counted at once, since a pinned client's relay runs until it leaves.
    pub fn mark_pinned(&self, kind: Kind) {
        let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        if self.pinned.swap(i as u8 + 1, Relaxed) == 0
            && let Some(pool) = &self.pool
        {
            pool.stats.session_state_seen(true, 0, 0);
        }
    }

    /// Why the client is pinned to its server (transaction mode), if it is.
    pub fn pinned(&self) -> Option<Kind> {
        let i = self.pinned.load(Relaxed);
        (i > 0).then(|| Kind::ALL[usize::from(i - 1).min(Kind::ALL.len() - 1)])
    }
}

/// How long KILL_CLIENT lets a session end by itself before its socket is shut down.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A map keyed by the pooler's own numbers (client ids, random cancel pids), which no client
/// chooses: foldhash instead of SipHash, whose four hashes per login (two inserts, two
/// removes) cost 500 instructions.
type ById<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every logged-in client, by id.
#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<ById<u64, Arc<ClientInfo>>>,
    /// Cancel key process id → client id, for CancelRequest.
    by_cancel_pid: Mutex<ById<i32, u64>>,
    /// Written into every cancel key's secret (see `peers`); 0: peering off.
    peer_id: u16,
}

/// Where to send a CancelRequest for a client's current query. While it lives, the client's
/// server stays with the client (see `ClientInfo::cancels_settled`): drop it once the cancel
/// has reached Postgres, or failed to.
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub backend_pid: i32,
    pub backend_secret: i32,
    _in_flight: InFlight,
}

struct InFlight(Arc<ClientInfo>);

/// Told whenever any client's cancel has settled; each waiter looks at its own count. One
/// for the process, not one per client: every idle client would carry it, and a session
/// waits on it only in the rare moment a cancel is still on its way.
static CANCELS_SETTLED: Notify = Notify::const_new();

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.cancels_in_flight.fetch_sub(1, SeqCst);
        CANCELS_SETTLED.notify_waiters();
    }
}

/// A registered client; dropping it unregisters. It must be dropped before the client's
/// socket is closed (see `ClientRegistry::kill`).
pub struct Registration {
    registry: Arc<ClientRegistry>,
    pub info: Arc<ClientInfo>,
}

impl std::ops::Deref for Registration {
    type Target = ClientInfo;
    fn deref(&self) -> &ClientInfo {
        &self.info
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.info.id);
        self.registry
            .by_cancel_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.info.cancel_key.0);
        if let Some(pool) = &self.info.pool {
            pool.stats.client_left();
        }
    }
}

impl ClientRegistry {
    /// A registry whose cancel keys carry `peer_id` (fixed for the process's life).
    pub fn new(peer_id: u16) -> ClientRegistry {
        ClientRegistry {
            peer_id,
            ..ClientRegistry::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ById<u64, Arc<ClientInfo>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        stream: &TcpStream,
        addr: Option<SocketAddr>,
        user: &str,
        database: &str,
        application_name: &str,
        pool: Option<Arc<Pool>>,
    ) -> Registration {
        if let Some(pool) = &pool {
            pool.stats.client_joined();
        }
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let cancel_key = {
            // A fresh random key, unique among live clients (a CancelRequest names only it).
            let mut by_pid = self.by_cancel_pid.lock().unwrap_or_else(|e| e.into_inner());
            let mut rng = rand::rng();
            loop {
                let pid = rng.random::<i32>() & 0x7fff_ffff;
                if pid != 0 && !by_pid.contains_key(&pid) {
                    by_pid.insert(pid, id);
                    break (pid, peers::issue_secret(self.peer_id, rng.random::<i32>()));
                }
            }
        };
        let name = |s: &str| match &pool {
            Some(pool) => pool.share_name(s),
            None => Arc::from(s),
        };
        let (user, database, application_name) =
            (name(user), name(database), name(application_name));
        let info = Arc::new(ClientInfo {
            id,
            user,
            database,
            application_name,
            addr,
            local: stream.local_addr().ok(),
            connected_us: now_us(),
            pool,
            fd: stream.as_raw_fd(),
            state: AtomicU8::new(ClientState::Idle as u8),
            request_us: AtomicU64::new(0),
            wait_since_us: AtomicU64::new(0),
            server_id: AtomicU64::new(0),
            server_pid: AtomicI32::new(0),
            server_secret: AtomicI32::new(0),
            server_host: AtomicUsize::new(0),
            server_connected_us: AtomicU64::new(0),
            stop: Wakeup::new(),
            cancel_key,
            pinned: AtomicU8::new(0),
            cancels_in_flight: AtomicU32::new(0),
            killed: AtomicBool::new(false),
            prepared: AtomicU32::new(0),
        });
        self.lock().insert(info.id, info.clone());
        Registration {
            registry: self.clone(),
            info,
        }
    }

    /// The server a CancelRequest with this key should go to: the client's current server,
    /// only while it has one. A wrong secret finds nothing.
    pub fn cancel_target(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let id = *self
            .by_cancel_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)?;
        let info = self.lock().get(&id)?.clone();
        // Compare without an early exit, so timing does not leak how much matched.
        if (info.cancel_key.1 ^ secret) != 0 {
            return None;
        }
        // Counted in flight before the state is looked at (see `cancels_settled`).
        info.cancels_in_flight.fetch_add(1, SeqCst);
        let in_flight = InFlight(info.clone());
        if info.state.load(SeqCst) != ClientState::Active as u8 {
            return None;
        }
        let pool = info.pool.as_ref()?;
        let (host, port) = pool.target.address(info.server_host.load(Relaxed));
        Some(CancelTarget {
            host: host.to_string(),
            port,
            backend_pid: info.server_pid.load(Relaxed),
            backend_secret: info.server_secret.load(Relaxed),
            _in_flight: in_flight,
        })
    }

    /// Every client, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut list: Vec<_> = self.lock().values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Wakes every session (and console) to look at the shutdown phase. A session not waiting
    /// right now finds the wake-up the next time it waits.
    pub fn wake_all(&self) {
        for c in self.lock().values() {
            c.stop.notify();
        }
    }

    /// KILL_CLIENT: asks one client's session (a console session too) to end now. Its task
    /// wakes, sends `admin forced disconnect` and ends the normal way (a server mid-transaction
    /// is closed). Returns false if no such client is connected.
    pub fn kill_client(self: &Arc<Self>, id: u64) -> bool {
        let Some(client) = self.lock().get(&id).cloned() else {
            return false;
        };
        client.killed.store(true, Relaxed);
        client.stop.notify();
        // A session blocked writing to a client that does not read never wakes to look: cut
        // its socket after a grace period if it is still connected then.
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(KILL_GRACE).await;
            if let Some(registry) = registry.upgrade() {
                registry.shutdown_socket(id);
            }
        });
        true
    }

    fn shutdown_socket(&self, id: u64) {
        let clients = self.lock();
        if let Some(c) = clients.get(&id) {
            // SAFETY: as in `kill`: the entry is in the map, under its lock, so its fd is open.
            unsafe {
                libc::shutdown(c.fd, libc::SHUT_RDWR);
            }
        }
    }

    /// Drops the connections of the pooled clients of `database` (all when None); admin
    /// sessions are spared. Their tasks see the socket close and end the normal way, so a
    /// server mid-transaction is closed and a clean one goes back, with the pool's counts kept
    /// exact. Returns how many were dropped.
    pub fn kill(&self, database: Option<&str>) -> usize {
        let clients = self.lock();
        let mut n = 0;
        for c in clients.values() {
            if c.pool.is_none() || database.is_some_and(|d| d != &*c.database) {
                continue;
            }
            // SAFETY: `fd` is the socket of a live client: its `Registration` removes it from
            // this map, under this lock, before the session drops its TcpStream, so the fd
            // cannot have been closed (and reused) while we hold the lock. shutdown() does not
            // close the fd; the owning task still does that.
            unsafe {
                libc::shutdown(c.fd, libc::SHUT_RDWR);
            }
            n += 1;
        }
        n
    }
}
