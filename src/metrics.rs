//! Every metric name in one place, the Prometheus rendering, and the HTTP listener (hyper)
//! that serves `/metrics`, `/healthz` and `/readyz`, bounded so idle or slow connections cannot
//! keep a probe from being answered.
//!
//! The recorder is the App's own (not the process-global one), so several poolers in one
//! process (the tests) keep separate numbers. Gauges and totals are not updated on the client
//! path: at scrape time they are copied from the pools' counts and atomics into the recorder,
//! which renders them. Only the two histograms are recorded as things happen, once per
//! transaction. Names follow prometheus-community/pgbouncer_exporter with `pooler_` for
//! `pgbouncer_`, so dashboards port by swapping the prefix.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::accept::AcceptErrors;
use crate::app::App;
use crate::error::PoolerError;
use crate::stats::{CloseReason, PoolStats};

// Per pool, labels `database` and `user`. pgbouncer_exporter's names and meanings (SHOW POOLS).
pub const CLIENT_ACTIVE: &str = "pooler_pools_client_active_connections";
pub const CLIENT_WAITING: &str = "pooler_pools_client_waiting_connections";
pub const CLIENT_IDLE: &str = "pooler_pools_client_idle_connections";
pub const SERVER_ACTIVE: &str = "pooler_pools_server_active_connections";
pub const SERVER_IDLE: &str = "pooler_pools_server_idle_connections";
pub const SERVER_USED: &str = "pooler_pools_server_used_connections";
pub const SERVER_LOGIN: &str = "pooler_pools_server_login_connections";
pub const CLIENT_MAXWAIT: &str = "pooler_pools_client_maxwait_seconds";
pub const POOL_SIZE: &str = "pooler_pools_pool_size";
pub const RESERVE_SIZE: &str = "pooler_pools_reserve_pool_size";
pub const RESERVE_ACTIVE: &str = "pooler_pools_reserve_active_connections";
pub const POOL_PAUSED: &str = "pooler_pools_paused";
pub const SERVER_REACHABLE: &str = "pooler_pools_server_reachable";
// Per pool totals (SHOW STATS).
pub const QUERIES: &str = "pooler_stats_totals_queries_pooled_total";
pub const TRANSACTIONS: &str = "pooler_stats_totals_sql_transactions_pooled_total";
pub const CLIENT_WAIT_TOTAL: &str = "pooler_stats_totals_client_wait_seconds_total";
pub const RECEIVED: &str = "pooler_stats_totals_received_bytes_total";
pub const SENT: &str = "pooler_stats_totals_sent_bytes_total";
pub const ASSIGNMENTS: &str = "pooler_stats_totals_server_assignments_total";
// Per pool, beyond PgBouncer.
pub const WAIT_HISTOGRAM: &str = "pooler_client_wait_seconds";
pub const XACT_HISTOGRAM: &str = "pooler_transaction_duration_seconds";
pub const SERVERS_OPENED: &str = "pooler_server_connections_opened_total";
pub const SERVERS_CLOSED: &str = "pooler_server_connections_closed_total";
pub const CONNECT_FAILURES: &str = "pooler_server_connect_failures_total";
pub const SESSION_STATE: &str = "pooler_session_state_total";
// Global.
pub const UP: &str = "pooler_up";
pub const BUILD_INFO: &str = "pooler_build_info";
pub const MAX_CLIENT_CONN: &str = "pooler_config_max_client_connections";
pub const USED_CLIENTS: &str = "pooler_used_clients";
pub const POOLS: &str = "pooler_pools";
pub const DATABASES: &str = "pooler_databases";
pub const ERRORS: &str = "pooler_errors_total";
// Per peer, label `peer_id`.
pub const PEER_FORWARDED: &str = "pooler_peer_cancels_forwarded_total";
pub const PEER_FAILED: &str = "pooler_peer_cancel_forward_failures_total";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric with its help text (rendered as `# HELP`, and listed in the README).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        CLIENT_ACTIVE,
        "Clients logged in and not waiting for a server (PgBouncer's cl_active: linked to a server or idle)",
    ),
    (CLIENT_WAITING, "Clients queued for a server (cl_waiting)"),
    (
        CLIENT_IDLE,
        "Clients logged in with no server and no request pending",
    ),
    (
        SERVER_ACTIVE,
        "Server connections linked to a client (sv_active)",
    ),
    (SERVER_IDLE, "Server connections idle in the pool (sv_idle)"),
    (
        SERVER_USED,
        "Server connections waiting for a check before reuse (sv_used; always 0: servers are probed at checkout)",
    ),
    (SERVER_LOGIN, "Server connections being opened (sv_login)"),
    (
        CLIENT_MAXWAIT,
        "How long the oldest waiting client has waited (maxwait)",
    ),
    (POOL_SIZE, "Configured pool size"),
    (RESERVE_SIZE, "Configured reserve pool size"),
    (
        RESERVE_ACTIVE,
        "Server connections open beyond the pool size (reserve in use)",
    ),
    (POOL_PAUSED, "1 while the pool is paused (PAUSE or KILL)"),
    (
        SERVER_REACHABLE,
        "0 while the server looks unreachable: the last attempt to open one failed and no server has answered since",
    ),
    (QUERIES, "Queries (Query and Execute messages) pooled"),
    (
        TRANSACTIONS,
        "Transactions pooled (transaction mode: server returns to the pool)",
    ),
    (
        CLIENT_WAIT_TOTAL,
        "Time clients spent waiting for a server, in seconds",
    ),
    (RECEIVED, "Bytes received from clients"),
    (SENT, "Bytes sent to clients"),
    (ASSIGNMENTS, "Times a server was assigned to a client"),
    (
        WAIT_HISTOGRAM,
        "Time a client waited for a server, per assignment",
    ),
    (
        XACT_HISTOGRAM,
        "Time a transaction held its server (transaction mode)",
    ),
    (SERVERS_OPENED, "Server connections opened"),
    (
        SERVERS_CLOSED,
        "Server connections closed, by reason (idle_timeout, reserve_idle, dead, unclean, admin)",
    ),
    (
        CONNECT_FAILURES,
        "Attempts to open a server connection that failed",
    ),
    (
        SESSION_STATE,
        "Statements creating session state in transaction mode, by action (pinned, warned, refused)",
    ),
    (UP, "1 while the pooler is serving"),
    (BUILD_INFO, "Build information (label version)"),
    (MAX_CLIENT_CONN, "Configured max_client_conn"),
    (
        USED_CLIENTS,
        "Client connections open, against max_client_conn",
    ),
    (POOLS, "Pools (database, user pairs) in use"),
    (DATABASES, "Databases configured"),
    (
        ERRORS,
        "Errors that ended a client's session or login, by kind",
    ),
    (
        PEER_FORWARDED,
        "Cancel requests for a peer's clients passed to that peer",
    ),
    (
        PEER_FAILED,
        "Cancel requests for a peer's clients that could not be passed to it (no slot in time, connect or send failed, timed out)",
    ),
];

