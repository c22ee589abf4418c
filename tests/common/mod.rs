//! Test harness: a real PostgreSQL started in a temp directory on a free loopback port, and
//! poolers started in-process in front of it.
//!
//! One Postgres is shared by the tests of a test binary (each test gets its own database, so
//! `pg_stat_activity` counts stay per-test); tests that stop or restart Postgres start a
//! private one. A watchdog process stops every Postgres when the test process exits, even if
//! it is killed.
#![allow(dead_code)]

pub mod chop;
pub mod replica;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pooler::app::App;
use pooler::config::Config;
use pooler::listener::Running;

pub const SUPERUSER_PASSWORD: &str = "postgres";
/// The application role every test uses; its password is in the pooler's auth file.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Postgres refuses to run as root; when we are root, run it as `postgres`.
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// The directory holding `initdb`, `pg_ctl`, `postgres`.
pub fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(dir) = candidates
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
    {
        return dir;
    }
    let out = Command::new("sh")
        .args(["-c", "dirname \"$(command -v initdb)\""])
        .output()
        .expect("sh");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("initdb").exists(),
        "initdb not found: install PostgreSQL or set PG_BINDIR"
    );
    dir
}

/// A loopback port nothing listens on, for a process this test starts. The port is released
/// before that process binds it, so the kernel may hand it to the next caller too: a test
/// starting poolers in parallel with another could give two of them one port, and the one
/// that lost the bind exits while a readiness probe on that port is answered by the other.
/// So this never returns a port it returned before in this process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Postgres cluster owned by this test process.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    bindir: PathBuf,
    /// Extra `postgres` options (`-c name=value ...`), kept across restarts.
    options: String,
}

/// An initdb'd cluster to copy from: initdb is the slow part of starting a private Postgres.
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bindir = pg_bindir();
        let dir = std::env::temp_dir().join(unique("pooler-pg-template"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("pwfile");
        chown(&dir);
        run(
            pg_command(&bindir.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    // md5 in pg_hba means: md5 for roles stored as md5, SCRAM for roles
                    // stored as SCRAM. Tests cover both server-side logins that way.
                    "--auth-host=md5",
                ])
                .args(["-E", "UTF8", "--locale=C", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        watchdog(&dir, false);
        dir
    })
}

fn chown(dir: &Path) {
    if is_root() {
        run(
            Command::new("chown").args(["-R", "postgres"]).arg(dir),
            "chown",
        );
    }
}

/// Stops the cluster in `dir` (and removes `dir`) when this test process is gone.
fn watchdog(dir: &Path, has_server: bool) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {stop} rm -rf '{dir}'",
        pid = std::process::id(),
        stop = if has_server {
            format!(
                "[ -f '{d}/data/postmaster.pid' ] && kill -QUIT $(head -1 '{d}/data/postmaster.pid') 2>/dev/null; sleep 1;",
                d = dir.display()
            )
        } else {
            String::new()
        },
        dir = dir.display()
    );
    // Never waited for on purpose: it must outlive this process. `setsid` puts it in a
    // session of its own, so killing the test's process group (a timeout, ctrl-c) does not
    // take the watchdog down before it has stopped Postgres.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog");
}

impl PgServer {
    /// A new private cluster, started.
    pub fn start() -> PgServer {
        PgServer::start_with(&[], |_| String::new())
    }

