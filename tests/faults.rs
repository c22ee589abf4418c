//! Faults: clients that vanish mid-transaction, backends killed mid-query and while idle,
//! wrong passwords and unknown databases.

mod common;
mod wire;

use common::*;
use std::time::Duration;

const TX1: &str = "pool_mode = \"transaction\"\ndefault_pool_size = 1";

async fn open_transactions(pg: &PgServer, db: &str) -> i64 {
    let su = pg.superuser().await;
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT NULL \
         AND pid <> pg_backend_pid()",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

async fn client_dies_mid_transaction(abrupt: bool) {
    let pg = PgServer::shared();
    let db = pg
        .create_db(if abrupt { "vanish" } else { "terminate" })
        .await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE t (v text)")
        .await
        .unwrap();
    let (c, conn_task) = connect_with_handle(&pooler.app_url()).await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES ('uncommitted')")
        .await
        .unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    if abrupt {
        // The socket closes without a Terminate message: a crashed client.
        conn_task.abort();
    } else {
        // tokio-postgres sends Terminate when the client is dropped.
        drop(c);
    }
    // The server that held the transaction is closed, so Postgres rolls it back.
    assert!(
        eventually(Duration::from_secs(20), || async {
            !pooler.server_pids(pg).await.contains(&pid)
        })
        .await,
        "server {pid} with an open transaction stayed open"
    );
    assert_eq!(open_transactions(pg, &db).await, 0);
    // The pool of one serves the next client with a new server, outside any transaction.
    let rows = setup.query("SELECT v FROM t", &[]).await.unwrap();
    assert!(rows.is_empty(), "an uncommitted row became visible");
    let status = first_value(&setup, "SELECT now() = statement_timestamp()").await;
    assert_eq!(
        status, "t",
        "next client landed inside someone's transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_leaves_nothing_open() {
    client_dies_mid_transaction(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_terminating_mid_transaction_leaves_nothing_open() {
    client_dies_mid_transaction(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_query() {
    let pg = PgServer::shared();
    let db = pg.create_db("killq").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let victim = pooler.client().await;
    let sleeper = tokio::spawn(async move {
        let r = victim.simple_query("SELECT pg_sleep(60)").await;
        (r.map(|_| ()), victim)
    });
    let su = pg.superuser().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep%'",
                &[&db],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep%'",
        &[&db],
    )
    .await
    .unwrap();
    let (result, victim) = sleeper.await.unwrap();
    let err = result.expect_err("the killed query must fail");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    // The affected client is disconnected; others get a fresh server.
    assert!(victim.simple_query("SELECT 1").await.is_err());
    let other = pooler.client().await;
    assert_eq!(first_value(&other, "SELECT 11").await, "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_while_idle_in_pool_is_replaced() {
    let pg = PgServer::shared();
    let db = pg.create_db("killidle").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let c = pooler.client().await;
    let pid: i32 = first_value(&c, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    let su = pg.superuser().await;
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            pooler.server_pids(pg).await.is_empty()
        })
        .await
    );
    // The same client goes on: the dead idle server is noticed at checkout, not relayed.
    let new_pid: i32 = first_value(&c, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_unknown_database() {
    let pg = PgServer::shared();
    let db = pg.create_db("authfail").await;
    for auth in ["md5", "scram-sha-256", "plain"] {
        let pooler = Pooler::start(pg, &db, &format!("auth_type = \"{auth}\"")).await;
        let err = try_connect(&pooler.url(APP_USER, "wrong"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{auth}");
        assert_eq!(
            message(&err),
            "password authentication failed for user \"app\""
        );
        // An unknown user gets the very same answer: no user enumeration.
        let err = try_connect(&pooler.url("nobody", "x")).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{auth}");
        assert_eq!(
            message(&err),
            "password authentication failed for user \"nobody\""
        );
        // Unknown database: told only after a successful login.
        let url = format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname=nope",
            pooler.port()
        );
        let err = try_connect(&url).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{auth}");
        assert_eq!(message(&err), "no such database: nope");
        let url = format!(
            "host=127.0.0.1 port={} user={APP_USER} password=wrong dbname=nope",
            pooler.port()
        );
        let err = try_connect(&url).await.unwrap_err();
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("28P01"),
            "{auth}: database probed without a password"
        );
        // And the right password works with this auth_type.
        let c = pooler.client().await;
        assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_reported_as_connect_failure_not_wait() {
    let pg = PgServer::shared();
    let db = pg.create_db("down").await;
    // A port nothing listens on stands for a Postgres that is down.
    let dead_port = free_port();
    let p = Pooler::start_on_port(pg, dead_port, &db, "server_connect_timeout = 2", "").await;
    let err = try_connect(&p.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    assert!(
        message(&err).starts_with("pooler cannot connect to server"),
        "{}",
        message(&err)
    );
}

/// Issue 12, item 6: a server that accepts the connection and then resets it during the login
/// (an I/O error, not an ErrorResponse) is reported to the client as 08006, not as a bare
/// close: `ServerConn::connect_inner` turns the login's I/O errors into `ServerConnect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_resetting_the_login_is_reported_as_08006() {
    use tokio::io::AsyncReadExt;
    let pg = PgServer::shared();
    let db = pg.create_db("login_io").await;
    // A "Postgres" that takes the startup packet and resets the connection (a clean EOF is
    // already reported, as "server conn crashed?"; a reset is an I/O error).
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = fake.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let _ = s.set_zero_linger();
        }
    });
    let p = Pooler::start_on_port(pg, fake_port, &db, "server_connect_timeout = 5", "").await;
    let err = tokio::time::timeout(Duration::from_secs(30), try_connect(&p.app_url()))
        .await
        .expect("login did not end")
        .unwrap_err();
    server.abort();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Issue 12: faults that must not cost the pool anything lasting.

/// Every wait in these tests is bounded by this; none asserts a speed.
use wire::HANG;

/// A forwarding socket in front of Postgres. While `slow` is set, a new connection is held
/// for `delay` before it is relayed: a Postgres slow to answer logins.
async fn slow_forwarder(
    pg_port: u16,
    delay: Duration,
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let slow = slow.load(Ordering::Relaxed);
            tokio::spawn(async move {
                if slow {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, task)
}

/// The console's SHOW POOLS row of `db`.
async fn pool_row(
    console: &tokio_postgres::Client,
    db: &str,
) -> std::collections::BTreeMap<String, String> {
    show(console, "SHOW POOLS")
        .await
        .into_iter()
        .find(|r| r.get("database").map(String::as_str) == Some(db))
        .unwrap_or_default()
}

/// Issue 12 item 1: logins that give up (`client_login_timeout`) while the pool's first
/// servers are still logging in give their slots back; the pool serves once Postgres answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_first_logins_time_out_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _deadline = deadline("slow logins", Duration::from_secs(180));
    let pg = PgServer::shared();
    let db = pg.create_db("slowlogin").await;
    let slow = std::sync::Arc::new(AtomicBool::new(true));
    let (port, forwarder) = slow_forwarder(pg.port, Duration::from_secs(4), slow.clone()).await;
    let pooler = Pooler::start_on_port(
        pg,
        port,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nclient_login_timeout = 1\n\
         server_connect_timeout = 30\nadmin_users = \"postgres\"",
        "",
    )
    .await;
    // More clients than the pool has slots, all logging in while Postgres is slow: two open
    // servers (and time out doing so), the others queue (and time out waiting).
    let logins: Vec<_> = (0..4)
        .map(|_| {
            let url = pooler.app_url();
            tokio::spawn(async move { tokio::time::timeout(HANG, try_connect(&url)).await })
        })
        .collect();
    for login in logins {
        let Err(err) = login.await.unwrap().expect("login hung") else {
            panic!("a login through a slow Postgres must time out");
        };
        assert_eq!(message(&err), "client_login_timeout", "{err:?}");
    }
    slow.store(false, Ordering::Relaxed);
    // Postgres answers again: new logins succeed.
    let c = tokio::time::timeout(HANG, try_connect(&pooler.app_url()))
        .await
        .expect("login hung after Postgres recovered")
        .unwrap_or_else(|e| panic!("login after Postgres recovered: {}", message(&e)));
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let settled = eventually(HANG, || async {
        let row = pool_row(&console, &db).await;
        let get = |k: &str| row.get(k).map(String::as_str);
        get("sv_login") == Some("0") && get("cl_waiting") == Some("0")
    })
    .await;
    assert!(
        settled,
        "pool counts never settled: {:?}",
        pool_row(&console, &db).await
    );
    forwarder.abort();
}

/// Issue 12 item 2: clients that send an INSERT and leave (FIN, reset, Terminate) while it
/// waits for a server: none of those INSERTs runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_clients_gone_while_queued_never_run() {
    use tokio::io::AsyncWriteExt;
    let _deadline = deadline("gone while queued", Duration::from_secs(180));
    let pg = PgServer::shared();
    let db = pg.create_db("gonequeued").await;
    let pooler = Pooler::start(pg, &db, &format!("{TX1}\nadmin_users = \"postgres\"")).await;
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let holder = pooler.client().await;
    holder
        .batch_execute("CREATE TABLE q (kind text, i int)")
        .await
        .unwrap();
    // The only server is held in a transaction: every request below queues.
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    const EACH: usize = 5;
    let kinds = ["fin", "reset", "terminate"];
    let mut queued = Vec::new();
    for kind in kinds {
        for i in 0..EACH {
            let mut s = wire::login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
            s.write_all(&wire::query(&format!(
                "INSERT INTO q VALUES ('{kind}', {i})"
            )))
            .await
            .unwrap();
            queued.push((kind, s));
        }
    }
    let all = (kinds.len() * EACH).to_string();
    assert!(
        eventually(HANG, || async {
            pool_row(&console, &db).await.get("cl_waiting") == Some(&all)
        })
        .await,
        "the requests did not queue: {:?}",
        pool_row(&console, &db).await
    );
    for (kind, mut s) in queued {
        match kind {
            "reset" => s.set_zero_linger().unwrap(),
            "terminate" => s.write_all(&wire::msg(b'X', &[])).await.unwrap(),
            _ => {}
        }
        drop(s);
    }
    // The server comes back; each queued request meets a client that is gone.
    holder.batch_execute("COMMIT").await.unwrap();
    assert!(
        // The holder and the console are left.
        eventually(HANG, || async { pooler.running.app.client_count() == 2 }).await,
        "the departed clients' sessions did not end"
    );
    assert_eq!(first_value(&holder, "SELECT count(*) FROM q").await, "0");
    // And the pool serves on.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 5").await, "5");
}

/// A backend stopped with SIGSTOP (a stuck backend: it holds its socket, answers nothing);
/// continued when dropped, so a failing test leaves nothing stopped.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    first_value(c, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap()
}

/// Issue 12 item 3: the pooler's own queries meet a stopped backend: the parameter sync
/// (`set_config` for a client with another `application_name`) ends with an error carrying a
/// SQLSTATE, the reset query (`DISCARD ALL` after a session-mode client) gives up; both close
/// the server, and the pool serves the next client on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poolers_own_queries_are_bounded() {
    let _deadline = deadline("stopped backend", Duration::from_secs(180));
    let pg = PgServer::shared();
    let db = pg.create_db("ownquery").await;

    // Parameter sync, transaction mode.
    let pooler = Pooler::start(pg, &db, &format!("{TX1}\nquery_timeout = 2")).await;
    let a = connect(&format!("{} application_name=a", pooler.app_url())).await;
    let stopped = Stopped::new(backend_pid(&a).await);
    let b = connect(&format!("{} application_name=b", pooler.app_url())).await;
    let err = tokio::time::timeout(HANG, b.simple_query("SELECT 1"))
        .await
        .expect("the parameter sync hung on a stopped backend")
        .expect_err("the parameter sync cannot succeed on a stopped backend");
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err:?}");
    assert_eq!(message(&err), "query timeout");
    let c = pooler.client().await;
    let got = tokio::time::timeout(HANG, c.simple_query("SELECT pg_backend_pid()"))
        .await
        .expect("the next client hung");
    assert!(got.is_ok(), "{got:?}");
    drop(stopped);

    // Reset query, session mode: the client leaves, DISCARD ALL meets the stopped backend.
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"session\"\ndefault_pool_size = 1\nquery_timeout = 2",
    )
    .await;
    let a = pooler.client().await;
    let stopped = Stopped::new(backend_pid(&a).await);
    drop(a);
    let b = tokio::time::timeout(HANG, async {
        let b = pooler.client().await;
        backend_pid(&b).await
    })
    .await
    .expect("the next client waited forever for a server stuck in its reset query");
    assert_ne!(b, stopped.0);
}

/// Issue 12 item 5: a blackholed Postgres (accepts TCP, never answers). The clients queued
/// behind the pool's first attempts fail together when those attempts time out, with 08006,
/// instead of each waiting for an attempt of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_of_a_blackholed_server_fail_together() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _deadline = deadline("blackhole", Duration::from_secs(180));
    let pg = PgServer::shared();
    let db = pg.create_db("blackhole").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let blackhole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            // Held open, never read, never answered.
            held.push(s);
        }
    });
    const POOL: usize = 2;
    const CLIENTS: usize = 10;
    let pooler = Pooler::start_on_port(
        pg,
        port,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = {POOL}\n\
             server_connect_timeout = 2\nserver_login_retry = 0"
        ),
        "",
    )
    .await;
    let logins: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = pooler.app_url();
            tokio::spawn(async move { tokio::time::timeout(HANG, try_connect(&url)).await })
        })
        .collect();
    for login in logins {
        let Err(err) = login.await.unwrap().expect("login hung") else {
            panic!("a login through a blackhole cannot succeed");
        };
        assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    }
    let n = attempts.load(Ordering::Relaxed);
    // The pool's own attempts, and at most a janitor retry or a late client's.
    assert!(
        n <= POOL + 2,
        "{n} connection attempts for {CLIENTS} clients on a pool of {POOL}"
    );
    blackhole.abort();
}

