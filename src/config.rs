//! The configuration file: PgBouncer's ini turned into TOML.
//!
//! Key names and defaults are PgBouncer's, so a migrating user rewrites syntax, not semantics.
//! Every timeout is in seconds (fractions allowed) and `0` disables it, as in PgBouncer.

use serde::Deserialize;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// A list that may be written as PgBouncer writes it (`"a, b"`) or as a TOML array.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum NameList {
    #[default]
    Empty,
    Csv(String),
    List(Vec<String>),
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

/// The `[pooler]` section: PgBouncer's `[pgbouncer]` section, same keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolerSettings {
    pub listen_addr: String,
    pub listen_port: u16,
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
    pub server_reset_query: String,
    pub max_prepared_statements: usize,
    pub session_state: crate::session_state::Policy,
    pub ignore_startup_parameters: NameList,
    pub track_extra_parameters: NameList,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `metrics_port = 0` turns it off.
    pub metrics_addr: String,
    pub metrics_port: u16,
    /// Users who may run every admin console command.
    pub admin_users: NameList,
    /// Users who may run the console's read-only `SHOW` commands.
    pub stats_users: NameList,
}

impl Default for PoolerSettings {
    fn default() -> Self {
        PoolerSettings {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
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
            server_reset_query: "DISCARD ALL".into(),
            max_prepared_statements: 200,
            session_state: crate::session_state::Policy::Pin,
            ignore_startup_parameters: NameList::Empty,
            track_extra_parameters: NameList::Empty,
            log_connections: true,
            log_disconnections: true,
            // Loopback by default: metrics reveal database and user names.
            metrics_addr: "127.0.0.1".into(),
            // pgbouncer_exporter's port: the pooler replaces that exporter.
            metrics_port: 9127,
            admin_users: NameList::Empty,
            stats_users: NameList::Empty,
        }
    }
}

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
    pub session_state: Option<crate::session_state::Policy>,
}

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
}

/// Seconds as PgBouncer writes them; `0` (or less) means "no timeout".
pub fn secs(value: f64) -> Option<Duration> {
    (value > 0.0).then(|| Duration::from_secs_f64(value))
}

impl Config {
    /// Reads and validates a config file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Config::parse(&text, &file)?;
        if let (Some(auth), Some(dir)) = (&config.pooler.auth_file, path.parent())
            && auth.is_relative()
        {
            config.pooler.auth_file = Some(dir.join(auth));
        }
        Ok(config)
    }

    /// Parses config text; `file` only names the source in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(file)?;
        Ok(config)
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
        Ok(())
    }

    /// The pool limits of one database, with per-database overrides applied.
    pub fn pool_size(&self, db: &DatabaseConfig) -> usize {
        db.pool_size.unwrap_or(self.pooler.default_pool_size)
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
