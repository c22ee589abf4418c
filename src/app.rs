//! The running pooler's shared state: configuration, users, pools, client count.
//!
//! The configuration and the auth file sit behind `RwLock<Arc<_>>`: a reader clones the `Arc`
//! (at login, at session start) and RELOAD swaps in a new one. Pools keep their own copy of
//! their sizes and timeouts, updated in place by RELOAD, so the per-transaction path reads
//! nothing shared beyond its pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::auth::hba::Hba;
use crate::auth::{AuthFile, Secret, User};
use crate::config::{
    AuthType, Config, ConfigError, DatabaseConfig, RESTART_ONLY, TargetSessionAttrs, secs,
};
use crate::lifecycle::Control;
use crate::limits::{ConnLimit, Evict, PoolLimitsShared};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::pool::{HostPolicy, Pool, PoolLimits, PoolSettings};
use crate::prepared::Registry;
use crate::registry::ClientRegistry;
use crate::server::{ServerCredential, ServerTarget};
use crate::tls::{ClientTls, ServerTls};

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

/// Pools by database, then server user. Hashed with foldhash, not SipHash (two string hashes
/// per login): only an authenticated login adds a pool, so no client can flood it.
type PoolMap = HashMap<String, HashMap<String, Arc<Pool>, FoldHash>, FoldHash>;
type FoldHash = foldhash::fast::RandomState;

pub struct App {
    config: RwLock<Arc<Config>>,
    /// Bumped by each RELOAD: sessions re-read their timeouts when it moves.
    generation: AtomicU64,
    users: RwLock<Arc<AuthFile>>,
    /// `auth_hba_file`'s rules, read with the auth file (and again by RELOAD).
    hba: RwLock<Arc<Hba>>,
    /// By database name, then by server user: looked up with the login's names as they are,
    /// no key built per login.
    pools: Mutex<PoolMap>,
    /// `max_db_connections` by database name, `max_user_connections` by user name.
    conn_limits: Mutex<ConnLimits>,
    clients: AtomicUsize,
    /// Canonical names of tracked parameters (built-in plus `track_extra_parameters`); fixed
    /// at start, as sessions' parameter lists are built on it.
    pub tracked: Vec<String>,
    /// Server-side names of protocol-level prepared statements, pooler-wide.
    pub statements: Registry,
    pub metrics: Metrics,
    pub clients_registry: Arc<ClientRegistry>,
    /// Other poolers that cancel requests carrying their `peer_id` are passed to.
    pub peers: Peers,
    /// PAUSE state, shutdown and readiness, driven by the admin console and signals.
    pub control: Control,
    /// TLS towards clients and towards Postgres; None when off. Fixed at start.
    pub client_tls: Option<ClientTls>,
    server_tls: Option<Arc<ServerTls>>,
}

#[derive(Default)]
struct ConnLimits {
    databases: HashMap<String, Arc<ConnLimit>>,
    users: HashMap<String, Arc<ConnLimit>>,
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

/// What a RELOAD changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Keys whose new values wait for a restart.
    pub restart_needed: Vec<String>,
    /// Pools that new clients will not get any more (database gone or its server changed);
    /// their connected clients finish on them.
    pub retired_pools: usize,
}

fn load_users(config: &Config) -> Result<AuthFile, ConfigError> {
    match (&config.pooler.auth_file, config.pooler.auth_type) {
        (Some(path), _) => AuthFile::load(path),
        // Validation requires auth_file for the password methods; with hba or cert, users
        // not in a file can still log in by trust or certificate lines.
        (None, _) => Ok(AuthFile::default()),
    }
}

fn load_hba(config: &Config) -> Result<Hba, ConfigError> {
    match (&config.pooler.auth_hba_file, config.pooler.auth_type) {
        (Some(path), AuthType::Hba) => Hba::load(path),
        _ => Ok(Hba::default()),
    }
}

