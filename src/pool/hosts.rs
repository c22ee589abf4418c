//! Several hosts behind one pool: which of them may serve it (`target_session_attrs`), what
//! each one is right now (primary, standby and its replay lag, down), and the background
//! health check that keeps that knowledge fresh.
//!
//! Each host has a watcher task holding one probe connection of its own (outside the pool's
//! count) that runs `PROBE` every `server_check_delay` (every 250 ms while a client waits
//! for a usable host). A failed probe or a failed server connection marks the host down;
//! its watcher keeps retrying it, and no new server connection goes to it until a probe
//! succeeds, so a client never waits on a down host while another can serve. A server
//! connection only goes to a host whose role is known to fit (a host not probed yet is not
//! tried), and a fresh connection's role is checked again after login (`in_hot_standby`,
//! `default_transaction_read_only`, or a query on servers that do not report them): a host
//! that turns out to be in recovery never gets a read-write pool's connection.
//!
//! Split-brain safety: when more than one host is a primary (an old primary came back, or
//! kept running, without being demoted after a standby was promoted), only one of them is
//! ever used, by every pool of the entry: the one on the newest timeline of its cluster
//! (each promotion starts a new timeline, so that is the one promoted most recently), and
//! among primaries timelines do not order (the same timeline, or clusters with different
//! system identifiers) the one the pool already uses, else the first in order (one server
//! listed under two addresses, known by its start time, is one primary). The others are
//! not usable while it is a primary: no new server goes there, their idle servers are closed
//! and busy ones are closed when they come back. The newest timeline seen for a cluster
//! (system identifier) is remembered: a primary of that cluster on an older one (the old
//! primary of a failover, never demoted) is not used even while the newer one is down, until
//! RECONNECT forgets. The state is logged (`error`), shown by
//! `SHOW HOSTS` (`split_brain`, `timeline`) and `/metrics` (`pooler_split_brain`). The
//! timeline is the health check's: `pg_walfile_name(pg_current_wal_lsn())` names the WAL
//! file being written, whose first eight hex digits are the current timeline, right from
//! the promotion on (`pg_control_checkpoint()` would lag until the next checkpoint).
//!
//! Per-host pool size: a pool over several hosts holds at most `pool_size` servers on each
//! host (servers open, logging in, or closing), as if it were one pool per (database, user,
//! host) underneath; `reserve_pool_size` more per host once every serving host is full. Its
//! overall size is `pool_size` times the hosts that serve it now. Each server carries a
//! `HostTicket` that counts it against its host for as long as it exists.
//!
//! A single host with `target_session_attrs = any` has no `HostSet`: today's pool exactly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::config::{LoadBalance, TargetSessionAttrs};
use crate::error::{PoolerError, Result};
use crate::server::{ServerConn, ServerCredential};
use crate::stats::CloseReason;

use super::{Pool, unreachable};

/// The health check's query: recovery, read-only default, whether a standby has received WAL
/// it has not replayed, the age of the last transaction it replayed (NULL if none since it
/// started), where its replay is, a primary's timeline (hex, from the name of the WAL file it
/// writes), when the server started (one server listed twice is not two primaries), and the
/// cluster's system identifier (a primary and its standbys share it).
const PROBE: &str = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), \
    pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), \
    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), \
    pg_last_wal_replay_lsn()::text, \
    CASE WHEN NOT pg_is_in_recovery() THEN substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
    pg_postmaster_start_time()::text, (pg_control_system()).system_identifier::text";

/// `PROBE` without what ranks primaries (timeline, start time, system identifier), for a
/// server that refuses those functions: two primaries are then told apart by order only.
const PROBE_BASIC: &str = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), \
    pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), \
    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), \
    pg_last_wal_replay_lsn()::text";

/// The role check after login on servers without `in_hot_standby` (before PostgreSQL 14).
const ROLE: &str = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')";

/// How often hosts are probed while a client waits for a usable one.
const URGENT: Duration = Duration::from_millis(250);
/// A server connection attempt that has not logged in by then gets company: another host
/// that fits is tried too, and the first to answer serves (a host that stopped answering
/// costs a client this much, not a connect timeout).
const STAGGER: Duration = Duration::from_millis(500);
/// The shortest gap between two probes of one host.
const MIN_GAP: Duration = Duration::from_millis(100);

/// What a pool wants from its hosts; fixed for the pool's life.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    pub attrs: TargetSessionAttrs,
    pub load_balance: LoadBalance,
    /// `max_replica_lag`: a standby further behind is not used.
    pub max_lag: Option<Duration>,
}

/// What is known of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not probed yet.
    Unknown,
    Primary,
    Standby,
    /// The last probe or connection failed.
    Down,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Down => "down",
        }
    }
}

/// One host's state as last seen.
#[derive(Debug, Clone)]
pub struct HostState {
    pub role: Role,
    /// `default_transaction_read_only` on.
    pub read_only: bool,
    /// Replay lag of a standby, as of the last probe.
    pub lag: Duration,
    /// Why it is down (or why its login failed).
    pub error: Option<String>,
    /// The login itself was refused (a password, a missing database): waiting will not help.
    pub refused: bool,
    /// Times the host went down.
    pub downs: u64,
    /// A primary's timeline, as the health check last saw it (None: a standby, or not
    /// checked since it became a primary).
    pub timeline: Option<u32>,
    /// This pool's servers on the host (open, logging in, or closing).
    pub servers: usize,
    /// When the server started (`pg_postmaster_start_time()`): two hosts with the same are
    /// one server under two addresses.
    pub instance: Option<String>,
    /// The cluster's system identifier (`pg_control_system()`): timelines compare within one.
    pub system: Option<String>,
}

