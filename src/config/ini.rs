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
                    if v.split(',').any(|h| h.trim().starts_with('/')) {
                        return Err(at.error(format!(
                            "{name}: host={v}: connecting to Postgres over a Unix socket is \
                             not supported; use its TCP address (host=127.0.0.1)"
                        )));
                    }
                    Some(("host", Value::String(v)))
                }
                "dbname"
                | "user"
                | "password"
                | "pool_mode"
                | "session_state"
                | "target_session_attrs"
                | "load_balance_hosts" => Some((key.as_str(), Value::String(v))),
                // A libpq list (`5432,5433`) stays text; `hosts` reads it.
                "port" if v.contains(',') => Some(("port", Value::String(v))),
                "max_replica_lag" => Some((
                    "max_replica_lag",
                    number(&v)
                        .ok_or_else(|| at.error(format!("{name}: {key}: `{v}` is not a number")))?,
                )),
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
                    Some((key.as_str(), Value::String(v)))
                }
                "max_db_client_connections" | "server_lifetime" => {
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
                "pool_size" | "max_user_connections" | "reserve_pool_size" => {
                    let n = integer(&v).map_err(|e| at.error(format!("{name}: {key}: {e}")))?;
                    entry.insert(key, n);
                }
                "query_timeout"
                | "idle_transaction_timeout"
                | "client_idle_timeout"
                | "transaction_timeout"
                | "query_wait_timeout" => {
                    let n = number(&v).ok_or_else(|| {
                        at.error(format!("[users] {name}: {key}: `{v}` is not a number"))
                    })?;
                    // PgBouncer's -1 means "not set": the global value applies.
                    if n.as_integer() != Some(-1) && n.as_float() != Some(-1.0) {
                        let n = n.as_integer().map(|i| Value::Float(i as f64)).unwrap_or(n);
                        entry.insert(key, n);
                    }
                }
                "max_user_client_connections" => {
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

const SUPPORTED_AUTH_TYPES: &[&str] = &["trust", "plain", "md5", "scram-sha-256", "hba", "cert"];

/// Keys whose value is a file: empty means "not set" in PgBouncer.
const PATH_KEYS: &[&str] = &[
    "auth_file",
    "auth_hba_file",
    "client_tls_ca_file",
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
        "conffile",
        Ignored("the file given on the command line is used"),
    ),
    ("service_name", Ignored("Windows only")),
    ("job_name", Ignored("Windows only")),
    (
        "scram_iterations",
        Ignored("SCRAM secrets come from auth_file"),
    ),
    (
        "auth_ident_file",
        Ignored("there is no ident authentication"),
    ),
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
        "suspend_timeout",
        Ignored("online restart (SUSPEND) is not supported"),
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
mod tests;