fn kind_of(name: &str) -> Kind {
    if name == WAIT_HISTOGRAM || name == XACT_HISTOGRAM {
        Kind::Histogram
    } else if name.ends_with("_total") {
        Kind::Counter
    } else {
        Kind::Gauge
    }
}

/// Every label `PoolerError::kind()` can return, so each errors series exists from the start.
pub const ERROR_KINDS: &[&str] = &[
    "query_wait_timeout",
    "max_client_conn",
    "auth_failed",
    "server_connect_failed",
    "protocol_violation",
    "no_such_database",
    "client_login_timeout",
    "server_gone",
    "session_state",
    "io",
    "server_login_retry",
    "shutdown",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "query_timeout",
    "ssl_required",
    "database_disabled",
    "admin_killed",
];

/// Seconds; from sub-millisecond pool hits to `query_wait_timeout`'s default of 120 s.
const WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
];
const XACT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    errors: Vec<(&'static str, Counter)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        // Buckets are non-empty constants: these cannot fail.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(WAIT_HISTOGRAM.into()), WAIT_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(XACT_HISTOGRAM.into()), XACT_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        for (name, help) in DESCRIPTIONS {
            let key = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            match kind_of(name) {
                Kind::Gauge => recorder.describe_gauge(key, None, help),
                Kind::Counter => recorder.describe_counter(key, None, help),
                Kind::Histogram => recorder.describe_histogram(key, None, help),
            }
        }
        let errors = ERROR_KINDS
            .iter()
            .map(|kind| {
                let key = Key::from_parts(ERRORS, vec![Label::new("kind", *kind)]);
                (*kind, recorder.register_counter(&key, &META))
            })
            .collect();
        let handle = recorder.handle();
        Metrics {
            recorder,
            handle,
            errors,
        }
    }

    /// A new pool's counters, with its histograms registered under its labels.
    pub fn pool_stats(&self, database: &str, user: &str) -> PoolStats {
        let labels = pool_labels(database, user);
        let wait = self
            .recorder
            .register_histogram(&Key::from_parts(WAIT_HISTOGRAM, labels.clone()), &META);
        let xact = self
            .recorder
            .register_histogram(&Key::from_parts(XACT_HISTOGRAM, labels), &META);
        PoolStats::new(wait, xact)
    }

    /// Counts an error that ended a client's session or login.
    pub fn error(&self, e: &PoolerError) {
        let kind = e.kind();
        match self.errors.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.increment(1),
            None => self
                .recorder
                .register_counter(
                    &Key::from_parts(ERRORS, vec![Label::new("kind", kind)]),
                    &META,
                )
                .increment(1),
        }
    }

    /// Bounds the memory histograms hold between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
            .set(value);
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, value: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
            .absolute(value);
    }

    /// The Prometheus text exposition of everything, as of now.
    pub fn render(&self, app: &App) -> String {
        let config = app.config();
        let p = &config.pooler;
        self.gauge(UP, vec![], 1.0);
        self.gauge(
            BUILD_INFO,
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        self.gauge(MAX_CLIENT_CONN, vec![], p.max_client_conn as f64);
        self.gauge(USED_CLIENTS, vec![], app.client_count() as f64);
        self.gauge(DATABASES, vec![], config.databases.len() as f64);
        let pools = app.pools();
        self.gauge(POOLS, vec![], pools.len() as f64);
        // metrics' counters are integers; this one is in seconds, so it is written here.
        let mut wait_seconds = String::new();
        if !pools.is_empty() {
            let _ = writeln!(
                wait_seconds,
                "# HELP {CLIENT_WAIT_TOTAL} {}\n# TYPE {CLIENT_WAIT_TOTAL} counter",
                help(CLIENT_WAIT_TOTAL)
            );
        }
        for pool in &pools {
            let labels = || pool_labels(&pool.database, &pool.user);
            let c = pool.counts();
            let limits = pool.limits();
            let s = &pool.stats;
            let clients = s.clients();
            let not_waiting = clients.saturating_sub(c.waiting);
            let g = |name, v: usize| self.gauge(name, labels(), v as f64);
            g(CLIENT_ACTIVE, not_waiting);
            g(CLIENT_WAITING, c.waiting);
            g(CLIENT_IDLE, not_waiting.saturating_sub(c.active));
            g(SERVER_ACTIVE, c.active);
            g(SERVER_IDLE, c.idle);
            g(SERVER_USED, c.used);
            g(SERVER_LOGIN, c.connecting);
            g(POOL_SIZE, limits.pool_size);
            g(RESERVE_SIZE, limits.reserve_size);
            g(RESERVE_ACTIVE, c.total.saturating_sub(limits.pool_size));
            g(POOL_PAUSED, usize::from(c.paused));
            g(SERVER_REACHABLE, usize::from(!s.failing()));
            self.gauge(CLIENT_MAXWAIT, labels(), c.max_wait.as_secs_f64());
            let t = s.totals();
            let n = |name, v: u64| self.counter(name, labels(), v);
            n(QUERIES, t.queries);
            n(TRANSACTIONS, t.xacts);
            n(RECEIVED, t.received);
            n(SENT, t.sent);
            n(ASSIGNMENTS, t.server_assignments);
            n(SERVERS_OPENED, s.servers_opened());
            n(CONNECT_FAILURES, s.connect_failures());
            for (action, v) in s.session_state() {
                let mut l = labels();
                l.push(Label::new("action", action));
                self.counter(SESSION_STATE, l, v);
            }
            for reason in CloseReason::ALL {
                let mut l = labels();
                l.push(Label::new("reason", reason.label()));
                self.counter(SERVERS_CLOSED, l, s.closed(reason));
            }
            let _ = writeln!(
                wait_seconds,
                "{CLIENT_WAIT_TOTAL}{{database=\"{}\",user=\"{}\"}} {}",
                escape_label(&pool.database),
                escape_label(&pool.user),
                t.wait_us as f64 / 1e6
            );
        }
        for peer in app.peers.snapshot().values() {
            let labels = || vec![Label::new("peer_id", peer.id.to_string())];
            self.counter(PEER_FORWARDED, labels(), peer.counters.sent());
            self.counter(PEER_FAILED, labels(), peer.counters.failed());
        }
        // The recorder cannot forget a series, so those of pools no longer in use (a RELOAD
        // removed their database or changed its server, and their last client left) are
        // dropped from the text here: a dashboard must not show a pool that is gone.
        let live: std::collections::HashSet<(String, String)> = pools
            .iter()
            .map(|p| (escape_label(&p.database), escape_label(&p.user)))
            .collect();
        let rendered = self.handle.render();
        let mut out = String::with_capacity(rendered.len());
        for line in rendered.lines() {
            if pool_of(line).is_none_or(|pool| live.contains(&pool)) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&wait_seconds);
        out
    }
}

