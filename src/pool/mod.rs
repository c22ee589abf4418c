//! A bounded pool of server connections for one (database, user) pair.
//!
//! At most `pool_size` servers exist; a client that has waited longer than
//! `reserve_pool_timeout` may open up to `reserve_size` more. Waiters are served first come,
//! first served (waiters that arrived within a millisecond count as arriving together, see
//! `next_waiter`), and a server that comes back goes straight to a waiter instead of through
//! the idle list. The shared state is touched once at checkout and once at checkin.
//! Over several hosts (`hosts`), `pool_size` also bounds the servers on each host, and a
//! primary outranked by another (a split brain) is not used.

mod admin;
mod expiry;
mod guard;
mod hosts;
mod waiter;

use admin::janitor;
pub use guard::PooledServer;
use guard::{Grant, Slot, offer};
pub use hosts::{HostPolicy, HostSet, HostState, HostTicket, Role};
pub use waiter::WaitSlot;
use waiter::{GrantRx, GrantTx};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::PoolMode;
use crate::error::{PoolerError, Result};
use crate::limits::PoolLimitsShared;
use crate::server::{Params, ServerConn, ServerCredential, ServerTarget};
use crate::stats::{CloseReason, PoolStats, ServerSnapshot};
use crate::wakeup::Wakeup;

/// What a pool is for its whole life: changing these makes RELOAD start a new pool for new
/// clients while the connected ones finish on this one.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub reset_query: String,
    /// What to do when a transaction-mode client creates session state.
    pub session_state: crate::session_state::Policy,
}

/// Sizes and timeouts: RELOAD changes them in place. Read under the pool's lock at checkout,
/// checkin and by the janitor, never per message.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    pub pool_size: usize,
    pub reserve_size: usize,
    pub min_pool_size: usize,
    pub reserve_timeout: Option<Duration>,
    pub query_wait_timeout: Option<Duration>,
    /// `query_wait_notify`: a NOTICE to a client queued this long.
    pub query_wait_notify: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    /// `query_timeout`: also the bound of the pooler's own queries when set.
    pub query_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// `server_lifetime`: a server older than this is closed when next idle.
    pub lifetime: Option<Duration>,
    /// `server_login_retry`: after a failed login, clients of an empty pool are refused.
    pub login_retry: Option<Duration>,
    /// `server_check_query`, run on an idle server unused for `check_delay` before reuse.
    pub check_query: Arc<str>,
    pub check_delay: Duration,
}

impl PoolLimits {
    /// The bound of every query the pooler runs itself (parameter sync, reset, check):
    /// `query_timeout`, else `server_connect_timeout`, else 15 s. A stuck backend must never
    /// hold a client (or a slot) longer than that.
    pub fn internal_query_timeout(&self) -> Duration {
        self.query_timeout
            .or(self.connect_timeout)
            .unwrap_or(Duration::from_secs(15))
    }

    /// Whether an idle server must run the check query before it is handed out (`now`: a
    /// `clock` stamp).
    fn needs_check(&self, server: &ServerConn, now: u64) -> bool {
        !self.check_query.is_empty() && clock::passed(server.last_used_us, now, self.check_delay)
    }

    fn life_over(&self, server: &ServerConn, now: u64) -> bool {
        self.lifetime
            .is_some_and(|l| clock::passed(server.created_us, now, l))
    }
}

struct Waiter {
    /// When the client started waiting (`maxwait`).
    since: Instant,
    /// From this instant the waiter may take a reserve slot.
    reserve_after: Instant,
    /// When the waiter is sent `query_wait_notify`'s NOTICE; None once sent (or never).
    notify_at: Option<Instant>,
    /// The worker thread the waiting session runs on (`workers::current`).
    worker: Option<u32>,
    tx: GrantTx,
}

struct PoolState {
    limits: PoolLimits,
    /// The last failed attempt to open a server and its error, for `server_login_retry`.
    login_failed: Option<(Instant, String)>,
    /// Shutdown: servers that come back are closed.
    shutting_down: bool,
    /// Idle servers, most recently used last (LIFO keeps the hot ones hot).
    /// Boxed as in `PooledServer`: taking one out and handing it over moves a pointer.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    waiters: VecDeque<Waiter>,
    /// Servers that exist or are being opened: idle + checked out + connecting.
    total: usize,
    /// Slots given out to open a server whose login has not ended (the opener may not have
    /// started yet): at most `MAX_CONNECTING`.
    connecting: usize,
    /// PAUSE: no server is handed out, servers that come back are closed.
    paused: bool,
    /// RECONNECT: servers opened before this instant are closed instead of reused.
    reconnect_mark: Option<Instant>,
    /// Servers from before `reconnect_mark` still out with clients (WAIT_CLOSE waits for 0).
    close_needed: usize,
    /// The expiry task found nobody waiting and waits to be told of the next waiter.
    expiry_parked: bool,
}

