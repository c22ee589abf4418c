//! High availability (issue 16): database entries with several hosts, routing by role
//! (`target_session_attrs`), `max_replica_lag`, fallback when a standby goes, failover to a
//! promoted standby under a write load, and a host that accepts TCP but never answers.
//!
//! Each test starts its own primary and standby (`pg_basebackup -R -c fast`), since they stop,
//! crash and promote them.

mod common;

use common::replica::start_standby;
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// A pooler whose config is `[pooler]` keys `extra` and the database entries `entries`
/// (TOML), all in transaction mode, the console open to `postgres`.
async fn start(entries: &str, extra: &str) -> Pooler {
    let metrics = if extra.contains("metrics_port") {
        ""
    } else {
        "metrics_port = 0"
    };
    let toml = format!(
        "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nauth_file = \"userlist.txt\"\n\
         log_connections = false\nlog_disconnections = false\npool_mode = \"transaction\"\n\
         admin_users = \"postgres\"\n{metrics}\n{extra}\n{entries}\n"
    );
    Pooler::start_from_files("unused", "pooler.toml", &[("pooler.toml", &toml)]).await
}

/// `host`/`port` lists for two servers, and the database they serve.
fn hosts(a: u16, b: u16, db: &str) -> String {
    format!("host = \"127.0.0.1,127.0.0.1\"\nport = \"{a},{b}\"\ndbname = \"{db}\"\n")
}

fn url(pooler: &Pooler, entry: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={entry}",
        pooler.port()
    )
}

/// The first row of a simple query, as text.
async fn row(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}: {}", message(&e)));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

const WHERE: &str = "SELECT pg_is_in_recovery()::text, inet_server_port()::text";

/// Where a query through `entry` runs: (in recovery, the server's port).
async fn where_runs(pooler: &Pooler, entry: &str) -> (String, u16) {
    let c = connect(&url(pooler, entry)).await;
    let r = row(&c, WHERE).await;
    (r[0].clone(), r[1].parse().expect("port"))
}

/// The console's SHOW HOSTS rows of one database entry, by port.
async fn show_hosts(pooler: &Pooler, entry: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    show(&console, "SHOW HOSTS")
        .await
        .into_iter()
        .filter(|r| r["database"] == entry)
        .map(|r| (r["port"].clone(), r))
        .collect()
}

