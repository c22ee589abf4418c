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
/// started), and where its replay is.
const PROBE: &str = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), \
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
}

/// A fresh observation of a host.
#[derive(Debug, Clone, Copy)]
struct Seen {
    standby: bool,
    read_only: bool,
    lag: Option<Duration>,
}

pub struct HostSet {
    pub policy: HostPolicy,
    state: Mutex<Vec<HostState>>,
    /// A host's state changed: clients waiting for a usable host look again.
    changed: Notify,
    /// Someone needs fresh knowledge: watchers probe now.
    wake: Notify,
    /// Clients (or the janitor) waiting for a usable host.
    waiting: AtomicUsize,
    next: AtomicUsize,
    /// The configured pool size: per usable host (see `pool_size`).
    base_size: AtomicUsize,
}

impl HostSet {
    pub fn new(policy: HostPolicy, n: usize, pool_size: usize) -> HostSet {
        let unknown = HostState {
            role: Role::Unknown,
            read_only: false,
            lag: Duration::ZERO,
            error: None,
            refused: false,
            downs: 0,
        };
        HostSet {
            policy,
            state: Mutex::new(vec![unknown; n]),
            changed: Notify::new(),
            wake: Notify::new(),
            waiting: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            base_size: AtomicUsize::new(pool_size),
        }
    }

    /// The pool's size: the configured one for each host that fits now (at least one), so
    /// reads spread over three standbys can use three times the servers. New servers are
    /// spread round-robin (or in order), so this is not a strict bound per host.
    pub fn pool_size(&self) -> usize {
        let fit = self.lock().iter().filter(|h| self.fits(h)).count();
        self.base_size.load(Ordering::Relaxed) * fit.max(1)
    }

    /// RELOAD: the configured size changed; returns the pool's size under it.
    pub(super) fn set_base_size(&self, pool_size: usize) -> usize {
        self.base_size.store(pool_size, Ordering::Relaxed);
        self.pool_size()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HostState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every host's state, in the configured order.
    pub fn snapshot(&self) -> Vec<HostState> {
        self.lock().clone()
    }

    /// Whether host `h` may serve this pool at all (its role fits, a standby within
    /// `max_replica_lag`).
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
        self.lock().get(i).is_some_and(|h| self.fits(h))
    }

    /// Whether some host can serve the pool now (`/readyz`).
    pub fn any_usable(&self) -> bool {
        self.lock().iter().any(|h| self.fits(h))
    }

    /// The host a new server connection should go to: among the hosts that fit (the
    /// standbys first for `prefer-standby`), the next in turn or the first.
    fn pick(&self) -> Option<usize> {
        self.pick_except(&[])
    }

    /// `pick`, leaving out the hosts in `busy` (attempts already under way there).
    fn pick_except(&self, busy: &[usize]) -> Option<usize> {
        let st = self.lock();
        let mut usable: Vec<usize> = (0..st.len())
            .filter(|&i| self.fits(&st[i]) && !busy.contains(&i))
            .collect();
        if self.policy.attrs == TargetSessionAttrs::PreferStandby {
            if usable.iter().any(|&i| st[i].role == Role::Standby) {
                usable.retain(|&i| st[i].role == Role::Standby);
            } else if st.iter().any(|h| h.role == Role::Unknown && !h.refused) {
                // Not known yet whether a standby is up: no falling back before it is.
                return None;
            }
        }
        if usable.is_empty() {
            // A host that answers but refused the pool's login (no password known yet, say):
            // trying it gives the client the server's own error, or succeeds now.
            return (0..st.len()).find(|&i| st[i].refused && !busy.contains(&i));
        }
        Some(match self.policy.load_balance {
            LoadBalance::Disable => usable[0],
            LoadBalance::RoundRobin => {
                usable[self.next.fetch_add(1, Ordering::Relaxed) % usable.len()]
            }
        })
    }