impl PoolState {
    /// Whether RECONNECT asked for this server to be closed when it comes back.
    fn stale(&self, server: &ServerConn) -> bool {
        self.reconnect_mark.is_some_and(|m| server.created_at < m)
    }

    /// A stale server left the pool's hands for good (closed).
    fn untag(&mut self, server: &ServerConn) {
        if self.stale(server) {
            self.close_needed = self.close_needed.saturating_sub(1);
        }
    }
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
    /// Idle servers that will run `server_check_query` before reuse (PgBouncer's `sv_used`).
    pub used: usize,
}

pub struct Pool {
    pub database: String,
    pub user: String,
    pub target: ServerTarget,
    pub settings: PoolSettings,
    /// Several hosts, or a role to check: which host serves (see `hosts`). None: the one
    /// host, unchecked.
    pub hosts: Option<Arc<HostSet>>,
    /// `max_db_connections` and `max_user_connections`, shared with other pools.
    shared: PoolLimitsShared,
    credential: Mutex<ServerCredential>,
    state: Mutex<PoolState>,
    /// Parameters the first server reported: what a new client is told at login, and what a
    /// client that did not ask for another value gets on every server.
    defaults: OnceLock<Params>,
    /// `defaults`' value of each tracked parameter, in the App's order of them (None where
    /// the server reports none, as for `search_path`): a login looks its values up by
    /// position instead of by name in `defaults`.
    tracked_defaults: OnceLock<Vec<(String, Option<String>)>>,
    /// Startup settings a login already had a server of this pool accept, (name, value as
    /// the client gave it) → Postgres's spelling: a later login with the same pairs (every
    /// pgjdbc connection sends `extra_float_digits`) needs no server to check them.
    accepted_settings: Mutex<HashMap<(String, String), String>>,
    /// The session values most clients of this pool have in common, shared (`share`).
    shared_values: Mutex<SharedValues>,
    /// Wakes the pool's expiry task (`expiry.rs`): a first waiter, new limits, the pool gone.
    expiry_wake: Arc<Wakeup>,
    pub stats: PoolStats,
}

/// See `Pool::share`.
#[derive(Default)]
struct SharedValues {
    params: Option<Arc<Params>>,
    /// The session state of `params` with no other settings (`shared_state`).
    state: Option<Arc<crate::server::SessionState>>,
    /// The ParameterStatus messages a login with `params` is greeted with (`greeting`).
    greeting: Option<bytes::Bytes>,
    startup: Option<Arc<[(String, String)]>>,
    /// The last names shared, at most `SHARED_NAMES`.
    names: Vec<Arc<str>>,
}

/// Enough for a pool's user and database and a few application names.
const SHARED_NAMES: usize = 8;

impl Drop for Pool {
    fn drop(&mut self) {
        // The expiry task holds only a weak reference: woken, it sees the pool gone and ends.
        self.expiry_wake.notify();
    }
}

