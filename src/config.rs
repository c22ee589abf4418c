//! The configuration file: PgBouncer's ini turned into TOML.
//!
//! Key names and defaults are PgBouncer's, so a migrating user rewrites syntax, not semantics.
//! Every timeout is in seconds (fractions allowed) and `0` disables it, as in PgBouncer.
//! A `pgbouncer.ini` is read as it is (`ini`): it becomes the same TOML table a `pooler.toml`
//! parses to, so both go through one deserialisation and one validation.

pub mod env;
mod hosts;
pub mod ini;
mod settings;

pub use hosts::{LoadBalance, Ports, TargetSessionAttrs, host_list};

pub use settings::{KeyKind, PoolerSettings, RESTART_ONLY};

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
    /// The method comes from the first matching line of `auth_hba_file`.
    #[serde(rename = "hba")]
    Hba,
    /// A TLS client certificate whose CommonName is the user name (`client_tls_ca_file`).
    #[serde(rename = "cert")]
    Cert,
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
    /// As `require`, and every client must present a certificate that chains to
    /// `client_tls_ca_file` (PgBouncer's `verify-ca`; `verify-full` means the same for clients).
    #[serde(rename = "verify-ca")]
    VerifyCa,
    #[serde(rename = "verify-full")]
    VerifyFull,
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
            ClientTlsMode::VerifyCa => "verify-ca",
            ClientTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Cleartext clients are refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            ClientTlsMode::Require | ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull
        )
    }

    /// Every TLS client must present a certificate signed by `client_tls_ca_file`.
    pub fn requires_certificate(self) -> bool {
        matches!(self, ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull)
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
            AuthType::Hba => "hba",
            AuthType::Cert => "cert",
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

/// One `[databases.NAME]` entry: where the name a client asks for really lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_host")]
    pub host: String,
    /// One host, or several (`"a,b,c"`, libpq's list; see `hosts`).
    #[serde(default)]
    pub port: Ports,
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
    /// Override the global `auth_user`, `auth_query` and `auth_dbname` for clients of this
    /// database (PgBouncer's connection-string keys).
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    /// Which of the hosts the pools may use (libpq's names); default `any`.
    pub target_session_attrs: Option<TargetSessionAttrs>,
    /// How new server connections spread over the usable hosts; default `round-robin`.
    pub load_balance_hosts: Option<LoadBalance>,
    /// Seconds: a standby whose replay lags further behind is not used (0: no limit).
    pub max_replica_lag: Option<f64>,
}

impl DatabaseConfig {
    /// The entry's `(host, port)` pairs, in order (validated at load, so never empty).
    pub fn hosts(&self) -> Vec<(String, u16)> {
        host_list(&self.host, &self.port).unwrap_or_else(|_| vec![(self.host.clone(), 5432)])
    }

    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs.unwrap_or_default()
    }
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
    /// Override the global timeouts of the same names for this user's clients.
    pub query_timeout: Option<f64>,
    pub idle_transaction_timeout: Option<f64>,
    pub client_idle_timeout: Option<f64>,
    pub transaction_timeout: Option<f64>,
    pub query_wait_timeout: Option<f64>,
    /// Overrides the database's and the global `reserve_pool_size` for this user's pools.
    pub reserve_pool_size: Option<usize>,
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

/// The most session threads `workers` may ask for (a typo's guard, not a tuning limit).
pub const MAX_WORKERS: usize = 1024;

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
                &mut p.auth_hba_file,
                &mut p.client_tls_ca_file,
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
        if matches!(
            p.auth_type,
            AuthType::Plain | AuthType::Md5 | AuthType::ScramSha256
        ) && p.auth_file.is_none()
        {
            return Err(invalid(format!(
                "auth_file: required when auth_type is not trust (auth_type = {:?})",
                p.auth_type
            )));
        }
        if p.auth_type == AuthType::Hba && p.auth_hba_file.is_none() {
            return Err(invalid(
                "auth_hba_file: required when auth_type = hba".into(),
            ));
        }
        if p.auth_type == AuthType::Cert && p.client_tls_ca_file.is_none() {
            return Err(invalid(
                "client_tls_ca_file: required when auth_type = cert (client certificates \
                 are checked against it)"
                    .into(),
            ));
        }
        if p.client_tls_sslmode.requires_certificate() && p.client_tls_ca_file.is_none() {
            return Err(invalid(format!(
                "client_tls_sslmode: {} needs client_tls_ca_file",
                p.client_tls_sslmode.as_str()
            )));
        }
        if p.client_tls_ca_file.is_some() && p.client_tls_sslmode == ClientTlsMode::Disable {
            return Err(invalid(
                "client_tls_ca_file: needs client_tls_sslmode other than disable".into(),
            ));
        }
        for (key, value) in [
            ("transaction_timeout", p.transaction_timeout),
            ("query_wait_notify", p.query_wait_notify),
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
        if !p.stats_period.is_finite() || p.stats_period < 1.0 {
            return Err(invalid("stats_period: must be at least 1 second".into()));
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
            host_list(&db.host, &db.port).map_err(|e| invalid(format!("databases.{name}.{e}")))?;
            if db
                .max_replica_lag
                .is_some_and(|l| !l.is_finite() || l < 0.0)
            {
                return Err(invalid(format!(
                    "databases.{name}.max_replica_lag: must be a number of seconds >= 0"
                )));
            }
            if db.password.is_some() && db.user.is_none() {
                return Err(invalid(format!(
                    "databases.{name}.password: only valid together with databases.{name}.user"
                )));
            }
        }
        if p.workers > MAX_WORKERS {
            return Err(invalid(format!(
                "workers: must be between 0 (one per two cores) and {MAX_WORKERS}"
            )));
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
            for (key, value) in [
                ("query_timeout", user.query_timeout),
                ("idle_transaction_timeout", user.idle_transaction_timeout),
                ("client_idle_timeout", user.client_idle_timeout),
                ("transaction_timeout", user.transaction_timeout),
                ("query_wait_timeout", user.query_wait_timeout),
            ] {
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(invalid(format!(
                        "users.{name}.{key}: must be a number of seconds >= 0"
                    )));
                }
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

    /// A timeout for `user`'s clients: the user's entry if it sets one, else the global value
    /// (`pick` chooses the key in both).
    pub fn user_timeout(
        &self,
        user: &str,
        pick: impl Fn(&UserConfig) -> Option<f64>,
        global: f64,
    ) -> Option<Duration> {
        secs(self.users.get(user).and_then(pick).unwrap_or(global))
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
mod tests;
