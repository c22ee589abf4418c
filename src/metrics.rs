//! Every metric name in one place, with its help text, and the App's own Prometheus recorder:
//! the error counts recorded as things happen, and the gauges and totals the
//! scrape copies in (`http::render`, which reads the App; this module does not, so the App can
//! own a `Metrics`).
//!
//! The recorder is the App's own (not the process-global one), so several poolers in one
//! process (the tests) keep separate numbers. Gauges and totals are not updated on the client
//! path: at scrape time they are copied from the pools' counts and atomics into the recorder,
//! which renders them. The two histograms are recorded once per transaction into the pool's
//! own `stats::Buckets` and written as text at the scrape (`histogram_text`). Names follow prometheus-community/pgbouncer_exporter with `pooler_` for
//! `pgbouncer_`, so dashboards port by swapping the prefix.

use std::fmt::Write as _;

use metrics::{Counter, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::PoolerError;
use crate::stats::{Buckets, PoolStats};

// Per pool, labels `database` and `user`. pgbouncer_exporter's names and meanings (SHOW POOLS).
pub const CLIENT_ACTIVE: &str = "pooler_pools_client_active_connections";
pub const CLIENT_WAITING: &str = "pooler_pools_client_waiting_connections";
pub const CLIENT_IDLE: &str = "pooler_pools_client_idle_connections";
pub const SERVER_ACTIVE: &str = "pooler_pools_server_active_connections";
pub const SERVER_IDLE: &str = "pooler_pools_server_idle_connections";
pub const SERVER_USED: &str = "pooler_pools_server_used_connections";
pub const SERVER_LOGIN: &str = "pooler_pools_server_login_connections";
pub const CLIENT_MAXWAIT: &str = "pooler_pools_client_maxwait_seconds";
pub const POOL_SIZE: &str = "pooler_pools_pool_size";
pub const RESERVE_SIZE: &str = "pooler_pools_reserve_pool_size";
pub const RESERVE_ACTIVE: &str = "pooler_pools_reserve_active_connections";
pub const POOL_PAUSED: &str = "pooler_pools_paused";
pub const SERVER_REACHABLE: &str = "pooler_pools_server_reachable";
// Per host of a pool with several hosts (or a role to check): labels `database`, `user`,
// `host` (`address:port`), and `role` for the first.
pub const HOST_USABLE: &str = "pooler_host_usable";
pub const HOST_LAG: &str = "pooler_host_replica_lag_seconds";
pub const HOST_DOWNS: &str = "pooler_host_down_total";
pub const HOST_SERVERS: &str = "pooler_host_servers";
/// Per pool with several hosts: 1 while more than one of its hosts is a primary.
pub const SPLIT_BRAIN: &str = "pooler_split_brain";
// Per pool totals (SHOW STATS).
pub const QUERIES: &str = "pooler_stats_totals_queries_pooled_total";
pub const TRANSACTIONS: &str = "pooler_stats_totals_sql_transactions_pooled_total";
pub const CLIENT_WAIT_TOTAL: &str = "pooler_stats_totals_client_wait_seconds_total";
pub const RECEIVED: &str = "pooler_stats_totals_received_bytes_total";
pub const SENT: &str = "pooler_stats_totals_sent_bytes_total";
pub const ASSIGNMENTS: &str = "pooler_stats_totals_server_assignments_total";
// Per pool, beyond PgBouncer.
pub const WAIT_HISTOGRAM: &str = "pooler_client_wait_seconds";
pub const XACT_HISTOGRAM: &str = "pooler_transaction_duration_seconds";
pub const SERVERS_OPENED: &str = "pooler_server_connections_opened_total";
pub const SERVERS_CLOSED: &str = "pooler_server_connections_closed_total";
pub const CONNECT_FAILURES: &str = "pooler_server_connect_failures_total";
pub const SESSION_STATE: &str = "pooler_session_state_total";
// Global.
/// Exporter series the pooler has no use of its own for, kept so dashboards built on
/// pgbouncer_exporter port by swapping the prefix: SHOW LISTS' counts, the per-database
/// settings of SHOW DATABASES, PgBouncer's cancel/testing states (always 0 here) and the
/// transaction time.
pub const XACT_SECONDS_TOTAL: &str = "pooler_stats_totals_server_in_transaction_seconds_total";
pub const SERVER_TESTING: &str = "pooler_pools_server_testing_connections";
pub const CLIENT_ACTIVE_CANCEL: &str = "pooler_pools_client_active_cancel_connections";
pub const CLIENT_WAITING_CANCEL: &str = "pooler_pools_client_waiting_cancel_connections";
pub const SERVER_ACTIVE_CANCEL: &str = "pooler_pools_server_active_cancel_connections";
pub const SERVER_BEING_CANCELED: &str = "pooler_pools_server_being_canceled_connections";
pub const DB_POOL_SIZE: &str = "pooler_databases_pool_size";
pub const DB_RESERVE_POOL: &str = "pooler_databases_reserve_pool";
pub const DB_MAX_CONNECTIONS: &str = "pooler_databases_max_connections";
pub const DB_CURRENT_CONNECTIONS: &str = "pooler_databases_current_connections";
pub const DB_PAUSED: &str = "pooler_databases_paused";
pub const DB_DISABLED: &str = "pooler_databases_disabled";
pub const MAX_USER_CONN: &str = "pooler_config_max_user_connections";
pub const USERS: &str = "pooler_users";
pub const LOGIN_CLIENTS: &str = "pooler_login_clients";
pub const USED_SERVERS: &str = "pooler_used_servers";
pub const FREE_CLIENTS: &str = "pooler_free_clients";
pub const FREE_SERVERS: &str = "pooler_free_servers";
pub const CACHED_DNS_NAMES: &str = "pooler_cached_dns_names";
pub const CACHED_DNS_ZONES: &str = "pooler_cached_dns_zones";
pub const IN_FLIGHT_DNS: &str = "pooler_in_flight_dns_queries";
pub const VERSION_INFO: &str = "pooler_version_info";
pub const CLIENT_CONNECTIONS: &str = "pooler_client_connections";

pub const UP: &str = "pooler_up";
pub const BUILD_INFO: &str = "pooler_build_info";
pub const MAX_CLIENT_CONN: &str = "pooler_config_max_client_connections";
pub const USED_CLIENTS: &str = "pooler_used_clients";
pub const POOLS: &str = "pooler_pools";
pub const DATABASES: &str = "pooler_databases";
pub const ERRORS: &str = "pooler_errors_total";
// Per peer, label `peer_id`.
pub const PEER_FORWARDED: &str = "pooler_peer_cancels_forwarded_total";
pub const PEER_FAILED: &str = "pooler_peer_cancel_forward_failures_total";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric with its help text (rendered as `# HELP`, and listed in the README).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        CLIENT_ACTIVE,
        "Clients logged in and not waiting for a server (PgBouncer's cl_active: linked to a server or idle)",
    ),
    (CLIENT_WAITING, "Clients queued for a server (cl_waiting)"),
    (
        CLIENT_IDLE,
        "Clients logged in with no server and no request pending",
    ),
    (
        SERVER_ACTIVE,
        "Server connections linked to a client (sv_active)",
    ),
    (SERVER_IDLE, "Server connections idle in the pool (sv_idle)"),
    (
        SERVER_USED,
        "Server connections waiting for a check before reuse (sv_used; always 0: servers are probed at checkout)",
    ),
    (SERVER_LOGIN, "Server connections being opened (sv_login)"),
    (
        CLIENT_MAXWAIT,
        "How long the oldest waiting client has waited (maxwait)",
    ),
    (POOL_SIZE, "Configured pool size"),
    (RESERVE_SIZE, "Configured reserve pool size"),
    (
        RESERVE_ACTIVE,
        "Server connections open beyond the pool size (reserve in use)",
    ),
    (POOL_PAUSED, "1 while the pool is paused (PAUSE or KILL)"),
    (
        SERVER_REACHABLE,
        "0 while the server looks unreachable: the last attempt to open one failed and no server has answered since",
    ),
    (
        HOST_USABLE,
        "1 while the host may take the pool's new server connections (its role, as the health check last saw it, fits target_session_attrs)",
    ),
    (
        HOST_LAG,
        "A standby's replay lag as the health check last measured it",
    ),
    (
        HOST_DOWNS,
        "Times the host was marked down (a connection or health check failed)",
    ),
    (
        HOST_SERVERS,
        "The pool's server connections on the host (open, logging in or closing; at most the pool size, plus the reserve)",
    ),
    (
        SPLIT_BRAIN,
        "1 while more than one host of the pool is a primary: only the one on the highest timeline is used",
    ),
    (QUERIES, "Queries (Query and Execute messages) pooled"),
    (
        TRANSACTIONS,
        "Transactions pooled (transaction mode: server returns to the pool)",
    ),
    (
        CLIENT_WAIT_TOTAL,
        "Time clients spent waiting for a server, in seconds",
    ),
    (RECEIVED, "Bytes received from clients"),
    (SENT, "Bytes sent to clients"),
    (ASSIGNMENTS, "Times a server was assigned to a client"),
    (
        WAIT_HISTOGRAM,
        "Time a client waited for a server, per assignment",
    ),
    (
        XACT_HISTOGRAM,
        "Time a transaction held its server (transaction mode)",
    ),
    (SERVERS_OPENED, "Server connections opened"),
    (
        SERVERS_CLOSED,
        "Server connections closed, by reason (idle_timeout, reserve_idle, dead, unclean, admin)",
    ),
    (
        CONNECT_FAILURES,
        "Attempts to open a server connection that failed",
    ),
    (
        SESSION_STATE,
        "Statements creating session state in transaction mode, by action (pinned, warned, refused)",
    ),
    (
        XACT_SECONDS_TOTAL,
        "Time servers spent in transactions for clients, in seconds (total_xact_time)",
    ),
    (
        SERVER_TESTING,
        "Server connections running a check (sv_tested; always 0: checks run inside a checkout)",
    ),
    (
        CLIENT_ACTIVE_CANCEL,
        "Clients forwarding a cancel (cl_active_cancel_req; always 0: cancels are forwarded at once)",
    ),
    (
        CLIENT_WAITING_CANCEL,
        "Clients waiting to forward a cancel (cl_waiting_cancel_req; always 0)",
    ),
    (
        SERVER_ACTIVE_CANCEL,
        "Server connections sending a cancel (sv_active_cancel; always 0)",
    ),
    (
        SERVER_BEING_CANCELED,
        "Servers a cancel is on its way to (sv_being_canceled; always 0)",
    ),
    (
        DB_POOL_SIZE,
        "A database entry's pool size (SHOW DATABASES)",
    ),
    (
        DB_RESERVE_POOL,
        "A database entry's reserve pool size (SHOW DATABASES)",
    ),
    (
        DB_MAX_CONNECTIONS,
        "A database entry's max_db_connections; 0: no limit",
    ),
    (
        DB_CURRENT_CONNECTIONS,
        "Server connections open for a database entry, all users",
    ),
    (DB_PAUSED, "1 while a database is paused (PAUSE)"),
    (DB_DISABLED, "1 while a database is disabled (DISABLE)"),
    (MAX_USER_CONN, "Configured max_user_connections"),
    (USERS, "Users with a pool (SHOW LISTS users)"),
    (
        LOGIN_CLIENTS,
        "Client connections still logging in (SHOW LISTS login_clients)",
    ),
    (
        USED_SERVERS,
        "Server connections open (SHOW LISTS used_servers)",
    ),
    (
        FREE_CLIENTS,
        "PgBouncer's preallocated client slots (always 0: none are preallocated)",
    ),
    (
        FREE_SERVERS,
        "PgBouncer's preallocated server slots (always 0: none are preallocated)",
    ),
    (
        CACHED_DNS_NAMES,
        "Cached DNS names (always 0: the system resolver is used)",
    ),
    (
        CACHED_DNS_ZONES,
        "Cached DNS zones (always 0: the system resolver is used)",
    ),
    (
        IN_FLIGHT_DNS,
        "DNS queries in flight (always 0: the system resolver is used)",
    ),
    (
        VERSION_INFO,
        "The pooler's version (label version), pgbouncer_exporter's name for build_info",
    ),
    (
        CLIENT_CONNECTIONS,
        "Client connections by database, user, application name and state (SHOW CLIENTS rows)",
    ),
    (UP, "1 while the pooler is serving"),
    (BUILD_INFO, "Build information (label version)"),
    (MAX_CLIENT_CONN, "Configured max_client_conn"),
    (
        USED_CLIENTS,
        "Client connections open, against max_client_conn",
    ),
    (POOLS, "Pools (database, user pairs) in use"),
    (DATABASES, "Databases configured"),
    (
        ERRORS,
        "Errors that ended a client's session or login, by kind",
    ),
    (
        PEER_FORWARDED,
        "Cancel requests for a peer's clients passed to that peer",
    ),
    (
        PEER_FAILED,
        "Cancel requests for a peer's clients that could not be passed to it (no slot in time, connect or send failed, timed out)",
    ),
];

