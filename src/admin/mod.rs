//! The admin console: the virtual database `pgbouncer` (alias `pooler`), spoken over the
//! simple query protocol with PgBouncer's commands and column names, so existing scripts and
//! pgbouncer_exporter work against it. It never touches a real server.
//!
//! `admin_users` may run everything; `stats_users` only the `SHOW` commands. Anyone else is
//! refused at login with `28000 not allowed`, after authenticating like any user (so the
//! refusal reveals nothing to someone without the password).

mod show;

use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::app::App;
use crate::error::{PoolerError, Result};
use crate::registry::Registration;
use crate::wire;
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
        wire::auth_ok(&mut out);
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
            wire::parameter_status(&mut out, name, value);
        }
        wire::backend_key_data(&mut out, 0, 0);
        wire::ready_for_query(&mut out, b'I');
        stream.write_all(&out).await?;
        let client = app.clients_registry.register(
            stream,
            stream.peer_addr().ok(),
            user,
            database,
            "",
            None,
        );
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
                _ = self.client.stop.wait() => continue,
                read = wire::read_message(stream, MAX_QUERY_LEN) => read,
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
                            wire::error_response(&mut out, "ERROR", "22021", &message);
                            wire::ready_for_query(&mut out, b'I');
                            stream.write_all(&out).await?;
                            continue;
                        }
                    };
                    let shutdown = self.execute(app, sql, &mut out).await;
                    wire::ready_for_query(&mut out, b'I');
                    stream.write_all(&out).await?;
                    if shutdown {
                        app.control.shutdown();
                    }
                    continue;
                }
                b'X' => return Ok(()),
                b'S' => {
                    skipping = false;
                    wire::ready_for_query(&mut out, b'I');
                }
                b'H' => {}
                b'P' | b'B' | b'D' | b'E' | b'C' | b'F' => {
                    if !skipping {
                        skipping = true;
                        wire::error_response(
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
        let statements: Vec<&str> = split_statements(sql)
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if statements.is_empty() {
            wire::empty_query_response(out);
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
                    wire::error_response(out, "ERROR", e.code, &e.message);
                    break;
                }
            }
        }
        shutdown
    }

    async fn command(&self, app: &Arc<App>, statement: &str) -> Result<Reply, CommandError> {
        if let Some((key, value)) = parse_set(statement) {
            return self.set(app, &key, &value);
        }
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
            let what = arg.ok_or_else(|| syntax(statement))?;
            return show(app, what);
        }
        self.admin_only()?;
        match verb.as_str() {
            "PAUSE" => pause(app, arg).await,
            "RESUME" => resume(app, arg),
            "KILL" => kill(app, arg),
            "KILL_CLIENT" => kill_client(app, arg),
            "DISABLE" => disable(app, arg, true),
            "ENABLE" => disable(app, arg, false),
            "RECONNECT" => reconnect(app, arg),
            "WAIT_CLOSE" => wait_close(app, arg).await,
            "SHUTDOWN" if arg.is_none() => Ok(Reply::Shutdown),
            "RELOAD" if arg.is_none() => reload(app),
            _ => Err(syntax(statement)),
        }
    }

    fn admin_only(&self) -> Result<(), CommandError> {
        if self.access == Access::Admin {
            Ok(())
        } else {
            Err(CommandError {
                code: "42501",
                message: "admin access needed".into(),
            })
        }
    }

    /// SET key = value: the parameters drivers set on connect are acknowledged and ignored
    /// (as PgBouncer does, for anyone); a `[pooler]` key changeable by RELOAD is changed as
    /// RELOAD would change it (admins only).
    fn set(&self, app: &Arc<App>, key: &str, value: &str) -> Result<Reply, CommandError> {
        if show::FAKE_PARAMETERS
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(key))
        {
            return Ok(Reply::Notice {
                message: "SET ignored".into(),
                detail: String::new(),
                tag: "SET".into(),
            });
        }
        self.admin_only()?;
        let key = key.to_ascii_lowercase();
        let failed = |why: String| CommandError {
            code: "55000",
            message: format!("SET failed: {why}"),
        };
        let known = crate::config::PoolerSettings::default()
            .entries()
            .iter()
            .any(|(k, _, _)| *k == key);
        if !known {
            return Err(CommandError {
                code: "42704",
                message: format!("SET failed: no setting is called {key} (see SHOW CONFIG)"),
            });
        }
        if crate::config::RESTART_ONLY.contains(&key.as_str()) {
            return Err(failed(format!(
                "{key} takes effect only at start (SHOW CONFIG: changeable = no)"
            )));
        }
        match app.set(&key, value) {
            Ok(_) => {
                tracing::info!(key, value, "SET on the console");
                Ok(Reply::Tag(format!("SET {key}={value}")))
            }
            Err(e) => {
                tracing::warn!(key, value, error = %e, "SET refused");
                Err(failed(e.to_string()))
            }
        }
    }
}

