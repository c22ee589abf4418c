//! Operations: graceful shutdown (in-process and the binary under SIGTERM), RELOAD (console
//! and SIGHUP), the command line and environment overrides.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(30);

async fn watched(
    url: &str,
) -> (
    tokio_postgres::Client,
    JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    connect_watched(url).await
}

/// The SQLSTATE a watched connection ended with.
async fn ended_with(
    conn: JoinHandle<Result<(), tokio_postgres::Error>>,
    what: &str,
) -> Option<String> {
    connection_end(conn, LIMIT, what)
        .await
        .map(|(code, _)| code)
}

fn userlist() -> String {
    format!("{}\"admin\" \"admin-pw\"\n", Pooler::default_userlist())
}

async fn admin(pooler: &Pooler) -> tokio_postgres::Client {
    connect(&pooler.console_url("admin", "admin-pw")).await
}

async fn count_rows(pg: &PgServer, db: &str) -> i64 {
    let c = connect(&pg.url("postgres", SUPERUSER_PASSWORD, db)).await;
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_transactions_finish_and_turns_everyone_else_away() {
    let pg = PgServer::shared();
    for mode in ["transaction", "session"] {
        let db = pg.create_db(&format!("shutdown_{mode}")).await;
        let mut pooler = Pooler::start_with_userlist(
            pg,
            &db,
            &format!(
                "pool_mode = \"{mode}\"\nshutdown_timeout = 60\nadmin_users = \"admin\"\n\
                 metrics_port = {}",
                free_port()
            ),
            &userlist(),
        )
        .await;
        let setup = pooler.client().await;
        setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
        drop(setup);
        let (busy, busy_conn) = watched(&pooler.app_url()).await;
        busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let (idle, idle_conn) = watched(&pooler.app_url()).await;
        assert_eq!(first_value(&idle, "SELECT 1").await, "1");
        // A transaction-mode client pinned to its server by session state holds it between
        // transactions, like a session-mode client: it too is let go at once.
        let (pinned, pinned_conn) = watched(&pooler.app_url()).await;
        pinned.batch_execute("SET work_mem = '8MB'").await.unwrap();
        let (console, console_conn) = watched(&pooler.console_url("admin", "admin-pw")).await;
        assert_eq!(pooler.http_get("/readyz").await.0, 200);

        pooler.running.shutdown();
        // Not ready at once: the orchestrator stops routing before anything else happens.
        let (status, why) = pooler.http_get("/readyz").await;
        assert_eq!(status, 503, "{mode}");
        assert!(why.contains("shutting down"), "{why}");
        // Idle clients (and consoles) are let go now, with Postgres's "admin shutdown" code.
        assert_eq!(
            ended_with(idle_conn, &format!("{mode} idle"))
                .await
                .as_deref(),
            Some("57P01"),
            "{mode}"
        );
        assert_eq!(
            ended_with(console_conn, &format!("{mode} console"))
                .await
                .as_deref(),
            Some("57P01"),
            "{mode}"
        );
        assert_eq!(
            ended_with(pinned_conn, &format!("{mode} pinned"))
                .await
                .as_deref(),
            Some("57P01")
        );
        drop(pinned);
        drop((idle, console));
        // New clients are refused.
        assert!(
            eventually(LIMIT, || async {
                try_connect(&pooler.app_url()).await.is_err()
            })
            .await,
            "{mode}: still accepting"
        );
        // The transaction in flight finishes, then its client goes too.
        busy.batch_execute("INSERT INTO t VALUES (2); COMMIT")
            .await
            .unwrap_or_else(|e| panic!("{mode}: commit during shutdown: {e}"));
        assert_eq!(
            ended_with(busy_conn, &format!("{mode} busy"))
                .await
                .as_deref(),
            Some("57P01"),
            "{mode}"
        );
        assert_eq!(count_rows(pg, &db).await, 2, "{mode}: the commit landed");
        tokio::time::timeout(LIMIT, pooler.running.wait())
            .await
            .expect("shutdown did not complete");
        assert!(
            eventually(LIMIT, || async { pooler.server_pids(pg).await.is_empty() }).await,
            "{mode}: servers left open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_ends_a_transaction_that_does_not_finish() {
    let pg = PgServer::shared();
    let db = pg.create_db("shutdown_timeout").await;
    let mut pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\nshutdown_timeout = 0.5",
    )
    .await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    drop(setup);
    let (stuck, stuck_conn) = watched(&pooler.app_url()).await;
    stuck
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    pooler.running.shutdown();
    assert_eq!(
        ended_with(stuck_conn, "stuck").await.as_deref(),
        Some("57P01")
    );
    tokio::time::timeout(LIMIT, pooler.running.wait())
        .await
        .expect("shutdown did not complete");
    assert!(stuck.simple_query("COMMIT").await.is_err());
    assert_eq!(
        count_rows(pg, &db).await,
        0,
        "the open transaction rolled back"
    );
    assert!(eventually(LIMIT, || async { pooler.server_pids(pg).await.is_empty() }).await);
}

/// Replaces `from` by `to` in a pooler's config file.
fn edit_config(pooler: &Pooler, from: &str, to: &str) {
    let path = pooler.dir.join("pooler.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in\n{text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

fn config_value(rows: &[std::collections::BTreeMap<String, String>], key: &str) -> String {
    rows.iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("{key} not in SHOW CONFIG"))["value"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_pool_size_and_passwords_without_dropping_clients() {
    let pg = PgServer::shared();
    let db = pg.create_db("reload").await;
    let role = format!("rotating_{}", std::process::id());
    let su = pg.superuser().await;
    su.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'old-pw'"
    ))
    .await
    .unwrap();
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nadmin_users = \"admin\"",
        &format!("{}\"{role}\" \"old-pw\"\n", userlist()),
    )
    .await;
    let url = |pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={role} password={pw} dbname={db}",
            pooler.port()
        )
    };
    let keep = connect(&url("old-pw")).await;
    assert_eq!(first_value(&keep, "SELECT current_user").await, role);

    // Pool size 1: a second transaction waits for the first.
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pooler.client().await;
    let waiting = tokio::spawn(async move { first_value(&waiter, "SELECT 42").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "pool size 1 let a second transaction in"
    );

    edit_config(&pooler, "default_pool_size = 1", "default_pool_size = 3");
    let console = admin(&pooler).await;
    console.simple_query("RELOAD").await.expect("RELOAD");
    // The waiter is served by the larger pool while the first transaction is still open.
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        "42"
    );
    let config = show(&console, "SHOW CONFIG").await;
    assert_eq!(config_value(&config, "default_pool_size"), "3");
    let dbs = show(&console, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|r| r["name"] == db).unwrap()["pool_size"],
        "3"
    );
    // Three transactions at once now hold three servers.
    let more: Vec<_> = futures_util::future::join_all((0..2).map(|_| pooler.client())).await;
    for c in &more {
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    let app_backends: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db, &APP_USER],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app_backends, 3);
    let pools = show(&console, "SHOW POOLS").await;
    let app_pool = pools
        .iter()
        .find(|r| r["database"] == db && r["user"] == APP_USER)
        .unwrap();
    assert_eq!(app_pool["sv_active"], "3");
    holder.batch_execute("COMMIT").await.unwrap();
    for c in &more {
        c.batch_execute("COMMIT").await.unwrap();
    }

    // Password rotation: Postgres and the auth file change together, then RELOAD.
    su.batch_execute(&format!("ALTER ROLE {role} PASSWORD 'new-pw'"))
        .await
        .unwrap();
    let list = pooler.dir.join("userlist.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    std::fs::write(&list, text.replace("\"old-pw\"", "\"new-pw\"")).unwrap();
    console.simple_query("RELOAD").await.expect("RELOAD");
    let err = try_connect(&url("old-pw")).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err:?}");
    let fresh = connect(&url("new-pw")).await;
    // A new server logs in with the new password.
    let pids = pooler.server_pids(pg).await;
    let c2 = connect(&url("new-pw")).await;
    fresh.batch_execute("BEGIN").await.unwrap();
    assert_eq!(first_value(&c2, "SELECT current_user").await, role);
    fresh.batch_execute("COMMIT").await.unwrap();
    assert!(pooler.server_pids(pg).await.len() >= pids.len());
    // The client connected before both reloads never noticed.
    assert_eq!(
        first_value(&keep, "SELECT 'still here'").await,
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_stays() {
    let pg = PgServer::shared();
    let db = pg.create_db("reload_bad").await;
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nadmin_users = \"admin\"",
        &userlist(),
    )
    .await;
    let client = pooler.client().await;
    let console = admin(&pooler).await;
    edit_config(
        &pooler,
        "default_pool_size = 2",
        "default_pool_size = \"lots\"",
    );
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("F0000"), "{err:?}");
    assert!(
        message(&err).contains("default_pool_size"),
        "{}",
        message(&err)
    );
    // A file that does not parse at all.
    std::fs::write(pooler.dir.join("pooler.toml"), "[pooler\n").unwrap();
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("F0000"), "{err:?}");
    let config = show(&console, "SHOW CONFIG").await;
    assert_eq!(config_value(&config, "default_pool_size"), "2");
    assert_eq!(first_value(&client, "SELECT 1").await, "1");
    assert_eq!(first_value(&pooler.client().await, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_databases() {
    let pg = PgServer::shared();
    let db = pg.create_db("reload_dbs").await;
    let db2 = pg.create_db("reload_dbs2").await;
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "pool_mode = \"transaction\"\nadmin_users = \"admin\"",
        &userlist(),
    )
    .await;
    let url2 = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db2}",
        pooler.port()
    );
    let err = try_connect(&url2).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
    let connected = pooler.client().await;
    // Add the second database, remove the first.
    let path = pooler.dir.join("pooler.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(&format!("[databases.{db}]"), &format!("[databases.{db2}]"));
    std::fs::write(&path, text).unwrap();
    let console = admin(&pooler).await;
    console.simple_query("RELOAD").await.expect("RELOAD");
    let c2 = connect(&url2).await;
    assert_eq!(first_value(&c2, "SELECT current_database()").await, db2);
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("3D000"),
        "removed database still served"
    );
    // A client of the removed database finishes its session on the old pool.
    assert_eq!(
        first_value(&connected, "SELECT current_database()").await,
        db
    );
}