/// Issue 12, item 9: clients that vanish mid-query, in bursts. The pooler closes their servers,
/// but a query Postgres is running goes on until it next talks to the socket; unless the pooler
/// cancels it and waits for the backend to end before reusing the slot, Postgres holds more
/// of the pool's backends than the pool's bound (pool 2, reserve 0: it held 6 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_of_departed_clients_end_before_their_slots_are_reused() {
    use std::net::SocketAddr;
    let pg = PgServer::shared();
    let db = pg.create_db("abandon").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nreserve_pool_size = 0",
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], pooler.port()));
    let su = pg.superuser().await;
    let sleeping = || async {
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
            &[&db],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let watch = BackendWatch::start(pg, &db, Duration::from_millis(10)).await;
    for round in 0..3 {
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = wire::login(addr, APP_USER, APP_PASSWORD, &db).await;
            tokio::io::AsyncWriteExt::write_all(&mut s, &wire::query("SELECT pg_sleep(30)"))
                .await
                .unwrap();
            clients.push(s);
        }
        assert!(
            eventually(Duration::from_secs(20), || async { sleeping().await == 2 }).await,
            "round {round}: both queries run"
        );
        // Gone without a word, mid-query.
        drop(clients);
    }
    // The last round's servers end too.
    assert!(eventually(Duration::from_secs(20), || async { sleeping().await == 0 }).await);
    let peak = watch.peak().await;
    assert!(peak <= 2, "Postgres held {peak} backends for a pool of 2");
}
