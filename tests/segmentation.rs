//! Messages of any size, split across any number of reads: what a real network delivers.
//! Each test bounds its wait, so a pooler that stalls on a half-read message fails instead of
//! hanging the suite.

mod common;
mod wire;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;
use wire::*;

const TX1: &str = "pool_mode = \"transaction\"\ndefault_pool_size = 1";

fn addr(pooler: &Pooler) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pooler.port()))
}

/// `SELECT length('xxx...')` with a literal of `n` bytes: the answer proves the whole text
/// reached Postgres.
fn long_select(n: usize) -> String {
    format!("SELECT length('{}')", "x".repeat(n))
}

fn first_cell(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Writes `bytes` in pieces of `piece` bytes with a pause between them.
async fn write_in_pieces(s: &mut TcpStream, bytes: &[u8], piece: usize, pause: Duration) {
    for chunk in bytes.chunks(piece) {
        s.write_all(chunk).await.expect("write");
        s.flush().await.expect("flush");
        tokio::time::sleep(pause).await;
    }
}

/// The regression for the livelock: a query larger than one read (20 KB, 1 MB) used to make
/// the session loop check a server out and in forever without reading the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_larger_than_one_read_are_answered() {
    let _bound = deadline(
        "queries_larger_than_one_read_are_answered",
        HANG + Duration::from_secs(15),
    );
    let pg = PgServer::shared();
    let db = pg.create_db("seg_large").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let c = pooler.client().await;
    for n in [20 * 1024, 100 * 1024, 1024 * 1024] {
        let rows = tokio::time::timeout(HANG, c.simple_query(&long_select(n)))
            .await
            .unwrap_or_else(|_| panic!("no answer to a {n}-byte query"))
            .expect("query");
        assert_eq!(first_cell(&rows), Some(n.to_string()));
        // The extended protocol too (Parse of the same size).
        let row = tokio::time::timeout(HANG, c.query_one(&long_select(n), &[]))
            .await
            .unwrap_or_else(|_| panic!("no answer to a {n}-byte Parse"))
            .expect("query");
        assert_eq!(row.get::<_, i32>(0) as usize, n);
    }
    // Another client is served meanwhile and afterwards: nothing spins.
    let other = pooler.client().await;
    let rows = tokio::time::timeout(HANG, other.simple_query("SELECT 42"))
        .await
        .expect("second client answered")
        .unwrap();
    assert_eq!(first_cell(&rows).as_deref(), Some("42"));
}

/// A 3 KB query in two TCP segments 5 ms apart, as any real network may deliver it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_two_segments_is_answered() {
    let _bound = deadline(
        "a_query_in_two_segments_is_answered",
        HANG + Duration::from_secs(15),
    );
    let pg = PgServer::shared();
    let db = pg.create_db("seg_two").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let mut s = login(addr(&pooler), APP_USER, APP_PASSWORD, &db).await;
    let q = query(&long_select(3000));
    for split in [1, 3, 5, 6, 1500, q.len() - 1] {
        s.write_all(&q[..split]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(&q[split..]).await.unwrap();
        let msgs = read_until(&mut s, b'Z').await;
        let row = msgs
            .iter()
            .find(|(t, _)| *t == b'D')
            .unwrap_or_else(|| panic!("no row for split at {split}: {msgs:?}"));
        assert!(
            row.1.ends_with(b"3000"),
            "split at {split}: {:?}",
            String::from_utf8_lossy(&row.1)
        );
    }
    // The single server is free again for another client.
    let c = pooler.client().await;
    let rows = tokio::time::timeout(HANG, c.simple_query("SELECT 1"))
        .await
        .expect("other client answered")
        .unwrap();
    assert_eq!(first_cell(&rows).as_deref(), Some("1"));
}

/// Small pipelined Parse/Bind/Execute/Sync batches delivered in 1000-byte pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_in_small_pieces_are_all_answered() {
    let _bound = deadline(
        "pipelined_batches_in_small_pieces_are_all_answered",
        HANG + Duration::from_secs(15),
    );
    let pg = PgServer::shared();
    let db = pg.create_db("seg_pipe").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let mut s = login(addr(&pooler), APP_USER, APP_PASSWORD, &db).await;
    const BATCHES: usize = 60;
    let mut bytes = Vec::new();
    for i in 0..BATCHES {
        let pad = "p".repeat(200);
        bytes.extend(extended(&format!(
            "SELECT {i} + 1000000 WHERE '{pad}' <> ''"
        )));
        bytes.extend(sync());
    }
    let writer = async {
        write_in_pieces(&mut s, &bytes, 1000, Duration::from_millis(10)).await;
        s
    };
    let mut s = tokio::time::timeout(HANG, writer).await.expect("writes");
    let msgs = read_messages(&mut s, |m| {
        m.iter().filter(|(t, _)| *t == b'Z').count() == BATCHES
    })
    .await;
    let mut rows = Vec::new();
    for (tag, body) in msgs {
        match tag {
            b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            b'E' => panic!("error: {:?}", pooler::wire::error_fields(&body)),
            _ => {}
        }
    }
    let expected: Vec<String> = (0..BATCHES).map(|i| (i + 1_000_000).to_string()).collect();
    assert_eq!(rows, expected);
}

/// Messages over 16 MB are streamed, not refused: a 20 MB ErrorResponse from Postgres, a
/// 17 MB unnamed Parse, a 100 MB simple query (Postgres allows up to 1 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_16_mb_pass_both_ways() {
    let _bound = deadline(
        "messages_over_16_mb_pass_both_ways",
        HANG + Duration::from_secs(15),
    );
    let pg = PgServer::shared();
    let db = pg.create_db("seg_huge").await;
    let pooler = Pooler::start(pg, &db, TX1).await;
    let c = pooler.client().await;
    let n = 20 * 1024 * 1024;
    let err = tokio::time::timeout(
        HANG,
        c.simple_query(&format!("SELECT repeat('x', {n})::int")),
    )
    .await
    .expect("answered")
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"));
    assert!(message(&err).len() > n, "the whole message arrives");
    // The session goes on.
    let rows = c.simple_query("SELECT 5").await.unwrap();
    assert_eq!(first_cell(&rows).as_deref(), Some("5"));

    let mut raw = Raw::new(login(addr(&pooler), APP_USER, APP_PASSWORD, &db).await);
    let big = 17 * 1024 * 1024;
    let mut bytes = extended(&long_select(big));
    bytes.extend(sync());
    raw.send(&bytes).await;
    let seen = raw.until_ready().await;
    assert!(seen.errors.is_empty(), "{seen:?}");
    assert_eq!(seen.rows, vec![vec![Some(big.to_string())]]);
    // A text too large to read pins its client (it might create session state): let the
    // one server go.
    drop(raw);

    let huge = 100 * 1024 * 1024;
    let rows = tokio::time::timeout(HANG, c.simple_query(&long_select(huge)))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(first_cell(&rows), Some(huge.to_string()));
}
