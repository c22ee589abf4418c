//! Per-pool counters: what `SHOW STATS`, `SHOW POOLS` and `/metrics` read.
//!
//! Written once per transaction (at checkout and at the end of a relay), never per message:
//! relaxed atomics only, no lock and no allocation on the client's path. Gauges (servers and
//! clients by state) are not kept here at all: they are read from the pool's own state when
//! someone asks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::clock::now_us;

/// How often the `avg_*` columns of `SHOW STATS` are recomputed by default (PgBouncer's
/// `stats_period`).
pub const STATS_PERIOD: Duration = Duration::from_secs(60);

/// `stats_period` in force, in milliseconds: pooler-wide and reloadable, set by the App.
static PERIOD_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(STATS_PERIOD.as_millis() as u64);

/// Sets `stats_period` (start, RELOAD, SET).
pub fn set_period(seconds: f64) {
    let ms = (seconds.max(1.0) * 1000.0) as u64;
    PERIOD_MS.store(ms, Relaxed);
}

fn period() -> Duration {
    Duration::from_millis(PERIOD_MS.load(Relaxed))
}

/// Why a server connection was closed (the `reason` label of the closed-servers counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle longer than `server_idle_timeout`.
    IdleTimeout,
    /// A reserve server came back with nobody waiting.
    ReserveIdle,
    /// Found closed by Postgres while idle in the pool.
    Dead,
    /// Not safe to reuse: its client left mid-transaction, or the server or protocol failed.
    Unclean,
    /// PAUSE or KILL on the admin console.
    Admin,
    /// Connected longer than `server_lifetime`.
    Lifetime,
    /// `server_check_query` failed before reuse.
    CheckFailed,
    /// Closed to make room in another pool under `max_db_connections`/`max_user_connections`,
    /// or because a RELOAD made the pool smaller.
    Evicted,
    /// The pooler is shutting down.
    Shutdown,
    /// Its host went down or no longer has the role the pool needs (a primary demoted).
    HostUnusable,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::IdleTimeout,
        CloseReason::ReserveIdle,
        CloseReason::Dead,
        CloseReason::Unclean,
        CloseReason::Admin,
        CloseReason::Lifetime,
        CloseReason::CheckFailed,
        CloseReason::Evicted,
        CloseReason::Shutdown,
        CloseReason::HostUnusable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ReserveIdle => "reserve_idle",
            CloseReason::Dead => "dead",
            CloseReason::Unclean => "unclean",
            CloseReason::Admin => "admin",
            CloseReason::Lifetime => "lifetime",
            CloseReason::CheckFailed => "check_failed",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::HostUnusable => "host_unusable",
        }
    }
}

/// Running totals of one pool, as PgBouncer's `SHOW STATS` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub wait_us: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.server_assignments += o.server_assignments;
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_us += o.xact_us;
        self.wait_us += o.wait_us;
    }
}

/// The `avg_*` columns: rates per second and mean durations over the last `stats_period`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Averages {
    pub server_assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub wait_us: u64,
}

#[derive(Default)]
struct Period {
    started: Option<Instant>,
    at_start: Totals,
    last: Averages,
}

/// A Prometheus histogram of durations with fixed bounds: one relaxed atomic add per
/// sample. (metrics-exporter-prometheus keeps every sample in a lock-free queue until the
/// next scrape or upkeep, a tenth of all the instructions of a one-statement transaction.)
/// The sum is the matching total kept beside it (`wait_us`, `xact_us`).
pub struct Buckets {
    /// Upper bounds in nanoseconds, ascending, and in seconds for the `le` label.
    bounds_ns: Box<[u64]>,
    pub bounds: &'static [f64],
    /// Samples per bucket, not cumulative; the last counts those past every bound.
    counts: Box<[AtomicU64]>,
}

impl Buckets {
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Cumulative counts for each bound and then `+Inf` (the total), as Prometheus has them.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.counts
            .iter()
            .map(|c| {
                total += c.load(Relaxed);
                total
            })
            .collect()
    }
}

