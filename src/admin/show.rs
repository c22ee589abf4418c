//! The console's SHOW commands: PgBouncer's result sets, column for column.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{CommandError, Reply};
use crate::app::App;
use crate::config::{PoolerSettings, RESTART_ONLY};
use crate::protocol::{INT8_OID, TEXT_OID};
use crate::registry::ClientState;
use crate::stats::{Averages, Totals, wall_of};

pub(super) struct Table {
    pub(super) columns: Vec<(&'static str, u32)>,
    pub(super) rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[(&'static str, u32)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

const T: u32 = TEXT_OID;
const N: u32 = INT8_OID;

pub(super) fn show(app: &Arc<App>, what: &str) -> Result<Reply, CommandError> {
    let table = match what {
        "POOLS" => show_pools(app),
        "STATS" => show_stats(app),
        "CLIENTS" => show_clients(app),
        "SERVERS" => show_servers(app),
        "DATABASES" => show_databases(app),
        "CONFIG" => show_config(&app.config().pooler),
        "LISTS" => show_lists(app),
        "PEERS" => show_peers(app),
        "VERSION" => {
            let mut t = Table::new(&[("version", T)]);
            t.rows
                .push(vec![s(format!("pooler {}", env!("CARGO_PKG_VERSION")))]);
            t
        }
        "HELP" => {
            return Ok(Reply::Notice {
                message: "Console usage".into(),
                detail:
                    "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|STATS|LISTS|PEERS|VERSION\
                         \n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tKILL [<db>]\n\tSHUTDOWN\
                         \n\tRELOAD"
                        .into(),
                tag: "SHOW",
            });
        }
        _ => {
            return Err(CommandError {
                code: "42601",
                message: format!("unknown SHOW command: {what}, use SHOW HELP;"),
            });
        }
    };
    Ok(Reply::Table(table))
}

fn show_pools(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("user", T),
        ("cl_active", N),
        ("cl_waiting", N),
        ("cl_active_cancel_req", N),
        ("cl_waiting_cancel_req", N),
        ("sv_active", N),
        ("sv_active_cancel", N),
        ("sv_being_canceled", N),
        ("sv_idle", N),
        ("sv_used", N),
        ("sv_tested", N),
        ("sv_login", N),
        ("maxwait", N),
        ("maxwait_us", N),
        ("pool_mode", T),
    ]);
    for pool in app.pools() {
        let c = pool.counts();
        let clients = pool.stats.clients();
        t.rows.push(vec![
            s(&pool.database),
            s(&pool.user),
            s(clients.saturating_sub(c.waiting)),
            s(c.waiting),
            s(0),
            s(0),
            s(c.active),
            s(0),
            s(0),
            s(c.idle),
            s(c.used),
            s(0),
            s(c.connecting),
            s(c.max_wait.as_secs()),
            s(c.max_wait.subsec_micros()),
            s(pool.settings.mode.as_str()),
        ]);
    }
    t
}

fn show_stats(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", T),
        ("total_server_assignment_count", N),
        ("total_xact_count", N),
        ("total_query_count", N),
        ("total_received", N),
        ("total_sent", N),
        ("total_xact_time", N),
        ("total_query_time", N),
        ("total_wait_time", N),
        ("total_client_parse_count", N),
        ("total_server_parse_count", N),
        ("total_bind_count", N),
        ("avg_server_assignment_count", N),
        ("avg_xact_count", N),
        ("avg_query_count", N),
        ("avg_recv", N),
        ("avg_sent", N),
        ("avg_xact_time", N),
        ("avg_query_time", N),
        ("avg_wait_time", N),
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
    ]);
    // PgBouncer's SHOW STATS is per database: sum the pools of each.
    let mut by_db: BTreeMap<String, (Totals, Averages, u64, u64)> = BTreeMap::new();
    for pool in app.pools() {
        let e = by_db.entry(pool.database.clone()).or_default();
        e.0.add(&pool.stats.totals());
        let a = pool.stats.averages();
        e.1.server_assignments += a.server_assignments;
        e.1.xacts += a.xacts;
        e.1.queries += a.queries;
        e.1.received += a.received;
        e.1.sent += a.sent;
        // Mean durations, weighted by how many transactions / assignments each pool had.
        e.2 += a.xact_us * a.xacts;
        e.3 += a.wait_us * a.server_assignments;
    }
    for (db, (tot, mut avg, xact_weighted, wait_weighted)) in by_db {
        avg.xact_us = xact_weighted.checked_div(avg.xacts).unwrap_or(0);
        avg.wait_us = wait_weighted
            .checked_div(avg.server_assignments)
            .unwrap_or(0);
        t.rows.push(vec![
            s(db),
            s(tot.server_assignments),
            s(tot.xacts),
            s(tot.queries),
            s(tot.received),
            s(tot.sent),
            s(tot.xact_us),
            // Query time is not measured (it would need timing per message).
            s(0),
            s(tot.wait_us),
            s(0),
            s(0),
            s(0),
            s(avg.server_assignments),
            s(avg.xacts),
            s(avg.queries),
            s(avg.received),
            s(avg.sent),
            s(avg.xact_us),
            s(0),
            s(avg.wait_us),
            s(0),
            s(0),
            s(0),
        ]);
    }
    t
}

