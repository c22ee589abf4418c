//! The bounded pool: isolation under concurrency, the reserve, waits and refusals, session
//! mode resets. Every count is checked against Postgres's own `pg_stat_activity`.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_small_pool_no_crosstalk_and_bounded_servers() {
    let pg = PgServer::shared();
    let db = pg.create_db("crosstalk").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 10\nmax_client_conn = 1000",
    )
    .await;
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE marks (client int, round int, marker text)")
        .await
        .unwrap();

    // Watch Postgres while the load runs: the pool must never exceed its size.
    let watch = BackendWatch::start(pg, &db, Duration::from_millis(5)).await;

    const CLIENTS: i32 = 500;
    const ROUNDS: i32 = 4;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let url = pooler.app_url();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url).await;
            for round in 0..ROUNDS {
                let marker = format!("client-{id}-round-{round}");
                let tx = c.transaction().await.unwrap();
                tx.execute(
                    "INSERT INTO marks VALUES ($1, $2, $3)",
                    &[&id, &round, &marker],
                )
                .await
                .unwrap();
                // Read back inside the same transaction: must be exactly our own row.
                let rows = tx
                    .query(
                        "SELECT marker FROM marks WHERE client = $1 AND round = $2",
                        &[&id, &round],
                    )
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].get::<_, String>(0), marker);
                // Simple protocol too: the session-visible value is ours alone.
                let echoed = tx
                    .simple_query(&format!("SELECT '{marker}'"))
                    .await
                    .unwrap();
                let got = echoed.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                assert_eq!(got.as_deref(), Some(marker.as_str()));
                if round % 2 == 0 {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                // Extended protocol outside a transaction: prepare and execute may land on
                // different servers; the pooler keeps the statement working.
                let mine: i64 = c
                    .query_one("SELECT count(*) FROM marks WHERE client = $1", &[&id])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(mine, i64::from(round / 2 + 1));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let peak = watch.peak().await;

    let expected = (CLIENTS * ROUNDS / 2).to_string();
    // Even rounds committed, odd ones rolled back.
    assert_eq!(
        first_value(&setup, "SELECT count(*) FROM marks").await,
        expected
    );
    assert_eq!(
        first_value(&setup, "SELECT count(DISTINCT marker) FROM marks").await,
        expected
    );
    assert_eq!(
        first_value(&setup, "SELECT count(*) FROM marks WHERE round % 2 = 1").await,
        "0"
    );
    assert!(
        peak <= 10,
        "pg_stat_activity showed {peak} backends for a pool of 10"
    );
    assert!(
        peak >= 2,
        "the load never used more than one server ({peak})"
    );
}