/// Routing by role through each kind of entry; a standby past `max_replica_lag` skipped; the
/// standby stopped: `prefer-standby` falls back to the primary, `standby` errors, `/readyz`
/// says which database cannot be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_role_lag_and_fallback() {
    let _d = deadline("routing_by_role_lag_and_fallback", Duration::from_secs(150));
    let primary = PgServer::start();
    let db = primary.create_db("ha_route").await;
    connect(&primary.url(APP_USER, APP_PASSWORD, &db))
        .await
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .expect("create table");
    let standby = start_standby(&primary);
    assert!(standby.caught_up_with(&primary).await, "standby catches up");
    let (p, s) = (primary.port, standby.port);
    let h = hosts(p, s, &db);
    let entries = format!(
        "[databases.rw]\n{h}target_session_attrs = \"read-write\"\n\
         [databases.ro]\n{h}target_session_attrs = \"prefer-standby\"\n\
         [databases.sb]\n{h}target_session_attrs = \"standby\"\n\
         [databases.fresh]\n{h}target_session_attrs = \"prefer-standby\"\nmax_replica_lag = 1\n\
         [databases.primary_only]\n{h}target_session_attrs = \"primary\"\n"
    );
    let metrics_port = free_port();
    let pooler = start(
        &entries,
        &format!(
            "server_check_delay = 0.2\nserver_connect_timeout = 3\nmetrics_port = {metrics_port}"
        ),
    )
    .await;

    // Routing by role: each entry's queries run where its target_session_attrs says.
    for (entry, want) in [
        ("rw", ("false", p)),
        ("primary_only", ("false", p)),
        ("ro", ("true", s)),
        ("sb", ("true", s)),
        ("fresh", ("true", s)),
    ] {
        for _ in 0..3 {
            let (rec, port) = where_runs(&pooler, entry).await;
            assert_eq!(
                (rec.as_str(), port),
                want,
                "{entry}: {:?}",
                show_hosts(&pooler, entry).await
            );
        }
    }
    // Writes through the read-write entry work (they would fail on the standby).
    let rw = connect(&url(&pooler, "rw")).await;
    rw.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("write through rw");
    // The console and /metrics say which host is what.
    let rows = show_hosts(&pooler, "rw").await;
    assert_eq!(rows[&p.to_string()]["role"], "primary");
    assert_eq!(rows[&p.to_string()]["usable"], "1");
    assert_eq!(rows[&s.to_string()]["role"], "standby");
    assert_eq!(rows[&s.to_string()]["usable"], "0");
    // SHOW SERVERS names each server's own host.
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let servers = show(&console, "SHOW SERVERS").await;
    for (entry, port) in [("rw", p), ("ro", s), ("sb", s)] {
        let ports: HashSet<&str> = servers
            .iter()
            .filter(|r| r["database"] == entry)
            .map(|r| r["port"].as_str())
            .collect();
        assert_eq!(ports, HashSet::from([port.to_string().as_str()]), "{entry}");
    }
    let body = pooler.scrape().await;
    let usable = |db: &str, port: u16, role: &str| {
        metric(
            &body,
            "pooler_host_usable",
            &[
                ("database", db),
                ("user", APP_USER),
                ("host", &format!("127.0.0.1:{port}")),
                ("role", role),
            ],
        )
    };
    assert_eq!(usable("rw", p, "primary"), Some(1.0), "{body}");
    assert_eq!(usable("rw", s, "standby"), Some(0.0), "{body}");
    assert_eq!(usable("ro", s, "standby"), Some(1.0), "{body}");
    let (status, text) = pooler.http_get("/readyz").await;
    assert_eq!(status, 200, "{text}");

    // Replay paused while the primary writes: past max_replica_lag, `fresh` leaves the
    // standby for the primary; `ro` (no limit) stays.
    let standby_su = standby.superuser().await;
    standby_su
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    let writer = connect(&primary.url(APP_USER, APP_PASSWORD, &db)).await;
    let skipped = eventually(Duration::from_secs(30), || async {
        writer
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .expect("write on primary");
        where_runs(&pooler, "fresh").await == ("false".to_string(), p)
    })
    .await;
    assert!(
        skipped,
        "a lagging standby is skipped under max_replica_lag: {:?}",
        show_hosts(&pooler, "fresh").await
    );
    assert_eq!(where_runs(&pooler, "ro").await, ("true".to_string(), s));
    let lag: u64 = show_hosts(&pooler, "fresh").await[&s.to_string()]["lag_ms"]
        .parse()
        .expect("lag_ms");
    assert!(lag > 1000, "lag_ms {lag}");
    standby_su
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    drop(standby_su);

    // The standby stops: prefer-standby falls back to the primary at once (no error), the
    // standby-only entry errors as a lost server would, read-write is unaffected.
    standby.stop();
    assert_eq!(where_runs(&pooler, "ro").await, ("false".to_string(), p));
    assert_eq!(where_runs(&pooler, "rw").await, ("false".to_string(), p));
    let c = connect(&url(&pooler, "sb")).await;
    let e = c
        .simple_query(WHERE)
        .await
        .expect_err("no standby to serve");
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", message(&e));
    assert!(
        message(&e).contains("target_session_attrs=standby"),
        "{}",
        message(&e)
    );
    let (status, text) = pooler.http_get("/readyz").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("sb/app"), "{text}");
    assert!(!text.contains("ro/app"), "{text}");
}

