//! The HTTP listener (hyper) that serves `/metrics`, `/healthz` and `/readyz`, bounded so idle
//! or slow connections cannot keep a probe from being answered, and what it answers: the
//! scrape-time rendering of the App's metrics and the readiness check. It reads the App, so it
//! sits above it; the recorder and the metric names are `metrics`, below the App.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::Label;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::accept::AcceptErrors;
use crate::app::App;
use crate::metrics::{
    ASSIGNMENTS, BUILD_INFO, CACHED_DNS_NAMES, CACHED_DNS_ZONES, CLIENT_ACTIVE,
    CLIENT_ACTIVE_CANCEL, CLIENT_CONNECTIONS, CLIENT_IDLE, CLIENT_MAXWAIT, CLIENT_WAIT_TOTAL,
    CLIENT_WAITING, CLIENT_WAITING_CANCEL, CONNECT_FAILURES, DATABASES, DB_CURRENT_CONNECTIONS,
    DB_DISABLED, DB_MAX_CONNECTIONS, DB_PAUSED, DB_POOL_SIZE, DB_RESERVE_POOL, FREE_CLIENTS,
    FREE_SERVERS, HOST_DOWNS, HOST_LAG, HOST_SERVERS, HOST_USABLE, IN_FLIGHT_DNS, LOGIN_CLIENTS,
    MAX_CLIENT_CONN, MAX_USER_CONN, PEER_FAILED, PEER_FORWARDED, POOL_PAUSED, POOL_SIZE, POOLS,
    QUERIES, RECEIVED, RESERVE_ACTIVE, RESERVE_SIZE, SENT, SERVER_ACTIVE, SERVER_ACTIVE_CANCEL,
    SERVER_BEING_CANCELED, SERVER_IDLE, SERVER_LOGIN, SERVER_REACHABLE, SERVER_TESTING,
    SERVER_USED, SERVERS_CLOSED, SERVERS_OPENED, SESSION_STATE, SPLIT_BRAIN, TRANSACTIONS, UP,
    USED_CLIENTS, USED_SERVERS, USERS, VERSION_INFO, WAIT_HISTOGRAM, XACT_HISTOGRAM,
    XACT_SECONDS_TOTAL, help, histogram_header, histogram_text, pool_labels,
};
use crate::stats::CloseReason;