/// The sizes and timeouts of one database's pool for `user` under `config`.
fn limits_for(config: &Config, db: &DatabaseConfig, user: &str) -> PoolLimits {
    let p = &config.pooler;
    PoolLimits {
        pool_size: config.pool_size_for(db, user),
        reserve_size: config
            .users
            .get(user)
            .and_then(|u| u.reserve_pool_size)
            .or(db.reserve_pool_size)
            .unwrap_or(p.reserve_pool_size),
        min_pool_size: db.min_pool_size.unwrap_or(p.min_pool_size),
        reserve_timeout: secs(p.reserve_pool_timeout),
        query_wait_timeout: config.user_timeout(
            user,
            |u| u.query_wait_timeout,
            p.query_wait_timeout,
        ),
        query_wait_notify: secs(p.query_wait_notify),
        connect_timeout: secs(p.server_connect_timeout),
        query_timeout: config.user_timeout(user, |u| u.query_timeout, p.query_timeout),
        idle_timeout: secs(p.server_idle_timeout),
        lifetime: secs(p.server_lifetime),
        login_retry: secs(p.server_login_retry),
        check_query: p.server_check_query.trim().into(),
        check_delay: Duration::from_secs_f64(p.server_check_delay.max(0.0)),
    }
}

fn settings_for(config: &Config, db: &DatabaseConfig, user: &str) -> PoolSettings {
    PoolSettings {
        mode: config.pool_mode(db, user),
        reset_query: config.pooler.server_reset_query.clone(),
        session_state: db.session_state.unwrap_or(config.pooler.session_state),
    }
}

fn target_for(
    db_name: &str,
    db: &DatabaseConfig,
    server_user: &str,
    tls: Option<Arc<ServerTls>>,
) -> ServerTarget {
    ServerTarget {
        tls,
        hosts: db.hosts(),
        host: db
            .hosts()
            .first()
            .map_or_else(|| db.host.clone(), |h| h.0.clone()),
        port: db.hosts().first().map_or(5432, |h| h.1),
        dbname: db.dbname.clone().unwrap_or_else(|| db_name.to_string()),
        user: server_user.to_string(),
    }
}

/// How a pool of `db` chooses among its hosts; None for one host taken as it is.
fn policy_for(db: &DatabaseConfig) -> Option<HostPolicy> {
    let attrs = db.target_session_attrs();
    (db.hosts().len() > 1 || attrs != TargetSessionAttrs::Any).then(|| HostPolicy {
        attrs,
        load_balance: db.load_balance_hosts.unwrap_or_default(),
        max_lag: db.max_replica_lag.and_then(secs),
    })
}

/// The credential a pool logs in with, from the database entry and the auth file; `client` is
/// the client user's secret when the database has no forced user.
fn credential_for(
    db: &DatabaseConfig,
    users: &AuthFile,
    client: Option<&Secret>,
) -> ServerCredential {
    match (&db.user, &db.password) {
        (Some(_), Some(p)) => ServerCredential::Password(p.clone()),
        (Some(forced), None) => users
            .get(forced)
            .map(|u| credential_from(&u.secret))
            .unwrap_or_default(),
        (None, _) => client.map(credential_from).unwrap_or_default(),
    }
}

/// Eviction between pools sharing a `max_db_connections`/`max_user_connections` limit goes
/// through `limits::Evict`, so that `limits` (below the pool) never names `Pool`. The App is
/// where pools meet their shared limits (`shared_limits`), so the two are joined here.
impl Evict for Pool {
    fn evict_one_idle(&self) -> bool {
        Pool::evict_one_idle(self)
    }
}

