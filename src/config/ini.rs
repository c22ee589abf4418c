//! PgBouncer's `pgbouncer.ini`, read as it is, so a PgBouncer deployment can swap the binary
//! and keep its config.
//!
//! The file becomes the TOML table a `pooler.toml` would parse to (`[pgbouncer]` → `[pooler]`,
//! `[databases]` connection strings → `[databases.NAME]` tables, `[users]` → `[users.NAME]`),
//! and that table goes through the same deserialisation and validation as TOML: one set of
//! rules, and `pooler convert` prints the table as the equivalent `pooler.toml`.
//!
//! PgBouncer's syntax as libusual's parser reads it: `[section]` headers, `key = value` lines
//! (the value is the rest of the line, trimmed), comments on lines of their own starting with
//! `;` or `#`, `%include FILE`. Booleans may be `0`/`1`, `yes`/`no`, `on`/`off`,
//! `true`/`false`; times are seconds with an optional fraction, PgBouncer's only unit.
//!
//! A key PgBouncer knows and the pooler does not implement is never dropped silently: it
//! becomes a warning naming it (logged at start and on RELOAD), or an error when running
//! without it would change what clients get in a way they would not notice (`auth_user`,
//! `auth_hba_file`, `connect_query`, ...). A key nobody knows is an error, as in TOML.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{ConfigError, KeyKind, PoolerSettings};

/// How deep `%include` may nest: deeper is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// A `pgbouncer.ini` turned into a config table, with what it set that the pooler ignores.
#[derive(Debug, Default)]
pub struct Parsed {
    pub table: Table,
    pub warnings: Vec<String>,
}

/// Whether a config file is PgBouncer's ini rather than TOML: by its extension, or, for other
/// names, by content that only an ini has (a `[pgbouncer]` section, `%include`, or a
/// `[databases]` section that is not valid TOML).
pub fn is_ini(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("ini") => return true,
        Some(e) if e.eq_ignore_ascii_case("toml") => return false,
        _ => {}
    }
    let lines = || text.lines().map(str::trim);
    if lines().any(|l| l.eq_ignore_ascii_case("[pgbouncer]") || l.starts_with("%include")) {
        return true;
    }
    lines().any(|l| l.eq_ignore_ascii_case("[databases]")) && toml::from_str::<Table>(text).is_err()
}

/// Parses the text of `path`; `read` reads the files it `%include`s (relative names are taken
/// from the including file's directory).
pub fn parse(
    path: &Path,
    text: &str,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Parsed, ConfigError> {
    let mut reader = Reader {
        read,
        parsed: Parsed::default(),
        section: Section::None,
    };
    reader.file(path, text, 0)?;
    Ok(reader.parsed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Pgbouncer,
    Databases,
    Users,
    Peers,
}

/// Where a line is, for messages.
struct At<'a> {
    file: &'a Path,
    line: usize,
}

impl At<'_> {
    fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.display().to_string(),
            message: format!("line {}: {message}", self.line),
        }
    }

    fn warning(&self, message: impl std::fmt::Display) -> String {
        format!("{} line {}: {message}", self.file.display(), self.line)
    }
}

struct Reader<'a> {
    read: &'a dyn Fn(&Path) -> std::io::Result<String>,
    parsed: Parsed,
    /// The section in force; like PgBouncer, an included file continues the includer's.
    section: Section,
}

