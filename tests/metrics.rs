//! Prometheus metrics and health endpoints against a real Postgres: the numbers a scrape and
//! `SHOW POOLS` give must agree with what Postgres itself reports in `pg_stat_activity`.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// Holds a server inside an open transaction until dropped.
async fn hold_server(pooler: &Pooler) -> tokio_postgres::Client {
    let c = pooler.client().await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    c
}

/// Backends of `db` by state, as Postgres sees them: (idle in transaction, idle, total).
async fn pg_states(pg: &PgServer, db: &str) -> (i64, i64, i64) {
    let su = pg.superuser().await;
    let row = su
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'idle in transaction'), \
                    count(*) FILTER (WHERE state = 'idle'), count(*) \
             FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_show_pools_agree_with_postgres_under_load() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_load").await;
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = 4\nmax_client_conn = 200\n\
             query_wait_timeout = 60\nmetrics_port = {}\nadmin_users = \"postgres\"",
            free_port()
        ),
    )
    .await;
    let labels = [("database", db.as_str()), ("user", APP_USER)];
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE t (client int, round int)")
        .await
        .unwrap();

    // A load: many clients, a small pool.
    const CLIENTS: i32 = 30;
    const ROUNDS: i32 = 20;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let url = pooler.app_url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            for round in 0..ROUNDS {
                c.simple_query(&format!("INSERT INTO t VALUES ({id}, {round})"))
                    .await
                    .unwrap();
            }
        }));
    }
    // While it runs, every scrape respects the pool's bound.
    let mut scrapes = 0;
    while !tasks.iter().all(|t| t.is_finished()) && scrapes < 200 {
        let body = pooler.scrape().await;
        let servers: f64 = [
            "pooler_pools_server_active_connections",
            "pooler_pools_server_idle_connections",
            "pooler_pools_server_login_connections",
        ]
        .iter()
        .map(|n| metric(&body, n, &labels).unwrap_or(0.0))
        .sum();
        assert!(servers <= 4.0, "{servers} servers in a pool of 4:\n{body}");
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let body = pooler.scrape().await;
    let xacts = metric(
        &body,
        "pooler_stats_totals_sql_transactions_pooled_total",
        &labels,
    )
    .unwrap();
    // Each INSERT is one transaction; setup's CREATE TABLE adds one more.
    assert!(xacts >= f64::from(CLIENTS * ROUNDS), "{xacts}");
    let queries = metric(&body, "pooler_stats_totals_queries_pooled_total", &labels).unwrap();
    assert!(queries >= f64::from(CLIENTS * ROUNDS), "{queries}");
    let assignments = metric(
        &body,
        "pooler_stats_totals_server_assignments_total",
        &labels,
    )
    .unwrap();
    assert!(assignments >= f64::from(CLIENTS * ROUNDS), "{assignments}");
    let received = metric(&body, "pooler_stats_totals_received_bytes_total", &labels).unwrap();
    let sent = metric(&body, "pooler_stats_totals_sent_bytes_total", &labels).unwrap();
    // At least the INSERT texts went up, and a CommandComplete + ReadyForQuery came back each.
    assert!(received >= f64::from(CLIENTS * ROUNDS * 20), "{received}");
    assert!(sent >= f64::from(CLIENTS * ROUNDS * 17), "{sent}");
    let waits_after_load = metric(&body, "pooler_client_wait_seconds_count", &labels).unwrap();
    assert_eq!(waits_after_load, assignments);
    let xact_count = metric(&body, "pooler_transaction_duration_seconds_count", &labels).unwrap();
    assert_eq!(xact_count, xacts);
    let opened = metric(&body, "pooler_server_connections_opened_total", &labels).unwrap();
    assert!((1.0..=4.0).contains(&opened), "{opened}");

    // Two servers held in open transactions: the pooler's view and Postgres's agree.
    let a = hold_server(&pooler).await;
    let b = hold_server(&pooler).await;
    let admin = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let (in_tx, idle, total) = pg_states(pg, &db).await;
    assert_eq!(in_tx, 2);
    let pools = show(&admin, "SHOW POOLS").await;
    let pool = pools
        .iter()
        .find(|r| r["database"] == db && r["user"] == APP_USER)
        .expect("pool row");
    assert_eq!(pool["sv_active"], in_tx.to_string());
    assert_eq!(pool["sv_idle"], idle.to_string());
    assert_eq!(pool["pool_mode"], "transaction");
    let body = pooler.scrape().await;
    assert_eq!(
        metric(&body, "pooler_pools_server_active_connections", &labels),
        Some(in_tx as f64)
    );
    assert_eq!(
        metric(&body, "pooler_pools_server_idle_connections", &labels),
        Some(idle as f64)
    );
    assert_eq!(
        metric(&body, "pooler_pools_server_active_connections", &labels).unwrap()
            + metric(&body, "pooler_pools_server_idle_connections", &labels).unwrap(),
        total as f64
    );

    // Exhaust the pool: a third and fourth holder, then a client that must wait.
    let c = hold_server(&pooler).await;
    let d = hold_server(&pooler).await;
    let waiter = pooler.client().await;
    let waiting = tokio::spawn(async move { first_value(&waiter, "SELECT 42").await });
    assert!(
        eventually(LIMIT, || async {
            let body = pooler.scrape().await;
            metric(&body, "pooler_pools_client_waiting_connections", &labels) == Some(1.0)
                && metric(&body, "pooler_pools_client_maxwait_seconds", &labels)
                    .is_some_and(|w| w > 0.0)
        })
        .await,
        "the waiting client never showed in /metrics"
    );
    let pools = show(&admin, "SHOW POOLS").await;
    let pool = pools.iter().find(|r| r["database"] == db).unwrap();
    assert_eq!(pool["cl_waiting"], "1");
    assert_eq!(pool["sv_active"], "4");
    assert_eq!(pg_states(pg, &db).await.0, 4);
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(
        clients
            .iter()
            .filter(|r| r["database"] == db && r["state"] == "waiting")
            .count(),
        1
    );
    assert_eq!(
        clients
            .iter()
            .filter(|r| r["database"] == db && r["state"] == "active")
            .count(),
        4
    );

    // Releasing one serves the waiter; its wait lands in the histogram.
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), "42");
    let body = pooler.scrape().await;
    assert_eq!(
        metric(&body, "pooler_pools_client_waiting_connections", &labels),
        Some(0.0)
    );
    let waits = metric(&body, "pooler_client_wait_seconds_count", &labels).unwrap();
    assert!(waits > waits_after_load, "{waits} <= {waits_after_load}");
    // The waiter waited at least as long as the poll above took to see it: it is past the
    // smallest bucket.
    let fast = metric(
        &body,
        "pooler_client_wait_seconds_bucket",
        &[("database", &db), ("user", APP_USER), ("le", "0.0001")],
    )
    .unwrap();
    assert!(fast < waits, "the wait was not recorded as a wait");
    let wait_total = metric(
        &body,
        "pooler_stats_totals_client_wait_seconds_total",
        &labels,
    )
    .unwrap();
    assert!(wait_total > 0.0);
    assert_eq!(metric(&body, "pooler_up", &[]), Some(1.0));
    assert_eq!(
        metric(&body, "pooler_config_max_client_connections", &[]),
        Some(200.0)
    );
    assert!(
        metric(
            &body,
            "pooler_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ) == Some(1.0)
    );
    drop((b, c, d));
}

