//! The relay's message processing without sockets: `ClientSide::process` and
//! `ServerSide::process` over realistic conversations, cut into reads the way the relay sees
//! them (a request, then its reply; bulk transfers in 16 KiB reads).
//!
//! `cargo bench --bench hotpath` runs criterion (bytes per second per workload), then prints a
//! summary table: bytes/s, ns per message and heap allocations per message, counted by the
//! counting global allocator below. The target is zero allocations per relayed message.
//!
//! Workloads (what pgbench and bulk clients really send and get back):
//! - `simple_q`: pgbench `-S` simple protocol, one `Query` per read and its reply
//!   (RowDescription, DataRow, CommandComplete, ReadyForQuery) per read;
//! - `extended`: pgbench `-M extended` (Parse/Bind/Describe/Execute/Sync) and its reply;
//! - `prepared`: pgbench `-M prepared` (Bind/Describe/Execute/Sync on a named statement);
//! - `tpcb`: pgbench's default script, seven statements, one read each;
//! - `datarow_batch`: 1,000-row `SELECT *` from `pgbench_accounts`, read in 16 KiB chunks;
//! - `copy_in` / `copy_out`: COPY of 1,000 rows each way, 16 KiB chunks;
//! - `param_status`: `SET application_name` reply, whose `ParameterStatus` the pooler parses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use pooler::engine::{ClientSide, Flow, ServerSide, Tracker};
use pooler::session_state::Policy;

/// Counts every allocation (and reallocation) made by this process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Which direction a read belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A conversation: both streams and the order of the reads that carry them.
struct Workload {
    name: &'static str,
    client: Vec<u8>,
    server: Vec<u8>,
    /// (side, start, end) of each read, in the order the relay sees them.
    reads: Vec<(Side, usize, usize)>,
    messages: usize,
}

#[derive(Default)]
struct Conv {
    client: Vec<u8>,
    server: Vec<u8>,
    reads: Vec<(Side, usize, usize)>,
    /// Where the bytes not yet cut into reads start, per side.
    cut_c: usize,
    cut_s: usize,
    messages: usize,
}

impl Conv {
    fn put(buf: &mut Vec<u8>, tag: u8, body: &[u8]) {
        buf.push(tag);
        buf.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        buf.extend_from_slice(body);
    }
    fn c(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        Self::put(&mut self.client, tag, body);
        self.messages += 1;
        self
    }
    fn s(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        Self::put(&mut self.server, tag, body);
        self.messages += 1;
        self
    }
    /// The client bytes so far arrive in reads of at most `chunk` bytes.
    fn read_c(&mut self, chunk: usize) -> &mut Self {
        while self.cut_c < self.client.len() {
            let end = (self.cut_c + chunk).min(self.client.len());
            self.reads.push((Side::Client, self.cut_c, end));
            self.cut_c = end;
        }
        self
    }
    /// The server bytes so far arrive in reads of at most `chunk` bytes.
    fn read_s(&mut self, chunk: usize) -> &mut Self {
        while self.cut_s < self.server.len() {
            let end = (self.cut_s + chunk).min(self.server.len());
            self.reads.push((Side::Server, self.cut_s, end));
            self.cut_s = end;
        }
        self
    }
    fn build(&mut self, name: &'static str) -> Workload {
        self.read_c(READ).read_s(READ);
        let c = std::mem::take(self);
        Workload {
            name,
            client: c.client,
            server: c.server,
            reads: c.reads,
            messages: c.messages,
        }
    }
}

/// The relay's read size.
const READ: usize = 16 * 1024;

/// Body builder for the few message layouts used here.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A length-prefixed value (DataRow column, Bind parameter).
    fn value(self, v: &str) -> Self {
        self.i32(v.len() as i32).bytes(v.as_bytes())
    }
}

/// RowDescription for `columns` (name, type oid, type length).
fn row_description(columns: &[(&str, i32, i16)]) -> Vec<u8> {
    let mut b = Body::default().i16(columns.len() as i16);
    for (i, (name, oid, len)) in columns.iter().enumerate() {
        b = b
            .cstr(name)
            .i32(16_397)
            .i16(i as i16 + 1)
            .i32(*oid)
            .i16(*len)
            .i32(-1)
            .i16(0);
    }
    b.0
}

const TXNS: usize = 1_000;
const SELECT_S: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = ";