/// The primary crashes (`-m immediate`) under a write load and the standby is promoted: writes
/// resume through the same entry on the new primary, no acknowledged write is lost, a client
/// that was idle keeps its connection, one mid-transaction gets a lost-connection error, and
/// the old primary, back as a standby, never gets a read-write pool's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_write_load() {
    let _d = deadline("failover_under_write_load", Duration::from_secs(150));
    let primary = PgServer::start();
    let db = primary.create_db("ha_failover").await;
    connect(&primary.url(APP_USER, APP_PASSWORD, &db))
        .await
        .batch_execute("CREATE TABLE t (v bigint PRIMARY KEY)")
        .await
        .expect("create table");
    let standby = start_standby(&primary);
    assert!(standby.caught_up_with(&primary).await, "standby catches up");
    // Synchronous replication, so that a write acknowledged by the primary is on the standby:
    // losing one would then be the pooler's doing.
    let su = primary.superuser().await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'".to_string(),
        "SELECT pg_reload_conf()".to_string(),
        format!("ALTER DATABASE {db} SET synchronous_commit = on"),
    ] {
        su.batch_execute(&sql)
            .await
            .expect("synchronous replication");
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            su.query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
                &[],
            )
            .await
            .expect("pg_stat_replication")
            .is_some()
        })
        .await,
        "the standby becomes synchronous"
    );
    drop(su);
    let (p, s) = (primary.port, standby.port);
    let entries = format!(
        "[databases.rw]\n{}target_session_attrs = \"read-write\"\n",
        hosts(p, s, &db)
    );
    let pooler = start(
        &entries,
        "server_check_delay = 0.5\nserver_connect_timeout = 10\nquery_wait_timeout = 60",
    )
    .await;
    let rw = url(&pooler, "rw");

    let idle = connect(&rw).await;
    assert_eq!(row(&idle, WHERE).await, ["false", &p.to_string()]);
    let (in_tx, in_tx_conn) = connect_watched(&rw).await;
    in_tx
        .batch_execute("BEGIN; INSERT INTO t VALUES (-1)")
        .await
        .expect("open a transaction");

    // The write load: each writer inserts its own sequence, reconnecting when its connection
    // is lost, and records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let promoted = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let after = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (stop, promoted, acked, after, rw) = (
            stop.clone(),
            promoted.clone(),
            acked.clone(),
            after.clone(),
            rw.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let c = match &client {
                    Some(c) if !c.is_closed() => c,
                    _ => match try_connect(&rw).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                i += 1;
                let v = w * 1_000_000 + i;
                match c.execute("INSERT INTO t VALUES ($1)", &[&v]).await {
                    Ok(_) => {
                        acked.lock().unwrap().push(v);
                        if promoted.load(Ordering::Relaxed) {
                            after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            acked.lock().unwrap().len() >= 100
        })
        .await,
        "writes run before the failover"
    );

    let crashed = std::time::Instant::now();
    primary.crash();
    standby.promote();
    let promoted_at = std::time::Instant::now();
    promoted.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(30), || async {
            after.load(Ordering::Relaxed) >= 100
        })
        .await,
        "writes resume on the new primary"
    );
    eprintln!(
        "failover: promoted {:?} after the crash, 100 writes acknowledged by the new primary {:?} after the promotion",
        promoted_at - crashed,
        promoted_at.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // The client mid-transaction on the old primary: its connection ends with the error of a
    // lost server (Postgres's FATAL from the immediate shutdown, relayed, or the pooler's
    // 08006), which the driver reports on the connection; its next statement fails.
    let e = in_tx
        .batch_execute("COMMIT")
        .await
        .expect_err("its server died");
    assert!(
        e.is_closed() || matches!(sqlstate(&e).as_deref(), Some("57P01" | "57P02" | "08006")),
        "{e}: {}",
        message(&e)
    );
    drop(in_tx);
    let end = connection_end(in_tx_conn, Duration::from_secs(10), "in-transaction client").await;
    eprintln!("failover: the client mid-transaction ended with {end:?}");
    assert!(
        matches!(&end, Some((code, _)) if ["57P01", "57P02", "08006"].contains(&code.as_str())),
        "{end:?}"
    );
    // The idle client is served by the new primary on the connection it had.
    assert_eq!(row(&idle, WHERE).await, ["false", &s.to_string()]);

    // Every acknowledged write is on the new primary.
    let new_primary = connect(&standby.url(APP_USER, APP_PASSWORD, &db)).await;
    let stored: HashSet<i64> = new_primary
        .query("SELECT v FROM t", &[])
        .await
        .expect("read back")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&i64> = acked.iter().filter(|v| !stored.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        !stored.contains(&-1),
        "the interrupted transaction did not commit"
    );

    // The old primary comes back as a standby: read-write connections never go there.
    primary.restart_as_standby_of(&standby);
    let old = primary.superuser().await;
    assert_eq!(first_value(&old, "SELECT pg_is_in_recovery()").await, "t");
    assert!(
        eventually(Duration::from_secs(20), || async {
            show_hosts(&pooler, "rw").await[&p.to_string()]["role"] == "standby"
        })
        .await,
        "the health check sees the old primary back as a standby"
    );
    for i in 0..10i64 {
        let c = connect(&rw).await;
        assert_eq!(row(&c, WHERE).await, ["false", &s.to_string()]);
        c.execute("INSERT INTO t VALUES ($1)", &[&(-100 - i)])
            .await
            .expect("write after the old primary came back");
    }
}