impl HostState {
    /// Whether `self` and `other` are known to be the same server.
    fn same_server(&self, other: &HostState) -> bool {
        self.instance.is_some() && self.instance == other.instance
    }
}

/// A fresh observation of a host.
#[derive(Debug, Clone)]
struct Seen {
    standby: bool,
    read_only: bool,
    lag: Option<Duration>,
    /// A primary's timeline (the health check's; a login does not learn it).
    timeline: Option<u32>,
    /// When the server started (the health check's).
    instance: Option<String>,
    /// The cluster's system identifier (the health check's).
    system: Option<String>,
}

/// What is known of all the hosts, under one lock.
struct Known {
    hosts: Vec<HostState>,
    /// The one primary that may be used while several hosts are primaries (see the module
    /// doc); None while no host is a primary.
    writer: Option<usize>,
    /// The newest timeline a primary of each cluster (system identifier) was seen on: a
    /// primary of the same cluster on an older one is stale (the old primary of a failover,
    /// never demoted), and is not used even while the newer one is down. RECONNECT forgets.
    newest: std::collections::HashMap<String, u32>,
}

impl Known {
    /// More than one server is a primary (a server listed twice counts once), or a primary
    /// is stale.
    fn split_brain(&self) -> bool {
        let primaries: Vec<&HostState> = self
            .hosts
            .iter()
            .filter(|h| h.role == Role::Primary)
            .collect();
        let two = primaries.iter().any(|a| {
            primaries
                .iter()
                .any(|b| !std::ptr::eq(*a, *b) && !a.same_server(b))
        });
        two || (0..self.hosts.len()).any(|i| self.stale(i))
    }

    /// Whether host `i` is a primary on an older timeline than one a primary of its cluster
    /// was seen on.
    fn stale(&self, i: usize) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        match (h.role, &h.system, h.timeline) {
            (Role::Primary, Some(system), Some(tl)) => {
                self.newest.get(system).is_some_and(|&newest| tl < newest)
            }
            _ => false,
        }
    }

    /// Whether host `i` is a primary not to use: stale, or another than the writer (and not
    /// the writer's server under another address).
    fn outranked(&self, i: usize) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        if h.role != Role::Primary {
            return false;
        }
        match self.writer {
            Some(w) if w != i => !h.same_server(&self.hosts[w]),
            Some(_) => false,
            None => true,
        }
    }

    /// Remembers the newest timeline of each cluster, and chooses `writer` again: among the
    /// primaries that are not stale (ranked by the health check before those only a login
    /// saw), the current writer, else the first in order. None if there is no such primary.
    fn settle(&mut self) {
        for h in &self.hosts {
            if let (Role::Primary, Some(system), Some(tl)) = (h.role, &h.system, h.timeline) {
                let newest = self.newest.entry(system.clone()).or_insert(tl);
                *newest = (*newest).max(tl);
            }
        }
        // What is left of a cluster is on its newest timeline; primaries of different
        // clusters have timelines that do not compare.
        let primaries: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].role == Role::Primary && !self.stale(i))
            .collect();
        let ranked: Vec<usize> = primaries
            .iter()
            .copied()
            .filter(|&i| self.hosts[i].timeline.is_some())
            .collect();
        let candidates = if ranked.is_empty() { primaries } else { ranked };
        self.writer = match self.writer {
            Some(w) if candidates.contains(&w) => Some(w),
            _ => candidates.first().copied(),
        };
    }
}

/// What `pick` found.
enum Pick {
    Host(HostTicket),
    /// Hosts can serve, but each already has its share of the pool's servers.
    Full,
    /// No host can serve now.
    None,
}

/// Counts one server (or attempt) against its host for as long as it exists; carried by
/// the `ServerConn`.
pub struct HostTicket {
    hosts: Arc<HostSet>,
    i: usize,
}

impl HostTicket {
    pub fn host(&self) -> usize {
        self.i
    }
}

impl Drop for HostTicket {
    fn drop(&mut self) {
        if let Some(h) = self.hosts.lock().hosts.get_mut(self.i) {
            h.servers = h.servers.saturating_sub(1);
        }
        // A client may wait for room on a host.
        self.hosts.changed.notify_waiters();
    }
}

impl std::fmt::Debug for HostTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTicket({})", self.i)
    }
}

pub struct HostSet {
    pub policy: HostPolicy,
    state: Mutex<Known>,
    /// A host's state changed: clients waiting for a usable host look again.
    changed: Notify,
    /// Someone needs fresh knowledge: watchers probe now.
    wake: Notify,
    /// Clients (or the janitor) waiting for a usable host.
    waiting: AtomicUsize,
    next: AtomicUsize,
    /// The configured pool size: per usable host (see `pool_size`).
    base_size: AtomicUsize,
    /// The configured reserve pool size: per host too.
    reserve_size: AtomicUsize,
}

impl HostSet {
    pub fn new(policy: HostPolicy, n: usize, pool_size: usize, reserve_size: usize) -> HostSet {
        let unknown = HostState {
            role: Role::Unknown,
            read_only: false,
            lag: Duration::ZERO,
            error: None,
            refused: false,
            downs: 0,
            timeline: None,
            servers: 0,
            instance: None,
            system: None,
        };
        HostSet {
            policy,
            state: Mutex::new(Known {
                hosts: vec![unknown; n],
                writer: None,
                newest: Default::default(),
            }),
            changed: Notify::new(),
            wake: Notify::new(),
            waiting: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            base_size: AtomicUsize::new(pool_size),
            reserve_size: AtomicUsize::new(reserve_size),
        }
    }