pub struct PoolStats {
    server_assignments: AtomicU64,
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_us: AtomicU64,
    wait_us: AtomicU64,
    servers_opened: AtomicU64,
    connect_failures: AtomicU64,
    /// Session-state statements in transaction mode: pinned, warned, refused.
    session_state: [AtomicU64; 3],
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Logged-in clients of this pool.
    clients: AtomicI64,
    last_connect_ok: AtomicU64,
    last_connect_failed: AtomicU64,
    pub wait_histogram: Buckets,
    pub xact_histogram: Buckets,
    /// Touched once per `stats_period` by the janitor and by `SHOW STATS`.
    period: Mutex<Period>,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats::new(Buckets::new(&[]), Buckets::new(&[]))
    }
}

impl PoolStats {
    pub fn new(wait_histogram: Buckets, xact_histogram: Buckets) -> PoolStats {
        PoolStats {
            server_assignments: AtomicU64::new(0),
            xacts: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            xact_us: AtomicU64::new(0),
            wait_us: AtomicU64::new(0),
            servers_opened: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            session_state: Default::default(),
            closed: Default::default(),
            clients: AtomicI64::new(0),
            last_connect_ok: AtomicU64::new(0),
            last_connect_failed: AtomicU64::new(0),
            wait_histogram,
            xact_histogram,
            period: Mutex::new(Period::default()),
        }
    }

    /// A client got a server after waiting `waited` (PgBouncer's wait time: includes opening
    /// a new server when it had to).
    pub fn assigned(&self, waited: Duration) {
        self.server_assignments.fetch_add(1, Relaxed);
        self.wait_us.fetch_add(waited.as_micros() as u64, Relaxed);
        self.wait_histogram.record(waited);
    }

    /// A transaction ended after holding its server for `held`.
    pub fn transaction(&self, held: Duration) {
        self.xacts.fetch_add(1, Relaxed);
        self.xact_us.fetch_add(held.as_micros() as u64, Relaxed);
        self.xact_histogram.record(held);
    }

    /// Bytes from and to the client, and queries, since the last call for this client.
    pub fn transferred(&self, received: u64, sent: u64, queries: u64) {
        if received > 0 {
            self.received.fetch_add(received, Relaxed);
        }
        if sent > 0 {
            self.sent.fetch_add(sent, Relaxed);
        }
        if queries > 0 {
            self.queries.fetch_add(queries, Relaxed);
        }
    }

    pub fn server_opened(&self) {
        self.servers_opened.fetch_add(1, Relaxed);
        self.last_connect_ok.store(now_us(), Relaxed);
    }

    /// A server just answered a client: the server is reachable, whatever an earlier attempt
    /// to open one said. Only a load per transaction unless the pool was failing.
    pub fn server_answered(&self) {
        if self.failing() {
            self.last_connect_ok.store(now_us(), Relaxed);
        }
    }

    /// An attempt to open a server failed; `unreachable` when the server itself is the
    /// problem (not this pool's credentials), which makes the pool not ready.
    pub fn connect_failed(&self, unreachable: bool) {
        self.connect_failures.fetch_add(1, Relaxed);
        if unreachable {
            self.last_connect_failed.store(now_us(), Relaxed);
        }
    }

    pub fn server_closed(&self, reason: CloseReason) {
        self.server_closed_n(reason, 1);
    }