/// A host that accepts TCP connections and never answers (listed first, taken in order) does
/// not hold up clients while the other host can serve: the health check never vouched for it,
/// so no client's server connection goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_does_not_stall_clients() {
    let _d = deadline("a_host_that_never_answers", Duration::from_secs(40));
    let pg = PgServer::shared();
    let db = pg.create_db("ha_blackhole").await;
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hole_port = hole.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = hole.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(sock);
        }
    });
    let entries = format!(
        "[databases.app]\n{}load_balance_hosts = \"disable\"\n",
        hosts(hole_port, pg.port, &db)
    );
    // Far longer than the test may run: a client that waited on the hole would fail it.
    let pooler = start(
        &entries,
        "server_connect_timeout = 120\nquery_wait_timeout = 120\nserver_check_delay = 0.2",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let u = url(&pooler, "app");
        clients.push(tokio::spawn(async move {
            let c = connect(&u).await;
            for _ in 0..3 {
                assert_eq!(row(&c, "SELECT inet_server_port()::text").await.len(), 1);
            }
            row(&c, "SELECT inet_server_port()::text").await[0].clone()
        }));
    }
    for c in clients {
        assert_eq!(c.await.expect("client"), pg.port.to_string());
    }
    // The health check is still waiting on the hole (it did connect there); it is not usable.
    assert!(accepted.load(Ordering::Relaxed) >= 1);
    let rows = show_hosts(&pooler, "app").await;
    assert_eq!(rows[&hole_port.to_string()]["usable"], "0");
    assert_eq!(rows[&pg.port.to_string()]["role"], "primary");
}

/// Split-brain safety does not wait for the health check: every new server connection's role
/// is checked after login. A database made read-only by default (what its sessions see from
/// their login on) gets no read-write pool's connection even though the health check, run
/// rarely here, last saw a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_server_connection_is_checked_for_its_role() {
    let _d = deadline(
        "every_new_server_connection_is_checked",
        Duration::from_secs(60),
    );
    let pg = PgServer::shared();
    let db = pg.create_db("ha_rolecheck").await;
    let entries = format!(
        "[databases.rw]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{db}\"\n\
         target_session_attrs = \"read-write\"\n",
        pg.port
    );
    let pooler = start(
        &entries,
        "server_check_delay = 3600\nserver_connect_timeout = 2\nserver_login_retry = 0",
    )
    .await;
    let c = connect(&url(&pooler, "rw")).await;
    assert_eq!(row(&c, WHERE).await, ["false", &pg.port.to_string()]);
    drop(c);
    pg.superuser()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on"
        ))
        .await
        .expect("alter database");
    // The pool's servers from before are closed; the next one must come from a new login.
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    console
        .batch_execute("RECONNECT rw")
        .await
        .expect("RECONNECT");
    let c = connect(&url(&pooler, "rw")).await;
    let e = c
        .simple_query(WHERE)
        .await
        .expect_err("a read-only host serves no read-write pool");
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", message(&e));
    assert!(
        message(&e).contains("target_session_attrs=read-write"),
        "{}",
        message(&e)
    );
    let rows = show_hosts(&pooler, "rw").await;
    assert_eq!(rows[&pg.port.to_string()]["read_only"], "1", "{rows:?}");
    assert_eq!(rows[&pg.port.to_string()]["usable"], "0", "{rows:?}");
}