    /// The pool's size: the configured one for each host that serves it now (at least one),
    /// so reads spread over three standbys can use three times the servers; each host holds
    /// at most the configured size (`pick`).
    pub fn pool_size(&self) -> usize {
        let serving = self.serving(&self.lock()).len();
        self.base_size() * serving.max(1)
    }

    /// The configured size: the bound of the pool's servers on each host.
    pub fn base_size(&self) -> usize {
        self.base_size.load(Ordering::Relaxed)
    }

    /// RELOAD: the configured sizes changed; returns the pool's size under them.
    pub(super) fn set_base_size(&self, pool_size: usize, reserve_size: usize) -> usize {
        self.base_size.store(pool_size, Ordering::Relaxed);
        self.reserve_size.store(reserve_size, Ordering::Relaxed);
        self.pool_size()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every host's state, in the configured order.
    pub fn snapshot(&self) -> Vec<HostState> {
        self.lock().hosts.clone()
    }

    /// Whether more than one host is a primary now (only one of them is used), or a primary
    /// is stale.
    pub fn split_brain(&self) -> bool {
        self.lock().split_brain()
    }

    /// RECONNECT: the timelines seen before are forgotten (a cluster deliberately taken back
    /// to an older one); the health checks look again now.
    pub(super) fn forget_timelines(&self) {
        {
            let mut k = self.lock();
            k.newest.clear();
            k.settle();
        }
        self.changed.notify_waiters();
        self.wake.notify_waiters();
    }

    /// Whether host `i` may serve this pool: its role fits, and it is not a primary
    /// outranked by another (split-brain safety).
    fn usable(&self, k: &Known, i: usize) -> bool {
        k.hosts.get(i).is_some_and(|h| self.fits(h)) && !k.outranked(i)
    }

    /// The hosts new servers may go to now: the usable ones, only the standbys among them
    /// for `prefer-standby` while one is usable.
    fn serving(&self, k: &Known) -> Vec<usize> {
        let mut usable: Vec<usize> = (0..k.hosts.len()).filter(|&i| self.usable(k, i)).collect();
        if self.policy.attrs == TargetSessionAttrs::PreferStandby
            && usable.iter().any(|&i| k.hosts[i].role == Role::Standby)
        {
            usable.retain(|&i| k.hosts[i].role == Role::Standby);
        }
        usable
    }

    /// Whether host `h`'s role fits this pool at all (a standby within `max_replica_lag`).
    fn fits(&self, h: &HostState) -> bool {
        use TargetSessionAttrs::*;
        let lag_ok = self.policy.max_lag.is_none_or(|max| h.lag <= max);
        match h.role {
            Role::Unknown | Role::Down => false,
            Role::Primary => match self.policy.attrs {
                Any | PreferStandby | Primary => true,
                ReadWrite => !h.read_only,
                ReadOnly => h.read_only,
                Standby => false,
            },
            Role::Standby => {
                lag_ok && matches!(self.policy.attrs, Any | ReadOnly | Standby | PreferStandby)
            }
        }
    }

    /// Whether a server on host `i` may still be used (checkout, checkin).
    pub fn acceptable(&self, i: usize) -> bool {
        self.usable(&self.lock(), i)
    }

    /// Whether some host can serve the pool now (`/readyz`).
    pub fn any_usable(&self) -> bool {
        let k = self.lock();
        (0..k.hosts.len()).any(|i| self.usable(&k, i))
    }

    /// The host a new server connection should go to, counted against it: among the hosts
    /// serving the pool with room for one more server, the next in turn or the first.
    fn pick(self: &Arc<Self>) -> Pick {
        self.pick_except(&[])
    }

    /// `pick`, leaving out the hosts in `busy` (attempts already under way there).
    fn pick_except(self: &Arc<Self>, busy: &[usize]) -> Pick {
        let mut k = self.lock();
        let mut serving = self.serving(&k);
        serving.retain(|i| !busy.contains(i));
        if self.policy.attrs == TargetSessionAttrs::PreferStandby
            && !serving.iter().any(|&i| k.hosts[i].role == Role::Standby)
            && k.hosts
                .iter()
                .any(|h| h.role == Role::Unknown && !h.refused)
        {
            // Not known yet whether a standby is up: no falling back before it is.
            return Pick::None;
        }
        let i = if serving.is_empty() {
            // A host that answers but refused the pool's login (no password known yet, say):
            // trying it gives the client the server's own error, or succeeds now.
            match (0..k.hosts.len()).find(|&i| k.hosts[i].refused && !busy.contains(&i)) {
                Some(i) => i,
                None => return Pick::None,
            }
        } else {
            let base = self.base_size();
            let mut room: Vec<usize> = serving
                .iter()
                .copied()
                .filter(|&i| k.hosts[i].servers < base)
                .collect();
            if room.is_empty() {
                // Every host has its share: the reserve, on the least loaded host.
                let reserve = base + self.reserve_size.load(Ordering::Relaxed);
                room = serving
                    .iter()
                    .copied()
                    .filter(|&i| k.hosts[i].servers < reserve)
                    .min_by_key(|&i| k.hosts[i].servers)
                    .into_iter()
                    .collect();
            }
            if room.is_empty() {
                return Pick::Full;
            }
            match self.policy.load_balance {
                LoadBalance::Disable => room[0],
                LoadBalance::RoundRobin => {
                    room[self.next.fetch_add(1, Ordering::Relaxed) % room.len()]
                }
            }
        };
        k.hosts[i].servers += 1;
        Pick::Host(HostTicket {
            hosts: self.clone(),
            i,
        })
    }

    /// Waits (until `deadline`) for a host that can serve and has room; while none can
    /// serve, the watchers are told to look now.
    async fn wait_pick(self: &Arc<Self>, deadline: Instant) -> Result<HostTicket> {
        let mut waiting = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.pick() {
                Pick::Host(t) => return Ok(t),
                // Room comes when a server closes (its ticket notifies `changed`).
                Pick::Full => waiting = None,
                Pick::None => {
                    if waiting.is_none() {
                        self.waiting.fetch_add(1, Ordering::Relaxed);
                        waiting = Some(Waiting(self));
                    }
                    self.wake.notify_waiters();
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return match self.pick() {
                        Pick::Host(t) => Ok(t),
                        Pick::Full => Err(PoolerError::ServerConnect(format!(
                            "every usable host has pool_size={} servers of this pool",
                            self.base_size()
                        ))),
                        Pick::None => Err(self.no_host()),
                    };
                }
            }
        }
    }