impl Pool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        database: String,
        user: String,
        target: ServerTarget,
        settings: PoolSettings,
        limits: PoolLimits,
        shared: PoolLimitsShared,
        credential: ServerCredential,
        stats: PoolStats,
        policy: Option<HostPolicy>,
    ) -> Arc<Pool> {
        let hosts = policy.map(|p| {
            let n = target.hosts.len().max(1);
            Arc::new(HostSet::new(p, n, limits.pool_size, limits.reserve_size))
        });
        let pool = Arc::new(Pool {
            database,
            user,
            target,
            settings,
            hosts,
            shared,
            credential: Mutex::new(credential),
            state: Mutex::new(PoolState {
                limits,
                login_failed: None,
                shutting_down: false,
                idle: Vec::new(),
                waiters: VecDeque::new(),
                total: 0,
                connecting: 0,
                paused: false,
                reconnect_mark: None,
                close_needed: 0,
                expiry_parked: false,
            }),
            defaults: OnceLock::new(),
            tracked_defaults: OnceLock::new(),
            accepted_settings: Mutex::new(HashMap::new()),
            shared_values: Mutex::new(SharedValues::default()),
            expiry_wake: Arc::new(Wakeup::new()),
            stats,
        });
        pool.shared.database.register(&pool);
        pool.shared.user.register(&pool);
        tokio::spawn(janitor(Arc::downgrade(&pool)));
        tokio::spawn(expiry::run(Arc::downgrade(&pool), pool.expiry_wake.clone()));
        hosts::watch(&pool);
        pool
    }

    /// The credential servers log in with now.
    fn credential(&self) -> ServerCredential {
        self.credential
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts one more server (open or being opened) if the pool's shared limits allow.
    fn add_slot(&self, st: &mut PoolState) -> bool {
        if !self.shared.try_take() {
            return false;
        }
        st.total += 1;
        true
    }

    /// Counts one more server and one more login under way, if a login place is free
    /// (`MAX_CONNECTING`) and the shared limits allow: the slot for `Slot::opening`.
    fn add_login(&self, st: &mut PoolState) -> bool {
        if st.connecting >= MAX_CONNECTING || !self.add_slot(st) {
            return false;
        }
        st.connecting += 1;
        true
    }

    /// Uncounts `n` servers that are gone.
    fn remove_slots(&self, st: &mut PoolState, n: usize) {
        st.total -= n;
        self.shared.give_back(n);
    }

    /// The current sizes and timeouts.
    pub fn limits(&self) -> PoolLimits {
        self.lock().limits.clone()
    }

    /// RELOAD: new sizes and timeouts. A larger pool serves its waiters at once; a smaller one
    /// closes idle servers beyond the new size now and busy ones as they come back.
    pub fn set_limits(self: &Arc<Self>, mut limits: PoolLimits) {
        if let Some(h) = &self.hosts {
            limits.pool_size = h.set_base_size(limits.pool_size, limits.reserve_size);
        }
        let extra = {
            let mut st = self.lock();
            st.limits = limits;
            let mut extra = Vec::new();
            while st.total > st.limits.pool_size && !st.idle.is_empty() {
                extra.push(st.idle.remove(0));
                self.remove_slots(&mut st, 1);
            }
            self.grant_waiters(&mut st);
            extra
        };
        // New timeouts: the expiry task's next deadline may have moved.
        self.expiry_wake.notify();
        self.stats
            .server_closed_n(CloseReason::Evicted, extra.len());
        for server in extra {
            tokio::spawn(server.terminate());
        }
    }

    /// RELOAD: the auth file or the database's password changed.
    pub fn set_credential(&self, credential: ServerCredential) {
        *self.credential.lock().unwrap_or_else(|e| e.into_inner()) = credential;
        self.lock().login_failed = None;
        self.retry_hosts();
    }

    /// Closes this pool's least recently used idle server to make room in a shared limit.
    pub fn evict_one_idle(&self) -> bool {
        let server = {
            let mut st = self.lock();
            if st.idle.is_empty() {
                return false;
            }
            let server = st.idle.remove(0);
            self.remove_slots(&mut st, 1);
            server
        };
        tracing::debug!(database = %self.database, user = %self.user, "evicting an idle server (max_db_connections/max_user_connections)");
        self.stats.server_closed(CloseReason::Evicted);
        tokio::spawn(server.terminate());
        true
    }

    /// Hands idle servers, then new-server slots, to waiters in arrival order, as far as the
    /// pool's size and the shared limits allow.
    fn grant_waiters(self: &Arc<Self>, st: &mut PoolState) {
        let now = Instant::now();
        while !st.paused
            && let Some(w) = st.waiters.front()
        {
            if let Some(server) = st.idle.pop() {
                let w = st.waiters.pop_front().expect("front exists");
                if let Some(back) = offer(w.tx, PooledServer::new(server, Slot::counted(self))) {
                    st.idle.push(back.detach());
                }
                continue;
            }
            let limit = if now >= w.reserve_after && st.limits.reserve_size > 0 {
                st.limits.pool_size + st.limits.reserve_size
            } else {
                st.limits.pool_size
            };
            if st.total >= limit || !self.add_login(st) {
                break;
            }
            let w = st.waiters.pop_front().expect("front exists");
            if st.total > st.limits.pool_size {
                tracing::info!(
                    database = %self.database, user = %self.user,
                    "taking a reserve pool connection (waited past reserve_pool_timeout)"
                );
            }
            if let Err(grant) = w.tx.send(Grant::Slot(Slot::opening(self))) {
                // The waiter gave up (its client left): the slot goes to the next one.
                match grant {
                    Grant::Slot(slot) => slot.detach(),
                    Grant::Server(server) => st.idle.push(server.detach()),
                    Grant::Failed(_) => {}
                }
                st.connecting -= 1;
                self.remove_slots(st, 1);
            }
        }
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
            drop(current);
            // A login that failed for want of a password says nothing about this one.
            self.lock().login_failed = None;
            self.retry_hosts();
        }
    }

    /// The pool's copy of `params` when the last client shared equal ones, else `params`,
    /// kept for the next: clients of a pool mostly have the same values, and an idle client
    /// then holds no copy of its own (it gets one when it changes a value, `Arc::make_mut`).
    pub fn share(&self, params: Arc<Params>) -> Arc<Params> {
        let mut shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        match &shared.params {
            // The same copy (a login that took it from `shared_params_equal_to`): no
            // comparison entry by entry.
            Some(p) if Arc::ptr_eq(p, &params) || **p == *params => p.clone(),
            _ => {
                let params = Arc::new(Arc::unwrap_or_clone(params).shrunk());
                shared.params = Some(params.clone());
                shared.state = None;
                shared.greeting = None;
                params
            }
        }
    }

    /// Appends the ParameterStatus messages that greet a client with `params` (the server's
    /// defaults, with the client's values where it has them): encoded once for the pool's
    /// shared values and copied for every login that has them, as PgBouncer keeps its
    /// welcome message.
    pub fn greeting(&self, params: &Arc<Params>, out: &mut bytes::BytesMut) {
        let encode = |out: &mut bytes::BytesMut| {
            for (name, value) in self.defaults().map(|d| &d.0[..]).unwrap_or_default() {
                let value = params.get(name).unwrap_or(value);
                crate::wire::parameter_status(out, name, value);
            }
        };
        let mut shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        if !shared
            .params
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, params))
        {
            drop(shared);
            return encode(out);
        }
        if let Some(greeting) = &shared.greeting {
            out.extend_from_slice(greeting);
            return;
        }
        let mut greeting = bytes::BytesMut::new();
        encode(&mut greeting);
        out.extend_from_slice(&greeting);
        shared.greeting = Some(greeting.freeze());
    }

    /// The session state of a client whose values are the pool's shared ones and who has no
    /// other settings (most clients): made once per pool, not once per client and login.
    pub fn shared_state(
        &self,
        params: &Arc<Params>,
        settings: &Params,
    ) -> Option<Arc<crate::server::SessionState>> {
        if !settings.0.is_empty() {
            return None;
        }
        let mut shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        if !shared
            .params
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, params))
        {
            return None;
        }
        Some(
            shared
                .state
                .get_or_insert_with(|| crate::server::SessionState::of(params, settings))
                .clone(),
        )
    }

    /// The shared copy (see `share`) if it holds exactly `params`, in that order.
    pub fn shared_params_equal_to<'p>(
        &self,
        mut params: impl Iterator<Item = (&'p str, &'p str)>,
    ) -> Option<Arc<Params>> {
        let shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        let p = shared.params.as_ref()?;
        let mut entries = p.0.iter();
        loop {
            match (entries.next(), params.next()) {
                (None, None) => return Some(p.clone()),
                (Some((n, v)), Some((name, value))) if n == name && v == value => {}
                _ => return None,
            }
        }
    }

    /// `share` for a name a client is registered with (user, database, application name).
    pub fn share_name(&self, name: &str) -> Arc<str> {
        let mut shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = shared.names.iter().find(|n| ***n == *name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if shared.names.len() >= SHARED_NAMES {
            shared.names.remove(0);
        }
        shared.names.push(n.clone());
        n
    }

    /// `share` for the startup values a client's `RESET` returns to.
    pub fn share_startup(&self, startup: Vec<(String, String)>) -> Arc<[(String, String)]> {
        let mut shared = self.shared_values.lock().unwrap_or_else(|e| e.into_inner());
        match &shared.startup {
            Some(s) if **s == startup[..] => s.clone(),
            _ => {
                let startup: Arc<[(String, String)]> = Arc::from(startup);
                shared.startup = Some(startup.clone());
                startup
            }
        }
    }

    /// Postgres's spelling of every startup setting in `asked`, if a server of this pool
    /// accepted each of them before.
    pub fn accepted_settings(&self, asked: &Params) -> Option<Params> {
        let known = self
            .accepted_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = Params::default();
        for (name, value) in &asked.0 {
            out.set(name, known.get(&(name.clone(), value.clone()))?);
        }
        Some(out)
    }

    /// Remembers startup settings a server accepted (`asked` as given, `spelled` as Postgres
    /// spells them), bounded: the memory of a pool does not grow with what clients send.
    pub fn accept_settings(&self, asked: &Params, spelled: &Params) {
        const MAX_REMEMBERED: usize = 1024;
        let mut known = self
            .accepted_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, value) in &asked.0 {
            if let Some(v) = spelled.get(name) {
                if known.len() >= MAX_REMEMBERED {
                    known.clear();
                }
                known.insert((name.clone(), value.clone()), v.to_string());
            }
        }
    }

    pub fn defaults(&self) -> Option<&Params> {
        self.defaults.get()
    }

    /// Each of `tracked` (the App's tracked parameters, the same list on every call) with its
    /// default, once the defaults are known.
    pub fn tracked_defaults(&self, tracked: &[String]) -> Option<&[(String, Option<String>)]> {
        let defaults = self.defaults()?;
        let made = self.tracked_defaults.get_or_init(|| {
            tracked
                .iter()
                .map(|name| (name.clone(), defaults.get(name).map(str::to_string)))
                .collect()
        });
        Some(made)
    }

    pub fn counts(&self) -> PoolCounts {
        let st = self.lock();
        let now = clock::now_us();
        let used = st
            .idle
            .iter()
            .filter(|s| st.limits.needs_check(s, now))
            .count();
        PoolCounts {
            used,
            idle: st.idle.len() - used,
            active: st.total - st.idle.len() - st.connecting,
            connecting: st.connecting,
            // A waiter whose checkout was dropped stays queued until a grant finds it gone.
            waiting: st.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
            total: st.total,
            max_wait: st
                .waiters
                .iter()
                .find(|w| !w.tx.is_closed())
                .map(|w| w.since.elapsed())
                .unwrap_or_default(),
            paused: st.paused,
        }
    }

    /// Takes a server: an idle one, a new one if the pool has room, or waits for one.
    /// Dropping the returned future at any point gives back what it held.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledServer> {
        self.checkout_in(&WaitSlot::new(), clock::now_us()).await
    }

    /// `checkout`, queueing (if it must) in the caller's own slot: a session reuses one for
    /// all its waits. `start` is when the client asked (a `clock` stamp), read once by the
    /// caller: the queue's deadlines and the wait's statistics count from it, and a server at
    /// hand costs no further clock read.
    pub async fn checkout_in(
        self: &Arc<Self>,
        slot: &WaitSlot,
        start: u64,
    ) -> Result<PooledServer> {
        let (server, waited) = self.acquire(start, slot).await?;
        self.stats.assigned(if waited {
            clock::between(start, clock::now_us())
        } else {
            Duration::ZERO
        });
        Ok(server)
    }

    /// The server, and whether getting it took a wait (a queue, a login, a check query).
    async fn acquire(
        self: &Arc<Self>,
        start: u64,
        slot: &WaitSlot,
    ) -> Result<(PooledServer, bool)> {
        let mut tried_eviction = false;
        // `start` is fresh until something was awaited.
        let mut waited = false;
        loop {
            let mut evict = false;
            let idle = {
                let mut st = self.lock();
                match take_idle(&mut st.idle) {
                    Some(server) if !st.paused => {
                        let now = if waited { clock::now_us() } else { start };
                        let check = st
                            .limits
                            .needs_check(&server, now)
                            .then(|| st.limits.check_query.clone());
                        // The idle server's unit of `total` passes to the guard.
                        Some((PooledServer::new(server, Slot::counted(self)), check))
                    }
                    Some(server) => {
                        st.idle.push(server);
                        None
                    }
                    None => None,
                }
            };
            if let Some((mut server, check)) = idle {
                if !server.is_alive() || server.adopt().is_err() {
                    self.close(server, CloseReason::Dead);
                    continue;
                }
                if !self.host_ok(&server) {
                    self.close(server, CloseReason::HostUnusable);
                    continue;
                }
                match check {
                    None => return Ok((server, waited)),
                    // Boxed, as `open` below: a rare path must not size every checkout's future.
                    Some(query) => {
                        waited = true;
                        match Box::pin(self.check(server, &query)).await {
                            Some(server) => return Ok((server, true)),
                            None => continue,
                        }
                    }
                }
            }
            let waiter = {
                let mut st = self.lock();
                // The queue's deadlines are tokio's instants: converted on this path only.
                let start = clock::instant_of(start);
                let reserve_after = start + st.limits.reserve_timeout.unwrap_or(Duration::ZERO);
                if !st.paused && st.total < st.limits.pool_size {
                    // Servers still logging in do not count (PgBouncer's check_fast_fail): the
                    // janitor's own retry must not let clients through to a failing server.
                    if st.total == st.connecting
                        && let Some(e) = login_retry_error(&st)
                    {
                        return Err(e);
                    }
                    if st.connecting >= MAX_CONNECTING {
                        // Enough logins under way: the first of them to end serves this
                        // waiter or lets it open the next.
                        Some(self.enqueue(&mut st, start, reserve_after, slot))
                    } else if self.add_login(&mut st) {
                        None
                    } else if !tried_eviction {
                        evict = true;
                        None
                    } else {
                        Some(self.enqueue(&mut st, start, reserve_after, slot))
                    }
                } else {
                    Some(self.enqueue(&mut st, start, reserve_after, slot))
                }
            };
            if evict {
                // A shared limit is full: close an idle server of another pool, then retry.
                tried_eviction = true;
                if let Some(limit) = self.shared.full() {
                    limit.evict_idle(self);
                }
                continue;
            }
            let grant = match waiter {
                // Counted by `add_login` above, with no await in between.
                None => Grant::Slot(Slot::opening(self)),
                // The deadlines (reserve_pool_timeout, query_wait_timeout) are the expiry
                // task's: a wait arms no timer of its own.
                Some(rx) => {
                    waited = true;
                    rx.await.map_err(|_| PoolerError::ServerGone)?
                }
            };
            match grant {
                Grant::Server(mut server) => {
                    if !server.is_alive() || server.adopt().is_err() {
                        self.close(server, CloseReason::Dead);
                    } else if !self.host_ok(&server) {
                        self.close(server, CloseReason::HostUnusable);
                    } else {
                        return Ok((server, waited));
                    }
                }
                // Boxed: the login exchange is the largest state a checkout can be in, and every
                // waiting session would carry its size otherwise (memory per client).
                Grant::Slot(slot) => return Box::pin(self.open(slot)).await.map(|s| (s, true)),
                Grant::Failed(e) => return Err(e),
            }
        }
    }

    fn enqueue<'s>(
        &self,
        st: &mut PoolState,
        start: Instant,
        reserve_after: Instant,
        slot: &'s WaitSlot,
    ) -> GrantRx<'s> {
        let (tx, rx) = slot.begin();
        let notify_at = st.limits.query_wait_notify.map(|t| start + t);
        st.waiters.push_back(Waiter {
            since: start,
            reserve_after,
            notify_at,
            worker: crate::workers::current(),
            tx,
        });
        // `reserve_pool_timeout = 0`: the reserve is this waiter's now, not at the task's
        // next deadline.
        if std::mem::take(&mut st.expiry_parked) || reserve_after <= start {
            self.expiry_wake.notify();
        }
        rx
    }

    /// Runs `server_check_query` on a server idle past `server_check_delay`; a server that
    /// fails it (or does not answer within the internal query bound) is closed.
    async fn check(&self, mut server: PooledServer, query: &str) -> Option<PooledServer> {
        let result = server.run_internal(query).await;
        match result {
            Ok(None) => {
                server.last_used_us = clock::now_us();
                Some(server)
            }
            failed => {
                tracing::info!(
                    database = %self.database, user = %self.user, pid = server.backend_pid,
                    result = ?failed.map(|f| f.map(|(code, _)| code)),
                    "server_check_query failed; closing server"
                );
                self.close(server, CloseReason::CheckFailed);
                None
            }
        }
    }

    /// Opens a server in `slot` (a `Slot::opening`, counted in `connecting`). Dropped before
    /// it ends, the slot and the `connecting` count give themselves back.
    async fn open(self: &Arc<Self>, mut slot: Slot) -> Result<PooledServer> {
        debug_assert!(slot.connecting, "open needs a slot counted in connecting");
        let (connect_timeout, query_bound) = {
            let st = self.lock();
            (
                st.limits.connect_timeout,
                st.limits.internal_query_timeout(),
            )
        };
        let credential = self.credential();
        let result = self
            .connect_server(&credential, connect_timeout)
            .await
            .map(|mut server| {
                server.query_bound = query_bound;
                server
            });
        {
            // Uncounted here, under the same lock as the outcome.
            let mut st = self.lock();
            st.connecting -= 1;
            slot.connecting = false;
            st.login_failed = match &result {
                Ok(_) => None,
                Err(e) => Some((Instant::now(), e.to_string())),
            };
            // The server cannot be reached and the pool has no other server open (only this
            // slot, and others still connecting): nobody queued can be served before another
            // connect timeout, so all of them get the error now instead of one timeout each.
            if let Err(e) = &result
                && unreachable(e)
                && st.total - st.connecting == 1
            {
                for w in std::mem::take(&mut st.waiters) {
                    let _ = w.tx.send(Grant::Failed(same_error(e)));
                }
            }
            // Connected just before a RECONNECT that counted it as still connecting: it is
            // stale all the same and will be closed when it comes back; count it.
            if let Ok(server) = &result
                && st.stale(server)
            {
                st.close_needed += 1;
            }
            // A login place is free: the next waiter may open a server in it (after a
            // failure, the slot's drop below does that).
            if result.is_ok() {
                self.grant_waiters(&mut st);
            }
        }
        match result {
            Ok(server) => {
                self.stats.server_opened();
                let _ = self.defaults.set(server.params.clone());
                Ok(PooledServer::new(Box::new(server), slot))
            }
            Err(e) => {
                self.stats.connect_failed(unreachable(&e));
                tracing::warn!(database = %self.database, user = %self.user, error = %e, "server connection failed");
                drop(slot);
                Err(e)
            }
        }
    }

    /// Gives a clean, idle server back.
    pub fn checkin(self: &Arc<Self>, server: PooledServer) {
        self.checkin_at(server, clock::now_us());
    }

    /// `checkin`, with the caller's clock read of now (the end of the transaction, a `clock`
    /// stamp).
    pub fn checkin_at(self: &Arc<Self>, server: PooledServer, now: u64) {
        debug_assert!(
            Arc::ptr_eq(self, &server.slot.pool),
            "checked in to another pool"
        );
        let mut server = server.detach();
        server.last_used_us = now;
        self.stats.server_answered();
        let host_ok = self.host_ok(&server);
        let mut st = self.lock();
        // Picked up here, where every server passes before reuse: RELOAD may have changed it.
        server.query_bound = st.limits.internal_query_timeout();
        let close = if st.paused {
            Some(if st.shutting_down {
                CloseReason::Shutdown
            } else {
                CloseReason::Admin
            })
        } else if st.stale(&server) {
            Some(CloseReason::Admin)
        } else if st.limits.life_over(&server, now) {
            Some(CloseReason::Lifetime)
        } else if !host_ok {
            Some(CloseReason::HostUnusable)
        } else {
            None
        };
        if let Some(reason) = close {
            st.untag(&server);
            self.remove_slots(&mut st, 1);
            // A waiter may open a fresh server in the slot this one leaves.
            self.grant_waiters(&mut st);
            drop(st);
            self.stats.server_closed(reason);
            tokio::spawn(server.terminate());
            return;
        }
        let here = crate::workers::current();
        loop {
            let next = next_waiter(&st.waiters, here);
            let Some(w) = st.waiters.remove(next) else {
                break;
            };
            match offer(w.tx, PooledServer::new(server, Slot::counted(self))) {
                None => return,
                Some(back) => server = back.detach(),
            }
        }
        if st.total > st.limits.pool_size {
            // A reserve server with nobody waiting: the burst is over, close it.
            self.remove_slots(&mut st, 1);
            drop(st);
            self.stats.server_closed(CloseReason::ReserveIdle);
            tokio::spawn(server.terminate());
        } else {
            st.idle.push(server);
        }
    }

    /// Closes a server that cannot be reused (dead, dirty, or mid-transaction).
    pub fn discard(&self, server: PooledServer) {
        self.close(server, CloseReason::Unclean);
    }

    fn close(&self, mut server: PooledServer, reason: CloseReason) {
        // The guard's drop closes the socket, then gives the slot back.
        server.reason = reason;
        drop(server);
    }

    /// A server slot is free again (and a login place, if it was `connecting`): hand it to
    /// the first waiter allowed to use it.
    fn release_slot(self: &Arc<Self>, connecting: bool) {
        let mut st = self.lock();
        if connecting {
            st.connecting -= 1;
        }
        self.remove_slots(&mut st, 1);
        self.grant_waiters(&mut st);
    }
}

