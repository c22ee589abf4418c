//! Fuzzed input (proptest, a bounded number of cases per run): the startup-packet parser, the
//! login-phase message reader, the client-message framer (`ClientSide::process`, with and
//! without statement rewriting), the local answers to prepare-only batches
//! (`engine::answer_locally`) and the server framer (`ServerSide::process`).
//!
//! Properties: no panic, no allocation sized by a length field (a global allocator records
//! the largest single allocation while the code under test runs), malformed framing is an
//! error, and well-formed traffic passes through unchanged (session mode) or well-framed
//! (transaction mode with statement rewriting).
//!
//! `FUZZ_CASES` sets the cases per property (default 2,000); each test prints how many
//! executions it ran (`cargo test --test fuzz_input -- --nocapture`).

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use pooler::engine::{self, ClientSide, Flow, ServerSide, Statements, Tracker};
use pooler::prepared::{ClientStatements, Registry, ServerCache};
use pooler::session_state::Policy;
use pooler::wire::{self, MAX_MESSAGE_LEN};

// ---------------------------------------------------------------------------------------
// The largest single allocation made by this thread while armed.

struct Watching;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = BIGGEST.try_with(|b| b.set(b.get().max(size)));
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f` and returns its result with the largest single allocation it made.
fn watched<T>(f: impl FnOnce() -> T) -> (T, usize) {
    BIGGEST.with(|b| b.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, BIGGEST.with(|b| b.get()))
}

/// Runs `f` and returns its result with the number of allocations it made.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    COUNT.with(|c| c.set(0));
    let (r, _) = watched(f);
    (r, COUNT.with(|c| c.get()))
}

/// No allocation may be sized by what a length field claims: only by what arrived.
fn alloc_bound(input_len: usize) -> usize {
    4 * input_len + (1 << 20)
}

// ---------------------------------------------------------------------------------------
// Case counting and the runner.

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    static EXECUTIONS: AtomicU64 = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let result = runner.run(&strategy, |v| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    let n = ran.load(Ordering::Relaxed);
    let total = EXECUTIONS.fetch_add(n, Ordering::Relaxed) + n;
    println!("fuzz {name}: {n} executions (this binary so far: {total})");
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

const FRONTEND_TAGS: &[u8] = b"QFSHEdcfPDCBX";
const BACKEND_TAGS: &[u8] = b"123CDEGHIKNRSTZcdnstvAWV";
const ABSURD_LENGTHS: &[i32] = &[
    i32::MIN,
    -1,
    0,
    1,
    3,
    0x3fff_ffff,
    0x4000_0000,
    0x7fff_fff0,
    i32::MAX,
];

#[derive(Debug, Clone, Copy)]
enum Length {
    Right,
    Off(i32),
    Absurd(i32),
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        8 => Just(Length::Right),
        1 => (-6i32..6).prop_map(Length::Off),
        2 => prop::sample::select(ABSURD_LENGTHS).prop_map(Length::Absurd),
    ]
}

/// Pieces a body is made of: C strings a driver would send, and raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            &b"\0"[..],
            b"s1\0",
            b"s2\0",
            b"SELECT 1\0",
            b"SET x = 1\0",
            b"BEGIN\0",
            b"S",
            b"P",
            b"\0\0",
            b"\0\0\0\0",
            b"\xff\xfe\0",
        ])
        .prop_map(|b| b.to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
struct Msg {
    tag: u8,
    len: Length,
    body: Vec<u8>,
}

impl Msg {
    fn declared(&self) -> i32 {
        let right = self.body.len() as i32 + 4;
        match self.len {
            Length::Right => right,
            Length::Off(d) => right + d,
            Length::Absurd(l) => l,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![self.tag];
        b.extend_from_slice(&self.declared().to_be_bytes());
        b.extend_from_slice(&self.body);
        b
    }

    fn framing_ok(&self) -> bool {
        let l = self.declared();
        l >= 4 && l as usize <= MAX_MESSAGE_LEN
    }
}

fn msg(tags: &'static [u8]) -> impl Strategy<Value = Msg> {
    let tag = prop_oneof![4 => prop::sample::select(tags), 1 => any::<u8>()];
    (tag, length(), body()).prop_map(|(tag, len, body)| Msg { tag, len, body })
}

/// A stream of messages, cut short somewhere (or not), and the chunk sizes it arrives in.
#[derive(Debug, Clone)]
struct Stream {
    msgs: Vec<Msg>,
    keep: usize,
    chunks: Vec<usize>,
}

impl Stream {
    fn bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = self.msgs.iter().flat_map(Msg::bytes).collect();
        b.truncate(self.keep);
        b
    }
}

fn stream(tags: &'static [u8]) -> impl Strategy<Value = Stream> {
    (
        prop::collection::vec(msg(tags), 0..10),
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop::collection::vec(1usize..64, 1..8),
    )
        .prop_map(|(msgs, cut, truncate, chunks)| {
            let total: usize = msgs.iter().map(|m| 5 + m.body.len()).sum();
            let keep = if truncate {
                cut.index(total + 1)
            } else {
                total
            };
            Stream { msgs, keep, chunks }
        })
}

/// The byte offset where the first badly framed message starts, if the framer must reach
/// it: every message before it is correctly framed (so the framer is in sync) and none is
/// a Terminate (after which nothing is read).
fn first_bad_frame(s: &Stream, valid_tags: Option<&[u8]>) -> Option<usize> {
    let mut pos = 0;
    for m in &s.msgs {
        let bad_tag = valid_tags.is_some_and(|t| !t.contains(&m.tag));
        if !m.framing_ok() || bad_tag {
            return (s.keep >= pos + 5).then_some(pos);
        }
        if !matches!(m.len, Length::Right) || (valid_tags.is_some() && m.tag == b'X') {
            return None;
        }
        pos += 5 + m.body.len();
    }
    None
}

/// Chunks of `input` in the given sizes, cycling.
fn chunked<'a>(input: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut pos = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if pos >= input.len() {
            return None;
        }
        let n = sizes[i % sizes.len()].min(input.len() - pos);
        i += 1;
        pos += n;
        Some(&input[pos - n..pos])
    })
}

// ---------------------------------------------------------------------------------------
// Drivers: what `Relay` does with the bytes, without sockets.

struct ClientRun {
    result: pooler::error::Result<()>,
    forwarded: Vec<u8>,
    left_in_inbuf: usize,
    /// A message waits, unread, for replies no server gives here (a Parse of a name whose
    /// first Parse is still unanswered across a Sync).
    deferred: bool,
    biggest_alloc: usize,
    max_capacity: usize,
}

/// Feeds `input` to a client framer in chunks. `rewrite`: transaction mode with prepared
/// statements rewritten and session state detected (pin).
fn drive_client(input: &[u8], sizes: &[usize], rewrite: bool) -> ClientRun {
    let registry = Registry::default();
    let mut client_stmts = ClientStatements::default();
    let mut server_cache = ServerCache::default();
    let mut side = ClientSide::new(rewrite.then_some(Policy::Pin));
    let mut tracker = Tracker::default();
    let mut up = Flow::default();
    let mut forwarded = Vec::new();
    let mut max_capacity = 0;
    let (result, biggest_alloc) = watched(|| {
        for chunk in chunked(input, sizes) {
            up.inbuf.extend_from_slice(chunk);
            let mut stmts = rewrite.then_some(Statements {
                registry: &registry,
                client: &mut client_stmts,
                server: &mut server_cache,
                max: 3,
            });
            let r = side.process(&mut up, &mut tracker, stmts.as_mut());
            max_capacity = max_capacity.max(up.inbuf.capacity()).max(up.out.capacity());
            // The server took what was forwarded.
            forwarded.extend_from_slice(&up.out);
            up.out.clear();
            r?;
        }
        Ok(())
    });
    ClientRun {
        result,
        forwarded,
        left_in_inbuf: up.inbuf.len(),
        deferred: side.deferred,
        biggest_alloc,
        max_capacity,
    }
}

/// Checks that `bytes` is a sequence of whole, well-framed messages with tags from `tags`.
fn well_framed(bytes: &[u8], tags: &[u8]) -> Result<(), String> {
    let mut pos = 0;
    while pos < bytes.len() {
        let Some((tag, len)) = wire::header(&bytes[pos..]) else {
            return Err(format!("partial header at {pos}"));
        };
        if !tags.contains(&tag) || len < 4 || pos + 1 + len as usize > bytes.len() {
            return Err(format!("bad frame at {pos}: tag {tag} len {len}"));
        }
        pos += 1 + len as usize;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Startup packet and login messages.

#[test]
fn fuzz_startup_packet_parser() {
    let code = prop_oneof![
        Just(wire::PROTOCOL_3_0),
        Just(80_877_103),
        Just(80_877_104),
        Just(80_877_102),
        any::<i32>(),
    ];
    run(
        "parse_startup",
        (code, body(), prop::collection::vec(any::<u8>(), 0..64)),
        |(code, body, raw)| {
            for input in [[&code.to_be_bytes()[..], &body[..]].concat(), raw.clone()] {
                let (r, biggest) = watched(|| wire::parse_startup(&input));
                prop_assert!(biggest <= alloc_bound(input.len()));
                if code != wire::PROTOCOL_3_0 && code >> 16 != 1234 {
                    prop_assert!(r.is_err() || input == raw);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_startup_packet_roundtrip() {
    let name = "[a-z_]{1,12}";
    let value = "[^\\x00]{0,20}";
    run(
        "parse_startup valid params",
        prop::collection::vec((name, value), 0..6),
        |params| {
            let pairs: Vec<(&str, &str)> = params
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut pkt = BytesMut::new();
            postgres_protocol::message::frontend::startup_message(pairs.iter().copied(), &mut pkt)
                .unwrap();
            match wire::parse_startup(&pkt[4..]) {
                Ok(wire::StartupRequest::Startup { params: got }) => {
                    prop_assert_eq!(got, pairs);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            Ok(())
        },
    );
}

/// `read_startup` and `read_message` read a length first: absurd lengths must be refused
/// before anything is allocated for them.
#[test]
fn fuzz_startup_and_login_readers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let len = prop_oneof![
        prop::sample::select(ABSURD_LENGTHS),
        Just(10_001),
        Just(10_000),
        Just(16 * 1024 + 5),
        0i32..64,
    ];
    run(
        "read_startup/read_message",
        (len, any::<u8>(), prop::collection::vec(any::<u8>(), 0..80)),
        |(len, tag, rest)| {
            let startup = [&len.to_be_bytes()[..], &rest[..]].concat();
            let (r, biggest) = watched(|| rt.block_on(wire::read_startup(&mut &startup[..])));
            prop_assert!(biggest <= alloc_bound(startup.len()), "{biggest}");
            if !(8..=wire::MAX_STARTUP_LEN as i32).contains(&len) {
                prop_assert!(r.is_err());
            }
            let msg = [&[tag][..], &len.to_be_bytes()[..], &rest[..]].concat();
            let (r, biggest) = watched(|| {
                rt.block_on(wire::read_message(
                    &mut &msg[..],
                    wire::MAX_LOGIN_MESSAGE_LEN,
                ))
            });
            prop_assert!(biggest <= alloc_bound(msg.len()), "{biggest}");
            if len < 4 || len as usize - 4 > wire::MAX_LOGIN_MESSAGE_LEN {
                prop_assert!(r.is_err());
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Client → server framing.

fn check_client_stream(s: Stream, rewrite: bool) -> Result<(), TestCaseError> {
    let input = s.bytes();
    let run = drive_client(&input, &s.chunks, rewrite);
    prop_assert!(
        run.biggest_alloc <= alloc_bound(input.len()),
        "allocated {} for {} bytes of input",
        run.biggest_alloc,
        input.len()
    );
    prop_assert!(run.max_capacity <= alloc_bound(input.len()));
    if first_bad_frame(&s, Some(FRONTEND_TAGS)).is_some() {
        prop_assert!(run.result.is_err(), "malformed framing was accepted");
    }
    if let Err(e) = &run.result {
        prop_assert!(
            // 54000: a named Parse too large to pool, refused from its header.
            matches!(e.sqlstate(), "08P01" | "0A000" | "54000"),
            "{e}: {}",
            e.sqlstate()
        );
    }
    Ok(())
}

#[test]
fn fuzz_client_framer_session_mode() {
    run(
        "ClientSide::process (session)",
        stream(FRONTEND_TAGS),
        |s| check_client_stream(s, false),
    );
}

#[test]
fn fuzz_client_framer_transaction_mode() {
    run(
        "ClientSide::process (transaction, rewriting)",
        stream(FRONTEND_TAGS),
        |s| check_client_stream(s, true),
    );
}

#[test]
fn fuzz_client_framer_random_bytes() {
    run(
        "ClientSide::process (random bytes)",
        (
            prop::collection::vec(any::<u8>(), 0..512),
            prop::collection::vec(1usize..64, 1..4),
            any::<bool>(),
        ),
        |(input, sizes, rewrite)| {
            let run = drive_client(&input, &sizes, rewrite);
            prop_assert!(run.biggest_alloc <= alloc_bound(input.len()));
            Ok(())
        },
    );
}

/// Valid frontend messages as drivers send them.
fn valid_msg() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec!["", "s1", "s2", "s3", "s4"]);
    let sql = prop::sample::select(vec!["SELECT 1", "SELECT $1::int", "BEGIN", "COMMIT"]);
    let cstr = |s: &str| [s.as_bytes(), b"\0"].concat();
    prop_oneof![
        sql.clone().prop_map(move |q| (b'Q', cstr(q))),
        (name.clone(), sql).prop_map(move |(n, q)| (b'P', [cstr(n), cstr(q), vec![0, 0]].concat())),
        name.clone()
            .prop_map(move |n| (b'B', [vec![0], cstr(n), vec![0, 0, 0, 0, 0, 0]].concat())),
        (prop::sample::select(vec![b'S', b'P']), name.clone())
            .prop_map(move |(k, n)| (b'D', [vec![k], cstr(n)].concat())),
        (prop::sample::select(vec![b'S', b'P']), name)
            .prop_map(move |(k, n)| (b'C', [vec![k], cstr(n)].concat())),
        Just((b'E', vec![0, 0, 0, 0, 0])),
        Just((b'S', vec![])),
        Just((b'H', vec![])),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| (b'd', b)),
        Just((b'c', vec![])),
        Just((b'f', b"no\0".to_vec())),
    ]
    .prop_map(|(tag, body)| {
        Msg {
            tag,
            len: Length::Right,
            body,
        }
        .bytes()
    })
}

#[test]
fn fuzz_valid_traffic_passes_through_unchanged_in_session_mode() {
    run(
        "ClientSide::process (valid, session: byte-exact)",
        (
            prop::collection::vec(valid_msg(), 0..16),
            prop::collection::vec(1usize..40, 1..6),
        ),
        |(msgs, sizes)| {
            let input = msgs.concat();
            let run = drive_client(&input, &sizes, false);
            prop_assert!(run.result.is_ok(), "{:?}", run.result);
            prop_assert_eq!(run.left_in_inbuf, 0);
            prop_assert_eq!(run.forwarded, input);
            Ok(())
        },
    );
}

#[test]
fn fuzz_valid_traffic_stays_well_framed_when_rewritten() {
    run(
        "ClientSide::process (valid, transaction: well framed)",
        (
            prop::collection::vec(valid_msg(), 0..16),
            prop::collection::vec(1usize..40, 1..6),
        ),
        |(msgs, sizes)| {
            let input = msgs.concat();
            let run = drive_client(&input, &sizes, true);
            prop_assert!(run.result.is_ok(), "{:?}", run.result);
            prop_assert!(
                run.left_in_inbuf == 0 || run.deferred,
                "{} left",
                run.left_in_inbuf
            );
            if let Err(e) = well_framed(&run.forwarded, FRONTEND_TAGS) {
                prop_assert!(false, "{}", e);
            }
            Ok(())
        },
    );
}

/// Every extended-protocol query passes through `answer_locally` before it goes to a server.
/// It allocated the list of the batch's statement names for the unnamed statement too: one
/// allocation per query of `pgbench -M extended` (1.10 per transaction in the load bench),
/// where the steady state should make none.
#[test]
fn an_unnamed_statement_batch_goes_to_a_server_without_an_allocation() {
    let registry = Registry::default();
    let mut client = ClientStatements::default();
    let mut up = Flow::default();
    let mut down = Flow::default();
    let mut batch = BytesMut::new();
    // pgbench -M extended: Parse, Bind, Describe portal, Execute, Sync, unnamed.
    for (tag, body) in [
        (
            b'P',
            &b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0"[..],
        ),
        (b'B', b"\0\0\0\0\0\x01\0\0\0\x0542195\0\0"),
        (b'D', b"P\0"),
        (b'E', b"\0\0\0\0\0"),
        (b'S', b""),
    ] {
        let body = body.to_vec();
        batch.extend_from_slice(
            &Msg {
                tag,
                len: Length::Right,
                body,
            }
            .bytes(),
        );
    }
    up.inbuf.reserve(batch.len());
    down.out.reserve(64);
    up.inbuf.extend_from_slice(&batch);
    let (answered, allocations) =
        counted(|| engine::answer_locally(&mut up, &mut down, &registry, &mut client));
    assert!(!answered, "an unnamed statement needs a server");
    assert_eq!(&up.inbuf[..], &batch[..], "left for the server unread");
    assert_eq!(allocations, 0, "allocations on the way to a server");
}

/// `answer_locally` looks ahead through the whole batch before a server is attached.
#[test]
fn fuzz_answer_locally() {
    let strategy = prop_oneof![
        stream(b"PCSQ").prop_map(|s| s.bytes()),
        prop::collection::vec(valid_msg(), 0..8).prop_map(|m| m.concat()),
        prop::collection::vec(any::<u8>(), 0..128),
    ];
    run("engine::answer_locally", strategy, |input| {
        let registry = Registry::default();
        let mut client = ClientStatements::default();
        let mut up = Flow::default();
        let mut down = Flow::default();
        up.inbuf.extend_from_slice(&input);
        let (answered, biggest) =
            watched(|| engine::answer_locally(&mut up, &mut down, &registry, &mut client));
        prop_assert!(biggest <= alloc_bound(input.len()));
        prop_assert!(down.out.len() <= input.len() + 16);
        if answered {
            if let Err(e) = well_framed(&down.out, b"13Z") {
                prop_assert!(false, "{}", e);
            }
        } else {
            prop_assert_eq!(
                &up.inbuf[..],
                &input[..],
                "consumed input it did not answer"
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Server → client framing.

#[test]
fn fuzz_server_framer() {
    run(
        "ServerSide::process",
        (
            prop::collection::vec(valid_msg(), 0..8),
            stream(BACKEND_TAGS),
            any::<bool>(),
        ),
        |(requests, s, rewrite)| {
            // Requests in flight first, so replies have something to match.
            let requests = requests.concat();
            let registry = Registry::default();
            let mut client_stmts = ClientStatements::default();
            let mut cache = ServerCache::default();
            let mut tracker = Tracker::default();
            let mut side = ClientSide::new(rewrite.then_some(Policy::Pin));
            let mut up = Flow::default();
            up.inbuf.extend_from_slice(&requests);
            {
                let mut stmts = rewrite.then_some(Statements {
                    registry: &registry,
                    client: &mut client_stmts,
                    server: &mut cache,
                    max: 3,
                });
                let _ = side.process(&mut up, &mut tracker, stmts.as_mut());
            }

            let input = s.bytes();
            let mut server = ServerSide::default();
            let mut down = Flow::default();
            let mut params = 0usize;
            let mut on_param = |_: &str, _: &str| params += 1;
            let mut max_capacity = 0;
            let (result, biggest) = watched(|| {
                for chunk in chunked(&input, &s.chunks) {
                    down.inbuf.extend_from_slice(chunk);
                    let r = server.process(
                        &mut down,
                        &mut tracker,
                        rewrite.then_some(&mut cache),
                        &mut on_param,
                    );
                    max_capacity = max_capacity
                        .max(down.inbuf.capacity())
                        .max(down.out.capacity());
                    down.out.clear();
                    r?;
                }
                Ok::<_, pooler::error::PoolerError>(())
            });
            prop_assert!(biggest <= alloc_bound(input.len() + requests.len()));
            prop_assert!(max_capacity <= alloc_bound(input.len() + requests.len()));
            if first_bad_frame(&s, None).is_some() {
                prop_assert!(result.is_err(), "malformed server framing was accepted");
            }
            Ok(())
        },
    );
}

/// Regression: a Sync whose length is negative or below 4, at the end of a prepare-only
/// batch, made `answer_locally` index with a wrapped length (a panic on client input).
#[test]
fn answer_locally_leaves_bad_lengths_to_the_framer() {
    let parse = Msg {
        tag: b'P',
        len: Length::Right,
        body: b"s1\0SELECT 1\0\0\0".to_vec(),
    }
    .bytes();
    for len in [i32::MIN, -4, -1, 0, 1, 3] {
        for prefix in [&[][..], &parse[..]] {
            let input = [prefix, &[b'S'][..], &len.to_be_bytes()[..], b"SELECT 1\0"].concat();
            let mut up = Flow::default();
            let mut down = Flow::default();
            up.inbuf.extend_from_slice(&input);
            let answered = engine::answer_locally(
                &mut up,
                &mut down,
                &Registry::default(),
                &mut ClientStatements::default(),
            );
            assert!(!answered, "len {len}");
            assert_eq!(&up.inbuf[..], &input[..]);
            // The framer refuses it.
            let run = drive_client(&input, &[input.len()], true);
            assert_eq!(run.result.unwrap_err().sqlstate(), "08P01", "len {len}");
        }
    }
}