    fn no_host(&self) -> PoolerError {
        let st = self.lock();
        let states: Vec<String> = st
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| match &h.error {
                Some(e) => format!("host {}: {} ({e})", i + 1, h.role.as_str()),
                None if st.outranked(i) => format!(
                    "host {}: primary, not used: {} (split brain)",
                    i + 1,
                    match (st.stale(i), h.timeline) {
                        (true, Some(tl)) => format!("timeline {tl} is older than one seen before"),
                        _ => "another primary is used".to_string(),
                    }
                ),
                None => format!("host {}: {}", i + 1, h.role.as_str()),
            })
            .collect();
        PoolerError::ServerConnect(format!(
            "no host matches target_session_attrs={} ({})",
            self.policy.attrs.as_str(),
            states.join("; ")
        ))
    }

    /// Changes what is known of host `i` with `f`, chooses the writer again, and deals with
    /// what that changed: hosts that changed role or usability are logged (and their idle
    /// servers closed if no longer usable), a split brain starting or ending is logged, the
    /// pool's size follows, waiters look again. `f` returns its own result.
    fn update<R>(&self, pool: &Pool, f: impl FnOnce(&mut Known) -> R) -> R {
        let (out, changes, split, writer) = {
            let mut k = self.lock();
            let n = k.hosts.len();
            let before: Vec<(Role, bool)> = (0..n)
                .map(|i| (k.hosts[i].role, self.usable(&k, i)))
                .collect();
            let split_before = k.split_brain();
            let out = f(&mut k);
            k.settle();
            let changes: Vec<(usize, Role, Role, bool, Duration)> = (0..n)
                .filter_map(|i| {
                    let h = &k.hosts[i];
                    let usable = self.usable(&k, i);
                    (before[i] != (h.role, usable)).then_some((
                        i,
                        before[i].0,
                        h.role,
                        usable,
                        h.lag,
                    ))
                })
                .collect();
            let split = k.split_brain();
            let split = (split != split_before || (split && !changes.is_empty())).then(|| {
                let primaries: Vec<(usize, Option<u32>, bool)> = (0..n)
                    .filter(|&i| k.hosts[i].role == Role::Primary)
                    .map(|i| (i, k.hosts[i].timeline, k.stale(i)))
                    .collect();
                (split, primaries)
            });
            (out, changes, split, k.writer)
        };
        for &(i, was, role, usable, lag) in &changes {
            let (host, port) = pool.target.address(i);
            tracing::info!(
                database = %pool.database, user = %pool.user, host, port,
                role = role.as_str(), was = was.as_str(), usable,
                lag_s = lag.as_secs_f64(), "server host state changed"
            );
        }
        if let Some((split, primaries)) = split {
            let name = |i: usize| {
                let (host, port) = pool.target.address(i);
                format!("{host}:{port}")
            };
            let seen: Vec<String> = primaries
                .iter()
                .map(|&(i, tl, stale)| match (tl, stale) {
                    (Some(tl), true) => {
                        format!("{} (timeline {tl}, older than one seen before)", name(i))
                    }
                    (Some(tl), false) => format!("{} (timeline {tl})", name(i)),
                    (None, _) => format!("{} (timeline not known yet)", name(i)),
                })
                .collect();
            let using = writer.map(name).unwrap_or_else(|| "none".to_string());
            if split {
                tracing::error!(
                    database = %pool.database, user = %pool.user, primaries = %seen.join(", "),
                    using = %using,
                    "split brain: more than one host is a primary, or a primary is on an older \
                     timeline than one seen before; only the primary on the newest timeline gets \
                     server connections"
                );
            } else {
                tracing::warn!(
                    database = %pool.database, user = %pool.user, using = %using,
                    "split brain over: one host is a primary"
                );
            }
        }
        if !changes.is_empty() {
            let size = self.pool_size();
            pool.lock().limits.pool_size = size;
            self.changed.notify_waiters();
            for &(i, _, _, usable, _) in &changes {
                if !usable {
                    pool.close_idle_on(i);
                }
            }
        }
        out
    }

    /// Records what was seen of host `i`.
    fn seen(&self, pool: &Pool, i: usize, seen: Seen) {
        let role = if seen.standby {
            Role::Standby
        } else {
            Role::Primary
        };
        let unknown_timeline = self.update(pool, |k| {
            let Some(h) = k.hosts.get_mut(i) else {
                return false;
            };
            if seen.instance.is_some() || role != h.role {
                h.timeline = seen.timeline;
                h.instance = seen.instance.clone();
                h.system = seen.system.clone();
            }
            h.role = role;
            h.read_only = seen.read_only;
            if let Some(lag) = seen.lag {
                h.lag = lag;
            }
            h.error = None;
            h.refused = false;
            h.role == Role::Primary && h.timeline.is_none()
        });
        if unknown_timeline {
            // A login found a primary the health check has not ranked yet: look now.
            self.wake.notify_waiters();
        }
    }

    /// Host `i` failed to connect or to answer: down until a probe succeeds.
    fn failed(&self, pool: &Pool, i: usize, e: &PoolerError) {
        let refused = !unreachable(e);
        let went_down = self.update(pool, |k| {
            let Some(h) = k.hosts.get_mut(i) else {
                return false;
            };
            let went_down = h.role != Role::Down && !refused;
            if went_down {
                h.role = Role::Down;
                h.downs += 1;
            }
            if refused {
                // The host answers but will not let the pool's user in: not down, not usable.
                h.role = Role::Unknown;
            }
            h.timeline = None;
            h.instance = None;
            h.system = None;
            h.error = Some(e.to_string());
            h.refused = refused;
            went_down
        });
        if went_down {
            let (host, port) = pool.target.address(i);
            tracing::warn!(
                database = %pool.database, user = %pool.user, host, port, error = %e,
                "server host is down; retrying it in the background"
            );
            pool.close_idle_on(i);
        }
        self.changed.notify_waiters();
        self.wake.notify_waiters();
    }

    /// How long a watcher sleeps between probes.
    fn interval(&self, check_delay: Duration) -> Duration {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return URGENT;
        }
        if check_delay.is_zero() {
            Duration::from_secs(1)
        } else {
            check_delay.max(MIN_GAP)
        }
    }
}