/// Splits a Query message into statements at `;` outside quotes (a SET value may hold one).
fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in sql.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out
}

/// `SET key = value` / `SET key TO value`, PgBouncer's forms: the key a word or `"quoted"`,
/// the value a word or a `'string'` (with `''` for a quote). None if it is not a SET.
fn parse_set(statement: &str) -> Option<(String, String)> {
    let rest = statement.trim();
    let head = rest.get(..4)?;
    if !head.eq_ignore_ascii_case("set ") && !head.eq_ignore_ascii_case("set\t") {
        return None;
    }
    let rest = rest[4..].trim_start();
    let (key, rest) = word(rest)?;
    let rest = rest.trim_start();
    let rest = if let Some(r) = rest.strip_prefix('=') {
        r
    } else if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("to") {
        &rest[2..]
    } else {
        return None;
    };
    let rest = rest.trim_start();
    let (value, rest) = if let Some(body) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            if c == '\'' {
                if body[i + 1..].starts_with('\'') {
                    chars.next();
                    value.push('\'');
                    continue;
                }
                break i + 1;
            }
            value.push(c);
        };
        (value, &body[end..])
    } else {
        word(rest)?
    };
    rest.trim().is_empty().then_some((key, value))
}

/// A bare word (letters, digits, `_`, `.`, `-`) or a `"quoted"` one, and what follows it.
fn word(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let end = body.find('"')?;
        return Some((body[..end].to_string(), &body[end + 1..]));
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_string(), &s[end..]))
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
        tag: String,
    },
    Tag(String),
    Shutdown,
}

impl Reply {
    fn write(&self, out: &mut BytesMut) {
        match self {
            Reply::Table(t) => {
                wire::row_description(out, &t.columns);
                for row in &t.rows {
                    wire::data_row(out, row);
                }
                wire::command_complete(out, "SHOW");
            }
            Reply::Notice {
                message,
                detail,
                tag,
            } => {
                wire::notice_response(out, message, detail);
                wire::command_complete(out, tag);
            }
            Reply::Tag(tag) => wire::command_complete(out, tag),
            Reply::Shutdown => wire::command_complete(out, "SHUTDOWN"),
        }
    }
}

