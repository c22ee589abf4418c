//! The engine driven by hand: one client and one server, no sockets.

use super::*;
use crate::prepared::{ClientStatements, Registry, ServerCache};
use crate::wire;
use postgres_protocol::message::frontend;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn tags(mut buf: &[u8]) -> String {
    let mut out = String::new();
    while let Some((tag, len)) = wire::header(buf) {
        out.push(tag as char);
        buf = &buf[1 + len as usize..];
    }
    out
}

/// One client and one server, driven by hand.
struct Rig {
    up: Flow,
    down: Flow,
    client: ClientSide,
    server: ServerSide,
    tracker: Tracker,
    stmts: ClientStatements,
    cache: ServerCache,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            up: Flow::default(),
            down: Flow::default(),
            client: ClientSide::default(),
            server: ServerSide::default(),
            tracker: Tracker::default(),
            stmts: ClientStatements::default(),
            cache: ServerCache::default(),
        }
    }

    /// Client bytes in; what goes to the server out.
    fn send(&mut self, registry: &Registry, bytes: &[u8]) -> Vec<u8> {
        self.up.inbuf.extend_from_slice(bytes);
        let mut s = Statements {
            registry,
            client: &mut self.stmts,
            server: &mut self.cache,
            max: 10,
        };
        self.client
            .process(&mut self.up, &mut self.tracker, Some(&mut s))
            .unwrap();
        if self.down.at_boundary() {
            self.tracker.emit_synthetic(&mut self.down.out);
        }
        self.up.out.split().to_vec()
    }

    /// Server bytes in; what goes to the client out.
    fn reply(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.down.inbuf.extend_from_slice(bytes);
        self.process_reply();
        self.down.out.split().to_vec()
    }

    /// Processes the server bytes in `down.inbuf` into `down.out`.
    fn process_reply(&mut self) {
        self.server
            .process(
                &mut self.down,
                &mut self.tracker,
                Some(&mut self.cache),
                &mut |_, _| {},
            )
            .unwrap();
    }
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    frontend::parse(name, sql, [], &mut b).unwrap();
    b.to_vec()
}

fn bind_execute_sync(stmt: &str) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    frontend::bind(
        "",
        stmt,
        [],
        [0i32; 0],
        |_: i32,
         _: &mut bytes::BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::No)
        },
        [],
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    b.to_vec()
}

#[test]
fn injected_parse_is_hidden_and_known_parse_is_answered_in_order() {
    let registry = Registry::default();
    let mut a = Rig::new();
    let mut batch = parse("s1", "select 1");
    batch.extend(msg(b'S', b""));
    let to_server = a.send(&registry, &batch);
    assert_eq!(tags(&to_server), "CPS");
    assert!(to_server.windows(8).any(|w| w == b"POOLER_1"));
    let mut replies = msg(b'3', b"");
    replies.extend(msg(b'1', b""));
    replies.extend(msg(b'Z', b"I"));
    assert_eq!(tags(&a.reply(&replies)), "1Z");

    // The client moves to a server that never saw the statement: Parse is injected.
    let mut b = Rig {
        stmts: std::mem::take(&mut a.stmts),
        ..Rig::new()
    };
    let to_server = b.send(&registry, &bind_execute_sync("s1"));
    assert_eq!(tags(&to_server), "CPBES");
    let mut replies = msg(b'3', b"");
    replies.extend(msg(b'1', b""));
    replies.extend(msg(b'2', b""));
    replies.extend(msg(b'C', b"SELECT 1\0"));
    replies.extend(msg(b'Z', b"I"));
    assert_eq!(
        tags(&b.reply(&replies)),
        "2CZ",
        "the injected ParseComplete is hidden"
    );
    assert!(b.tracker.is_idle());

    // Parsing it again where it exists, and closing it: answered by the pooler, in turn.
    let mut batch = parse("s2", "select 1");
    let mut close = bytes::BytesMut::new();
    frontend::close(b'S', "s2", &mut close).unwrap();
    batch.extend_from_slice(&close);
    batch.extend(msg(b'S', b""));
    let to_server = b.send(&registry, &batch);
    assert_eq!(
        tags(&to_server),
        "S",
        "neither Parse nor Close reaches the server"
    );
    assert_eq!(tags(&b.reply(&msg(b'Z', b"I"))), "13Z");
}

