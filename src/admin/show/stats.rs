//! `SHOW STATS`, `SHOW STATS_TOTALS`, `SHOW STATS_AVERAGES`, `SHOW TOTALS`: per-database
//! figures in PgBouncer's columns.

use std::collections::BTreeMap;

use super::{N, T, Table, s};
use crate::app::App;
use crate::stats::{Averages, Totals};

pub(super) fn show_stats(app: &App) -> Table {
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
    for (db, tot, avg) in stats_by_database(app) {
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

/// Totals and averages per database, summed over its pools (PgBouncer's SHOW STATS is per
/// database): averages of durations weighted by how many transactions / assignments each
/// pool had.
fn stats_by_database(app: &App) -> Vec<(String, Totals, Averages)> {
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
        e.2 += a.xact_us * a.xacts;
        e.3 += a.wait_us * a.server_assignments;
    }
    by_db
        .into_iter()
        .map(|(db, (tot, mut avg, xact_weighted, wait_weighted))| {
            avg.xact_us = xact_weighted.checked_div(avg.xacts).unwrap_or(0);
            avg.wait_us = wait_weighted
                .checked_div(avg.server_assignments)
                .unwrap_or(0);
            (db, tot, avg)
        })
        .collect()
}

/// The eleven figures PgBouncer keeps per database, in its order: assignments,
/// transactions, queries, bytes in and out, transaction time, query time, wait time, and the
/// three prepared-statement counts (query time and those three are not measured: 0).
fn figures(
    assignments: u64,
    xacts: u64,
    queries: u64,
    recv: u64,
    sent: u64,
    xact_us: u64,
    wait_us: u64,
) -> [u64; 11] {
    [
        assignments,
        xacts,
        queries,
        recv,
        sent,
        xact_us,
        0,
        wait_us,
        0,
        0,
        0,
    ]
}

fn totals_figures(t: &Totals) -> [u64; 11] {
    figures(
        t.server_assignments,
        t.xacts,
        t.queries,
        t.received,
        t.sent,
        t.xact_us,
        t.wait_us,
    )
}

fn averages_figures(a: &Averages) -> [u64; 11] {
    figures(
        a.server_assignments,
        a.xacts,
        a.queries,
        a.received,
        a.sent,
        a.xact_us,
        a.wait_us,
    )
}

/// SHOW STATS_TOTALS and SHOW STATS_AVERAGES: PgBouncer's column names (the averages' last
/// three keep their `avg_` prefix there, as in PgBouncer).
fn stats_table(app: &App, last_three: [&'static str; 3], averages: bool) -> Table {
    let mut columns = vec![
        ("database", T),
        ("server_assignment_count", N),
        ("xact_count", N),
        ("query_count", N),
        ("bytes_received", N),
        ("bytes_sent", N),
        ("xact_time", N),
        ("query_time", N),
        ("wait_time", N),
    ];
    columns.extend(last_three.map(|c| (c, N)));
    let mut t = Table::new(&columns);
    for (db, tot, avg) in stats_by_database(app) {
        let values = if averages {
            averages_figures(&avg)
        } else {
            totals_figures(&tot)
        };
        let mut row = vec![s(db)];
        row.extend(values.iter().map(s));
        t.rows.push(row);
    }
    t
}

pub(super) fn show_stats_totals(app: &App) -> Table {
    stats_table(
        app,
        ["client_parse_count", "server_parse_count", "bind_count"],
        false,
    )
}

pub(super) fn show_stats_averages(app: &App) -> Table {
    stats_table(
        app,
        [
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
        true,
    )
}

/// SHOW TOTALS: SHOW STATS summed over every database, one `name`, `value` row per figure,
/// named as PgBouncer names them.
pub(super) fn show_totals(app: &App) -> Table {
    const NAMES: [&str; 11] = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
    ];
    let mut tot = Totals::default();
    let (mut avg, mut xact_weighted, mut wait_weighted) = (Averages::default(), 0, 0);
    for (_, t, a) in stats_by_database(app) {
        tot.add(&t);
        avg.server_assignments += a.server_assignments;
        avg.xacts += a.xacts;
        avg.queries += a.queries;
        avg.received += a.received;
        avg.sent += a.sent;
        xact_weighted += a.xact_us * a.xacts;
        wait_weighted += a.wait_us * a.server_assignments;
    }
    avg.xact_us = xact_weighted.checked_div(avg.xacts).unwrap_or(0);
    avg.wait_us = wait_weighted
        .checked_div(avg.server_assignments)
        .unwrap_or(0);
    let mut t = Table::new(&[("name", T), ("value", N)]);
    for (prefix, values) in [
        ("total", totals_figures(&tot)),
        ("avg", averages_figures(&avg)),
    ] {
        for (name, value) in NAMES.iter().zip(values) {
            t.rows.push(vec![s(format!("{prefix}_{name}")), s(value)]);
        }
    }
    t
}
