//! Several pooler processes as one (issue 17): cancel requests that reach the wrong pooler are
//! forwarded to the one that owns the key (`peer_id`, `[peers]`).
//!
//! Every pooler here is the binary, started with a config written to a temp directory, so the
//! peers are separate processes as in production. Every wait is bounded; nothing asserts on
//! how long something took.

mod common;
mod wire;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wire::HANG;

/// A pooler process, its stderr collected line by line.
pub struct Proc {
    child: Child,
    pub port: u16,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts the binary with `[pooler]` keys `extra` and whole sections `sections` in front
    /// of `db`, listening on `port`; returns once `/healthz` answers.
    pub async fn start(pg: &PgServer, db: &str, port: u16, extra: &str, sections: &str) -> Proc {
        let metrics_port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "pooler-peers-{}-{port}-{metrics_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("userlist.txt"), Pooler::default_userlist()).unwrap();
        std::fs::write(
            dir.join("pooler.toml"),
            format!(
                "[pooler]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\n\
                 auth_type = \"trust\"\nauth_file = \"userlist.txt\"\n\
                 metrics_port = {metrics_port}\npool_mode = \"transaction\"\n\
                 log_connections = false\nlog_disconnections = false\n{extra}\n\
                 [databases.{db}]\nhost = \"127.0.0.1\"\nport = {}\n{sections}\n",
                pg.port
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pooler"))
            .arg("--config")
            .arg(dir.join("pooler.toml"))
            .env_remove("POOLER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pooler");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let p = Proc {
            child,
            port,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            dir,
            lines,
            reader: Some(reader),
        };
        let up = eventually(HANG, || async {
            TcpStream::connect(p.metrics).await.is_ok()
        })
        .await;
        assert!(up, "pooler did not start: {}", p.log());
        p
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0, "kill");
    }

    /// Waits, at most `limit`, for the process to exit; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pooler did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The same `[peers]` list for every pooler of the group (each ignores its own entry).
fn peers_section(ports: &[u16], pool_size: usize) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "[peers.{}]\nhost = \"127.0.0.1\"\nport = {port}\npool_size = {pool_size}\n",
                i + 1
            )
        })
        .collect()
}

/// Two poolers, ids 1 (A) and 2 (B), each the other's peer.
async fn pair(pg: &PgServer, db: &str, extra: &str, peer_pool: usize) -> (Proc, Proc) {
    let ports = [free_port(), free_port()];
    let peers = peers_section(&ports, peer_pool);
    let a = Proc::start(pg, db, ports[0], &format!("peer_id = 1\n{extra}"), &peers).await;
    let b = Proc::start(pg, db, ports[1], &format!("peer_id = 2\n{extra}"), &peers).await;
    (a, b)
}

/// A raw client logged in (trust) with the cancel key the pooler gave it.
struct Raw {
    s: TcpStream,
    pid: i32,
    secret: i32,
}

async fn raw_login(addr: SocketAddr, db: &str) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&wire::startup_packet(&[
        ("user", APP_USER),
        ("database", db),
    ]))
    .await
    .unwrap();
    let msgs = wire::read_messages(&mut s, |m| m.iter().any(|(t, _)| *t == b'Z')).await;
    if let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b'E') {
        panic!("login refused: {:?}", pooler::wire::error_fields(body));
    }
    let (_, key) = msgs
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    Raw {
        s,
        pid: i32::from_be_bytes(key[..4].try_into().unwrap()),
        secret: i32::from_be_bytes(key[4..8].try_into().unwrap()),
    }
}

/// Sends a CancelRequest to `addr` and waits until the pooler closes the connection, which it
/// does once the cancel has gone wherever it goes (Postgres, a peer) or was dropped.
async fn send_cancel(addr: SocketAddr, pid: i32, secret: i32) {
    let mut s = TcpStream::connect(addr).await.expect("connect for cancel");
    let mut msg = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut msg);
    s.write_all(&msg).await.unwrap();
    let end = wire::read_to_close(&mut s, HANG).await;
    assert!(end.closed, "cancel connection not closed");
    assert!(
        end.bytes.is_empty(),
        "a cancel gets no answer: {:?}",
        end.bytes
    );
}