/// Holds a server inside an open transaction until dropped.
async fn hold_server(pooler: &Pooler) -> tokio_postgres::Client {
    let c = pooler.client().await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_and_no_reserve_before_its_timeout() {
    let pg = PgServer::shared();
    let db = pg.create_db("qwt").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nreserve_pool_size = 2\n\
         reserve_pool_timeout = 60\nquery_wait_timeout = 0.5",
    )
    .await;
    let a = hold_server(&pooler).await;
    let b = hold_server(&pooler).await;
    let waiter = pooler.client().await;
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"));
    assert_eq!(message(&err), "query_wait_timeout");
    // The reserve was not touched: its timeout (60 s) never passed.
    assert_eq!(pooler.server_pids(pg).await.len(), 2);
    // The busy pool is not "server down": the holders finish normally.
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let fresh = pooler.client().await;
    assert_eq!(
        fresh
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_opens_after_reserve_pool_timeout() {
    let pg = PgServer::shared();
    let db = pg.create_db("reserve").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nreserve_pool_size = 1\n\
         reserve_pool_timeout = 0.2\nquery_wait_timeout = 30",
    )
    .await;
    let a = hold_server(&pooler).await;
    let b = hold_server(&pooler).await;
    // Both pool servers are held for the whole time: only the reserve can serve this one.
    // (Simple protocol: named prepared statements across transactions are issue 5's.)
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 3").await, "3");
    // And no more than one reserve server: a fourth waits for the reserve to come back.
    let d = pooler.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    let d_query = tokio::spawn(async move { first_value(&d, "SELECT 4").await });
    assert!(
        eventually(Duration::from_secs(10), || async {
            pooler.server_pids(pg).await.len() == 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !d_query.is_finished(),
        "a fourth server was opened beyond the reserve"
    );
    assert_eq!(pooler.server_pids(pg).await.len(), 3);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(d_query.await.unwrap(), "4");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_server_in_arrival_order() {
    let pg = PgServer::shared();
    let db = pg.create_db("fifo").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE arrivals (seq serial, who int)")
        .await
        .unwrap();
    let holder = hold_server(&pooler).await;
    let mut tasks = Vec::new();
    for who in 0..5i32 {
        let c = pooler.client().await;
        tasks.push(tokio::spawn(async move {
            // One round trip each (simple protocol), so arrival order is checkout order.
            c.simple_query(&format!("INSERT INTO arrivals (who) VALUES ({who})"))
                .await
                .unwrap();
        }));
        // Let this waiter queue up before the next one arrives.
        let pooler_ref = &pooler;
        assert!(
            eventually(Duration::from_secs(10), || async move {
                pooler_ref.running.app.pools()[0].counts().waiting == who as usize + 1
            })
            .await
        );
        // Waiters that arrive within a millisecond of each other count as arriving together
        // (one on the server's own worker thread may go first, see `pool::next_waiter`).
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let order: Vec<i32> = setup
        .query("SELECT who FROM arrivals ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

/// With two worker threads, clients on both threads take turns on the one server: the
/// server's socket moves to each client's thread at checkout (`workers::adopt`), and every
/// reply still reaches the client that asked, on the same backend. Each thread accepts on its
/// own listener and the kernel hashes connections to them: all sixteen clients on one thread
/// has odds 2^-15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_worker_threads_take_turns_on_one_server() {
    let pg = PgServer::shared();
    let db = pg.create_db("two_workers").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nworkers = 2",
    )
    .await;
    assert_eq!(pooler.running.workers(), 2);
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(pooler.client().await);
    }
    let mut pids = std::collections::HashSet::new();
    for i in 0..48i32 {
        let c = &clients[i as usize % clients.len()];
        let tag = format!("client {}", i as usize % clients.len());
        let row = c
            .query_one(
                "SELECT $1::int + 1, $2::text, pg_backend_pid()",
                &[&i, &tag],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, String>(1), tag);
        pids.insert(row.get::<_, i32>(2));
    }
    assert_eq!(pids.len(), 1, "one server served them all: {pids:?}");
    assert_eq!(pooler.server_pids(pg).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_with_53300() {
    let pg = PgServer::shared();
    let db = pg.create_db("maxconn").await;
    let pooler = Pooler::start(pg, &db, "max_client_conn = 2").await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert_eq!(
        message(&err),
        "no more connections allowed (max_client_conn)"
    );
    drop(a);
    // A slot frees when a client leaves.
    assert!(
        eventually(Duration::from_secs(10), || async {
            try_connect(&pooler.app_url()).await.is_ok()
        })
        .await
    );
    assert_eq!(
        b.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_with_discard_all() {
    let pg = PgServer::shared();
    let db = pg.create_db("session").await;
    let pooler = Pooler::start(pg, &db, "pool_mode = \"session\"\ndefault_pool_size = 1").await;
    let a = pooler.client().await;
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    // Session mode: the same server for the whole session, between transactions too.
    let again: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid_a);
    drop(a);
    let b = pooler.client().await;
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_b, pid_a, "pool of one: same server reused");
    let work_mem: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "4MB", "SET leaked across sessions");
    let err = b.query("SELECT * FROM scratch", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("42P01"),
        "temp table leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_servers_between_transactions() {
    let pg = PgServer::shared();
    let db = pg.create_db("share").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let pa: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pb: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pa, pb, "one server serves both clients in turn");
    assert_eq!(pooler.server_pids(pg).await, vec![pa]);
}

/// A relay to Postgres that holds every new connection for `HOLD` before passing anything
/// on (a slow server login), counting connections and how many it held at once.
struct SlowLogins {
    port: u16,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most_at_once: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowLogins {
    const HOLD: Duration = Duration::from_millis(300);

    async fn start(pg_port: u16) -> SlowLogins {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let opened = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (o, m) = (opened.clone(), most_at_once.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                o.fetch_add(1, SeqCst);
                m.fetch_max(held.fetch_add(1, SeqCst) + 1, SeqCst);
                let held = held.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SlowLogins::HOLD).await;
                    held.fetch_sub(1, SeqCst);
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        SlowLogins {
            port,
            opened,
            most_at_once,
        }
    }
}

/// A cold pool meeting a burst of clients opens its servers one at a time, as PgBouncer does,
/// and serves the queue from the first server on. Opening one per queued client at once had
/// Postgres fork them all together while the first transactions waited for the slowest
/// login (2,000 clients on a cold pool of 150: 75 ms a transaction for the first second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pool_logs_in_one_server_at_a_time_and_serves_the_queue_meanwhile() {
    use std::sync::atomic::Ordering::SeqCst;
    let pg = PgServer::shared();
    let db = pg.create_db("cold_pool").await;
    let relay = SlowLogins::start(pg.port).await;
    let pooler = Pooler::start_on_port(
        pg,
        relay.port,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 8\nserver_connect_timeout = 30",
        "",
    )
    .await;
    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(pooler.client().await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let n: i32 = c
                .query_one(&format!("SELECT {i}"), &[])
                .await
                .unwrap()
                .get(0);
            (i as i32, n)
        }));
    }
    for t in tasks {
        let (i, n) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a queued client was never served")
            .unwrap();
        assert_eq!(n, i);
    }
    assert_eq!(
        relay.most_at_once.load(SeqCst),
        1,
        "servers logged in concurrently"
    );
    let opened = relay.opened.load(SeqCst);
    assert!(
        opened < CLIENTS,
        "{opened} servers for {CLIENTS} one-statement clients: the queue waited for logins \
         instead of the first server"
    );
}
