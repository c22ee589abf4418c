//! Load comparison: the pooler against PgBouncer and direct Postgres, in one run, on this
//! machine. `cargo bench --bench load` (or `scripts/bench.sh`) does everything itself:
//!
//! 1. a throwaway Postgres (initdb in a temp dir, a free loopback port, run as `postgres` when
//!    we are root), `pgbench -i` at scale 10;
//! 2. the pooler's release binary and, when installed, PgBouncer (as `postgres`), both with a
//!    generated config: transaction mode, pool 20 (+5 reserve after 3 s), md5, a plain
//!    password in the auth file, and a second role (`select_connect_scram_c64`) whose secret
//!    in Postgres and in the auth file is SCRAM's (of SCRAM_ITERATIONS rounds, 16, so that
//!    pgbench's PBKDF2 does not decide the row), so both poolers log its clients in with SCRAM;
//! 3. the pgbench rows against direct Postgres, PgBouncer and the pooler back to back
//!    (target order rotated per repetition), each repeated, the median reported, with the
//!    pooler's and PgBouncer's CPU time per transaction (`/proc/PID/stat`) and peak RSS
//!    (`VmHWM`, reset per run through `clear_refs`);
//! 4. system calls per transaction (`strace -c -f -p PID`, a short separate run);
//! 5. the pooler pinned to one core against two (`taskset`);
//! 6. heap allocations per transaction of the pooler (run in this process as the binary runs
//!    it, counted by a counting global allocator, driven by an external pgbench), on the main
//!    pool and on the mission's pool of 150 (256 and 2,000 clients); logins are taken out
//!    except on the `-C` row;
//! 7. RSS with 10,000 idle logged-in clients, pooler against PgBouncer;
//! 8. the mission rows (issue 15), on a fresh pooler and PgBouncer with pool 150 (+10 reserve
//!    after 5 s): 2,000 and 8,000 `pgbench -S` clients, saturated and at a fixed offered rate
//!    (60 % of PgBouncer's saturated tps in the same run), p50/p99/p99.9 latency and
//!    transactions per client from pgbench's per-transaction logs (`-l`), CPU per transaction
//!    and peak RSS, and the fixed-rate runs again (as many) with 10,000 idle clients connected;
//! 9. `results.md`, `results.csv` (`mission.csv`), raw pgbench output and `chart.png` in the
//!    results directory.
//!
//! Every pgbench run is bounded (`-T`, plus a kill at T+120 s); every process started is
//! stopped by its PID at the end, on error and on ctrl-c. Loopback only.
//!
//! Knobs (environment): DURATION (s per run, 6), REPEAT (3), SETTLE (s between runs, 1),
//! JOBS (pgbench -j, 2), ROWS (comma list of row ids), SCALE (10), PG_MAX_CONNECTIONS (400),
//! STRACE_SECS (3; 0 skips), TASKSET=0 skips the pinning runs, ALLOCS=0 skips the allocation
//! count, IDLE_CLIENTS (10000; 0 skips), PGBOUNCER=0 skips PgBouncer, DIRECT=0 skips direct
//! Postgres, SCRAM_ITERATIONS (the SCRAM role's PBKDF2 rounds, 16), RESULTS_DIR,
//! UPDATE_DOCS=1 copies the chart and the report to docs/,
//! POOLER_BIN=/path/to/pooler measures that binary as `pooler` (`scripts/bench.sh` with PGO=1
//! builds the profile-guided one, `scripts/build-pgo.sh`, and names it here),
//! POOLER_BIN_B=/path/to/pooler adds a second pooler build as a fourth target (compare a change
//! in the same run), WORKERS / WORKERS_B set `workers` of the pooler / pooler-b (WORKERS_B alone
//! makes pooler-b this build), CHART_FONT=/path/to/font.ttf (DejaVu Sans is found by default).
//!
//! Mission rows: MISSION=0 skips them; MISSION_CLIENTS (2000,8000; the idle run goes with the
//! smallest), MISSION_DURATION (s measured per run, 15), MISSION_WARMUP (s excluded at the
//! start, 5), MISSION_REPEAT (1), MISSION_RATE_PCT (60), MISSION_IDLE (10000; 0 skips the idle
//! run), MISSION_PER_PGBENCH (clients per pgbench process, 8000), MISSION_WIRE_SECS (seconds of
//! loopback capture with tcpdump in one more fixed-rate run per target, 5; 0 or no tcpdump skips
//! it), KEEP_TXN_LOGS=1 keeps pgbench's per-transaction logs in raw/. In ROWS, `mission_cN` selects
//! N clients and `mission_idle_cN` the same plus the idle run; ROWS naming only mission rows
//! runs only those (no taskset, allocation or idle-RSS runs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "load/wire.rs"]
mod wire;

// ---------------------------------------------------------------------------------------------
// Counting allocator (for the in-process allocation count of step 6).

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
/// Live heap bytes allocated by threads of the in-process pooler's runtime (tagged threads).
static POOLER_LIVE: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// Whether this thread is one of the in-process pooler's: its runtime's (tagged at start)
    /// or its session workers (named `pooler-worker-N`, started by the pooler itself). None
    /// until first asked.
    static POOLER_THREAD: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

fn pooler_thread() -> bool {
    POOLER_THREAD
        .try_with(|t| {
            t.get().unwrap_or_else(|| {
                // Asking for the name may allocate (a handle for a thread std did not start):
                // those allocations count as another thread's.
                t.set(Some(false));
                let ours = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("pooler-worker"));
                t.set(Some(ours));
                ours
            })
        })
        .unwrap_or(false)
}