    /// A new private cluster with `files` written into its directory (mode 0600, owned by the
    /// server's user) and extra options from `options(dir)`, e.g. for `ssl=on`.
    pub fn start_with(files: &[(&str, &[u8])], options: impl FnOnce(&Path) -> String) -> PgServer {
        let bindir = pg_bindir();
        let dir = std::env::temp_dir().join(unique("pooler-pg"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template().join("data"))
                .arg(dir.join("data")),
            "copy template cluster",
        );
        for (name, content) in files {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, content).expect("write file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let options = options(&dir);
        chown(&dir);
        let server = PgServer {
            port: free_port(),
            dir,
            bindir,
            options,
        };
        watchdog(&server.dir, true);
        server.pg_ctl_start();
        server
    }

    /// The cluster shared by the tests of this binary.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' \
             -c max_connections=300 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=32MB \
             -c password_encryption=scram-sha-256 {}",
            self.port,
            self.dir.display(),
            self.options
        );
        run(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
            "pg_ctl start",
        );
    }

    pub fn stop(&self) {
        run(
            pg_command(&self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-m", "fast", "stop"]),
            "pg_ctl stop",
        );
    }

    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// A connection string for Postgres itself (not through a pooler).
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }

    pub async fn superuser(&self) -> tokio_postgres::Client {
        connect(&self.url("postgres", SUPERUSER_PASSWORD, "postgres")).await
    }

    /// Creates the app role (once) and a fresh database owned by it; returns the db name.
    pub async fn create_db(&self, prefix: &str) -> String {
        let su = self.superuser().await;
        let role = su
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&APP_USER])
            .await
            .expect("query roles");
        if role.is_none() {
            // Two tests may race to create the role; losing the race is fine.
            let _ = su
                .batch_execute(&format!(
                    "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"
                ))
                .await;
        }
        let name = unique(prefix).to_lowercase();
        su.batch_execute(&format!("CREATE DATABASE {name} OWNER {APP_USER}"))
            .await
            .expect("create database");
        name
    }

    /// Backends of the given database, as `pg_stat_activity` sees them (excluding ours).
    pub async fn backends(&self, db: &str) -> i64 {
        let su = self.superuser().await;
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .expect("count backends")
        .get(0)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg_command(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Postgres's own count of a database's backends, sampled in the background while a load
/// runs; `peak` stops the sampling and returns the largest count seen.
pub struct BackendWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendWatch {
    pub async fn start(pg: &PgServer, db: &str, every: Duration) -> BackendWatch {
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let peak = std::sync::Arc::new(AtomicI64::new(0));
        let su = pg.superuser().await;
        let (stop2, peak2, db) = (stop.clone(), peak.clone(), db.to_string());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let n: i64 = su
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                        &[&db],
                    )
                    .await
                    .expect("count backends")
                    .get(0);
                peak2.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
        });
        BackendWatch { stop, peak, task }
    }

    pub async fn peak(self) -> i64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("backend watch");
        self.peak.load(Ordering::Relaxed)
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}: {}", message(&e)))
}

pub async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    Ok(connect_with_handle(url).await?.0)
}

/// Like `try_connect`, also returning the task that drives the connection: aborting it
/// drops the socket without a Terminate message, as a crashed client would.
pub async fn connect_with_handle(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let handle = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, handle))
}

/// A pooler running in this process in front of a test database.
pub struct Pooler {
    pub running: Running,
    pub db: String,
    pub dir: PathBuf,
}

impl Pooler {
    /// Starts a pooler with `[pooler]` settings `extra` (TOML lines) in front of `db`.
    pub async fn start(pg: &PgServer, db: &str, extra: &str) -> Pooler {
        Pooler::start_with(pg, db, extra, "").await
    }

    /// Like `start`, with extra keys for the `[databases.<db>]` entry.
    pub async fn start_with(pg: &PgServer, db: &str, extra: &str, db_extra: &str) -> Pooler {
        Pooler::start_on_port(pg, pg.port, db, extra, db_extra).await
    }