fn pool_labels(database: &str, user: &str) -> Vec<Label> {
    vec![
        Label::new("database", database.to_string()),
        Label::new("user", user.to_string()),
    ]
}

fn help(name: &str) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .unwrap_or("")
}

/// The (escaped) `database` and `user` labels of a per-pool sample line, which the pooler
/// always renders first, in that order; None for other lines.
fn pool_of(line: &str) -> Option<(String, String)> {
    if line.starts_with('#') {
        return None;
    }
    let (_, labels) = line.split_once('{')?;
    let (database, rest) = quoted(labels.strip_prefix("database=\"")?)?;
    let (user, _) = quoted(rest.strip_prefix(",user=\"")?)?;
    Some((database.to_string(), user.to_string()))
}

/// An escaped label value up to its closing quote, and what follows the quote.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A label value as the text format wants it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Why the pooler is not ready, if it is not.
pub fn readiness(app: &App) -> Result<(), String> {
    if app.control.is_shutting_down() {
        return Err("shutting down".into());
    }
    if !app.control.is_listening() {
        return Err("not listening".into());
    }
    let failing: Vec<String> = app
        .pools()
        .iter()
        .filter(|p| p.stats.failing())
        .map(|p| format!("{}/{}", p.database, p.user))
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot reach server for {}", failing.join(", ")))
    }
}

