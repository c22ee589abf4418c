//! The relay's message scanning without sockets: `ClientScan::scan` and `ServerScan::scan`
//! over realistic byte streams, cut into reads the way the relay sees them.
//!
//! `cargo bench --bench hotpath` runs criterion (bytes per second per workload), then prints a
//! summary table: bytes/s, ns per message and heap allocations per message, counted by the
//! counting global allocator below. The target is zero allocations per relayed message.
//!
//! Workloads (what pgbench and bulk clients really send and get back):
//! - `simple_q`: pgbench `-S` simple protocol, one `Query` per read / its reply
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
use pooler::relay::{ClientScan, ServerScan};

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

/// Which scanner a workload feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One stream and where the reads end in it.
struct Workload {
    name: &'static str,
    side: Side,
    stream: Vec<u8>,
    /// End offset of each read; the last one is `stream.len()`.
    cuts: Vec<usize>,
    messages: usize,
    /// ReadyForQuery messages in the stream (server side): sync points the client must owe.
    syncs: u32,
}

/// Builds a stream message by message, noting read boundaries.
#[derive(Default)]
struct StreamBuilder {
    stream: Vec<u8>,
    cuts: Vec<usize>,
    messages: usize,
    syncs: u32,
}

impl StreamBuilder {
    fn msg(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.stream.push(tag);
        self.stream
            .extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        self.stream.extend_from_slice(body);
        self.messages += 1;
        if tag == b'Z' {
            self.syncs += 1;
        }
        self
    }
    /// The bytes so far end one read (one `recv` of the relay).
    fn read(&mut self) -> &mut Self {
        if self.cuts.last() != Some(&self.stream.len()) {
            self.cuts.push(self.stream.len());
        }
        self
    }
    /// Cuts the whole stream into `chunk`-byte reads instead (bulk transfers).
    fn chunked(&mut self, chunk: usize) -> &mut Self {
        self.cuts = (1..)
            .map(|i| (i * chunk).min(self.stream.len()))
            .take(self.stream.len().div_ceil(chunk))
            .collect();
        self
    }
    fn build(&mut self, name: &'static str, side: Side) -> Workload {
        self.read();
        Workload {
            name,
            side,
            stream: std::mem::take(&mut self.stream),
            cuts: std::mem::take(&mut self.cuts),
            messages: self.messages,
            syncs: self.syncs,
        }
    }
}

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

fn select_reply(s: &mut StreamBuilder) {
    s.msg(b'T', &row_description(&[("abalance", 23, 4)]))
        .msg(b'D', &Body::default().i16(1).value("0").0)
        .msg(b'C', &Body::default().cstr("SELECT 1").0)
        .msg(b'Z', b"I")
        .read();
}