// ---- the binary ----

/// The pooler binary running with a config in a temp directory.
struct Binary {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Binary {
    fn config(pg: &PgServer, db: &str, port: u16, extra: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pooler-bin-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("userlist.txt"), userlist()).unwrap();
        std::fs::write(
            dir.join("pooler.toml"),
            format!(
                "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\n\
                 auth_file = \"userlist.txt\"\nmetrics_port = 0\nadmin_users = \"admin\"\n\
                 pool_mode = \"transaction\"\n{extra}\n\
                 [databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\n",
                pg.port
            ),
        )
        .unwrap();
        dir
    }

    async fn start(dir: &Path, port: u16, env: &[(&str, String)]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pooler"));
        cmd.arg("--config")
            .arg(dir.join("pooler.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn pooler");
        let b = Binary {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        assert!(
            eventually(LIMIT, || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await,
            "the binary never listened on {port}"
        );
        b
    }

    fn url(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the pooler did not exit");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_a_second_signal_exits_at_once() {
    let pg = PgServer::shared();
    let db = pg.create_db("sigterm").await;
    let port = free_port();
    let dir = Binary::config(pg, &db, port, "shutdown_timeout = 60");
    let mut bin = Binary::start(&dir, port, &[]).await;
    let url = bin.url(&db, APP_USER, APP_PASSWORD);
    let setup = connect(&url).await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    drop(setup);
    let (busy, busy_conn) = watched(&url).await;
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    bin.signal("TERM");
    assert!(
        eventually(LIMIT, || async { try_connect(&url).await.is_err() }).await,
        "still accepting after SIGTERM"
    );
    busy.batch_execute("COMMIT")
        .await
        .expect("commit after SIGTERM");
    assert_eq!(
        ended_with(busy_conn, "busy").await.as_deref(),
        Some("57P01")
    );
    assert_eq!(bin.exit_code().await, Some(0));
    assert_eq!(count_rows(pg, &db).await, 1);

    // Again, but the transaction never ends: the second SIGTERM does not wait for it.
    let port = free_port();
    let dir = Binary::config(pg, &db, port, "shutdown_timeout = 600");
    let mut bin = Binary::start(&dir, port, &[]).await;
    let url = bin.url(&db, APP_USER, APP_PASSWORD);
    let stuck = connect(&url).await;
    stuck
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    bin.signal("TERM");
    assert!(eventually(LIMIT, || async { try_connect(&url).await.is_err() }).await);
    bin.signal("INT");
    assert_eq!(bin.exit_code().await, Some(1));
    assert_eq!(
        count_rows(pg, &db).await,
        1,
        "the unfinished transaction rolled back"
    );
}

/// Threads of a running process (`Threads:` in /proc/PID/status).
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: in /proc/PID/status")
}

/// `workers = 1` runs every session on the process's one thread: a client waiting for the one
/// server, a transaction holding it and the console must all make progress there (a task
/// that blocked the thread would hang them all), and SIGTERM still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_waiting_clients_and_drains_on_one_thread() {
    let pg = PgServer::shared();
    let db = pg.create_db("one_worker").await;
    let port = free_port();
    let dir = Binary::config(
        pg,
        &db,
        port,
        "workers = 1\ndefault_pool_size = 1\nshutdown_timeout = 60",
    );
    let mut bin = Binary::start(&dir, port, &[]).await;
    let url = bin.url(&db, APP_USER, APP_PASSWORD);
    let console = connect(&bin.url("pgbouncer", "admin", "admin-pw")).await;
    let config = show(&console, "SHOW CONFIG").await;
    assert_eq!(config_value(&config, "workers"), "1");
    let setup = connect(&url).await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    drop(setup);

    // One holds the only server in a transaction; twenty more queue behind it.
    let (holder, holder_conn) = watched(&url).await;
    holder
        .batch_execute("BEGIN; INSERT INTO t VALUES (0)")
        .await
        .unwrap();
    let mut queued = Vec::new();
    for i in 1..=20 {
        let url = url.clone();
        queued.push(tokio::spawn(async move {
            let c = connect(&url).await;
            c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
            first_value(&c, "SELECT count(*) FROM t").await
        }));
    }
    assert!(
        eventually(LIMIT, || async {
            let pools = show(&console, "SHOW POOLS").await;
            pools
                .iter()
                .any(|p| p["database"] == db && p["cl_waiting"] == "20")
        })
        .await,
        "the twenty clients never queued"
    );
    // A multi-thread runtime would have a thread per core besides the main one; here any
    // thread beyond the main one is tokio's blocking pool (started on demand, none so far).
    assert_eq!(threads_of(bin.child.id()), 1, "sessions ran on one thread");
    holder.batch_execute("COMMIT").await.unwrap();
    for q in queued {
        let seen: i64 = tokio::time::timeout(LIMIT, q)
            .await
            .expect("a queued client was never served")
            .unwrap()
            .parse()
            .unwrap();
        assert!((2..=21).contains(&seen), "count {seen}");
    }
    assert_eq!(count_rows(pg, &db).await, 21);

    bin.signal("TERM");
    assert_eq!(
        ended_with(holder_conn, "holder").await.as_deref(),
        Some("57P01")
    );
    assert_eq!(bin.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_environment_overrides_the_file() {
    let pg = PgServer::shared();
    let db = pg.create_db("sighup").await;
    // The file says one port and pool size; the environment says others.
    let file_port = free_port();
    let env_port = free_port();
    let dir = Binary::config(pg, &db, file_port, "default_pool_size = 5");
    let bin = Binary::start(
        &dir,
        env_port,
        &[
            ("POOLER_LISTEN_PORT", env_port.to_string()),
            ("POOLER_DEFAULT_POOL_SIZE", "2".into()),
            ("POOLER_LOG_CONNECTIONS", "0".into()),
        ],
    )
    .await;
    let console = connect(&bin.url("pgbouncer", "admin", "admin-pw")).await;
    let config = show(&console, "SHOW CONFIG").await;
    assert_eq!(config_value(&config, "listen_port"), env_port.to_string());
    assert_eq!(config_value(&config, "default_pool_size"), "2");
    assert_eq!(config_value(&config, "log_connections"), "0");
    let client = connect(&bin.url(&db, APP_USER, APP_PASSWORD)).await;
    assert_eq!(first_value(&client, "SELECT 1").await, "1");

    // SIGHUP re-reads the file; the environment still wins where it speaks.
    let path = dir.join("pooler.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "pool_mode = \"transaction\"",
            "pool_mode = \"transaction\"\nquery_wait_timeout = 7",
        ),
    )
    .unwrap();
    bin.signal("HUP");
    assert!(
        eventually(LIMIT, || async {
            let c = show(&console, "SHOW CONFIG").await;
            config_value(&c, "query_wait_timeout") == "7"
        })
        .await,
        "SIGHUP did not reload"
    );
    let config = show(&console, "SHOW CONFIG").await;
    assert_eq!(config_value(&config, "default_pool_size"), "2");
    assert_eq!(
        first_value(&client, "SELECT 2").await,
        "2",
        "the client survived"
    );
}

#[test]
fn check_names_the_bad_key_and_help_documents_the_flags() {
    let dir = std::env::temp_dir().join(format!("pooler-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[pooler]\nauth_type = \"trust\"\ndefault_pool_size = -3\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pooler"))
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("default_pool_size") && stderr.contains("bad.toml"),
        "{stderr}"
    );

    // An override that names no key is refused, naming the variable.
    let good = dir.join("good.toml");
    std::fs::write(&good, "[pooler]\nauth_type = \"trust\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pooler"))
        .arg("--check")
        .env("POOLER_CONFIG", &good)
        .env("POOLER_DEFAULT_POOL_SISE", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("POOLER_DEFAULT_POOL_SISE"), "{stderr}");
    // The config path from the environment, a valid override: valid.
    let out = Command::new(env!("CARGO_BIN_EXE_pooler"))
        .arg("--check")
        .env("POOLER_CONFIG", &good)
        .env("POOLER_DEFAULT_POOL_SIZE", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_pooler"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config",
        "--check",
        "POOLER_CONFIG",
        "POOLER_<KEY>",
        "SIGTERM",
        "SIGHUP",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
