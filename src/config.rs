//! The configuration file: PgBouncer's ini turned into TOML.
//!
//! Key names and defaults are PgBouncer's, so a migrating user rewrites syntax, not semantics.
//! Every timeout is in seconds (fractions allowed) and `0` disables it, as in PgBouncer.
//! A `pgbouncer.ini` is read as it is (`ini`): it becomes the same TOML table a `pooler.toml`
//! parses to, so both go through one deserialisation and one validation.

pub mod env;
pub mod ini;

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

/// `pool_mode`: when a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Released after the client disconnects (PgBouncer's default).
    Session,
    /// Released when the server reports it is idle outside a transaction.
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// `auth_type`: how the pooler checks the client's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthType {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// `client_tls_sslmode`: PgBouncer's client-facing TLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest is answered 'N': the client goes on in cleartext or gives up.
    Disable,
    /// TLS when the client asks for it (PgBouncer's `allow`; `prefer` is the same for clients).
    Allow,
    Prefer,
    /// Cleartext clients are refused with `28000 SSL required`.
    Require,
}

/// `server_tls_sslmode`: libpq's modes, for the pooler's connections to Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    /// TLS if the server offers it, no certificate check.
    Prefer,
    /// TLS or nothing, no certificate check.
    Require,
    /// TLS, certificate chain checked against `server_tls_ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl ClientTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Prefer => "prefer",
            ClientTlsMode::Require => "require",
        }
    }
}

impl ServerTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::Plain => "plain",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
        }
    }
}

/// A list that may be written as PgBouncer writes it (`"a, b"`) or as a TOML array.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum NameList {
    #[default]
    Empty,
    Csv(String),
    List(Vec<String>),
}

/// Written as the list of names: TOML has no unit value for `Empty`, and a list reads back
/// the same whichever way it was written.
impl Serialize for NameList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl NameList {
    pub fn names(&self) -> Vec<String> {
        match self {
            NameList::Empty => Vec::new(),
            NameList::Csv(s) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            NameList::List(v) => v.clone(),
        }
    }
}

/// A boolean as PgBouncer users write it: TOML's `true`/`false`, or `0`/`1`, or the strings
/// `"yes"`/`"no"`, `"on"`/`"off"`, `"1"`/`"0"`, so `log_connections = 0` copied from a
/// pgbouncer.ini works in TOML too.
fn pg_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a boolean: true/false, 1/0, \"yes\"/\"no\", \"on\"/\"off\"")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            ini::parse_bool(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(Visitor)
}