/// A database named in a command must be configured, and not the console itself
/// (PgBouncer's messages).
fn known_database(app: &App, db: Option<&str>) -> Result<(), CommandError> {
    match db {
        Some(name) if is_console(name) => Err(CommandError {
            code: "55000",
            message: format!("cannot use the admin db in this command: {name}"),
        }),
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
    match crate::supervisor::reload(app, "RELOAD") {
        Ok(report) if report.restart_needed.is_empty() => Ok(Reply::Tag("RELOAD".into())),
        Ok(report) => Ok(Reply::Notice {
            message: "RELOAD done".into(),
            detail: format!(
                "these settings take effect at the next restart: {}",
                report.restart_needed.join(", ")
            ),
            tag: "RELOAD".into(),
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
    Ok(Reply::Tag("PAUSE".into()))
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
    Ok(Reply::Tag("RESUME".into()))
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
    Ok(Reply::Tag("KILL".into()))
}

/// DISABLE db / ENABLE db: new clients of the database are refused / admitted again;
/// connected ones are not touched.
fn disable(app: &Arc<App>, db: Option<&str>, on: bool) -> Result<Reply, CommandError> {
    let name = db.ok_or_else(|| CommandError {
        code: "42601",
        message: "a database is required".into(),
    })?;
    known_database(app, Some(name))?;
    {
        let mut p = app.control.paused();
        if on {
            p.disabled.insert(name.to_string());
        } else {
            p.disabled.remove(name);
        }
    }
    let verb = if on { "DISABLE" } else { "ENABLE" };
    tracing::info!(database = name, "{verb}");
    Ok(Reply::Tag(verb.into()))
}

/// RECONNECT [db]: every server of the database (or all) is closed instead of reused, idle
/// ones now, busy ones when their clients release them; new ones open as needed.
fn reconnect(app: &Arc<App>, db: Option<&str>) -> Result<Reply, CommandError> {
    known_database(app, db)?;
    for pool in app.pools() {
        if db.is_none_or(|d| d == pool.database) {
            pool.reconnect();
        }
    }
    tracing::info!(database = db.unwrap_or("*"), "RECONNECT");
    Ok(Reply::Tag("RECONNECT".into()))
}

/// WAIT_CLOSE [db]: returns once no server RECONNECT marked is left (SHOW SERVERS'
/// `close_needed`), for switchover scripts.
async fn wait_close(app: &Arc<App>, db: Option<&str>) -> Result<Reply, CommandError> {
    known_database(app, db)?;
    let pools: Vec<_> = app
        .pools()
        .into_iter()
        .filter(|p| db.is_none_or(|d| d == p.database))
        .collect();
    while pools.iter().any(|p| p.close_needed() > 0) {
        tokio::time::sleep(PAUSE_POLL).await;
    }
    Ok(Reply::Tag("WAIT_CLOSE".into()))
}

/// KILL_CLIENT id: ends one client (its `id` in SHOW CLIENTS) with `admin forced
/// disconnect`; a transaction it has open rolls back.
fn kill_client(app: &Arc<App>, id: Option<&str>) -> Result<Reply, CommandError> {
    let id: u64 = id
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| CommandError {
            code: "22023",
            message: "invalid client pointer supplied".into(),
        })?;
    if !app.clients_registry.kill_client(id) {
        return Err(CommandError {
            code: "55000",
            message: "client not found".into(),
        });
    }
    tracing::info!(client = id, "KILL_CLIENT");
    Ok(Reply::Tag("KILL_CLIENT".into()))
}

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
    fn set_statements_parse_as_pgbouncer_writes_them() {
        let set = parse_set;
        assert_eq!(
            set("SET default_pool_size = 5"),
            Some(("default_pool_size".into(), "5".into()))
        );
        assert_eq!(set("set x to y"), Some(("x".into(), "y".into())));
        assert_eq!(
            set("SET server_check_query='select ''a''; '"),
            Some(("server_check_query".into(), "select 'a'; ".into()))
        );
        assert_eq!(set("SET \"k\" = 1"), Some(("k".into(), "1".into())));
        assert_eq!(set("SET x = 1 2"), None);
        assert_eq!(set("SETTLE x = 1"), None);
        assert_eq!(set("SHOW POOLS"), None);
        assert_eq!(
            split_statements("SET a = 'x;y'; SHOW POOLS"),
            ["SET a = 'x;y'", " SHOW POOLS"]
        );
    }

    #[test]
    fn console_names() {
        assert!(is_console("pgbouncer") && is_console("pooler"));
        assert!(!is_console("app"));
    }
}
