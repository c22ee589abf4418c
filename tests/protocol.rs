//! The wire protocol through the pooler: simple, extended, pipelined, COPY, transactions,
//! errors, session parameters. Every test runs against a real Postgres.

mod common;

use common::*;
use futures_util::{SinkExt, TryStreamExt, pin_mut};
use tokio_postgres::SimpleQueryMessage;

const TX: &str = "pool_mode = \"transaction\"\ndefault_pool_size = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let pg = PgServer::shared();
    let db = pg.create_db("simple").await;
    let pooler = Pooler::start(pg, &db, TX).await;
    let c = pooler.client().await;

    let rows = c.simple_query("SELECT 1 AS one, 'x' AS two").await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.get("one"), Some("1"));
    assert_eq!(row.get("two"), Some("x"));

    let row = c
        .query_one(
            "SELECT $1::int + 1, current_database(), current_user",
            &[&41i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), db);
    assert_eq!(row.get::<_, String>(2), APP_USER);

    // A server error is relayed intact and the client keeps working.
    let err = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    let err = c
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
    let row = c.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_keep_their_order() {
    let pg = PgServer::shared();
    let db = pg.create_db("pipeline").await;
    let pooler = Pooler::start(pg, &db, TX).await;
    let c = pooler.client().await;
    let stmt = c.prepare("SELECT $1::int * 10").await.unwrap();
    // tokio-postgres pipelines requests that are polled together.
    let futures: Vec<_> = (0..50i32)
        .map(|i| {
            let c = &c;
            let stmt = &stmt;
            async move { c.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_roll_back() {
    let pg = PgServer::shared();
    let db = pg.create_db("txn").await;
    let pooler = Pooler::start(pg, &db, TX).await;
    let mut c = pooler.client().await;
    c.batch_execute("CREATE TABLE t (v int)").await.unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();

    // A failed transaction stays failed until ROLLBACK, on the same server.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    let err = c.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"));
    c.batch_execute("ROLLBACK").await.unwrap();

    let direct = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    let rows: Vec<i32> = direct
        .query("SELECT v FROM t ORDER BY v", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let pg = PgServer::shared();
    let db = pg.create_db("copy").await;
    let pooler = Pooler::start(pg, &db, TX).await;
    let c = pooler.client().await;
    c.batch_execute("CREATE TABLE c (id int, name text)")
        .await
        .unwrap();

    // Large enough to cross many relay buffers.
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tname-{i}\n"));
    }
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    pin_mut!(sink);
    for chunk in data.as_bytes().chunks(7_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);

    let stream = c
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A failed COPY leaves no rows and the session usable.
    let bad = c
        .copy_in::<_, bytes::Bytes>("COPY c FROM STDIN")
        .await
        .unwrap();
    pin_mut!(bad);
    bad.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = bad.finish().await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"));
    let row = c.query_one("SELECT count(*) FROM c", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_cross_buffers_intact() {
    let pg = PgServer::shared();
    let db = pg.create_db("large").await;
    let pooler = Pooler::start(pg, &db, TX).await;
    let c = pooler.client().await;
    let rows = c
        .query(
            "SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3000);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 + 1);
        assert_eq!(r.get::<_, String>(1).len(), 1000);
    }
    // One value larger than the relay's buffer cap.
    let big: String = c
        .query_one("SELECT repeat('y', 5000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 5_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_hold_on_every_server() {
    let pg = PgServer::shared();
    let db = pg.create_db("params").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    // `options` carries settings (`-c name=value`), applied per client like startup values.
    let url = format!(
        "{} application_name=alpha options='-c TimeZone=UTC'",
        pooler.app_url()
    );
    let c = connect(&url).await;
    let tz: String = c.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    drop(c);
    // Any other switch cannot be applied per client: refused like PgBouncer does.
    let url = format!("{} options='-B 100'", pooler.app_url());
    let err = try_connect(&url).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"));
    assert_eq!(message(&err), "unsupported startup parameter: options");

    let a = connect(&format!("{} application_name=alpha", pooler.app_url())).await;
    let b = connect(&format!("{} application_name=beta", pooler.app_url())).await;
    // One server, two clients: each sees its own application_name on it.
    for _ in 0..3 {
        let name: String = a
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "alpha");
        let name: String = b
            .query_one("SHOW application_name", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "beta");
    }
    // A SET outside a transaction follows its client (ParameterStatus is tracked) ...
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let tz: String = b.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_ne!(tz, "Asia/Tokyo", "SET leaked to another client");
    let tz: String = a.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "Asia/Tokyo");
}