impl Reader<'_> {
    fn file(&mut self, path: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        for (n, raw) in text.lines().enumerate() {
            let at = At {
                file: path,
                line: n + 1,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("%include") {
                let name = rest.trim();
                if name.is_empty() || rest.len() == rest.trim_start().len() {
                    return Err(at.error("%include needs a file name"));
                }
                self.include(&at, name, depth)?;
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let Some(name) = name.strip_suffix(']') else {
                    return Err(at.error(format!("`{line}`: a section header ends with ]")));
                };
                self.section = match name.trim().to_ascii_lowercase().as_str() {
                    "pgbouncer" => Section::Pgbouncer,
                    "databases" => Section::Databases,
                    "users" => Section::Users,
                    "peers" => Section::Peers,
                    other => {
                        return Err(at.error(format!(
                            "unknown section [{other}] (PgBouncer's are [databases], \
                             [pgbouncer], [users] and [peers])"
                        )));
                    }
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(at.error(format!("`{line}`: expected key = value")));
            };
            let key = unquote_name(key.trim());
            let value = value.trim();
            match self.section {
                Section::None => {
                    return Err(at.error(format!("{key}: key outside of any section")));
                }
                Section::Pgbouncer => self.setting(&at, &key.to_ascii_lowercase(), value)?,
                Section::Databases => self.database(&at, &key, value)?,
                Section::Users => self.user(&at, &key, value)?,
                Section::Peers => self.peer(&at, &key, value)?,
            }
        }
        Ok(())
    }

    fn include(&mut self, at: &At, name: &str, depth: usize) -> Result<(), ConfigError> {
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(at.error(format!(
                "%include {name}: nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"
            )));
        }
        let mut path = PathBuf::from(name);
        if path.is_relative()
            && let Some(dir) = at.file.parent()
        {
            path = dir.join(path);
        }
        let text = (self.read)(&path)
            .map_err(|e| at.error(format!("%include {}: cannot read: {e}", path.display())))?;
        self.file(&path, &text, depth + 1)
    }

    /// A `[pgbouncer]` key.
    fn setting(&mut self, at: &At, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some((_, _, kind)) = PoolerSettings::default()
            .entries()
            .into_iter()
            .find(|(k, _, _)| *k == key)
        {
            let Some(value) = setting_value(at, key, value, kind)? else {
                return Ok(());
            };
            section(&mut self.parsed.table, "pooler").insert(key.to_string(), value);
            return Ok(());
        }
        match UNSUPPORTED_SETTINGS.iter().find(|(k, _)| *k == key) {
            Some((_, Unsupported::Ignored(why))) => {
                self.parsed.warnings.push(at.warning(format!(
                    "{key} is not supported by pooler and is ignored ({why})"
                )));
                Ok(())
            }
            Some((_, Unsupported::RefusedWhenSet(why))) => {
                if is_unset(value) {
                    self.parsed.warnings.push(at.warning(format!(
                        "{key} is not supported by pooler; `{value}` is its off value, ignored"
                    )));
                    Ok(())
                } else {
                    Err(at.error(format!("{key} = {value}: not supported by pooler: {why}")))
                }
            }
            None => Err(at.error(format!(
                "unknown key `{key}` in [pgbouncer] (neither a PgBouncer nor a pooler setting)"
            ))),
        }
    }

    /// A `[databases]` line: `name = host=... port=... dbname=...`.
    fn database(&mut self, at: &At, name: &str, value: &str) -> Result<(), ConfigError> {
        let pairs = connstr(value).map_err(|e| at.error(format!("{name}: {e}")))?;
        let mut entry = Table::new();
        for (key, v) in pairs {
            let target = match key.as_str() {
                "host" => {
                    if v.contains(',') {
                        return Err(at.error(format!(
                            "{name}: host={v}: several hosts are not supported; give one"
                        )));
                    }
                    if v.starts_with('/') {
                        return Err(at.error(format!(
                            "{name}: host={v}: connecting to Postgres over a Unix socket is \
                             not supported; use its TCP address (host=127.0.0.1)"
                        )));
                    }
                    Some(("host", Value::String(v)))
                }
                "dbname" | "user" | "password" | "pool_mode" | "session_state" => {
                    Some((key.as_str(), Value::String(v)))
                }
                "port" | "pool_size" | "min_pool_size" | "max_db_connections" => Some((
                    key.as_str(),
                    integer(&v).map_err(|e| at.error(format!("{name}: {key}: {e}")))?,
                )),
                // PgBouncer's name for it in a connection string; newer versions take both.
                "reserve_pool" | "reserve_pool_size" => Some((
                    "reserve_pool_size",
                    integer(&v).map_err(|e| at.error(format!("{name}: {key}: {e}")))?,
                )),
                "connect_query" | "client_encoding" | "datestyle" | "timezone"
                | "application_name" => {
                    return Err(at.error(format!(
                        "{name}: {key}: not supported by pooler: the servers would run without \
                         it and queries would see different settings (clients can send it as \
                         a startup parameter instead)"
                    )));
                }
                "auth_user" | "auth_query" | "auth_dbname" => {
                    return Err(at.error(format!(
                        "{name}: {key}: not supported by pooler: users missing from auth_file \
                         would be refused instead of looked up"
                    )));
                }
                "max_db_client_connections" | "server_lifetime" | "load_balance_hosts" => {
                    self.parsed.warnings.push(at.warning(format!(
                        "{name}: {key} is not supported per database by pooler and is ignored"
                    )));
                    None
                }
                other => {
                    return Err(
                        at.error(format!("{name}: unknown connection string key `{other}`"))
                    );
                }
            };
            if let Some((k, v)) = target {
                entry.insert(k.to_string(), v);
            }
        }
        if !entry.contains_key("host") {
            // PgBouncer would use its Unix socket; the pooler's default is TCP to loopback.
            self.parsed.warnings.push(at.warning(format!(
                "{name}: no host given: pooler connects to 127.0.0.1 over TCP (PgBouncer would \
                 use a Unix socket)"
            )));
        }
        section(&mut self.parsed.table, "databases").insert(name.to_string(), Value::Table(entry));
        Ok(())
    }

    /// A `[peers]` line: `ID = host=... port=... pool_size=...`, PgBouncer's three keys.
    fn peer(&mut self, at: &At, id: &str, value: &str) -> Result<(), ConfigError> {
        let pairs = connstr(value).map_err(|e| at.error(format!("[peers] {id}: {e}")))?;
        let mut entry = Table::new();
        for (key, v) in pairs {
            match key.as_str() {
                "host" => {
                    entry.insert(key, Value::String(v));
                }
                "port" | "pool_size" => {
                    let n =
                        integer(&v).map_err(|e| at.error(format!("[peers] {id}: {key}: {e}")))?;
                    entry.insert(key, n);
                }
                other => {
                    return Err(at.error(format!(
                        "[peers] {id}: unknown key `{other}` (a peer has host, port and pool_size)"
                    )));
                }
            }
        }
        if !entry.contains_key("host") {
            return Err(at.error(format!("[peers] {id}: host is required")));
        }
        section(&mut self.parsed.table, "peers").insert(id.to_string(), Value::Table(entry));
        Ok(())
    }

    /// A `[users]` line: `name = pool_mode=... max_user_connections=...`.
    fn user(&mut self, at: &At, name: &str, value: &str) -> Result<(), ConfigError> {
        let pairs = connstr(value).map_err(|e| at.error(format!("{name}: {e}")))?;
        let mut entry = Table::new();
        for (key, v) in pairs {
            match key.as_str() {
                "pool_mode" => {
                    entry.insert(key, Value::String(v));
                }
                "pool_size" | "max_user_connections" => {
                    let n = integer(&v).map_err(|e| at.error(format!("{name}: {key}: {e}")))?;
                    entry.insert(key, n);
                }
                "query_timeout"
                | "idle_transaction_timeout"
                | "client_idle_timeout"
                | "max_user_client_connections"
                | "reserve_pool_size" => {
                    self.parsed.warnings.push(at.warning(format!(
                        "[users] {name}: {key} is not supported per user by pooler and is \
                         ignored (the [pgbouncer] value applies)"
                    )));
                }
                other => {
                    return Err(at.error(format!("[users] {name}: unknown key `{other}`")));
                }
            }
        }
        section(&mut self.parsed.table, "users").insert(name.to_string(), Value::Table(entry));
        Ok(())
    }
}

