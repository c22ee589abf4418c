//! A bounded pool of server connections for one (database, user) pair.
//!
//! At most `pool_size` servers exist; a client that has waited longer than
//! `reserve_pool_timeout` may open up to `reserve_size` more. Waiters are served first come,
//! first served, and a server that comes back goes straight to the first waiter instead of
//! through the idle list. The shared state is touched once at checkout and once at checkin.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::config::PoolMode;
use crate::error::{PoolerError, Result};
use crate::server::{Params, ServerConn, ServerCredential, ServerTarget};
use crate::stats::{CloseReason, PoolStats, ServerSnapshot, us_of};

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub pool_size: usize,
    pub reserve_size: usize,
    pub min_pool_size: usize,
    pub reserve_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub mode: PoolMode,
    pub reset_query: String,
    /// What to do when a transaction-mode client creates session state.
    pub session_state: crate::session_state::Policy,
}

/// What a waiter is handed: a ready server, or the right to open one.
enum Grant {
    Server(ServerConn),
    Slot,
}

struct Waiter {
    id: u64,
    /// When the client started waiting (`maxwait`).
    since: Instant,
    /// From this instant the waiter may take a reserve slot.
    reserve_after: Instant,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct PoolState {
    /// Idle servers, most recently used last (LIFO keeps the hot ones hot).
    idle: Vec<ServerConn>,
    waiters: VecDeque<Waiter>,
    /// Servers that exist or are being opened: idle + checked out + connecting.
    total: usize,
    /// Servers being opened right now.
    connecting: usize,
    /// PAUSE: no server is handed out, servers that come back are closed.
    paused: bool,
}

/// Point-in-time counts for the admin console and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    pub active: usize,
    pub connecting: usize,
    pub waiting: usize,
    pub total: usize,
    /// How long the oldest waiter has waited.
    pub max_wait: Duration,
    pub paused: bool,
}

pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    credential: Mutex<ServerCredential>,
    state: Mutex<PoolState>,
    /// Parameters the first server reported: what a new client is told at login, and what a
    /// client that did not ask for another value gets on every server.
    defaults: OnceLock<Params>,
    next_waiter: AtomicU64,
    pub stats: PoolStats,
}

