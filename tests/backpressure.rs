//! Clients that stop reading: the pooler stops reading the other side instead of buffering,
//! so its memory stays bounded, and other clients keep being served.
//!
//! The pooler runs in this test process, so its memory is this process's `VmRSS`. The tests
//! of this binary take turns (`MEMORY`) so that one's allocations do not blur another's figure.

mod common;
mod wire;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wire::*;

const LIMIT: Duration = Duration::from_secs(60);
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `written` stops growing (the writer is blocked) or `total` is reached.
async fn until_stalled(written: &AtomicU64, total: u64) -> u64 {
    let mut last = u64::MAX;
    let mut same = 0;
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = written.load(Ordering::Relaxed);
        if now >= total {
            return now;
        }
        if now == last {
            same += 1;
            if same >= 8 {
                return now;
            }
        } else {
            same = 0;
        }
        last = now;
    }
    written.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_result_gets_backpressure() {
    let _turn = MEMORY.lock().await;
    let pg = PgServer::shared();
    let db = pg.create_db("slowreader").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let other = pooler.client().await;
    assert_eq!(first_value(&other, "SELECT 1").await, "1");
    let mut slow = login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
    let before = rss_kib(None);
    // About 1 GB of result, never read.
    slow.write_all(&query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)",
    ))
    .await
    .unwrap();
    // Backpressure reaches Postgres: its backend waits to write to the pooler.
    let su = pg.superuser().await;
    assert!(
        eventually(LIMIT, || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND wait_event = 'ClientWrite' AND query LIKE 'SELECT repeat%'",
                &[&db],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await,
        "Postgres never blocked writing the result"
    );
    // Other clients are served meanwhile, on the pool's other server.
    for i in 0..50i32 {
        let row = other.query_one("SELECT $1::int", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    let after = rss_kib(None);
    println!("slow reader: test process RSS {before} -> {after} KiB with ~1 GB of result pending");
    assert!(
        after < before + 64 * 1024,
        "memory grew by {} KiB",
        after - before
    );
    // The client leaves: its server (mid-result) is closed, the query ends.
    drop(slow);
    assert!(
        eventually(LIMIT, || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                 AND query LIKE 'SELECT repeat%'",
                &[&db],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 0
        })
        .await
    );
    assert_eq!(first_value(&other, "SELECT 2").await, "2");
}

/// Regression: the pooler answers `Close` of a statement itself. A client that sent Closes
/// without reading the CloseCompletes made the pooler buffer them without bound; now it
/// stops reading that client once a buffer's worth is waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_the_poolers_own_replies_is_throttled() {
    let _turn = MEMORY.lock().await;
    let pg = PgServer::shared();
    let db = pg.create_db("closeflood").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let mut s = login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
    // Prepare s1 (answered without a server), then run it without a Sync: the server stays
    // attached to this client.
    s.write_all(&[msg(b'P', b"s1\0SELECT 1\0\0\0"), sync()].concat())
        .await
        .unwrap();
    read_until(&mut s, b'Z').await;
    s.write_all(
        &[
            msg(b'B', b"\0s1\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'H', &[]),
        ]
        .concat(),
    )
    .await
    .unwrap();
    read_until(&mut s, b'C').await;
    let before = rss_kib(None);
    // 128 MB of Close messages; their CloseCompletes are never read.
    let close = msg(b'C', b"Ss1\0");
    let chunk: Vec<u8> = close.repeat((1 << 20) / close.len());
    const CHUNKS: u64 = 128;
    let total = CHUNKS * chunk.len() as u64;
    let written = Arc::new(AtomicU64::new(0));
    let (_rd, mut wr) = s.into_split();
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            for _ in 0..CHUNKS {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let sent = until_stalled(&written, total).await;
    let after = rss_kib(None);
    println!(
        "close flood: {sent} of {total} bytes accepted before the pooler stopped reading; \
         test process RSS {before} -> {after} KiB"
    );
    assert!(
        sent < total,
        "the pooler read everything a non-reading client sent"
    );
    assert!(
        after < before + 32 * 1024,
        "memory grew by {} KiB",
        after - before
    );
    writer.abort();
    drop(_rd);
    // The pool still serves.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 3").await, "3");
}

/// Regression: the same flood behind a request the server has not answered yet (no Flush,
/// so Postgres keeps its reply buffered). The pooler's replies queued up in its request
/// tracker without bound; now it stops reading the client when too many requests are in
/// flight, and asks the server to flush so that they drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_replies_queued_behind_an_unanswered_request_are_bounded() {
    let _turn = MEMORY.lock().await;
    let pg = PgServer::shared();
    let db = pg.create_db("closepile").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let mut s = login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
    s.write_all(&[msg(b'P', b"s1\0SELECT 1\0\0\0"), sync()].concat())
        .await
        .unwrap();
    read_until(&mut s, b'Z').await;
    // Bind + Execute, no Flush, no Sync: Postgres holds the replies.
    s.write_all(&[msg(b'B', b"\0s1\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0")].concat())
        .await
        .unwrap();
    let before = rss_kib(None);
    let close = msg(b'C', b"Ss1\0");
    let chunk: Vec<u8> = close.repeat((1 << 20) / close.len());
    const CHUNKS: u64 = 128;
    let total = CHUNKS * chunk.len() as u64;
    let written = Arc::new(AtomicU64::new(0));
    let (rd, mut wr) = s.into_split();
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            for _ in 0..CHUNKS {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let sent = until_stalled(&written, total).await;
    let after = rss_kib(None);
    println!(
        "close pile-up: {sent} of {total} bytes accepted before the pooler stopped reading; \
         test process RSS {before} -> {after} KiB"
    );
    assert!(
        sent < total,
        "the pooler read everything a non-reading client sent"
    );
    assert!(
        after < before + 32 * 1024,
        "memory grew by {} KiB",
        after - before
    );
    writer.abort();
    drop(rd);
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 4").await, "4");
}