/// The `[pooler]` section: PgBouncer's `[pgbouncer]` section, same keys.
// Serialize: the console's SET rebuilds the section from the running values (`with_setting`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolerSettings {
    /// One address, a comma-separated list, or `*` (every IPv4 and IPv6 address).
    pub listen_addr: String,
    pub listen_port: u16,
    /// A directory for PgBouncer's Unix socket `.s.PGSQL.<listen_port>`; empty: none.
    pub unix_socket_dir: String,
    pub pool_mode: PoolMode,
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    pub max_client_conn: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: f64,
    pub server_idle_timeout: f64,
    pub server_connect_timeout: f64,
    pub query_wait_timeout: f64,
    pub client_login_timeout: f64,
    /// How long a graceful shutdown waits for transactions in flight (PgBouncer has no such key).
    pub shutdown_timeout: f64,
    /// A server connected longer than this is closed when it is next idle.
    pub server_lifetime: f64,
    /// A client with no server and no request for this long is disconnected.
    pub client_idle_timeout: f64,
    /// A client idle inside a transaction for this long is disconnected (its server too).
    pub idle_transaction_timeout: f64,
    /// A request unanswered for this long ends the client and its server.
    pub query_timeout: f64,
    /// After a failed server login, new clients are refused for this long.
    pub server_login_retry: f64,
    /// Run on a server idle longer than `server_check_delay` before reuse; empty: no check.
    pub server_check_query: String,
    pub server_check_delay: f64,
    /// Servers per database, across users; 0: no limit.
    pub max_db_connections: usize,
    /// Servers per user, across databases; 0: no limit.
    pub max_user_connections: usize,
    pub client_tls_sslmode: ClientTlsMode,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub server_tls_sslmode: ServerTlsMode,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_reset_query: String,
    pub max_prepared_statements: usize,
    pub session_state: crate::session_state::Policy,
    pub ignore_startup_parameters: NameList,
    pub track_extra_parameters: NameList,
    #[serde(deserialize_with = "pg_bool")]
    pub log_connections: bool,
    #[serde(deserialize_with = "pg_bool")]
    pub log_disconnections: bool,
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    pub log_format: crate::logging::LogFormat,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `metrics_port = 0` turns it off.
    pub metrics_addr: String,
    pub metrics_port: u16,
    /// Users who may run every admin console command.
    pub admin_users: NameList,
    /// Users who may run the console's read-only `SHOW` commands.
    pub stats_users: NameList,
    /// This pooler's id among its peers (PgBouncer's `peer_id`), carried in every cancel key
    /// it hands out so a peer that receives the cancel can pass it here; 0: peering off.
    pub peer_id: u16,
    /// `SO_REUSEPORT` on the TCP listeners: several poolers on one host share the port and
    /// the kernel spreads connections among them (rolling restarts, more cores).
    #[serde(deserialize_with = "pg_bool")]
    pub so_reuseport: bool,
}

impl Default for PoolerSettings {
    fn default() -> Self {
        PoolerSettings {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            // PgBouncer's default is /tmp; off here so that existing configs change nothing.
            unix_socket_dir: String::new(),
            pool_mode: PoolMode::Session,
            auth_type: AuthType::Md5,
            auth_file: None,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            server_idle_timeout: 600.0,
            server_connect_timeout: 15.0,
            query_wait_timeout: 120.0,
            client_login_timeout: 60.0,
            // Kubernetes waits 30 s (terminationGracePeriodSeconds) before SIGKILL; finish first.
            shutdown_timeout: 20.0,
            server_lifetime: 3600.0,
            client_idle_timeout: 0.0,
            idle_transaction_timeout: 0.0,
            query_timeout: 0.0,
            server_login_retry: 15.0,
            server_check_query: "select 1".into(),
            server_check_delay: 30.0,
            max_db_connections: 0,
            max_user_connections: 0,
            client_tls_sslmode: ClientTlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            server_tls_sslmode: ServerTlsMode::Disable,
            server_tls_ca_file: None,
            server_reset_query: "DISCARD ALL".into(),
            max_prepared_statements: 200,
            session_state: crate::session_state::Policy::Pin,
            ignore_startup_parameters: NameList::Empty,
            track_extra_parameters: NameList::Empty,
            log_connections: true,
            log_disconnections: true,
            log_format: crate::logging::LogFormat::Text,
            // Loopback by default: metrics reveal database and user names.
            metrics_addr: "127.0.0.1".into(),
            // pgbouncer_exporter's port: the pooler replaces that exporter.
            metrics_port: 9127,
            admin_users: NameList::Empty,
            stats_users: NameList::Empty,
            peer_id: 0,
            so_reuseport: false,
        }
    }
}

/// How a key's value is written: text keys take an environment override verbatim, the others
/// parse it as a TOML value (number, boolean).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Text,
    Value,
    /// `1`/`0`, `true`/`false`, `on`/`off`, `yes`/`no` (PgBouncer writes booleans as 1 and 0).
    Bool,
}