/// Counts an allocation of `bytes` (a realloc: to `bytes`, from `old`), if the pooler's
/// threads made it: the bench's own (spawning pgbench, reading its output) are not the
/// pooler's and were 0.18 of tpcb's 0.19 allocations per transaction.
fn counted(bytes: usize, old: usize) {
    if pooler_thread() {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        POOLER_LIVE.fetch_add(bytes as i64 - old as i64, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if pooler_thread() {
            POOLER_LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Knobs.

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_on(name: &str) -> bool {
    std::env::var(name).map(|v| v != "0").unwrap_or(true)
}

struct Opts {
    duration: u64,
    repeat: usize,
    settle: u64,
    jobs: u32,
    rows: Option<Vec<String>>,
    scale: u32,
    pg_max_connections: u32,
    strace_secs: u64,
    taskset: bool,
    allocs: bool,
    idle_clients: usize,
    pgbouncer: bool,
    direct: bool,
    update_docs: bool,
    mission: MissionOpts,
}

/// Knobs of the mission rows (MISSION_*).
#[derive(Clone, Debug)]
struct MissionOpts {
    /// MISSION=0 skips them.
    on: bool,
    /// MISSION_CLIENTS ("2000,8000").
    clients: Vec<u32>,
    /// MISSION_DURATION: measured seconds per run (15), after MISSION_WARMUP (5).
    duration: u64,
    warmup: u64,
    /// MISSION_REPEAT (1).
    repeat: usize,
    /// MISSION_RATE_PCT: the fixed offered rate, % of PgBouncer's saturated tps (60).
    rate_pct: f64,
    /// MISSION_IDLE: idle clients alongside the first client count's fixed-rate run (10000;
    /// 0 skips).
    idle: usize,
    /// MISSION_PER_PGBENCH: at most this many clients per pgbench process (8000).
    per_pgbench: u32,
    /// MISSION_WIRE_SECS: seconds of loopback capture (tcpdump) in one more fixed-rate run per
    /// target, to split the latency between pgbench, the target and Postgres (5; 0 skips).
    wire_secs: u64,
    /// KEEP_TXN_LOGS=1: pgbench's per-transaction logs are kept in raw/ (off).
    keep_txn_logs: bool,
}

impl Opts {
    fn from_env() -> Opts {
        Opts {
            duration: env_or("DURATION", 6),
            repeat: env_or("REPEAT", 3usize).max(1),
            settle: env_or("SETTLE", 1),
            jobs: env_or("JOBS", 2),
            rows: std::env::var("ROWS")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.split(',').map(|r| r.trim().to_string()).collect()),
            scale: env_or("SCALE", 10),
            pg_max_connections: env_or("PG_MAX_CONNECTIONS", 400),
            strace_secs: env_or("STRACE_SECS", 3),
            taskset: env_on("TASKSET"),
            allocs: env_on("ALLOCS"),
            idle_clients: env_or("IDLE_CLIENTS", 10_000),
            pgbouncer: env_on("PGBOUNCER"),
            direct: env_on("DIRECT"),
            update_docs: std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1"),
            mission: MissionOpts {
                on: env_on("MISSION"),
                clients: std::env::var("MISSION_CLIENTS")
                    .unwrap_or_else(|_| "2000,8000".into())
                    .split(',')
                    .filter_map(|c| c.trim().parse().ok())
                    .filter(|c| *c > 0)
                    .collect(),
                duration: env_or("MISSION_DURATION", 15u64).max(1),
                warmup: env_or("MISSION_WARMUP", 5),
                repeat: env_or("MISSION_REPEAT", 1usize).max(1),
                rate_pct: env_or("MISSION_RATE_PCT", 60.0),
                idle: env_or("MISSION_IDLE", 10_000),
                per_pgbench: env_or("MISSION_PER_PGBENCH", 8000u32).max(1),
                wire_secs: env_or("MISSION_WIRE_SECS", 5),
                keep_txn_logs: std::env::var("KEEP_TXN_LOGS").is_ok_and(|v| v == "1"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: every one we start is recorded here and stopped by its PID.

struct Proc {
    child: Child,
    name: String,
    stop_signal: i32,
}

static PROCS: Mutex<Vec<Proc>> = Mutex::new(Vec::new());
static STATE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn procs() -> std::sync::MutexGuard<'static, Vec<Proc>> {
    PROCS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `cmd` with stdout and stderr going to `log`; returns its PID.
fn spawn(cmd: &mut Command, name: &str, stop_signal: i32, log: &Path) -> u32 {
    let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("dup log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let pid = child.id();
    procs().push(Proc {
        child,
        name: name.to_string(),
        stop_signal,
    });
    pid
}

/// The exit status of a recorded process if it has ended (it is then forgotten).
fn try_wait(pid: u32) -> Option<ExitStatus> {
    let mut list = procs();
    let i = list.iter().position(|p| p.child.id() == pid)?;
    match list[i].child.try_wait() {
        Ok(Some(status)) => {
            list.remove(i);
            Some(status)
        }
        _ => None,
    }
}

fn alive(pid: u32) -> bool {
    procs().iter().any(|p| p.child.id() == pid) && try_wait(pid).is_none()
}

/// Waits for a recorded process to end; past `limit` it is stopped and `None` returned.
fn wait_for(pid: u32, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = try_wait(pid) {
            return Some(status);
        }
        if !procs().iter().any(|p| p.child.id() == pid) {
            return None;
        }
        if start.elapsed() > limit {
            eprintln!("  (pid {pid} still running after {limit:?}: stopping it)");
            stop(pid);
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops one recorded process: its stop signal, then SIGKILL after 15 s.
fn stop(pid: u32) {
    let proc = {
        let mut list = procs();
        list.iter()
            .position(|p| p.child.id() == pid)
            .map(|i| list.remove(i))
    };
    if let Some(p) = proc {
        stop_proc(p);
    }
}

fn stop_proc(mut p: Proc) {
    let pid = p.child.id();
    if let Ok(Some(_)) = p.child.try_wait() {
        return;
    }
    unsafe { libc::kill(pid as i32, p.stop_signal) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "  ({} pid {pid} ignored signal {}: SIGKILL)",
        p.name, p.stop_signal
    );
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// Stops every recorded process, newest first, and removes the state directory.
fn stop_all() {
    loop {
        let Some(p) = procs().pop() else { break };
        stop_proc(p);
    }
    if let Some(dir) = STATE_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Ctrl-c or SIGTERM: stop everything we started, then exit.
fn install_signal_handler() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: stopping every process started by the benchmark");
        stop_all();
        std::process::exit(130);
    });
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Postgres and PgBouncer refuse to run as root: run them as `postgres` (no PAM, so the
/// raised fd limit is inherited; setpriv execs, so the PID is the server's own).
fn as_user(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16, pid: u32, what: &str, log: &Path) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if !alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not start listening on {port}; log {}:\n{}",
        log.display(),
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .or_else(|| which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
        .expect(
            "PostgreSQL server binaries not found: apt-get install postgresql (or set PG_BINDIR)",
        )
}

fn chown_postgres(path: &Path) {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            "chown",
        );
    }
}

/// Raises the soft fd limit to the hard one (children inherit it); returns the new limit.
fn raise_nofile() -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// A `/proc/PID/status` field in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the process's peak RSS (VmHWM) so the next reading is this run's peak.
fn reset_hwm(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn settle(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

// ---------------------------------------------------------------------------------------------
// The targets.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Direct,
    PgBouncer,
    Pooler,
    /// A second pooler binary (`POOLER_BIN_B`), e.g. a branch build to compare with.
    PoolerB,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::PgBouncer => "pgbouncer",
            Kind::Pooler => "pooler",
            Kind::PoolerB => "pooler-b",
        }
    }
}

#[derive(Clone, Copy)]
struct Target {
    kind: Kind,
    port: u16,
    /// The process whose CPU and memory are measured (none for direct Postgres).
    pid: Option<u32>,
}

const USER: &str = "app";
const PASSWORD: &str = "app";
/// A second role whose secret, in Postgres and in both poolers' auth files, is SCRAM's (as
/// `pg_authid` holds it): with `auth_type = md5` both poolers ask its clients for SCRAM.
const SCRAM_USER: &str = "app_scram";

/// `SCRAM_USER`'s secret, read back from `pg_authid` once Postgres has stored it.
static SCRAM_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A SCRAM-SHA-256 secret for `password` with `iterations` rounds of PBKDF2, in
/// `pg_authid`'s format. The bench's SCRAM role gets few rounds (SCRAM_ITERATIONS, 16): with
/// Postgres's 4,096 pgbench spends a core on PBKDF2 for every login, holds the row to ~300
/// logins/s and decides its figures (their runs split in two modes by pgbench's speed). Neither
/// pooler runs PBKDF2 at a login (both verify from StoredKey/ServerKey), so the rounds change
/// only what the client pays.
fn scram_secret(password: &str, iterations: u32) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    let salt: [u8; 16] = rand::random();
    // PBKDF2-HMAC-SHA-256, one block (RFC 8018, 5.2): U1 = HMAC(P, salt || 1), Ui = HMAC(P, Ui-1).
    let mut u = hmac(
        password.as_bytes(),
        &[&salt[..], &1u32.to_be_bytes()].concat(),
    );
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        salted.iter_mut().zip(u).for_each(|(s, b)| *s ^= b);
    }
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

const DB: &str = "bench";

/// The auth file both poolers get: the md5 role's plain password, the SCRAM role's secret.
fn userlist() -> String {
    let mut list = format!("\"{USER}\" \"{PASSWORD}\"\n");
    if let Some(secret) = SCRAM_SECRET.get() {
        let _ = writeln!(list, "\"{SCRAM_USER}\" \"{secret}\"");
    }
    list
}

struct Pg {
    port: u16,
    pid: u32,
}

/// initdb, start, create the role and database, pgbench -i.
fn start_postgres(opts: &Opts, bindir: &Path, state: &Path) -> Pg {
    let data = state.join("pg");
    println!("starting Postgres (initdb in {})", data.display());
    run(
        as_user(&bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=md5"])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
        "initdb",
    );
    let port = free_port();
    let log = state.join("postgres.log");
    let pid = spawn(
        as_user(&bindir.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("port={port}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", state.display()))
            .arg("-c")
            .arg(format!("max_connections={}", opts.pg_max_connections))
            .args(["-c", "shared_buffers=256MB"])
            // Keep tpcb CPU-bound rather than bound by this shared disk.
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "password_encryption=md5"])
            .args(["-c", "log_min_messages=warning"]),
        "postgres",
        libc::SIGINT,
        &log,
    );
    let psql = |db: &str, sql: &str| -> std::io::Result<std::process::Output> {
        Command::new(bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(state)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", "postgres", "-d", db, "-Atc", sql])
            .stdin(Stdio::null())
            .output()
    };
    let start = Instant::now();
    loop {
        if psql("postgres", "SELECT 1").is_ok_and(|o| o.status.success()) {
            break;
        }
        assert!(
            alive(pid) && start.elapsed() < Duration::from_secs(60),
            "postgres did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A statement that must succeed; its output.
    let sql_ok = |db: &str, sql: &str| -> String {
        let out = psql(db, sql).expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sql_ok(
        "postgres",
        &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
    );
    sql_ok("postgres", &format!("CREATE DATABASE {DB} OWNER {USER}"));
    println!("pgbench -i -s {} ...", opts.scale);
    run(
        Command::new(bindir.join("pgbench"))
            .args(["-i", "-q", "-s", &opts.scale.to_string(), "-h"])
            .arg(state)
            .args(["-p", &port.to_string(), "-U", USER, DB]),
        "pgbench -i",
    );
    // The SCRAM role: a SCRAM secret of few rounds (see `scram_secret`), which Postgres
    // stores as given (password_encryption is md5 for the rest).
    let iterations = env_or("SCRAM_ITERATIONS", 16u32).max(1);
    sql_ok(
        DB,
        &format!(
            "CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{}'",
            scram_secret(PASSWORD, iterations)
        ),
    );
    sql_ok(
        DB,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {SCRAM_USER}"),
    );
    let secret = sql_ok(
        "postgres",
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{SCRAM_USER}'"),
    );
    assert!(
        secret.starts_with("SCRAM-SHA-256$"),
        "{SCRAM_USER}'s secret is not SCRAM's: {secret:?}"
    );
    let _ = SCRAM_SECRET.set(secret);
    Pg { port, pid }
}

/// The pool settings of a generated pooler / PgBouncer config (the same for both).
#[derive(Clone, Copy, Debug)]
struct PoolCfg {
    size: u32,
    reserve: u32,
    /// Seconds a client waits before the reserve pool is used.
    reserve_timeout: u32,
    max_client_conn: u32,
}

/// The pool of the main rows, the idle test and the allocation count.
const MAIN_POOL: PoolCfg = PoolCfg {
    size: 20,
    reserve: 5,
    reserve_timeout: 3,
    max_client_conn: 12_000,
};

/// The pool of the mission rows (issue 15): thousands of clients on pool 150.
const MISSION_POOL: PoolCfg = PoolCfg {
    size: 150,
    reserve: 10,
    reserve_timeout: 5,
    max_client_conn: 20_000,
};

fn write_pooler_config(
    state: &Path,
    name: &str,
    port: u16,
    pg_port: u16,
    pool: PoolCfg,
) -> PathBuf {
    fs::write(state.join("userlist.txt"), userlist()).expect("userlist");
    let path = state.join(format!("{name}.toml"));
    fs::write(
        &path,
        format!(
            r#"[pooler]
listen_addr = "127.0.0.1"
listen_port = {port}
pool_mode = "transaction"
auth_type = "md5"
auth_file = "userlist.txt"
default_pool_size = {size}
reserve_pool_size = {reserve}
reserve_pool_timeout = {reserve_timeout}
max_client_conn = {max_client_conn}
ignore_startup_parameters = "extra_float_digits"
log_connections = false
log_disconnections = false
# Off: pooler and pooler-b run at the same time and would both want 9127.
metrics_port = 0
{workers}
[databases.{DB}]
host = "127.0.0.1"
port = {pg_port}
"#,
            size = pool.size,
            reserve = pool.reserve,
            reserve_timeout = pool.reserve_timeout,
            max_client_conn = pool.max_client_conn,
            workers = workers_line(name),
        ),
    )
    .expect("pooler config");
    path
}

/// `workers = N` from WORKERS (the pooler of this build) or WORKERS_B (pooler-b); nothing
/// when unset (the pooler's default).
fn workers_line(name: &str) -> String {
    let var = if name.starts_with("pooler-b") {
        "WORKERS_B"
    } else {
        "WORKERS"
    };
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|n| format!("workers = {n}\n"))
        .unwrap_or_default()
}

/// The binary of the `pooler` target: `POOLER_BIN` (`scripts/bench.sh` with `PGO=1` names the
/// profile-guided build), else this build's.
fn pooler_bin() -> PathBuf {
    std::env::var("POOLER_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_pooler")),
            PathBuf::from,
        )
}

fn start_pooler(state: &Path, name: &str, pg_port: u16, pool: PoolCfg) -> Target {
    start_pooler_bin(&pooler_bin(), Kind::Pooler, state, name, pg_port, pool)
}

fn start_pooler_bin(
    bin: &Path,
    kind: Kind,
    state: &Path,
    name: &str,
    pg_port: u16,
    pool: PoolCfg,
) -> Target {
    let port = free_port();
    let config = write_pooler_config(state, name, port, pg_port, pool);
    let log = state.join(format!("{name}.log"));
    let pid = spawn(
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("POOLER_LOG", "warn"),
        name,
        libc::SIGTERM,
        &log,
    );
    wait_port(port, pid, name, &log);
    Target {
        kind,
        port,
        pid: Some(pid),
    }
}

fn start_pgbouncer(bin: &Path, state: &Path, name: &str, pg_port: u16, pool: PoolCfg) -> Target {
    let dir = state.join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    let port = free_port();
    fs::write(dir.join("userlist.txt"), userlist()).expect("userlist");
    let ini = dir.join("pgbouncer.ini");
    fs::write(
        &ini,
        format!(
            "[databases]\n\
             {DB} = host=127.0.0.1 port={pg_port} dbname={DB}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir = {d}\n\
             logfile = {d}/pgbouncer.log\n\
             auth_type = md5\n\
             auth_file = {d}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {size}\n\
             reserve_pool_size = {reserve}\n\
             reserve_pool_timeout = {reserve_timeout}\n\
             max_client_conn = {max_client_conn}\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            d = dir.display(),
            size = pool.size,
            reserve = pool.reserve,
            reserve_timeout = pool.reserve_timeout,
            max_client_conn = pool.max_client_conn,
        ),
    )
    .expect("pgbouncer.ini");
    chown_postgres(&dir);
    let log = state.join(format!("{name}.out"));
    let pid = spawn(as_user(bin).arg(&ini), name, libc::SIGINT, &log);
    wait_port(port, pid, name, &log);
    Target {
        kind: Kind::PgBouncer,
        port,
        pid: Some(pid),
    }
}

// ---------------------------------------------------------------------------------------------
// The pgbench rows.

struct Row {
    id: &'static str,
    /// Short label for the chart.
    short: &'static str,
    what: &'static str,
    args: &'static [&'static str],
    clients: u32,
    /// The role pgbench logs in as: `USER` (a plain password in the auth files, asked for with md5)
    /// or `SCRAM_USER`.
    user: &'static str,
}

const SELECT1: &str = "@select1";

const ROWS: &[Row] = &[
    Row {
        id: "select_simple_c16",
        short: "-S c16",
        what: "`-S` simple",
        args: &["-S"],
        clients: 16,
        user: USER,
    },
    Row {
        id: "select_simple_c64",
        short: "-S c64",
        what: "`-S` simple",
        args: &["-S"],
        clients: 64,
        user: USER,
    },
    Row {
        id: "select_simple_c256",
        short: "-S c256",
        what: "`-S` simple",
        args: &["-S"],
        clients: 256,
        user: USER,
    },
    Row {
        id: "select_simple_c1000",
        short: "-S c1000",
        what: "`-S` simple",
        args: &["-S"],
        clients: 1000,
        user: USER,
    },
    Row {
        id: "select_extended_c64",
        short: "ext c64",
        what: "`-S -M extended`",
        args: &["-S", "-M", "extended"],
        clients: 64,
        user: USER,
    },
    Row {
        id: "select_extended_c256",
        short: "ext c256",
        what: "`-S -M extended`",
        args: &["-S", "-M", "extended"],
        clients: 256,
        user: USER,
    },
    Row {
        id: "select_prepared_c64",
        short: "prep c64",
        what: "`-S -M prepared`",
        args: &["-S", "-M", "prepared"],
        clients: 64,
        user: USER,
    },
    Row {
        id: "tpcb_c64",
        short: "tpcb c64",
        what: "tpcb-like (default)",
        args: &[],
        clients: 64,
        user: USER,
    },
    Row {
        id: "select_connect_c64",
        short: "-C c64",
        what: "`-S -C` (login per txn)",
        args: &["-S", "-C"],
        clients: 64,
        user: USER,
    },
    Row {
        id: "select1_c256",
        short: "SEL1 c256",
        what: "`SELECT 1`",
        args: &["-f", SELECT1],
        clients: 256,
        user: USER,
    },
    Row {
        id: "select_connect_scram_c64",
        short: "-C scram",
        what: "`-S -C`, SCRAM login",
        args: &["-S", "-C"],
        clients: 64,
        user: SCRAM_USER,
    },
];

/// One pgbench run.
#[derive(Clone, Debug, Default)]
struct Run {
    ok: bool,
    tps: f64,
    latency_ms: f64,
    txns: u64,
    failed: u64,
    error: Option<String>,
    /// CPU seconds the measured process used during the run.
    cpu_secs: Option<f64>,
    /// Its peak RSS during the run, kB.
    hwm_kb: Option<u64>,
}

impl Run {
    fn cpu_us_per_txn(&self) -> Option<f64> {
        (self.txns > 0)
            .then_some(())
            .and(self.cpu_secs)
            .map(|s| s * 1e6 / self.txns as f64)
    }
}

struct Ctx {
    opts: Opts,
    bindir: PathBuf,
    state: PathBuf,
    raw: PathBuf,
    runs: usize,
}

fn parse_after<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    let line = text.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// The first error pgbench reports, shortened to its message.
fn pgbench_error(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.contains("ERROR:") || l.contains("FATAL:") || l.contains("error:"))?;
    let msg = ["ERROR:", "FATAL:", "error:"]
        .iter()
        .filter_map(|k| line.rfind(k).map(|i| &line[i + k.len()..]))
        .next()
        .unwrap_or(line)
        .trim();
    Some(msg.chars().take(90).collect())
}

/// Runs pgbench for `secs` against `target`; measures the target's CPU and peak RSS.
fn pgbench(ctx: &mut Ctx, target: &Target, row: &Row, secs: u64, tag: &str) -> Run {
    ctx.runs += 1;
    let select1 = ctx.state.join("select1.sql");
    if !select1.exists() {
        fs::write(&select1, "SELECT 1;\n").expect("select1.sql");
    }
    let mut cmd = Command::new(ctx.bindir.join("pgbench"));
    cmd.args(["-n", "-T", &secs.to_string()])
        .args(["-j", &ctx.opts.jobs.min(row.clients).to_string()])
        .args(["-c", &row.clients.to_string()])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &target.port.to_string(),
            "-U",
            row.user,
        ])
        .env("PGPASSWORD", PASSWORD);
    for a in row.args {
        if *a == SELECT1 {
            cmd.arg(&select1);
        } else {
            cmd.arg(a);
        }
    }
    cmd.arg(DB);
    let raw = ctx.raw.join(format!(
        "{:03}_{}_{}_{}.txt",
        ctx.runs,
        row.id,
        target.kind.name(),
        tag
    ));
    if let Some(pid) = target.pid {
        reset_hwm(pid);
    }
    let cpu0 = target.pid.and_then(cpu_secs);
    let pid = spawn(&mut cmd, "pgbench", libc::SIGINT, &raw);
    let status = wait_for(pid, Duration::from_secs(secs + 120));
    let cpu1 = target.pid.and_then(cpu_secs);
    let text = fs::read_to_string(&raw).unwrap_or_default();
    let txns = parse_after::<u64>(&text, "number of transactions actually processed:").unwrap_or(0);
    let failed = parse_after::<u64>(&text, "number of failed transactions:").unwrap_or(0);
    let tps = parse_after::<f64>(&text, "tps =").unwrap_or(0.0);
    let ok = status.is_some_and(|s| s.success()) && failed == 0 && txns > 0;
    Run {
        ok,
        tps,
        latency_ms: parse_after::<f64>(&text, "latency average =").unwrap_or(0.0),
        txns,
        failed,
        error: if ok {
            None
        } else {
            Some(pgbench_error(&text).unwrap_or_else(|| match status {
                None => "killed at the time limit".into(),
                Some(s) => format!("pgbench exit {s}"),
            }))
        },
        cpu_secs: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        hwm_kb: target.pid.and_then(|p| status_kb(p, "VmHWM:")),
    }
}

// ---------------------------------------------------------------------------------------------
// strace: system calls per transaction.

#[derive(Clone, Debug, Default)]
struct Syscalls {
    txns: u64,
    total: u64,
    by_call: BTreeMap<String, u64>,
}

impl Syscalls {
    fn per_txn(&self) -> Option<f64> {
        (self.txns > 0).then(|| self.total as f64 / self.txns as f64)
    }
}

fn parse_strace(text: &str) -> (u64, BTreeMap<String, u64>) {
    let mut total = 0;
    let mut by_call = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = f[3].parse::<u64>() else {
            continue;
        };
        let name = f[f.len() - 1];
        if name == "total" {
            total = calls;
        } else {
            by_call.insert(name.to_string(), calls);
        }
    }
    (total, by_call)
}

fn strace_run(ctx: &mut Ctx, strace: &Path, target: &Target, row: &Row) -> Option<Syscalls> {
    let pid = target.pid?;
    let out = ctx
        .raw
        .join(format!("strace_{}_{}.txt", row.id, target.kind.name()));
    let log = ctx
        .raw
        .join(format!("strace_{}_{}.log", row.id, target.kind.name()));
    let tracer = spawn(
        Command::new(strace)
            .args(["-c", "-f", "-p", &pid.to_string(), "-o"])
            .arg(&out),
        "strace",
        libc::SIGINT,
        &log,
    );
    std::thread::sleep(Duration::from_millis(800));
    let secs = ctx.opts.strace_secs;
    let run = pgbench(ctx, target, row, secs, "strace");
    stop(tracer);
    let (total, by_call) = parse_strace(&fs::read_to_string(&out).unwrap_or_default());
    (run.txns > 0 && total > 0).then_some(Syscalls {
        txns: run.txns,
        total,
        by_call,
    })
}

// ---------------------------------------------------------------------------------------------
// Idle clients: RSS with N logged-in clients.

mod idle {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn io_err(msg: String) -> std::io::Error {
        std::io::Error::other(msg)
    }

    /// Reads one typed message: (tag, body).
    async fn read_msg(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if !(4..=1 << 20).contains(&len) {
            return Err(io_err(format!("bad length {len}")));
        }
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await?;
        Ok((head[0], body))
    }

    async fn until_ready(s: &mut TcpStream, user: &str, password: &str) -> std::io::Result<()> {
        loop {
            let (tag, body) = read_msg(s).await?;
            match tag {
                b'R' if body.len() >= 4 => {
                    match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                        0 => {}
                        3 => {
                            let mut m = vec![b'p'];
                            m.extend_from_slice(&(5 + password.len() as i32).to_be_bytes());
                            m.extend_from_slice(password.as_bytes());
                            m.push(0);
                            s.write_all(&m).await?;
                        }
                        5 if body.len() >= 8 => {
                            let salt = [body[4], body[5], body[6], body[7]];
                            let secret = pooler::auth::md5_secret(user, password);
                            let answer = pooler::auth::md5_response(&secret, salt);
                            let mut m = vec![b'p'];
                            m.extend_from_slice(&(5 + answer.len() as i32).to_be_bytes());
                            m.extend_from_slice(answer.as_bytes());
                            m.push(0);
                            s.write_all(&m).await?;
                        }
                        other => return Err(io_err(format!("unsupported auth request {other}"))),
                    }
                }
                b'E' => return Err(io_err(String::from_utf8_lossy(&body).replace('\0', " "))),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Connects and logs in; the connection is then idle, outside a transaction.
    pub async fn login(
        port: u16,
        user: &str,
        password: &str,
        db: &str,
    ) -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = (4 + body.len() as i32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        s.write_all(&m).await?;
        tokio::time::timeout(Duration::from_secs(60), until_ready(&mut s, user, password))
            .await
            .map_err(|_| io_err("login timed out".into()))??;
        Ok(s)
    }

    /// One `SELECT 1`, read up to ReadyForQuery.
    pub async fn select1(s: &mut TcpStream) -> std::io::Result<()> {
        let q = b"SELECT 1\0";
        let mut m = vec![b'Q'];
        m.extend_from_slice(&(4 + q.len() as i32).to_be_bytes());
        m.extend_from_slice(q);
        s.write_all(&m).await?;
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let (tag, body) = read_msg(s).await?;
                match tag {
                    b'E' => return Err(io_err(String::from_utf8_lossy(&body).into())),
                    b'Z' => return Ok(()),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| io_err("query timed out".into()))?
    }
}

#[derive(Clone, Debug, Default)]
struct IdleResult {
    clients: usize,
    errors: usize,
    first_error: Option<String>,
    base_kb: u64,
    login_kb: u64,
    after_query_kb: u64,
}

impl IdleResult {
    fn per_client(&self, kb: u64) -> f64 {
        (kb.saturating_sub(self.base_kb) * 1024) as f64 / self.clients.max(1) as f64
    }
}

/// RSS of a process, kB.
fn rss_kb(pid: u32) -> impl Fn() -> u64 {
    move || status_kb(pid, "VmRSS:").unwrap_or(0)
}

/// Opens `n` idle clients to `port`; `measure` (kB) is read before, after the logins and
/// after one query on each.
fn idle_clients(port: u16, n: usize, measure: &dyn Fn() -> u64) -> IdleResult {
    idle_clients_during(port, n, measure, &mut || {})
}

/// [`idle_clients`], and `during` runs while the idle clients are still connected (after the
/// last measurement).
fn idle_clients_during(
    port: u16,
    n: usize,
    measure: &dyn Fn() -> u64,
    during: &mut dyn FnMut(),
) -> IdleResult {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut r = IdleResult {
        base_kb: measure(),
        ..Default::default()
    };
    rt.block_on(async {
        let deadline = Duration::from_secs(300);
        let logins = futures_util::stream::iter(0..n)
            .map(|_| idle::login(port, USER, PASSWORD, DB))
            .buffer_unordered(200)
            .collect::<Vec<_>>();
        let results = tokio::time::timeout(deadline, logins)
            .await
            .unwrap_or_default();
        let mut streams = Vec::with_capacity(n);
        for res in results {
            match res {
                Ok(s) => streams.push(s),
                Err(e) => {
                    r.errors += 1;
                    r.first_error.get_or_insert(e.to_string());
                }
            }
        }
        r.clients = streams.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.login_kb = measure();
        let queries = futures_util::stream::iter(streams.iter_mut())
            .map(idle::select1)
            .buffer_unordered(200)
            .collect::<Vec<_>>();
        for res in tokio::time::timeout(deadline, queries)
            .await
            .unwrap_or_default()
        {
            if let Err(e) = res {
                r.errors += 1;
                r.first_error.get_or_insert(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        r.after_query_kb = measure();
        // The idle clients stay connected (and idle) while `during` runs on this thread.
        during();
        drop(streams);
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    r
}

// ---------------------------------------------------------------------------------------------
// Allocations per transaction: the pooler in this process, pgbench outside.

struct AllocResult {
    what: String,
    txns: u64,
    tps: f64,
    allocs_per_txn: f64,
    bytes_per_txn: f64,
}

/// The mission's shape for the allocation count: 2,000 clients queueing for pool 150.
const ALLOC_MISSION_ROW: Row = Row {
    id: "alloc_mission_c2000",
    short: "-S c2000",
    what: "`-S` simple",
    args: &["-S"],
    clients: 2000,
    user: USER,
};

/// Heap allocations per transaction of a 3 s `row` against the in-process `target`; `label`
/// is added to the row's name.
fn count_allocs(ctx: &mut Ctx, target: &Target, row: &Row, label: &str) -> Option<AllocResult> {
    let (a, b, run) = allocs_during(ctx, target, row, 3);
    settle(ctx.opts.settle);
    (run.txns > 0).then(|| AllocResult {
        what: format!("{} c{}{label}", row.what, row.clients),
        txns: run.txns,
        tps: run.tps,
        allocs_per_txn: a as f64 / run.txns as f64,
        bytes_per_txn: b as f64 / run.txns as f64,
    })
}

/// As `count_allocs`, without the clients' logins: a 2 s run's counts taken from a 5 s run's
/// (both log the same clients in), so what is left is the steady state. Logins cost about 17
/// allocations each: counted in, 64 of them were tpcb's 0.14 allocations per transaction,
/// and with thousands of clients they would be most of what is counted.
fn count_allocs_after_login(
    ctx: &mut Ctx,
    target: &Target,
    row: &Row,
    label: &str,
) -> Option<AllocResult> {
    let (a_short, b_short, short) = allocs_during(ctx, target, row, 2);
    settle(ctx.opts.settle);
    let (a_long, b_long, long) = allocs_during(ctx, target, row, 5);
    settle(ctx.opts.settle);
    let txns = long
        .txns
        .checked_sub(short.txns)
        .filter(|&n| n > 0 && short.txns > 0)?;
    Some(AllocResult {
        what: format!("{} c{}{label}", row.what, row.clients),
        txns,
        tps: long.tps,
        allocs_per_txn: a_long.saturating_sub(a_short) as f64 / txns as f64,
        bytes_per_txn: b_long.saturating_sub(b_short) as f64 / txns as f64,
    })
}

/// Allocations and bytes allocated by the pooler's threads during a `secs` run of `row`.
fn allocs_during(ctx: &mut Ctx, target: &Target, row: &Row, secs: u64) -> (u64, u64, Run) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    let run = pgbench(ctx, target, row, secs, "alloc");
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    (a1 - a0, b1 - b0, run)
}

fn inprocess_allocs(
    ctx: &mut Ctx,
    pg_port: u16,
    idle_n: usize,
) -> (Vec<AllocResult>, Option<IdleResult>) {
    let main = InProcessPooler::start(&ctx.state, "pooler-inprocess", pg_port, MAIN_POOL);
    let target = main.target();
    let mut out = Vec::new();
    // Warm up: the pool opens its servers.
    pgbench(ctx, &target, &ROWS[1], 1, "alloc-warmup");
    for row in [&ROWS[0], &ROWS[1], &ROWS[4], &ROWS[7]] {
        out.extend(count_allocs_after_login(ctx, &target, row, ""));
    }
    // Logins are what this row does: counted with them.
    out.extend(count_allocs(ctx, &target, &ROWS[8], ""));
    // Live heap of the pooler's threads with idle clients (this process holds both ends of
    // every connection, hence fewer clients than the RSS test).
    let idle = (idle_n > 0).then(|| {
        settle(ctx.opts.settle);
        let live_kb = || (POOLER_LIVE.load(Ordering::Relaxed).max(0) / 1024) as u64;
        idle_clients(target.port, idle_n, &live_kb)
    });
    drop(main);
    // The mission's pool (150): more transactions at once than the main pool's 20, so more
    // buffers in use at once (a per-thread cache that held 64 made 0.55 allocations of 16 KiB
    // per transaction at 256 clients here, invisible on pool 20).
    let mission = InProcessPooler::start(
        &ctx.state,
        "pooler-inprocess-mission",
        pg_port,
        MISSION_POOL,
    );
    let target = mission.target();
    let on_pool = format!(", pool {}", MISSION_POOL.size);
    for row in [&ROWS[2], &ALLOC_MISSION_ROW] {
        // Warm up: the pool opens its servers.
        pgbench(ctx, &target, row, 2, "alloc-warmup");
        out.extend(count_allocs_after_login(ctx, &target, row, &on_pool));
    }
    (out, idle)
}

/// A pooler run in this process as the binary runs it with `workers = 1` (the default on two
/// cores): one current-thread runtime on a thread of its own. Its threads are tagged, so
/// their live heap counts as the pooler's; per-thread caches behave as in the binary (a
/// work-stealing runtime would move sessions between threads, and their buffers with them).
struct InProcessPooler {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessPooler {
    /// Starts one with a generated config `name` (`write_pooler_config`) in front of the
    /// Postgres on `pg_port`.
    fn start(state: &Path, name: &str, pg_port: u16, pool: PoolCfg) -> InProcessPooler {
        let config = write_pooler_config(state, name, free_port(), pg_port, pool);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-inprocess-pooler".into())
            .spawn(move || {
                POOLER_THREAD.with(|t| t.set(Some(true)));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .on_thread_start(|| POOLER_THREAD.with(|t| t.set(Some(true))))
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let app = pooler::app::App::new(
                        pooler::config::Config::load(&config).expect("config"),
                    )
                    .expect("app");
                    let running = pooler::listener::Running::start(app).await.expect("listen");
                    let _ = port_tx.send(running.addr.port());
                    let _ = stopped.await;
                    drop(running);
                });
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("in-process pooler thread");
        let port = port_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the in-process pooler listens");
        InProcessPooler {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn target(&self) -> Target {
        Target {
            kind: Kind::Pooler,
            port: self.port,
            pid: None,
        }
    }
}

impl Drop for InProcessPooler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mission rows (issue 15): thousands of `pgbench -S` clients on pool 150, saturated and at a
// fixed offered rate, latency percentiles and per-client fairness from pgbench's
// per-transaction logs, with and without 10,000 idle clients alongside.

/// One transaction from a `pgbench -l` log.
#[derive(Clone, Copy, Debug)]
struct Txn {
    /// `client_id`, made unique across pgbench processes (process index × 1,000,000 + id).
    client: u32,
    /// Completion time, µs since the Unix epoch (`time_epoch`, `time_us`).
    end_us: i64,
    /// The `time` column: µs from the transaction's start, or with `--rate` from its
    /// *scheduled* start, so it includes the schedule lag.
    latency_us: i64,
    /// `schedule_lag` (µs; 0 without `--rate`).
    lag_us: i64,
}

/// Parses every pgbench log file in `dir` whose name starts with `p{index}.`
/// (`--log-prefix dir/p{index}` gives `p{index}.PID` and `p{index}.PID.THREAD`).
fn parse_txn_logs(dir: &Path, procs: usize, rate: bool) -> Vec<Txn> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(index) = (0..procs).find(|i| name.starts_with(&format!("p{i}."))) else {
            continue;
        };
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(client), Ok(latency), Ok(epoch), Ok(us)) = (
                f[0].parse::<u32>(),
                f[2].parse::<i64>(),
                f[4].parse::<i64>(),
                f[5].parse::<i64>(),
            ) else {
                continue;
            };
            let lag = if rate {
                f.get(6).and_then(|l| l.parse::<i64>().ok()).unwrap_or(0)
            } else {
                0
            };
            out.push(Txn {
                client: index as u32 * 1_000_000 + client,
                end_us: epoch * 1_000_000 + us,
                latency_us: latency,
                lag_us: lag,
            });
        }
    }
    out
}

/// The value at quantile `q` (0..=1) of a sorted slice (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One mission run: pgbench process(es) against one target, summarised over the measurement
/// window (login storm and warm-up excluded).
#[derive(Clone, Debug, Default)]
struct MissionRun {
    clients: u32,
    /// `--rate` (total over all clients), when the run was at a fixed offered rate.
    rate: Option<f64>,
    idle: usize,
    /// Every pgbench process exited 0 and reported no failed transaction.
    ok: bool,
    error: Option<String>,
    failed: u64,
    /// "client N aborted" lines in pgbench's output.
    aborted: usize,
    /// Seconds from the start of pgbench to the moment every client had completed its first
    /// transaction (the login storm and the first queue), if they all did.
    all_in_secs: Option<f64>,
    /// Clients that never completed a transaction.
    never: usize,
    window_secs: f64,
    txns: u64,
    tps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    /// p99 of `time - schedule_lag` (service time from the actual start), `--rate` runs only.
    p99_service_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Transactions per client inside the window: min, median, max.
    per_client: Option<(u64, u64, u64)>,
    /// Clients with no transaction inside the window.
    zero_clients: usize,
    /// CPU seconds the target process used inside the window (interpolated from samples).
    cpu_secs: Option<f64>,
    /// CPU seconds of the pgbench processes inside the window.
    pgbench_cpu_secs: Option<f64>,
    /// The whole machine's busy CPU time inside the window, % of all cores (`/proc/stat`).
    machine_busy_pct: Option<f64>,
    hwm_kb: Option<u64>,
    /// The window's latencies (µs, sorted), kept for fixed-rate runs only: their p99 is pooled
    /// over every repetition (`pooled_latencies`).
    latencies_us: Vec<i64>,
}

/// The latencies (µs, sorted) of every run's transactions together, for quantiles over all
/// of them. A run's p99 at a fixed rate is decided by its few slowest bursts, machine-wide
/// stalls both targets see (4.5 to 27 ms across runs minutes apart): pooled, each target's
/// figure weighs every stall it met.
fn pooled_latencies(runs: &[MissionRun]) -> Vec<i64> {
    let mut all: Vec<i64> = runs
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    all
}

impl MissionRun {
    fn cpu_us_per_txn(&self) -> Option<f64> {
        (self.txns > 0)
            .then_some(())
            .and(self.cpu_secs)
            .map(|s| s * 1e6 / self.txns as f64)
    }

    fn pgbench_cpu_us_per_txn(&self) -> Option<f64> {
        (self.txns > 0)
            .then_some(())
            .and(self.pgbench_cpu_secs)
            .map(|s| s * 1e6 / self.txns as f64)
    }
}

/// The machine's (busy, total) CPU seconds over all cores, from `/proc/stat`.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let idle = v[3] + v[4];
    let total: f64 = v.iter().sum();
    Some(((total - idle) / clk_tck(), total / clk_tck()))
}

/// Linear interpolation of the target's CPU time at `t_us` from `(time µs, cpu s)` samples.
fn cpu_at(samples: &[(i64, f64)], t_us: i64) -> Option<f64> {
    let i = samples.iter().position(|s| s.0 >= t_us)?;
    if i == 0 {
        return Some(samples[0].1);
    }
    let (a, b) = (samples[i - 1], samples[i]);
    let span = (b.0 - a.0).max(1) as f64;
    Some(a.1 + (b.1 - a.1) * (t_us - a.0) as f64 / span)
}

/// Runs `clients` `pgbench -S` clients (split over pgbench processes of at most `per_proc`
/// clients each) against `target` for `warmup + duration` seconds, logging every transaction.
fn mission_pgbench(
    ctx: &mut Ctx,
    target: &Target,
    clients: u32,
    rate: Option<f64>,
    idle: usize,
    tag: &str,
) -> MissionRun {
    ctx.runs += 1;
    let m = &ctx.opts.mission;
    let (warmup, duration, per_proc) = (m.warmup, m.duration, m.per_pgbench.max(1));
    let secs = warmup + duration;
    let procs = clients.div_ceil(per_proc) as usize;
    let name = format!(
        "{:03}_mission_c{clients}_{}_{tag}",
        ctx.runs,
        target.kind.name()
    );
    let logdir = ctx.state.join(format!("txnlog-{name}"));
    let _ = fs::remove_dir_all(&logdir);
    fs::create_dir_all(&logdir).expect("log dir");
    if let Some(pid) = target.pid {
        reset_hwm(pid);
    }
    let mut pids = Vec::new();
    let mut raws = Vec::new();
    let start_us = now_us();
    for i in 0..procs {
        let n = (clients - i as u32 * per_proc).min(per_proc);
        let mut cmd = Command::new(ctx.bindir.join("pgbench"));
        cmd.args(["-n", "-S", "-T", &secs.to_string()])
            .args(["-j", &ctx.opts.jobs.min(n).to_string()])
            .args(["-c", &n.to_string()])
            .arg("-l")
            .arg("--log-prefix")
            .arg(logdir.join(format!("p{i}")))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &target.port.to_string(),
                "-U",
                USER,
            ])
            .env("PGPASSWORD", PASSWORD);
        if let Some(r) = rate {
            cmd.args(["-R", &format!("{:.0}", (r / procs as f64).max(1.0))]);
        }
        cmd.arg(DB);
        let raw = ctx.raw.join(format!("{name}_p{i}.txt"));
        pids.push(spawn(&mut cmd, "pgbench", libc::SIGINT, &raw));
        raws.push(raw);
    }
    // Sample the target's CPU time while pgbench runs; every pgbench is bounded.
    let mut samples: Vec<(i64, f64)> = Vec::new();
    let mut pgbench_samples: Vec<(i64, f64)> = Vec::new();
    let mut busy_samples: Vec<(i64, f64)> = Vec::new();
    let mut total_samples: Vec<(i64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs + 120);
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; procs];
    let mut running: Vec<bool> = vec![true; procs];
    loop {
        let t = now_us();
        if let Some(c) = target.pid.and_then(cpu_secs) {
            samples.push((t, c));
        }
        // The pgbench processes' CPU, while all of them are alive (a sum is only comparable
        // between samples of the same processes).
        let pgb: Vec<f64> = pids.iter().filter_map(|p| cpu_secs(*p)).collect();
        if pgb.len() == pids.len() && running.iter().all(|r| *r) {
            pgbench_samples.push((t, pgb.iter().sum()));
        }
        if let Some((busy, total)) = machine_cpu() {
            busy_samples.push((t, busy));
            total_samples.push((t, total));
        }
        for (i, pid) in pids.iter().enumerate() {
            if running[i]
                && let Some(s) = try_wait(*pid)
            {
                statuses[i] = Some(s);
                running[i] = false;
            }
        }
        if !running.iter().any(|r| *r) {
            break;
        }
        if Instant::now() > deadline {
            for (i, pid) in pids.iter().enumerate() {
                if running[i] {
                    eprintln!(
                        "  (pgbench pid {pid} still running after {secs} + 120 s: stopping it)"
                    );
                    stop(*pid);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if let Some(c) = target.pid.and_then(cpu_secs) {
        samples.push((now_us(), c));
    }
    let texts: Vec<String> = raws
        .iter()
        .map(|r| fs::read_to_string(r).unwrap_or_default())
        .collect();
    let failed: u64 = texts
        .iter()
        .filter_map(|t| parse_after::<u64>(t, "number of failed transactions:"))
        .sum();
    let aborted = texts
        .iter()
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("client ") && l.contains(" aborted"))
                .count()
        })
        .sum();
    let ok = statuses.iter().all(|s| s.is_some_and(|s| s.success())) && failed == 0;
    let error = texts.iter().find_map(|t| pgbench_error(t)).or_else(|| {
        statuses.iter().find_map(|s| match s {
            None => Some("killed at the time limit".to_string()),
            Some(s) if !s.success() => Some(format!("pgbench exit {s}")),
            _ => None,
        })
    });

    let mut txns = parse_txn_logs(&logdir, procs, rate.is_some());
    if ctx.opts.mission.keep_txn_logs {
        let _ = fs::rename(&logdir, ctx.raw.join(format!("txnlog-{name}")));
    } else {
        let _ = fs::remove_dir_all(&logdir);
    }
    let mut run = MissionRun {
        clients,
        rate,
        idle,
        ok,
        error,
        failed,
        aborted,
        hwm_kb: target.pid.and_then(|p| status_kb(p, "VmHWM:")),
        ..Default::default()
    };
    if txns.is_empty() {
        run.ok = false;
        run.error
            .get_or_insert_with(|| "no transaction logged".into());
        return run;
    }
    // The window: from the later of (every client has completed a transaction) and
    // (start + warm-up), to the end: saturated, the first client's last completion (pgbench's
    // timer has expired and the clients are draining, so the load is no longer the full
    // client count); at a fixed rate, the moment a tenth of the clients have completed their
    // last transaction. Why not the last completion: near its end pgbench disconnects each
    // client whose next scheduled transaction falls past it, so the last few tenths of a
    // second (a client's mean gap between transactions and more: 0.3 s at 2,000 clients,
    // 1.2 s at 8,000) carry a storm of 2,000 logouts on top of the load; a 2026-12-07 run had
    // its pooler runs' p99 at 31 and 57 ms from that alone (every transaction of the last
    // 0.4 s was slow), against 6-7 ms before it. The login storm at the start is left out
    // for the same reason. A client's last transaction can also come early (its gaps are
    // random), hence a tenth rather than the first.
    let mut first: BTreeMap<u32, i64> = BTreeMap::new();
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    for t in &txns {
        let f = first.entry(t.client).or_insert(t.end_us);
        *f = (*f).min(t.end_us);
        let l = last.entry(t.client).or_insert(t.end_us);
        *l = (*l).max(t.end_us);
    }
    run.never = clients as usize - first.len().min(clients as usize);
    let all_in = first.values().copied().max().unwrap_or(start_us);
    if run.never == 0 {
        run.all_in_secs = Some((all_in - start_us) as f64 / 1e6);
    }
    let end = match (rate, run.never) {
        (None, 0) => last.values().copied().min().unwrap_or(start_us),
        (Some(_), 0) => {
            let mut lasts: Vec<i64> = last.values().copied().collect();
            lasts.sort_unstable();
            lasts.get(lasts.len() / 10).copied().unwrap_or(start_us)
        }
        _ => txns.iter().map(|t| t.end_us).max().unwrap_or(start_us),
    };
    let from =
        (start_us + warmup as i64 * 1_000_000).max(if run.never == 0 { all_in } else { start_us });
    txns.retain(|t| t.end_us > from && t.end_us <= end);
    run.window_secs = (end - from).max(0) as f64 / 1e6;
    run.txns = txns.len() as u64;
    if run.window_secs > 0.0 {
        run.tps = run.txns as f64 / run.window_secs;
    }
    let mut lat: Vec<i64> = txns.iter().map(|t| t.latency_us).collect();
    lat.sort_unstable();
    let ms = |v: Option<f64>| v.map(|x| x / 1000.0);
    run.p50_ms = ms(quantile(&lat, 0.50));
    run.p99_ms = ms(quantile(&lat, 0.99));
    run.p999_ms = ms(quantile(&lat, 0.999));
    run.max_ms = ms(lat.last().map(|v| *v as f64));
    if rate.is_some() {
        let mut service: Vec<i64> = txns.iter().map(|t| t.latency_us - t.lag_us).collect();
        service.sort_unstable();
        run.p99_service_ms = ms(quantile(&service, 0.99));
        run.latencies_us = lat;
    }
    // Transactions per client inside the window (a client with none counts as 0).
    let mut per: BTreeMap<u32, u64> = BTreeMap::new();
    for i in 0..procs {
        let n = (clients - i as u32 * per_proc).min(per_proc);
        for c in 0..n {
            per.insert(i as u32 * 1_000_000 + c, 0);
        }
    }
    for t in &txns {
        *per.entry(t.client).or_default() += 1;
    }
    let mut counts: Vec<u64> = per.into_values().collect();
    counts.sort_unstable();
    run.zero_clients = counts.iter().filter(|c| **c == 0).count();
    if !counts.is_empty() {
        run.per_client = Some((
            counts[0],
            counts[counts.len() / 2],
            counts[counts.len() - 1],
        ));
    }
    let delta = |v: &[(i64, f64)]| match (cpu_at(v, from), cpu_at(v, end)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    run.cpu_secs = delta(&samples);
    run.pgbench_cpu_secs = delta(&pgbench_samples);
    run.machine_busy_pct = match (delta(&busy_samples), delta(&total_samples)) {
        (Some(b), Some(t)) if t > 0.0 => Some(100.0 * b / t),
        _ => None,
    };
    run
}

/// A fixed-rate run with a loopback capture in its middle (`wire`): pgbench's view of it and
/// the capture's.
struct WireRun {
    run: MissionRun,
    /// Transactions whose four packets were matched.
    trips: usize,
    /// (p50, p99, p99.9) in µs of the round trip on the wire, the time inside the target and
    /// Postgres's time.
    round_trip: [Option<f64>; 3],
    inside: [Option<f64>; 3],
    postgres: [Option<f64>; 3],
}

const WIRE_QUANTILES: [f64; 3] = [0.50, 0.99, 0.999];

/// One more fixed-rate run of `clients` at `rate`, with `wire_secs` of `tcpdump` on loopback
/// after the warm-up and the login storm. None (with the reason printed) when the capture
/// could not be made or read.
fn wire_run(
    ctx: &mut Ctx,
    tcpdump: &Path,
    target: &Target,
    pg_port: u16,
    clients: u32,
    rate: f64,
) -> Option<WireRun> {
    let m = &ctx.opts.mission;
    let start_after = m.warmup + 2;
    // The capture ends well before pgbench does; its first second is not counted (below).
    let secs = (m.wire_secs + 1)
        .min((m.warmup + m.duration).saturating_sub(start_after + 2))
        .max(2);
    let name = format!("wire_c{clients}_{}", target.kind.name());
    let pcap = ctx.state.join(format!("{name}.pcap"));
    let log = ctx.raw.join(format!("{name}_tcpdump.txt"));
    let _ = fs::remove_file(&pcap);
    let mut cmd = Command::new(tcpdump);
    // Segments with data only (PSH set: every message write here), not the ACKs between
    // them: half the packets, so that the capture takes less of the CPU it measures. -s 160
    // keeps the headers and a pgbench -S query whole; -B: no drops at 30,000 packets a second.
    cmd.args(["-i", "lo", "-n", "-s", "160", "-B", "131072", "-w"])
        .arg(&pcap)
        .arg(format!(
            "(tcp port {} or tcp port {pg_port}) and (tcp[13] & 8 != 0)",
            target.port
        ));
    let capture = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(start_after));
        let pid = spawn(&mut cmd, "tcpdump", libc::SIGINT, &log);
        std::thread::sleep(Duration::from_secs(secs));
        stop(pid);
    });
    let run = mission_pgbench(ctx, target, clients, Some(rate), 0, "wire");
    if capture.join().is_err() {
        println!("  (tcpdump could not be started: no capture)");
        return None;
    }
    let data = fs::read(&pcap);
    let _ = fs::remove_file(&pcap);
    // tcpdump's start stalls the machine: in a 2026-12-07 capture the first 250 ms had a p99
    // of 28.6 ms inside the target against 0.3-6.8 ms after, enough to set the whole
    // capture's p99. The first second is left out.
    let trips = match data
        .map_err(|e| format!("{}: {e}", pcap.display()))
        .and_then(|d| wire::trips(&d, target.port, pg_port, 1_000_000.0))
    {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            println!("  (the capture matched no transaction)");
            return None;
        }
        Err(e) => {
            println!("  (capture unreadable: {e})");
            return None;
        }
    };
    let figures = |f: &dyn Fn(&wire::Trip) -> f64| {
        let mut v: Vec<i64> = trips.iter().map(|t| f(t).round() as i64).collect();
        v.sort_unstable();
        WIRE_QUANTILES.map(|q| quantile(&v, q))
    };
    Some(WireRun {
        trips: trips.len(),
        round_trip: figures(&wire::Trip::round_trip),
        inside: figures(&wire::Trip::inside),
        postgres: figures(&wire::Trip::postgres),
        run,
    })
}

fn print_wire_run(kind: Kind, w: &WireRun) {
    println!(
        "  {:<10} pgbench p99 {} ms; captured {} transactions, p50 / p99 / p99.9 µs: round trip on the wire {}, inside the target {}, Postgres {}",
        kind.name(),
        opt(w.run.p99_ms, 2),
        w.trips,
        micros3(&w.round_trip),
        micros3(&w.inside),
        micros3(&w.postgres)
    );
}

/// p50 / p99 / p99.9 in whole µs.
fn micros3(v: &[Option<f64>; 3]) -> String {
    v.iter().map(|x| opt(*x, 0)).collect::<Vec<_>>().join(" / ")
}

fn print_mission_run(kind: Kind, r: &MissionRun) {
    println!(
        "  {:<10} {:>5} clients{}{} {:>9} tps  p50 {} p99 {} p99.9 {} ms  cpu {} µs/txn (pgbench {}, machine busy {} %)  per client {}  all served once after {} s  window {:.1} s{}",
        kind.name(),
        r.clients,
        r.rate
            .map(|x| format!(" rate {}", fmt_num(x)))
            .unwrap_or_default(),
        if r.idle > 0 {
            format!(" +{} idle", r.idle)
        } else {
            String::new()
        },
        fmt_num(r.tps),
        opt(r.p50_ms, 2),
        opt(r.p99_ms, 2),
        opt(r.p999_ms, 2),
        opt(r.cpu_us_per_txn(), 1),
        opt(r.pgbench_cpu_us_per_txn(), 1),
        opt(r.machine_busy_pct, 0),
        r.per_client
            .map(|(a, b, c)| format!("{a}/{b}/{c}"))
            .unwrap_or_else(|| "—".into()),
        opt(r.all_in_secs, 1),
        r.window_secs,
        match (&r.error, r.aborted, r.never) {
            (None, 0, 0) => String::new(),
            (e, a, n) => format!(
                "  PROBLEM: {} (aborted clients {a}, clients without a transaction {n})",
                e.as_deref().unwrap_or("-")
            ),
        }
    );
}

/// What the mission part measures, per client count.
#[derive(Default)]
struct MissionResults {
    /// (clients, kind) -> runs, for "saturated", "rate" and "rate+idle".
    saturated: BTreeMap<(u32, Kind), Vec<MissionRun>>,
    rate: BTreeMap<(u32, Kind), Vec<MissionRun>>,
    /// The fixed-rate runs with the idle clients connected (MISSION_REPEAT of them, the idle
    /// clients connected afresh for each), and the first repetition's idle logins and RSS.
    idle: BTreeMap<(u32, Kind), (Vec<MissionRun>, IdleResult)>,
    /// The fixed-rate run with a packet capture, per (clients, kind).
    wire: BTreeMap<(u32, Kind), WireRun>,
    /// The offered rate per client count.
    offered: BTreeMap<u32, f64>,
}

/// The median run of a list: the run itself, so its figures stay consistent. Saturated runs
/// are ranked by tps; fixed-rate runs by p99, since there every run achieves the offered
/// tps and ranking by it picked one at random (a 2026-12-07 run showed a p99 of 40.67 ms,
/// the worst of 7.99, 6.82 and 40.67, as "the median").
fn median_run(runs: &[MissionRun]) -> Option<&MissionRun> {
    let key = |r: &MissionRun| match r.rate {
        Some(_) => r.p99_ms.unwrap_or(f64::INFINITY),
        None => r.tps,
    };
    let mut v: Vec<&MissionRun> = runs.iter().filter(|r| r.txns > 0).collect();
    v.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    v.get(v.len().saturating_sub(1) / 2).copied()
}

fn run_mission(
    ctx: &mut Ctx,
    plan: &[(u32, bool)],
    pgbouncer: Option<&Path>,
    pooler_b: Option<&Path>,
    pg_port: u16,
) -> MissionResults {
    let mut res = MissionResults::default();
    let state = ctx.state.clone();
    let mut targets = Vec::new();
    if let Some(bin) = pgbouncer {
        targets.push(start_pgbouncer(
            bin,
            &state,
            "pgbouncer-mission",
            pg_port,
            MISSION_POOL,
        ));
    }
    targets.push(start_pooler(
        &state,
        "pooler-mission",
        pg_port,
        MISSION_POOL,
    ));
    if let Some(bin) = pooler_b {
        targets.push(start_pooler_bin(
            bin,
            Kind::PoolerB,
            &state,
            "pooler-b-mission",
            pg_port,
            MISSION_POOL,
        ));
    }
    // Warm-up: both pools open their servers before the first measured run.
    let warm = Row {
        id: "mission_warmup",
        short: "",
        what: "",
        args: &["-S"],
        clients: MISSION_POOL.size + MISSION_POOL.reserve,
        user: USER,
    };
    for t in &targets {
        pgbench(ctx, t, &warm, 3, "mission-warmup");
    }
    let repeat = ctx.opts.mission.repeat;
    let settle_s = ctx.opts.settle.max(2);
    for &(n, with_idle) in plan {
        println!("\nmission: {n} clients, saturated");
        for rep in 0..repeat {
            for i in 0..targets.len() {
                let t = targets[(i + rep) % targets.len()];
                let r = mission_pgbench(ctx, &t, n, None, 0, &format!("sat-r{rep}"));
                print_mission_run(t.kind, &r);
                res.saturated.entry((n, t.kind)).or_default().push(r);
                settle(settle_s);
            }
        }
        // The offered rate: a share of PgBouncer's saturated tps (the pooler's without it).
        let base_kind = if pgbouncer.is_some() {
            Kind::PgBouncer
        } else {
            Kind::Pooler
        };
        let Some(base) = res
            .saturated
            .get(&(n, base_kind))
            .and_then(|v| median_run(v))
            .map(|r| r.tps)
            .filter(|t| *t > 0.0)
        else {
            println!(
                "  (no saturated tps for {}: no rate runs)",
                base_kind.name()
            );
            continue;
        };
        let rate = (base * ctx.opts.mission.rate_pct / 100.0).round();
        res.offered.insert(n, rate);
        println!(
            "mission: {n} clients at a fixed rate of {} tps ({} % of {}'s saturated {})",
            fmt_num(rate),
            ctx.opts.mission.rate_pct,
            base_kind.name(),
            fmt_num(base)
        );
        for rep in 0..repeat {
            for i in 0..targets.len() {
                let t = targets[(i + rep) % targets.len()];
                let r = mission_pgbench(ctx, &t, n, Some(rate), 0, &format!("rate-r{rep}"));
                print_mission_run(t.kind, &r);
                res.rate.entry((n, t.kind)).or_default().push(r);
                settle(settle_s);
            }
        }
        if let Some(tcpdump) = which("tcpdump").filter(|_| ctx.opts.mission.wire_secs > 0) {
            println!(
                "mission: {n} clients at {} tps, with a packet capture",
                fmt_num(rate)
            );
            for t in &targets {
                if let Some(w) = wire_run(ctx, &tcpdump, t, pg_port, n, rate) {
                    print_wire_run(t.kind, &w);
                    res.wire.insert((n, t.kind), w);
                }
                settle(settle_s);
            }
        }
        let idle_n = ctx.opts.mission.idle;
        if with_idle && idle_n > 0 {
            println!(
                "mission: {n} clients at {} tps with {idle_n} idle clients alongside",
                fmt_num(rate)
            );
            // As many runs as without them, the targets' order rotated per repetition as in
            // the other rows, so the machine's slow minutes fall on all alike; the idle clients
            // are connected afresh for each run (the bench cannot hold two targets' at once).
            for rep in 0..repeat {
                for i in 0..targets.len() {
                    let t = targets[(i + rep) % targets.len()];
                    let pid = t.pid.expect("pid");
                    let mut run = None;
                    let label = format!("rate-idle-r{rep}");
                    let idle = idle_clients_during(t.port, idle_n, &rss_kb(pid), &mut || {
                        run = Some(mission_pgbench(ctx, &t, n, Some(rate), idle_n, &label));
                    });
                    let mut run = run.expect("run");
                    run.idle = idle.clients;
                    print_mission_run(t.kind, &run);
                    if idle.errors > 0 {
                        println!(
                            "    idle clients: {} errors: {}",
                            idle.errors,
                            idle.first_error.as_deref().unwrap_or("?")
                        );
                    }
                    // The first repetition's RSS stands for the target's; errors add up.
                    match res.idle.entry((n, t.kind)) {
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert((vec![run], idle));
                        }
                        std::collections::btree_map::Entry::Occupied(mut e) => {
                            let (runs, first) = e.get_mut();
                            runs.push(run);
                            first.errors += idle.errors;
                            if first.first_error.is_none() {
                                first.first_error = idle.first_error;
                            }
                        }
                    }
                    settle(settle_s);
                }
            }
        }
    }
    for t in &targets {
        stop(t.pid.expect("pid"));
    }
    res
}

/// The capture table: where a fixed-rate transaction's time goes.
fn wire_report(md: &mut String, res: &MissionResults, counts: &[u32]) {
    if res.wire.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n### Where the time goes at the fixed rate: a packet capture\n\n\
         One more fixed-rate run per target, with `tcpdump` on loopback for a few seconds after \
         the warm-up (its first second, when tcpdump's start stalls the machine, not counted). \
         The capture costs CPU: compare this run's pgbench p99 with the runs above. Each `pgbench -S` query is followed by its packets: leaving pgbench, \
         leaving the target for Postgres, Postgres's reply, and the reply leaving the target for \
         pgbench. *Round trip on the wire* is first to last; *inside the target* is the time \
         between a packet reaching the target and the target sending it on, both ways; \
         *Postgres* is from the query reaching Postgres to its reply. What pgbench reports \
         beyond the round trip is pgbench's own delay in sending and in noticing replies.\n\n\
         | clients | target | transactions captured | pgbench p99 ms (this run) | round trip µs p50 / p99 / p99.9 | inside the target µs p50 / p99 / p99.9 | Postgres µs p50 / p99 / p99.9 |\n|---|---|---|---|---|---|---|"
    );
    for &n in counts {
        for kind in [Kind::PgBouncer, Kind::Pooler, Kind::PoolerB] {
            let Some(w) = res.wire.get(&(n, kind)) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                fmt_num(w.trips as f64),
                opt(w.run.p99_ms, 2),
                micros3(&w.round_trip),
                micros3(&w.inside),
                micros3(&w.postgres)
            );
        }
        let inside = |k: Kind, i: usize| res.wire.get(&(n, k)).and_then(|w| w.inside[i]);
        let ratios: Vec<String> = WIRE_QUANTILES
            .iter()
            .enumerate()
            .map(
                |(i, q)| match (inside(Kind::PgBouncer, i), inside(Kind::Pooler, i)) {
                    (Some(b), Some(p)) if b > 0.0 => format!("p{} **{:.2}**", q * 100.0, p / b),
                    _ => format!("p{} —", q * 100.0),
                },
            )
            .collect();
        if inside(Kind::PgBouncer, 1).is_some() && inside(Kind::Pooler, 1).is_some() {
            let _ = writeln!(
                md,
                "| {n} | inside the target, pooler / PgBouncer | | | | {} | |",
                ratios.join(", ")
            );
        }
    }
}

