//! Protocol-level prepared statements in transaction mode: a driver's named statements work
//! on whichever server the client lands on.

mod common;
mod wire;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_reused_across_transactions_by_many_clients_over_a_small_pool() {
    let pg = PgServer::shared();
    let db = pg.create_db("prepmany").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 3",
    )
    .await;
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for id in 0..30i32 {
        let url = pooler.app_url();
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            // Each client prepares once and reuses the statements in many transactions.
            let insert = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
            let select = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
            // Same name on every connection (tokio-postgres numbers them s0, s1, ...), a
            // different text per client: names must not collide across clients.
            let own = c.prepare(&format!("SELECT {id} + $1::int")).await.unwrap();
            for round in 0..20i32 {
                let k = id * 1000 + round;
                c.execute(&insert, &[&k, &format!("v{k}")]).await.unwrap();
                let v: String = c.query_one(&select, &[&k]).await.unwrap().get(0);
                assert_eq!(v, format!("v{k}"));
                let sum: i32 = c.query_one(&own, &[&round]).await.unwrap().get(0);
                assert_eq!(sum, id + round);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(first_value(&setup, "SELECT count(*) FROM kv").await, "600");
    assert!(pooler.server_pids(pg).await.len() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_survives_its_server_being_closed() {
    let pg = PgServer::shared();
    let db = pg.create_db("prepclosed").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let c = pooler.client().await;
    let stmt = c.prepare("SELECT $1::text || '!'").await.unwrap();
    let v: String = c.query_one(&stmt, &[&"a"]).await.unwrap().get(0);
    assert_eq!(v, "a!");
    let old = pooler.server_pids(pg).await;
    let su = pg.superuser().await;
    su.execute("SELECT pg_terminate_backend($1)", &[&old[0]])
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            pooler.server_pids(pg).await.is_empty()
        })
        .await
    );
    // The new server never saw the Parse: the pooler prepares it there on the fly.
    let v: String = c.query_one(&stmt, &[&"b"]).await.unwrap().get(0);
    assert_eq!(v, "b!");
    assert_ne!(pooler.server_pids(pg).await, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_type_change_after_ddl_is_recoverable() {
    let pg = PgServer::shared();
    let db = pg.create_db("prepddl").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let c = pooler.client().await;
    c.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let stmt = c.prepare("SELECT * FROM t").await.unwrap();
    assert_eq!(c.query(&stmt, &[]).await.unwrap()[0].len(), 1);
    c.batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 2")
        .await
        .unwrap();
    // Postgres refuses the stale plan (as it would without a pooler) ...
    let err = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    // ... and a fresh prepare of the same text works: the pooler re-prepared it.
    let stmt = c.prepare("SELECT * FROM t").await.unwrap();
    let rows = c.query(&stmt, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);
    assert_eq!(rows[0].get::<_, i32>(1), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cache_is_bounded_by_max_prepared_statements() {
    let pg = PgServer::shared();
    let db = pg.create_db("prepmax").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nmax_prepared_statements = 2",
    )
    .await;
    let c = pooler.client().await;
    let mut stmts = Vec::new();
    for i in 0..5i32 {
        stmts.push(c.prepare(&format!("SELECT {i} * $1::int")).await.unwrap());
    }
    for round in 1..4i32 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, i as i32 * round);
        }
    }
    // The one server never holds more than two of the pooler's statements.
    let held = first_value(
        &c,
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'POOLER_%'",
    )
    .await;
    assert!(held.parse::<i32>().unwrap() <= 2, "{held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_pipelined_batches_keep_replies_in_order() {
    let pg = PgServer::shared();
    let db = pg.create_db("preperr").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let c = pooler.client().await;
    let div = c.prepare("SELECT 10 / $1::int").await.unwrap();
    // Pipelined: good, failing and good executions of the same statement.
    let futures: Vec<_> = [5i32, 0, 2, 0, 1]
        .iter()
        .map(|d| {
            let c = &c;
            let div = &div;
            async move { c.query_one(div, &[d]).await.map(|r| r.get::<_, i32>(0)) }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    assert_eq!(results[0].as_ref().unwrap(), &2);
    assert_eq!(
        sqlstate(results[1].as_ref().unwrap_err()).as_deref(),
        Some("22012")
    );
    assert_eq!(results[2].as_ref().unwrap(), &5);
    assert_eq!(
        sqlstate(results[3].as_ref().unwrap_err()).as_deref(),
        Some("22012")
    );
    assert_eq!(results[4].as_ref().unwrap(), &10);
}

/// 50,000 distinct statements, each prepared and closed: the pooler-wide registry keeps only
/// what someone still uses, and a statement still cached on a server keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_statements_do_not_grow_memory_without_bound() {
    let pg = PgServer::shared();
    let db = pg.create_db("prep_many").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pooler.port()));
    let c = pooler.client().await;
    let kept = c.prepare("SELECT 424242").await.unwrap();
    assert_eq!(
        c.query_one(&kept, &[]).await.unwrap().get::<_, i32>(0),
        424242
    );
    let mut raw = wire::Raw::new(wire::login(addr, APP_USER, APP_PASSWORD, &db).await);
    const N: usize = 50_000;
    for chunk in 0..(N / 1000) {
        let mut batch = Vec::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            let mut parse = format!("s{i}\0SELECT {i}\0").into_bytes();
            parse.extend_from_slice(&[0, 0]);
            batch.extend(wire::msg(b'P', &parse));
            batch.extend(wire::msg(b'C', format!("Ss{i}\0").as_bytes()));
        }
        batch.extend(wire::sync());
        raw.send(&batch).await;
        let seen = raw.until_ready().await;
        assert!(seen.errors.is_empty(), "{seen:?}");
    }
    // What is left is what the one server's cache holds (max_prepared_statements = 200 by
    // default) and the kept statement: bounded by configuration, not by the traffic.
    let live = pooler.running.app.statements.len();
    assert!(live <= 201, "{live} statements held after {N} closed ones");
    // The statement still cached on the server and named by a client works as before.
    assert_eq!(
        c.query_one(&kept, &[]).await.unwrap().get::<_, i32>(0),
        424242
    );
    let again = c.prepare("SELECT 424242").await.unwrap();
    assert_eq!(
        c.query_one(&again, &[]).await.unwrap().get::<_, i32>(0),
        424242
    );
}