async fn sleeping_backends(pg: &PgServer, db: &str) -> i64 {
    pg.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
             AND query LIKE 'SELECT pg_sleep%'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// The SQLSTATEs the query on `raw` ended with (read up to ReadyForQuery).
async fn outcome(raw: &mut Raw) -> Vec<String> {
    wire::error_codes(
        &wire::read_until(&mut raw.s, b'Z')
            .await
            .into_iter()
            .flat_map(|(t, body)| wire::msg(t, &body))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_peer_cancels_the_query_and_bad_keys_nothing() {
    let pg = PgServer::shared();
    let db = pg.create_db("peers_cancel").await;
    let (a, b) = pair(pg, &db, "default_pool_size = 4", 4).await;

    let mut victim = raw_login(a.addr(), &db).await;
    assert_eq!(
        pooler::peers::peer_of(victim.secret),
        1,
        "A's id in its key"
    );
    victim
        .s
        .write_all(&wire::query("SELECT pg_sleep(30)"))
        .await
        .unwrap();
    assert!(eventually(HANG, || async { sleeping_backends(pg, &db).await == 1 }).await);

    // A stale key: a client of A that has left.
    let gone = raw_login(a.addr(), &db).await;
    let stale = (gone.pid, gone.secret);
    drop(gone);
    let (pid, secret) = (victim.pid, victim.secret);
    for (what, pid, secret) in [
        // Forged: A's id, the victim's pid, another secret. B forwards it; A refuses it.
        ("forged", pid, secret ^ 0x100),
        // The real key, already forwarded once: B must not forward it again.
        ("forwarded once", pid, secret & !1),
        // A peer id no one has.
        ("unknown peer", pid, (3 << 17) | (secret & 0x1_ffff)),
        ("stale", stale.0, stale.1),
    ] {
        send_cancel(b.addr(), pid, secret).await;
        // Also straight to A: none of these is a key A gave a live client.
        if what != "forwarded once" {
            send_cancel(a.addr(), pid, secret).await;
        }
    }
    // A cancel that did reach Postgres would end the query within moments.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sleeping_backends(pg, &db).await,
        1,
        "a bad key cancelled the query\nA: {}\nB: {}",
        a.log(),
        b.log()
    );

    // The right key, sent to the wrong pooler: B passes it to A, the query ends with 57014.
    send_cancel(b.addr(), pid, secret).await;
    let codes = tokio::time::timeout(HANG, outcome(&mut victim))
        .await
        .expect("query ended");
    assert_eq!(codes, vec!["57014".to_string()], "B: {}", b.log());
    // B passed on the three keys that name A (forged, stale, real) and no other.
    let body = b.scrape().await;
    let peer = [("peer_id", "1")];
    assert_eq!(metric(&body, FORWARDED, &peer), Some(3.0), "{body}");
    assert_eq!(metric(&body, FAILED, &peer), Some(0.0), "{body}");
}

const FORWARDED: &str = "pooler_peer_cancels_forwarded_total";
const FAILED: &str = "pooler_peer_cancel_forward_failures_total";

/// SHOW PEERS lists the other peers with PgBouncer's columns; a peer that cannot be reached
/// counts failed forwards, and the requester is let go all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_peers_and_failed_forwards() {
    let pg = PgServer::shared();
    let db = pg.create_db("peers_show").await;
    let (port, dead) = (free_port(), free_port());
    let peers = format!(
        "[peers.1]\nhost = \"127.0.0.1\"\nport = {dead}\npool_size = 3\n\
         [peers.2]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [peers.4]\nhost = \"/nonexistent-dir\"\n"
    );
    let b = Proc::start(
        pg,
        &db,
        port,
        "peer_id = 2\nadmin_users = \"postgres\"\ndefault_pool_size = 7",
        &peers,
    )
    .await;
    let console = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=pgbouncer"
    ))
    .await;
    let rows: Vec<Vec<String>> = console
        .simple_query("SHOW PEERS")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            want(&["1", "127.0.0.1", &dead.to_string(), "3"]),
            want(&["4", "/nonexistent-dir", "6432", "7"]),
        ]
    );
    for peer in [1, 4] {
        send_cancel(b.addr(), 12345, pooler::peers::issue_secret(peer, 0x5a5a)).await;
    }
    let body = b.scrape().await;
    for peer in ["1", "4"] {
        let l = [("peer_id", peer)];
        assert_eq!(metric(&body, FAILED, &l), Some(1.0), "{body}");
        assert_eq!(metric(&body, FORWARDED, &l), Some(0.0), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_cancels_under_load_each_reach_their_own_query() {
    const VICTIMS: usize = 6;
    let pg = PgServer::shared();
    let db = pg.create_db("peers_load").await;
    // Two forwards in flight to a peer at most: the others queue for a slot.
    let (a, b) = pair(pg, &db, "default_pool_size = 10", 2).await;
    let mut victims = Vec::new();
    for _ in 0..VICTIMS {
        let mut v = raw_login(a.addr(), &db).await;
        v.s.write_all(&wire::query("SELECT pg_sleep(30)"))
            .await
            .unwrap();
        victims.push(v);
    }
    // Bystanders on A, busy with short queries the cancels must not touch.
    let bystanders: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("host=127.0.0.1 port={} user={APP_USER} dbname={db}", a.port);
            tokio::spawn(async move {
                let c = connect(&url).await;
                for _ in 0..50 {
                    // Not counted by `sleeping_backends`, which looks for the victims.
                    c.simple_query("SELECT 1 FROM pg_sleep(0.01)")
                        .await
                        .expect("a bystander's query failed");
                }
            })
        })
        .collect();
    assert!(
        eventually(HANG, || async {
            sleeping_backends(pg, &db).await == VICTIMS as i64
        })
        .await
    );
    let keys: Vec<(i32, i32)> = victims.iter().map(|v| (v.pid, v.secret)).collect();
    let b_addr = b.addr();
    let cancels: Vec<_> = keys
        .into_iter()
        .map(|(pid, secret)| tokio::spawn(send_cancel(b_addr, pid, secret)))
        .collect();
    for c in cancels {
        tokio::time::timeout(HANG, c)
            .await
            .expect("cancel")
            .unwrap();
    }
    for v in &mut victims {
        let codes = tokio::time::timeout(HANG, outcome(v))
            .await
            .expect("query ended");
        assert_eq!(codes, vec!["57014".to_string()], "B: {}", b.log());
    }
    for t in bystanders {
        tokio::time::timeout(HANG, t)
            .await
            .expect("bystander")
            .unwrap();
    }
}

