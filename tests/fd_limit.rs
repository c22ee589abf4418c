//! The pooler binary at its file-descriptor limit (issue 12, item 7): accepts fail with
//! EMFILE; the log gets one line per `accept::LOG_EVERY` with a count, not one per try, and
//! the pooler serves again once descriptors are free.
//!
//! Every wait is bounded; the assertion on lines is a bound derived from the time the fault
//! lasted, so a slow machine only makes it easier to meet.

mod common;
mod wire;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
/// The pooler's open-files limit: a few for itself, the rest for clients.
const NOFILE: u64 = 48;
/// How long the test keeps the pooler at its limit.
const HOLD: Duration = Duration::from_secs(4);

/// The pooler binary with a low open-files limit, its stderr collected line by line.
struct Limited {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    dir: std::path::PathBuf,
}

impl Limited {
    fn start(pg: &PgServer, db: &str, port: u16) -> Limited {
        let dir = std::env::temp_dir().join(format!(
            "pooler-fdlimit-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("userlist.txt"), Pooler::default_userlist()).unwrap();
        std::fs::write(
            dir.join("pooler.toml"),
            format!(
                "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\n\
                 auth_file = \"userlist.txt\"\nmetrics_port = 0\npool_mode = \"transaction\"\n\
                 default_pool_size = 2\nclient_login_timeout = 120\n\
                 log_connections = false\nlog_disconnections = false\n\
                 workers = 2\n[databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\n",
                pg.port
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pooler"));
        cmd.arg("--config")
            .arg(dir.join("pooler.toml"))
            .env_remove("POOLER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn pooler");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        // Ends at EOF, when the child is gone.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Limited {
            child,
            lines,
            reader: Some(reader),
            dir,
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_fd_limit_accept_errors_are_rate_limited_and_serving_resumes() {
    wire::raise_nofile();
    let pg = PgServer::shared();
    let db = pg.create_db("fd_limit").await;
    let port = free_port();
    let pooler = Limited::start(pg, &db, port);
    let url =
        format!("host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={db}");
    assert!(
        eventually(LIMIT, || async { try_connect(&url).await.is_ok() }).await,
        "the pooler did not start:\n{}",
        pooler.log()
    );
    let client = connect(&url).await;
    assert_eq!(first_value(&client, "SELECT 1").await, "1");

    // Silent connections, more than the pooler has descriptors for: it accepts until
    // EMFILE, and the rest wait in the backlog while every accept fails.
    // Taken before any accept can fail, so the bound below is never too tight.
    let before_fault = Instant::now();
    let mut held = Vec::new();
    for _ in 0..NOFILE * 2 {
        held.push(
            tokio::time::timeout(LIMIT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
                .await
                .expect("connect timed out")
                .expect("connect"),
        );
    }
    assert!(
        eventually(LIMIT, || async { pooler.count("accept failed") > 0 }).await,
        "the pooler never reached its descriptor limit:\n{}",
        pooler.log()
    );
    tokio::time::sleep(HOLD).await;
    let lines = pooler.count("accept failed");
    let elapsed = before_fault.elapsed();
    let windows = elapsed.as_secs() / pooler::accept::LOG_EVERY.as_secs();
    // The first failure, then one line per window at most (the old loop wrote ~20 a second).
    assert!(
        lines as u64 <= 1 + windows,
        "{lines} accept warnings in {elapsed:?}:\n{}",
        pooler.log()
    );
    assert!(
        pooler.log().contains("accept failed: Too many open files"),
        "{}",
        pooler.log()
    );

    // Descriptors free up: the pooler serves new clients again, and the old one still works.
    drop(held);
    assert!(
        eventually(LIMIT, || async {
            match try_connect(&url).await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        })
        .await,
        "the pooler did not serve again after descriptors were freed:\n{}",
        pooler.log()
    );
    assert_eq!(first_value(&client, "SELECT 2").await, "2");
}