/// A request line and headers larger than this are refused with 431: probes and scrapers send
/// ~200 bytes. (hyper's smallest read buffer; it cannot be set lower.)
const MAX_REQUEST: usize = 8 * 1024;
/// A connection must have sent its whole request head by then, counted from the accept: an
/// idle socket or a slowloris sending a byte a second holds its slot this long at most.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection still open by then (a client that does not take its answer) is dropped.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the answer, unread input is read and thrown away for at most this long before the
/// socket is closed: closing with unread input would reset the connection and could destroy
/// the answer (a 431, say) before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Connections served at once. Probes and scrapers open a handful; when more are open, the
/// oldest one that has not sent a request yet is dropped to make room, so idle or slow sockets
/// can hold at most this much memory and can never crowd out a probe that just connected.
const HTTP_MAX_CONNECTIONS: usize = 64;

/// The open connections of the metrics listener, oldest first, for eviction.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: std::collections::VecDeque<Connection>,
}

struct Connection {
    id: u64,
    /// Set while a request is being answered: such a connection is dropped only when every
    /// open connection is answering one.
    answering: Arc<AtomicBool>,
    /// Dropping it (taking the entry out of the table) ends the connection's task.
    _evict: oneshot::Sender<()>,
}

impl Connections {
    /// Makes room for a new connection, evicting the oldest not answering a request (or the
    /// oldest at all) when full; returns its id, flag and eviction signal.
    fn admit(&mut self) -> (u64, Arc<AtomicBool>, oneshot::Receiver<()>) {
        while self.open.len() >= HTTP_MAX_CONNECTIONS {
            let victim = self
                .open
                .iter()
                .position(|c| !c.answering.load(Ordering::Relaxed))
                .unwrap_or(0);
            self.open.remove(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        let answering = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        self.open.push_back(Connection {
            id,
            answering: answering.clone(),
            _evict: tx,
        });
        (id, answering, rx)
    }

    fn remove(&mut self, id: u64) {
        self.open.retain(|c| c.id != id);
    }
}

/// Takes a connection out of the table when its task ends, however it ends.
struct Registered {
    table: Arc<Mutex<Connections>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).remove(self.id);
    }
}

fn lock(table: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    // The table is consistent after any panic (each change is one call): keep serving.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the metrics and health endpoints until the task is dropped.
///
/// HTTP/1 parsing, timeouts and size limits are hyper's; this loop only bounds how many
/// connections are open and decides which one goes when a new one needs room.
pub async fn serve_http(app: Arc<App>, listener: TcpListener) {
    let table = Arc::new(Mutex::new(Connections::default()));
    let mut errors = AcceptErrors::new("metrics");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                errors.accepted();
                let (id, answering, evicted) = lock(&table).admit();
                let registered = Registered {
                    table: table.clone(),
                    id,
                };
                tokio::spawn(serve_connection(
                    app.clone(),
                    stream,
                    answering,
                    evicted,
                    registered,
                ));
            }
            Err(e) => tokio::time::sleep(errors.failed(&e)).await,
        }
    }
}

