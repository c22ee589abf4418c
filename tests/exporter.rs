//! prometheus-community/pgbouncer_exporter (v0.12.1, its driver lib/pq v1.12.3) pointed at the
//! console: this test is a script-level stand-in for running the Go binary. It logs in with
//! the startup packet lib/pq sends, issues exactly the exporter's queries in its order (simple
//! protocol: lib/pq sends a query without arguments as a Query message) and checks every
//! column the exporter reads: present, typed so lib/pq decodes it to what the exporter parses
//! (a label must arrive as a string or an integer, a metric as a number), with no error, no
//! message lib/pq would call unexpected, and no series the exporter would emit twice. Any of
//! those makes the exporter log a warning or report `pgbouncer_up 0`.
//!
//! What is mirrored, from the exporter's collector.go (read, not copied):
//! - `getDB`: `SHOW STATS` as a ping; then `SHOW VERSION;` (exactly one column, `version`),
//!   `SHOW LISTS;` (exactly two columns, `items` a number), `SHOW CONFIG;` (three or four
//!   columns; `max_client_conn` and `max_user_connections` numbers), `SHOW CLIENTS;`
//!   (`database`, `user`, `state` required, `application_name` read when present);
//! - `SHOW databases;`, `SHOW stats_totals;`, `SHOW pools;` with their column maps below.
//!
//! lib/pq's text decoding: OIDs text/varchar/char/bpchar become strings, int2/int4/int8 are
//! parsed as integers (a value that does not parse fails the whole result), float4/float8 as
//! floats, anything else is raw bytes; the exporter turns raw bytes into a number with
//! ParseFloat and rejects them as a label.

mod common;
mod wire;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

const TEXT: u32 = 25;
const STRING_OIDS: &[u32] = &[18, 25, 1042, 1043];
const INT_OIDS: &[u32] = &[20, 21, 23];
const FLOAT_OIDS: &[u32] = &[700, 701];