const CONNECTION_COLUMNS: &[(&str, u32)] = &[
    ("type", T),
    ("user", T),
    ("database", T),
    ("replication", T),
    ("state", T),
    ("addr", T),
    ("port", N),
    ("local_addr", T),
    ("local_port", N),
    ("connect_time", T),
    ("request_time", T),
    ("wait", N),
    ("wait_us", N),
    ("close_needed", N),
    ("ptr", T),
    ("link", T),
    ("remote_pid", N),
    ("tls", T),
    ("application_name", T),
    ("prepared_statements", N),
    ("id", N),
];

fn show_clients(app: &App) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    // Beyond PgBouncer: why a transaction-mode client is pinned to its server, if it is.
    t.columns.push(("pinned", T));
    for c in app.clients_registry.snapshot() {
        let state = c.state();
        let wait = c
            .waiting_since_us()
            .map(|since| Duration::from_micros(crate::stats::now_us().saturating_sub(since)))
            .unwrap_or_default();
        let link = c.linked_server().map(|srv| format!("{:x}", srv.id));
        let request = c.request_us();
        t.rows.push(vec![
            s("C"),
            s(&c.user),
            s(&c.database),
            s("none"),
            s(state.as_str()),
            c.addr.map(|a| a.ip().to_string()),
            c.addr.map(|a| a.port().to_string()),
            c.local.map(|a| a.ip().to_string()),
            c.local.map(|a| a.port().to_string()),
            s(timestamp(wall_of(c.connected_us))),
            s(timestamp(wall_of(if request > 0 {
                request
            } else {
                c.connected_us
            }))),
            s(wait.as_secs()),
            s(wait.subsec_micros()),
            s(0),
            s(format!("{:x}", c.id)),
            link,
            s(0),
            s(""),
            s(&c.application_name),
            s(0),
            s(c.id),
            c.pinned().map(|k| k.as_str().to_string()),
        ]);
    }
    t
}

fn show_servers(app: &App) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    let row = |user: &str,
               database: &str,
               state: &str,
               host: &str,
               port: u16,
               local: Option<std::net::SocketAddr>,
               connected_us: u64,
               request_us: u64,
               id: u64,
               link: Option<u64>,
               pid: i32,
               application_name: &str| {
        vec![
            s("S"),
            s(user),
            s(database),
            s("none"),
            s(state),
            s(host),
            s(port),
            local.map(|a| a.ip().to_string()),
            local.map(|a| a.port().to_string()),
            s(timestamp(wall_of(connected_us))),
            s(timestamp(wall_of(request_us))),
            s(0),
            s(0),
            s(0),
            s(format!("{id:x}")),
            link.map(|l| format!("{l:x}")),
            s(pid),
            s(""),
            s(application_name),
            s(0),
            s(id),
        ]
    };
    for c in app.clients_registry.snapshot() {
        let (Some(pool), Some(srv)) = (&c.pool, c.linked_server()) else {
            continue;
        };
        if c.state() != ClientState::Active {
            continue;
        }
        t.rows.push(row(
            &pool.user,
            &pool.database,
            "active",
            &pool.target.host,
            pool.target.port,
            None,
            srv.connected_us,
            c.request_us(),
            srv.id,
            Some(c.id),
            srv.backend_pid,
            &c.application_name,
        ));
    }
    for pool in app.pools() {
        for srv in pool.idle_servers() {
            t.rows.push(row(
                &pool.user,
                &pool.database,
                "idle",
                &pool.target.host,
                pool.target.port,
                srv.local,
                srv.connected_us,
                srv.last_used_us,
                srv.id,
                None,
                srv.backend_pid,
                "",
            ));
        }
    }
    t
}