impl PoolerSettings {
    /// Every key with its current value as text, in file order: SHOW CONFIG lists these and
    /// the environment may override exactly these.
    pub fn entries(&self) -> Vec<(&'static str, String, KeyKind)> {
        use KeyKind::{Bool, Text, Value};
        let path = |v: &Option<PathBuf>| {
            v.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let list = |v: &NameList| v.names().join(", ");
        let policy = match self.session_state {
            crate::session_state::Policy::Pin => "pin",
            crate::session_state::Policy::Warn => "warn",
            crate::session_state::Policy::Error => "error",
        };
        vec![
            ("listen_addr", self.listen_addr.clone(), Text),
            ("listen_port", self.listen_port.to_string(), Value),
            ("unix_socket_dir", self.unix_socket_dir.clone(), Text),
            ("pool_mode", self.pool_mode.as_str().into(), Text),
            ("auth_type", self.auth_type.as_str().into(), Text),
            ("auth_file", path(&self.auth_file), Text),
            ("max_client_conn", self.max_client_conn.to_string(), Value),
            (
                "default_pool_size",
                self.default_pool_size.to_string(),
                Value,
            ),
            ("min_pool_size", self.min_pool_size.to_string(), Value),
            (
                "reserve_pool_size",
                self.reserve_pool_size.to_string(),
                Value,
            ),
            (
                "reserve_pool_timeout",
                self.reserve_pool_timeout.to_string(),
                Value,
            ),
            (
                "max_db_connections",
                self.max_db_connections.to_string(),
                Value,
            ),
            (
                "max_user_connections",
                self.max_user_connections.to_string(),
                Value,
            ),
            (
                "server_idle_timeout",
                self.server_idle_timeout.to_string(),
                Value,
            ),
            ("server_lifetime", self.server_lifetime.to_string(), Value),
            (
                "server_connect_timeout",
                self.server_connect_timeout.to_string(),
                Value,
            ),
            (
                "server_login_retry",
                self.server_login_retry.to_string(),
                Value,
            ),
            ("server_check_query", self.server_check_query.clone(), Text),
            (
                "server_check_delay",
                self.server_check_delay.to_string(),
                Value,
            ),
            (
                "query_wait_timeout",
                self.query_wait_timeout.to_string(),
                Value,
            ),
            ("query_timeout", self.query_timeout.to_string(), Value),
            (
                "client_idle_timeout",
                self.client_idle_timeout.to_string(),
                Value,
            ),
            (
                "idle_transaction_timeout",
                self.idle_transaction_timeout.to_string(),
                Value,
            ),
            (
                "client_login_timeout",
                self.client_login_timeout.to_string(),
                Value,
            ),
            ("shutdown_timeout", self.shutdown_timeout.to_string(), Value),
            ("server_reset_query", self.server_reset_query.clone(), Text),
            (
                "max_prepared_statements",
                self.max_prepared_statements.to_string(),
                Value,
            ),
            ("session_state", policy.into(), Text),
            (
                "ignore_startup_parameters",
                list(&self.ignore_startup_parameters),
                Text,
            ),
            (
                "track_extra_parameters",
                list(&self.track_extra_parameters),
                Text,
            ),
            (
                "log_connections",
                u8::from(self.log_connections).to_string(),
                Bool,
            ),
            (
                "log_disconnections",
                u8::from(self.log_disconnections).to_string(),
                Bool,
            ),
            ("log_format", self.log_format.as_str().into(), Text),
            ("metrics_addr", self.metrics_addr.clone(), Text),
            ("metrics_port", self.metrics_port.to_string(), Value),
            ("admin_users", list(&self.admin_users), Text),
            ("stats_users", list(&self.stats_users), Text),
            (
                "client_tls_sslmode",
                self.client_tls_sslmode.as_str().into(),
                Text,
            ),
            (
                "client_tls_cert_file",
                path(&self.client_tls_cert_file),
                Text,
            ),
            ("client_tls_key_file", path(&self.client_tls_key_file), Text),
            (
                "server_tls_sslmode",
                self.server_tls_sslmode.as_str().into(),
                Text,
            ),
            ("server_tls_ca_file", path(&self.server_tls_ca_file), Text),
            ("peer_id", self.peer_id.to_string(), Value),
            (
                "so_reuseport",
                u8::from(self.so_reuseport).to_string(),
                Bool,
            ),
        ]
    }
}

/// Keys that take effect only at start: RELOAD keeps the running value and says so.
pub const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "log_format",
    "metrics_addr",
    "metrics_port",
    "track_extra_parameters",
    "client_tls_sslmode",
    "client_tls_cert_file",
    "client_tls_key_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    // Cancel keys already handed out carry the old id: changing it would strand them.
    "peer_id",
    "so_reuseport",
];