async fn used_clients_are(pooler: &Pooler, n: f64) -> bool {
    metric(&pooler.scrape().await, "pooler_used_clients", &[]) == Some(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_counters_count_query_wait_timeout_and_max_client_conn() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_errors").await;
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 0.3\n\
             max_client_conn = 3\nmetrics_port = {}",
            free_port()
        ),
    )
    .await;
    let errors = |body: &str, kind: &str| metric(body, "pooler_errors_total", &[("kind", kind)]);
    let body = pooler.scrape().await;
    assert_eq!(errors(&body, "query_wait_timeout"), Some(0.0));
    assert_eq!(errors(&body, "max_client_conn"), Some(0.0));

    let holder = hold_server(&pooler).await;
    let waiter = pooler.client().await;
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(message(&err), "query_wait_timeout");
    let body = pooler.scrape().await;
    assert_eq!(errors(&body, "query_wait_timeout"), Some(1.0));

    // Once the refused waiter is gone, the holder and two more fill max_client_conn = 3.
    assert!(eventually(LIMIT, || used_clients_are(&pooler, 1.0)).await);
    let _b = pooler.client().await;
    let _c = pooler.client().await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let body = pooler.scrape().await;
    assert_eq!(errors(&body, "max_client_conn"), Some(1.0));
    assert!(eventually(LIMIT, || used_clients_are(&pooler, 3.0)).await);

    // A wrong password counts too.
    let err = try_connect(&pooler.url(APP_USER, "wrong"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    drop(holder);
    assert!(
        eventually(LIMIT, || async {
            try_connect(&pooler.url(APP_USER, "wrong"))
                .await
                .err()
                .and_then(|e| sqlstate(&e))
                .as_deref()
                == Some("28P01")
        })
        .await
    );
    let body = pooler.scrape().await;
    assert!(errors(&body, "auth_failed").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_readyz_follow_postgres() {
    let pg = PgServer::start();
    let db = pg.create_db("ready").await;
    let pooler = Pooler::start(
        &pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = 2\nserver_connect_timeout = 2\n\
             metrics_port = {}",
            free_port()
        ),
    )
    .await;
    assert_eq!(pooler.http_get("/healthz").await.0, 200);
    assert_eq!(pooler.http_get("/readyz").await.0, 200);
    assert_eq!(pooler.http_get("/nope").await.0, 404);
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
    assert_eq!(pooler.http_get("/readyz").await.0, 200);
    let labels = [("database", db.as_str()), ("user", APP_USER)];

    // Postgres goes away: the idle server dies with it, the pooler tries to reconnect, fails,
    // and says it is not ready. No client has to try first.
    pg.stop();
    assert!(
        eventually(LIMIT, || async {
            pooler.http_get("/readyz").await.0 == 503
        })
        .await,
        "/readyz stayed ready with Postgres down"
    );
    let (_, why) = pooler.http_get("/readyz").await;
    assert!(why.contains(&format!("{db}/{APP_USER}")), "{why}");
    assert_eq!(
        pooler.http_get("/healthz").await.0,
        200,
        "alive all the same"
    );
    let body = pooler.scrape().await;
    assert_eq!(
        metric(&body, "pooler_pools_server_reachable", &labels),
        Some(0.0)
    );
    assert!(metric(&body, "pooler_server_connect_failures_total", &labels).unwrap() >= 1.0);
    assert!(
        metric(
            &body,
            "pooler_server_connections_closed_total",
            &[
                ("database", db.as_str()),
                ("user", APP_USER),
                ("reason", "dead")
            ]
        )
        .unwrap()
            >= 1.0
    );

    // Postgres is back: ready again, and clients are served.
    pg.restart();
    assert!(
        eventually(LIMIT, || async {
            pooler.http_get("/readyz").await.0 == 200
        })
        .await,
        "/readyz did not recover"
    );
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_zero_means_no_listener() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_off").await;
    let pooler = Pooler::start(pg, &db, "metrics_port = 0").await;
    assert!(pooler.running.metrics_addr.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_server_login_does_not_make_the_pooler_unready() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_badpw").await;
    let pooler = Pooler::start_with(
        pg,
        &db,
        &format!("metrics_port = {}", free_port()),
        "user = \"app\"\npassword = \"not-the-password\"",
    )
    .await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("28P01"),
        "{}",
        message(&err)
    );
    let body = pooler.scrape().await;
    let labels = [("database", db.as_str()), ("user", APP_USER)];
    assert_eq!(
        metric(&body, "pooler_server_connect_failures_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            "pooler_errors_total",
            &[("kind", "server_connect_failed")]
        ),
        Some(1.0)
    );
    // Postgres is up; it refused one pool's credentials. Other pools are fine.
    assert_eq!(
        metric(&body, "pooler_pools_server_reachable", &labels),
        Some(1.0)
    );
    assert_eq!(pooler.http_get("/readyz").await.0, 200);
}

/// Sends raw bytes to the metrics listener and returns the status line.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_answers_only_bounded_gets() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_http").await;
    let pooler = Pooler::start(pg, &db, &format!("metrics_port = {}", free_port())).await;
    let addr = pooler.running.metrics_addr.unwrap();
    assert_eq!(
        raw_status(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000));
    assert_eq!(
        raw_status(addr, huge.as_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // An HTTP/1.0 request gets an HTTP/1.0 answer (hyper's choice, which 1.0 clients expect).
    assert_eq!(
        raw_status(addr, b"HEAD /healthz HTTP/1.0\r\n\r\n").await,
        "HTTP/1.0 200 OK"
    );
    // Still serving after all that.
    assert!(pooler.scrape().await.contains("pooler_up 1"));
}

/// Issue 12, item 4: a pile of idle sockets and slowloris clients on the metrics port must not
/// keep probes from being answered, and are themselves closed by the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_idle_and_slow_connections_pile_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_starve").await;
    let pooler = Pooler::start(pg, &db, &format!("metrics_port = {}", free_port())).await;
    let addr = pooler.running.metrics_addr.unwrap();
    // More idle sockets than the listener serves at once (64); they send nothing.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A few slowloris clients: a request head that never ends, one byte a second, until the
    // pooler closes them (or LIMIT passes: then the test fails below).
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LIMIT;
            let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter();
            for byte in head.chain(std::iter::repeat(&b'a')) {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                if s.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                let mut one = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut one)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    _ => {}
                }
            }
            false
        }));
    }
    // Probes and a scrape are answered, several rounds, with more idle sockets arriving.
    for round in 0..3 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let (status, body) = pooler.http_get(path).await;
            assert_eq!(status, 200, "round {round} {path}: {body}");
        }
        for _ in 0..20 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }
    // Every idle socket is closed by the pooler: dropped to make room, or timed out.
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(LIMIT, s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "idle socket {i} still open: {closed:?}"
        );
    }
    for s in slow {
        assert!(s.await.unwrap(), "a slowloris client was never cut off");
    }
    assert!(pooler.scrape().await.contains("pooler_up 1"));
}