/// A forwarder to `upstream` that can be frozen: from then on it accepts new connections and
/// never answers them, while the ones already established keep flowing (a host that hangs
/// after the health check last saw it well).
async fn freezer(upstream: u16) -> (u16, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            if flag.load(Ordering::Relaxed) {
                held.push(sock);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                }
            });
        }
    });
    (port, frozen)
}

/// A host that stops answering new connections after the health check vouched for it:
/// clients whose server connection went there are served by the other host after a short
/// stagger, not after `server_connect_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_hangs_after_its_check_is_raced_by_another() {
    let _d = deadline("a_host_that_hangs_after_its_check", Duration::from_secs(40));
    let pg = PgServer::shared();
    let db = pg.create_db("ha_stagger").await;
    let (hang_port, frozen) = freezer(pg.port).await;
    let entries = format!("[databases.app]\n{}", hosts(hang_port, pg.port, &db));
    // The health check runs once (and its connection through the forwarder stays up); a
    // connect timeout far past the test's bound.
    let pooler = start(
        &entries,
        "server_check_delay = 3600\nserver_connect_timeout = 120\nquery_wait_timeout = 120",
    )
    .await;
    // The pool exists once a client has come; then both hosts get checked.
    let first = connect(&url(&pooler, "app")).await;
    row(&first, "SELECT 1").await;
    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let rows = show_hosts(&pooler, "app").await;
            rows.len() == 2 && rows.values().all(|h| h["usable"] == "1")
        })
        .await,
        "both hosts checked"
    );
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    console
        .batch_execute("RECONNECT app")
        .await
        .expect("RECONNECT");
    frozen.store(true, Ordering::Relaxed);
    // Eight clients at once: eight new server connections, half of them to the frozen host.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let u = url(&pooler, "app");
        clients.push(tokio::spawn(async move {
            let c = connect(&u).await;
            row(&c, "SELECT pg_sleep(0.2)::text, inet_server_port()::text").await[1].clone()
        }));
    }
    for c in clients {
        assert_eq!(c.await.expect("client"), pg.port.to_string());
    }
    let servers = show(&console, "SHOW SERVERS").await;
    assert!(
        servers
            .iter()
            .filter(|r| r["database"] == "app")
            .all(|r| r["port"] == pg.port.to_string()),
        "{servers:?}"
    );
}