impl Pool {
    pub fn new(
        database: String,
        user: String,
        target: ServerTarget,
        settings: PoolSettings,
        credential: ServerCredential,
        stats: PoolStats,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            database,
            user,
            target,
            settings,
            credential: Mutex::new(credential),
            state: Mutex::new(PoolState::default()),
            defaults: OnceLock::new(),
            next_waiter: AtomicU64::new(1),
            stats,
        });
        tokio::spawn(janitor(Arc::downgrade(&pool)));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the counts half-updated in a way that
        // matters more than stopping service would; keep going with the data as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the login credential (e.g. SCRAM keys a client just proved) if none is known.
    pub fn offer_credential(&self, credential: ServerCredential) {
        let mut current = self.credential.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*current, ServerCredential::None) {
            *current = credential;
        }
    }

    pub fn defaults(&self) -> Option<&Params> {
        self.defaults.get()
    }

    pub fn counts(&self) -> PoolCounts {
        let st = self.lock();
        PoolCounts {
            idle: st.idle.len(),
            active: st.total - st.idle.len() - st.connecting,
            connecting: st.connecting,
            waiting: st.waiters.len(),
            total: st.total,
            max_wait: st
                .waiters
                .front()
                .map(|w| w.since.elapsed())
                .unwrap_or_default(),
            paused: st.paused,
        }
    }

    /// Takes a server: an idle one, a new one if the pool has room, or waits for one.
    pub async fn checkout(self: &Arc<Self>) -> Result<ServerConn> {
        let start = Instant::now();
        let server = self.acquire(start).await?;
        self.stats.assigned(start.elapsed());
        Ok(server)
    }

    async fn acquire(self: &Arc<Self>, start: Instant) -> Result<ServerConn> {
        let reserve_after = start + self.settings.reserve_timeout.unwrap_or(Duration::ZERO);
        loop {
            let waiter = {
                let mut st = self.lock();
                if !st.paused
                    && let Some(server) = st.idle.pop()
                {
                    drop(st);
                    if server.is_alive() {
                        return Ok(server);
                    }
                    self.close(server, CloseReason::Dead);
                    continue;
                }
                if !st.paused && st.total < self.settings.pool_size {
                    st.total += 1;
                    None
                } else {
                    let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(Waiter {
                        id,
                        since: start,
                        reserve_after,
                        tx,
                    });
                    Some((id, rx))
                }
            };
            let grant = match waiter {
                None => Grant::Slot,
                Some((id, rx)) => self.wait(id, rx, start, reserve_after).await?,
            };
            match grant {
                Grant::Server(server) => {
                    if server.is_alive() {
                        return Ok(server);
                    }
                    self.close(server, CloseReason::Dead);
                }
                Grant::Slot => return self.open().await,
            }
        }
    }

    async fn wait(
        &self,
        id: u64,
        mut rx: oneshot::Receiver<Grant>,
        start: Instant,
        reserve_after: Instant,
    ) -> Result<Grant> {
        let query_deadline = self.settings.query_wait_timeout.map(|t| start + t);
        let mut reserve_deadline = (self.settings.reserve_size > 0).then_some(reserve_after);
        loop {
            let deadline = match (reserve_deadline, query_deadline) {
                (Some(r), Some(q)) => Some(r.min(q)),
                (r, q) => r.or(q),
            };
            let timed_out = match deadline {
                Some(d) => {
                    tokio::select! {
                        grant = &mut rx => return grant.map_err(|_| PoolerError::ServerGone),
                        _ = tokio::time::sleep_until(d.into()) => true,
                    }
                }
                None => return (&mut rx).await.map_err(|_| PoolerError::ServerGone),
            };
            debug_assert!(timed_out);
            let now = Instant::now();
            let mut st = self.lock();
            let Some(pos) = st.waiters.iter().position(|w| w.id == id) else {
                // Someone handed us a grant just as the timer fired: take it.
                drop(st);
                return rx.try_recv().map_err(|_| PoolerError::ServerGone);
            };
            if query_deadline.is_some_and(|q| now >= q) {
                st.waiters.remove(pos);
                return Err(PoolerError::QueryWaitTimeout);
            }
            if reserve_deadline.is_some_and(|r| now >= r) {
                reserve_deadline = None;
                if !st.paused && st.total < self.settings.pool_size + self.settings.reserve_size {
                    st.waiters.remove(pos);
                    st.total += 1;
                    tracing::info!(
                        database = %self.database, user = %self.user,
                        "taking a reserve pool connection (waited past reserve_pool_timeout)"
                    );
                    return Ok(Grant::Slot);
                }
            }
        }
    }

    /// Opens a server in a slot already counted in `total`.
    async fn open(&self) -> Result<ServerConn> {
        self.lock().connecting += 1;
        let credential = self
            .credential
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let result =
            ServerConn::connect(&self.target, &credential, self.settings.connect_timeout).await;
        self.lock().connecting -= 1;
        match result {
            Ok(server) => {
                self.stats.server_opened();
                let _ = self.defaults.set(server.params.clone());
                Ok(server)
            }
            Err(e) => {
                self.stats.connect_failed(unreachable(&e));
                tracing::warn!(database = %self.database, user = %self.user, error = %e, "server connection failed");
                self.release_slot();
                Err(e)
            }
        }
    }

    /// Gives a clean, idle server back.
    pub fn checkin(&self, mut server: ServerConn) {
        server.last_used = Instant::now();
        self.stats.server_answered();
        let mut st = self.lock();
        if st.paused {
            st.total -= 1;
            drop(st);
            self.stats.server_closed(CloseReason::Admin);
            tokio::spawn(server.terminate());
            return;
        }
        while let Some(w) = st.waiters.pop_front() {
            match w.tx.send(Grant::Server(server)) {
                Ok(()) => return,
                Err(Grant::Server(s)) => server = s,
                Err(Grant::Slot) => unreachable!("we sent a server"),
            }
        }
        if st.total > self.settings.pool_size {
            // A reserve server with nobody waiting: the burst is over, close it.
            st.total -= 1;
            drop(st);
            self.stats.server_closed(CloseReason::ReserveIdle);
            tokio::spawn(server.terminate());
        } else {
            st.idle.push(server);
        }
    }

    /// Closes a server that cannot be reused (dead, dirty, or mid-transaction).
    pub fn discard(&self, server: ServerConn) {
        self.close(server, CloseReason::Unclean);
    }

    fn close(&self, server: ServerConn, reason: CloseReason) {
        self.stats.server_closed(reason);
        self.release_slot();
        // Dropping the socket closes it; a backend mid-transaction rolls back on EOF.
        drop(server);
    }

    /// A server slot is free again: hand it to the first waiter allowed to use it.
    fn release_slot(&self) {
        let mut st = self.lock();
        st.total -= 1;
        let now = Instant::now();
        while !st.paused
            && let Some(w) = st.waiters.front()
        {
            let limit = if now >= w.reserve_after && self.settings.reserve_size > 0 {
                self.settings.pool_size + self.settings.reserve_size
            } else {
                self.settings.pool_size
            };
            if st.total >= limit {
                break;
            }
            let w = st.waiters.pop_front().expect("front exists");
            if w.tx.send(Grant::Slot).is_ok() {
                st.total += 1;
                break;
            }
        }
    }

    /// Closes servers idle past `server_idle_timeout` and idle servers Postgres has closed;
    /// opens servers up to `min_pool_size`. While the last attempt to reach the server failed,
    /// or idle servers were found dead, tries one connection a tick: that is how `/readyz`
    /// learns the server is back (or gone) without waiting for a client to try.
    fn maintain(self: &Arc<Self>) {
        let mut expired = Vec::new();
        let mut dead = 0;
        let mut to_open = 0;
        {
            let mut st = self.lock();
            let now = Instant::now();
            let mut i = 0;
            while i < st.idle.len() {
                let server = &st.idle[i];
                if self
                    .settings
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(server.last_used) >= t)
                {
                    expired.push(st.idle.remove(i));
                } else if !server.is_alive() {
                    // Dropping the socket is all a dead server needs.
                    drop(st.idle.remove(i));
                    dead += 1;
                } else {
                    i += 1;
                }
            }
            st.total -= expired.len() + dead;
            if !st.paused {
                let min = self.settings.min_pool_size.min(self.settings.pool_size);
                if st.total < min && st.waiters.is_empty() {
                    to_open = min - st.total;
                } else if (dead > 0 || self.stats.failing())
                    && st.connecting == 0
                    && st.total < self.settings.pool_size
                {
                    to_open = 1;
                }
                st.total += to_open;
            }
        }
        self.stats
            .server_closed_n(CloseReason::IdleTimeout, expired.len());
        self.stats.server_closed_n(CloseReason::Dead, dead);
        for server in expired {
            tracing::debug!(database = %self.database, user = %self.user, "closing idle server (server_idle_timeout)");
            tokio::spawn(server.terminate());
        }
        for _ in 0..to_open {
            let pool = self.clone();
            tokio::spawn(async move {
                if let Ok(server) = pool.open().await {
                    pool.checkin(server);
                }
            });
        }
    }
}