    /// Waits (until `deadline`) for a host that can serve; the watchers are told to look now.
    async fn wait_pick(&self, deadline: Instant) -> Result<usize> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(self);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(i) = self.pick() {
                return Ok(i);
            }
            self.wake.notify_waiters();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return self.pick().ok_or_else(|| self.no_host());
                }
            }
        }
    }

    fn no_host(&self) -> PoolerError {
        let st = self.lock();
        let states: Vec<String> = st
            .iter()
            .enumerate()
            .map(|(i, h)| match &h.error {
                Some(e) => format!("host {}: {} ({e})", i + 1, h.role.as_str()),
                None => format!("host {}: {}", i + 1, h.role.as_str()),
            })
            .collect();
        PoolerError::ServerConnect(format!(
            "no host matches target_session_attrs={} ({})",
            self.policy.attrs.as_str(),
            states.join("; ")
        ))
    }

    /// Records what was seen of host `i`; logs and wakes waiters when that changes its role.
    fn seen(&self, pool: &Pool, i: usize, seen: Seen) {
        let role = if seen.standby {
            Role::Standby
        } else {
            Role::Primary
        };
        let changed = {
            let mut st = self.lock();
            let Some(h) = st.get_mut(i) else { return };
            let was_fit = self.fits(h);
            let before = h.role;
            h.role = role;
            h.read_only = seen.read_only;
            if let Some(lag) = seen.lag {
                h.lag = lag;
            }
            h.error = None;
            h.refused = false;
            let now_fit = self.fits(h);
            (before != role || was_fit != now_fit).then_some((before, now_fit, h.lag))
        };
        if let Some((before, fit, lag)) = changed {
            let (host, port) = pool.target.address(i);
            tracing::info!(
                database = %pool.database, user = %pool.user, host, port,
                role = role.as_str(), was = before.as_str(), usable = fit,
                lag_s = lag.as_secs_f64(), "server host state changed"
            );
            self.changed.notify_waiters();
            if !fit {
                pool.close_idle_on(i);
            }
        }
    }

    /// Host `i` failed to connect or to answer: down until a probe succeeds.
    fn failed(&self, pool: &Pool, i: usize, e: &PoolerError) {
        let refused = !unreachable(e);
        let went_down = {
            let mut st = self.lock();
            let Some(h) = st.get_mut(i) else { return };
            let went_down = h.role != Role::Down && !refused;
            if went_down {
                h.role = Role::Down;
                h.downs += 1;
            }
            if refused {
                // The host answers but will not let the pool's user in: not down, not usable.
                h.role = Role::Unknown;
            }
            h.error = Some(e.to_string());
            h.refused = refused;
            went_down
        };
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
        });
    }
    let row = server.query_row(ROLE).await?;
    let field = |i: usize| row.get(i).and_then(|v| v.as_deref());
    Ok(Seen {
        standby: truthy(field(0)),
        read_only: truthy(field(1)),
        lag: None,
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
        let start = |attempts: &mut tokio::task::JoinSet<_>, in_flight: &mut Vec<usize>, i| {
            in_flight.push(i);
            let (target, credential) = (self.target.at(i), credential.clone());
            attempts.spawn(async move { (i, attempt(target, credential, connect_timeout).await) });
        };
        loop {
            if attempts.is_empty() {
                in_flight.clear();
                let i = hosts.wait_pick(deadline).await?;
                start(&mut attempts, &mut in_flight, i);
            }
            let done = tokio::select! {
                done = attempts.join_next() => done,
                _ = tokio::time::sleep(STAGGER) => {
                    if let Some(j) = hosts.pick_except(&in_flight) {
                        start(&mut attempts, &mut in_flight, j);
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
                Ok((mut server, seen)) => {
                    server.host = i;
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
        let closing: Vec<ServerConn> = {
            let mut st = self.lock();
            let (closing, keep) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|s| s.host == i);
            st.idle = keep;
            let closing: Vec<ServerConn> = closing;
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
        let outcome = check(&target, &mut probe, &credential, &limits, &mut replay).await;
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
) -> Result<Seen> {
    let conn = match probe {
        Some(conn) if conn.is_alive() => conn,
        _ => {
            let mut conn = ServerConn::connect(target, credential, limits.connect_timeout).await?;
            conn.query_bound = limits.internal_query_timeout();
            probe.insert(conn)
        }
    };
    let row = conn.query_row(PROBE).await?;
    Ok(seen_of(&row, replay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetSessionAttrs::*;

    fn set(attrs: TargetSessionAttrs, roles: &[(Role, f64)], max_lag: Option<f64>) -> HostSet {
        let hosts = HostSet::new(
            HostPolicy {
                attrs,
                load_balance: LoadBalance::Disable,
                max_lag: max_lag.map(Duration::from_secs_f64),
            },
            roles.len(),
            10,
        );
        for (h, (role, lag)) in hosts.lock().iter_mut().zip(roles) {
            h.role = *role;
            h.lag = Duration::from_secs_f64(*lag);
        }
        hosts
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
            assert_eq!(set(attrs, &roles, None).pick(), want, "{attrs:?} {roles:?}");
        }
    }

    #[test]
    fn the_pool_size_is_per_host_that_fits() {
        let roles = [
            (Role::Standby, 0.0),
            (Role::Primary, 0.0),
            (Role::Standby, 0.0),
        ];
        assert_eq!(set(Standby, &roles, None).pool_size(), 20);
        assert_eq!(set(Any, &roles, None).pool_size(), 30);
        assert_eq!(set(ReadWrite, &roles, None).pool_size(), 10);
        // None fits: still one host's worth, for when one does.
        assert_eq!(set(ReadWrite, &[(Role::Down, 0.0)], None).pool_size(), 10);
        assert_eq!(set(Any, &roles, None).set_base_size(4), 12);
    }

    #[test]
    fn a_lagging_standby_fits_nothing() {
        let roles = [(Role::Primary, 0.0), (Role::Standby, 11.0)];
        assert_eq!(set(PreferStandby, &roles, Some(10.0)).pick(), Some(0));
        assert_eq!(set(Standby, &roles, Some(10.0)).pick(), None);
        assert_eq!(set(Standby, &roles, None).pick(), Some(1));
    }

    #[test]
    fn round_robin_spreads_over_the_hosts_that_fit() {
        let hosts = set(
            ReadOnly,
            &[
                (Role::Standby, 0.0),
                (Role::Primary, 0.0),
                (Role::Standby, 0.0),
            ],
            None,
        );
        let hosts = HostSet {
            policy: HostPolicy {
                load_balance: LoadBalance::RoundRobin,
                ..hosts.policy.clone()
            },
            ..hosts
        };
        let picks: Vec<_> = (0..4).filter_map(|_| hosts.pick()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn replay_lag() {
        let row = |standby: &str, behind: &str, age: Option<&str>, lsn: &str| {
            vec![
                Some(standby.to_string()),
                Some("off".to_string()),
                Some(behind.to_string()),
                age.map(str::to_string),
                Some(lsn.to_string()),
            ]
        };
        let mut r = Replay::default();
        let lag = |s: Seen| s.lag.unwrap_or_default().as_secs_f64();
        assert_eq!(lag(seen_of(&row("f", "f", None, "0/1"), &mut r)), 0.0);
        assert_eq!(lag(seen_of(&row("t", "f", Some("50"), "0/1"), &mut r)), 0.0);
        assert_eq!(
            lag(seen_of(&row("t", "t", Some("7.5"), "0/2"), &mut r)),
            7.5
        );
        // No transaction replayed since it started: how long replay has not moved.
        assert!(lag(seen_of(&row("t", "t", None, "0/2"), &mut r)) < 1.0);
        assert!(seen_of(&row("t", "t", None, "0/2"), &mut r).standby);
    }
}