#[test]
fn an_error_skips_the_rest_of_the_batch_and_forgets_unprepared_statements() {
    let registry = Registry::default();
    let mut a = Rig::new();
    a.send(&registry, &parse("s1", "select 1"));
    a.send(&registry, &msg(b'S', b""));
    a.reply(&[msg(b'3', b""), msg(b'1', b""), msg(b'Z', b"I")].concat());
    // On a fresh server: a failing unnamed Bind, then a Bind that injects s1, then Sync.
    let mut b = Rig {
        stmts: std::mem::take(&mut a.stmts),
        ..Rig::new()
    };
    let mut batch = bind_execute_sync("");
    batch.truncate(batch.len() - 5); // drop the Sync
    batch.extend(bind_execute_sync("s1"));
    let to_server = b.send(&registry, &batch);
    assert_eq!(tags(&to_server), "BECPBES");
    let mut err = bytes::BytesMut::new();
    wire::error_response(&mut err, "ERROR", "26000", "no such statement");
    let out = b.reply(&[err.to_vec(), msg(b'Z', b"I")].concat());
    assert_eq!(tags(&out), "EZ");
    assert!(b.tracker.is_idle());
    // The injected Parse was skipped by the server: it must be injected again next time.
    let to_server = b.send(&registry, &bind_execute_sync("s1"));
    assert_eq!(tags(&to_server), "CPBES");
}

#[test]
fn syncs_sent_during_copy_in_get_no_reply() {
    let registry = Registry::default();
    let mut r = Rig::new();
    // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
    let mut batch = bind_execute_sync("");
    batch.extend(msg(b'd', b"1\n"));
    batch.extend(msg(b'c', b""));
    batch.extend(msg(b'S', b""));
    assert_eq!(tags(&r.send(&registry, &batch)), "BESdcS");
    let replies = [
        msg(b'2', b""),
        msg(b'G', b"\0\0\0"),
        msg(b'C', b"COPY 1\0"),
        msg(b'Z', b"I"),
    ]
    .concat();
    assert_eq!(tags(&r.reply(&replies)), "2GCZ");
    assert!(
        r.tracker.is_idle(),
        "the Sync ignored in COPY mode is not awaited"
    );
}

#[test]
fn bad_lengths_and_types_are_errors() {
    let registry = Registry::default();
    for bad in [
        &b"Q\x00\x00\x00\x02"[..],
        b"Q\x7f\xff\xff\xff",
        &msg(b'p', b"pw\0"),
        &msg(b'P', b"no-terminator"),
    ] {
        let mut r = Rig::new();
        r.up.inbuf.extend_from_slice(bad);
        let mut s = Statements {
            registry: &registry,
            client: &mut r.stmts,
            server: &mut r.cache,
            max: 10,
        };
        assert!(
            r.client
                .process(&mut r.up, &mut r.tracker, Some(&mut s))
                .is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn a_whole_reply_is_forwarded_without_a_copy() {
    let registry = Registry::default();
    let mut rig = Rig::new();
    let q = msg(b'Q', b"SELECT 1\0");
    rig.send(&registry, &q);
    let mut reply = msg(b'T', &[0, 0]);
    reply.extend(msg(b'D', &[0, 0]));
    reply.extend(msg(b'C', b"SELECT 1\0"));
    reply.extend(msg(b'Z', b"I"));
    rig.down.out = bytes::BytesMut::with_capacity(64);
    rig.down.inbuf = bytes::BytesMut::with_capacity(4096);
    rig.down.inbuf.extend_from_slice(&reply);
    let input_at = rig.down.inbuf.as_ptr();
    rig.process_reply();
    assert_eq!(&rig.down.out[..], &reply[..]);
    assert_eq!(
        rig.down.out.as_ptr(),
        input_at,
        "the input buffer became the output"
    );
    assert!(rig.down.inbuf.is_empty());
    assert!(rig.tracker.is_idle());
}

#[test]
fn held_messages_keep_their_order_around_a_partial_one() {
    let registry = Registry::default();
    let mut rig = Rig::new();
    rig.send(&registry, &msg(b'Q', b"SELECT 1\0"));
    let mut reply = msg(b'T', &[0, 0]);
    reply.extend(msg(b'D', &[7; 100]));
    reply.extend(msg(b'C', b"SELECT 1\0"));
    reply.extend(msg(b'Z', b"I"));
    // Every split point: what the client gets is the reply, unchanged and in order.
    for cut in 1..reply.len() {
        let mut rig = Rig::new();
        rig.send(&registry, &msg(b'Q', b"SELECT 1\0"));
        let mut got = rig.reply(&reply[..cut]);
        got.extend(rig.reply(&reply[cut..]));
        assert_eq!(got, reply, "cut at {cut}");
        assert!(rig.tracker.is_idle());
    }
}
