//! The console's SHOW commands: PgBouncer's result sets, column for column.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

mod hosts;
mod stats;

use stats::{show_stats, show_stats_averages, show_stats_totals, show_totals};

use super::{CommandError, Reply};
use crate::app::App;
use crate::clock::wall_of;
use crate::config::{PoolerSettings, RESTART_ONLY};
use crate::registry::ClientState;
use crate::wire::{INT8_OID, TEXT_OID};

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

/// Parameters some drivers `SHOW` or `SET` on connect: PgBouncer fakes an answer for these,
/// so the console does too (its sessions have no real server behind them).
pub(super) const FAKE_PARAMETERS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
];

pub(super) fn show(app: &Arc<App>, what: &str) -> Result<Reply, CommandError> {
    if let Some((name, value)) = FAKE_PARAMETERS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(what))
    {
        let mut t = Table::new(&[(name, T)]);
        t.rows.push(vec![s(value)]);
        return Ok(Reply::Table(t));
    }
    let table = match what.to_ascii_uppercase().as_str() {
        "POOLS" => show_pools(app),
        "STATS" => show_stats(app),
        "STATS_TOTALS" => show_stats_totals(app),
        "STATS_AVERAGES" => show_stats_averages(app),
        "TOTALS" => show_totals(app),
        "CLIENTS" => show_clients(app),
        "SERVERS" => show_servers(app),
        "DATABASES" => show_databases(app),
        "USERS" => show_users(app),
        "CONFIG" => show_config(&app.config().pooler),
        "LISTS" => show_lists(app),
        "MEM" => show_mem(app),
        "STATE" => show_state(app),
        "PEERS" => show_peers(app),
        "HOSTS" => hosts::show_hosts(app),
        // No per-peer pools and no DNS cache (host names are resolved at connect):
        // PgBouncer's columns, no rows, so scripts that read them keep working.
        "PEER_POOLS" => Table::new(&[
            ("peer_id", N),
            ("cl_active_cancel_req", N),
            ("cl_waiting_cancel_req", N),
            ("sv_active_cancel", N),
            ("sv_login", N),
        ]),
        "DNS_HOSTS" => Table::new(&[("hostname", T), ("ttl", N), ("addrs", T)]),
        "DNS_ZONES" => Table::new(&[("zonename", T), ("serial", N), ("count", N)]),
        "SOCKETS" | "ACTIVE_SOCKETS" | "FDS" => {
            // PgBouncer's rows here are its buffer positions and file descriptors (for online
            // restart); the pooler has neither to show.
            return Err(CommandError {
                code: "0A000",
                message: format!(
                    "SHOW {} is not supported by this pooler: use SHOW CLIENTS and SHOW SERVERS",
                    what.to_ascii_uppercase()
                ),
            });
        }
        "VERSION" => {
            let mut t = Table::new(&[("version", T)]);
            t.rows
                .push(vec![s(format!("pooler {}", env!("CARGO_PKG_VERSION")))]);
            t
        }
        "HELP" => {
            return Ok(Reply::Notice {
                message: "Console usage".into(),
                detail: "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\
                         \n\tSHOW PEERS|PEER_POOLS|HOSTS\
                         \n\tSHOW LISTS|MEM|STATE\
                         \n\tSHOW DNS_HOSTS|DNS_ZONES\
                         \n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\
                         \n\tSET key = arg\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\
                         \n\tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL [<db>]\
                         \n\tKILL_CLIENT <client_id>\n\tSHUTDOWN\n\tWAIT_CLOSE [<db>]"
                    .into(),
                tag: "SHOW".into(),
            });
        }
        _ => {
            return Err(CommandError {
                code: "42601",
                message: format!(
                    "unknown SHOW command: {}, use SHOW HELP;",
                    what.to_ascii_uppercase()
                ),
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
        ("load_balance_hosts", T),
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
            // PgBouncer fills it only for a comma-separated host list.
            pool.hosts
                .as_ref()
                .and_then(|h| s(h.policy.load_balance.as_str())),
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
            .map(|since| crate::clock::between(since, crate::clock::now_us()))
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
            s(c.prepared_statements()),
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
        let (host, port) = pool.target.address(srv.host);
        t.rows.push(row(
            &pool.user,
            &pool.database,
            "active",
            host,
            port,
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
            let (host, port) = pool.target.address(srv.host);
            t.rows.push(row(
                &pool.user,
                &pool.database,
                "idle",
                host,
                port,
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
        ("load_balance_hosts", T),
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
            s(&db.port),
            s(db.dbname.as_deref().unwrap_or(name)),
            db.user.clone(),
            s(config.pool_size(db)),
            s(db.min_pool_size.unwrap_or(p.min_pool_size)),
            s(db.reserve_pool_size.unwrap_or(p.reserve_pool_size)),
            s(p.server_lifetime as u64),
            db.pool_mode.map(|m| m.as_str().to_string()),
            None,
            s(db.max_db_connections.unwrap_or(p.max_db_connections)),
            s(servers),
            s(0),
            s(clients),
            s(u8::from(app.control.is_paused(name))),
            s(u8::from(app.control.is_disabled(name))),
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
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
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

/// SHOW USERS: every user the pooler knows (auth file, `[users]`, pools), PgBouncer's
/// columns; per-user overrides are NULL when not set.
fn show_users(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("pool_size", T),
        ("reserve_pool_size", T),
        ("pool_mode", T),
        ("max_user_connections", N),
        ("current_connections", N),
        ("max_user_client_connections", N),
        ("current_client_connections", N),
    ]);
    let config = app.config();
    let pools = app.pools();
    let clients = app.clients_registry.snapshot();
    let mut names: BTreeSet<String> = app.users().names().into_iter().collect();
    names.extend(config.users.keys().cloned());
    names.extend(pools.iter().map(|p| p.user.clone()));
    for name in names {
        let entry = config.users.get(&name);
        let servers: usize = pools
            .iter()
            .filter(|p| p.user == name)
            .map(|p| p.counts().total)
            .sum();
        let connected = clients.iter().filter(|c| *c.user == *name).count();
        t.rows.push(vec![
            entry.and_then(|u| u.pool_size).map(|v| v.to_string()),
            entry
                .and_then(|u| u.reserve_pool_size)
                .map(|v| v.to_string()),
            entry
                .and_then(|u| u.pool_mode)
                .map(|m| m.as_str().to_string()),
            s(config.max_user_connections(&name)),
            s(servers),
            // max_user_client_connections is not a pooler key: 0, PgBouncer's "no limit".
            s(0),
            s(connected),
        ]);
        t.rows.last_mut().expect("just pushed").insert(0, s(&name));
    }
    t
}

/// SHOW MEM: PgBouncer lists its slab caches; the pooler has none, so this lists the objects
/// it keeps per connection with their in-memory size (`free` is always 0: nothing is cached
/// for reuse).
fn show_mem(app: &App) -> Table {
    let mut t = Table::new(&[
        ("name", T),
        ("size", N),
        ("used", N),
        ("free", N),
        ("memtotal", N),
    ]);
    let pools = app.pools();
    let servers: usize = pools.iter().map(|p| p.counts().total).sum();
    let clients = app.clients_registry.snapshot().len();
    for (name, size, used) in [
        (
            "db_cache",
            std::mem::size_of::<crate::config::DatabaseConfig>(),
            app.config().databases.len(),
        ),
        (
            "pool_cache",
            std::mem::size_of::<crate::pool::Pool>(),
            pools.len(),
        ),
        (
            "client_cache",
            std::mem::size_of::<crate::registry::ClientInfo>(),
            clients,
        ),
        (
            "server_cache",
            std::mem::size_of::<crate::server::ServerConn>(),
            servers,
        ),
    ] {
        t.rows
            .push(vec![s(name), s(size), s(used), s(0), s(size * used)]);
    }
    t
}

/// SHOW STATE: whether the pooler as a whole is paused (`PAUSE`/`KILL` without a database);
/// it is never suspended (no SUSPEND).
fn show_state(app: &App) -> Table {
    let mut t = Table::new(&[("key", T), ("value", T)]);
    let paused = app.control.is_all_paused();
    let yes = |b: bool| s(if b { "yes" } else { "no" });
    t.rows.push(vec![s("active"), yes(!paused)]);
    t.rows.push(vec![s("paused"), yes(paused)]);
    t.rows.push(vec![s("suspended"), yes(false)]);
    t
}

fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::clock::civil_from_days(days as i64);
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
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(timestamp(t), "2000-02-29 01:01:01 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
