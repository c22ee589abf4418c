//! PgBouncer's timeouts and limits against a real Postgres: server_lifetime,
//! client_idle_timeout, idle_transaction_timeout, query_timeout, server_login_retry,
//! server_check_query/server_check_delay, max_db_connections, max_user_connections.
//! Short timeouts, `eventually` polling: no assertion depends on how fast the machine is.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

async fn pid(c: &tokio_postgres::Client) -> i32 {
    first_value(c, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap()
}

async fn backend_alive(pg: &PgServer, pid: i32) -> bool {
    let su = pg.superuser().await;
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
        &[&pid],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

async fn backends_of(pg: &PgServer, db: &str, user: &str) -> i64 {
    let su = pg.superuser().await;
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
        &[&db, &user],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_replaces_old_servers() {
    let pg = PgServer::shared();
    let db = pg.create_db("lifetime").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nserver_lifetime = 0.5",
    )
    .await;
    let c = pooler.client().await;
    let first = pid(&c).await;
    // Idle past its lifetime, the server is closed by the janitor...
    assert!(
        eventually(LIMIT, || async { !backend_alive(pg, first).await }).await,
        "server outlived server_lifetime"
    );
    // ...and the client, still connected, gets a new one.
    assert_ne!(pid(&c).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_drops_idle_clients_only() {
    let pg = PgServer::shared();
    let db = pg.create_db("client_idle").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nclient_idle_timeout = 0.5",
    )
    .await;
    let (idle, idle_conn) = connect_watched(&pooler.app_url()).await;
    assert_eq!(first_value(&idle, "SELECT 1").await, "1");
    let (code, msg) = connection_end(idle_conn, LIMIT, "idle client")
        .await
        .expect("an error");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "client_idle_timeout")
    );
    // A client inside a transaction holds a server: it is not idle in PgBouncer's sense.
    let busy = pooler.client().await;
    busy.batch_execute("BEGIN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    busy.batch_execute("COMMIT")
        .await
        .expect("a transaction is not client idleness");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_client_and_server() {
    let pg = PgServer::shared();
    let db = pg.create_db("idle_xact").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nidle_transaction_timeout = 0.5",
    )
    .await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    // Busy transactions are not idle ones: this one works for longer than the timeout.
    setup
        .batch_execute("BEGIN; SELECT pg_sleep(1.2); INSERT INTO t VALUES (1); COMMIT")
        .await
        .unwrap();
    let (c, conn) = connect_watched(&pooler.app_url()).await;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    let server = pid(&c).await;
    let (code, msg) = connection_end(conn, LIMIT, "idle in transaction")
        .await
        .expect("an error");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "idle transaction timeout")
    );
    assert!(
        eventually(LIMIT, || async { !backend_alive(pg, server).await }).await,
        "the server of the idle transaction stayed"
    );
    assert_eq!(
        first_value(&setup, "SELECT count(*) FROM t").await,
        "1",
        "rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_ends_a_query_that_runs_too_long() {
    let pg = PgServer::shared();
    let db = pg.create_db("query_timeout").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nquery_timeout = 0.5\nadmin_users = \"app\"",
    )
    .await;
    let c = pooler.client().await;
    let err = c.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err:?}");
    assert_eq!(message(&err), "query timeout");
    // The server went with it: the pool holds nothing for the gone client.
    let console = connect(&pooler.console_url(APP_USER, APP_PASSWORD)).await;
    assert!(
        eventually(LIMIT, || async {
            let pools = show(&console, "SHOW POOLS").await;
            pools
                .iter()
                .any(|r| r["database"] == db && r["sv_active"] == "0")
        })
        .await
    );
    // Quick queries are untouched.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 7").await, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_retry_answers_from_the_last_failure() {
    let pg = PgServer::shared();
    let db = pg.create_db("login_retry").await;
    let dead_port = free_port();
    let pooler = Pooler::start_on_port(
        pg,
        dead_port,
        &db,
        "server_connect_timeout = 2\nserver_login_retry = 600",
        "",
    )
    .await;
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    // Within server_login_retry, the next client is refused without another attempt.
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err:?}");
    let msg = message(&err);
    assert!(
        msg.starts_with("server login has been failing, cached error: pooler cannot connect")
            && msg.ends_with("(server_login_retry)"),
        "{msg}"
    );
    // With server_login_retry = 0 every client tries again.
    let pooler = Pooler::start_on_port(
        pg,
        dead_port,
        &db,
        "server_connect_timeout = 2\nserver_login_retry = 0",
        "",
    )
    .await;
    for _ in 0..2 {
        let err = try_connect(&pooler.app_url()).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_tests_idle_servers_before_reuse() {
    let pg = PgServer::shared();
    let db = pg.create_db("check_query").await;
    // A check that passes: the same server is reused, and counts as sv_used while idle.
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nserver_check_delay = 0\n\
         server_check_query = \"select 1\"\nadmin_users = \"app\"",
    )
    .await;
    let c = pooler.client().await;
    let first = pid(&c).await;
    assert_eq!(pid(&c).await, first);
    let console = connect(&pooler.console_url(APP_USER, APP_PASSWORD)).await;
    let pools = show(&console, "SHOW POOLS").await;
    let row = pools.iter().find(|r| r["database"] == db).unwrap();
    assert_eq!(
        (row["sv_used"].as_str(), row["sv_idle"].as_str()),
        ("1", "0")
    );

    // A check that fails: the idle server is closed before reuse and a new one opened.
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nserver_check_delay = 0\n\
         server_check_query = \"SELECT 1/0\"",
    )
    .await;
    let c = pooler.client().await;
    let first = pid(&c).await;
    let second = pid(&c).await;
    assert_ne!(first, second, "a server that failed its check was reused");
    assert!(eventually(LIMIT, || async { !backend_alive(pg, first).await }).await);

    // An empty query turns checking off.
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nserver_check_delay = 0\nserver_check_query = \"\"",
    )
    .await;
    let c = pooler.client().await;
    let first = pid(&c).await;
    assert_eq!(pid(&c).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_servers_across_users() {
    let pg = PgServer::shared();
    let db = pg.create_db("max_db").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 5\nmax_db_connections = 2",
    )
    .await;
    let clients: Vec<_> = futures_util::future::join_all((0..2).map(|_| pooler.client())).await;
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    // A third transaction waits although the pool has room: the database is full.
    let third = pooler.client().await;
    let waiting = tokio::spawn(async move { first_value(&third, "SELECT 3").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "max_db_connections let a third server open"
    );
    assert_eq!(backends_of(pg, &db, APP_USER).await, 2);
    clients[0].batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        "3"
    );
    clients[1].batch_execute("COMMIT").await.unwrap();

    // Another user of the same database: an idle server of the first user's pool is closed
    // to make room for it (PgBouncer's eviction).
    let su_url = pooler.url("postgres", SUPERUSER_PASSWORD);
    let other = connect(&su_url).await;
    let other2 = connect(&su_url).await;
    other.batch_execute("BEGIN; SELECT 1").await.unwrap();
    other2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(backends_of(pg, &db, "postgres").await, 2);
    assert!(
        eventually(LIMIT, || async {
            backends_of(pg, &db, APP_USER).await == 0
        })
        .await,
        "the first user's idle servers were not evicted"
    );
    other.batch_execute("COMMIT").await.unwrap();
    other2.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_caps_servers_across_databases() {
    let pg = PgServer::shared();
    let db = pg.create_db("max_user").await;
    let db2 = pg.create_db("max_user2").await;
    let pooler = Pooler::start_full(
        pg.port,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 5\nmax_user_connections = 1",
        &format!(
            "\n[databases.{db2}]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        ),
        &Pooler::default_userlist(),
    )
    .await;
    let url2 = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db2}",
        pooler.port()
    );
    // Each login opens a server of its pool (to learn its parameters): the second evicts the
    // first pool's idle one.
    let c1 = pooler.client().await;
    let c2 = connect(&url2).await;
    c1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiting = tokio::spawn(async move { first_value(&c2, "SELECT 2").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "max_user_connections let a second server open"
    );
    // The first transaction ends: its server idles in the other pool and is evicted for
    // the waiting client.
    c1.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        "2"
    );
    let total = backends_of(pg, &db, APP_USER).await + backends_of(pg, &db2, APP_USER).await;
    assert!(total <= 1, "{total} servers for a user limited to 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_login_timeout_drops_a_client_that_never_logs_in() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = PgServer::shared();
    let db = pg.create_db("login_timeout").await;
    let pooler = Pooler::start(pg, &db, "client_login_timeout = 0.5").await;
    // Silent after connecting, and stuck halfway through a startup packet (slowloris).
    for sent in [&b""[..], &[0u8, 0, 0, 40, 0, 3][..]] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pooler.port()))
            .await
            .unwrap();
        s.write_all(sent).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
            .await
            .expect("the pooler kept a client that never logged in")
            .ok();
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("client_login_timeout"), "{text:?}");
    }
    // A client that logs in promptly is unaffected.
    let c = pooler.client().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers_down_to_min_pool_size() {
    let pg = PgServer::shared();
    let db = pg.create_db("idle_timeout").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nserver_idle_timeout = 0.5",
    )
    .await;
    let c = pooler.client().await;
    let server = pid(&c).await;
    assert!(
        eventually(LIMIT, || async { !backend_alive(pg, server).await }).await,
        "an idle server outlived server_idle_timeout"
    );
    assert_eq!(first_value(&c, "SELECT 1").await, "1", "the client stays");

    // min_pool_size: servers are opened ahead of demand and kept past the idle timeout.
    let db = pg.create_db("min_pool").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nserver_idle_timeout = 0.5\nmin_pool_size = 2",
    )
    .await;
    let c = pooler.client().await;
    assert!(
        eventually(LIMIT, || async {
            backends_of(pg, &db, APP_USER).await == 2
        })
        .await,
        "min_pool_size servers were not opened"
    );
    let before = pooler.server_pids(pg).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pooler.server_pids(pg).await,
        before,
        "min_pool_size servers were closed"
    );
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
}