/// One `[databases.NAME]` entry: where the name a client asks for really lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub dbname: Option<String>,
    /// Log in to the server as this user for every client (PgBouncer's forced user).
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub reserve_pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Overrides `max_db_connections` for this database.
    pub max_db_connections: Option<usize>,
    pub session_state: Option<crate::session_state::Policy>,
}

/// One `[users.NAME]` entry (PgBouncer's `[users]` section): settings for the pools of one
/// server user. They win over the database entry's and the global ones, as in PgBouncer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    /// Overrides `max_user_connections` for this user.
    pub max_user_connections: Option<usize>,
}

/// One `[peers.ID]` entry (PgBouncer's `[peers]` section): another pooler that cancel
/// requests carrying its `peer_id` are passed to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// A host name or IP address, or a directory holding the peer's Unix socket
    /// (`.s.PGSQL.<port>`) when it starts with `/`, as in PgBouncer.
    pub host: String,
    #[serde(default = "default_peer_port")]
    pub port: u16,
    /// At most this many cancel requests in flight to the peer; default `default_pool_size`.
    pub pool_size: Option<usize>,
}

/// The largest `peer_id`: the id takes 14 bits of a cancel key (PgBouncer's maximum too).
pub const MAX_PEER_ID: u16 = 16383;

fn default_peer_port() -> u16 {
    6432
}

/// The name of the fallback database entry: clients asking for a database without an entry of
/// its own get this one, with the name they asked for as `dbname` (PgBouncer's `*`).
pub const FALLBACK_DATABASE: &str = "*";

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_pg_port() -> u16 {
    5432
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pooler: PoolerSettings,
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Other poolers by `peer_id` (TOML table keys are strings: `[peers.2]`).
    #[serde(default)]
    pub peers: BTreeMap<String, PeerConfig>,
    /// Where this config came from, so RELOAD can read it again the same way.
    #[serde(skip)]
    pub origin: Origin,
    /// Keys of a `pgbouncer.ini` that the pooler read but does not act on, one sentence each:
    /// logged at start and at RELOAD so none is dropped silently.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The file and environment overrides a config was loaded from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub path: Option<PathBuf>,
    /// `(variable, value)` pairs from the environment, applied over the file.
    pub overrides: Vec<(String, String)>,
}

/// Seconds as PgBouncer writes them; `0` (or less) means "no timeout".
pub fn secs(value: f64) -> Option<Duration> {
    (value > 0.0).then(|| Duration::from_secs_f64(value))
}