/// At most this many servers of a pool log in at once: one, as PgBouncer. Opening up to
/// `pool_size` at once (a cold pool meeting a burst of clients) has Postgres fork them all
/// together while it serves the first transactions; logins then slow the transactions,
/// more clients queue, and more logins start: 2,000 clients at 6,000 tps on a cold pool of
/// 150 waited 4-112 ms a transaction on average in their first second (max 330-540 ms),
/// against PgBouncer's 0.6-8 ms. One at a time, the pool grows only while clients still
/// queue when a login ends: 1.0-2.8 ms (2 or 4 at a time: 12-270 ms; `docs/benchmarks.md`).
const MAX_CONNECTING: usize = 1;

/// Waiters this close in arrival time count as arriving together (see `next_waiter`).
const SAME_TIME: Duration = Duration::from_millis(1);

/// Which waiter a server checked in on worker thread `here` goes to: the first in line, unless
/// it is another thread's and one of the next few, who arrived within `SAME_TIME` of it, is on
/// this thread. Then that one takes it and the server stays where its socket is registered:
/// giving it to the other thread costs a wake-up there and a move of the socket
/// (`ServerConn::adopt`), a third more CPU per transaction when every checkout waits. Waiters
/// that arrived further apart are served strictly in order.
fn next_waiter(waiters: &VecDeque<Waiter>, here: Option<u32>) -> usize {
    const LOOK: usize = 32;
    // A worker queues its sessions in runs (one batch of readiness events after another):
    // at 64 clients on a pool of 20, eight places found none on this thread in 17 % of
    // check-ins, 32 places in 1.6 %.
    let Some(first) = waiters.front() else {
        return 0;
    };
    if here.is_none() || first.worker == here {
        return 0;
    }
    waiters
        .iter()
        .take(LOOK)
        .take_while(|w| w.since <= first.since + SAME_TIME)
        .position(|w| w.worker == here)
        .unwrap_or(0)
}