#[derive(Clone, Copy, PartialEq)]
enum Use {
    Label,
    /// The series name the exporter builds: `pgbouncer_<namespace>_<metric>`.
    Metric(&'static str),
}
use Use::{Label, Metric};

/// collector.go's `metricMaps`: for each namespace, the columns it reads.
const NAMESPACES: &[(&str, &[(&str, Use)])] = &[
    (
        "databases",
        &[
            ("name", Label),
            ("host", Label),
            ("port", Label),
            ("database", Label),
            ("force_user", Label),
            ("pool_size", Metric("pool_size")),
            // Both spellings map to one series: a result with both would emit it twice.
            ("reserve_pool", Metric("reserve_pool")),
            ("reserve_pool_size", Metric("reserve_pool")),
            ("pool_mode", Label),
            ("max_connections", Metric("max_connections")),
            ("current_connections", Metric("current_connections")),
            ("paused", Metric("paused")),
            ("disabled", Metric("disabled")),
        ],
    ),
    (
        "stats_totals",
        &[
            ("database", Label),
            ("query_count", Metric("queries_pooled_total")),
            ("query_time", Metric("queries_duration_seconds_total")),
            ("bytes_received", Metric("received_bytes_total")),
            // PgBouncer < 1.8's name: no current PgBouncer has it.
            ("requests", Metric("queries_total")),
            ("bytes_sent", Metric("sent_bytes_total")),
            ("wait_time", Metric("client_wait_seconds_total")),
            ("xact_count", Metric("sql_transactions_pooled_total")),
            ("xact_time", Metric("server_in_transaction_seconds_total")),
            ("client_parse_count", Metric("client_parses_total")),
            ("server_parse_count", Metric("server_parses_total")),
            ("bind_count", Metric("binds_total")),
            (
                "server_assignment_count",
                Metric("server_assignments_total"),
            ),
        ],
    ),
    (
        "pools",
        &[
            ("database", Label),
            ("user", Label),
            ("cl_active", Metric("client_active_connections")),
            (
                "cl_active_cancel_req",
                Metric("client_active_cancel_connections"),
            ),
            ("cl_waiting", Metric("client_waiting_connections")),
            (
                "cl_waiting_cancel_req",
                Metric("client_waiting_cancel_connections"),
            ),
            ("sv_active", Metric("server_active_connections")),
            (
                "sv_active_cancel",
                Metric("server_active_cancel_connections"),
            ),
            (
                "sv_being_canceled",
                Metric("server_being_canceled_connections"),
            ),
            ("sv_idle", Metric("server_idle_connections")),
            ("sv_used", Metric("server_used_connections")),
            ("sv_tested", Metric("server_testing_connections")),
            ("sv_login", Metric("server_login_connections")),
            ("maxwait", Metric("client_maxwait_seconds")),
        ],
    ),
];

/// The lists `SHOW LISTS` must carry for the exporter's `listsMap` (each one a series).
const LISTS: &[&str] = &[
    "databases",
    "users",
    "pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
];

/// The series pgbouncer_exporter reports for PgBouncer 1.25 from the three column maps: every
/// mapped column PgBouncer 1.25 returns (not `requests`, and `reserve_pool_size` is the
/// spelling it uses for `reserve_pool`).
const PGBOUNCER_SERIES: &[&str] = &[
    "pgbouncer_databases_current_connections",
    "pgbouncer_databases_disabled",
    "pgbouncer_databases_max_connections",
    "pgbouncer_databases_paused",
    "pgbouncer_databases_pool_size",
    "pgbouncer_databases_reserve_pool",
    "pgbouncer_pools_client_active_cancel_connections",
    "pgbouncer_pools_client_active_connections",
    "pgbouncer_pools_client_maxwait_seconds",
    "pgbouncer_pools_client_waiting_cancel_connections",
    "pgbouncer_pools_client_waiting_connections",
    "pgbouncer_pools_server_active_cancel_connections",
    "pgbouncer_pools_server_active_connections",
    "pgbouncer_pools_server_being_canceled_connections",
    "pgbouncer_pools_server_idle_connections",
    "pgbouncer_pools_server_login_connections",
    "pgbouncer_pools_server_testing_connections",
    "pgbouncer_pools_server_used_connections",
    "pgbouncer_stats_totals_binds_total",
    "pgbouncer_stats_totals_client_parses_total",
    "pgbouncer_stats_totals_client_wait_seconds_total",
    "pgbouncer_stats_totals_queries_duration_seconds_total",
    "pgbouncer_stats_totals_queries_pooled_total",
    "pgbouncer_stats_totals_received_bytes_total",
    "pgbouncer_stats_totals_sent_bytes_total",
    "pgbouncer_stats_totals_server_assignments_total",
    "pgbouncer_stats_totals_server_in_transaction_seconds_total",
    "pgbouncer_stats_totals_server_parses_total",
    "pgbouncer_stats_totals_sql_transactions_pooled_total",
];

/// One simple-protocol result as the exporter's driver sees it.
struct Result_ {
    columns: Vec<(String, u32)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Result_ {
    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }
}

/// Sends one Query and reads to ReadyForQuery, failing on anything lib/pq would not take:
/// an ErrorResponse, or a message type its simple-query loop calls unknown.
async fn query(s: &mut tokio::net::TcpStream, sql: &str) -> Result_ {
    use tokio::io::AsyncWriteExt;
    s.write_all(&wire::query(sql)).await.expect("send");
    let reply = wire::read_until(s, b'Z').await;
    let mut result = Result_ {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for (tag, body) in &reply {
        match tag {
            b'T' => result.columns = row_description(body),
            b'D' => result.rows.push(wire::data_row(body)),
            b'C' | b'Z' | b'N' | b'S' | b'I' => {}
            b'E' => panic!(
                "{sql}: error {:?} (the exporter logs a warning and reports pgbouncer_up 0)",
                pooler::wire::error_fields(body)
            ),
            other => panic!("{sql}: lib/pq rejects message '{}'", *other as char),
        }
    }
    assert!(
        !result.columns.is_empty(),
        "{sql}: no RowDescription: {reply:?}"
    );
    for row in &result.rows {
        assert_eq!(row.len(), result.columns.len(), "{sql}: row width");
    }
    result
}

/// Column names and type OIDs of a RowDescription body.
fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let end = pos + body[pos..].iter().position(|&b| b == 0).expect("name");
        let name = String::from_utf8(body[pos..end].to_vec()).expect("utf-8 name");
        pos = end + 1;
        // table oid (4), column (2), type oid (4), size (2), modifier (4), format (2)
        let oid = u32::from_be_bytes(body[pos + 6..pos + 10].try_into().unwrap());
        let format = u16::from_be_bytes(body[pos + 16..pos + 18].try_into().unwrap());
        assert_eq!(format, 0, "{name}: simple query results are text");
        pos += 18;
        out.push((name, oid));
    }
    out
}

