//! A PgBouncer deployment's own `pgbouncer.ini`, run unchanged: the tutorial settings show in
//! SHOW CONFIG, `%include` and `[users]` apply, the `*` fallback database serves names without
//! an entry, and what the pooler ignores is reported by name.

mod common;

use common::*;
use std::time::Duration;

/// A tutorial-style ini (PgBouncer's keys and spellings), with the pooler's two test-only
/// needs: an ephemeral port and no metrics listener (many poolers share this process).
fn tutorial_ini() -> String {
    "\
;; pgbouncer.ini as the tutorials write it
[databases]
%include databases.ini

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 0
metrics_port = 0
auth_type = md5
auth_file = userlist.txt
admin_users = postgres
pool_mode = transaction
log_connections = 0
log_disconnections = 0
max_client_conn = 10000
default_pool_size = 150
reserve_pool_size = 10
reserve_pool_timeout = 5
server_idle_timeout = 600
# PgBouncer keys the pooler does not have: warnings, not errors
logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /var/run/pgbouncer/pgbouncer.pid

[users]
app = pool_mode=session max_user_connections=2
"
    .to_string()
}

async fn start(pg: &PgServer, db: &str) -> Pooler {
    let databases = format!(
        "{db} = host=127.0.0.1 port={port} dbname={db}\n* = host=127.0.0.1 port={port}\n",
        port = pg.port
    );
    Pooler::start_from_files(
        db,
        "pgbouncer.ini",
        &[
            ("pgbouncer.ini", &tutorial_ini()),
            ("databases.ini", &databases),
        ],
    )
    .await
}

#[tokio::test]
async fn tutorial_ini_runs_unchanged() {
    let pg = PgServer::shared();
    let db = pg.create_db("ini").await;
    let pooler = start(pg, &db).await;

    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let config = show(&console, "SHOW CONFIG").await;
    let get = |key: &str| {
        config
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| r["value"].clone())
            .unwrap_or_else(|| panic!("{key} not in SHOW CONFIG"))
    };
    for (key, value) in [
        ("log_connections", "0"),
        ("log_disconnections", "0"),
        ("max_client_conn", "10000"),
        ("default_pool_size", "150"),
        ("reserve_pool_size", "10"),
        ("reserve_pool_timeout", "5"),
        ("server_idle_timeout", "600"),
        ("pool_mode", "transaction"),
        ("auth_type", "md5"),
        ("admin_users", "postgres"),
    ] {
        assert_eq!(get(key), value, "{key}");
    }

    let client = pooler.client().await;
    assert_eq!(first_value(&client, "SELECT current_database()").await, db);

    // Ignored keys are reported by name, with where they are.
    let warnings = pooler.running.app.config().warnings.join("\n");
    for key in ["logfile", "pidfile"] {
        assert!(warnings.contains(key), "{key} not in {warnings}");
    }
    assert!(warnings.contains("pgbouncer.ini line"), "{warnings}");
}

#[tokio::test]
async fn users_section_sets_pool_mode_and_max_user_connections() {
    let pg = PgServer::shared();
    let db = pg.create_db("ini_users").await;
    let pooler = start(pg, &db).await;
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;

    // [users] app = pool_mode=session: app's pool is a session pool, though the global mode
    // is transaction.
    let first = pooler.client().await;
    first_value(&first, "SELECT 1").await;
    let pools = show(&console, "SHOW POOLS").await;
    let pool = pools
        .iter()
        .find(|r| r["database"] == db && r["user"] == APP_USER)
        .expect("app's pool");
    assert_eq!(pool["pool_mode"], "session");

    // max_user_connections=2: two session clients hold both servers; a third waits.
    let second = pooler.client().await;
    first_value(&second, "SELECT 1").await;
    let url = pooler.app_url();
    let third = tokio::spawn(async move {
        let c = connect(&url).await;
        first_value(&c, "SELECT 1").await
    });
    let waiting = eventually(Duration::from_secs(10), || async {
        show(&console, "SHOW POOLS")
            .await
            .iter()
            .any(|r| r["database"] == db && r["cl_waiting"] == "1")
    })
    .await;
    assert!(waiting, "the third client never queued");
    assert_eq!(pg.backends(&db).await, 2);
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the third client was never served")
        .expect("third client task");
    assert_eq!(answer, "1");
    assert!(pg.backends(&db).await <= 2);
}

#[tokio::test]
async fn fallback_database_serves_names_without_an_entry() {
    let pg = PgServer::shared();
    let db = pg.create_db("ini_main").await;
    let other = pg.create_db("ini_other").await;
    let pooler = start(pg, &db).await;
    let url = format!(
        "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname={other}",
        pooler.port()
    );
    let client = connect(&url).await;
    assert_eq!(
        first_value(&client, "SELECT current_database()").await,
        other
    );
}

#[test]
fn convert_prints_toml_that_starts_the_same_config() {
    let dir = std::env::temp_dir().join(format!("pooler-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("pgbouncer.ini"), tutorial_ini()).expect("ini");
    std::fs::write(
        dir.join("databases.ini"),
        "app = host=db.internal port=5433\n* = host=db.internal\n",
    )
    .expect("include");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pooler"))
        .arg("convert")
        .arg(dir.join("pgbouncer.ini"))
        .output()
        .expect("run pooler convert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        toml.contains("# warning:") && toml.contains("logfile"),
        "{toml}"
    );
    let converted = pooler::config::Config::parse(&toml, "converted.toml").expect("valid TOML");
    let ini = pooler::config::Config::load(&dir.join("pgbouncer.ini")).expect("valid ini");
    assert_eq!(converted.pooler.default_pool_size, 150);
    assert!(!converted.pooler.log_connections);
    assert_eq!(converted.databases["app"].port, 5433);
    assert_eq!(converted.databases["*"].host, "db.internal");
    assert_eq!(
        converted.users["app"].max_user_connections,
        ini.users["app"].max_user_connections
    );

    // An ini the pooler cannot honour is refused, naming the key, status 2.
    std::fs::write(dir.join("bad.ini"), "[pgbouncer]\nauth_type = hba\n").expect("ini");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pooler"))
        .arg("convert")
        .arg(dir.join("bad.ini"))
        .output()
        .expect("run pooler convert");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth_type"));
    let _ = std::fs::remove_dir_all(&dir);
}
