//! The pooler with every byte stream chopped: clients reach it through a chopping relay
//! (`common::chop`) and it reaches Postgres through another, so that messages arrive in
//! random 1–1500-byte pieces with sub-millisecond pauses on both sides. `CHOP_SEED` replays
//! the cuts of a failed run (its seed is printed).

mod common;
mod scenario;
mod wire;

use common::chop::*;
use common::*;
use futures_util::{SinkExt, TryStreamExt, pin_mut};
use scenario::Via;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

/// A bound on each wait.
const LIMIT: Duration = Duration::from_secs(60);
/// A bound on each whole test.
const WHOLE: Duration = Duration::from_secs(180);

const TX2: &str = "pool_mode = \"transaction\"\ndefault_pool_size = 2";

/// `fut`, or a panic naming `what` after `LIMIT`.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {LIMIT:?}"))
}

fn first_cell(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

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

// ---------------------------------------------------------------------------------------
// The differential scenarios (tests/scenario), with both sides of the pooler chopped.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopped_startup_search_path_stays_with_each_client() {
    let _bound = deadline("chopped_startup_search_path_stays_with_each_client", WHOLE);
    scenario::startup_search_path_stays_with_each_client(Via::Chopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopped_resets_return_to_startup_values() {
    let _bound = deadline("chopped_resets_return_to_startup_values", WHOLE);
    scenario::resets_return_to_startup_values(Via::Chopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopped_deallocate_affects_only_its_client() {
    let _bound = deadline("chopped_deallocate_affects_only_its_client", WHOLE);
    scenario::deallocate_affects_only_its_client(Via::Chopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chopped_statement_names_and_error_recovery_as_postgres() {
    let _bound = deadline(
        "chopped_statement_names_and_error_recovery_as_postgres",
        WHOLE,
    );
    scenario::statement_names_and_error_recovery_as_postgres(Via::Chopped).await;
}

// ---------------------------------------------------------------------------------------
// tokio-postgres traffic through both choppers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_chopped() {
    let _bound = deadline("simple_and_extended_queries_chopped", WHOLE);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_simple").await;
    let chopped = Chopped::start(pg, &db, TX2).await;
    let c = within("login", chopped.client()).await;

    let rows = within(
        "simple",
        c.simple_query("SELECT 1 AS one, 'x' AS two; SELECT 2"),
    )
    .await
    .unwrap();
    let values: Vec<(Option<String>, usize)> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0).map(str::to_string), r.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        values,
        vec![(Some("1".to_string()), 2), (Some("2".to_string()), 1)]
    );

    let row = within(
        "extended",
        c.query_one(
            "SELECT $1::int + 1, current_database(), current_user, $2::text",
            &[&41i32, &"é".repeat(3000)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), db);
    assert_eq!(row.get::<_, String>(2), APP_USER);
    assert_eq!(row.get::<_, String>(3), "é".repeat(3000));

    let err = within("1/0", c.simple_query("SELECT 1/0"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    let err = within("no table", c.query("SELECT * FROM no_such_table", &[]))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));

    // Many rows of mixed sizes: every DataRow boundary lands somewhere in a piece.
    let rows = within(
        "rows",
        c.query(
            "SELECT g, repeat(chr(97 + g % 26), g % 2000) FROM generate_series(1, 3000) g",
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 3000);
    for (i, r) in rows.iter().enumerate() {
        let g = i as i32 + 1;
        assert_eq!(r.get::<_, i32>(0), g);
        let text: String = r.get(1);
        assert_eq!(text.len(), (g % 2000) as usize);
        assert!(text.bytes().all(|b| b == b'a' + (g % 26) as u8));
    }
    let row = within("after", c.query_one("SELECT 7", &[])).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

/// Pipelined extended queries keep their order; an error in the middle of the pipeline fails
/// only its own query outside a transaction, and everything after it inside one (25P02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_errors_mid_pipeline_chopped() {
    let _bound = deadline("pipelines_and_errors_mid_pipeline_chopped", WHOLE);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_pipe").await;
    let chopped = Chopped::start(pg, &db, TX2).await;
    let mut c = within("login", chopped.client()).await;
    let stmt = within("prepare", c.prepare("SELECT 1000 / $1::int, $1::int"))
        .await
        .unwrap();

    // Outside a transaction: each query has its own Sync; a zero divisor fails only itself.
    let futures: Vec<_> = (0..60i32)
        .map(|i| {
            let c = &c;
            let stmt = &stmt;
            async move {
                c.query_one(stmt, &[&(i % 7)])
                    .await
                    .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
            }
        })
        .collect();
    let results = within("pipeline", futures_util::future::join_all(futures)).await;
    for (i, r) in results.into_iter().enumerate() {
        let d = i as i32 % 7;
        match r {
            Ok(v) => {
                assert_ne!(d, 0, "query {i} should have failed");
                assert_eq!(v, (1000 / d, d), "query {i}");
            }
            Err(e) => {
                assert_eq!(d, 0, "query {i}: {e}");
                assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "query {i}");
            }
        }
    }

    // Inside a transaction: the error aborts it, and the rest of the pipeline gets 25P02.
    within("create", c.batch_execute("CREATE TABLE p (v int)"))
        .await
        .unwrap();
    let tx = within("begin", c.transaction()).await.unwrap();
    let insert = within(
        "prepare insert",
        tx.prepare("INSERT INTO p VALUES (10 / $1::int)"),
    )
    .await
    .unwrap();
    let futures: Vec<_> = (0..20i32)
        .map(|i| {
            let tx = &tx;
            let insert = &insert;
            async move {
                let divisor = if i == 10 { 0 } else { 1 };
                tx.execute(insert, &[&divisor]).await
            }
        })
        .collect();
    let results = within("tx pipeline", futures_util::future::join_all(futures)).await;
    for (i, r) in results.iter().enumerate() {
        match i {
            0..10 => assert_eq!(r.as_ref().ok(), Some(&1), "insert {i}"),
            10 => assert_eq!(
                r.as_ref().err().and_then(sqlstate).as_deref(),
                Some("22012")
            ),
            _ => assert_eq!(
                r.as_ref().err().and_then(sqlstate).as_deref(),
                Some("25P02"),
                "insert {i}"
            ),
        }
    }
    within("rollback", tx.rollback()).await.unwrap();
    let n: i64 = within("count", c.query_one("SELECT count(*) FROM p", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the failed transaction left rows");
}

/// COPY IN and OUT of a few MB, and a COPY that fails halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_chopped() {
    let _bound = deadline("copy_in_and_out_chopped", WHOLE);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_copy").await;
    let chopped = Chopped::start(pg, &db, TX2).await;
    let c = within("login", chopped.client()).await;
    within(
        "create",
        c.batch_execute("CREATE TABLE c (id int, name text)"),
    )
    .await
    .unwrap();
    let mut data = String::new();
    for i in 0..80_000 {
        data.push_str(&format!("{i}\tname-{i}-{}\n", "z".repeat(i % 60)));
    }
    assert!(data.len() > 3_000_000);
    let sink = within("copy in", c.copy_in("COPY c FROM STDIN"))
        .await
        .unwrap();
    pin_mut!(sink);
    for chunk in data.as_bytes().chunks(9_000) {
        within("copy data", sink.send(bytes::Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    let n = within("copy done", sink.finish()).await.unwrap();
    assert_eq!(n, 80_000);

    let stream = within(
        "copy out",
        c.copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT"),
    )
    .await
    .unwrap();
    let chunks: Vec<bytes::Bytes> = within("copy out data", stream.try_collect()).await.unwrap();
    assert!(chunks.concat() == data.as_bytes(), "COPY OUT differs");

    let bad = within(
        "bad copy",
        c.copy_in::<_, bytes::Bytes>("COPY c FROM STDIN"),
    )
    .await
    .unwrap();
    pin_mut!(bad);
    within(
        "bad data",
        bad.send(bytes::Bytes::from(format!(
            "1\tok\n{}\tx\n",
            "n".repeat(5000)
        ))),
    )
    .await
    .unwrap();
    let err = within("bad finish", bad.finish()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"));
    let n: i64 = within("count", c.query_one("SELECT count(*) FROM c", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 80_000);
}

/// A 1 MB query in both protocols, and a 5 MB value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_query_chopped() {
    let _bound = deadline("one_megabyte_query_chopped", WHOLE);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_big").await;
    let chopped = Chopped::start(pg, &db, TX2).await;
    let c = within("login", chopped.client()).await;
    let n = 1024 * 1024;
    let sql = format!("SELECT length('{}')", "x".repeat(n));
    let rows = within("1 MB simple", c.simple_query(&sql)).await.unwrap();
    assert_eq!(first_cell(&rows), Some(n.to_string()));
    let row = within("1 MB extended", c.query_one(&sql, &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, n);
    let big: String = within(
        "5 MB value",
        c.query_one("SELECT repeat('y', 5000000)", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(big.len(), 5_000_000);
    assert!(big.bytes().all(|b| b == b'y'));
    // Another client is served afterwards.
    let other = within("login 2", chopped.client()).await;
    let rows = within("other", other.simple_query("SELECT 42"))
        .await
        .unwrap();
    assert_eq!(first_cell(&rows).as_deref(), Some("42"));
}

/// Many clients with different startup parameters on a pool of 2: each keeps its own
/// `application_name` (tokio-postgres) or `search_path` (raw startup packets) on every
/// transaction, and its writes are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_with_their_own_parameters_chopped() {
    let _bound = deadline("many_clients_with_their_own_parameters_chopped", WHOLE);
    let pg = PgServer::shared();
    let db = pg.create_db("chop_many").await;
    let direct = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    direct
        .batch_execute(
            "CREATE SCHEMA s1; CREATE SCHEMA s2;
             CREATE TABLE s1.t (v text); INSERT INTO s1.t VALUES ('s1');
             CREATE TABLE s2.t (v text); INSERT INTO s2.t VALUES ('s2');
             CREATE TABLE public.t (v text); INSERT INTO public.t VALUES ('public');
             CREATE TABLE public.log (who text, n int);",
        )
        .await
        .unwrap();
    let chopped = Chopped::start(pg, &db, TX2).await;
    const CLIENTS: usize = 12;
    const ROUNDS: i32 = 8;
    let url = chopped.app_url();
    let drivers = (0..CLIENTS).map(|i| {
        let url = url.clone();
        async move {
            let name = format!("client{i}");
            let mut c = connect(&format!("{url} application_name={name}")).await;
            for n in 0..ROUNDS {
                let tx = c.transaction().await.unwrap();
                let seen: String = tx
                    .query_one("SELECT current_setting('application_name')", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(seen, name, "round {n}");
                tx.execute(
                    "INSERT INTO public.log VALUES (current_setting('application_name'), $1)",
                    &[&n],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                let seen = first_value(&c, "SHOW application_name").await;
                assert_eq!(seen, name, "round {n}, outside a transaction");
            }
        }
    });
    let addr = chopped.addr();
    let db2 = db.clone();
    let raws = (0..4usize).map(|i| {
        let db = db2.clone();
        async move {
            let schema = ["s1", "s2"][i % 2];
            let (s, _) = wire::login_params(
                addr,
                APP_USER,
                APP_PASSWORD,
                &db,
                &[("search_path", schema), ("application_name", "raw")],
            )
            .await
            .unwrap();
            let mut raw = wire::Raw::new(s);
            for n in 0..ROUNDS {
                let seen = raw.simple("SELECT v FROM t").await;
                assert_eq!(seen.errors, Vec::<String>::new(), "round {n}");
                assert_eq!(seen.rows, vec![vec![Some(schema.to_string())]], "round {n}");
            }
        }
    });
    within(
        "clients",
        futures_util::future::join(
            futures_util::future::join_all(drivers),
            futures_util::future::join_all(raws),
        ),
    )
    .await;
    let rows = direct
        .query(
            "SELECT who, count(*), sum(n) FROM public.log GROUP BY who ORDER BY who",
            &[],
        )
        .await
        .unwrap();
    let mut want: Vec<String> = (0..CLIENTS).map(|i| format!("client{i}")).collect();
    want.sort();
    let got: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let sum = (0..ROUNDS as i64).sum::<i64>();
    assert_eq!(
        got,
        want.into_iter()
            .map(|w| (w, ROUNDS as i64, sum))
            .collect::<Vec<_>>()
    );
    // The pool held at most 2 servers for all of them.
    let mine: i32 = direct
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let servers: Vec<i32> = chopped
        .pooler
        .server_pids(pg)
        .await
        .into_iter()
        .filter(|p| *p != mine)
        .collect();
    assert!(servers.len() <= 2, "{servers:?}");
}

/// Issue 13: settings changed by SET, set_config, startup parameters and `options` follow each
/// client with Postgres's transaction semantics while clients share one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_each_client() {
    scenario::session_settings_follow_each_client(Via::Chopped).await;
}
