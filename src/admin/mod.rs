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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::app::App;
use crate::error::{PoolerError, Result};
use crate::lifecycle::Phase;
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
    /// The shutdown phase, for those who wait on it (listener, supervisor)...
    phase: watch::Sender<Phase>,
    /// ...and as a plain atomic for sessions, which read it once per transaction.
    phase_now: AtomicU8,
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
            phase: watch::Sender::new(Phase::Running),
            phase_now: AtomicU8::new(Phase::Running as u8),
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

    /// Asks the pooler to stop gracefully (see `lifecycle`): the accept loop ends, `/readyz`
    /// says so, sessions finish their transactions. Returns false if it was already stopping.
    pub fn shutdown(&self) -> bool {
        self.advance(Phase::Draining)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase_now.load(Ordering::Acquire))
    }

    /// Moves the shutdown forward (never back); returns whether it moved.
    pub fn advance(&self, to: Phase) -> bool {
        self.phase.send_if_modified(|p| {
            if *p < to {
                *p = to;
                // Before the watchers wake: whoever they wake must read the new phase.
                self.phase_now.store(to as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    pub fn phase_signal(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
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
    client: Registration,
}

impl Console {
    /// Admits an authenticated user to the console, or refuses it; greets it like a server.
    pub async fn login(
        app: &Arc<App>,
        stream: &mut TcpStream,
        user: &str,
        database: &str,
    ) -> Result<Console> {
        let config = app.config();
        let p = &config.pooler;
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
        Ok(Console { access, client })
    }

    /// Answers commands until the client leaves.
    pub async fn run(&self, app: &Arc<App>, stream: &mut TcpStream) -> Result<()> {
        // After an extended-protocol message: skip to the next Sync, as Postgres does after
        // an error, so the client's protocol state stays consistent.
        let mut skipping = false;
        loop {
            if app.control.is_shutting_down() {
                // The console is idle between commands: it goes first, like any idle client.
                return Err(PoolerError::ShuttingDown);
            }
            let read = tokio::select! {
                _ = self.client.stop.notified() => continue,
                read = protocol::read_message(stream, MAX_QUERY_LEN) => read,
            };
            let (tag, body) = match read {
                Ok(m) => m,
                Err(PoolerError::Io(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut out = BytesMut::new();
            match tag {
                b'Q' => {
                    let sql = match query_text(&body)? {
                        Ok(sql) => sql,
                        Err(message) => {
                            // Well framed, only not text: a bad command, not a bad
                            // connection. Postgres answers it so, and the session goes on.
                            protocol::error_response(&mut out, "ERROR", "22021", &message);
                            protocol::ready_for_query(&mut out, b'I');
                            stream.write_all(&out).await?;
                            continue;
                        }
                    };
                    let shutdown = self.execute(app, sql, &mut out).await;
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
            "RELOAD" if arg.is_none() => reload(app),
            "SET" => Err(CommandError {
                code: "0A000",
                message: "SET is not supported yet: change the configuration file and restart"
                    .into(),
            }),
            _ => Err(syntax(statement)),
        }
    }
}

/// The text of a Query message: a framing error (no terminator) ends the session; text that
/// is not UTF-8 is `Err` with Postgres's message for it.
fn query_text(body: &[u8]) -> Result<Result<&str, String>> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| PoolerError::protocol("missing string terminator"))?;
    let raw = &body[..end];
    Ok(std::str::from_utf8(raw).map_err(|e| invalid_utf8(&raw[e.valid_up_to()..])))
}

/// Postgres's text for an invalid UTF-8 sequence: the bytes of the character the first byte
/// announces (as many as there are), `invalid byte sequence for encoding "UTF8": 0xc3 0x28`.
fn invalid_utf8(bad: &[u8]) -> String {
    let announced = match bad.first() {
        Some(0xc0..=0xdf) => 2,
        Some(0xe0..=0xef) => 3,
        Some(0xf0..=0xf7) => 4,
        _ => 1,
    };
    let bytes: Vec<String> = bad
        .iter()
        .take(announced)
        .map(|b| format!("0x{b:02x}"))
        .collect();
    format!(
        "invalid byte sequence for encoding \"UTF8\": {}",
        bytes.join(" ")
    )
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
    Notice {
        message: String,
        detail: String,
        tag: &'static str,
    },
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
            Reply::Notice {
                message,
                detail,
                tag,
            } => {
                protocol::notice_response(out, message, detail);
                protocol::command_complete(out, tag);
            }
            Reply::Tag(tag) => protocol::command_complete(out, tag),
            Reply::Shutdown => protocol::command_complete(out, "SHUTDOWN"),
        }
    }
}

/// A result set: text values, `None` for NULL.
fn known_database(app: &App, db: Option<&str>) -> Result<(), CommandError> {
    match db {
        Some(name) if !app.config().databases.contains_key(name) => Err(CommandError {
            code: "3D000",
            message: format!("no such database: {name}"),
        }),
        _ => Ok(()),
    }
}

/// RELOAD: re-reads the config and auth files (see `App::reload`); a bad file is refused and
/// the running config stays.
fn reload(app: &Arc<App>) -> Result<Reply, CommandError> {
    match crate::lifecycle::reload(app, "RELOAD") {
        Ok(report) if report.restart_needed.is_empty() => Ok(Reply::Tag("RELOAD")),
        Ok(report) => Ok(Reply::Notice {
            message: "RELOAD done".into(),
            detail: format!(
                "these settings take effect at the next restart: {}",
                report.restart_needed.join(", ")
            ),
            tag: "RELOAD",
        }),
        Err(e) => Err(CommandError {
            code: "F0000",
            message: format!("RELOAD failed, configuration unchanged: {e}"),
        }),
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
    fn query_text_tells_bad_framing_from_bad_text() {
        assert_eq!(query_text(b"SHOW POOLS\0").ok(), Some(Ok("SHOW POOLS")));
        assert!(query_text(b"SHOW POOLS").is_err());
        let bad = |body: &[u8]| query_text(body).ok().and_then(|r| r.err());
        let prefix = "invalid byte sequence for encoding \"UTF8\": ";
        assert_eq!(bad(b"SHOW \xc3(\0"), Some(format!("{prefix}0xc3 0x28")));
        assert_eq!(bad(b"\xff\0"), Some(format!("{prefix}0xff")));
        assert_eq!(bad(b"a\xe2\x82\0"), Some(format!("{prefix}0xe2 0x82")));
    }

    #[test]
    fn console_names() {
        assert!(is_console("pgbouncer") && is_console("pooler"));
        assert!(!is_console("app"));
    }
}