/// The mission tables for `results.md`.
fn mission_report(md: &mut String, res: &MissionResults, opts: &MissionOpts) {
    let p = MISSION_POOL;
    let _ = writeln!(
        md,
        "\n## Mission rows: thousands of clients on pool {} (`pgbench -S`, simple protocol)\n",
        p.size
    );
    let _ = writeln!(
        md,
        "Pool {} (+{} reserve after {} s), transaction mode, md5, fresh pooler and PgBouncer \
         processes for these rows (warmed up with a 3 s run). Each run: `pgbench -S -T {}` \
         (at most {} clients per pgbench process, `-j` JOBS each), every transaction logged \
         (`-l`). Figures are over the measurement window: from the later of (every client has \
         completed its first transaction, i.e. the login storm is over) and (start + {} s \
         warm-up), to the end: saturated, the first client's last transaction (after that \
         pgbench's timer has expired and the clients drain); at a fixed rate, the moment a \
         tenth of the clients have had their last transaction (after it pgbench disconnects \
         each client whose next transaction is scheduled past its end: a logout storm, left out \
         as the login storm is). tps = transactions in the window / its length; CPU \
         per transaction = the target process's CPU time in the window (sampled every 250 ms, \
         interpolated) / those transactions; peak RSS = VmHWM over the whole run, login storm \
         included. Latency is pgbench's per-transaction `time`; with `--rate` it is measured from \
         the *scheduled* start, so it includes the schedule lag (pgbench's documented behaviour); \
         the 'service' p99 subtracts the lag. The run shown is the median of {} (saturated: by tps, \
         of an even number the slower of the middle two; at a fixed rate: by p99, of an even \
         number the lower of the middle two); the columns 'of each run' list every run. \
         pgbench CPU and machine busy % (all cores, `/proc/stat`) are over the same window: they \
         tell whether the client or the machine, rather than the target, was the limit.\n",
        p.size,
        p.reserve,
        p.reserve_timeout,
        opts.warmup + opts.duration,
        opts.per_pgbench,
        opts.warmup,
        opts.repeat
    );
    let get = |m: &BTreeMap<(u32, Kind), Vec<MissionRun>>, n: u32, k: Kind| {
        m.get(&(n, k)).and_then(|v| median_run(v)).cloned()
    };
    let pair = |b: &Option<MissionRun>,
                q: &Option<MissionRun>,
                f: &dyn Fn(&MissionRun) -> Option<f64>,
                prec: usize| {
        format!(
            "{} / {}",
            opt(b.as_ref().and_then(f), prec),
            opt(q.as_ref().and_then(f), prec)
        )
    };
    let ratio =
        |b: &Option<MissionRun>, q: &Option<MissionRun>, f: &dyn Fn(&MissionRun) -> Option<f64>| {
            bold_quotient(q.as_ref().and_then(f), b.as_ref().and_then(f))
        };
    let counts: Vec<u32> = res
        .saturated
        .keys()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut problems: Vec<String> = Vec::new();
    let mut note = |label: &str, k: Kind, r: &MissionRun| {
        if !r.ok || r.aborted > 0 || r.never > 0 {
            problems.push(format!(
                "{label}, {}: {} (failed transactions {}, aborted clients {}, clients without a transaction {})",
                k.name(),
                r.error.as_deref().unwrap_or("-"),
                r.failed,
                r.aborted,
                r.never
            ));
        }
    };
    for m in [&res.saturated, &res.rate] {
        for ((n, k), runs) in m {
            for r in runs {
                let label = match r.rate {
                    Some(x) => format!("{n} clients at {} tps", fmt_num(x)),
                    None => format!("{n} clients saturated"),
                };
                note(&label, *k, r);
            }
        }
    }
    for ((n, k), (runs, _)) in &res.idle {
        for r in runs {
            note(&format!("{n} clients with {} idle", r.idle), *k, r);
        }
    }

    let tps = |r: &MissionRun| Some(r.tps);
    // One figure of every run of (n, kind), in run order.
    let each =
        |m: &BTreeMap<(u32, Kind), Vec<MissionRun>>, n: u32, f: &dyn Fn(&MissionRun) -> String| {
            [Kind::PgBouncer, Kind::Pooler, Kind::PoolerB]
                .iter()
                .filter(|k| **k != Kind::PoolerB || m.contains_key(&(n, **k)))
                .map(|k| {
                    m.get(&(n, *k))
                        .map(|v| v.iter().map(f).collect::<Vec<_>>().join(", "))
                        .unwrap_or_else(|| "—".into())
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
    let _ = writeln!(md, "### Saturated\n");
    let _ = writeln!(
        md,
        "| clients | PgBouncer tps | pooler tps | pooler / PgBouncer | p50 ms PgB / pooler | p99 ms PgB / pooler | p99.9 ms PgB / pooler | p99 pooler / PgB | CPU µs/txn PgB / pooler | CPU pooler / PgB | peak RSS MiB PgB / pooler | every client served once after s PgB / pooler | window s PgB / pooler | tps of each run PgB / pooler | pgbench CPU µs/txn PgB / pooler | machine CPU busy % PgB / pooler |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &n in &counts {
        let b = get(&res.saturated, n, Kind::PgBouncer);
        let q = get(&res.saturated, n, Kind::Pooler);
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            b.as_ref()
                .map(|r| fmt_num(r.tps))
                .unwrap_or_else(|| "—".into()),
            q.as_ref()
                .map(|r| fmt_num(r.tps))
                .unwrap_or_else(|| "—".into()),
            ratio(&b, &q, &tps),
            pair(&b, &q, &|r| r.p50_ms, 2),
            pair(&b, &q, &|r| r.p99_ms, 2),
            pair(&b, &q, &|r| r.p999_ms, 2),
            ratio(&b, &q, &|r| r.p99_ms),
            pair(&b, &q, &|r| r.cpu_us_per_txn(), 1),
            ratio(&b, &q, &|r| r.cpu_us_per_txn()),
            pair(&b, &q, &|r| r.hwm_kb.map(|k| k as f64 / 1024.0), 1),
            pair(&b, &q, &|r| r.all_in_secs, 1),
            pair(&b, &q, &|r| Some(r.window_secs), 1),
            each(&res.saturated, n, &|r| fmt_num(r.tps)),
            pair(&b, &q, &|r| r.pgbench_cpu_us_per_txn(), 1),
            pair(&b, &q, &|r| r.machine_busy_pct, 0),
        );
    }

    let _ = writeln!(
        md,
        "\n### Fixed offered rate ({} % of PgBouncer's saturated tps at the same client count, same run; the same rate for both)\n",
        opts.rate_pct
    );
    let _ = writeln!(
        md,
        "| clients | offered tps | achieved tps PgB / pooler | p50 ms PgB / pooler | p99 ms PgB / pooler | p99.9 ms PgB / pooler | p99 pooler / PgB | p99 service ms PgB / pooler | CPU µs/txn PgB / pooler | CPU pooler / PgB | peak RSS MiB PgB / pooler | p99 ms of each run PgB / pooler | pgbench CPU µs/txn PgB / pooler | machine CPU busy % PgB / pooler |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &n in &counts {
        let Some(offered) = res.offered.get(&n) else {
            continue;
        };
        let b = get(&res.rate, n, Kind::PgBouncer);
        let q = get(&res.rate, n, Kind::Pooler);
        let achieved = format!(
            "{} / {}",
            b.as_ref()
                .map(|r| fmt_num(r.tps))
                .unwrap_or_else(|| "—".into()),
            q.as_ref()
                .map(|r| fmt_num(r.tps))
                .unwrap_or_else(|| "—".into())
        );
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(*offered),
            achieved,
            pair(&b, &q, &|r| r.p50_ms, 2),
            pair(&b, &q, &|r| r.p99_ms, 2),
            pair(&b, &q, &|r| r.p999_ms, 2),
            ratio(&b, &q, &|r| r.p99_ms),
            pair(&b, &q, &|r| r.p99_service_ms, 2),
            pair(&b, &q, &|r| r.cpu_us_per_txn(), 1),
            ratio(&b, &q, &|r| r.cpu_us_per_txn()),
            pair(&b, &q, &|r| r.hwm_kb.map(|k| k as f64 / 1024.0), 1),
            each(&res.rate, n, &|r| opt(r.p99_ms, 2)),
            pair(&b, &q, &|r| r.pgbench_cpu_us_per_txn(), 1),
            pair(&b, &q, &|r| r.machine_busy_pct, 0),
        );
    }

    let _ = writeln!(
        md,
        "\nThe same, pooled: p99 and p99.9 over the transactions of every run together (each \
         run's window), so that no single run decides.\n\n\
         | clients | runs PgB / pooler | p99 ms PgB / pooler | p99 pooler / PgB | p99.9 ms PgB / pooler | p99.9 pooler / PgB |\n|---|---|---|---|---|---|"
    );
    for &n in &counts {
        let runs = |k: Kind| res.rate.get(&(n, k)).map(Vec::as_slice).unwrap_or(&[]);
        let (b, q) = (runs(Kind::PgBouncer), runs(Kind::Pooler));
        if b.is_empty() && q.is_empty() {
            continue;
        }
        let (all_b, all_q) = (pooled_latencies(b), pooled_latencies(q));
        let figures = |x: f64| {
            let ms = |all: &[i64]| quantile(all, x).map(|us| us / 1000.0);
            let (fb, fq) = (ms(&all_b), ms(&all_q));
            (
                format!("{} / {}", opt(fb, 2), opt(fq, 2)),
                bold_quotient(fq, fb),
            )
        };
        let ((p99, r99), (p999, r999)) = (figures(0.99), figures(0.999));
        let _ = writeln!(
            md,
            "| {n} | {} / {} | {p99} | {r99} | {p999} | {r999} |",
            b.len(),
            q.len()
        );
    }

    wire_report(md, res, &counts);

    let _ = writeln!(
        md,
        "\n### Fairness: transactions per client inside the window\n\nWaiters are served in \
         arrival order, so under saturation every client should get about the same share; \
         under a fixed rate pgbench draws one Poisson schedule per thread and hands its \
         transactions to the thread's clients, so the spread there says little about the pooler.\n"
    );
    let _ = writeln!(
        md,
        "| clients | load | target | min | median | max | max / min | clients with none in the window |\n|---|---|---|---|---|---|---|---|"
    );
    for &n in &counts {
        for (label, m) in [("saturated", &res.saturated), ("fixed rate", &res.rate)] {
            for k in [Kind::PgBouncer, Kind::Pooler, Kind::PoolerB] {
                let Some(r) = get(m, n, k) else { continue };
                let Some((lo, mid, hi)) = r.per_client else {
                    continue;
                };
                let _ = writeln!(
                    md,
                    "| {n} | {label} | {} | {lo} | {mid} | {hi} | {} | {} |",
                    k.name(),
                    if lo > 0 {
                        format!("{:.2}", hi as f64 / lo as f64)
                    } else {
                        "∞".into()
                    },
                    r.zero_clients
                );
            }
        }
    }

    if !res.idle.is_empty() {
        let _ = writeln!(
            md,
            "\n### Idle clients alongside the load\n\nThe fixed-rate runs again, while {} more \
             clients are connected to the same target (logged in with md5, one `SELECT 1` each, \
             then idle for the run; connected afresh for each run, the targets' order rotated per \
             repetition). p99 of the active clients without and with them: the median run by \
             p99, and pooled over every run. RSS: the first repetition's; errors: all of them.\n",
            opts.idle
        );
        let _ = writeln!(
            md,
            "| clients | target | idle clients | achieved tps with idle | p99 ms without / with idle (median run) | with / without | p99 ms of each run without / with idle | pooled p99 ms without / with | pooled with / without | p99.9 ms without / with (median run) | CPU µs/txn without / with | RSS MiB with the idle clients (before load) | peak RSS MiB during the load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let each_p99 = |runs: &[MissionRun]| {
            runs.iter()
                .map(|r| opt(r.p99_ms, 2))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pooled_p99 =
            |runs: &[MissionRun]| quantile(&pooled_latencies(runs), 0.99).map(|us| us / 1000.0);
        for ((n, k), (runs, idle)) in &res.idle {
            let base = get(&res.rate, *n, *k);
            let w = median_run(runs).cloned();
            let without = res.rate.get(&(*n, *k)).map(Vec::as_slice).unwrap_or(&[]);
            let (pooled_without, pooled_with) = (pooled_p99(without), pooled_p99(runs));
            let _ = writeln!(
                md,
                "| {n} | {} | {}{} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {:.1} | {} |",
                k.name(),
                idle.clients,
                if idle.errors > 0 {
                    format!(
                        " ({} errors: {})",
                        idle.errors,
                        idle.first_error.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                },
                opt(w.as_ref().map(|r| r.tps), 0),
                pair(&base, &w, &|r| r.p99_ms, 2),
                ratio(&base, &w, &|r| r.p99_ms).replace("**", ""),
                each_p99(without),
                each_p99(runs),
                opt(pooled_without, 2),
                opt(pooled_with, 2),
                quotient(pooled_with, pooled_without),
                pair(&base, &w, &|r| r.p999_ms, 2),
                pair(&base, &w, &|r| r.cpu_us_per_txn(), 1),
                idle.after_query_kb as f64 / 1024.0,
                opt(
                    runs.iter()
                        .filter_map(|r| r.hwm_kb)
                        .max()
                        .map(|k| k as f64 / 1024.0),
                    1
                ),
            );
        }
        // p99 with idle, pooler against PgBouncer.
        for &n in &counts {
            let runs = |k: Kind| res.idle.get(&(n, k)).map(|x| x.0.as_slice());
            if let (Some(b), Some(q)) = (runs(Kind::PgBouncer), runs(Kind::Pooler)) {
                let pooled = bold_quotient(pooled_p99(q), pooled_p99(b));
                let _ = writeln!(
                    md,
                    "\nWith the idle clients at {n} active clients, p99 pooler / PgBouncer: {} \
                     (median runs), {pooled} (pooled).",
                    ratio(&median_run(b).cloned(), &median_run(q).cloned(), &|r| r
                        .p99_ms)
                );
            }
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(md, "\nProblems in the mission runs:\n");
        for p in &problems {
            let _ = writeln!(md, "- {p}");
        }
    }
}

/// One line per mission run.
fn mission_csv(res: &MissionResults) -> String {
    let mut csv = String::from(
        "clients,load,target,rep,ok,offered_tps,tps,p50_ms,p99_ms,p999_ms,p99_service_ms,max_ms,txns,window_s,all_served_once_s,cpu_us_per_txn,pgbench_cpu_us_per_txn,machine_busy_pct,peak_rss_kb,per_client_min,per_client_median,per_client_max,clients_without_txn,aborted,failed,error\n",
    );
    let mut line = |load: &str, k: Kind, rep: usize, r: &MissionRun| {
        let (lo, mid, hi) = r.per_client.unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{load},{},{rep},{},{},{:.1},{},{},{},{},{},{},{:.2},{},{},{},{},{},{lo},{mid},{hi},{},{},{},\"{}\"",
            r.clients,
            k.name(),
            r.ok,
            r.rate.map(|x| format!("{x:.0}")).unwrap_or_default(),
            r.tps,
            opt(r.p50_ms, 3),
            opt(r.p99_ms, 3),
            opt(r.p999_ms, 3),
            opt(r.p99_service_ms, 3),
            opt(r.max_ms, 3),
            r.txns,
            r.window_secs,
            opt(r.all_in_secs, 2),
            opt(r.cpu_us_per_txn(), 2),
            opt(r.pgbench_cpu_us_per_txn(), 2),
            opt(r.machine_busy_pct, 1),
            r.hwm_kb.map(|k| k.to_string()).unwrap_or_default(),
            r.zero_clients,
            r.aborted,
            r.failed,
            r.error.clone().unwrap_or_default().replace('"', "'")
        );
    };
    for ((_, k), runs) in &res.saturated {
        for (i, r) in runs.iter().enumerate() {
            line("saturated", *k, i, r);
        }
    }
    for ((_, k), runs) in &res.rate {
        for (i, r) in runs.iter().enumerate() {
            line("rate", *k, i, r);
        }
    }
    for ((_, k), (runs, _)) in &res.idle {
        for (i, r) in runs.iter().enumerate() {
            line("rate+idle", *k, i, r);
        }
    }
    csv
}

// ---------------------------------------------------------------------------------------------
// Report.

fn fmt_num(v: f64) -> String {
    let s = format!("{:.0}", v);
    let bytes = s.as_bytes();
    let mut out = String::new();
    for (i, c) in bytes.iter().enumerate() {
        if i > 0 && (bytes.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(*c as char);
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

/// `x / base` to two places; "—" without both figures or with a zero base.
fn quotient(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x / b),
        _ => "—".into(),
    }
}

/// [`quotient`], in bold when there is one.
fn bold_quotient(x: Option<f64>, base: Option<f64>) -> String {
    match quotient(x, base) {
        q if q == "—" => q,
        q => format!("**{q}**"),
    }
}

/// Median figures of one (row, target).
#[derive(Clone, Debug, Default)]
struct Cell {
    tps: Option<f64>,
    latency_ms: Option<f64>,
    cpu_us: Option<f64>,
    hwm_kb: Option<f64>,
    failures: usize,
    runs: usize,
    error: Option<String>,
}

fn cell(runs: &[Run]) -> Cell {
    let ok: Vec<&Run> = runs.iter().filter(|r| r.ok).collect();
    Cell {
        tps: median(ok.iter().map(|r| r.tps).collect()),
        latency_ms: median(ok.iter().map(|r| r.latency_ms).collect()),
        cpu_us: median(ok.iter().filter_map(|r| r.cpu_us_per_txn()).collect()),
        hwm_kb: median(
            ok.iter()
                .filter_map(|r| r.hwm_kb.map(|k| k as f64))
                .collect(),
        ),
        failures: runs.len() - ok.len(),
        runs: runs.len(),
        error: runs.iter().find_map(|r| r.error.clone()),
    }
}

struct Notes(Vec<String>);

impl Notes {
    fn tps(&mut self, c: Option<&Cell>, who: &str, row: &Row) -> String {
        let Some(c) = c else { return "—".into() };
        match (c.tps, c.failures) {
            (Some(t), 0) => fmt_num(t),
            (t, f) => {
                self.0.push(format!(
                    "{} on {}: {f}/{} runs failed: {}",
                    row.id,
                    who,
                    c.runs,
                    c.error.as_deref().unwrap_or("?")
                ));
                let n = self.0.len();
                match t {
                    Some(t) => format!("{} ({f}/{} failed [{n}])", fmt_num(t), c.runs),
                    None => format!("fails [{n}]"),
                }
            }
        }
    }
}

struct Machine {
    nproc: String,
    cpu: String,
    kernel: String,
    postgres: String,
    pgbouncer: String,
    commit: String,
}

fn machine(bindir: &Path, pgbouncer: Option<&Path>) -> Machine {
    let out = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        cpu: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_string(),
        kernel: out(Command::new("uname").arg("-r")),
        postgres: out(Command::new(bindir.join("postgres")).arg("--version")),
        pgbouncer: pgbouncer
            .map(|b| out(Command::new(b).arg("--version")))
            .unwrap_or_else(|| "not installed".into()),
        commit: out(Command::new("git").args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])),
    }
}

// ---------------------------------------------------------------------------------------------
// Chart.

fn find_font() -> Option<&'static [u8]> {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ];
    let bytes = std::env::var("CHART_FONT")
        .ok()
        .into_iter()
        .chain(candidates.iter().map(|s| s.to_string()))
        .find_map(|p| fs::read(p).ok())?;
    Some(Box::leak(bytes.into_boxed_slice()))
}

