//! Real application stacks through the pooler at full multiplexing (issue 13): each test
//! starts a pooler in transaction mode with default settings but a small server pool, then
//! runs an app from `tests/frameworks/` whose own pool has more connections than that
//! (FW_CONNS = 10 against default_pool_size = 4; nine workers and one connection kept aside). The app runs a few hundred concurrent
//! transactions doing real work, keeps one connection with a setting of its own
//! (statement_timeout) that only it may see, and then, with all its connections still open,
//! prints one JSON line with what it measured and waits for the test's go-ahead. The test
//! asserts that every transaction committed with the right results, that no client is pinned
//! (what the frameworks do at connect and on release must be carried, not pinned), and that
//! Postgres never saw more backends for the database than the pool.
//!
//! The runtimes come from `scripts/ensure-frameworks.sh`. Without them a test is skipped with
//! a note, unless `CI` is set or `POOLER_REQUIRE_FRAMEWORKS=1`: then it fails.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const POOL_SIZE: i64 = 4;
/// The app's own pool: more than the server pool.
const APP_CONNS: i64 = 10;
const TXNS: i64 = 450;
/// The app starts no transaction after this long (its own bound, not an assertion).
const APP_SECONDS: u64 = 60;
/// The app process is killed past this.
const APP_LIMIT: Duration = Duration::from_secs(150);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fw_dir() -> PathBuf {
    root().join("target/frameworks")
}

fn apps() -> PathBuf {
    root().join("tests/frameworks")
}

/// A runtime is missing: fail in CI (or when asked to), otherwise skip with a note.
/// Returns true when the test should go on.
fn require(stack: &str, missing: Option<String>) -> bool {
    let Some(what) = missing else { return true };
    let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("POOLER_REQUIRE_FRAMEWORKS").as_deref() == Ok("1");
    let msg = format!("{stack}: {what}: run scripts/ensure-frameworks.sh to install it");
    assert!(!required, "{msg}");
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping the {stack} framework test: {msg}"
    );
    false
}

/// Runs a short helper command (a probe, a compile) with a bound; its output, or why not.
async fn run_bounded(cmd: &mut tokio::process::Command, limit: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(format!("{cmd:?} did not finish within {limit:?}")),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// None when `program args` runs and succeeds, else what is wrong.
async fn probe(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Option<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    run_bounded(&mut cmd, Duration::from_secs(60)).await.err()
}

fn venv_python() -> PathBuf {
    fw_dir().join("venv/bin/python")
}

async fn python_ready(modules: &str) -> Option<String> {
    let python = venv_python();
    if !python.exists() {
        return Some(format!("no Python venv at {}", python.display()));
    }
    probe(&python, &["-c", &format!("import {modules}")]).await
}

/// The `SHOW CLIENTS` rows of one database.
async fn clients_of(pooler: &Pooler, db: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    show(&console, "SHOW CLIENTS")
        .await
        .into_iter()
        .filter(|row| row.get("database").map(String::as_str) == Some(db))
        .collect()
}

/// Server-side prepared statements on the pooler's servers: one open transaction per server
/// (as many as the pool, at once, so each holds a different one) reads pg_prepared_statements.
async fn server_prepared_statements(pooler: &Pooler) -> i64 {
    let mut clients = Vec::new();
    for _ in 0..POOL_SIZE {
        let c = pooler.client().await;
        c.batch_execute("BEGIN").await.expect("BEGIN");
        clients.push(c);
    }
    let mut pids = std::collections::BTreeSet::new();
    let mut total = 0;
    for c in &clients {
        pids.insert(first_value(c, "SELECT pg_backend_pid()").await);
        let n: i64 = first_value(c, "SELECT count(*) FROM pg_prepared_statements")
            .await
            .parse()
            .expect("count");
        total += n;
    }
    assert_eq!(
        pids.len() as i64,
        POOL_SIZE,
        "one server per open transaction"
    );
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("COMMIT");
    }
    total
}

/// Whether the app's driver prepares statements on the server by default (the test then
/// expects to find some there).
#[derive(Clone, Copy, PartialEq)]
enum Prepares {
    Yes,
    /// Django's psycopg backend binds parameters client-side by default.
    NotByDefault,
}

