//! The running pooler's shared state: configuration, users, pools, client count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::Control;
use crate::auth::{AuthFile, Secret, User};
use crate::config::{AuthType, Config, ConfigError, DatabaseConfig, secs};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSettings};
use crate::prepared::Registry;
use crate::registry::ClientRegistry;
use crate::server::{ServerCredential, ServerTarget};

/// Startup parameters a client may set that the pooler keeps true on every server it uses.
pub const TRACKED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "search_path",
];

pub struct App {
    pub config: Config,
    pub users: AuthFile,
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
    clients: AtomicUsize,
    /// Canonical names of tracked parameters (built-in plus `track_extra_parameters`).
    pub tracked: Vec<String>,
    pub ignored: Vec<String>,
    /// Server-side names of protocol-level prepared statements, pooler-wide.
    pub statements: Registry,
    pub metrics: Metrics,
    pub clients_registry: Arc<ClientRegistry>,
    /// PAUSE state, shutdown and readiness, driven by the admin console.
    pub control: Control,
}

/// Counts a connected client for `max_client_conn`; dropping it uncounts.
pub struct ClientSlot {
    app: Arc<App>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.app.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl App {
    pub fn new(config: Config) -> Result<App, ConfigError> {
        let users = match (&config.pooler.auth_file, config.pooler.auth_type) {
            (Some(path), _) => AuthFile::load(path)?,
            (None, AuthType::Trust) => AuthFile::default(),
            (None, _) => unreachable!("config validation requires auth_file"),
        };
        let mut tracked: Vec<String> = TRACKED_PARAMETERS.iter().map(|s| s.to_string()).collect();
        for extra in config.pooler.track_extra_parameters.names() {
            if !tracked.iter().any(|t| t.eq_ignore_ascii_case(&extra)) {
                tracked.push(extra);
            }
        }
        let ignored = config.pooler.ignore_startup_parameters.names();
        Ok(App {
            config,
            users,
            pools: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            tracked,
            ignored,
            statements: Registry::default(),
            metrics: Metrics::new(),
            clients_registry: Arc::default(),
            control: Control::default(),
        })
    }

    /// Counts a new client connection.
    pub fn client_connected(self: &Arc<Self>) -> (ClientSlot, usize) {
        let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        (ClientSlot { app: self.clone() }, n)
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// The canonical name of a tracked parameter, if `name` is one.
    pub fn tracked_name(&self, name: &str) -> Option<&str> {
        self.tracked
            .iter()
            .find(|t| t.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    pub fn is_ignored(&self, name: &str) -> bool {
        self.ignored.iter().any(|i| i.eq_ignore_ascii_case(name))
    }

    /// The pool for a database entry and client user; created on first use.
    pub fn pool(&self, db_name: &str, db: &DatabaseConfig, client_user: &User) -> Arc<Pool> {
        let server_user = db.user.clone().unwrap_or_else(|| client_user.name.clone());
        let key = (db_name.to_string(), server_user.clone());
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&key) {
            return pool.clone();
        }
        let credential = match (&db.user, &db.password) {
            (Some(_), Some(p)) => ServerCredential::Password(p.clone()),
            (Some(forced), None) => self
                .users
                .get(forced)
                .map(|u| credential_from(&u.secret))
                .unwrap_or_default(),
            (None, _) => credential_from(&client_user.secret),
        };
        let p = &self.config.pooler;
        let settings = PoolSettings {
            pool_size: self.config.pool_size(db),
            reserve_size: db.reserve_pool_size.unwrap_or(p.reserve_pool_size),
            min_pool_size: db.min_pool_size.unwrap_or(p.min_pool_size),
            reserve_timeout: secs(p.reserve_pool_timeout),
            query_wait_timeout: secs(p.query_wait_timeout),
            connect_timeout: secs(p.server_connect_timeout),
            idle_timeout: secs(p.server_idle_timeout),
            mode: db.pool_mode.unwrap_or(p.pool_mode),
            reset_query: p.server_reset_query.clone(),
            session_state: db.session_state.unwrap_or(p.session_state),
        };
        let target = ServerTarget {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone().unwrap_or_else(|| db_name.to_string()),
            user: server_user.clone(),
        };
        let stats = self.metrics.pool_stats(db_name, &server_user);
        let pool = Pool::new(
            db_name.to_string(),
            server_user,
            target,
            settings,
            credential,
            stats,
        );
        if self.control.is_paused(db_name) {
            pool.pause();
        }
        pools.insert(key, pool.clone());
        pool
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = pools.values().cloned().collect();
        list.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        list
    }
}

/// What an auth-file secret lets the pooler answer when Postgres asks for a password.
/// A SCRAM secret alone is not enough: the keys arrive when a client logs in with SCRAM.
fn credential_from(secret: &Secret) -> ServerCredential {
    match secret {
        Secret::Plain(p) => ServerCredential::Password(p.clone()),
        Secret::Md5(m) => ServerCredential::Md5(m.clone()),
        Secret::Scram(_) => ServerCredential::None,
    }
}