/// Issue 14: the series of a pool RELOAD removed disappear from /metrics (the database is
/// gone from the config), the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_pools_removed_by_reload_disappear() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_reload").await;
    let db2 = pg.create_db("metrics_reload2").await;
    let userlist = format!("{}\"admin\" \"admin-pw\"\n", Pooler::default_userlist());
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        &format!(
            "pool_mode = \"transaction\"\nadmin_users = \"admin\"\nmetrics_port = {}",
            free_port()
        ),
        "",
        &userlist,
    )
    .await;
    let client = pooler.client().await;
    assert_eq!(first_value(&client, "SELECT 1").await, "1");
    drop(client);
    let pool = [("database", db.as_str()), ("user", APP_USER)];
    let body = pooler.scrape().await;
    assert!(
        metric(&body, "pooler_pools_pool_size", &pool).is_some(),
        "{body}"
    );
    // The database entry is renamed: its pool is retired, a new database appears.
    let path = pooler.dir.join("pooler.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&format!("[databases.{db}]"), &format!("[databases.{db2}]")),
    )
    .unwrap();
    let console = connect(&pooler.console_url("admin", "admin-pw")).await;
    console.simple_query("RELOAD").await.expect("RELOAD");
    let url2 = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db2}",
        pooler.port()
    );
    let c2 = connect(&url2).await;
    assert_eq!(first_value(&c2, "SELECT 2").await, "2");
    let body = pooler.scrape().await;
    let gone = format!("database=\"{db}\"");
    assert!(
        !body
            .lines()
            .any(|l| !l.starts_with('#') && l.contains(&gone)),
        "series of the removed pool remain:\n{body}"
    );
    let pool2 = [("database", db2.as_str()), ("user", APP_USER)];
    assert!(
        metric(&body, "pooler_pools_pool_size", &pool2).is_some(),
        "{body}"
    );
    assert_eq!(metric(&body, "pooler_up", &[]), Some(1.0));
}