/// Starts a pooler, runs the app `cmd` against it and checks what it reports and what the
/// pooler and Postgres saw.
async fn run_app(stack: &str, prepares: Prepares, mut cmd: tokio::process::Command) {
    let _deadline = deadline("frameworks test", APP_LIMIT + Duration::from_secs(60));
    let pg = PgServer::shared();
    let db = pg.create_db(&format!("fw_{stack}")).await;
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = {POOL_SIZE}\nadmin_users = \"postgres\""
        ),
    )
    .await;
    let watch = BackendWatch::start(pg, &db, Duration::from_millis(50)).await;
    cmd.current_dir(apps())
        .env("FW_HOST", "127.0.0.1")
        .env("FW_PORT", pooler.port().to_string())
        .env("FW_USER", APP_USER)
        .env("FW_PASSWORD", APP_PASSWORD)
        .env("FW_DB", &db)
        .env("FW_CONNS", APP_CONNS.to_string())
        .env("FW_TXNS", TXNS.to_string())
        .env("FW_SECONDS", APP_SECONDS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{stack}: cannot start {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let started = std::time::Instant::now();
    // The app's report: the first JSON line it prints (anything else is its own chatter).
    let mut chatter = String::new();
    let report = tokio::time::timeout(APP_LIMIT, async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.starts_with('{') {
                return Some(line);
            }
            chatter.push_str(&line);
            chatter.push('\n');
        }
        None
    })
    .await;
    let report = match report {
        Ok(Some(line)) => line,
        outcome => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            let err = tokio::time::timeout(Duration::from_secs(10), stderr_task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            panic!(
                "{stack}: no report from the app ({}):\nstdout:\n{chatter}\nstderr:\n{err}",
                if outcome.is_err() {
                    "killed: time limit"
                } else {
                    "it ended"
                }
            );
        }
    };
    // The app holds all its connections open now: what the pooler says about them.
    let clients = clients_of(&pooler, &db).await;
    let pinned: Vec<String> = clients
        .iter()
        .filter_map(|c| {
            let kind = c.get("pinned")?;
            let name = c.get("application_name").map(String::as_str).unwrap_or("");
            Some(format!("client {} ({name}): {kind}", c["id"]))
        })
        .collect();
    let prepared = server_prepared_statements(&pooler).await;
    let _ = stdin.write_all(b"go\n").await;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let err = tokio::time::timeout(Duration::from_secs(10), stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let peak = watch.peak().await;
    eprintln!(
        "{stack}: {report} ({} clients at the end, peak {peak} backends, \
         {prepared} statements prepared on the servers, {:.1}s)",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    let status = match status {
        Ok(s) => s.expect("wait for the app"),
        Err(_) => {
            let _ = child.start_kill();
            panic!("{stack}: the app did not end after the go-ahead\nstderr:\n{err}");
        }
    };
    assert!(
        status.success(),
        "{stack}: the app failed ({status}):\n{err}"
    );
    let r: Value = serde_json::from_str(&report)
        .unwrap_or_else(|e| panic!("{stack}: report is not JSON ({e}): {report}"));
    let num = |k: &str| {
        r[k].as_i64()
            .unwrap_or_else(|| panic!("{stack}: report without {k}: {report}"))
    };
    assert_eq!(
        num("errors"),
        0,
        "{stack}: errors in the app: {report}\n{err}"
    );
    assert_eq!(num("expected"), TXNS, "{stack}: {report}");
    assert_eq!(num("committed"), TXNS, "{stack}: transactions: {report}");
    assert_eq!(num("rows"), TXNS, "{stack}: rows in the table: {report}");
    assert!(
        num("own_checks") > 0,
        "{stack}: the connection with its own setting never checked it: {report}"
    );
    assert!(
        clients.len() as i64 >= APP_CONNS,
        "{stack}: {} clients at the end, the app holds {APP_CONNS}: {report}",
        clients.len()
    );
    assert!(pinned.is_empty(), "{stack}: clients pinned: {pinned:?}");
    if prepares == Prepares::Yes {
        assert!(
            prepared > 0,
            "{stack}: no statement prepared on the servers: the app did not use them"
        );
    }
    assert!(
        peak <= POOL_SIZE,
        "{stack}: {peak} backends for the database, the pool has {POOL_SIZE}"
    );
    drop(pooler);
}

fn python_app(script: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.arg(apps().join(script))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pool() {
    if require("psycopg", python_ready("psycopg, psycopg_pool").await) {
        run_app("psycopg", Prepares::Yes, python_app("psycopg_app.py")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool() {
    if require("asyncpg", python_ready("asyncpg").await) {
        run_app("asyncpg", Prepares::Yes, python_app("asyncpg_app.py")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_psycopg() {
    if require("sqlalchemy", python_ready("sqlalchemy, psycopg").await) {
        run_app("sqlalchemy", Prepares::Yes, python_app("sqlalchemy_app.py")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_orm() {
    if require("django", python_ready("django, psycopg").await) {
        run_app(
            "django",
            Prepares::NotByDefault,
            python_app("django_app.py"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activerecord() {
    let ready = probe("ruby", &["-e", "require 'active_record'; require 'pg'"]).await;
    if require("activerecord", ready) {
        let mut cmd = tokio::process::Command::new("ruby");
        cmd.arg(apps().join("activerecord.rb"));
        run_app("activerecord", Prepares::Yes, cmd).await;
    }
}

/// Debian's jars for pgjdbc + HikariCP (slf4j: Hikari's logging API, and its no-op backend).
const JARS: [&str; 4] = [
    "/usr/share/java/HikariCP.jar",
    "/usr/share/java/postgresql.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-nop.jar",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_hikari() {
    let missing = JARS.iter().find(|j| !std::path::Path::new(j).exists());
    let ready = match missing {
        Some(jar) => Some(format!("no {jar}")),
        None => probe("javac", &["-version"]).await,
    };
    if !require("hikari", ready) {
        return;
    }
    let classes = fw_dir().join("java");
    std::fs::create_dir_all(&classes).expect("mkdir target/frameworks/java");
    let cp = JARS.join(":");
    let mut javac = tokio::process::Command::new("javac");
    javac
        .arg("-d")
        .arg(&classes)
        .args(["-cp", &cp])
        .arg(apps().join("Hikari.java"));
    if let Err(e) = run_bounded(&mut javac, Duration::from_secs(120)).await {
        panic!("hikari: compiling Hikari.java: {e}");
    }
    let mut cmd = tokio::process::Command::new("java");
    cmd.args(["-cp", &format!("{}:{cp}", classes.display()), "Hikari"]);
    run_app("hikari", Prepares::Yes, cmd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knex_node_postgres() {
    let modules = fw_dir().join("node/node_modules");
    let ready = match ["knex", "pg"]
        .iter()
        .find(|m| !modules.join(m).join("package.json").exists())
    {
        Some(m) => Some(format!("no node package {m} under {}", modules.display())),
        None => probe("node", &["--version"]).await,
    };
    if require("knex", ready) {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(apps().join("knex.js"));
        run_app("knex", Prepares::Yes, cmd).await;
    }
}
