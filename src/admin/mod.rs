//! The admin console: the virtual database `pgbouncer` (alias `pooler`), spoken over the
//! simple query protocol with PgBouncer's commands and column names, so existing scripts and
//! pgbouncer_exporter work against it. It never touches a real server.
//!
//! `admin_users` may run everything; `stats_users` only the `SHOW` commands. Anyone else is
//! refused at login with `28000 not allowed`, after authenticating like any user (so the
//! refusal reveals nothing to someone without the password).

mod show;

use bytes::BytesMut;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::app::App;
use crate::error::{PoolerError, Result};
use crate::protocol;
use crate::registry::Registration;
use show::{Table, show};

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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_names() {
        assert!(is_console("pgbouncer") && is_console("pooler"));
        assert!(!is_console("app"));
    }
}