fn kind_of(name: &str) -> Kind {
    if name == WAIT_HISTOGRAM || name == XACT_HISTOGRAM {
        Kind::Histogram
    } else if name.ends_with("_total") {
        Kind::Counter
    } else {
        Kind::Gauge
    }
}

/// Every label `PoolerError::kind()` can return, so each errors series exists from the start.
pub const ERROR_KINDS: &[&str] = &[
    "query_wait_timeout",
    "max_client_conn",
    "auth_failed",
    "server_connect_failed",
    "protocol_violation",
    "no_such_database",
    "client_login_timeout",
    "server_gone",
    "session_state",
    "io",
    "server_login_retry",
    "shutdown",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "query_timeout",
    "ssl_required",
    "database_disabled",
    "admin_killed",
    "auth_query_failed",
    "transaction_timeout",
];

/// Seconds; from sub-millisecond pool hits to `query_wait_timeout`'s default of 120 s.
const WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
];
const XACT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    errors: Vec<(&'static str, Counter)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        let recorder = builder.build_recorder();
        for (name, help) in DESCRIPTIONS {
            let key = KeyName::from_const_str(name);
            let help = SharedString::const_str(help);
            match kind_of(name) {
                Kind::Gauge => recorder.describe_gauge(key, None, help),
                Kind::Counter => recorder.describe_counter(key, None, help),
                // Written by `histogram_text`, not through the recorder.
                Kind::Histogram => {}
            }
        }
        let errors = ERROR_KINDS
            .iter()
            .map(|kind| {
                let key = Key::from_parts(ERRORS, vec![Label::new("kind", *kind)]);
                (*kind, recorder.register_counter(&key, &META))
            })
            .collect();
        let handle = recorder.handle();
        Metrics {
            recorder,
            handle,
            errors,
        }
    }

    /// A new pool's counters, with its histograms.
    pub fn pool_stats(&self) -> PoolStats {
        PoolStats::new(Buckets::new(WAIT_BUCKETS), Buckets::new(XACT_BUCKETS))
    }

    /// Counts an error that ended a client's session or login.
    pub fn error(&self, e: &PoolerError) {
        let kind = e.kind();
        match self.errors.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.increment(1),
            None => self
                .recorder
                .register_counter(
                    &Key::from_parts(ERRORS, vec![Label::new("kind", kind)]),
                    &META,
                )
                .increment(1),
        }
    }

    /// Sets a gauge; the scrape (`http::render`) copies the App's counts in with it.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
            .set(value);
    }

    /// Sets a counter to a total kept elsewhere (the pools' atomics), at scrape time.
    pub fn counter(&self, name: &'static str, labels: Vec<Label>, value: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
            .absolute(value);
    }

    /// The recorder's text exposition, every series it has ever seen.
    pub fn rendered(&self) -> String {
        self.handle.render()
    }
}