fn workloads() -> Vec<Workload> {
    let mut out = Vec::new();

    // pgbench -S, simple protocol.
    let mut c = StreamBuilder::default();
    let mut s = StreamBuilder::default();
    for i in 0..TXNS {
        c.msg(
            b'Q',
            &Body::default().cstr(&format!("{SELECT_S}{};", aid(i))).0,
        )
        .read();
        select_reply(&mut s);
    }
    out.push(c.build("simple_q", Side::Client));
    out.push(s.build("simple_q", Side::Server));

    // pgbench -S -M extended: unnamed statement and portal every time.
    let mut c = StreamBuilder::default();
    let mut s = StreamBuilder::default();
    for i in 0..TXNS {
        c.msg(
            b'P',
            &Body::default()
                .cstr("")
                .cstr(&format!("{SELECT_S}$1;"))
                .i16(0)
                .0,
        )
        .msg(
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
        .msg(b'D', &Body::default().bytes(b"P").cstr("").0)
        .msg(b'E', &Body::default().cstr("").i32(0).0)
        .msg(b'S', b"")
        .read();
        s.msg(b'1', b"").msg(b'2', b"");
        select_reply(&mut s);
    }
    out.push(c.build("extended", Side::Client));
    out.push(s.build("extended", Side::Server));

    // pgbench -S -M prepared: Bind of a named statement.
    let mut c = StreamBuilder::default();
    let mut s = StreamBuilder::default();
    for i in 0..TXNS {
        c.msg(
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
        .msg(b'D', &Body::default().bytes(b"P").cstr("").0)
        .msg(b'E', &Body::default().cstr("").i32(0).0)
        .msg(b'S', b"")
        .read();
        s.msg(b'2', b"");
        select_reply(&mut s);
    }
    out.push(c.build("prepared", Side::Client));
    out.push(s.build("prepared", Side::Server));

    // pgbench's tpcb-like script: seven statements, each waited for.
    let mut c = StreamBuilder::default();
    let mut s = StreamBuilder::default();
    for i in 0..TXNS / 7 {
        let (a, t, b, d) = (aid(i), i % 100 + 1, i % 10 + 1, (i % 9_999) as i64 - 5_000);
        let statements = [
            "BEGIN;".to_string(),
            format!("UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a};"),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {a};"),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t};"),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b};"),
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP);"
            ),
            "END;".to_string(),
        ];
        for q in &statements {
            c.msg(b'Q', &Body::default().cstr(q).0).read();
        }
        let done = |s: &mut StreamBuilder, tag: &str, status: &[u8]| {
            s.msg(b'C', &Body::default().cstr(tag).0)
                .msg(b'Z', status)
                .read();
        };
        done(&mut s, "BEGIN", b"T");
        done(&mut s, "UPDATE 1", b"T");
        s.msg(b'T', &row_description(&[("abalance", 23, 4)]))
            .msg(b'D', &Body::default().i16(1).value("-1234").0);
        done(&mut s, "SELECT 1", b"T");
        done(&mut s, "UPDATE 1", b"T");
        done(&mut s, "UPDATE 1", b"T");
        done(&mut s, "INSERT 0 1", b"T");
        done(&mut s, "COMMIT", b"I");
    }
    out.push(c.build("tpcb", Side::Client));
    out.push(s.build("tpcb", Side::Server));

    // A large result: 1,000 pgbench_accounts rows, read in 16 KiB chunks.
    let filler = " ".repeat(84);
    let mut s = StreamBuilder::default();
    s.msg(
        b'T',
        &row_description(&[
            ("aid", 23, 4),
            ("bid", 23, 4),
            ("abalance", 23, 4),
            ("filler", 1042, -1),
        ]),
    );
    for i in 0..1_000 {
        s.msg(
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
    s.msg(b'C', &Body::default().cstr("SELECT 1000").0)
        .msg(b'Z', b"I")
        .chunked(16 * 1024);
    out.push(s.build("datarow_batch", Side::Server));

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
    let mut c = StreamBuilder::default();
    c.msg(
        b'Q',
        &Body::default().cstr("COPY pgbench_history FROM STDIN").0,
    );
    for i in 0..1_000 {
        c.msg(b'd', row(i).as_bytes());
    }
    c.msg(b'c', b"").chunked(16 * 1024);
    out.push(c.build("copy_in", Side::Client));

    // COPY ... TO STDOUT: the same rows coming back.
    let mut s = StreamBuilder::default();
    s.msg(
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
        s.msg(b'd', row(i).as_bytes());
    }
    s.msg(b'c', b"")
        .msg(b'C', &Body::default().cstr("COPY 1000").0)
        .msg(b'Z', b"I")
        .chunked(16 * 1024);
    out.push(s.build("copy_out", Side::Server));

    // SET application_name: Postgres reports the new value in a ParameterStatus.
    let mut s = StreamBuilder::default();
    for i in 0..TXNS {
        s.msg(
            b'S',
            &Body::default()
                .cstr("application_name")
                .cstr(&format!("app-{}", i % 10))
                .0,
        )
        .msg(b'C', &Body::default().cstr("SET").0)
        .msg(b'Z', b"I")
        .read();
    }
    out.push(s.build("param_status", Side::Server));

    out
}

/// Scans the whole workload read by read, forwarding everything ready after each read, as
/// the relay does. Returns the bytes forwarded.
fn pass(w: &Workload) -> usize {
    let mut start = 0;
    match w.side {
        Side::Client => {
            let mut scan = ClientScan::default();
            for &end in &w.cuts {
                start += scan.scan(&w.stream[start..end], 0).expect("client scan");
            }
        }
        Side::Server => {
            let mut client = ClientScan::default();
            client.pending = w.syncs;
            let mut server = ServerScan::default();
            let mut on_param = |name: &str, value: &str| {
                black_box((name.len(), value.len()));
            };
            for &end in &w.cuts {
                start += server
                    .scan(&w.stream[start..end], 0, &mut client, &mut on_param)
                    .expect("server scan");
            }
            debug_assert_eq!(client.pending, 0);
        }
    }
    start
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

fn bench_scan(c: &mut Criterion, workloads: &[Workload]) {
    for side in [Side::Client, Side::Server] {
        let mut group = c.benchmark_group(format!("{}_scan", side_name(side)));
        for w in workloads.iter().filter(|w| w.side == side) {
            group.throughput(Throughput::Bytes(w.stream.len() as u64));
            group.bench_function(w.name, |b| b.iter(|| black_box(pass(black_box(w)))));
        }
        group.finish();
    }
}

/// Our own short timing and the allocation count, for one summary table.
fn summary(workloads: &[Workload]) {
    println!();
    println!("hot path summary (one pass = the whole workload, read by read)");
    println!(
        "{:<8} {:<14} {:>9} {:>7} {:>6} {:>10} {:>9} {:>11}",
        "side", "workload", "bytes", "msgs", "reads", "MB/s", "ns/msg", "allocs/msg"
    );
    for w in workloads {
        // Allocations: a few passes, counted.
        let passes = 20;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..passes {
            black_box(pass(black_box(w)));
        }
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        // Speed: as many passes as fit in 300 ms.
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            black_box(pass(black_box(w)));
            n += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (w.stream.len() as u64 * n) as f64;
        println!(
            "{:<8} {:<14} {:>9} {:>7} {:>6} {:>10.0} {:>9.2} {:>11.3}",
            side_name(w.side),
            w.name,
            w.stream.len(),
            w.messages,
            w.cuts.len(),
            bytes / secs / 1e6,
            secs * 1e9 / (n as f64 * w.messages as f64),
            allocs as f64 / (passes as f64 * w.messages as f64),
        );
    }
    println!(
        "allocs/msg counts every heap allocation during the scan (counting global allocator)."
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
            let session = pooler::client::serve(app, stream, peer);
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
        assert_eq!(
            pass(w),
            w.stream.len(),
            "{}: stream not fully forwarded",
            w.name
        );
    }
    let mut c = Criterion::default().configure_from_args();
    bench_scan(&mut c, &workloads);
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