impl App {
    pub fn new(config: Config) -> Result<App, ConfigError> {
        let users = load_users(&config)?;
        let hba = load_hba(&config)?;
        crate::keepalive::configure(&config.pooler);
        crate::stats::set_period(config.pooler.stats_period);
        let mut tracked: Vec<String> = TRACKED_PARAMETERS.iter().map(|s| s.to_string()).collect();
        for extra in config.pooler.track_extra_parameters.names() {
            if !tracked.iter().any(|t| t.eq_ignore_ascii_case(&extra)) {
                tracked.push(extra);
            }
        }
        let client_tls = ClientTls::from_settings(&config.pooler)?;
        let server_tls = ServerTls::from_settings(&config.pooler)?;
        let peers = Peers::new(&config);
        Ok(App {
            client_tls,
            server_tls,
            config: RwLock::new(Arc::new(config)),
            generation: AtomicU64::new(0),
            users: RwLock::new(Arc::new(users)),
            hba: RwLock::new(Arc::new(hba)),
            pools: Mutex::new(PoolMap::default()),
            conn_limits: Mutex::default(),
            clients: AtomicUsize::new(0),
            tracked,
            statements: Registry::default(),
            metrics: Metrics::new(),
            clients_registry: Arc::new(ClientRegistry::new(peers.own_id())),
            peers,
            control: Control::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes whenever RELOAD applies a new config.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The auth file in force.
    pub fn users(&self) -> Arc<AuthFile> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The HBA rules in force (empty unless `auth_type = hba`).
    pub fn hba(&self) -> Arc<Hba> {
        self.hba.read().unwrap_or_else(|e| e.into_inner()).clone()
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

    /// Whether a startup parameter is in `ignore_startup_parameters` (read at login).
    pub fn is_ignored(&self, name: &str) -> bool {
        self.config()
            .pooler
            .ignore_startup_parameters
            .names()
            .iter()
            .any(|i| i.eq_ignore_ascii_case(name))
    }

    fn shared_limits(&self, config: &Config, db_name: &str, user: &str) -> PoolLimitsShared {
        let mut l = self.conn_limits.lock().unwrap_or_else(|e| e.into_inner());
        let db_max = config
            .database(db_name)
            .and_then(|d| d.max_db_connections)
            .unwrap_or(config.pooler.max_db_connections);
        let user_max = config.max_user_connections(user);
        PoolLimitsShared {
            database: l
                .databases
                .entry(db_name.to_string())
                .or_insert_with(|| ConnLimit::new(db_max))
                .clone(),
            user: l
                .users
                .entry(user.to_string())
                .or_insert_with(|| ConnLimit::new(user_max))
                .clone(),
        }
    }

    /// The pool for a database entry and client user; created on first use.
    pub fn pool(&self, db_name: &str, db: &DatabaseConfig, client_user: &User) -> Arc<Pool> {
        let server_user = db.user.as_deref().unwrap_or(&client_user.name);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools
            .get(db_name)
            .and_then(|by_user| by_user.get(server_user))
        {
            return pool.clone();
        }
        let server_user = server_user.to_string();
        let config = self.config();
        let credential = credential_for(db, &self.users(), Some(&client_user.secret));
        let stats = self.metrics.pool_stats();
        let pool = Pool::new(
            db_name.to_string(),
            server_user.clone(),
            target_for(db_name, db, &server_user, self.server_tls.clone()),
            settings_for(&config, db, &server_user),
            limits_for(&config, db, &server_user),
            self.shared_limits(&config, db_name, &server_user),
            credential,
            stats,
            policy_for(db),
        );
        if self.control.is_paused(db_name) {
            pool.pause();
        }
        pools
            .entry(db_name.to_string())
            .or_default()
            .insert(server_user, pool.clone());
        pool
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = pools.values().flat_map(|u| u.values().cloned()).collect();
        list.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        list
    }

    /// RELOAD (SIGHUP or the console): reads the config file and the auth file again and
    /// applies them without dropping anyone. A file that does not parse or validate changes
    /// nothing. Sizes and timeouts change in place; a pool whose server or mode changed is
    /// retired (new clients get a new one, connected ones finish on it); keys that need a
    /// restart keep their running values and are reported.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let new = self.config().reload()?;
        self.apply(new)
    }

    /// The console's `SET key = value`: applied exactly as a RELOAD that changed only that key
    /// (the config file is not read again; the auth file is, as RELOAD does).
    pub fn set(&self, key: &str, value: &str) -> Result<ReloadReport, ConfigError> {
        let new = self.config().with_setting(key, value)?;
        self.apply(new)
    }

    /// Swaps in a new, valid config (and the auth file it names) the way RELOAD does.
    fn apply(&self, mut new: Config) -> Result<ReloadReport, ConfigError> {
        let old = self.config();
        let users = load_users(&new)?;
        let hba = load_hba(&new)?;
        let mut report = ReloadReport::default();
        let old_entries = old.pooler.entries();
        for ((key, old_value, _), (_, new_value, _)) in
            old_entries.iter().zip(new.pooler.entries().iter())
        {
            if RESTART_ONLY.contains(key) && old_value != new_value {
                report.restart_needed.push((*key).to_string());
            }
        }
        if !report.restart_needed.is_empty() {
            // Keep what is running true in SHOW CONFIG.
            let p = &mut new.pooler;
            let o = &old.pooler;
            p.listen_addr = o.listen_addr.clone();
            p.listen_port = o.listen_port;
            p.unix_socket_dir = o.unix_socket_dir.clone();
            p.log_format = o.log_format;
            p.metrics_addr = o.metrics_addr.clone();
            p.metrics_port = o.metrics_port;
            p.track_extra_parameters = o.track_extra_parameters.clone();
            p.client_tls_sslmode = o.client_tls_sslmode;
            p.client_tls_cert_file = o.client_tls_cert_file.clone();
            p.client_tls_key_file = o.client_tls_key_file.clone();
            p.client_tls_ca_file = o.client_tls_ca_file.clone();
            p.server_tls_sslmode = o.server_tls_sslmode;
            p.server_tls_ca_file = o.server_tls_ca_file.clone();
            p.peer_id = o.peer_id;
            p.so_reuseport = o.so_reuseport;
        }
        let old_users = self.users();
        let new = Arc::new(new);
        let users = Arc::new(users);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users.clone();
        *self.hba.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(hba);
        crate::keepalive::configure(&new.pooler);
        crate::stats::set_period(new.pooler.stats_period);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.peers.apply(&new);
        {
            let l = self.conn_limits.lock().unwrap_or_else(|e| e.into_inner());
            for (name, limit) in &l.databases {
                let max = new
                    .database(name)
                    .and_then(|d| d.max_db_connections)
                    .unwrap_or(new.pooler.max_db_connections);
                limit.set_max(max);
            }
            for (user, limit) in &l.users {
                limit.set_max(new.max_user_connections(user));
            }
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let count = |pools: &PoolMap| pools.values().map(HashMap::len).sum::<usize>();
        let before = count(&pools);
        pools.retain(|db_name, by_user| {
            let Some(db) = new.database(db_name) else {
                return false;
            };
            by_user.retain(|_, pool| {
                let db = &*db;
                let old_db = old.database(db_name);
                let old_db = old_db.as_deref();
                let settings = settings_for(&new, db, &pool.user);
                let target = target_for(db_name, db, &pool.user, None);
                let same_server = old_db.map(|d| &d.user) == Some(&db.user)
                    && target.hosts == pool.target.hosts
                    && policy_for(db) == pool.hosts.as_ref().map(|h| h.policy.clone())
                    && target.dbname == pool.target.dbname
                    && db.user.as_deref().is_none_or(|u| u == pool.user)
                    && settings.mode == pool.settings.mode
                    && settings.reset_query == pool.settings.reset_query
                    && settings.session_state == pool.settings.session_state;
                if !same_server {
                    return false;
                }
                pool.set_limits(limits_for(&new, db, &pool.user));
                let secret = |users: &AuthFile| users.get(&pool.user).map(|u| u.secret.clone());
                let password_changed = old_db.map(|d| (&d.user, &d.password))
                    != Some((&db.user, &db.password))
                    || secret(&old_users) != secret(&users);
                if password_changed {
                    let client_secret = users.get(&pool.user).map(|u| u.secret.clone());
                    pool.set_credential(credential_for(db, &users, client_secret.as_ref()));
                }
                true
            });
            !by_user.is_empty()
        });
        report.retired_pools = before - count(&pools);
        Ok(report)
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