/// The idle server to hand out: the most recently used, or one of the few below it that is
/// already registered with this worker thread's I/O driver (no move, see
/// `ServerConn::adopt`). Only the top few are looked at: the stack stays about LIFO.
#[allow(clippy::vec_box)]
fn take_idle(idle: &mut Vec<Box<ServerConn>>) -> Option<Box<ServerConn>> {
    const LOOK: usize = 4;
    let here = crate::workers::current();
    let top = idle.len().checked_sub(1)?;
    if here.is_some() && idle[top].home() != here {
        let from = idle.len().saturating_sub(LOOK);
        if let Some(i) = idle[from..top].iter().rposition(|s| s.home() == here) {
            return Some(idle.remove(from + i));
        }
    }
    idle.pop()
}

/// `server_login_retry`: the error for a client of a pool with no servers whose last login
/// failed recently (PgBouncer's text).
fn login_retry_error(st: &PoolState) -> Option<PoolerError> {
    let (at, message) = st.login_failed.as_ref()?;
    let retry = st.limits.login_retry?;
    (at.elapsed() < retry).then(|| PoolerError::ServerLoginRetry(message.clone()))
}

/// The error of a failed server connection, again, for a waiter it fails too.
fn same_error(e: &PoolerError) -> PoolerError {
    match e {
        PoolerError::ServerConnect(m) => PoolerError::ServerConnect(m.clone()),
        PoolerError::ServerLogin { code, message } => PoolerError::ServerLogin {
            code: code.clone(),
            message: message.clone(),
        },
        other => PoolerError::ServerConnect(other.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(slot: &WaitSlot, since: Instant, worker: u32) -> Waiter {
        Waiter {
            since,
            reserve_after: since,
            notify_at: None,
            worker: Some(worker),
            tx: slot.begin().0,
        }
    }

    #[test]
    fn a_server_goes_to_the_first_waiter_or_one_on_its_thread_that_came_at_the_same_time() {
        let slots: Vec<WaitSlot> = (0..40).map(|_| WaitSlot::new()).collect();
        let t = Instant::now();
        let us = |n: u64| t + Duration::from_micros(n);
        let queue = |spec: &[(u64, u32)]| -> VecDeque<Waiter> {
            spec.iter()
                .zip(&slots)
                .map(|(&(at, worker), slot)| waiter(slot, us(at), worker))
                .collect()
        };
        // The first in line is on this thread.
        assert_eq!(next_waiter(&queue(&[(0, 1), (10, 0)]), Some(1)), 0);
        // Another thread's first; the next on this thread came 10 µs later: it goes first.
        assert_eq!(next_waiter(&queue(&[(0, 0), (5, 0), (10, 1)]), Some(1)), 2);
        // ... but not one that came a millisecond or more after the first.
        assert_eq!(next_waiter(&queue(&[(0, 0), (1_001, 1)]), Some(1)), 0);
        // ... nor one further back than the first 32.
        let far: Vec<(u64, u32)> = (0..32).map(|i| (i, 0)).chain([(33, 1)]).collect();
        assert_eq!(next_waiter(&queue(&far), Some(1)), 0);
        // Nobody on this thread, or not on a worker thread at all: the first.
        assert_eq!(next_waiter(&queue(&[(0, 0), (10, 0)]), Some(1)), 0);
        assert_eq!(next_waiter(&queue(&[(0, 0), (10, 1)]), None), 0);
        assert_eq!(next_waiter(&VecDeque::new(), Some(1)), 0);
    }
}