impl Config {
    /// Reads and validates a config file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_overrides(path, Vec::new())
    }

    /// Like `load`, with `POOLER_*` environment overrides (see `env`) applied on top.
    pub fn load_with_overrides(
        path: &Path,
        overrides: Vec<(String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = if ini::is_ini(path, &text) {
            let parsed = ini::parse(path, &text, &|p: &Path| std::fs::read_to_string(p))?;
            let mut config = Config::from_table(parsed.table, &file, &overrides)?;
            // The file's warnings first, then the environment's.
            config.warnings.splice(0..0, parsed.warnings);
            config
        } else {
            Config::parse_with_overrides(&text, &file, &overrides)?
        };
        if let Some(dir) = path.parent() {
            let p = &mut config.pooler;
            for file in [
                &mut p.auth_file,
                &mut p.client_tls_cert_file,
                &mut p.client_tls_key_file,
                &mut p.server_tls_ca_file,
            ] {
                if let Some(f) = file
                    && f.is_relative()
                {
                    *f = dir.join(&*f);
                }
            }
        }
        config.origin = Origin {
            path: Some(path.to_path_buf()),
            overrides,
        };
        Ok(config)
    }

    /// Reads the config again from where it came from (RELOAD).
    pub fn reload(&self) -> Result<Config, ConfigError> {
        match &self.origin.path {
            Some(path) => Config::load_with_overrides(path, self.origin.overrides.clone()),
            None => Ok(self.clone()),
        }
    }

    /// The console's `SET key = value`: this config with one `[pooler]` key changed, the value
    /// read as the environment override `POOLER_<KEY>` would be (same parsing, same
    /// validation), everything else as it is running now (the file is not read again).
    pub fn with_setting(&self, key: &str, raw: &str) -> Result<Config, ConfigError> {
        let var = format!("POOLER_{}", key.to_ascii_uppercase());
        let invalid = |message: String| ConfigError::Invalid {
            file: "SET".into(),
            message: message.replacen(&var, key, 1),
        };
        let pooler = toml::Table::try_from(&self.pooler).map_err(|e| invalid(e.to_string()))?;
        let mut table = toml::Table::new();
        table.insert("pooler".into(), toml::Value::Table(pooler));
        env::apply(&mut table, &[(var.clone(), raw.to_string())]).map_err(invalid)?;
        let section = table
            .remove("pooler")
            .ok_or_else(|| invalid("the [pooler] section went missing".into()))?;
        let pooler: PoolerSettings = section
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string().trim_end().to_string()))?;
        let mut config = self.clone();
        config.pooler = pooler;
        config.validate("SET")?;
        Ok(config)
    }

    /// Parses config text; `file` only names the source in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::parse_with_overrides(text, file, &[])
    }

    fn parse_with_overrides(
        text: &str,
        file: &str,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        if !overrides.is_empty() {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
            return Config::from_table(table, file, overrides);
        }
        // Straight from the text, so errors point at the line.
        let config: Config =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        config.validate(file)?;
        Ok(config)
    }

    /// A config from a parsed table (TOML, or a `pgbouncer.ini` turned into one), with the
    /// environment overrides applied over it, validated.
    pub fn from_table(
        mut table: toml::Table,
        file: &str,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        let warnings = env::apply(&mut table, overrides).map_err(invalid)?;
        let mut config: Config = table.try_into().map_err(|e: toml::de::Error| {
            let names: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            let message = e.to_string().trim_end().to_string();
            invalid(if names.is_empty() {
                message
            } else {
                format!(
                    "{message} (with environment overrides {})",
                    names.join(", ")
                )
            })
        })?;
        config.validate(file)?;
        config.warnings = warnings;
        Ok(config)
    }

    /// The entry for a database a client asks for: its own, or the `*` fallback with the
    /// asked-for name as `dbname` (unless the fallback names one).
    pub fn database(&self, name: &str) -> Option<Cow<'_, DatabaseConfig>> {
        // `*` itself is not a database name a client can ask for.
        if name == FALLBACK_DATABASE {
            return None;
        }
        if let Some(db) = self.databases.get(name) {
            return Some(Cow::Borrowed(db));
        }
        let fallback = self.databases.get(FALLBACK_DATABASE)?;
        let mut db = fallback.clone();
        db.dbname.get_or_insert_with(|| name.to_string());
        Some(Cow::Owned(db))
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        let p = &self.pooler;
        if p.default_pool_size == 0 {
            return Err(invalid("default_pool_size: must be at least 1".into()));
        }
        if p.max_client_conn == 0 {
            return Err(invalid("max_client_conn: must be at least 1".into()));
        }
        if p.auth_type != AuthType::Trust && p.auth_file.is_none() {
            return Err(invalid(format!(
                "auth_file: required when auth_type is not trust (auth_type = {:?})",
                p.auth_type
            )));
        }
        for (key, value) in [
            ("shutdown_timeout", p.shutdown_timeout),
            ("server_lifetime", p.server_lifetime),
            ("client_idle_timeout", p.client_idle_timeout),
            ("idle_transaction_timeout", p.idle_transaction_timeout),
            ("query_timeout", p.query_timeout),
            ("server_login_retry", p.server_login_retry),
            ("server_check_delay", p.server_check_delay),
            ("reserve_pool_timeout", p.reserve_pool_timeout),
            ("server_idle_timeout", p.server_idle_timeout),
            ("server_connect_timeout", p.server_connect_timeout),
            ("query_wait_timeout", p.query_wait_timeout),
            ("client_login_timeout", p.client_login_timeout),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(invalid(format!("{key}: must be a number of seconds >= 0")));
            }
        }
        if p.client_tls_sslmode != ClientTlsMode::Disable
            && (p.client_tls_cert_file.is_none() || p.client_tls_key_file.is_none())
        {
            return Err(invalid(format!(
                "client_tls_sslmode: {} needs client_tls_cert_file and client_tls_key_file",
                p.client_tls_sslmode.as_str()
            )));
        }
        if matches!(
            p.server_tls_sslmode,
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
        ) && p.server_tls_ca_file.is_none()
        {
            return Err(invalid(format!(
                "server_tls_sslmode: {} needs server_tls_ca_file",
                p.server_tls_sslmode.as_str()
            )));
        }
        for (name, db) in &self.databases {
            if db.pool_size == Some(0) {
                return Err(invalid(format!(
                    "databases.{name}.pool_size: must be at least 1"
                )));
            }
            if db.password.is_some() && db.user.is_none() {
                return Err(invalid(format!(
                    "databases.{name}.password: only valid together with databases.{name}.user"
                )));
            }
        }
        if p.peer_id > MAX_PEER_ID {
            return Err(invalid(format!(
                "peer_id: must be between 0 (peering off) and {MAX_PEER_ID}"
            )));
        }
        for (id, peer) in &self.peers {
            if !matches!(id.parse::<u16>(), Ok(n) if (1..=MAX_PEER_ID).contains(&n)) {
                return Err(invalid(format!(
                    "peers.{id}: a peer's id must be a number from 1 to {MAX_PEER_ID}"
                )));
            }
            if peer.host.trim().is_empty() {
                return Err(invalid(format!("peers.{id}.host: must not be empty")));
            }
            if peer.pool_size == Some(0) {
                return Err(invalid(format!("peers.{id}.pool_size: must be at least 1")));
            }
        }
        for (name, user) in &self.users {
            if user.pool_size == Some(0) {
                return Err(invalid(format!(
                    "users.{name}.pool_size: must be at least 1"
                )));
            }
        }
        Ok(())
    }

    /// The pool size of a database entry, before any user's override (SHOW DATABASES).
    pub fn pool_size(&self, db: &DatabaseConfig) -> usize {
        db.pool_size.unwrap_or(self.pooler.default_pool_size)
    }

    /// The pool size of one database's pool for `user`: the user's, the database's, or the
    /// default, in that order (PgBouncer's precedence).
    pub fn pool_size_for(&self, db: &DatabaseConfig, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.pool_size)
            .unwrap_or_else(|| self.pool_size(db))
    }

    /// The pool mode of one database's pool for `user`: the user's, the database's, or the
    /// global one.
    pub fn pool_mode(&self, db: &DatabaseConfig, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or(db.pool_mode)
            .unwrap_or(self.pooler.pool_mode)
    }

    /// The peers by id, without this pooler's own entry (PgBouncer allows it, so every
    /// pooler of a group can share one `[peers]` list) and empty while peering is off.
    pub fn peers(&self) -> BTreeMap<u16, PeerConfig> {
        if self.pooler.peer_id == 0 {
            return BTreeMap::new();
        }
        self.peers
            .iter()
            .filter_map(|(id, p)| Some((id.parse::<u16>().ok()?, p.clone())))
            .filter(|(id, _)| *id != self.pooler.peer_id)
            .collect()
    }

    /// `max_user_connections` for one user: the user's entry, or the global one.
    pub fn max_user_connections(&self, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.pooler.max_user_connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_shape_parses_with_pgbouncer_defaults() {
        let c = Config::parse(
            r#"
            [pooler]
            pool_mode = "transaction"
            auth_type = "scram-sha-256"
            auth_file = "userlist.txt"
            ignore_startup_parameters = "extra_float_digits, options"
            [databases.app]
            port = 5433
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.pooler.listen_port, 6432);
        assert_eq!(c.pooler.default_pool_size, 20);
        assert_eq!(c.pooler.pool_mode, PoolMode::Transaction);
        assert_eq!(
            c.pooler.ignore_startup_parameters.names(),
            vec!["extra_float_digits", "options"]
        );
        assert_eq!(c.databases["app"].host, "127.0.0.1");
        assert_eq!(c.databases["app"].port, 5433);
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = Config::parse(
            include_str!("../pooler.toml.example"),
            "pooler.toml.example",
        )
        .unwrap();
        assert_eq!(c.pooler.default_pool_size, 150);
        assert_eq!(c.pooler.reserve_pool_size, 10);
        assert_eq!(c.pooler.reserve_pool_timeout, 5.0);
        assert_eq!(c.pooler.max_client_conn, 10000);
        assert_eq!(c.pooler.auth_type, AuthType::ScramSha256);
    }

    #[test]
    fn shipped_example_documents_every_key() {
        let example = include_str!("../pooler.toml.example");
        for (key, _, _) in PoolerSettings::default().entries() {
            assert!(
                example.lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))),
                "pooler.toml.example does not document {key}"
            );
        }
    }

    #[test]
    fn booleans_take_pgbouncer_spellings() {
        for (v, want) in [
            ("0", false),
            ("1", true),
            ("true", true),
            ("false", false),
            ("\"yes\"", true),
            ("\"off\"", false),
        ] {
            let c = Config::parse(
                &format!("[pooler]\nauth_type = \"trust\"\nlog_connections = {v}\nlog_disconnections = {v}\n"),
                "t.toml",
            )
            .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.pooler.log_connections, want, "{v}");
            assert_eq!(c.pooler.log_disconnections, want, "{v}");
        }
        let e = Config::parse("[pooler]\nlog_connections = 2\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("log_connections"), "{e}");
    }

    #[test]
    fn peers_table() {
        let c = Config::parse(
            "[pooler]\nauth_type = \"trust\"\npeer_id = 2\n\
             [peers.1]\nhost = \"10.0.0.1\"\n[peers.2]\nhost = \"10.0.0.2\"\nport = 7000\n",
            "t.toml",
        )
        .unwrap();
        let peers = c.peers();
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            (peers[&1].host.as_str(), peers[&1].port),
            ("10.0.0.1", 6432)
        );
        // Peering off: the list is not used.
        let off = Config::parse(
            "[pooler]\nauth_type = \"trust\"\n[peers.1]\nhost = \"a\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(off.peers().is_empty());
        for (text, needle) in [
            ("[peers.1]\nport = 1\n", "host"),
            (
                "[peers.1]\nhost = \"a\"\npool_size = 0\n",
                "peers.1.pool_size",
            ),
            ("[peers.99999]\nhost = \"a\"\n", "peers.99999"),
            ("peer_id = 20000\n", "peer_id"),
        ] {
            let e = Config::parse(
                &format!("[pooler]\nauth_type = \"trust\"\n{text}"),
                "t.toml",
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err = Config::parse("[pooler]\ndefault_pool_sise = 3\n", "my.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("my.toml:"), "{msg}");
        assert!(msg.contains("default_pool_sise"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[pooler]\npool_mode = \"statement\"\n", "x.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pool_mode"), "{msg}");
        let err = Config::parse(
            "[pooler]\nauth_type=\"trust\"\ndefault_pool_size = 0\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("default_pool_size"));
    }
}