/// What lib/pq + the exporter do with a metric value: a number, or NULL (NaN, accepted).
fn assert_number(what: &str, oid: u32, value: Option<&str>) {
    let Some(v) = value else { return };
    if INT_OIDS.contains(&oid) {
        assert!(v.parse::<i64>().is_ok(), "{what}: int column holds {v:?}");
    } else {
        // float4/8 are parsed by lib/pq, anything else (text, numeric) by the exporter.
        assert!(v.parse::<f64>().is_ok(), "{what}: {v:?} is not a number");
    }
}

/// What the exporter accepts as a label: a string or an integer (NULL becomes "").
fn assert_label(what: &str, oid: u32, value: Option<&str>) {
    let ok = STRING_OIDS.contains(&oid) || INT_OIDS.contains(&oid) || FLOAT_OIDS.contains(&oid);
    assert!(
        ok,
        "{what}: type {oid} arrives as raw bytes, which the exporter rejects as a label"
    );
    if let (Some(v), true) = (value, INT_OIDS.contains(&oid)) {
        assert!(v.parse::<i64>().is_ok(), "{what}: int column holds {v:?}");
    }
}

/// One scrape, as the exporter runs it; returns the series names it would report.
async fn scrape(pooler: &Pooler, user: &str, password: &str) -> BTreeSet<String> {
    // lib/pq 1.12.3's startup packet: user, database, client_encoding, datestyle.
    let (mut s, _) = wire::login_params(
        pooler.running.addr,
        user,
        password,
        "pgbouncer",
        &[("client_encoding", "UTF8"), ("datestyle", "ISO, MDY")],
    )
    .await
    .expect("lib/pq's startup packet is accepted by the console");
    let mut series = BTreeSet::new();
    query(&mut s, "SHOW STATS").await;

    let version = query(&mut s, "SHOW VERSION;").await;
    assert_eq!(version.columns, [("version".to_string(), TEXT)]);
    assert_eq!(version.rows.len(), 1);
    series.insert("pgbouncer_version_info".to_string());

    let lists = query(&mut s, "SHOW LISTS;").await;
    assert_eq!(lists.columns.len(), 2, "the exporter wants exactly two");
    let mut seen = BTreeSet::new();
    for row in &lists.rows {
        let name = row[0].clone().expect("list name");
        assert_number(
            &format!("SHOW LISTS {name}"),
            lists.columns[1].1,
            row[1].as_deref(),
        );
        assert!(row[1].is_some(), "{name}: NULL items fail ParseFloat");
        seen.insert(name);
    }
    for list in LISTS {
        assert!(seen.contains(*list), "SHOW LISTS lacks {list}");
    }

    let config = query(&mut s, "SHOW CONFIG;").await;
    assert!(matches!(config.columns.len(), 3 | 4));
    for key in ["max_client_conn", "max_user_connections"] {
        let row = config
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some(key))
            .unwrap_or_else(|| panic!("SHOW CONFIG lacks {key}"));
        let value = row[1].as_deref().expect("value");
        assert!(value.parse::<f64>().is_ok(), "{key} = {value:?}");
    }
    series.insert("pgbouncer_config_max_client_connections".to_string());
    series.insert("pgbouncer_config_max_user_connections".to_string());

    let clients = query(&mut s, "SHOW CLIENTS;").await;
    for column in ["database", "user", "state", "application_name"] {
        assert!(
            clients.index(column).is_some(),
            "SHOW CLIENTS lacks {column}"
        );
    }
    assert!(
        !clients.rows.is_empty(),
        "the scraping session itself is listed"
    );
    series.insert("pgbouncer_client_connections".to_string());

    for (namespace, mapping) in NAMESPACES {
        let sql = format!("SHOW {namespace};");
        let result = query(&mut s, &sql).await;
        let mut emitted: BTreeMap<&str, &str> = BTreeMap::new();
        let labels: Vec<&str> = mapping
            .iter()
            .filter(|(_, u)| *u == Label)
            .map(|(c, _)| *c)
            .collect();
        for label in &labels {
            assert!(
                result.index(label).is_some(),
                "{sql}: label column {label} missing (its label would be empty)"
            );
        }
        let mut label_sets = BTreeSet::new();
        for row in &result.rows {
            let mut key = Vec::new();
            for label in &labels {
                let i = result.index(label).expect("checked");
                assert_label(
                    &format!("{sql} {label}"),
                    result.columns[i].1,
                    row[i].as_deref(),
                );
                key.push(row[i].clone().unwrap_or_default());
            }
            assert!(
                label_sets.insert(key.clone()),
                "{sql}: two rows with labels {key:?}: the exporter would emit duplicates"
            );
        }
        for (i, (column, oid)) in result.columns.iter().enumerate() {
            let Some((_, Metric(metric))) = mapping.iter().find(|(c, _)| c == column) else {
                continue;
            };
            if let Some(other) = emitted.insert(metric, column) {
                panic!("{sql}: {other} and {column} both become pgbouncer_{namespace}_{metric}");
            }
            for row in &result.rows {
                assert_number(&format!("{sql} {column}"), *oid, row[i].as_deref());
            }
            series.insert(format!("pgbouncer_{namespace}_{metric}"));
        }
    }
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_exporter_queries_get_every_column_it_reads() {
    let pg = PgServer::shared();
    let db = pg.create_db("exporter").await;
    let userlist = format!(
        "{}\"exporter\" \"exporter-pw\"\n\"admin\" \"admin-pw\"\n",
        Pooler::default_userlist()
    );
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        "pool_mode = \"transaction\"\nstats_users = \"exporter\"\nadmin_users = \"admin\"\n\
         ignore_startup_parameters = \"extra_float_digits\"", // what the exporter's README asks
        "",
        &userlist,
    )
    .await;
    // Traffic, so pools, stats and clients have rows; one client mid-transaction.
    let idle = pooler.client().await;
    assert_eq!(first_value(&idle, "SELECT 1").await, "1");
    let busy = pooler.client().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let series = scrape(&pooler, "exporter", "exporter-pw").await;
    let from_maps: BTreeSet<&str> = series
        .iter()
        .map(String::as_str)
        .filter(|s| {
            [
                "pgbouncer_databases_",
                "pgbouncer_stats_totals_",
                "pgbouncer_pools_",
            ]
            .iter()
            .any(|p| s.starts_with(p))
        })
        .collect();
    assert_eq!(
        from_maps,
        PGBOUNCER_SERIES.iter().copied().collect::<BTreeSet<_>>(),
        "the series the exporter reports for PgBouncer 1.25"
    );
    // Per scrape the exporter opens a new connection; a second scrape, as an admin, and with
    // the busy client gone, sees the same.
    busy.batch_execute("COMMIT").await.unwrap();
    drop(busy);
    assert_eq!(scrape(&pooler, "admin", "admin-pw").await, series);
}