fn aid(i: usize) -> usize {
    (i * 7_919) % 1_000_000 + 1
}

fn select_reply(w: &mut Conv) {
    w.s(b'T', &row_description(&[("abalance", 23, 4)]))
        .s(b'D', &Body::default().i16(1).value("0").0)
        .s(b'C', &Body::default().cstr("SELECT 1").0)
        .s(b'Z', b"I")
        .read_s(READ);
}

fn query(w: &mut Conv, sql: &str) {
    w.c(b'Q', &Body::default().cstr(sql).0).read_c(READ);
}

fn workloads() -> Vec<Workload> {
    let mut out = Vec::new();

    // pgbench -S, simple protocol.
    let mut w = Conv::default();
    for i in 0..TXNS {
        query(&mut w, &format!("{SELECT_S}{};", aid(i)));
        select_reply(&mut w);
    }
    out.push(w.build("simple_q"));

    // pgbench -S -M extended: unnamed statement and portal every time.
    let mut w = Conv::default();
    for i in 0..TXNS {
        w.c(
            b'P',
            &Body::default()
                .cstr("")
                .cstr(&format!("{SELECT_S}$1;"))
                .i16(0)
                .0,
        )
        .c(
            b'B',
            &Body::default()
                .cstr("")
                .cstr("")
                .i16(0)
                .i16(1)
                .value(&aid(i).to_string())
                .i16(1)
                .i16(0)
                .0,
        )
        .c(b'D', &Body::default().bytes(b"P").cstr("").0)
        .c(b'E', &Body::default().cstr("").i32(0).0)
        .c(b'S', b"")
        .read_c(READ);
        w.s(b'1', b"").s(b'2', b"");
        select_reply(&mut w);
    }
    out.push(w.build("extended"));

    // pgbench -S -M prepared: Bind of a named statement (passed through: no name rewriting).
    let mut w = Conv::default();
    for i in 0..TXNS {
        w.c(
            b'B',
            &Body::default()
                .cstr("")
                .cstr("P_0")
                .i16(0)
                .i16(1)
                .value(&aid(i).to_string())
                .i16(1)
                .i16(0)
                .0,
        )
        .c(b'D', &Body::default().bytes(b"P").cstr("").0)
        .c(b'E', &Body::default().cstr("").i32(0).0)
        .c(b'S', b"")
        .read_c(READ);
        w.s(b'2', b"");
        select_reply(&mut w);
    }
    out.push(w.build("prepared"));

    // pgbench's tpcb-like script: seven statements, each waited for.
    let mut w = Conv::default();
    for i in 0..TXNS / 7 {
        let (a, t, b, d) = (aid(i), i % 100 + 1, i % 10 + 1, (i % 9_999) as i64 - 5_000);
        let done = |w: &mut Conv, tag: &str, status: &[u8]| {
            w.s(b'C', &Body::default().cstr(tag).0)
                .s(b'Z', status)
                .read_s(READ);
        };
        query(&mut w, "BEGIN;");
        done(&mut w, "BEGIN", b"T");
        query(
            &mut w,
            &format!("UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a};"),
        );
        done(&mut w, "UPDATE 1", b"T");
        query(
            &mut w,
            &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {a};"),
        );
        w.s(b'T', &row_description(&[("abalance", 23, 4)]))
            .s(b'D', &Body::default().i16(1).value("-1234").0);
        done(&mut w, "SELECT 1", b"T");
        query(
            &mut w,
            &format!("UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t};"),
        );
        done(&mut w, "UPDATE 1", b"T");
        query(
            &mut w,
            &format!("UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b};"),
        );
        done(&mut w, "UPDATE 1", b"T");
        query(
            &mut w,
            &format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP);"
            ),
        );
        done(&mut w, "INSERT 0 1", b"T");
        query(&mut w, "END;");
        done(&mut w, "COMMIT", b"I");
    }
    out.push(w.build("tpcb"));

    // A large result: 1,000 pgbench_accounts rows, read in 16 KiB chunks.
    let filler = " ".repeat(84);
    let mut w = Conv::default();
    query(&mut w, "SELECT * FROM pgbench_accounts LIMIT 1000");
    w.s(
        b'T',
        &row_description(&[
            ("aid", 23, 4),
            ("bid", 23, 4),
            ("abalance", 23, 4),
            ("filler", 1042, -1),
        ]),
    );
    for i in 0..1_000 {
        w.s(
            b'D',
            &Body::default()
                .i16(4)
                .value(&aid(i).to_string())
                .value(&(i % 10 + 1).to_string())
                .value("0")
                .value(&filler)
                .0,
        );
    }
    w.s(b'C', &Body::default().cstr("SELECT 1000").0)
        .s(b'Z', b"I")
        .read_s(READ);
    out.push(w.build("datarow_batch"));

    // COPY ... FROM STDIN: 1,000 rows of pgbench_history, one CopyData per row.
    let row = |i: usize| {
        format!(
            "{}\t{}\t{}\t{}\t2026-01-01 00:00:00.{:06}\n",
            i % 100,
            i % 10,
            aid(i),
            i,
            i
        )
    };
    let mut w = Conv::default();
    query(&mut w, "COPY pgbench_history FROM STDIN");
    w.s(
        b'G',
        &Body::default()
            .bytes(&[0])
            .i16(5)
            .i16(0)
            .i16(0)
            .i16(0)
            .i16(0)
            .i16(0)
            .0,
    )
    .read_s(READ);
    for i in 0..1_000 {
        w.c(b'd', row(i).as_bytes());
    }
    w.c(b'c', b"").read_c(READ);
    w.s(b'C', &Body::default().cstr("COPY 1000").0)
        .s(b'Z', b"I")
        .read_s(READ);
    out.push(w.build("copy_in"));

    // COPY ... TO STDOUT: the same rows coming back.
    let mut w = Conv::default();
    query(&mut w, "COPY pgbench_history TO STDOUT");
    w.s(
        b'H',
        &Body::default()
            .bytes(&[0])
            .i16(5)
            .i16(0)
            .i16(0)
            .i16(0)
            .i16(0)
            .i16(0)
            .0,
    );
    for i in 0..1_000 {
        w.s(b'd', row(i).as_bytes());
    }
    w.s(b'c', b"")
        .s(b'C', &Body::default().cstr("COPY 1000").0)
        .s(b'Z', b"I")
        .read_s(READ);
    out.push(w.build("copy_out"));

    // SET application_name: Postgres reports the new value in a ParameterStatus.
    let mut w = Conv::default();
    for i in 0..TXNS {
        query(&mut w, &format!("SET application_name = 'app-{}'", i % 10));
        w.s(
            b'S',
            &Body::default()
                .cstr("application_name")
                .cstr(&format!("app-{}", i % 10))
                .0,
        )
        .s(b'C', &Body::default().cstr("SET").0)
        .s(b'Z', b"I")
        .read_s(READ);
    }
    out.push(w.build("param_status"));

    out
}