/// PgBouncer's columns; what was forwarded to each peer is in `/metrics`.
fn show_peers(app: &App) -> Table {
    let mut t = Table::new(&[("peer_id", N), ("host", T), ("port", N), ("pool_size", N)]);
    for peer in app.peers.snapshot().values() {
        t.rows.push(vec![
            s(peer.id),
            s(&peer.host),
            s(peer.port),
            s(peer.pool_size),
        ]);
    }
    t
}

fn show_databases(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("host", T),
        ("port", N),
        ("database", T),
        ("force_user", T),
        ("pool_size", N),
        ("min_pool_size", N),
        ("reserve_pool_size", N),
        ("server_lifetime", N),
        ("pool_mode", T),
        ("max_connections", N),
        ("current_connections", N),
        ("max_client_connections", N),
        ("current_client_connections", N),
        ("paused", N),
        ("disabled", N),
    ]);
    let config = app.config();
    let p = &config.pooler;
    let pools = app.pools();
    for (name, db) in &config.databases {
        let mine = pools.iter().filter(|pool| &pool.database == name);
        let (servers, clients) = mine.fold((0, 0), |(sv, cl), pool| {
            (sv + pool.counts().total, cl + pool.stats.clients())
        });
        t.rows.push(vec![
            s(name),
            s(&db.host),
            s(db.port),
            s(db.dbname.as_deref().unwrap_or(name)),
            db.user.clone(),
            s(config.pool_size(db)),
            s(db.min_pool_size.unwrap_or(p.min_pool_size)),
            s(db.reserve_pool_size.unwrap_or(p.reserve_pool_size)),
            s(p.server_lifetime as u64),
            db.pool_mode.map(|m| m.as_str().to_string()),
            s(db.max_db_connections.unwrap_or(p.max_db_connections)),
            s(servers),
            s(0),
            s(clients),
            s(u8::from(app.control.is_paused(name))),
            s(0),
        ]);
    }
    t
}

fn show_config(p: &PoolerSettings) -> Table {
    let defaults = PoolerSettings::default().entries();
    let mut t = Table::new(&[("key", T), ("value", T), ("default", T), ("changeable", T)]);
    for ((key, value, _), (_, default, _)) in p.entries().into_iter().zip(defaults) {
        // RELOAD applies every key but those bound to sockets opened at start.
        let changeable = if RESTART_ONLY.contains(&key) {
            "no"
        } else {
            "yes"
        };
        t.rows
            .push(vec![s(key), s(value), s(default), s(changeable)]);
    }
    t
}

fn show_lists(app: &App) -> Table {
    let mut t = Table::new(&[("list", T), ("items", N)]);
    let pools = app.pools();
    let users: HashSet<&str> = pools.iter().map(|p| p.user.as_str()).collect();
    let registered = app.clients_registry.snapshot().len();
    let servers: usize = pools.iter().map(|p| p.counts().total).sum();
    let used_clients = app.client_count();
    for (list, items) in [
        ("databases", app.config().databases.len()),
        ("users", users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", used_clients.saturating_sub(registered)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.rows.push(vec![s(list), s(items)]);
    }
    t
}

fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(timestamp(t), "2000-02-29 01:01:01 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