/// The value of one of the pooler's own keys, typed as the TOML form would have it; None for
/// an empty path (PgBouncer's "not set").
fn setting_value(
    at: &At,
    key: &str,
    value: &str,
    kind: KeyKind,
) -> Result<Option<Value>, ConfigError> {
    Ok(Some(match kind {
        KeyKind::Bool => Value::Boolean(parse_bool(value).ok_or_else(|| {
            at.error(format!(
                "{key}: `{value}` is not a boolean (0/1, yes/no, on/off, true/false)"
            ))
        })?),
        KeyKind::Value => {
            number(value).ok_or_else(|| at.error(format!("{key}: `{value}` is not a number")))?
        }
        KeyKind::Text => {
            if value.is_empty() && PATH_KEYS.contains(&key) {
                return Ok(None);
            }
            if key == "auth_type" && !SUPPORTED_AUTH_TYPES.contains(&value) {
                return Err(at.error(format!(
                    "auth_type = {value}: not supported by pooler (it has {}); clients would \
                     be authenticated differently",
                    SUPPORTED_AUTH_TYPES.join(", ")
                )));
            }
            Value::String(value.to_string())
        }
    }))
}

const SUPPORTED_AUTH_TYPES: &[&str] = &["trust", "plain", "md5", "scram-sha-256"];

