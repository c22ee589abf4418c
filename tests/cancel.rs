//! Cancel requests: forwarded, with the real backend's key, to the server the client is using.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

async fn sleeping_backends(pg: &PgServer, db: &str) -> i64 {
    let su = pg.superuser().await;
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
         AND query LIKE 'SELECT pg_sleep%'",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_and_wrong_keys_cancel_nothing() {
    let pg = PgServer::shared();
    let db = pg.create_db("cancel").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let victim = pooler.client().await;
    let token = victim.cancel_token();
    let bystander = pooler.client().await;
    let sleeper = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    assert!(
        eventually(Duration::from_secs(20), || async {
            sleeping_backends(pg, &db).await == 1
        })
        .await
    );

    // A cancel with a wrong secret (and one for an idle client) cancels nothing.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", pooler.port()))
        .await
        .unwrap();
    let mut msg = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(12345, 678, &mut msg);
    raw.write_all(&msg).await.unwrap();
    drop(raw);
    bystander
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    assert_eq!(first_value(&bystander, "SELECT 1").await, "1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sleeping_backends(pg, &db).await,
        1,
        "a wrong key cancelled the query"
    );
    assert!(!sleeper.is_finished());

    // The right key, through the pooler: the query stops with 57014.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert_eq!(sleeping_backends(pg, &db).await, 0);
}

/// A cancel for client A never cancels client B's query, however A's transactions and its
/// cancels race B's for the one server (issue: the target was looked up, then the cancel sent
/// while the server already ran B's query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_hits_the_next_client() {
    let pg = PgServer::shared();
    let db = pg.create_db("cancel_race").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let a = pooler.client().await;
    let b = pooler.client().await;
    let token = a.cancel_token();
    const ROUNDS: usize = 150;
    let bystander = tokio::spawn(async move {
        let mut cancelled = 0;
        for _ in 0..ROUNDS {
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                b.simple_query("SELECT pg_sleep(0.002)"),
            )
            .await
            .expect("bystander query answered");
            if let Err(e) = r {
                assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
                cancelled += 1;
            }
        }
        cancelled
    });
    let mut a_cancelled = 0;
    for i in 0..ROUNDS {
        let cancel = async {
            // Spread the cancel over the query's life: before, during and after it.
            tokio::time::sleep(Duration::from_micros((i % 7) as u64 * 150)).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(20),
                token.cancel_query(tokio_postgres::NoTls),
            )
            .await;
        };
        let (r, ()) = tokio::join!(
            tokio::time::timeout(
                Duration::from_secs(60),
                a.simple_query("SELECT pg_sleep(0.001)")
            ),
            cancel
        );
        if r.expect("query answered").is_err() {
            a_cancelled += 1;
        }
    }
    let b_cancelled = tokio::time::timeout(Duration::from_secs(120), bystander)
        .await
        .expect("bystander done")
        .unwrap();
    assert_eq!(
        b_cancelled, 0,
        "B's queries cancelled by A's cancels (A had {a_cancelled})"
    );
}