/// A standby promoted while the old primary keeps running (both are primaries, a split
/// brain): once the pooler has seen it, every write through the read-write entry goes to
/// the promoted one (the higher timeline) and none to the old primary (rows counted on each
/// host directly); SHOW HOSTS and `/metrics` show the state. The promoted host stopped, the
/// old primary still gets no write (its timeline is older than one seen); it back, writes go
/// there again; the old primary stopped, the split brain is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_writes_go_to_the_promoted_one() {
    let _d = deadline(
        "two_primaries_writes_go_to_the_promoted_one",
        Duration::from_secs(150),
    );
    let primary = PgServer::start();
    let db = primary.create_db("ha_split").await;
    connect(&primary.url(APP_USER, APP_PASSWORD, &db))
        .await
        .batch_execute("CREATE TABLE t (v bigint PRIMARY KEY)")
        .await
        .expect("create table");
    let standby = start_standby(&primary);
    assert!(standby.caught_up_with(&primary).await, "standby catches up");
    let (p, s) = (primary.port, standby.port);
    let entries = format!(
        "[databases.rw]\n{}target_session_attrs = \"read-write\"\n",
        hosts(p, s, &db)
    );
    let metrics_port = free_port();
    let pooler = start(
        &entries,
        &format!(
            "server_check_delay = 0.2\nserver_connect_timeout = 5\nquery_wait_timeout = 30\n\
             metrics_port = {metrics_port}"
        ),
    )
    .await;
    let rw = url(&pooler, "rw");
    assert_eq!(
        row(&connect(&rw).await, WHERE).await,
        ["false", &p.to_string()]
    );
    let rows = show_hosts(&pooler, "rw").await;
    assert_eq!(rows[&p.to_string()]["split_brain"], "0", "{rows:?}");

    // A write load through the entry; writes sent once the pooler has seen the split brain
    // get values from 1,000,000,000 on.
    const AFTER: i64 = 1_000_000_000;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicBool::new(false));
    let acked_after = Arc::new(Mutex::new(Vec::<i64>::new()));
    let next = Arc::new(AtomicUsize::new(1));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (stop, seen, acked_after, next, rw) = (
            stop.clone(),
            seen.clone(),
            acked_after.clone(),
            next.clone(),
            rw.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let c = match &client {
                    Some(c) if !c.is_closed() => c,
                    _ => match try_connect(&rw).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let after = seen.load(Ordering::Relaxed);
                let n = next.fetch_add(1, Ordering::Relaxed) as i64;
                let v = if after { AFTER + n } else { n };
                match c.execute("INSERT INTO t VALUES ($1)", &[&v]).await {
                    Ok(_) if after => acked_after.lock().unwrap().push(v),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            next.load(Ordering::Relaxed) > 100
        })
        .await,
        "writes run before the promotion"
    );

    // The standby is promoted; the old primary is not stopped or demoted.
    standby.promote();
    let flipped = eventually(Duration::from_secs(30), || async {
        let rows = show_hosts(&pooler, "rw").await;
        let (old, new) = (&rows[&p.to_string()], &rows[&s.to_string()]);
        old["role"] == "primary"
            && new["role"] == "primary"
            && new["split_brain"] == "1"
            && new["usable"] == "1"
            && old["usable"] == "0"
    })
    .await;
    let rows = show_hosts(&pooler, "rw").await;
    assert!(flipped, "the pooler sees two primaries: {rows:?}");
    let timeline = |port: u16| -> u32 {
        rows[&port.to_string()]["timeline"]
            .parse()
            .expect("timeline")
    };
    assert!(timeline(s) > timeline(p), "{rows:?}");
    assert_eq!(rows[&p.to_string()]["split_brain"], "1", "{rows:?}");
    seen.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(30), || async {
            acked_after.lock().unwrap().len() >= 200
        })
        .await,
        "writes go on after the split brain is seen"
    );
    let body = pooler.scrape().await;
    assert_eq!(
        metric(
            &body,
            "pooler_split_brain",
            &[("database", "rw"), ("user", APP_USER)]
        ),
        Some(1.0),
        "{body}"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // Counted on each host directly: every write sent after the pooler saw the split brain
    // is on the promoted host, none on the old primary.
    let written_after = |pg: &PgServer| {
        let u = pg.url(APP_USER, APP_PASSWORD, &db);
        async move {
            let c = connect(&u).await;
            c.query("SELECT v FROM t WHERE v >= $1", &[&AFTER])
                .await
                .expect("rows")
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect::<HashSet<i64>>()
        }
    };
    let acked = acked_after.lock().unwrap().clone();
    let on_old = written_after(&primary).await;
    assert!(on_old.is_empty(), "writes on the old primary: {on_old:?}");
    let on_new = written_after(&standby).await;
    let missing: Vec<&i64> = acked.iter().filter(|v| !on_new.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes not on the promoted host: {missing:?}"
    );
    assert!(on_new.len() >= 200, "{}", on_new.len());
    // The old primary's servers are gone from the pool.
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            show(&console, "SHOW SERVERS")
                .await
                .iter()
                .filter(|r| r["database"] == "rw")
                .all(|r| r["port"] == s.to_string())
        })
        .await,
        "no server of the pool left on the old primary"
    );

    // The promoted host goes down: the old primary is the only primary left, but on an older
    // timeline than the pooler has seen: it still gets no write, and a client is told why.
    standby.stop();
    assert!(
        eventually(Duration::from_secs(20), || async {
            show_hosts(&pooler, "rw").await[&s.to_string()]["role"] == "down"
        })
        .await,
        "the promoted host is seen down"
    );
    let rows = show_hosts(&pooler, "rw").await;
    assert_eq!(rows[&p.to_string()]["usable"], "0", "{rows:?}");
    assert_eq!(rows[&p.to_string()]["split_brain"], "1", "{rows:?}");
    let e = match try_connect(&rw).await {
        Ok(c) => c
            .simple_query(&format!("INSERT INTO t VALUES ({})", 2 * AFTER))
            .await
            .expect_err("no write on a stale primary"),
        Err(e) => e,
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", message(&e));
    assert!(
        message(&e).contains("older than one seen before"),
        "{}",
        message(&e)
    );
    assert!(written_after(&primary).await.is_empty());
    // It comes back: writes go there again.
    standby.restart();
    let back = eventually(Duration::from_secs(30), || async {
        match try_connect(&rw).await {
            Ok(c) => c
                .simple_query(WHERE)
                .await
                .map(|m| {
                    m.iter().any(|m| {
                        matches!(m, SimpleQueryMessage::Row(r) if r.get(1) == Some(&s.to_string()))
                    })
                })
                .unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert!(
        back,
        "the promoted host serves again: {:?}",
        show_hosts(&pooler, "rw").await
    );
    // The old primary stops: one primary, no split brain.
    primary.stop();
    assert!(
        eventually(Duration::from_secs(20), || async {
            show_hosts(&pooler, "rw").await[&s.to_string()]["split_brain"] == "0"
        })
        .await,
        "split brain over"
    );
    let body = pooler.scrape().await;
    assert_eq!(
        metric(
            &body,
            "pooler_split_brain",
            &[("database", "rw"), ("user", APP_USER)]
        ),
        Some(0.0),
        "{body}"
    );
}

/// Two primaries whose timelines do not tell which is newer (two clusters, both on timeline
/// 1): the one the pool already uses stays, though the other comes first in the host list,
/// and no write goes to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_on_a_par_the_one_in_use_stays() {
    let _d = deadline(
        "two_primaries_on_a_par_the_one_in_use_stays",
        Duration::from_secs(90),
    );
    let (first, second) = (PgServer::start(), PgServer::start());
    let db = first.create_db("ha_par").await;
    second.create_db("ha_par_role").await;
    second
        .superuser()
        .await
        .batch_execute(&format!("CREATE DATABASE {db} OWNER {APP_USER}"))
        .await
        .expect("same database on the second");
    for pg in [&first, &second] {
        connect(&pg.url(APP_USER, APP_PASSWORD, &db))
            .await
            .batch_execute("CREATE TABLE t (v int)")
            .await
            .expect("create table");
    }
    // The first host is down when the pool starts: it uses the second.
    first.stop();
    let (a, b) = (first.port, second.port);
    let entries = format!(
        "[databases.rw]\n{}target_session_attrs = \"read-write\"\nload_balance_hosts = \"disable\"\n",
        hosts(a, b, &db)
    );
    let pooler = start(
        &entries,
        "server_check_delay = 0.2\nserver_connect_timeout = 5\nquery_wait_timeout = 30",
    )
    .await;
    let rw = url(&pooler, "rw");
    let c = connect(&rw).await;
    c.batch_execute("INSERT INTO t VALUES (0)")
        .await
        .expect("write on the second");
    // The first comes back, a primary too.
    first.restart();
    let both = eventually(Duration::from_secs(20), || async {
        let rows = show_hosts(&pooler, "rw").await;
        rows[&a.to_string()]["role"] == "primary" && rows[&a.to_string()]["split_brain"] == "1"
    })
    .await;
    let rows = show_hosts(&pooler, "rw").await;
    assert!(both, "two primaries seen: {rows:?}");
    assert_eq!(rows[&a.to_string()]["usable"], "0", "{rows:?}");
    assert_eq!(rows[&b.to_string()]["usable"], "1", "{rows:?}");
    for v in 1..=20 {
        let c = connect(&rw).await;
        c.execute("INSERT INTO t VALUES ($1)", &[&v])
            .await
            .expect("write");
    }
    let count = |pg: &PgServer| {
        let u = pg.url(APP_USER, APP_PASSWORD, &db);
        async move {
            connect(&u)
                .await
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count(&first).await, 0, "writes on the host not in use");
    assert_eq!(count(&second).await, 21, "every write on the host in use");
}

/// The pool's servers on one host holding a transaction, and all its servers there but the
/// health check's (from that host's `pg_stat_activity`).
async fn on_host(su: &tokio_postgres::Client, db: &str) -> (i64, i64) {
    let r = su
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'idle in transaction'), \
             count(*) FILTER (WHERE query NOT LIKE 'SELECT pg_is_in_recovery(), %') \
             FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db, &APP_USER],
        )
        .await
        .expect("pg_stat_activity");
    (r.get::<_, i64>(0), r.get::<_, i64>(1))
}

