//! The admin console: the virtual database `pgbouncer` (alias `pooler`), spoken over the
//! simple query protocol with PgBouncer's commands and column names, so existing scripts and
//! pgbouncer_exporter work against it. It never touches a real server.
//!
//! `admin_users` may run everything; `stats_users` only the `SHOW` commands. Anyone else is
//! refused at login with `28000 not allowed`, after authenticating like any user (so the
//! refusal reveals nothing to someone without the password).

use bytes::BytesMut;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::app::App;
use crate::config::PoolerSettings;
use crate::error::{PoolerError, Result};
use crate::protocol::{self, INT8_OID, TEXT_OID};
use crate::registry::{ClientState, Registration};
use crate::stats::{Averages, Totals, wall_of};

/// Database names that open the console instead of a pool.
pub const CONSOLE_DATABASES: &[&str] = &["pgbouncer", "pooler"];

pub fn is_console(database: &str) -> bool {
    CONSOLE_DATABASES.contains(&database)
}

/// A query to the console larger than this is not a console command.
const MAX_QUERY_LEN: usize = 64 * 1024;
/// How often PAUSE looks whether the paused pools' servers are all closed.
const PAUSE_POLL: Duration = Duration::from_millis(50);

/// Pooler-wide state the console drives: which databases are paused, shutdown, readiness.
pub struct Control {
    paused: Mutex<Paused>,
    shutdown: watch::Sender<bool>,
    listening: AtomicBool,
}

#[derive(Default)]
struct Paused {
    all: bool,
    databases: HashSet<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            paused: Mutex::new(Paused::default()),
            shutdown: watch::Sender::new(false),
            listening: AtomicBool::new(false),
        }
    }
}

impl Control {
    fn paused(&self) -> std::sync::MutexGuard<'_, Paused> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether pools of `database` start paused (a PAUSE or KILL is in force for it).
    pub fn is_paused(&self, database: &str) -> bool {
        let p = self.paused();
        p.all || p.databases.contains(database)
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Asks the pooler to stop: the accept loop ends and `/readyz` says so.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `admin_users`: every command.
    Admin,
    /// `stats_users`: SHOW only.
    Stats,
}

/// A logged-in console session.
pub struct Console {
    access: Access,
    _client: Registration,
}

impl Console {
    /// Admits an authenticated user to the console, or refuses it; greets it like a server.
    pub async fn login(
        app: &Arc<App>,
        stream: &mut TcpStream,
        user: &str,
        database: &str,
    ) -> Result<Console> {
        let p = &app.config.pooler;
        let access = if p.admin_users.names().iter().any(|u| u == user) {
            Access::Admin
        } else if p.stats_users.names().iter().any(|u| u == user) {
            Access::Stats
        } else {
            return Err(PoolerError::NotAllowed);
        };
        let mut out = BytesMut::with_capacity(256);
        protocol::auth_ok(&mut out);
        let version = format!("{}/pooler", env!("CARGO_PKG_VERSION"));
        for (name, value) in [
            ("server_version", version.as_str()),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("application_name", ""),
        ] {
            protocol::parameter_status(&mut out, name, value);
        }
        protocol::backend_key_data(&mut out, 0, 0);
        protocol::ready_for_query(&mut out, b'I');
        stream.write_all(&out).await?;
        let client = app
            .clients_registry
            .register(stream, user, database, "", None);
        Ok(Console {
            access,
            _client: client,
        })
    }