    /// The default auth file: the app role and the superuser, plain passwords.
    pub fn default_userlist() -> String {
        format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n\"postgres\" \"{SUPERUSER_PASSWORD}\"\n")
    }

    /// Like `start`, with the auth file's full text given.
    pub async fn start_with_userlist(
        pg: &PgServer,
        db: &str,
        extra: &str,
        userlist: &str,
    ) -> Pooler {
        Pooler::start_full(pg.port, db, extra, "", userlist).await
    }

    /// Like `start_with`, pointing the database entry at `port` instead of `pg`'s.
    pub async fn start_on_port(
        _pg: &PgServer,
        port: u16,
        db: &str,
        extra: &str,
        db_extra: &str,
    ) -> Pooler {
        Pooler::start_full(port, db, extra, db_extra, &Pooler::default_userlist()).await
    }

    /// A pooler with every part of its config given.
    pub async fn start_full(
        port: u16,
        db: &str,
        extra: &str,
        db_extra: &str,
        userlist: &str,
    ) -> Pooler {
        let dir = std::env::temp_dir().join(unique("pooler-cfg"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("userlist.txt"), userlist).expect("userlist");
        // Many poolers share this process: no metrics listener unless a test asks for one.
        let metrics = if extra.contains("metrics_port") {
            ""
        } else {
            "metrics_port = 0\n"
        };
        let toml = format!(
            "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nauth_file = \"userlist.txt\"\n\
             log_connections = false\nlog_disconnections = false\n{metrics}{extra}\n\
             [databases.{db}]\nhost = \"127.0.0.1\"\nport = {port}\n{db_extra}\n"
        );
        let path = dir.join("pooler.toml");
        std::fs::write(&path, toml).expect("config");
        // POOLER_LOG=debug shows the pooler's log while debugging a test.
        if let Ok(filter) = std::env::var("POOLER_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let config = Config::load(&path).expect("valid test config");
        let app = App::new(config).expect("app");
        let running = Running::start(app).await.expect("start pooler");
        Pooler {
            running,
            db: db.to_string(),
            dir,
        }
    }

    /// A pooler started from config files written as given (`(name, text)` pairs, e.g. a
    /// `pgbouncer.ini` and the files it includes) into a fresh directory that also holds the
    /// default `userlist.txt`; `config` names the one to load. `db` is what `url` connects to.
    pub async fn start_from_files(db: &str, config: &str, files: &[(&str, &str)]) -> Pooler {
        let dir = std::env::temp_dir().join(unique("pooler-cfg"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("userlist.txt"), Pooler::default_userlist()).expect("userlist");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("config file");
        }
        let config = Config::load(&dir.join(config)).expect("valid test config");
        let app = App::new(config).expect("app");
        let running = Running::start(app).await.expect("start pooler");
        Pooler {
            running,
            db: db.to_string(),
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={}",
            self.port(),
            self.db
        )
    }

    /// A connection string for the admin console.
    pub fn console_url(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=pgbouncer",
            self.port()
        )
    }

    /// GET on the metrics listener: status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.running.metrics_addr.expect("metrics listener on");
        http_get(addr, path).await
    }

    /// The body of `/metrics`.
    pub async fn scrape(&self) -> String {
        let (status, body) = self.http_get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn app_url(&self) -> String {
        self.url(APP_USER, APP_PASSWORD)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.app_url()).await
    }

    /// The pooler's own server connections to this database, as Postgres sees them.
    pub async fn server_pids(&self, pg: &PgServer) -> Vec<i32> {
        let su = pg.superuser().await;
        su.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' ORDER BY pid",
            &[&self.db],
        )
        .await
        .expect("list backends")
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` until it returns true or `limit` passes; returns the last result.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pooler) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// The message of a tokio-postgres error (the server's or pooler's text when there is one).
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The first column of the first row of a simple-protocol query.
pub async fn first_value(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A bare HTTP/1.1 GET over a TcpStream: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .expect("connect timed out")
    .expect("connect to metrics listener");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response timed out")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// The value of one series in a Prometheus text exposition: `name` with exactly these labels
/// (in any order).
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let mut got: Vec<(String, String)> = rest
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            got.sort();
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            want.sort();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

/// A simple-protocol result set as rows of column name → value (NULLs left out).
pub async fn show(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, col)| {
                        r.get(i).map(|v| (col.name().to_string(), v.to_string()))
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The column names of a simple-protocol result set.
pub async fn columns(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_string()).collect())
            }
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.columns().iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// Connects with tokio-postgres; the returned task reports how the connection ended (the
/// FATAL a pooler sent when it let the client go, for instance).
pub async fn connect_watched(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}: {}", message(&e)));
    (client, tokio::spawn(conn))
}

/// Waits (at most `limit`) for a watched connection to end: the SQLSTATE and message it
/// ended with, or None for a clean close.
pub async fn connection_end(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    limit: Duration,
    what: &str,
) -> Option<(String, String)> {
    let result = tokio::time::timeout(limit, conn)
        .await
        .unwrap_or_else(|_| panic!("{what}: connection did not end"))
        .expect("connection task");
    result
        .err()
        .map(|e| (sqlstate(&e).unwrap_or_default(), message(&e)))
}

/// A bound on a whole test that holds even when the test's runtime is starved (a pooler
/// spinning in this process keeps `tokio::time::timeout` from ever firing): an OS thread
/// that ends the process with a message unless the guard is dropped first.
pub struct Deadline(std::sync::Arc<std::sync::atomic::AtomicBool>);

pub fn deadline(what: &'static str, limit: Duration) -> Deadline {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
            if flag.load(Ordering::Relaxed) {
                return;
            }
        }
        eprintln!(
            "{what}: no result within {limit:?} (the pooler hangs); aborting the test process"
        );
        std::process::exit(101);
    });
    Deadline(done)
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