/// Every series pgbouncer_exporter (prometheus-community, collector.go) emits for PgBouncer
/// exists under `pooler_` with the exporter's labels, except the four the README names as
/// unmeasured: the README's "port by swapping the prefix" holds series by series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exporter_series_has_a_counterpart() {
    let pg = PgServer::shared();
    let db = pg.create_db("metrics_exporter").await;
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\nmax_user_connections = 7\nmetrics_port = {}",
            free_port()
        ),
    )
    .await;
    let c = connect(&format!("{} application_name=billing", pooler.app_url())).await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
    let body = pooler.scrape().await;
    let pool = &["database", "user"][..];
    let db_labels = &[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_mode",
    ][..];
    let none = &[][..];
    let mut expected: Vec<(&str, &[&str])> = vec![
        ("databases", none),
        ("users", none),
        ("pools", none),
        ("free_clients", none),
        ("used_clients", none),
        ("login_clients", none),
        ("free_servers", none),
        ("used_servers", none),
        ("cached_dns_names", none),
        ("cached_dns_zones", none),
        ("in_flight_dns_queries", none),
        ("config_max_client_connections", none),
        ("config_max_user_connections", none),
        ("version_info", &["version"]),
        ("up", none),
        (
            "client_connections",
            &["database", "user", "application_name", "state"],
        ),
    ];
    for m in [
        "pool_size",
        "reserve_pool",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
    ] {
        expected.push((
            Box::leak(format!("databases_{m}").into_boxed_str()),
            db_labels,
        ));
    }
    for m in [
        "queries_pooled_total",
        "received_bytes_total",
        "sent_bytes_total",
        "client_wait_seconds_total",
        "sql_transactions_pooled_total",
        "server_in_transaction_seconds_total",
        "server_assignments_total",
    ] {
        // Per pool here: `user` on top of the exporter's `database`.
        expected.push((
            Box::leak(format!("stats_totals_{m}").into_boxed_str()),
            pool,
        ));
    }
    for m in [
        "client_active_connections",
        "client_active_cancel_connections",
        "client_waiting_connections",
        "client_waiting_cancel_connections",
        "server_active_connections",
        "server_active_cancel_connections",
        "server_being_canceled_connections",
        "server_idle_connections",
        "server_used_connections",
        "server_testing_connections",
        "server_login_connections",
        "client_maxwait_seconds",
    ] {
        expected.push((Box::leak(format!("pools_{m}").into_boxed_str()), pool));
    }
    for (name, labels) in expected {
        let full = format!("pooler_{name}");
        let line = body
            .lines()
            .find(|l| {
                !l.starts_with('#')
                    && (l.starts_with(&format!("{full}{{")) || l.starts_with(&format!("{full} ")))
            })
            .unwrap_or_else(|| panic!("no {full} in\n{body}"));
        let mut got: Vec<&str> = line
            .split_once('{')
            .map(|(_, rest)| {
                rest.split("\",")
                    .filter_map(|p| p.split_once('=').map(|(k, _)| k))
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        let mut want = labels.to_vec();
        want.sort();
        assert_eq!(got, want, "{line}");
    }
    let entry = [
        ("name", db.as_str()),
        ("host", "127.0.0.1"),
        ("port", &pg.port.to_string()),
        ("database", db.as_str()),
        ("force_user", ""),
        ("pool_mode", ""),
    ];
    assert_eq!(
        metric(&body, "pooler_databases_pool_size", &entry),
        Some(20.0)
    );
    assert_eq!(
        metric(&body, "pooler_config_max_user_connections", &[]),
        Some(7.0)
    );
    let billing = [
        ("database", db.as_str()),
        ("user", APP_USER),
        ("application_name", "billing"),
        ("state", "idle"),
    ];
    assert_eq!(
        metric(&body, "pooler_client_connections", &billing),
        Some(1.0)
    );
    // The client leaves: its group is gone from the next scrape, not left at its last value.
    drop(c);
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(
                &pooler.scrape().await,
                "pooler_client_connections",
                &billing,
            )
            .is_none()
        })
        .await
    );
}