/// One client's relay state, kept across passes like a session keeps it across transactions.
struct State {
    up: Flow,
    down: Flow,
    client: ClientSide,
    server: ServerSide,
    tracker: Tracker,
}

impl State {
    /// `policy`: session-state detection, as in transaction mode (`None`: session mode).
    fn new(policy: Option<Policy>) -> State {
        State {
            up: Flow::default(),
            down: Flow::default(),
            client: ClientSide::new(policy),
            server: ServerSide::default(),
            tracker: Tracker::default(),
        }
    }
}

/// Feeds the conversation read by read through the relay's processing, writing out
/// everything processed after each read, as the relay does. Returns the bytes moved.
fn pass(w: &Workload, st: &mut State) -> usize {
    let mut moved = 0;
    let mut on_param = |name: &str, value: &str| {
        black_box((name.len(), value.len()));
    };
    for &(side, a, b) in &w.reads {
        match side {
            Side::Client => {
                st.up.inbuf.extend_from_slice(&w.client[a..b]);
                st.client
                    .process(&mut st.up, &mut st.tracker, None)
                    .expect("client side");
                moved += st.up.out.len();
                st.up.out.clear();
            }
            Side::Server => {
                st.down.inbuf.extend_from_slice(&w.server[a..b]);
                st.server
                    .process(&mut st.down, &mut st.tracker, None, &mut on_param)
                    .expect("server side");
                moved += st.down.out.len();
                st.down.out.clear();
            }
        }
    }
    moved
}