/// Whether a failed attempt to open a server means the server cannot be reached (down,
/// starting up, shutting down), as opposed to refusing this pool's user or being full: a wrong
/// password for one user must not make the whole pooler unready.
fn unreachable(e: &PoolerError) -> bool {
    match e {
        PoolerError::ServerLogin { code, .. } => code.starts_with("57P"),
        _ => true,
    }
}

/// Per-pool housekeeping, once a second while the pool exists.
async fn janitor(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.maintain();
        pool.stats.roll_period();
    }
}

/// The admin console's controls.
impl Pool {
    /// PAUSE: new transactions wait; idle servers close now, busy ones when they come back.
    pub fn pause(&self) {
        let idle = {
            let mut st = self.lock();
            st.paused = true;
            let idle = std::mem::take(&mut st.idle);
            st.total -= idle.len();
            idle
        };
        self.stats.server_closed_n(CloseReason::Admin, idle.len());
        for server in idle {
            tokio::spawn(server.terminate());
        }
    }

    /// RESUME: waiters get servers again, first come first served.
    pub fn resume(&self) {
        let mut st = self.lock();
        if !st.paused {
            return;
        }
        st.paused = false;
        let now = Instant::now();
        while let Some(w) = st.waiters.pop_front() {
            if let Some(server) = st.idle.pop() {
                if let Err(Grant::Server(server)) = w.tx.send(Grant::Server(server)) {
                    st.idle.push(server);
                }
                continue;
            }
            let limit = if now >= w.reserve_after && self.settings.reserve_size > 0 {
                self.settings.pool_size + self.settings.reserve_size
            } else {
                self.settings.pool_size
            };
            if st.total >= limit {
                st.waiters.push_front(w);
                break;
            }
            if w.tx.send(Grant::Slot).is_ok() {
                st.total += 1;
            }
        }
    }

    /// KILL: paused, and every waiter is turned away (its client gets an error).
    pub fn kill(&self) {
        self.pause();
        let waiters = std::mem::take(&mut self.lock().waiters);
        drop(waiters);
    }

    /// The idle servers, for `SHOW SERVERS` (busy ones are listed through their clients).
    pub fn idle_servers(&self) -> Vec<ServerSnapshot> {
        self.lock()
            .idle
            .iter()
            .map(|s| ServerSnapshot {
                id: s.id,
                backend_pid: s.backend_pid,
                connected_us: us_of(s.created_at),
                last_used_us: us_of(s.last_used),
                local: s.stream.local_addr().ok(),
            })
            .collect()
    }
}