/// The registry's guard holds for forwarded cancels too: a cancel for client X that comes
/// through a peer while X's transaction ends never cancels the next client's query on that
/// server (one server, two clients, cancels spread over X's query's life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_late_cancel_never_hits_the_next_client() {
    const ROUNDS: usize = 60;
    let pg = PgServer::shared();
    let db = pg.create_db("peers_race").await;
    let (a, b) = pair(pg, &db, "default_pool_size = 1", 4).await;
    let url = format!("host=127.0.0.1 port={} user={APP_USER} dbname={db}", a.port);
    let x = connect(&url).await;
    let y = connect(&url).await;
    let token = x.cancel_token();
    let bystander = tokio::spawn(async move {
        let mut cancelled = 0;
        for _ in 0..ROUNDS * 2 {
            let r = tokio::time::timeout(HANG, y.simple_query("SELECT pg_sleep(0.002)"))
                .await
                .expect("bystander query answered");
            if let Err(e) = r {
                assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
                cancelled += 1;
            }
        }
        cancelled
    });
    let b_addr = b.addr();
    for i in 0..ROUNDS {
        let cancel = async {
            tokio::time::sleep(Duration::from_micros((i % 7) as u64 * 300)).await;
            let s = TcpStream::connect(b_addr).await.expect("connect B");
            let _ =
                tokio::time::timeout(HANG, token.cancel_query_raw(s, tokio_postgres::NoTls)).await;
        };
        let (r, ()) = tokio::join!(
            tokio::time::timeout(HANG, x.simple_query("SELECT pg_sleep(0.001)")),
            cancel
        );
        let _ = r.expect("query answered");
    }
    let cancelled = tokio::time::timeout(HANG * 2, bystander)
        .await
        .expect("bystander done")
        .unwrap();
    assert_eq!(cancelled, 0, "the bystander's queries were cancelled");
    drop(a);
}

const CLIENTS: &str = "pooler_pools_client_active_connections";