/// Keys whose value is a file: empty means "not set" in PgBouncer.
const PATH_KEYS: &[&str] = &[
    "auth_file",
    "client_tls_cert_file",
    "client_tls_key_file",
    "server_tls_ca_file",
];

/// PgBouncer's booleans, as its config and its users write them.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Some(true),
        "0" | "no" | "off" | "false" => Some(false),
        _ => None,
    }
}

/// A PgBouncer number: an integer, or seconds with a fraction (`0.5`, `600.0`).
fn number(value: &str) -> Option<Value> {
    if let Ok(n) = value.parse::<i64>() {
        return Some(Value::Integer(n));
    }
    value
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Float)
}

fn integer(value: &str) -> Result<Value, String> {
    value
        .parse::<i64>()
        .map(Value::Integer)
        .map_err(|_| format!("`{value}` is not an integer"))
}

/// Whether a value of a refused key is its "off" value (so ignoring it changes nothing).
fn is_unset(value: &str) -> bool {
    value.is_empty() || parse_bool(value) == Some(false)
}

fn section<'t>(table: &'t mut Table, name: &str) -> &'t mut Table {
    let entry = table
        .entry(name.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    match entry {
        Value::Table(t) => t,
        // Made a table just above.
        _ => unreachable!("section is a table"),
    }
}

/// A database name may be written in double quotes (`"my db" = ...`), as in PgBouncer.
fn unquote_name(key: &str) -> String {
    match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => key.to_string(),
    }
}