/// The Prometheus text exposition of everything, as of now: gauges and totals copied from the
/// App (its pools, clients and peers) into its recorder, then the recorder's text.
pub fn render(app: &App) -> String {
    let m = &app.metrics;
    let config = app.config();
    let p = &config.pooler;
    m.gauge(UP, vec![], 1.0);
    m.gauge(
        BUILD_INFO,
        vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    m.gauge(
        VERSION_INFO,
        vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    m.gauge(MAX_CLIENT_CONN, vec![], p.max_client_conn as f64);
    m.gauge(MAX_USER_CONN, vec![], p.max_user_connections as f64);
    m.gauge(USED_CLIENTS, vec![], app.client_count() as f64);
    m.gauge(DATABASES, vec![], config.databases.len() as f64);
    let pools = app.pools();
    m.gauge(POOLS, vec![], pools.len() as f64);
    render_lists_and_databases(app, &config, &pools);
    // metrics' counters are integers; these are in seconds, so they are written here.
    let mut wait_seconds = String::new();
    let mut xact_seconds = String::new();
    let mut wait_histogram = String::new();
    let mut xact_histogram = String::new();
    if !pools.is_empty() {
        for (out, name) in [
            (&mut wait_seconds, CLIENT_WAIT_TOTAL),
            (&mut xact_seconds, XACT_SECONDS_TOTAL),
        ] {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", help(name));
        }
        histogram_header(&mut wait_histogram, WAIT_HISTOGRAM);
        histogram_header(&mut xact_histogram, XACT_HISTOGRAM);
    }
    for pool in &pools {
        let labels = || pool_labels(&pool.database, &pool.user);
        let c = pool.counts();
        let limits = pool.limits();
        let s = &pool.stats;
        let clients = s.clients();
        let not_waiting = clients.saturating_sub(c.waiting);
        let g = |name, v: usize| m.gauge(name, labels(), v as f64);
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
        if let Some(hosts) = &pool.hosts {
            for (i, h) in hosts.snapshot().iter().enumerate() {
                let (host, port) = pool.target.address(i);
                let mut l = labels();
                l.push(Label::new("host", format!("{host}:{port}")));
                let mut with_role = l.clone();
                with_role.push(Label::new("role", h.role.as_str()));
                m.gauge(
                    HOST_USABLE,
                    with_role,
                    f64::from(u8::from(hosts.acceptable(i))),
                );
                m.gauge(HOST_LAG, l.clone(), h.lag.as_secs_f64());
                m.gauge(HOST_SERVERS, l.clone(), h.servers as f64);
                m.counter(HOST_DOWNS, l, h.downs);
            }
            m.gauge(
                SPLIT_BRAIN,
                labels(),
                f64::from(u8::from(hosts.split_brain())),
            );
        }
        for zero in [
            SERVER_TESTING,
            CLIENT_ACTIVE_CANCEL,
            CLIENT_WAITING_CANCEL,
            SERVER_ACTIVE_CANCEL,
            SERVER_BEING_CANCELED,
        ] {
            g(zero, 0);
        }
        m.gauge(CLIENT_MAXWAIT, labels(), c.max_wait.as_secs_f64());
        let t = s.totals();
        let n = |name, v: u64| m.counter(name, labels(), v);
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
            m.counter(SESSION_STATE, l, v);
        }
        for reason in CloseReason::ALL {
            let mut l = labels();
            l.push(Label::new("reason", reason.label()));
            m.counter(SERVERS_CLOSED, l, s.closed(reason));
        }
        let text_labels = format!(
            "database=\"{}\",user=\"{}\"",
            escape_label(&pool.database),
            escape_label(&pool.user),
        );
        for (out, name, us) in [
            (&mut wait_seconds, CLIENT_WAIT_TOTAL, t.wait_us),
            (&mut xact_seconds, XACT_SECONDS_TOTAL, t.xact_us),
        ] {
            let _ = writeln!(out, "{name}{{{text_labels}}} {}", us as f64 / 1e6);
        }
        for (out, name, buckets, us) in [
            (
                &mut wait_histogram,
                WAIT_HISTOGRAM,
                &s.wait_histogram,
                t.wait_us,
            ),
            (
                &mut xact_histogram,
                XACT_HISTOGRAM,
                &s.xact_histogram,
                t.xact_us,
            ),
        ] {
            histogram_text(out, name, &text_labels, buckets, us as f64 / 1e6);
        }
    }
    for peer in app.peers.snapshot().values() {
        let labels = || vec![Label::new("peer_id", peer.id.to_string())];
        m.counter(PEER_FORWARDED, labels(), peer.counters.sent());
        m.counter(PEER_FAILED, labels(), peer.counters.failed());
    }
    // The recorder cannot forget a series, so those of pools no longer in use (a RELOAD
    // removed their database or changed its server, and their last client left) are
    // dropped from the text here: a dashboard must not show a pool that is gone.
    let live: std::collections::HashSet<(String, String)> = pools
        .iter()
        .map(|p| (escape_label(&p.database), escape_label(&p.user)))
        .collect();
    let configured: std::collections::HashSet<String> =
        config.databases.keys().map(|n| escape_label(n)).collect();
    let rendered = m.rendered();
    let mut out = String::with_capacity(rendered.len());
    for line in rendered.lines() {
        // Likewise the per-database series of an entry a RELOAD removed.
        let db_gone = database_of(line).is_some_and(|name| !configured.contains(&name));
        if !db_gone && pool_of(line).is_none_or(|pool| live.contains(&pool)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&wait_seconds);
    out.push_str(&xact_seconds);
    out.push_str(&wait_histogram);
    out.push_str(&xact_histogram);
    out.push_str(&client_connections(app));
    out
}

/// SHOW CLIENTS' rows counted by database, user, application name and state, as
/// pgbouncer_exporter does. Written as text at each scrape, not through the recorder: a group
/// whose last client left is simply not there.
fn client_connections(app: &App) -> String {
    let mut groups: std::collections::BTreeMap<(String, String, String, &'static str), u64> =
        std::collections::BTreeMap::new();
    for c in app.clients_registry.snapshot() {
        *groups
            .entry((
                c.database.to_string(),
                c.user.to_string(),
                c.application_name.to_string(),
                c.state().as_str(),
            ))
            .or_default() += 1;
    }
    let mut out = String::new();
    if groups.is_empty() {
        return out;
    }
    let name = CLIENT_CONNECTIONS;
    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} gauge", help(name));
    for ((database, user, app_name, state), n) in groups {
        let _ = writeln!(
            out,
            "{name}{{database=\"{}\",user=\"{}\",application_name=\"{}\",state=\"{state}\"}} {n}",
            escape_label(&database),
            escape_label(&user),
            escape_label(&app_name),
        );
    }
    out
}

/// SHOW LISTS' counts and SHOW DATABASES' per-entry figures, under pgbouncer_exporter's
/// names and labels (`name`, `host`, `port`, `database`, `force_user`, `pool_mode`).
fn render_lists_and_databases(
    app: &App,
    config: &crate::config::Config,
    pools: &[Arc<crate::pool::Pool>],
) {
    let m = &app.metrics;
    let users: std::collections::HashSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let registered = app.clients_registry.snapshot().len();
    let servers: Vec<(String, usize)> = pools
        .iter()
        .map(|p| (p.database.clone(), p.counts().total))
        .collect();
    let g = |name, v: usize| m.gauge(name, vec![], v as f64);
    g(USERS, users.len());
    g(LOGIN_CLIENTS, app.client_count().saturating_sub(registered));
    g(USED_SERVERS, servers.iter().map(|(_, n)| n).sum());
    for zero in [
        FREE_CLIENTS,
        FREE_SERVERS,
        CACHED_DNS_NAMES,
        CACHED_DNS_ZONES,
        IN_FLIGHT_DNS,
    ] {
        g(zero, 0);
    }
    let p = &config.pooler;
    for (name, db) in &config.databases {
        let labels = || {
            vec![
                Label::new("name", name.clone()),
                Label::new("host", db.host.clone()),
                Label::new("port", db.port.to_string()),
                Label::new(
                    "database",
                    db.dbname.clone().unwrap_or_else(|| name.clone()),
                ),
                Label::new("force_user", db.user.clone().unwrap_or_default()),
                Label::new(
                    "pool_mode",
                    db.pool_mode.map(|m| m.as_str()).unwrap_or_default(),
                ),
            ]
        };
        let g = |metric, v: usize| m.gauge(metric, labels(), v as f64);
        g(DB_POOL_SIZE, config.pool_size(db));
        g(
            DB_RESERVE_POOL,
            db.reserve_pool_size.unwrap_or(p.reserve_pool_size),
        );
        g(
            DB_MAX_CONNECTIONS,
            db.max_db_connections.unwrap_or(p.max_db_connections),
        );
        g(
            DB_CURRENT_CONNECTIONS,
            servers
                .iter()
                .filter(|(d, _)| d == name)
                .map(|(_, n)| n)
                .sum(),
        );
        g(DB_PAUSED, usize::from(app.control.is_paused(name)));
        g(DB_DISABLED, usize::from(app.control.is_disabled(name)));
    }
}

/// The (escaped) `name` label of a per-database sample line (`pooler_databases_*`).
fn database_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix("pooler_databases_")?;
    let (_, labels) = rest.split_once('{')?;
    let (name, _) = quoted(labels.strip_prefix("name=\"")?)?;
    Some(name.to_string())
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
        .filter(|p| !p.can_serve())
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
            render(app),
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
