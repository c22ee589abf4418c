//! The `[pooler]` section's keys, their PgBouncer defaults, and the one list of every key with
//! its value as text (`PoolerSettings::entries`) that SHOW CONFIG, the console's SET and the
//! environment overrides all go through. Apart from `config.rs` so that the file holding the
//! other sections, loading and validation stays readable.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::{AuthType, ClientTlsMode, NameList, PoolMode, ServerTlsMode};

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
            super::ini::parse_bool(v)
                .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
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
    /// `auth_type = hba`: PgBouncer's HBA subset, read from this file (reloaded by RELOAD).
    pub auth_hba_file: Option<PathBuf>,
    /// A user missing from `auth_file` is looked up in Postgres with `auth_query`, connecting
    /// as this user (its password from `auth_file`); empty: off.
    pub auth_user: String,
    /// Returns (name, secret) for `$1`; a NULL secret (an expired role) never logs in.
    pub auth_query: String,
    /// The `[databases]` entry `auth_query` runs in; empty: the one the client asked for.
    pub auth_dbname: String,
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
    /// A transaction open this long ends its client and its server (PgBouncer 1.23).
    pub transaction_timeout: f64,
    /// A client queued this long for a server is sent a NOTICE saying so; 0: never.
    pub query_wait_notify: f64,
    /// How often the averages of SHOW STATS are recomputed.
    pub stats_period: f64,
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
    /// CA that client certificates must chain to; set: certificates are asked for
    /// (`auth_type = cert` or an HBA `cert` line requires one).
    pub client_tls_ca_file: Option<PathBuf>,
    pub server_tls_sslmode: ServerTlsMode,
    pub server_tls_ca_file: Option<PathBuf>,
    pub server_reset_query: String,
    /// Run `server_reset_query` in transaction mode too, after every transaction.
    #[serde(deserialize_with = "pg_bool")]
    pub server_reset_query_always: bool,
    /// Append the client's address and port to its `application_name` at login.
    #[serde(deserialize_with = "pg_bool")]
    pub application_name_add_host: bool,
    /// TCP keepalive on client and server sockets, with the three counts below (0: the
    /// system's default) and `tcp_user_timeout` (milliseconds; 0: the system's default).
    #[serde(deserialize_with = "pg_bool")]
    pub tcp_keepalive: bool,
    pub tcp_keepcnt: u32,
    pub tcp_keepidle: u32,
    pub tcp_keepintvl: u32,
    pub tcp_user_timeout: u32,
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
    /// Threads that run sessions (Odyssey's and PgDog's `workers`), each a single-threaded
    /// runtime of its own (`workers.rs`); 0: one per two cores (so one, on the main thread,
    /// up to three cores). With 1 everything runs on the main thread, as in PgBouncer.
    pub workers: usize,
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
            auth_hba_file: None,
            auth_user: String::new(),
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: String::new(),
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
            transaction_timeout: 0.0,
            query_wait_notify: 5.0,
            stats_period: 60.0,
            server_login_retry: 15.0,
            server_check_query: "select 1".into(),
            server_check_delay: 30.0,
            max_db_connections: 0,
            max_user_connections: 0,
            client_tls_sslmode: ClientTlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            server_tls_sslmode: ServerTlsMode::Disable,
            server_tls_ca_file: None,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            application_name_add_host: false,
            tcp_keepalive: true,
            tcp_keepcnt: 0,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_user_timeout: 0,
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
            workers: 0,
        }
    }
}

/// PgBouncer's default `auth_query`: an expired role (`rolvaliduntil` past) gets a NULL
/// secret, so it cannot log in.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

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
            ("auth_hba_file", path(&self.auth_hba_file), Text),
            ("auth_user", self.auth_user.clone(), Text),
            ("auth_query", self.auth_query.clone(), Text),
            ("auth_dbname", self.auth_dbname.clone(), Text),
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
                "transaction_timeout",
                self.transaction_timeout.to_string(),
                Value,
            ),
            (
                "query_wait_notify",
                self.query_wait_notify.to_string(),
                Value,
            ),
            ("stats_period", self.stats_period.to_string(), Value),
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
                "server_reset_query_always",
                u8::from(self.server_reset_query_always).to_string(),
                Bool,
            ),
            (
                "application_name_add_host",
                u8::from(self.application_name_add_host).to_string(),
                Bool,
            ),
            (
                "tcp_keepalive",
                u8::from(self.tcp_keepalive).to_string(),
                Bool,
            ),
            ("tcp_keepcnt", self.tcp_keepcnt.to_string(), Value),
            ("tcp_keepidle", self.tcp_keepidle.to_string(), Value),
            ("tcp_keepintvl", self.tcp_keepintvl.to_string(), Value),
            ("tcp_user_timeout", self.tcp_user_timeout.to_string(), Value),
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
            ("client_tls_ca_file", path(&self.client_tls_ca_file), Text),
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
            ("workers", self.workers.to_string(), Value),
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
    "client_tls_ca_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    // Cancel keys already handed out carry the old id: changing it would strand them.
    "peer_id",
    "so_reuseport",
    // The runtime's threads are started once.
    "workers",
];