/// A libpq-style connection string: `key=value` pairs separated by spaces, values optionally
/// in single quotes (with `\'` and `\\` escapes, as libpq and PgBouncer read them).
pub fn connstr(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` without `=value` in the connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("{key}: unterminated quoted value")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("{key}: unterminated quoted value")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push((key.to_ascii_lowercase(), value));
    }
}

/// What to do with a PgBouncer key the pooler does not implement.
enum Unsupported {
    /// Warn, naming it: running without it changes nothing clients rely on for correctness.
    Ignored(&'static str),
    /// Refuse to start unless it is off: running without it would change behaviour silently.
    RefusedWhenSet(&'static str),
}

use Unsupported::{Ignored, RefusedWhenSet};

/// PgBouncer's `[pgbouncer]` keys the pooler lacks, with why each is safe to ignore or not.
const UNSUPPORTED_SETTINGS: &[(&str, Unsupported)] = &[
    ("logfile", Ignored("logs go to stderr")),
    ("pidfile", Ignored("no pid file is written")),
    (
        "unix_socket_mode",
        Ignored("the socket gets the process's umask"),
    ),
    (
        "unix_socket_group",
        Ignored("the socket gets the process's group"),
    ),
    ("user", Ignored("start the process as that user instead")),
    (
        "max_db_client_connections",
        Ignored("only max_client_conn limits clients"),
    ),
    (
        "max_user_client_connections",
        Ignored("only max_client_conn limits clients"),
    ),
    (
        "server_round_robin",
        Ignored("idle servers are reused most recent first"),
    ),
    (
        "disable_pqexec",
        RefusedWhenSet("multi-statement simple queries would be allowed"),
    ),
    (
        "application_name_add_host",
        Ignored("application_name is passed as the client sets it"),
    ),
    (
        "conffile",
        Ignored("the file given on the command line is used"),
    ),
    ("service_name", Ignored("Windows only")),
    ("job_name", Ignored("Windows only")),
    (
        "stats_period",
        Ignored("SHOW STATS averages cover 60 seconds"),
    ),
    (
        "scram_iterations",
        Ignored("SCRAM secrets come from auth_file"),
    ),
    (
        "auth_hba_file",
        RefusedWhenSet(
            "there are no HBA rules: every user in auth_file could log in from anywhere",
        ),
    ),
    (
        "auth_ident_file",
        Ignored("there is no ident authentication"),
    ),
    (
        "auth_user",
        RefusedWhenSet(
            "users missing from auth_file would be refused instead of looked up with auth_query",
        ),
    ),
    ("auth_query", Ignored("it is only used with auth_user")),
    ("auth_dbname", Ignored("it is only used with auth_user")),
    ("syslog", Ignored("logs go to stderr")),
    ("syslog_ident", Ignored("logs go to stderr")),
    ("syslog_facility", Ignored("logs go to stderr")),
    (
        "log_pooler_errors",
        Ignored("errors sent to clients are logged at debug level"),
    ),
    (
        "log_stats",
        Ignored("statistics are in SHOW STATS and /metrics"),
    ),
    ("verbose", Ignored("set POOLER_LOG=debug instead")),
    (
        "server_reset_query_always",
        RefusedWhenSet("in transaction mode server_reset_query would not run between clients"),
    ),
    (
        "server_fast_close",
        Ignored("servers are closed when they are next idle"),
    ),
    (
        "autodb_idle_timeout",
        Ignored("pools of the * database stay until RELOAD"),
    ),
    (
        "dns_max_ttl",
        Ignored("host names are resolved at each connect"),
    ),
    (
        "dns_nxdomain_ttl",
        Ignored("host names are resolved at each connect"),
    ),
    (
        "dns_zone_check_period",
        Ignored("host names are resolved at each connect"),
    ),
    ("resolv_conf", Ignored("the system resolver is used")),
    (
        "client_tls_ca_file",
        Ignored("client certificates are not requested"),
    ),
    (
        "client_tls_protocols",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "client_tls_ciphers",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "client_tls13_ciphers",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "client_tls_ecdhcurve",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "client_tls_dheparams",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "server_tls_key_file",
        Ignored("no client certificate is sent to Postgres"),
    ),
    (
        "server_tls_cert_file",
        Ignored("no client certificate is sent to Postgres"),
    ),
    (
        "server_tls_protocols",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "server_tls_ciphers",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "server_tls13_ciphers",
        Ignored("rustls's safe defaults are used"),
    ),
    (
        "cancel_wait_timeout",
        Ignored("cancel requests are forwarded within server_connect_timeout"),
    ),
    (
        "transaction_timeout",
        Ignored(
            "transactions are not cut by the pooler; use Postgres's idle_in_transaction_session_timeout or statement_timeout",
        ),
    ),
    (
        "suspend_timeout",
        Ignored("online restart (SUSPEND) is not supported"),
    ),
    (
        "query_wait_notify",
        Ignored("waiting clients get no notice"),
    ),
    ("pkt_buf", Ignored("buffers are sized by the pooler")),
    (
        "max_packet_size",
        Ignored("Postgres's 1 GB message limit applies"),
    ),
    (
        "listen_backlog",
        Ignored("the system's default backlog is used"),
    ),
    ("sbuf_loopcnt", Ignored("not applicable")),
    ("tcp_defer_accept", Ignored("the system default is used")),
    ("tcp_socket_buffer", Ignored("the system default is used")),
    ("tcp_keepalive", Ignored("the system default is used")),
    ("tcp_keepcnt", Ignored("the system default is used")),
    ("tcp_keepidle", Ignored("the system default is used")),
    ("tcp_keepintvl", Ignored("the system default is used")),
    ("tcp_user_timeout", Ignored("the system default is used")),
];

/// The equivalent `pooler.toml` of a parsed ini, sections in the order a reader expects, with
/// the warnings as comments on top (`pooler convert`).
pub fn to_toml(parsed: &Parsed, source: &Path) -> Result<String, toml::ser::Error> {
    let mut out = format!(
        "# pooler.toml converted from {} by `pooler convert`.\n",
        source.display()
    );
    for w in &parsed.warnings {
        out.push_str(&format!("# warning: {w}\n"));
    }
    for name in ["pooler", "databases", "users", "peers"] {
        if let Some(value) = parsed.table.get(name) {
            let mut one = Table::new();
            one.insert(name.to_string(), value.clone());
            out.push('\n');
            out.push_str(&toml::to_string(&one)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PoolMode};
    use std::collections::HashMap;

    fn parse_files(files: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
        let map: HashMap<PathBuf, String> = files
            .iter()
            .map(|(n, t)| (PathBuf::from(n), t.to_string()))
            .collect();
        let read = move |p: &Path| {
            map.get(p)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let (first, text) = files[0];
        parse(Path::new(first), text, &read)
    }

    fn config(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let parsed = parse_files(&[("/etc/pgbouncer/pgbouncer.ini", text)])?;
        Ok((
            Config::from_table(parsed.table, "pgbouncer.ini", &[])?,
            parsed.warnings,
        ))
    }

    const TUTORIAL: &str = "\
;; a tutorial's pgbouncer.ini
[databases]
app = host=127.0.0.1 port=5433 dbname=appdb pool_size=50 pool_mode=session
forced = host=db.internal user=svc password='it\\'s a \\'secret\\'' reserve_pool=3
* = host=10.0.0.9

[pgbouncer]
listen_addr = *
listen_port = 6432
auth_type = md5
auth_file = userlist.txt
# comments with either character
pool_mode = transaction
log_connections = 0
log_disconnections = no
max_client_conn = 10000
default_pool_size = 150
reserve_pool_size = 10
reserve_pool_timeout = 5
server_idle_timeout = 600.0
query_wait_timeout = 0.5
admin_users = admin, ops
logfile = /var/log/pgbouncer/pgbouncer.log

[users]
batch = pool_mode=session max_user_connections=4 pool_size=2
";

    #[test]
    fn tutorial_ini_becomes_the_same_config() {
        let (c, warnings) = config(TUTORIAL).unwrap();
        let p = &c.pooler;
        assert_eq!(p.listen_addr, "*");
        assert_eq!(p.auth_type, crate::config::AuthType::Md5);
        assert_eq!(p.pool_mode, PoolMode::Transaction);
        assert!(!p.log_connections && !p.log_disconnections);
        assert_eq!(p.max_client_conn, 10000);
        assert_eq!(p.default_pool_size, 150);
        assert_eq!(p.reserve_pool_size, 10);
        assert_eq!(p.reserve_pool_timeout, 5.0);
        assert_eq!(p.server_idle_timeout, 600.0);
        assert_eq!(p.query_wait_timeout, 0.5);
        assert_eq!(p.admin_users.names(), vec!["admin", "ops"]);
        let app = &c.databases["app"];
        assert_eq!((app.host.as_str(), app.port), ("127.0.0.1", 5433));
        assert_eq!(app.dbname.as_deref(), Some("appdb"));
        assert_eq!(app.pool_size, Some(50));
        assert_eq!(app.pool_mode, Some(PoolMode::Session));
        let forced = &c.databases["forced"];
        assert_eq!(forced.user.as_deref(), Some("svc"));
        assert_eq!(forced.password.as_deref(), Some("it's a 'secret'"));
        assert_eq!(forced.reserve_pool_size, Some(3));
        let batch = &c.users["batch"];
        assert_eq!(batch.pool_mode, Some(PoolMode::Session));
        assert_eq!(batch.max_user_connections, Some(4));
        assert_eq!(c.pool_size_for(app, "batch"), 2);
        assert_eq!(c.pool_size_for(app, "other"), 50);
        assert_eq!(c.pool_mode(forced, "batch"), PoolMode::Session);
        assert_eq!(c.pool_mode(forced, "other"), PoolMode::Transaction);
        assert_eq!(c.max_user_connections("batch"), 4);
        // The fallback serves any other name as that database.
        let other = c.database("reports").unwrap();
        assert_eq!(other.host, "10.0.0.9");
        assert_eq!(other.dbname.as_deref(), Some("reports"));
        assert!(c.database("*").is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("logfile") && warnings[0].contains("line 23"),
            "{warnings:?}"
        );
    }

    #[test]
    fn every_boolean_spelling() {
        for (v, want) in [
            ("1", true),
            ("0", false),
            ("yes", true),
            ("No", false),
            ("on", true),
            ("off", false),
            ("true", true),
            ("FALSE", false),
        ] {
            let (c, _) = config(&format!(
                "[pgbouncer]\nauth_type = trust\nlog_connections = {v}\n"
            ))
            .unwrap();
            assert_eq!(c.pooler.log_connections, want, "{v}");
        }
        let e = config("[pgbouncer]\nlog_connections = maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_connections") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn include_is_read_relative_to_the_including_file() {
        let parsed = parse_files(&[
            (
                "/etc/pgbouncer/pgbouncer.ini",
                "[pgbouncer]\nauth_type = trust\nlisten_port = 7000\n%include conf.d/pools.ini\n",
            ),
            (
                "/etc/pgbouncer/conf.d/pools.ini",
                "default_pool_size = 7\n[databases]\napp = host=db\n",
            ),
        ])
        .unwrap();
        let c = Config::from_table(parsed.table, "x", &[]).unwrap();
        assert_eq!(c.pooler.default_pool_size, 7);
        assert_eq!(c.pooler.listen_port, 7000);
        assert_eq!(c.databases["app"].host, "db");
        let e = parse_files(&[("/a.ini", "%include /missing.ini\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/missing.ini") && e.contains("line 1"), "{e}");
        let e = parse_files(&[("/a.ini", "%include /a.ini\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested"), "{e}");
    }

    #[test]
    fn keys_that_would_change_behaviour_are_refused() {
        for (line, key) in [
            ("[pgbouncer]\nauth_type = hba\n", "auth_type"),
            ("[pgbouncer]\nauth_type = cert\n", "auth_type"),
            ("[pgbouncer]\nauth_user = pgbouncer\n", "auth_user"),
            ("[pgbouncer]\nauth_hba_file = hba.conf\n", "auth_hba_file"),
            (
                "[pgbouncer]\nserver_reset_query_always = 1\n",
                "server_reset_query_always",
            ),
            (
                "[databases]\napp = host=db connect_query='set x=1'\n",
                "connect_query",
            ),
            ("[databases]\napp = host=db timezone=UTC\n", "timezone"),
            ("[databases]\napp = host=a,b\n", "several hosts"),
            (
                "[databases]\napp = host=/var/run/postgresql\n",
                "Unix socket",
            ),
            ("[pgbouncer]\npool_sise = 3\n", "pool_sise"),
            ("[users]\nbob = pool_sise=3\n", "pool_sise"),
            ("[nonsense]\n", "nonsense"),
            ("key = 1\n", "outside"),
        ] {
            let e = config(line).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        // The off value of a refused key changes nothing: a warning only.
        let (_, w) =
            config("[pgbouncer]\nauth_type = trust\nserver_reset_query_always = 0\n").unwrap();
        assert!(w[0].contains("server_reset_query_always"), "{w:?}");
    }

    #[test]
    fn values_the_config_refuses_are_named() {
        let e = config("[pgbouncer]\nauth_type = trust\npool_mode = statement\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("statement"), "{e}");
        let e = config("[pgbouncer]\nauth_type = trust\ndefault_pool_size = lots\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_pool_size"), "{e}");
    }

    #[test]
    fn unsupported_keys_are_warnings_naming_them() {
        let (_, w) = config(
            "[pgbouncer]\nauth_type = trust\ntcp_keepalive = 1\npidfile = /run/p.pid\n\
             [databases]\nlocal = dbname=x\n[users]\nbob = query_timeout=5\n",
        )
        .unwrap();
        let all = w.join("\n");
        for name in ["tcp_keepalive", "pidfile", "no host", "query_timeout"] {
            assert!(all.contains(name), "{name} not in {all}");
        }
    }

    #[test]
    fn peers_and_peer_id_in_pgbouncer_form() {
        let (c, w) = config(
            "[pgbouncer]\nauth_type = trust\npeer_id = 1\nso_reuseport = 1\n\
             [peers]\n1 = host=10.0.0.1\n2 = host=/tmp/pooler-2 port=5555 pool_size=3\n",
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.pooler.peer_id, 1);
        assert!(c.pooler.so_reuseport);
        assert_eq!(c.peers["1"].port, 6432);
        let peers = c.peers();
        // The own entry is allowed and left out.
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(peers[&2].host, "/tmp/pooler-2");
        assert_eq!((peers[&2].port, peers[&2].pool_size), (5555, Some(3)));
        for (text, needle) in [
            ("[peers]\n2 = port=1\n", "host is required"),
            ("[peers]\n2 = host=a dbname=x\n", "dbname"),
            ("[peers]\n0 = host=a\n", "peers.0"),
            ("[peers]\nx = host=a\n", "peers.x"),
            ("[pgbouncer]\npeer_id = 16384\n", "peer_id"),
        ] {
            let e = config(&format!("[pgbouncer]\nauth_type = trust\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn connection_strings() {
        assert_eq!(
            connstr(" host = db  port=5 password='a b\\\\c' dbname=x").unwrap(),
            vec![
                ("host".to_string(), "db".to_string()),
                ("port".into(), "5".into()),
                ("password".into(), "a b\\c".into()),
                ("dbname".into(), "x".into()),
            ]
        );
        assert!(connstr("host").is_err());
        assert!(connstr("password='open").is_err());
    }

    #[test]
    fn detection_by_extension_or_content() {
        assert!(is_ini(Path::new("x.ini"), ""));
        assert!(!is_ini(Path::new("x.toml"), "[pgbouncer]"));
        assert!(is_ini(
            Path::new("pgbouncer.conf"),
            "[pgbouncer]\nlisten_port = 1\n"
        ));
        assert!(is_ini(Path::new("conf"), "[databases]\napp = host=x\n"));
        assert!(!is_ini(
            Path::new("conf"),
            "[databases.app]\nhost = \"x\"\n"
        ));
        assert!(!is_ini(
            Path::new("conf"),
            "[databases]\napp = { host = \"x\" }\n"
        ));
    }

    #[test]
    fn converted_toml_parses_to_the_same_config() {
        let parsed = parse_files(&[("/etc/pgbouncer/pgbouncer.ini", TUTORIAL)]).unwrap();
        let toml = to_toml(&parsed, Path::new("/etc/pgbouncer/pgbouncer.ini")).unwrap();
        assert!(
            toml.contains("# warning:") && toml.contains("logfile"),
            "{toml}"
        );
        let from_toml = Config::parse(&toml, "converted.toml").unwrap();
        let from_ini = Config::from_table(parsed.table, "x", &[]).unwrap();
        assert_eq!(from_toml.pooler.entries(), from_ini.pooler.entries());
        assert_eq!(
            format!("{:?}", from_toml.databases),
            format!("{:?}", from_ini.databases)
        );
        assert_eq!(
            format!("{:?}", from_toml.users),
            format!("{:?}", from_ini.users)
        );
    }
}