type Results = BTreeMap<(&'static str, Kind), Cell>;

fn chart(path: &Path, rows: &[&Row], cells: &Results, title: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let font = find_font()
        .ok_or("no TrueType font found (apt-get install fonts-dejavu-core, or set CHART_FONT)")?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "bad font".to_string())?;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(560);
    let n = rows.len();
    let colors = |k: Kind| match k {
        Kind::Direct => RGBColor(160, 160, 160),
        Kind::PgBouncer => RGBColor(66, 133, 244),
        Kind::Pooler => RGBColor(230, 110, 20),
        Kind::PoolerB => RGBColor(120, 60, 160),
    };
    let label = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            rows[i as usize].short.to_string()
        } else {
            String::new()
        }
    };
    let int = |y: &f64| format!("{y:.0}");
    let small = ("sans-serif", 13).into_font();

    // One panel of grouped bars: `value` per (row, kind), failures marked.
    let panel = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                 caption: &str,
                 y_desc: &str,
                 kinds: &[Kind],
                 value: &dyn Fn(&Cell) -> Option<f64>,
                 ratios: bool|
     -> Result<(), String> {
        let max = cells
            .values()
            .filter_map(value)
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max)
            * 1.3;
        let mut c = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..max)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&label)
            .y_label_formatter(&int)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        let w = 0.8 / kinds.len() as f64;
        for (s, kind) in kinds.iter().enumerate() {
            let color = colors(*kind);
            let x0 = |i: usize| i as f64 - 0.4 + s as f64 * w;
            let bars: Vec<_> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let v = value(cells.get(&(r.id, *kind))?)?;
                    Some(Rectangle::new(
                        [(x0(i), 0.0), (x0(i) + w * 0.92, v)],
                        color.filled(),
                    ))
                })
                .collect();
            c.draw_series(bars)
                .map_err(|x| e(&x))?
                .label(kind.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            // A run that failed has no bar: say so where it would be.
            let fails: Vec<_> = rows
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    cells
                        .get(&(r.id, *kind))
                        .is_some_and(|c| c.failures > 0 && value(c).is_none())
                })
                .map(|(i, _)| Text::new("fail", (x0(i), max * 0.03), small.clone()))
                .collect();
            c.draw_series(fails).map_err(|x| e(&x))?;
        }
        if ratios {
            // pooler / PgBouncer above the pooler's bar.
            let s = kinds.iter().position(|k| *k == Kind::Pooler).unwrap_or(0);
            let texts: Vec<_> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let p = value(cells.get(&(r.id, Kind::Pooler))?)?;
                    let b = value(cells.get(&(r.id, Kind::PgBouncer))?)?;
                    Some(Text::new(
                        format!("{:.2}x", p / b),
                        (i as f64 - 0.4 + s as f64 * w - 0.05, p + max * 0.04),
                        small.clone(),
                    ))
                })
                .collect();
            c.draw_series(texts).map_err(|x| e(&x))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    };
    panel(
        &top,
        "median tps per row (higher is better; label: pooler / PgBouncer)",
        "tps",
        &[Kind::Direct, Kind::PgBouncer, Kind::Pooler],
        &|c| c.tps,
        true,
    )?;
    panel(
        &bottom,
        "CPU µs per transaction of the pooler / PgBouncer process (lower is better; label: pooler / PgBouncer)",
        "CPU µs / txn",
        &[Kind::PgBouncer, Kind::Pooler],
        &|c| c.cpu_us,
        true,
    )?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main.

