//! Security: secrets never reach the logs or the admin console; a failed login does not tell
//! whether the user exists; the console refuses users who are not admin or stats users; a
//! client reaches only the databases the config names.
//!
//! The pooler runs in this process: one `tracing` subscriber at TRACE level captures
//! everything every pooler of this binary logs.

mod common;
mod wire;

use common::*;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pooler::app::App;
use pooler::config::Config;
use pooler::listener::Running;

// ---------------------------------------------------------------------------------------
// Log capture.

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            // Everything the pooler logs; not the test's own driver (which creates roles
            // with their passwords in SQL).
            .with_env_filter(tracing_subscriber::EnvFilter::new("pooler=trace"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------
// A pooler with logging on and an auth file of every secret kind.

const MD5_USER: &str = "md5user";
const MD5_PASSWORD: &str = "md5-pass-S3CR3T-41";
const SCRAM_USER: &str = "scramuser";
const SCRAM_PASSWORD: &str = "scram-pass-S3CR3T-42";
const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-S3CR3T-43";
const STATS_USER: &str = "watcher";
const STATS_PASSWORD: &str = "watcher-S3CR3T-44";
const WRONG_PASSWORD: &str = "wrong-S3CR3T-45";
const GHOST_PASSWORD: &str = "ghost-S3CR3T-46";
const FORCED_PASSWORD: &str = APP_PASSWORD;

struct Secrets {
    md5: String,
    scram: String,
}

fn secrets() -> &'static Secrets {
    static S: OnceLock<Secrets> = OnceLock::new();
    S.get_or_init(|| Secrets {
        md5: postgres_protocol::password::md5(MD5_PASSWORD.as_bytes(), MD5_USER),
        scram: postgres_protocol::password::scram_sha_256(SCRAM_PASSWORD.as_bytes()),
    })
}

/// Every string that must never be seen outside the auth file and config.
fn forbidden() -> Vec<String> {
    let s = secrets();
    let mut v: Vec<String> = [
        APP_PASSWORD,
        MD5_PASSWORD,
        SCRAM_PASSWORD,
        ADMIN_PASSWORD,
        STATS_PASSWORD,
        WRONG_PASSWORD,
        GHOST_PASSWORD,
        FORCED_PASSWORD,
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    v.push(s.md5.clone());
    v.push(s.md5[3..].to_string());
    v.push(s.scram.clone());
    // SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>
    let keys = s.scram.rsplit('$').next().unwrap();
    for k in keys.split(':') {
        v.push(k.to_string());
    }
    v
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in forbidden() {
        let line = text.lines().find(|l| l.contains(&secret));
        assert!(
            line.is_none(),
            "{what} contains the secret {secret:?}: {}",
            line.unwrap_or_default()
        );
    }
}

async fn start(db: &str, port: u16, auth_type: &str) -> (Running, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "pooler-sec-{}-{}-{}",
        std::process::id(),
        db,
        auth_type
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let s = secrets();
    let userlist = format!(
        "\"{APP_USER}\" \"{APP_PASSWORD}\"\n\"{MD5_USER}\" \"{}\"\n\"{SCRAM_USER}\" \"{}\"\n\
         \"{ADMIN_USER}\" \"{ADMIN_PASSWORD}\"\n\"{STATS_USER}\" \"{STATS_PASSWORD}\"\n",
        s.md5, s.scram
    );
    std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
    let toml = format!(
        "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 0\nauth_file = \"userlist.txt\"\n\
         auth_type = \"{auth_type}\"\npool_mode = \"transaction\"\nmetrics_port = 0\n\
         log_connections = true\nlog_disconnections = true\n\
         admin_users = \"{ADMIN_USER}\"\nstats_users = \"{STATS_USER}\"\n\
         [databases.{db}]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [databases.forced]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"{db}\"\n\
         user = \"{APP_USER}\"\npassword = \"{FORCED_PASSWORD}\"\n"
    );
    std::fs::write(dir.join("pooler.toml"), toml).unwrap();
    let config = Config::load(&dir.join("pooler.toml")).expect("config");
    let running = Running::start(App::new(config).expect("app"))
        .await
        .expect("start");
    (running, dir)
}

fn url(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={password} dbname={db}")
}

/// Every result row of a console command, as text.
async fn console_text(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(msgs) => msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => message(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_the_console() {
    capture_logs();
    let pg = PgServer::shared();
    let db = pg.create_db("secrets").await;
    let mut console_output = String::new();
    for auth in ["md5", "scram-sha-256", "plain"] {
        let (running, _dir) = start(&db, pg.port, auth).await;
        let port = running.addr.port();
        // Good logins, through to a query (server logins with the app's secret).
        for d in [db.as_str(), "forced"] {
            let c = connect(&url(port, APP_USER, APP_PASSWORD, d)).await;
            assert_eq!(first_value(&c, "SELECT current_user").await, APP_USER);
        }
        // Wrong passwords, unknown users, users Postgres does not know.
        for (user, password) in [
            (APP_USER, WRONG_PASSWORD),
            ("ghost", GHOST_PASSWORD),
            (MD5_USER, MD5_PASSWORD),
            (MD5_USER, WRONG_PASSWORD),
            (SCRAM_USER, SCRAM_PASSWORD),
            (SCRAM_USER, WRONG_PASSWORD),
            (ADMIN_USER, WRONG_PASSWORD),
        ] {
            let _ = try_connect(&url(port, user, password, &db)).await;
        }
        // The console, as admin and as stats user.
        for (user, password) in [(ADMIN_USER, ADMIN_PASSWORD), (STATS_USER, STATS_PASSWORD)] {
            let c = connect(&url(port, user, password, "pgbouncer")).await;
            for cmd in [
                "SHOW CONFIG",
                "SHOW DATABASES",
                "SHOW USERS",
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW STATS",
                "SHOW LISTS",
            ] {
                console_output.push_str(&console_text(&c, cmd).await);
                console_output.push('\n');
            }
        }
    }
    assert!(
        console_output.contains("auth_type"),
        "SHOW CONFIG answered: {console_output}"
    );
    assert_no_secret(&console_output, "the admin console");
    let log = logs();
    assert!(
        log.contains("login refused") && log.contains("closing"),
        "the log capture saw the logins: {log}"
    );
    assert_no_secret(&log, "the log");
}

// ---------------------------------------------------------------------------------------
// Failed logins look the same whether or not the user exists.

/// Starts a login as `user` and returns the authentication request code (3 cleartext,
/// 5 md5, 10 SASL) and, for SASL, the server-first-message with its nonce removed.
async fn auth_challenge(port: u16, user: &str, db: &str) -> (i32, Option<String>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&wire::startup_packet(&[("user", user), ("database", db)]))
        .await
        .unwrap();
    let first = wire::read_until(&mut s, b'R').await;
    let body = &first.last().unwrap().1;
    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
    if code != 10 {
        return (code, None);
    }
    let client_first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
    let mut m = b"SCRAM-SHA-256\0".to_vec();
    m.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    m.extend_from_slice(client_first);
    s.write_all(&wire::msg(b'p', &m)).await.unwrap();
    let cont = wire::read_until(&mut s, b'R').await;
    let body = &cont.last().unwrap().1;
    let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
    let without_nonce: Vec<&str> = server_first
        .split(',')
        .filter(|p| !p.starts_with("r="))
        .collect();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(10), s.read_buf(&mut rest)).await;
    (code, Some(without_nonce.join(",")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_do_not_reveal_whether_the_user_exists() {
    capture_logs();
    let pg = PgServer::shared();
    let db = pg.create_db("enumerate").await;
    for auth in ["md5", "scram-sha-256", "plain"] {
        let (running, _dir) = start(&db, pg.port, auth).await;
        let port = running.addr.port();
        // Same challenge for a real user (plain secret) and an unknown one.
        let (known_code, known_first) = auth_challenge(port, APP_USER, &db).await;
        let (ghost_code, ghost_first) = auth_challenge(port, "ghost", &db).await;
        assert_eq!(known_code, ghost_code, "{auth}: challenge kind differs");
        if auth == "scram-sha-256" {
            // Salt and iteration count look alike: same shape, same count; an unknown
            // user's salt is stable across attempts, as a real one's is.
            let (k, g) = (known_first.unwrap(), ghost_first.unwrap());
            let shape = |s: &str| {
                s.split(',')
                    .map(|p| {
                        let (key, value) = p.split_at(2);
                        if key == "s=" {
                            format!("s=<{}>", value.len())
                        } else {
                            p.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(shape(&k), shape(&g), "{auth}: {k} vs {g}");
            let (_, again) = auth_challenge(port, "ghost", &db).await;
            assert_eq!(
                again.unwrap(),
                g,
                "an unknown user's salt changes per attempt"
            );
        }
        // Same SQLSTATE and the same message but for the name given.
        let wrong = try_connect(&url(port, APP_USER, WRONG_PASSWORD, &db))
            .await
            .unwrap_err();
        let ghost = try_connect(&url(port, "ghost", GHOST_PASSWORD, &db))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"), "{auth}");
        assert_eq!(sqlstate(&wrong), sqlstate(&ghost), "{auth}");
        assert_eq!(
            message(&wrong).replace(APP_USER, "<user>"),
            message(&ghost).replace("ghost", "<user>"),
            "{auth}"
        );
        // Asking for the console or a missing database changes nothing before the password.
        for d in ["pgbouncer", "nope"] {
            let e = try_connect(&url(port, "ghost", GHOST_PASSWORD, d))
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{auth} {d}");
            let e = try_connect(&url(port, APP_USER, WRONG_PASSWORD, d))
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{auth} {d}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The console and the databases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_non_admin_users() {
    capture_logs();
    let pg = PgServer::shared();
    let db = pg.create_db("consoleaccess").await;
    let (running, _dir) = start(&db, pg.port, "md5").await;
    let port = running.addr.port();
    for console in ["pgbouncer", "pooler"] {
        // A valid user that is neither admin nor stats user.
        let e = try_connect(&url(port, APP_USER, APP_PASSWORD, console))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{console}");
        assert_eq!(message(&e), "not allowed");
        // An admin with a wrong password.
        let e = try_connect(&url(port, ADMIN_USER, WRONG_PASSWORD, console))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{console}");
    }
    // The stats user may look but not act.
    let stats = connect(&url(port, STATS_USER, STATS_PASSWORD, "pgbouncer")).await;
    assert!(stats.simple_query("SHOW POOLS").await.is_ok());
    for cmd in ["PAUSE", "RESUME", "KILL", "SHUTDOWN"] {
        let e = stats.simple_query(cmd).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{cmd}");
    }
    // Still listening: SHUTDOWN was refused.
    let c = connect(&url(port, APP_USER, APP_PASSWORD, &db)).await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_only_configured_databases() {
    capture_logs();
    let pg = PgServer::shared();
    let db = pg.create_db("configured").await;
    // A real database on the same server that the pooler does not name.
    let hidden = pg.create_db("hidden").await;
    let (running, _dir) = start(&db, pg.port, "md5").await;
    let port = running.addr.port();
    for target in [
        hidden.as_str(),
        "postgres",
        "template1",
        "template0",
        "Forced",
        &db.to_uppercase(),
        "forced ",
    ] {
        let e = try_connect(&url(port, APP_USER, APP_PASSWORD, &format!("'{target}'")))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{target}: {e:?}");
        assert_eq!(message(&e), format!("no such database: {target}"));
    }
    // No database given: the user name is taken, and "app" is not configured.
    let e = try_connect(&format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD}"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
    // Nothing reached the hidden database.
    assert_eq!(pg.backends(&hidden).await, 0);
    // The configured names work.
    for d in [db.as_str(), "forced"] {
        let c = connect(&url(port, APP_USER, APP_PASSWORD, d)).await;
        assert_eq!(first_value(&c, "SELECT current_database()").await, db);
    }
}