/// The clients a pooler process has in its pool for `db` (from its own `/metrics`).
async fn clients_of(p: &Proc, db: &str) -> f64 {
    metric(
        &p.scrape().await,
        CLIENTS,
        &[("database", db), ("user", APP_USER)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn so_reuseport_lets_two_processes_share_the_port_and_both_get_clients() {
    const N: usize = 16;
    let pg = PgServer::shared();
    let db = pg.create_db("peers_reuseport").await;
    let port = free_port();
    let extra = "so_reuseport = true\ndefault_pool_size = 4";
    // Without so_reuseport the second process cannot bind and never comes up.
    let a = Proc::start(pg, &db, port, extra, "").await;
    let b = Proc::start(pg, &db, port, extra, "").await;
    let url = format!("host=127.0.0.1 port={port} user={APP_USER} dbname={db}");
    let mut clients = Vec::new();
    for _ in 0..N {
        let c = connect(&url).await;
        assert_eq!(first_value(&c, "SELECT 1").await, "1");
        clients.push(c);
    }
    let (on_a, on_b) = (clients_of(&a, &db).await, clients_of(&b, &db).await);
    assert_eq!(on_a + on_b, N as f64, "A {on_a}, B {on_b}");
    // The kernel hashes each connection to one of the two: all 16 on one has odds 2^-15.
    assert!(on_a > 0.0 && on_b > 0.0, "A {on_a}, B {on_b}");
}

/// A rolling restart on one host: the old pooler serves a pgbench run, a new one starts on the
/// same port, the old one gets SIGTERM. No transaction fails (pgbench's clients on the old one
/// finish theirs and are told 57P01; pgbench does not reconnect without -C), and a client
/// connecting throughout is never refused: it reaches the old pooler, or the new one, or is
/// told 57P01 by the old one and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_of_two_during_pgbench_fails_no_transaction_and_refuses_no_one() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let pg = PgServer::shared();
    let db = pg.create_db("peers_rolling").await;
    let init = Command::new("timeout")
        .args(["120", "pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1"])
        .args(["-p", &pg.port.to_string(), "-U", APP_USER, &db])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{init:?}");
    let port = free_port();
    let extra = "so_reuseport = true\ndefault_pool_size = 4\nshutdown_timeout = 20";
    let mut old = Proc::start(pg, &db, port, extra, "").await;

    // A client connecting all along, one connection per query.
    let url = format!("host=127.0.0.1 port={port} user={APP_USER} dbname={db}");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let prober = {
        let (stop, url, served) = (stop.clone(), url.clone(), served.clone());
        tokio::spawn(async move {
            let (mut reconnect, mut refused) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let attempt = tokio::time::timeout(HANG, async {
                    let c = try_connect(&url).await?;
                    c.simple_query("SELECT 1").await.map(|_| ())
                })
                .await
                .expect("probe answered");
                match attempt {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if sqlstate(&e).as_deref() == Some("57P01") => reconnect += 1,
                    Err(e) => refused.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (reconnect, refused)
        })
    };

    let pgbench = {
        let args = format!("-n -c 4 -j 2 -T 8 -h 127.0.0.1 -p {port} -U {APP_USER} {db}");
        std::thread::spawn(move || {
            Command::new("timeout")
                .arg("120")
                .arg("pgbench")
                .args(args.split(' '))
                .output()
                .expect("pgbench")
        })
    };
    let xacts = |body: String| {
        metric(
            &body,
            "pooler_stats_totals_sql_transactions_pooled_total",
            &[("database", db.as_str()), ("user", APP_USER)],
        )
        .unwrap_or(0.0)
    };
    // pgbench's own transactions, not only the prober's: its connections are all made (a
    // slow start under load could otherwise meet the SIGTERM still connecting).
    assert!(
        eventually(HANG, || async {
            xacts(old.scrape().await) > f64::from(served.load(Ordering::Relaxed)) + 50.0
        })
        .await,
        "pgbench made no progress"
    );
    let new = Proc::start(pg, &db, port, extra, "").await;
    old.signal(libc::SIGTERM);
    let status = old.wait_exit(HANG);
    assert!(status.success(), "{status:?}: {}", old.log());
    // The new pooler serves on its own: the prober's next connections reach it.
    let at_exit = served.load(Ordering::Relaxed);
    assert!(
        eventually(HANG, || async {
            served.load(Ordering::Relaxed) >= at_exit + 5
        })
        .await,
        "no probe served after the old pooler left"
    );

    let out = pgbench.join().expect("pgbench thread");
    stop.store(true, Ordering::Relaxed);
    let (reconnect, refused) = tokio::time::timeout(HANG, prober)
        .await
        .expect("prober done")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "pgbench {:?}\n{stdout}\n{stderr}\nnew: {}",
        out.status,
        new.log()
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{report}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.trim().parse().ok())
        .unwrap_or(0);
    assert!(processed > 0, "{report}");
    // Clients of the old pooler leave only with its 57P01 ("server shutting down"), which
    // comes between transactions: no other error, and none counted as failed above.
    for line in stderr
        .lines()
        .filter(|l| l.contains("FATAL") || l.contains("ERROR"))
    {
        assert!(line.contains("server shutting down"), "{line}\n{report}");
    }
    assert!(
        refused.is_empty(),
        "refused: {refused:?} ({served:?} served, {reconnect} told to reconnect)"
    );
}