pub fn pool_labels(database: &str, user: &str) -> Vec<Label> {
    vec![
        Label::new("database", database.to_string()),
        Label::new("user", user.to_string()),
    ]
}

/// The `# HELP` text of a metric.
pub fn help(name: &str) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .unwrap_or("")
}

/// A histogram's `# HELP` and `# TYPE` lines, written once before its series.
pub fn histogram_header(out: &mut String, name: &str) {
    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", help(name));
}

/// One series of a histogram kept in `Buckets`: `labels` are written as they are
/// (`database="..",user=".."`, already escaped), `sum` in seconds.
pub fn histogram_text(out: &mut String, name: &str, labels: &str, buckets: &Buckets, sum: f64) {
    let cumulative = buckets.cumulative();
    for (bound, n) in buckets.bounds.iter().zip(&cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let count = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        for (name, _) in DESCRIPTIONS {
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} missing from README"
            );
        }
    }

    #[test]
    fn the_dashboard_charts_only_metrics_that_exist() {
        let dashboard = include_str!("../docs/grafana-dashboard.json");
        let mut used = 0;
        for (i, _) in dashboard.match_indices("pooler_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "pooler_" {
                continue; // the prefix mentioned in prose
            }
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|b| kind_of(b) == Kind::Histogram)
                .unwrap_or(&name);
            assert!(
                DESCRIPTIONS.iter().any(|(n, _)| *n == base),
                "dashboard uses unknown metric {name}"
            );
            used += 1;
        }
        assert!(used > 10);
    }

    #[test]
    fn a_histogram_is_written_as_prometheus_reads_it() {
        static BOUNDS: &[f64] = &[0.0005, 1.0];
        let b = Buckets::new(BOUNDS);
        b.record(std::time::Duration::from_micros(200));
        b.record(std::time::Duration::from_secs(2));
        let mut out = String::new();
        histogram_header(&mut out, XACT_HISTOGRAM);
        histogram_text(
            &mut out,
            XACT_HISTOGRAM,
            "database=\"d\",user=\"u\"",
            &b,
            2.0002,
        );
        let n = XACT_HISTOGRAM;
        let labels = "database=\"d\",user=\"u\"";
        assert_eq!(
            out,
            format!(
                "# HELP {n} {}\n# TYPE {n} histogram\n\
                 {n}_bucket{{{labels},le=\"0.0005\"}} 1\n\
                 {n}_bucket{{{labels},le=\"1\"}} 1\n\
                 {n}_bucket{{{labels},le=\"+Inf\"}} 2\n\
                 {n}_sum{{{labels}}} 2.0002\n\
                 {n}_count{{{labels}}} 2\n",
                help(n)
            )
        );
    }

    #[test]
    fn every_error_kind_has_a_series() {
        for e in [
            PoolerError::QueryWaitTimeout,
            PoolerError::TooManyClients,
            PoolerError::AuthFailed("u".into()),
            PoolerError::NotAllowed,
            PoolerError::ServerConnect("x".into()),
            PoolerError::protocol("x"),
            PoolerError::NoSuchDatabase("d".into()),
            PoolerError::ClientLoginTimeout,
            PoolerError::ServerGone,
            PoolerError::ServerLoginRetry("x".into()),
            PoolerError::ShuttingDown,
            PoolerError::ClientIdleTimeout,
            PoolerError::IdleTransactionTimeout,
            PoolerError::QueryTimeout,
            PoolerError::SslRequired,
            PoolerError::AuthQuery("x".into()),
            PoolerError::NoHbaMatch,
            PoolerError::LoginRejected,
            PoolerError::CertAuthFailed,
            PoolerError::PeerRejected,
            PoolerError::TransactionTimeout,
        ] {
            assert!(ERROR_KINDS.contains(&e.kind()), "{}", e.kind());
        }
    }
}