/// `default_pool_size` bounds the pool's servers on each host: with 8 clients each holding a
/// transaction in a pool of 3 over a primary and a standby, each host has 3 of them (counted
/// in each host's `pg_stat_activity`), round-robin or in order (where the first host would
/// otherwise take them all), and the last two clients are served once others finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_size_bounds_each_host() {
    let _d = deadline("the_pool_size_bounds_each_host", Duration::from_secs(120));
    let primary = PgServer::start();
    let rr_db = primary.create_db("ha_size_rr").await;
    let ord_db = primary.create_db("ha_size_ord").await;
    let standby = start_standby(&primary);
    assert!(standby.caught_up_with(&primary).await, "standby catches up");
    let (p, s) = (primary.port, standby.port);
    let entries = format!(
        "[databases.rr]\n{}load_balance_hosts = \"round-robin\"\n\
         [databases.ord]\n{}load_balance_hosts = \"disable\"\n",
        hosts(p, s, &rr_db),
        hosts(p, s, &ord_db)
    );
    const N: i64 = 3;
    let metrics_port = free_port();
    let pooler = start(
        &entries,
        &format!(
            "default_pool_size = {N}\nreserve_pool_size = 0\nserver_check_delay = 0.2\n\
             query_wait_timeout = 60\nmetrics_port = {metrics_port}"
        ),
    )
    .await;
    let (primary_su, standby_su) = (primary.superuser().await, standby.superuser().await);
    for (entry, db) in [("rr", &rr_db), ("ord", &ord_db)] {
        row(&connect(&url(&pooler, entry)).await, "SELECT 1").await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                let rows = show_hosts(&pooler, entry).await;
                rows.len() == 2 && rows.values().all(|h| h["usable"] == "1")
            })
            .await,
            "{entry}: both hosts usable"
        );
        let release = Arc::new(tokio::sync::Notify::new());
        let go = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (u, release, go) = (url(&pooler, entry), release.clone(), go.clone());
            clients.push(tokio::spawn(async move {
                let c = connect(&u).await;
                c.batch_execute("BEGIN; SELECT 1")
                    .await
                    .expect("a transaction");
                let notified = release.notified();
                if !go.load(Ordering::Relaxed) {
                    notified.await;
                }
                c.batch_execute("COMMIT").await.expect("commit");
            }));
        }
        let counts = eventually(Duration::from_secs(20), || async {
            let (a, _) = on_host(&primary_su, db).await;
            let (b, _) = on_host(&standby_su, db).await;
            a + b == 2 * N
        })
        .await;
        let (on_p, all_p) = on_host(&primary_su, db).await;
        let (on_s, all_s) = on_host(&standby_su, db).await;
        assert!(counts, "{entry}: {on_p} + {on_s} transactions held");
        assert_eq!((on_p, on_s), (N, N), "{entry}: transactions per host");
        assert!(
            all_p <= N && all_s <= N,
            "{entry}: servers {all_p}, {all_s}"
        );
        let rows = show_hosts(&pooler, entry).await;
        for port in [p, s] {
            assert_eq!(
                rows[&port.to_string()]["servers"],
                N.to_string(),
                "{rows:?}"
            );
            assert_eq!(
                rows[&port.to_string()]["pool_size"],
                N.to_string(),
                "{rows:?}"
            );
        }
        let body = pooler.scrape().await;
        assert_eq!(
            metric(
                &body,
                "pooler_host_servers",
                &[
                    ("database", entry),
                    ("user", APP_USER),
                    ("host", &format!("127.0.0.1:{p}"))
                ]
            ),
            Some(N as f64),
            "{body}"
        );
        // The two left waiting are served as the others commit.
        go.store(true, Ordering::Relaxed);
        release.notify_waiters();
        for c in clients {
            c.await.expect("client");
        }
        let (_, all_p) = on_host(&primary_su, db).await;
        let (_, all_s) = on_host(&standby_su, db).await;
        assert!(
            all_p <= N && all_s <= N,
            "{entry}: servers {all_p}, {all_s}"
        );
    }
}