/// SHOW CLIENTS counts each client's named statements (`prepared_statements`, as PgBouncer
/// 1.21+), whether the pooler answered the Parse itself or a server did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_counts_each_clients_statements() {
    let pg = PgServer::shared();
    let db = pg.create_db("ps_count").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2\nadmin_users = \"postgres\"",
    )
    .await;
    let a = connect(&format!("{} application_name=two", pooler.app_url())).await;
    let b = connect(&format!("{} application_name=none", pooler.app_url())).await;
    let s1 = a.prepare("SELECT 1").await.unwrap();
    let s2 = a.prepare("SELECT 2").await.unwrap();
    a.query(&s1, &[]).await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    let count = |rows: &[std::collections::BTreeMap<String, String>], name: &str| {
        rows.iter()
            .find(|r| r.get("application_name").map(String::as_str) == Some(name))
            .and_then(|r| r.get("prepared_statements").cloned())
    };
    let rows = show(&console, "SHOW CLIENTS").await;
    assert_eq!(count(&rows, "two").as_deref(), Some("2"));
    assert_eq!(count(&rows, "none").as_deref(), Some("0"));
    // Dropping one closes it: the count follows.
    drop(s2);
    a.query(&s1, &[]).await.unwrap();
    let rows = show(&console, "SHOW CLIENTS").await;
    assert_eq!(count(&rows, "two").as_deref(), Some("1"));
}