    pub fn server_closed_n(&self, reason: CloseReason, n: usize) {
        if n > 0 {
            let i = CloseReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0);
            self.closed[i].fetch_add(n as u64, Relaxed);
        }
    }

    pub fn client_joined(&self) {
        self.clients.fetch_add(1, Relaxed);
    }

    pub fn client_left(&self) {
        self.clients.fetch_sub(1, Relaxed);
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Relaxed).max(0) as usize
    }

    pub fn servers_opened(&self) -> u64 {
        self.servers_opened.load(Relaxed)
    }

    /// A client's session-state statements: `pinned` is 0 or 1 per client.
    pub fn session_state_seen(&self, pinned: bool, warned: u64, refused: u64) {
        for (i, v) in [u64::from(pinned), warned, refused].into_iter().enumerate() {
            if v > 0 {
                self.session_state[i].fetch_add(v, Relaxed);
            }
        }
    }

    pub fn session_state(&self) -> [(&'static str, u64); 3] {
        let v = |i: usize| self.session_state[i].load(Relaxed);
        [("pinned", v(0)), ("warned", v(1)), ("refused", v(2))]
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Relaxed)
    }

    pub fn closed(&self, reason: CloseReason) -> u64 {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.closed[i].load(Relaxed)
    }

    /// The last attempt to open a server failed, and none has succeeded since.
    pub fn failing(&self) -> bool {
        self.last_connect_failed.load(Relaxed) > self.last_connect_ok.load(Relaxed)
    }

    pub fn totals(&self) -> Totals {
        Totals {
            server_assignments: self.server_assignments.load(Relaxed),
            xacts: self.xacts.load(Relaxed),
            queries: self.queries.load(Relaxed),
            received: self.received.load(Relaxed),
            sent: self.sent.load(Relaxed),
            xact_us: self.xact_us.load(Relaxed),
            wait_us: self.wait_us.load(Relaxed),
        }
    }

    /// Closes the current stats period if it is `stats_period` old, computing its averages.
    pub fn roll_period(&self) {
        let now = Instant::now();
        let totals = self.totals();
        let mut p = self.period.lock().unwrap_or_else(|e| e.into_inner());
        let Some(started) = p.started else {
            p.started = Some(now);
            p.at_start = totals;
            return;
        };
        let secs = now.duration_since(started).as_secs_f64();
        if secs < period().as_secs_f64() {
            return;
        }
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let rate = |n: u64| (n as f64 / secs).round() as u64;
        let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
        let a = &p.at_start;
        let xacts = d(totals.xacts, a.xacts);
        let assignments = d(totals.server_assignments, a.server_assignments);
        p.last = Averages {
            server_assignments: rate(assignments),
            xacts: rate(xacts),
            queries: rate(d(totals.queries, a.queries)),
            received: rate(d(totals.received, a.received)),
            sent: rate(d(totals.sent, a.sent)),
            xact_us: mean(d(totals.xact_us, a.xact_us), xacts),
            wait_us: mean(d(totals.wait_us, a.wait_us), assignments),
        };
        p.started = Some(now);
        p.at_start = totals;
    }

    pub fn averages(&self) -> Averages {
        self.period.lock().unwrap_or_else(|e| e.into_inner()).last
    }
}

/// What `SHOW SERVERS` shows of an idle server.
#[derive(Debug, Clone)]
pub struct ServerSnapshot {
    pub id: u64,
    pub backend_pid: i32,
    /// Which of the pool's hosts it is on.
    pub host: usize,
    pub connected_us: u64,
    pub last_used_us: u64,
    pub local: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_a_sample_at_a_bound_in_that_bound() {
        static BOUNDS: &[f64] = &[0.001, 0.01];
        let b = Buckets::new(BOUNDS);
        b.record(Duration::ZERO);
        b.record(Duration::from_millis(1));
        b.record(Duration::from_micros(1001));
        b.record(Duration::from_millis(10));
        b.record(Duration::from_secs(5));
        b.record(Duration::MAX);
        assert_eq!(b.cumulative(), vec![2, 4, 6]);
    }

    #[test]
    fn failing_until_a_later_success() {
        let s = PoolStats::default();
        assert!(!s.failing());
        s.connect_failed(false);
        assert!(!s.failing(), "a refused login is not an unreachable server");
        s.connect_failed(true);
        assert!(s.failing());
        std::thread::sleep(Duration::from_millis(2));
        s.server_opened();
        assert!(!s.failing());
        std::thread::sleep(Duration::from_millis(2));
        s.connect_failed(true);
        std::thread::sleep(Duration::from_millis(2));
        s.server_answered();
        assert!(!s.failing(), "a server that answers is reachable");
    }

    #[test]
    fn totals_add_up() {
        let s = PoolStats::default();
        s.assigned(Duration::from_millis(3));
        s.transaction(Duration::from_millis(5));
        s.transferred(10, 20, 2);
        s.server_closed(CloseReason::Dead);
        let t = s.totals();
        assert_eq!(
            (t.server_assignments, t.xacts, t.queries, t.received, t.sent),
            (1, 1, 2, 10, 20)
        );
        assert_eq!((t.wait_us, t.xact_us), (3000, 5000));
        assert_eq!(s.closed(CloseReason::Dead), 1);
        assert_eq!(s.closed(CloseReason::Admin), 0);
    }
}