fn bench_relay(c: &mut Criterion, workloads: &[Workload]) {
    for (group, policy) in [
        ("transaction_mode", Some(Policy::Pin)),
        ("session_mode", None),
    ] {
        let mut g = c.benchmark_group(group);
        for w in workloads {
            let mut st = State::new(policy);
            g.throughput(Throughput::Bytes((w.client.len() + w.server.len()) as u64));
            g.bench_function(w.name, |b| {
                b.iter(|| black_box(pass(black_box(w), &mut st)))
            });
        }
        g.finish();
    }
}

/// Our own short timing and the allocation count, for one summary table.
fn summary(workloads: &[Workload]) {
    println!();
    println!("hot path summary (one pass = the whole conversation, read by read)");
    println!(
        "{:<14} {:>8} {:>8} {:>6} {:>6} {:>9} {:>8} {:>9} {:>11}",
        "workload",
        "client B",
        "server B",
        "msgs",
        "reads",
        "MB/s",
        "ns/msg",
        "ns/msg(s)",
        "allocs/msg"
    );
    for w in workloads {
        let bytes = (w.client.len() + w.server.len()) as f64;
        let time = |policy: Option<Policy>| {
            let mut st = State::new(policy);
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < Duration::from_millis(300) {
                black_box(pass(black_box(w), &mut st));
                n += 1;
            }
            t.elapsed().as_secs_f64() / n as f64
        };
        // Allocations in steady state: one warm-up pass, then counted passes.
        let mut st = State::new(Some(Policy::Pin));
        pass(w, &mut st);
        let passes = 20;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..passes {
            black_box(pass(black_box(w), &mut st));
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        let tx = time(Some(Policy::Pin));
        let session = time(None);
        println!(
            "{:<14} {:>8} {:>8} {:>6} {:>6} {:>9.0} {:>8.2} {:>9.2} {:>11.3}",
            w.name,
            w.client.len(),
            w.server.len(),
            w.messages,
            w.reads.len(),
            bytes / tx / 1e6,
            tx * 1e9 / w.messages as f64,
            session * 1e9 / w.messages as f64,
            allocs as f64 / (passes as f64 * w.messages as f64),
        );
    }
    println!(
        "MB/s and ns/msg: transaction mode (session-state detection on); ns/msg(s): session mode.\n\
         allocs/msg counts every heap allocation during the passes (counting global allocator)."
    );
}

/// Bytes of the per-client session future (`client::serve`): what every connected client holds
/// for its whole life besides its socket and buffers, idle or not. Built, never polled.
fn session_future_size() -> Option<usize> {
    let dir = std::env::temp_dir().join(format!("pooler-hotpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let size = (|| {
        std::fs::write(dir.join("userlist.txt"), "\"app\" \"app\"\n").ok()?;
        std::fs::write(
            dir.join("pooler.toml"),
            "[pooler]\nauth_type = \"md5\"\nauth_file = \"userlist.txt\"\n\n[databases.app]\n",
        )
        .ok()?;
        let config = pooler::config::Config::load(&dir.join("pooler.toml")).ok()?;
        let app = std::sync::Arc::new(pooler::app::App::new(config).ok()?);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
            let client = tokio::net::TcpStream::connect(listener.local_addr().ok()?)
                .await
                .ok()?;
            let (stream, peer) = listener.accept().await.ok()?;
            let session = pooler::session::serve(app, stream, pooler::auth::hba::Origin::tcp(peer));
            let size = std::mem::size_of_val(&session);
            drop(session);
            drop(client);
            Some(size)
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    size
}

fn main() {
    let workloads = workloads();
    for w in &workloads {
        let mut st = State::new(Some(Policy::Pin));
        assert_eq!(
            pass(w, &mut st),
            w.client.len() + w.server.len(),
            "{}: conversation not fully relayed",
            w.name
        );
        assert!(st.tracker.is_idle(), "{}: requests left unanswered", w.name);
    }
    let mut c = Criterion::default().configure_from_args();
    bench_relay(&mut c, &workloads);
    c.final_summary();
    // Under `cargo test --benches` criterion runs each benchmark once; skip the summary there.
    if std::env::args().any(|a| a == "--bench") {
        summary(&workloads);
        match session_future_size() {
            Some(n) => println!(
                "client session future (client::serve): {n} bytes per connected client, before its buffers"
            ),
            None => println!("client session future size: could not be measured"),
        }
    }
}