/// One connection: one request (no keep-alive: a probe or scrape opens a connection each time,
/// which keeps every socket's life short and bounded), then a lingering close.
async fn serve_connection(
    app: Arc<App>,
    mut stream: TcpStream,
    answering: Arc<AtomicBool>,
    evicted: oneshot::Receiver<()>,
    _registered: Registered,
) {
    let service = {
        let answering = answering.clone();
        service_fn(move |req: Request<Incoming>| {
            // From here until the answer is written, this connection is doing real work.
            answering.store(true, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>(respond(
                &app,
                req.method(),
                req.uri().path(),
            )))
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST);
    let answered = tokio::select! {
        _ = builder.serve_connection(TokioIo::new(&mut stream), service) => true,
        _ = evicted => false,
        _ = tokio::time::sleep(HTTP_TIMEOUT) => false,
    };
    if answered {
        answering.store(false, Ordering::Relaxed);
        let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
    }
}

/// Reads and discards what the client still sends, up to a bound, until it closes.
async fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Runs the recorder's upkeep while the App lives.
pub async fn upkeep(app: Weak<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.metrics.upkeep();
    }
}

/// The answer to GET or HEAD of a known path (hyper leaves the body out for HEAD).
fn respond(app: &App, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(app),
        ),
        "/healthz" => text_response(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match readiness(app) {
            Ok(()) => text_response(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => text_response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        for (name, _) in DESCRIPTIONS {
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} missing from README"
            );
        }
    }

    #[test]
    fn the_dashboard_charts_only_metrics_that_exist() {
        let dashboard = include_str!("../docs/grafana-dashboard.json");
        let mut used = 0;
        for (i, _) in dashboard.match_indices("pooler_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "pooler_" {
                continue; // the prefix mentioned in prose
            }
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|b| kind_of(b) == Kind::Histogram)
                .unwrap_or(&name);
            assert!(
                DESCRIPTIONS.iter().any(|(n, _)| *n == base),
                "dashboard uses unknown metric {name}"
            );
            used += 1;
        }
        assert!(used > 10);
    }

    #[test]
    fn every_error_kind_has_a_series() {
        for e in [
            PoolerError::QueryWaitTimeout,
            PoolerError::TooManyClients,
            PoolerError::AuthFailed("u".into()),
            PoolerError::NotAllowed,
            PoolerError::ServerConnect("x".into()),
            PoolerError::protocol("x"),
            PoolerError::NoSuchDatabase("d".into()),
            PoolerError::ClientLoginTimeout,
            PoolerError::ServerGone,
            PoolerError::ServerLoginRetry("x".into()),
            PoolerError::ShuttingDown,
            PoolerError::ClientIdleTimeout,
            PoolerError::IdleTransactionTimeout,
            PoolerError::QueryTimeout,
            PoolerError::SslRequired,
        ] {
            assert!(ERROR_KINDS.contains(&e.kind()), "{}", e.kind());
        }
    }

    #[test]
    fn a_full_listener_drops_the_oldest_connection_not_answering() {
        let mut table = Connections::default();
        let mut admitted: Vec<_> = (0..HTTP_MAX_CONNECTIONS).map(|_| table.admit()).collect();
        // The two oldest are answering a request; the third is the oldest idle one.
        admitted[0].1.store(true, Ordering::Relaxed);
        admitted[1].1.store(true, Ordering::Relaxed);
        let (newest, _, mut newest_rx) = table.admit();
        assert_eq!(table.open.len(), HTTP_MAX_CONNECTIONS);
        let mut evicted = Vec::new();
        for (id, _, rx) in admitted.iter_mut() {
            if rx.try_recv() == Err(oneshot::error::TryRecvError::Closed) {
                evicted.push(*id);
            }
        }
        assert_eq!(evicted, [admitted[2].0]);
        assert!(
            newest_rx
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        // Every one answering: the oldest goes.
        for c in &table.open {
            c.answering.store(true, Ordering::Relaxed);
        }
        table.admit();
        assert!(!table.open.iter().any(|c| c.id == admitted[0].0));
        assert!(table.open.iter().any(|c| c.id == newest));
        table.remove(newest);
        assert!(!table.open.iter().any(|c| c.id == newest));
    }

    #[test]
    fn per_pool_lines_are_told_by_their_first_two_labels() {
        let pool = |l: &str| pool_of(l);
        assert_eq!(
            pool(r#"x_total{database="a\"b",user="u"} 1"#),
            Some((r#"a\"b"#.to_string(), "u".to_string()))
        );
        assert_eq!(
            pool(r#"h_bucket{database="d",user="u",le="0.1"} 1"#),
            Some(("d".to_string(), "u".to_string()))
        );
        assert_eq!(pool(r#"pooler_errors_total{kind="io"} 0"#), None);
        assert_eq!(pool("pooler_up 1"), None);
        assert_eq!(pool("# TYPE x counter"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