struct Waiting<'a>(&'a HostSet);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("on" | "t" | "true"))
}

/// Where a standby's replay was last seen, and since when it has not moved.
#[derive(Default)]
struct Replay {
    lsn: Option<String>,
    since: Option<Instant>,
}

/// What a row of `PROBE` (or `ROLE`) says. A standby's lag is 0 when it has replayed all it
/// received; otherwise the age of the last transaction it replayed, or, if it replayed none
/// since it started, how long its replay has not moved while WAL waits.
fn seen_of(row: &[Option<String>], replay: &mut Replay) -> Seen {
    let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let standby = truthy(field(0));
    let behind = truthy(field(2));
    let lsn = field(4).map(str::to_string);
    let now = Instant::now();
    if !behind || lsn != replay.lsn {
        replay.since = Some(now);
        replay.lsn = lsn;
    }
    let stalled = replay
        .since
        .map_or(Duration::ZERO, |t| now.duration_since(t));
    let age = field(3)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64);
    let lag = match (standby && behind, age) {
        (false, _) => Duration::ZERO,
        (true, Some(age)) => age.max(stalled),
        (true, None) => stalled,
    };
    Seen {
        standby,
        read_only: truthy(field(1)),
        lag: Some(lag),
        timeline: field(5).and_then(|v| u32::from_str_radix(v, 16).ok()),
        instance: field(6).map(str::to_string),
        system: field(7).map(str::to_string),
    }
}

/// The role of a server just logged in: from the parameters PostgreSQL 14+ reports, or a
/// query on older servers.
async fn role_of(server: &mut ServerConn) -> Result<Seen> {
    if let Some(hot) = server.params.get("in_hot_standby") {
        return Ok(Seen {
            standby: truthy(Some(hot)),
            read_only: truthy(server.params.get("default_transaction_read_only")),
            lag: None,
            timeline: None,
            instance: None,
            system: None,
        });
    }
    let row = server.query_row(ROLE).await?;
    let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
    Ok(Seen {
        standby: truthy(field(0)),
        read_only: truthy(field(1)),
        lag: None,
        timeline: None,
        instance: None,
        system: None,
    })
}

/// One server connection attempt on one host: connect, log in, learn its role.
async fn attempt(
    target: crate::server::ServerTarget,
    credential: ServerCredential,
    timeout: Option<Duration>,
) -> Result<(ServerConn, Seen)> {
    let mut server = ServerConn::connect(&target, &credential, timeout).await?;
    let seen = role_of(&mut server).await?;
    Ok((server, seen))
}

impl Pool {
    /// Opens a server on a host fitting the pool (the one host, for a plain pool): a host
    /// that fails is marked down and the next usable one tried, until the connect timeout
    /// has passed without a usable host. An attempt not answered within `STAGGER` is raced
    /// by one on another host that fits; the first server that logs in with a fitting role
    /// wins, the other attempts are dropped.
    pub(super) async fn connect_server(
        &self,
        credential: &ServerCredential,
        connect_timeout: Option<Duration>,
    ) -> Result<ServerConn> {
        let Some(hosts) = &self.hosts else {
            return ServerConn::connect(&self.target, credential, connect_timeout).await;
        };
        let deadline = Instant::now() + connect_timeout.unwrap_or(Duration::from_secs(15));
        let mut attempts = tokio::task::JoinSet::new();
        let mut in_flight: Vec<usize> = Vec::new();
        // Each attempt holds its host's ticket: dropped (or aborted), it gives it back.
        let start = |attempts: &mut tokio::task::JoinSet<_>,
                     in_flight: &mut Vec<usize>,
                     ticket: HostTicket| {
            let i = ticket.host();
            in_flight.push(i);
            let (target, credential) = (self.target.at(i), credential.clone());
            attempts.spawn(async move {
                let result = attempt(target, credential, connect_timeout).await;
                (i, result.map(|(server, seen)| (server, seen, ticket)))
            });
        };
        loop {
            if attempts.is_empty() {
                in_flight.clear();
                let ticket = hosts.wait_pick(deadline).await?;
                start(&mut attempts, &mut in_flight, ticket);
            }
            let done = tokio::select! {
                done = attempts.join_next() => done,
                _ = tokio::time::sleep(STAGGER) => {
                    if let Pick::Host(ticket) = hosts.pick_except(&in_flight) {
                        start(&mut attempts, &mut in_flight, ticket);
                    }
                    continue;
                }
            };
            // A panicked attempt counts as failed; `in_flight` is cleared when none is left.
            let Some(Ok((i, result))) = done else {
                continue;
            };
            in_flight.retain(|&h| h != i);
            match result {
                Ok((mut server, seen, ticket)) => {
                    server.host = i;
                    server.host_ticket = Some(Box::new(ticket));
                    hosts.seen(self, i, seen);
                    if hosts.acceptable(i) {
                        // Dropping `attempts` aborts the others (their sockets close).
                        return Ok(server);
                    }
                    // Its role changed since the last probe (a primary demoted): not for us.
                    tokio::spawn(server.terminate());
                }
                Err(e) if unreachable(&e) => hosts.failed(self, i, &e),
                Err(e) => return Err(e),
            }
        }
    }