    /// Answers commands until the client leaves.
    pub async fn run(&self, app: &Arc<App>, stream: &mut TcpStream) -> Result<()> {
        // After an extended-protocol message: skip to the next Sync, as Postgres does after
        // an error, so the client's protocol state stays consistent.
        let mut skipping = false;
        loop {
            let (tag, body) = match protocol::read_message(stream, MAX_QUERY_LEN).await {
                Ok(m) => m,
                Err(PoolerError::Io(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut out = BytesMut::new();
            match tag {
                b'Q' => {
                    let mut b = body.as_slice();
                    let sql = protocol::take_cstr(&mut b)?;
                    let shutdown = self.execute(app, &sql, &mut out).await;
                    protocol::ready_for_query(&mut out, b'I');
                    stream.write_all(&out).await?;
                    if shutdown {
                        app.control.shutdown();
                    }
                    continue;
                }
                b'X' => return Ok(()),
                b'S' => {
                    skipping = false;
                    protocol::ready_for_query(&mut out, b'I');
                }
                b'H' => {}
                b'P' | b'B' | b'D' | b'E' | b'C' | b'F' => {
                    if !skipping {
                        skipping = true;
                        protocol::error_response(
                            &mut out,
                            "ERROR",
                            "0A000",
                            "the admin console supports only the simple query protocol",
                        );
                    }
                }
                other => {
                    return Err(PoolerError::protocol(format!(
                        "invalid frontend message type '{}'",
                        other.escape_ascii()
                    )));
                }
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
        }
    }

    /// Runs every statement of one Query message; stops at the first error, like Postgres.
    /// Returns true when the client asked for SHUTDOWN.
    async fn execute(&self, app: &Arc<App>, sql: &str, out: &mut BytesMut) -> bool {
        let statements: Vec<&str> = sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if statements.is_empty() {
            protocol::empty_query_response(out);
            return false;
        }
        let mut shutdown = false;
        for statement in statements {
            match self.command(app, statement).await {
                Ok(reply) => {
                    shutdown |= matches!(reply, Reply::Shutdown);
                    reply.write(out);
                }
                Err(e) => {
                    protocol::error_response(out, "ERROR", e.code, &e.message);
                    break;
                }
            }
        }
        shutdown
    }

    async fn command(&self, app: &Arc<App>, statement: &str) -> Result<Reply, CommandError> {
        let words: Vec<String> = statement
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        let verb = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let arg = words.get(1).map(String::as_str);
        if words.len() > 2 {
            return Err(syntax(statement));
        }
        if verb == "SHOW" {
            let what = arg.ok_or_else(|| syntax(statement))?.to_ascii_uppercase();
            return show(app, &what);
        }
        if self.access != Access::Admin {
            return Err(CommandError {
                code: "42501",
                message: "admin access needed".into(),
            });
        }
        match verb.as_str() {
            "PAUSE" => pause(app, arg).await,
            "RESUME" => resume(app, arg),
            "KILL" => kill(app, arg),
            "SHUTDOWN" if arg.is_none() => Ok(Reply::Shutdown),
            "RELOAD" if arg.is_none() => Err(CommandError {
                code: "0A000",
                message: "RELOAD is not supported yet: restart the pooler to apply \
                          configuration changes"
                    .into(),
            }),
            "SET" => Err(CommandError {
                code: "0A000",
                message: "SET is not supported yet: change the configuration file and restart"
                    .into(),
            }),
            _ => Err(syntax(statement)),
        }
    }
}

struct CommandError {
    code: &'static str,
    message: String,
}

fn syntax(statement: &str) -> CommandError {
    CommandError {
        code: "42601",
        message: format!("invalid command '{statement}', use SHOW HELP;"),
    }
}

enum Reply {
    Table(Table),
    Notice { message: String, detail: String },
    Tag(&'static str),
    Shutdown,
}

impl Reply {
    fn write(&self, out: &mut BytesMut) {
        match self {
            Reply::Table(t) => {
                protocol::row_description(out, &t.columns);
                for row in &t.rows {
                    protocol::data_row(out, row);
                }
                protocol::command_complete(out, "SHOW");
            }
            Reply::Notice { message, detail } => {
                protocol::notice_response(out, message, detail);
                protocol::command_complete(out, "SHOW");
            }
            Reply::Tag(tag) => protocol::command_complete(out, tag),
            Reply::Shutdown => protocol::command_complete(out, "SHUTDOWN"),
        }
    }
}

/// A result set: text values, `None` for NULL.
struct Table {
    columns: Vec<(&'static str, u32)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[(&'static str, u32)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

const T: u32 = TEXT_OID;
const N: u32 = INT8_OID;

fn show(app: &Arc<App>, what: &str) -> Result<Reply, CommandError> {
    let table = match what {
        "POOLS" => show_pools(app),
        "STATS" => show_stats(app),
        "CLIENTS" => show_clients(app),
        "SERVERS" => show_servers(app),
        "DATABASES" => show_databases(app),
        "CONFIG" => show_config(&app.config.pooler),
        "LISTS" => show_lists(app),
        "VERSION" => {
            let mut t = Table::new(&[("version", T)]);
            t.rows
                .push(vec![s(format!("pooler {}", env!("CARGO_PKG_VERSION")))]);
            t
        }
        "HELP" => {
            return Ok(Reply::Notice {
                message: "Console usage".into(),
                detail: "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|STATS|LISTS|VERSION\
                         \n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tKILL [<db>]\n\tSHUTDOWN\
                         \n\tRELOAD (not supported yet)"
                    .into(),
            });
        }
        _ => {
            return Err(CommandError {
                code: "42601",
                message: format!("unknown SHOW command: {what}, use SHOW HELP;"),
            });
        }
    };
    Ok(Reply::Table(table))
}

fn show_pools(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("user", T),
        ("cl_active", N),
        ("cl_waiting", N),
        ("cl_active_cancel_req", N),
        ("cl_waiting_cancel_req", N),
        ("sv_active", N),
        ("sv_active_cancel", N),
        ("sv_being_canceled", N),
        ("sv_idle", N),
        ("sv_used", N),
        ("sv_tested", N),
        ("sv_login", N),
        ("maxwait", N),
        ("maxwait_us", N),
        ("pool_mode", T),
    ]);
    for pool in app.pools() {
        let c = pool.counts();
        let clients = pool.stats.clients();
        t.rows.push(vec![
            s(&pool.database),
            s(&pool.user),
            s(clients.saturating_sub(c.waiting)),
            s(c.waiting),
            s(0),
            s(0),
            s(c.active),
            s(0),
            s(0),
            s(c.idle),
            s(0),
            s(0),
            s(c.connecting),
            s(c.max_wait.as_secs()),
            s(c.max_wait.subsec_micros()),
            s(pool.settings.mode.as_str()),
        ]);
    }
    t
}

fn show_stats(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("total_server_assignment_count", N),
        ("total_xact_count", N),
        ("total_query_count", N),
        ("total_received", N),
        ("total_sent", N),
        ("total_xact_time", N),
        ("total_query_time", N),
        ("total_wait_time", N),
        ("total_client_parse_count", N),
        ("total_server_parse_count", N),
        ("total_bind_count", N),
        ("avg_server_assignment_count", N),
        ("avg_xact_count", N),
        ("avg_query_count", N),
        ("avg_recv", N),
        ("avg_sent", N),
        ("avg_xact_time", N),
        ("avg_query_time", N),
        ("avg_wait_time", N),
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
    ]);
    // PgBouncer's SHOW STATS is per database: sum the pools of each.
    let mut by_db: BTreeMap<String, (Totals, Averages, u64, u64)> = BTreeMap::new();
    for pool in app.pools() {
        let e = by_db.entry(pool.database.clone()).or_default();
        e.0.add(&pool.stats.totals());
        let a = pool.stats.averages();
        e.1.server_assignments += a.server_assignments;
        e.1.xacts += a.xacts;
        e.1.queries += a.queries;
        e.1.received += a.received;
        e.1.sent += a.sent;
        // Mean durations, weighted by how many transactions / assignments each pool had.
        e.2 += a.xact_us * a.xacts;
        e.3 += a.wait_us * a.server_assignments;
    }
    for (db, (tot, mut avg, xact_weighted, wait_weighted)) in by_db {
        avg.xact_us = xact_weighted.checked_div(avg.xacts).unwrap_or(0);
        avg.wait_us = wait_weighted
            .checked_div(avg.server_assignments)
            .unwrap_or(0);
        t.rows.push(vec![
            s(db),
            s(tot.server_assignments),
            s(tot.xacts),
            s(tot.queries),
            s(tot.received),
            s(tot.sent),
            s(tot.xact_us),
            // Query time is not measured (it would need timing per message).
            s(0),
            s(tot.wait_us),
            s(0),
            s(0),
            s(0),
            s(avg.server_assignments),
            s(avg.xacts),
            s(avg.queries),
            s(avg.received),
            s(avg.sent),
            s(avg.xact_us),
            s(0),
            s(avg.wait_us),
            s(0),
            s(0),
            s(0),
        ]);
    }
    t
}

const CONNECTION_COLUMNS: &[(&str, u32)] = &[
    ("type", T),
    ("user", T),
    ("database", T),
    ("replication", T),
    ("state", T),
    ("addr", T),
    ("port", N),
    ("local_addr", T),
    ("local_port", N),
    ("connect_time", T),
    ("request_time", T),
    ("wait", N),
    ("wait_us", N),
    ("close_needed", N),
    ("ptr", T),
    ("link", T),
    ("remote_pid", N),
    ("tls", T),
    ("application_name", T),
    ("prepared_statements", N),
    ("id", N),
];

fn show_clients(app: &App) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    for c in app.clients_registry.snapshot() {
        let state = c.state();
        let wait = c
            .waiting_since_us()
            .map(|since| Duration::from_micros(crate::stats::now_us().saturating_sub(since)))
            .unwrap_or_default();
        let link = c.linked_server().map(|srv| format!("{:x}", srv.id));
        let request = c.request_us();
        t.rows.push(vec![
            s("C"),
            s(&c.user),
            s(&c.database),
            s("none"),
            s(state.as_str()),
            c.addr.map(|a| a.ip().to_string()),
            c.addr.map(|a| a.port().to_string()),
            c.local.map(|a| a.ip().to_string()),
            c.local.map(|a| a.port().to_string()),
            s(timestamp(wall_of(c.connected_us))),
            s(timestamp(wall_of(if request > 0 {
                request
            } else {
                c.connected_us
            }))),
            s(wait.as_secs()),
            s(wait.subsec_micros()),
            s(0),
            s(format!("{:x}", c.id)),
            link,
            s(0),
            s(""),
            s(&c.application_name),
            s(0),
            s(c.id),
        ]);
    }
    t
}

fn show_servers(app: &App) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    let row = |user: &str,
               database: &str,
               state: &str,
               host: &str,
               port: u16,
               local: Option<std::net::SocketAddr>,
               connected_us: u64,
               request_us: u64,
               id: u64,
               link: Option<u64>,
               pid: i32,
               application_name: &str| {
        vec![
            s("S"),
            s(user),
            s(database),
            s("none"),
            s(state),
            s(host),
            s(port),
            local.map(|a| a.ip().to_string()),
            local.map(|a| a.port().to_string()),
            s(timestamp(wall_of(connected_us))),
            s(timestamp(wall_of(request_us))),
            s(0),
            s(0),
            s(0),
            s(format!("{id:x}")),
            link.map(|l| format!("{l:x}")),
            s(pid),
            s(""),
            s(application_name),
            s(0),
            s(id),
        ]
    };
    for c in app.clients_registry.snapshot() {
        let (Some(pool), Some(srv)) = (&c.pool, c.linked_server()) else {
            continue;
        };
        if c.state() != ClientState::Active {
            continue;
        }
        t.rows.push(row(
            &pool.user,
            &pool.database,
            "active",
            &pool.target.host,
            pool.target.port,
            None,
            srv.connected_us,
            c.request_us(),
            srv.id,
            Some(c.id),
            srv.backend_pid,
            &c.application_name,
        ));
    }
    for pool in app.pools() {
        for srv in pool.idle_servers() {
            t.rows.push(row(
                &pool.user,
                &pool.database,
                "idle",
                &pool.target.host,
                pool.target.port,
                srv.local,
                srv.connected_us,
                srv.last_used_us,
                srv.id,
                None,
                srv.backend_pid,
                "",
            ));
        }
    }
    t
}

fn show_databases(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("host", T),
        ("port", N),
        ("database", T),
        ("force_user", T),
        ("pool_size", N),
        ("min_pool_size", N),
        ("reserve_pool_size", N),
        ("server_lifetime", N),
        ("pool_mode", T),
        ("max_connections", N),
        ("current_connections", N),
        ("max_client_connections", N),
        ("current_client_connections", N),
        ("paused", N),
        ("disabled", N),
    ]);
    let p = &app.config.pooler;
    let pools = app.pools();
    for (name, db) in &app.config.databases {
        let mine = pools.iter().filter(|pool| &pool.database == name);
        let (servers, clients) = mine.fold((0, 0), |(sv, cl), pool| {
            (sv + pool.counts().total, cl + pool.stats.clients())
        });
        t.rows.push(vec![
            s(name),
            s(&db.host),
            s(db.port),
            s(db.dbname.as_deref().unwrap_or(name)),
            db.user.clone(),
            s(app.config.pool_size(db)),
            s(db.min_pool_size.unwrap_or(p.min_pool_size)),
            s(db.reserve_pool_size.unwrap_or(p.reserve_pool_size)),
            s(0),
            db.pool_mode.map(|m| m.as_str().to_string()),
            s(0),
            s(servers),
            s(0),
            s(clients),
            s(u8::from(app.control.is_paused(name))),
            s(0),
        ]);
    }
    t
}

