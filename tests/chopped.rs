//! The pooler with every byte stream chopped: clients reach it through a chopping relay
//! (`common::chop`) and it reaches Postgres through another, so that messages arrive in
//! random 1–1500-byte pieces with sub-millisecond pauses on both sides. `CHOP_SEED` replays
//! the cuts of a failed run (its seed is printed).

mod common;

use common::chop::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// The relay itself: a few MB each way arrive intact and in order, and EOF passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopper_forwards_bytes_intact_both_ways() {
    let _bound = deadline("chopper_forwards_bytes_intact_both_ways", LIMIT);
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
    let chop = Chopper::start(target, "echo").await;
    let s = tokio::net::TcpStream::connect(chop.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(LIMIT, r.read_to_end(&mut back))
        .await
        .expect("echo through the chopper")
        .unwrap();
    writer.await.unwrap();
    server.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes changed on the way");
}

/// A chopper in front of Postgres directly: logins and queries work through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_a_chopper() {
    let _bound = deadline("postgres_through_a_chopper", LIMIT);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_pg").await;
    let chop = Chopper::start(SocketAddr::from(([127, 0, 0, 1], pg.port)), "pg").await;
    let url = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        chop.port()
    );
    let c = tokio::time::timeout(LIMIT, connect(&url))
        .await
        .expect("login");
    let row = tokio::time::timeout(LIMIT, c.query_one("SELECT $1::int + 1", &[&41i32]))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}