    /// The credential changed: hosts that refused the old one are probed again now.
    pub(super) fn retry_hosts(&self) {
        if let Some(h) = &self.hosts {
            h.wake.notify_waiters();
        }
    }

    /// Whether the pool can serve now (`/readyz`): for several hosts, some host fits (or
    /// answers, refusing only this pool's login); for one host, its last connect did not fail.
    pub fn can_serve(&self) -> bool {
        match &self.hosts {
            Some(h) => h.any_usable() || h.snapshot().iter().any(|s| s.refused),
            None => !self.stats.failing(),
        }
    }

    /// Whether a server may still serve this pool: its host is still of the right role.
    pub(super) fn host_ok(&self, server: &ServerConn) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|h| h.acceptable(server.host))
    }

    /// Closes the idle servers on host `i` (it went down or changed role).
    fn close_idle_on(&self, i: usize) {
        let closing: Vec<Box<ServerConn>> = {
            let mut st = self.lock();
            let (closing, keep) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|s| s.host == i);
            st.idle = keep;
            let closing: Vec<Box<ServerConn>> = closing;
            self.remove_slots(&mut st, closing.len());
            closing
        };
        if closing.is_empty() {
            return;
        }
        self.stats
            .server_closed_n(CloseReason::HostUnusable, closing.len());
        for server in closing {
            tokio::spawn(server.terminate());
        }
    }
}

/// Starts one watcher per host of a pool with several hosts (or a role to check).
pub(super) fn watch(pool: &Arc<Pool>) {
    if let Some(hosts) = &pool.hosts {
        for i in 0..pool.target.hosts.len() {
            tokio::spawn(watch_host(Arc::downgrade(pool), hosts.clone(), i));
        }
    }
}

/// One host's health check, for as long as its pool exists.
async fn watch_host(pool: Weak<Pool>, hosts: Arc<HostSet>, i: usize) {
    let mut probe: Option<ServerConn> = None;
    let mut replay = Replay::default();
    // The server refused what ranks primaries: `PROBE_BASIC` from then on.
    let mut basic = false;
    loop {
        // The pool is not held while the probe runs (a host that never answers would keep a
        // retired pool alive for a connect timeout).
        let Some((target, credential, limits)) = pool
            .upgrade()
            .map(|p| (p.target.at(i), p.credential(), p.limits()))
        else {
            return;
        };
        if hosts.waiting.load(Ordering::Relaxed) > 0 {
            // Clients wait for a host: look with a new session, as theirs would. (An old one
            // misses database- and role-level settings changed since it logged in, such as
            // `ALTER DATABASE ... SET default_transaction_read_only`, and the check would
            // keep vouching for a host their connections find read-only.)
            probe = None;
        }
        let outcome = check(
            &target,
            &mut probe,
            &credential,
            &limits,
            &mut replay,
            &mut basic,
        )
        .await;
        let Some(owner) = pool.upgrade() else { return };
        match outcome {
            Ok(seen) => hosts.seen(&owner, i, seen),
            Err(e) => {
                probe = None;
                hosts.failed(&owner, i, &e);
            }
        }
        drop(owner);
        let check_delay = limits.check_delay;
        tokio::time::sleep(MIN_GAP).await;
        let wake = hosts.wake.notified();
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(hosts.interval(check_delay).saturating_sub(MIN_GAP)) => {}
        }
    }
}