fn main() {
    // `cargo test --benches` runs bench targets too: this one only runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load bench: run it with `cargo bench --bench load` (skipped)");
        return;
    }
    install_signal_handler();
    let outcome = std::panic::catch_unwind(real_main);
    stop_all();
    if outcome.is_err() {
        eprintln!("load bench failed; every process it started has been stopped");
        std::process::exit(1);
    }
}

fn real_main() {
    let mut opts = Opts::from_env();
    let bindir = pg_bindir();
    let nofile = raise_nofile();
    let pgbouncer_bin = if opts.pgbouncer {
        which("pgbouncer")
    } else {
        None
    };
    let strace = (opts.strace_secs > 0).then(|| which("strace")).flatten();
    let taskset = if opts.taskset { which("taskset") } else { None };
    // WORKERS_B alone compares this build with itself at another `workers`.
    let pooler_b = std::env::var("POOLER_BIN_B")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var("WORKERS_B")
                .is_ok()
                .then(|| PathBuf::from(env!("CARGO_BIN_EXE_pooler")))
        });
    if is_root()
        && Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| !o.status.success())
    {
        run(
            Command::new("useradd").args([
                "--system",
                "--create-home",
                "--shell",
                "/bin/bash",
                "postgres",
            ]),
            "useradd postgres",
        );
    }

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let results_dir = std::env::var("RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("bench-load").join(stamp.to_string())
        });
    let raw = results_dir.join("raw");
    fs::create_dir_all(&raw).expect("results dir");
    let state = std::env::temp_dir().join(format!("pooler-bench-{}", std::process::id()));
    fs::create_dir_all(&state).expect("state dir");
    *STATE_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
    chown_postgres(&state);

    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|r| {
            opts.rows
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == r.id))
        })
        .collect();
    // The mission rows: (clients, with the idle clients alongside). With ROWS, `mission_cN`
    // selects N clients and `mission_idle_cN` the same with the idle run.
    let mission_plan: Vec<(u32, bool)> = if !opts.mission.on {
        Vec::new()
    } else if let Some(ids) = &opts.rows {
        let mut plan: BTreeMap<u32, bool> = BTreeMap::new();
        for id in ids {
            if let Some(n) = id
                .strip_prefix("mission_idle_c")
                .and_then(|n| n.parse().ok())
            {
                plan.insert(n, true);
            } else if let Some(n) = id.strip_prefix("mission_c").and_then(|n| n.parse().ok()) {
                plan.entry(n).or_insert(false);
            }
        }
        plan.into_iter().collect()
    } else {
        let mut counts = opts.mission.clients.clone();
        counts.sort_unstable();
        counts.dedup();
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i == 0))
            .collect()
    };
    if !mission_plan.is_empty() {
        // Every mission target's pool full (pool + reserve each: PgBouncer, the pooler and
        // pooler-b when there is one), superuser slots and a margin; the main rows' targets are
        // stopped before the mission rows start.
        let targets = 2 + u32::from(pooler_b.is_some());
        let need = targets * (MISSION_POOL.size + MISSION_POOL.reserve) + 60;
        if opts.pg_max_connections < need {
            println!(
                "(PG_MAX_CONNECTIONS {} is too small for the mission rows: using {need})",
                opts.pg_max_connections
            );
            opts.pg_max_connections = need;
        }
    }
    let m = machine(&bindir, pgbouncer_bin.as_deref());
    let mut header = String::new();
    let _ = writeln!(header, "# pooler load benchmark\n");
    let _ = writeln!(
        header,
        "machine: {} CPUs ({}), kernel {}; {}; PgBouncer: {}; pooler commit {}",
        m.nproc, m.cpu, m.kernel, m.postgres, m.pgbouncer, m.commit
    );
    let _ = writeln!(header, "pooler binary: {}", pooler_bin().display());
    if let Some(b) = &pooler_b {
        let _ = writeln!(header, "pooler-b binary: {}", b.display());
    }
    let _ = writeln!(
        header,
        "settings: DURATION={}s REPEAT={} JOBS={} SCALE={} pool 20 (+5 reserve), transaction mode, md5; \
         Postgres max_connections={}; fd limit {nofile}",
        opts.duration, opts.repeat, opts.jobs, opts.scale, opts.pg_max_connections
    );
    if !mission_plan.is_empty() {
        let mo = &opts.mission;
        let _ = writeln!(
            header,
            "mission rows: clients {} (idle run at {}: {} idle clients), pool {} (+{} reserve after {} s), \
             MISSION_DURATION={}s after MISSION_WARMUP={}s, MISSION_REPEAT={}, offered rate {} % of PgBouncer's \
             saturated tps, at most {} clients per pgbench",
            mission_plan
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            mission_plan
                .iter()
                .filter(|(_, i)| *i)
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            mo.idle,
            MISSION_POOL.size,
            MISSION_POOL.reserve,
            MISSION_POOL.reserve_timeout,
            mo.duration,
            mo.warmup,
            mo.repeat,
            mo.rate_pct,
            mo.per_pgbench
        );
    }
    let _ = writeln!(
        header,
        "\nNOTE: on this shared 2-core box absolute tps swing by up to 45 % between runs minutes apart. \
         Trust CPU µs per transaction, system calls per transaction and the ratios measured in the \
         same run (targets run back to back per row, order rotated per repetition), not absolute tps."
    );
    print!("{header}");
    if pgbouncer_bin.is_none() {
        println!(
            "(pgbouncer not installed or PGBOUNCER=0: apt-get install -y pgbouncer to compare)"
        );
    }
    if strace.is_none() && opts.strace_secs > 0 {
        println!(
            "(strace not installed: apt-get install -y strace for system calls per transaction)"
        );
    }
    let kinds: Vec<Kind> = [
        opts.direct.then_some(Kind::Direct),
        pgbouncer_bin.as_ref().map(|_| Kind::PgBouncer),
        Some(Kind::Pooler),
        pooler_b.as_ref().map(|_| Kind::PoolerB),
    ]
    .into_iter()
    .flatten()
    .collect();
    let est = rows.len() as u64
        * kinds.len() as u64
        * opts.repeat as u64
        * (opts.duration + opts.settle + 1);
    println!(
        "{} rows x {} targets x {} repetitions: about {} min of pgbench, plus setup, strace, taskset and idle runs",
        rows.len(),
        kinds.len(),
        opts.repeat,
        est.div_ceil(60)
    );
    if !mission_plan.is_empty() {
        // Per client count: saturated and fixed-rate runs on two targets, the idle runs; each
        // run is its warm-up, its duration, the login storm and the settle time.
        let mo = &opts.mission;
        let per_run = mo.warmup + mo.duration + 10 + opts.settle.max(2);
        let runs: u64 = mission_plan
            .iter()
            .map(|(_, idle)| {
                let idle_runs = if *idle && mo.idle > 0 { 2 } else { 0 };
                (4 + idle_runs) * mo.repeat as u64
            })
            .sum();
        println!(
            "mission rows: {} runs, about {} min (plus {} s per idle run to connect the idle clients)",
            runs,
            (runs * per_run).div_ceil(60),
            30
        );
    }
    println!("results: {}\n", results_dir.display());

    let pg = start_postgres(&opts, &bindir, &state);
    let mut ctx = Ctx {
        opts,
        bindir,
        state: state.clone(),
        raw,
        runs: 0,
    };
    let mut targets = vec![];
    for kind in &kinds {
        targets.push(match kind {
            Kind::Direct => Target {
                kind: Kind::Direct,
                port: pg.port,
                pid: None,
            },
            Kind::PgBouncer => start_pgbouncer(
                pgbouncer_bin.as_deref().expect("pgbouncer"),
                &state,
                "pgbouncer",
                pg.port,
                MAIN_POOL,
            ),
            Kind::Pooler => start_pooler(&state, "pooler", pg.port, MAIN_POOL),
            Kind::PoolerB => start_pooler_bin(
                pooler_b.as_deref().expect("pooler-b"),
                Kind::PoolerB,
                &state,
                "pooler-b",
                pg.port,
                MAIN_POOL,
            ),
        });
    }
    for t in &targets {
        println!(
            "{:<10} 127.0.0.1:{} pid {}",
            t.kind.name(),
            t.port,
            t.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| format!("(postgres {})", pg.pid))
        );
    }

    // The matrix.
    let duration = ctx.opts.duration;
    let mut csv = String::from(
        "row,clients,target,rep,ok,tps,latency_ms,txns,failed,cpu_us_per_txn,peak_rss_kb,error\n",
    );
    let mut all: BTreeMap<(&'static str, Kind), Vec<Run>> = BTreeMap::new();
    for row in &rows {
        println!("\n{} ({} clients)", row.id, row.clients);
        for rep in 0..ctx.opts.repeat {
            for i in 0..targets.len() {
                let t = targets[(i + rep) % targets.len()];
                let r = pgbench(&mut ctx, &t, row, duration, &format!("r{rep}"));
                println!(
                    "  rep {rep} {:<10} {:>10} tps  lat {:>7.3} ms  cpu {:>7} µs/txn{}",
                    t.kind.name(),
                    fmt_num(r.tps),
                    r.latency_ms,
                    opt(r.cpu_us_per_txn(), 1),
                    r.error
                        .as_ref()
                        .map(|e| format!("  FAILED: {e}"))
                        .unwrap_or_default()
                );
                let _ = writeln!(
                    csv,
                    "{},{},{},{rep},{},{:.1},{:.3},{},{},{},{},\"{}\"",
                    row.id,
                    row.clients,
                    t.kind.name(),
                    r.ok,
                    r.tps,
                    r.latency_ms,
                    r.txns,
                    r.failed,
                    opt(r.cpu_us_per_txn(), 2),
                    r.hwm_kb.map(|k| k.to_string()).unwrap_or_default(),
                    r.error.clone().unwrap_or_default().replace('"', "'")
                );
                all.entry((row.id, t.kind)).or_default().push(r);
                settle(ctx.opts.settle);
            }
        }
    }
    let cells: Results = all.iter().map(|(k, v)| (*k, cell(v))).collect();

    // System calls per transaction.
    let mut syscalls: BTreeMap<(&'static str, Kind), Syscalls> = BTreeMap::new();
    if let Some(strace) = &strace {
        println!("\nstrace -c -f ({} s runs)", ctx.opts.strace_secs);
        for row in &rows {
            for t in targets.iter().filter(|t| t.pid.is_some()) {
                if let Some(s) = strace_run(&mut ctx, strace, t, row) {
                    println!(
                        "  {:<22} {:<10} {:>6.1} syscalls/txn",
                        row.id,
                        t.kind.name(),
                        s.per_txn().unwrap_or(0.0)
                    );
                    syscalls.insert((row.id, t.kind), s);
                }
                settle(ctx.opts.settle);
            }
        }
    }

    // The pooler on one core against two.
    let mut pinning: Vec<(&'static str, &'static str, Vec<Run>)> = Vec::new();
    let pooler_target = *targets
        .iter()
        .find(|t| t.kind == Kind::Pooler)
        .expect("pooler");
    if let (Some(taskset), Some(pid), false) = (&taskset, pooler_target.pid, rows.is_empty()) {
        let all_cpus = format!(
            "0-{}",
            m.nproc.parse::<usize>().unwrap_or(2).saturating_sub(1)
        );
        println!("\ntaskset: the pooler on one core vs all ({all_cpus})");
        for row in ROWS
            .iter()
            .filter(|r| r.id == "select_simple_c256" || r.id == "select1_c256")
        {
            let mut one = Vec::new();
            let mut both = Vec::new();
            for rep in 0..ctx.opts.repeat {
                for (cpus, runs) in [("0", &mut one), (all_cpus.as_str(), &mut both)] {
                    run(
                        Command::new(taskset).args(["-a", "-p", "-c", cpus, &pid.to_string()]),
                        "taskset",
                    );
                    let r = pgbench(
                        &mut ctx,
                        &pooler_target,
                        row,
                        duration,
                        &format!("cpus{cpus}-r{rep}"),
                    );
                    println!(
                        "  {:<20} cpus {:<4} {:>10} tps  cpu {:>6} µs/txn",
                        row.id,
                        cpus,
                        fmt_num(r.tps),
                        opt(r.cpu_us_per_txn(), 1)
                    );
                    runs.push(r);
                    settle(ctx.opts.settle);
                }
            }
            pinning.push((row.id, "1 core", one));
            pinning.push((row.id, "2 cores", both));
        }
        run(
            Command::new(taskset).args(["-a", "-p", "-c", &all_cpus, &pid.to_string()]),
            "taskset",
        );
    }

    // Stop the measured poolers: the idle test starts fresh ones, the allocation count runs
    // the pooler in this process.
    for t in &targets {
        if let Some(pid) = t.pid {
            stop(pid);
        }
    }

    let mut idle_heap: Option<IdleResult> = None;
    // ROWS naming only mission rows runs only the mission rows.
    let only_mission = rows.is_empty() && !mission_plan.is_empty();
    let allocs = if ctx.opts.allocs && !only_mission {
        println!("\nheap allocations per transaction (pooler in this process, counting allocator)");
        let idle_n = ctx
            .opts
            .idle_clients
            .min(nofile.saturating_sub(500) as usize / 2);
        let (a, live) = inprocess_allocs(&mut ctx, pg.port, idle_n);
        if let Some(r) = &live {
            println!(
                "  {} idle clients: live heap of the pooler's threads {} -> {} kB after login ({:.0} B/client), {} kB after one query each ({:.0} B/client)",
                r.clients,
                r.base_kb,
                r.login_kb,
                r.per_client(r.login_kb),
                r.after_query_kb,
                r.per_client(r.after_query_kb)
            );
            idle_heap = Some(r.clone());
        }
        for x in &a {
            println!(
                "  {:<32} {:>8.2} allocs/txn {:>9.0} bytes/txn",
                x.what, x.allocs_per_txn, x.bytes_per_txn
            );
        }
        a
    } else {
        Vec::new()
    };

    let mut idle: Vec<(Kind, IdleResult)> = Vec::new();
    if ctx.opts.idle_clients > 0 && !only_mission {
        let n = ctx
            .opts
            .idle_clients
            .min(nofile.saturating_sub(200) as usize);
        println!("\n{n} idle clients (logged in, outside a transaction)");
        let mut fresh = vec![start_pooler(&state, "pooler-idle", pg.port, MAIN_POOL)];
        if let Some(bin) = &pgbouncer_bin {
            fresh.push(start_pgbouncer(
                bin,
                &state,
                "pgbouncer-idle",
                pg.port,
                MAIN_POOL,
            ));
        }
        for t in &fresh {
            std::thread::sleep(Duration::from_millis(500));
            let r = idle_clients(t.port, n, &rss_kb(t.pid.expect("pid")));
            println!(
                "  {:<10} {} clients ({} errors{}): RSS {} -> {} kB after login ({:.0} B/client), {} kB after one query each ({:.0} B/client)",
                t.kind.name(),
                r.clients,
                r.errors,
                r.first_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                r.base_kb,
                r.login_kb,
                r.per_client(r.login_kb),
                r.after_query_kb,
                r.per_client(r.after_query_kb)
            );
            idle.push((t.kind, r));
            stop(t.pid.expect("pid"));
            settle(ctx.opts.settle);
        }
    }

    let mission = (!mission_plan.is_empty()).then(|| {
        run_mission(
            &mut ctx,
            &mission_plan,
            pgbouncer_bin.as_deref(),
            pooler_b.as_deref(),
            pg.port,
        )
    });

    // The report.
    let mut md = header.clone();
    let mut notes = Notes(Vec::new());
    let has = |k: Kind| kinds.contains(&k);
    let _ = writeln!(
        md,
        "\n## Median of {} runs per row and target\n",
        ctx.opts.repeat
    );
    let _ = writeln!(
        md,
        "| row | clients | direct tps | PgBouncer tps | pooler tps | pooler / PgBouncer | latency ms direct / PgB / pooler | CPU µs/txn PgB / pooler | syscalls/txn PgB / pooler | peak RSS MiB PgB / pooler |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let get = |k: Kind| cells.get(&(row.id, k));
        let direct = if has(Kind::Direct) {
            notes.tps(get(Kind::Direct), "direct", row)
        } else {
            "—".into()
        };
        let bouncer = if has(Kind::PgBouncer) {
            notes.tps(get(Kind::PgBouncer), "PgBouncer", row)
        } else {
            "—".into()
        };
        let pooler = notes.tps(get(Kind::Pooler), "pooler", row);
        let ratio = bold_quotient(
            get(Kind::Pooler).and_then(|c| c.tps),
            get(Kind::PgBouncer).and_then(|c| c.tps),
        );
        let f =
            |k: Kind, g: &dyn Fn(&Cell) -> Option<f64>, prec: usize| opt(get(k).and_then(g), prec);
        let sc = |k: Kind| opt(syscalls.get(&(row.id, k)).and_then(Syscalls::per_txn), 1);
        let _ = writeln!(
            md,
            "| {} | {} | {direct} | {bouncer} | {pooler} | {ratio} | {} / {} / {} | {} / {} | {} / {} | {} / {} |",
            row.what,
            row.clients,
            f(Kind::Direct, &|c| c.latency_ms, 2),
            f(Kind::PgBouncer, &|c| c.latency_ms, 2),
            f(Kind::Pooler, &|c| c.latency_ms, 2),
            f(Kind::PgBouncer, &|c| c.cpu_us, 1),
            f(Kind::Pooler, &|c| c.cpu_us, 1),
            sc(Kind::PgBouncer),
            sc(Kind::Pooler),
            f(Kind::PgBouncer, &|c| c.hwm_kb.map(|k| k / 1024.0), 1),
            f(Kind::Pooler, &|c| c.hwm_kb.map(|k| k / 1024.0), 1),
        );
    }
    if !notes.0.is_empty() {
        md.push('\n');
        for (i, n) in notes.0.iter().enumerate() {
            let _ = writeln!(md, "[{}] {n}  ", i + 1);
        }
    }

    if has(Kind::PoolerB) {
        let _ = writeln!(
            md,
            "\n## pooler-b ({}) against pooler (this build), same run\n",
            pooler_b
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        let _ = writeln!(
            md,
            "| row | clients | pooler tps | pooler-b tps | b / pooler | b / PgBouncer | CPU µs/txn pooler / b | syscalls/txn pooler / b |\n|---|---|---|---|---|---|---|---|"
        );
        for row in &rows {
            let get = |k: Kind| cells.get(&(row.id, k));
            let tps = |k: Kind| get(k).and_then(|c| c.tps);
            let sc = |k: Kind| opt(syscalls.get(&(row.id, k)).and_then(Syscalls::per_txn), 1);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | **{}** | {} | {} / {} | {} / {} |",
                row.what,
                row.clients,
                tps(Kind::Pooler).map(fmt_num).unwrap_or_else(|| "—".into()),
                tps(Kind::PoolerB)
                    .map(fmt_num)
                    .unwrap_or_else(|| "—".into()),
                quotient(tps(Kind::PoolerB), tps(Kind::Pooler)),
                quotient(tps(Kind::PoolerB), tps(Kind::PgBouncer)),
                opt(get(Kind::Pooler).and_then(|c| c.cpu_us), 1),
                opt(get(Kind::PoolerB).and_then(|c| c.cpu_us), 1),
                sc(Kind::Pooler),
                sc(Kind::PoolerB),
            );
        }
    }

    if !syscalls.is_empty() {
        let _ = writeln!(
            md,
            "\n## System calls per transaction, by call (strace -c -f, {} s runs)\n",
            ctx.opts.strace_secs
        );
        for row in rows.iter().filter(|r| r.id != "select_simple_c1000") {
            let mut names: Vec<String> = Vec::new();
            for k in [Kind::PgBouncer, Kind::Pooler, Kind::PoolerB] {
                if let Some(s) = syscalls.get(&(row.id, k)) {
                    let mut v: Vec<(&String, &u64)> = s.by_call.iter().collect();
                    v.sort_by(|a, b| b.1.cmp(a.1));
                    for (n, _) in v.into_iter().take(8) {
                        if !names.contains(n) {
                            names.push(n.clone());
                        }
                    }
                }
            }
            if names.is_empty() {
                continue;
            }
            let _ = writeln!(md, "{} at {} clients:\n", row.what, row.clients);
            let b = has(Kind::PoolerB);
            let _ = writeln!(
                md,
                "| call | PgBouncer / txn | pooler / txn |{}\n|---|---|---|{}",
                if b { " pooler-b / txn |" } else { "" },
                if b { "---|" } else { "" }
            );
            for n in &names {
                let per = |k: Kind| {
                    opt(
                        syscalls
                            .get(&(row.id, k))
                            .map(|s| *s.by_call.get(n).unwrap_or(&0) as f64 / s.txns as f64),
                        2,
                    )
                };
                let _ = writeln!(
                    md,
                    "| {n} | {} | {} |{}",
                    per(Kind::PgBouncer),
                    per(Kind::Pooler),
                    if b {
                        format!(" {} |", per(Kind::PoolerB))
                    } else {
                        String::new()
                    }
                );
            }
            let tot = |k: Kind| opt(syscalls.get(&(row.id, k)).and_then(Syscalls::per_txn), 2);
            let _ = writeln!(
                md,
                "| **total** | {} | {} |{}\n",
                tot(Kind::PgBouncer),
                tot(Kind::Pooler),
                if b {
                    format!(" {} |", tot(Kind::PoolerB))
                } else {
                    String::new()
                }
            );
        }
    }

    if !pinning.is_empty() {
        let _ = writeln!(
            md,
            "\n## The pooler on one core against two (taskset, same load)\n"
        );
        let _ = writeln!(
            md,
            "| row | cores | median tps | CPU µs/txn | 2 cores / 1 core |\n|---|---|---|---|---|"
        );
        for pair in pinning.chunks(2) {
            let one = cell(&pair[0].2);
            let two = cell(&pair[1].2);
            let ratio = quotient(two.tps, one.tps);
            for (label, c) in [(pair[0].1, &one), (pair[1].1, &two)] {
                let _ = writeln!(
                    md,
                    "| {} | {label} | {} | {} | {} |",
                    pair[0].0,
                    c.tps.map(fmt_num).unwrap_or_else(|| "—".into()),
                    opt(c.cpu_us, 1),
                    if label == "2 cores" {
                        ratio.clone()
                    } else {
                        String::new()
                    }
                );
            }
        }
    }

    if !allocs.is_empty() {
        let _ = writeln!(
            md,
            "\n## Heap allocations per transaction in the pooler (in-process, counting allocator)\n\n\
             The pooler runs in the bench process as the binary runs it (`workers = 1`: one \
             thread); only its threads' allocations count. Every row but `-C` is the steady \
             state: a 2 s run's counts subtracted from a 5 s run's, so the clients' logins \
             cancel out (transactions: the difference). `-C` is one login per transaction.\n"
        );
        let _ = writeln!(
            md,
            "| load | transactions | allocations / txn | bytes allocated / txn |\n|---|---|---|---|"
        );
        for a in &allocs {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.0} |",
                a.what, a.txns, a.allocs_per_txn, a.bytes_per_txn
            );
        }
        let _ = writeln!(
            md,
            "\n(tps in this mode, pooler sharing the bench process: {})",
            allocs
                .iter()
                .map(|a| fmt_num(a.tps))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }

    if !idle.is_empty() {
        let _ = writeln!(md, "\n## Idle clients: RSS of the pooler process\n");
        let _ = writeln!(
            md,
            "| target | clients | RSS before | RSS after login | per client | RSS after one query each | per client |\n|---|---|---|---|---|---|---|"
        );
        for (k, r) in &idle {
            let _ = writeln!(
                md,
                "| {} | {}{} | {:.1} MiB | {:.1} MiB | {:.0} B | {:.1} MiB | {:.0} B |",
                k.name(),
                r.clients,
                if r.errors > 0 {
                    format!(
                        " ({} errors: {})",
                        r.errors,
                        r.first_error.clone().unwrap_or_default()
                    )
                } else {
                    String::new()
                },
                r.base_kb as f64 / 1024.0,
                r.login_kb as f64 / 1024.0,
                r.per_client(r.login_kb),
                r.after_query_kb as f64 / 1024.0,
                r.per_client(r.after_query_kb)
            );
        }
        if let Some(r) = &idle_heap {
            let _ = writeln!(
                md,
                "\nLive heap held by the pooler's own threads (pooler run in the bench process, counting \
                 allocator), {} idle clients: {:.0} B per client after login, {:.0} B after one query each. \
                 The live heap counts reserved buffer capacity that was never written (not resident, so not \
                 in RSS); RSS beyond the live heap is the allocator's overhead and fragmentation.",
                r.clients,
                r.per_client(r.login_kb),
                r.per_client(r.after_query_kb)
            );
        }
    }

    if let Some(res) = &mission {
        mission_report(&mut md, res, &ctx.opts.mission);
        fs::write(results_dir.join("mission.csv"), mission_csv(res)).expect("mission.csv");
    }

    println!("\n{md}");
    fs::write(results_dir.join("results.md"), &md).expect("results.md");
    fs::write(results_dir.join("results.csv"), &csv).expect("results.csv");
    let png = results_dir.join("chart.png");
    let title = format!(
        "pooler vs PgBouncer vs direct Postgres — {} CPUs, pool 20, md5, {} x {} s (commit {})",
        m.nproc, ctx.opts.repeat, duration, m.commit
    );
    match if rows.is_empty() {
        Err("no main rows".to_string())
    } else {
        chart(&png, &rows, &cells, &title)
    } {
        Ok(()) => {
            println!("chart: {}", png.display());
            if ctx.opts.update_docs {
                let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
                let _ = fs::copy(&png, docs.join("benchmarks.png"));
                let _ = fs::copy(
                    results_dir.join("results.md"),
                    docs.join("benchmarks-latest.md"),
                );
                println!("copied to docs/benchmarks.png and docs/benchmarks-latest.md");
            }
        }
        Err(e) => println!("chart skipped: {e}"),
    }
    println!("results: {}", results_dir.display());
    stop(pg.pid);
}