fn show_config(p: &PoolerSettings) -> Table {
    let d = PoolerSettings::default();
    let mut t = Table::new(&[("key", T), ("value", T), ("default", T), ("changeable", T)]);
    let path = |v: &Option<std::path::PathBuf>| {
        v.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let list = |v: &crate::config::NameList| v.names().join(", ");
    let auth = |a: crate::config::AuthType| {
        match a {
            crate::config::AuthType::Trust => "trust",
            crate::config::AuthType::Plain => "plain",
            crate::config::AuthType::Md5 => "md5",
            crate::config::AuthType::ScramSha256 => "scram-sha-256",
        }
        .to_string()
    };
    let rows: Vec<(&str, String, String)> = vec![
        ("listen_addr", p.listen_addr.clone(), d.listen_addr.clone()),
        (
            "listen_port",
            p.listen_port.to_string(),
            d.listen_port.to_string(),
        ),
        (
            "pool_mode",
            p.pool_mode.as_str().into(),
            d.pool_mode.as_str().into(),
        ),
        ("auth_type", auth(p.auth_type), auth(d.auth_type)),
        ("auth_file", path(&p.auth_file), path(&d.auth_file)),
        (
            "max_client_conn",
            p.max_client_conn.to_string(),
            d.max_client_conn.to_string(),
        ),
        (
            "default_pool_size",
            p.default_pool_size.to_string(),
            d.default_pool_size.to_string(),
        ),
        (
            "min_pool_size",
            p.min_pool_size.to_string(),
            d.min_pool_size.to_string(),
        ),
        (
            "reserve_pool_size",
            p.reserve_pool_size.to_string(),
            d.reserve_pool_size.to_string(),
        ),
        (
            "reserve_pool_timeout",
            p.reserve_pool_timeout.to_string(),
            d.reserve_pool_timeout.to_string(),
        ),
        (
            "server_idle_timeout",
            p.server_idle_timeout.to_string(),
            d.server_idle_timeout.to_string(),
        ),
        (
            "server_connect_timeout",
            p.server_connect_timeout.to_string(),
            d.server_connect_timeout.to_string(),
        ),
        (
            "query_wait_timeout",
            p.query_wait_timeout.to_string(),
            d.query_wait_timeout.to_string(),
        ),
        (
            "client_login_timeout",
            p.client_login_timeout.to_string(),
            d.client_login_timeout.to_string(),
        ),
        (
            "server_reset_query",
            p.server_reset_query.clone(),
            d.server_reset_query.clone(),
        ),
        (
            "ignore_startup_parameters",
            list(&p.ignore_startup_parameters),
            list(&d.ignore_startup_parameters),
        ),
        (
            "track_extra_parameters",
            list(&p.track_extra_parameters),
            list(&d.track_extra_parameters),
        ),
        (
            "log_connections",
            u8::from(p.log_connections).to_string(),
            u8::from(d.log_connections).to_string(),
        ),
        (
            "log_disconnections",
            u8::from(p.log_disconnections).to_string(),
            u8::from(d.log_disconnections).to_string(),
        ),
        (
            "metrics_addr",
            p.metrics_addr.clone(),
            d.metrics_addr.clone(),
        ),
        (
            "metrics_port",
            p.metrics_port.to_string(),
            d.metrics_port.to_string(),
        ),
        ("admin_users", list(&p.admin_users), list(&d.admin_users)),
        ("stats_users", list(&p.stats_users), list(&d.stats_users)),
    ];
    for (key, value, default) in rows {
        // Nothing changes at run time yet (RELOAD and SET are to come).
        t.rows.push(vec![s(key), s(value), s(default), s("no")]);
    }
    t
}

fn show_lists(app: &App) -> Table {
    let mut t = Table::new(&[("list", T), ("items", N)]);
    let pools = app.pools();
    let users: HashSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let registered = app.clients_registry.snapshot().len();
    let servers: usize = pools.iter().map(|p| p.counts().total).sum();
    let used_clients = app.client_count();
    for (list, items) in [
        ("databases", app.config.databases.len()),
        ("users", users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", used_clients.saturating_sub(registered)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.rows.push(vec![s(list), s(items)]);
    }
    t
}

fn known_database(app: &App, db: Option<&str>) -> Result<(), CommandError> {
    match db {
        Some(name) if !app.config.databases.contains_key(name) => Err(CommandError {
            code: "3D000",
            message: format!("no such database: {name}"),
        }),
        _ => Ok(()),
    }
}

/// PAUSE [db]: new transactions wait; returns once every server of the database is closed.
async fn pause(app: &Arc<App>, db: Option<&str>) -> Result<Reply, CommandError> {
    known_database(app, db)?;
    {
        let mut p = app.control.paused();
        match db {
            Some(name) => {
                p.databases.insert(name.to_string());
            }
            None => p.all = true,
        }
    }
    let pools: Vec<_> = app
        .pools()
        .into_iter()
        .filter(|p| db.is_none_or(|d| d == p.database))
        .collect();
    for pool in &pools {
        pool.pause();
    }
    // As PgBouncer: the command returns when the servers are gone, so a database restart can
    // follow it. Transactions in flight finish first; their servers close as they come back.
    while pools.iter().any(|p| p.counts().total > 0) {
        tokio::time::sleep(PAUSE_POLL).await;
    }
    Ok(Reply::Tag("PAUSE"))
}

/// RESUME [db]: undoes PAUSE or KILL.
fn resume(app: &Arc<App>, db: Option<&str>) -> Result<Reply, CommandError> {
    known_database(app, db)?;
    {
        let mut p = app.control.paused();
        match db {
            Some(name) => {
                if p.all {
                    return Err(CommandError {
                        code: "55000",
                        message: "the whole pooler is paused: use RESUME without a database".into(),
                    });
                }
                if !p.databases.remove(name) {
                    return Err(CommandError {
                        code: "55000",
                        message: format!("database {name} is not paused"),
                    });
                }
            }
            None => {
                if !p.all && p.databases.is_empty() {
                    return Err(CommandError {
                        code: "55000",
                        message: "pooler is not paused".into(),
                    });
                }
                p.all = false;
                p.databases.clear();
            }
        }
    }
    for pool in app.pools() {
        if db.is_none_or(|d| d == pool.database) {
            pool.resume();
        }
    }
    Ok(Reply::Tag("RESUME"))
}

/// KILL [db]: drops the database's clients and servers now; new clients wait for RESUME.
fn kill(app: &Arc<App>, db: Option<&str>) -> Result<Reply, CommandError> {
    known_database(app, db)?;
    {
        let mut p = app.control.paused();
        match db {
            Some(name) => {
                p.databases.insert(name.to_string());
            }
            None => p.all = true,
        }
    }
    for pool in app.pools() {
        if db.is_none_or(|d| d == pool.database) {
            pool.kill();
        }
    }
    let n = app.clients_registry.kill(db);
    tracing::info!(database = db.unwrap_or("*"), clients = n, "KILL");
    Ok(Reply::Tag("KILL"))
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(timestamp(t), "2000-02-29 01:01:01 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn console_names() {
        assert!(is_console("pgbouncer") && is_console("pooler"));
        assert!(!is_console("app"));
    }
}