/// One probe: the watcher's connection (opened again if it was lost), `PROBE` on it.
async fn check(
    target: &crate::server::ServerTarget,
    probe: &mut Option<ServerConn>,
    credential: &ServerCredential,
    limits: &super::PoolLimits,
    replay: &mut Replay,
    basic: &mut bool,
) -> Result<Seen> {
    let conn = match probe {
        Some(conn) if conn.is_alive() => conn,
        _ => {
            let mut conn = ServerConn::connect(target, credential, limits.connect_timeout).await?;
            conn.query_bound = limits.internal_query_timeout();
            probe.insert(conn)
        }
    };
    if *basic {
        let row = conn.query_row(PROBE_BASIC).await?;
        return Ok(seen_of(&row, replay));
    }
    match conn.query_rows(PROBE).await? {
        Ok(rows) => match rows.into_iter().next() {
            Some(row) => Ok(seen_of(&row, replay)),
            None => Err(PoolerError::ServerProtocol(
                "the health check returned no row".into(),
            )),
        },
        // Shutting down: the host is going away.
        Err((code, message)) if code.starts_with("57P") => {
            Err(PoolerError::ServerLogin { code, message })
        }
        Err((code, message)) => {
            tracing::warn!(
                host = %target.host, port = target.port, code, error = %message,
                "the health check cannot read the timeline here; two primaries will be told \
                 apart by order only"
            );
            *basic = true;
            let row = conn.query_row(PROBE_BASIC).await?;
            Ok(seen_of(&row, replay))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetSessionAttrs::*;

    fn set(attrs: TargetSessionAttrs, roles: &[(Role, f64)], max_lag: Option<f64>) -> Arc<HostSet> {
        set_with(attrs, LoadBalance::Disable, roles, max_lag, 10, 0)
    }

    fn set_with(
        attrs: TargetSessionAttrs,
        load_balance: LoadBalance,
        roles: &[(Role, f64)],
        max_lag: Option<f64>,
        size: usize,
        reserve: usize,
    ) -> Arc<HostSet> {
        let hosts = HostSet::new(
            HostPolicy {
                attrs,
                load_balance,
                max_lag: max_lag.map(Duration::from_secs_f64),
            },
            roles.len(),
            size,
            reserve,
        );
        {
            let mut k = hosts.lock();
            for (h, (role, lag)) in k.hosts.iter_mut().zip(roles) {
                h.role = *role;
                h.lag = Duration::from_secs_f64(*lag);
            }
            k.settle();
        }
        Arc::new(hosts)
    }

    /// Sets the hosts' timelines (as the health check would see them) and settles.
    fn timelines(hosts: &HostSet, tls: &[Option<u32>]) {
        let mut k = hosts.lock();
        for (h, tl) in k.hosts.iter_mut().zip(tls) {
            h.timeline = *tl;
        }
        k.settle();
    }

    /// The host `pick` chooses; its ticket is given back at once.
    fn picked(hosts: &Arc<HostSet>) -> Option<usize> {
        match hosts.pick() {
            Pick::Host(t) => Some(t.host()),
            Pick::Full | Pick::None => None,
        }
    }

    #[test]
    fn each_attribute_picks_its_hosts() {
        let p = (Role::Primary, 0.0);
        let s = (Role::Standby, 0.0);
        let d = (Role::Down, 0.0);
        let u = (Role::Unknown, 0.0);
        for (attrs, roles, want) in [
            (ReadWrite, vec![s, p], Some(1)),
            (ReadWrite, vec![s, d], None),
            (Primary, vec![d, p], Some(1)),
            (Standby, vec![p, s], Some(1)),
            (Standby, vec![p, d], None),
            (ReadOnly, vec![p, s], Some(1)),
            (PreferStandby, vec![p, s], Some(1)),
            (PreferStandby, vec![p, d], Some(0)),
            // Whether the unknown host is a standby is not known yet: no falling back.
            (PreferStandby, vec![p, u], None),
            (Any, vec![d, s], Some(1)),
            (Any, vec![u, p], Some(1)),
        ] {
            assert_eq!(
                picked(&set(attrs, &roles, None)),
                want,
                "{attrs:?} {roles:?}"
            );
        }
    }

    #[test]
    fn the_pool_size_is_per_host_that_serves() {
        let roles = [
            (Role::Standby, 0.0),
            (Role::Primary, 0.0),
            (Role::Standby, 0.0),
        ];
        assert_eq!(set(Standby, &roles, None).pool_size(), 20);
        assert_eq!(set(Any, &roles, None).pool_size(), 30);
        assert_eq!(set(ReadWrite, &roles, None).pool_size(), 10);
        // The primary does not serve while a standby can.
        assert_eq!(set(PreferStandby, &roles, None).pool_size(), 20);
        // None fits: still one host's worth, for when one does.
        assert_eq!(set(ReadWrite, &[(Role::Down, 0.0)], None).pool_size(), 10);
        assert_eq!(set(Any, &roles, None).set_base_size(4, 0), 12);
    }

    #[test]
    fn each_host_holds_at_most_its_share() {
        let roles = [(Role::Primary, 0.0), (Role::Standby, 0.0)];
        for lb in [LoadBalance::Disable, LoadBalance::RoundRobin] {
            let hosts = set_with(Any, lb, &roles, None, 2, 1);
            let mut held = Vec::new();
            for _ in 0..4 {
                match hosts.pick() {
                    Pick::Host(t) => held.push(t),
                    _ => panic!("room on some host"),
                }
            }
            let on = |held: &[HostTicket], i| held.iter().filter(|t| t.host() == i).count();
            assert_eq!((on(&held, 0), on(&held, 1)), (2, 2), "{lb:?}");
            // Both full: the reserve, one more on each.
            for _ in 0..2 {
                match hosts.pick() {
                    Pick::Host(t) => held.push(t),
                    _ => panic!("reserve room"),
                }
            }
            assert_eq!((on(&held, 0), on(&held, 1)), (3, 3), "{lb:?}");
            assert!(matches!(hosts.pick(), Pick::Full));
            // A server on host 1 closes: room there, and only there.
            let pos = held.iter().position(|t| t.host() == 1).expect("one on 1");
            held.remove(pos);
            assert_eq!(picked(&hosts), Some(1));
            let snapshot = hosts.snapshot();
            assert_eq!((snapshot[0].servers, snapshot[1].servers), (3, 2));
        }
    }

    #[test]
    fn two_primaries_only_the_highest_timeline_is_used() {
        let p = (Role::Primary, 0.0);
        let s = (Role::Standby, 0.0);
        // The standby promoted (timeline 2) while the old primary (1) kept running.
        let hosts = set(ReadWrite, &[p, p], None);
        for h in hosts.lock().hosts.iter_mut() {
            h.system = Some("7300000000000000001".to_string());
        }
        timelines(&hosts, &[Some(1), Some(2)]);
        assert!(hosts.split_brain());
        assert_eq!(picked(&hosts), Some(1));
        assert!(!hosts.acceptable(0));
        assert_eq!(hosts.pool_size(), 10);
        // Whatever the pool wants of a primary: `any` does not spread over both either.
        // (Two clusters: their timelines do not compare, the first in order is used.)
        let any = set_with(Any, LoadBalance::RoundRobin, &[p, s, p], None, 10, 0);
        timelines(&any, &[Some(1), None, Some(2)]);
        let picks: Vec<_> = (0..4).filter_map(|_| picked(&any)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        assert!(!any.acceptable(2));
        // A primary not ranked yet ranks lowest.
        let hosts = set(ReadWrite, &[p, p], None);
        timelines(&hosts, &[None, Some(1)]);
        assert_eq!(picked(&hosts), Some(1));
        // Same timeline: the one in use stays, else the first in order.
        let hosts = set(ReadWrite, &[p, p], None);
        timelines(&hosts, &[Some(2), Some(2)]);
        assert_eq!(picked(&hosts), Some(0));
        hosts.lock().writer = Some(1);
        timelines(&hosts, &[Some(2), Some(2)]);
        assert_eq!(picked(&hosts), Some(1));
        // One primary again: no split brain, it serves.
        hosts.lock().hosts[1].role = Role::Standby;
        timelines(&hosts, &[Some(2), None]);
        assert!(!hosts.split_brain());
        assert_eq!(picked(&hosts), Some(0));
        // One server under two addresses (the same start time): one primary, both serve.
        let hosts = set_with(Any, LoadBalance::RoundRobin, &[p, p], None, 10, 0);
        for h in hosts.lock().hosts.iter_mut() {
            h.instance = Some("2026-12-02 07:00:00.123456+00".to_string());
        }
        timelines(&hosts, &[Some(1), Some(1)]);
        assert!(!hosts.split_brain());
        assert!(hosts.acceptable(0) && hosts.acceptable(1));
        assert_eq!(hosts.pool_size(), 20);
    }

    #[test]
    fn a_primary_on_an_older_timeline_than_seen_is_not_used() {
        let p = (Role::Primary, 0.0);
        let hosts = set(ReadWrite, &[p, p], None);
        for h in hosts.lock().hosts.iter_mut() {
            h.system = Some("7300000000000000001".to_string());
        }
        timelines(&hosts, &[Some(1), Some(2)]);
        assert_eq!(picked(&hosts), Some(1));
        // The promoted one goes down: the old primary, alone, is still not used.
        hosts.lock().hosts[1].role = Role::Down;
        timelines(&hosts, &[Some(1), None]);
        assert!(hosts.split_brain());
        assert_eq!(picked(&hosts), None);
        assert!(
            hosts
                .no_host()
                .to_string()
                .contains("older than one seen before")
        );
        // Another cluster (a new system identifier) has timelines of its own.
        hosts.lock().hosts[0].system = Some("7300000000000000002".to_string());
        timelines(&hosts, &[Some(1), None]);
        assert_eq!(picked(&hosts), Some(0));
        assert!(!hosts.split_brain());
        // RECONNECT forgets what was seen.
        let hosts = set(ReadWrite, &[p, p], None);
        for h in hosts.lock().hosts.iter_mut() {
            h.system = Some("7300000000000000001".to_string());
        }
        timelines(&hosts, &[Some(1), Some(2)]);
        hosts.lock().hosts[1].role = Role::Down;
        timelines(&hosts, &[Some(1), None]);
        assert_eq!(picked(&hosts), None);
        hosts.forget_timelines();
        assert_eq!(picked(&hosts), Some(0));
    }

    #[test]
    fn a_lagging_standby_fits_nothing() {
        let roles = [(Role::Primary, 0.0), (Role::Standby, 11.0)];
        assert_eq!(picked(&set(PreferStandby, &roles, Some(10.0))), Some(0));
        assert_eq!(picked(&set(Standby, &roles, Some(10.0))), None);
        assert_eq!(picked(&set(Standby, &roles, None)), Some(1));
    }

    #[test]
    fn round_robin_spreads_over_the_hosts_that_fit() {
        let hosts = set_with(
            ReadOnly,
            LoadBalance::RoundRobin,
            &[
                (Role::Standby, 0.0),
                (Role::Primary, 0.0),
                (Role::Standby, 0.0),
            ],
            None,
            10,
            0,
        );
        let picks: Vec<_> = (0..4).filter_map(|_| picked(&hosts)).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn replay_lag_and_timeline() {
        let row = |standby: &str, behind: &str, age: Option<&str>, lsn: &str| {
            vec![
                Some(standby.to_string()),
                Some("off".to_string()),
                Some(behind.to_string()),
                age.map(str::to_string),
                Some(lsn.to_string()),
                (standby == "f").then(|| "0000000A".to_string()),
            ]
        };
        let mut r = Replay::default();
        let lag = |s: Seen| s.lag.unwrap_or_default().as_secs_f64();
        assert_eq!(lag(seen_of(&row("f", "f", None, "0/1"), &mut r)), 0.0);
        assert_eq!(
            seen_of(&row("f", "f", None, "0/1"), &mut r).timeline,
            Some(10)
        );
        assert_eq!(lag(seen_of(&row("t", "f", Some("50"), "0/1"), &mut r)), 0.0);
        assert_eq!(
            lag(seen_of(&row("t", "t", Some("7.5"), "0/2"), &mut r)),
            7.5
        );
        // No transaction replayed since it started: how long replay has not moved.
        assert!(lag(seen_of(&row("t", "t", None, "0/2"), &mut r)) < 1.0);
        assert!(seen_of(&row("t", "t", None, "0/2"), &mut r).standby);
        assert_eq!(seen_of(&row("t", "t", None, "0/2"), &mut r).timeline, None);
    }
}
