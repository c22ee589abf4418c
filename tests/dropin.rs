//! PgBouncer keys a migrating deployment relies on, each against a real Postgres:
//! `transaction_timeout` (per user in `[users]`), `query_wait_notify`,
//! `server_reset_query_always`, `application_name_add_host`, `stats_period`, and
//! `tcp_keepalive` with its timings on both the client and the server sockets.
//!
//! `stats_period` and the keepalive timings are pooler-wide (one pooler per process in
//! production), so every pooler in this binary starts with the same values of them.

mod common;
mod wire;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// Every pooler of this binary: the same process-wide values (see the module's comment).
const SHARED: &str = "stats_period = 1\ntcp_keepalive = 1\ntcp_keepidle = 600\n\
                      tcp_keepintvl = 7\ntcp_keepcnt = 4\ntcp_user_timeout = 9000";

async fn start(pg: &PgServer, db: &str, extra: &str, after_db: &str) -> Pooler {
    Pooler::start_with(pg, db, &format!("{SHARED}\n{extra}"), after_db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_timeout_per_user_ends_a_long_transaction() {
    let pg = PgServer::shared();
    let db = pg.create_db("xact_timeout").await;
    // Set for the app user only, in its [users] entry.
    let pooler = start(
        pg,
        &db,
        "pool_mode = \"transaction\"",
        &format!("[users.{APP_USER}]\ntransaction_timeout = 0.5"),
    )
    .await;
    let (c, conn) = connect_watched(&pooler.app_url()).await;
    c.batch_execute("BEGIN").await.unwrap();
    // Busy, never idle for long: only transaction_timeout can end it.
    let busy = async {
        loop {
            if let Err(e) = c.simple_query("SELECT 1").await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let err = tokio::time::timeout(LIMIT, busy)
        .await
        .expect("transaction_timeout never ended the transaction");
    // The FATAL reaches the query when one is in flight, the connection otherwise.
    let (code, msg) = match err.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => connection_end(conn, LIMIT, "timed-out client")
            .await
            .expect("an error"),
    };
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "transaction timeout")
    );
    // Outside a transaction the same client pattern is fine.
    let c = pooler.client().await;
    for _ in 0..5 {
        assert_eq!(first_value(&c, "SELECT 1").await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_notify_tells_a_queued_client() {
    let pg = PgServer::shared();
    let db = pg.create_db("wait_notify").await;
    let pooler = start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_notify = 0.2",
        "",
    )
    .await;
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pooler.port()));
    let mut queued = wire::login(addr, APP_USER, APP_PASSWORD, &db).await;
    use tokio::io::AsyncWriteExt;
    queued.write_all(&wire::query("SELECT 42")).await.unwrap();
    let got = wire::read_until(&mut queued, b'N').await;
    let notice = String::from_utf8_lossy(&got.last().unwrap().1).into_owned();
    assert!(
        notice.contains("No server connection available in postgres backend, client being queued"),
        "{notice}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let rest = wire::read_until(&mut queued, b'Z').await;
    let rows: Vec<_> = rest.iter().filter(|(t, _)| *t == b'D').collect();
    assert_eq!(wire::data_row(&rows[0].1), vec![Some("42".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_query_always_resets_between_transactions() {
    let pg = PgServer::shared();
    let db = pg.create_db("reset_always").await;
    // One server, and temp tables not pinning (warn): the next transaction gets the same
    // server, so only the reset can take the table away. A setting is the client's and
    // follows it either way (it is set again after the reset).
    let base = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nsession_state = \"warn\"";
    for (always, want) in [(false, "1"), (true, "0")] {
        let pooler = start(
            pg,
            &db,
            &format!("{base}\nserver_reset_query_always = {always}"),
            "",
        )
        .await;
        let c = pooler.client().await;
        c.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE leftover (x int)")
            .await
            .unwrap();
        assert_eq!(
            first_value(
                &c,
                "SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'"
            )
            .await,
            want,
            "always = {always}"
        );
        assert_eq!(first_value(&c, "SHOW work_mem").await, "7MB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_appends_the_client_address() {
    let pg = PgServer::shared();
    let db = pg.create_db("appname_host").await;
    let pooler = start(
        pg,
        &db,
        "pool_mode = \"transaction\"\napplication_name_add_host = 1",
        "",
    )
    .await;
    let c = connect(&format!("{} application_name=billing", pooler.app_url())).await;
    let name = first_value(&c, "SELECT current_setting('application_name')").await;
    assert!(name.starts_with("billing - 127.0.0.1:"), "{name}");
    let port: u16 = name.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{name}");
    // No name given: PgBouncer's "app".
    let c = pooler.client().await;
    let name = first_value(&c, "SELECT current_setting('application_name')").await;
    assert!(name.starts_with("app - 127.0.0.1:"), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_period_sets_how_often_averages_move() {
    let pg = PgServer::shared();
    let db = pg.create_db("stats_period").await;
    let pooler = start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nadmin_users = \"postgres\"",
        "",
    )
    .await;
    let c = pooler.client().await;
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    // The default period (60 s) is longer than LIMIT: only stats_period = 1 gets a non-zero
    // average in time.
    let moved = eventually(LIMIT, || async {
        for _ in 0..20 {
            first_value(&c, "SELECT 1").await;
        }
        show(&console, "SHOW STATS")
            .await
            .iter()
            .filter(|r| r["database"] == db)
            .any(|r| r["avg_xact_count"].parse::<u64>().unwrap_or(0) > 0)
    })
    .await;
    assert!(moved, "avg_xact_count stayed 0");
}

/// `ss`'s timer column for the established socket with local port `port`: the keepalive
/// timer and the seconds left on it.
fn keepalive_timer(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // timer:(keepalive,9min59sec,0): numbers each followed by a unit.
    let timer = text.split("timer:(keepalive,").nth(1)?;
    let left = timer.split(',').next()?;
    let (mut secs, mut rest) = (0.0, left);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        secs += value
            * match &rest[..unit_len] {
                "ms" => 0.001,
                "sec" => 1.0,
                "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            };
        rest = &rest[unit_len..];
    }
    let secs = secs as u64;
    Some(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_timings_on_client_and_server_sockets() {
    let pg = PgServer::shared();
    let db = pg.create_db("keepalive").await;
    // The sockets' timers are read with ss (iproute2), as an operator would check them.
    assert!(
        std::process::Command::new("ss")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs ss (iproute2)"
    );
    let pooler = start(pg, &db, "pool_mode = \"session\"", "").await;
    let c = pooler.client().await;
    // The pooler's socket to Postgres: its local port is what the backend sees as the
    // client's.
    let server_port: u16 = first_value(&c, "SELECT inet_client_port()")
        .await
        .parse()
        .unwrap();
    // tcp_keepidle = 600: the timer starts at 10 minutes, not the system's 2 hours.
    let mut server = None;
    eventually(LIMIT, || {
        server = keepalive_timer(server_port);
        let found = server.is_some();
        async move { found }
    })
    .await;
    let server = server.expect("keepalive on the server socket");
    assert!(server <= 600, "server socket keepalive in {server}s");
    // The pooler's side of the client connection has the listener's port.
    // ss shows the keepalive timer only while no retransmission timer runs: look again
    // until it does.
    let mut client = None;
    eventually(LIMIT, || {
        client = keepalive_timer(pooler.port());
        let found = client.is_some();
        async move { found }
    })
    .await;
    let client = client.expect("keepalive on the client socket");
    assert!(client <= 600, "client socket keepalive in {client}s");
}
