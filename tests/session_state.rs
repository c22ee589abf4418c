//! Session state in transaction mode: detected, and pinned, warned about or refused.

mod common;
mod wire;

use common::*;

/// The `pinned` column of SHOW CLIENTS for the clients with this application_name.
async fn pinned_of(pooler: &Pooler, app_name: &str) -> Vec<String> {
    let console = connect(&pooler.console_url("postgres", SUPERUSER_PASSWORD)).await;
    show(&console, "SHOW CLIENTS")
        .await
        .into_iter()
        .filter(|row| row.get("application_name").map(String::as_str) == Some(app_name))
        .map(|row| row.get("pinned").cloned().unwrap_or_default())
        .collect()
}

async fn pid(c: &tokio_postgres::Client) -> String {
    first_value(c, "SELECT pg_backend_pid()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_keeps_each_kind_of_session_state_on_its_server() {
    let pg = PgServer::shared();
    let db = pg.create_db("pin").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 3\nadmin_users = \"postgres\"",
    )
    .await;
    let cases = [
        ("SET ROLE app", "role"),
        ("SET SESSION AUTHORIZATION DEFAULT", "role"),
        (
            // A name the pooler cannot read: it cannot know what to carry.
            "SELECT set_config(lower('SEARCH_PATH'), 'public', false)",
            "set_config",
        ),
        ("LISTEN pooler_test", "listen"),
        ("SELECT pg_advisory_lock(42)", "advisory_lock"),
        ("CREATE TEMP TABLE scratch (x int)", "temp_table"),
        ("PREPARE q AS SELECT 1", "prepare"),
        (
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "declare_with_hold",
        ),
    ];
    for (i, (sql, kind)) in cases.iter().enumerate() {
        let name = format!("pin{i}");
        let c = connect(&format!("{} application_name={name}", pooler.app_url())).await;
        c.batch_execute(sql).await.unwrap();
        // Taken after the pinning statement: before it, the client was not tied to a server.
        let before = pid(&c).await;
        assert_eq!(
            pinned_of(&pooler, &name).await,
            vec![kind.to_string()],
            "{sql}"
        );
        // Held between transactions, while other clients come and go.
        let other = pooler.client().await;
        for _ in 0..3 {
            assert_eq!(first_value(&other, "SELECT 1").await, "1");
            assert_eq!(pid(&c).await, before, "{sql}: moved to another server");
        }
        drop(c);
    }
    // Settings are not such state: SET TimeZone, SET work_mem, set_config(.., false) follow
    // the client instead.
    let c = connect(&format!("{} application_name=tz", pooler.app_url())).await;
    c.batch_execute(
        "SET TimeZone = 'Asia/Tokyo'; SET work_mem = '7MB'; \
         SELECT set_config('search_path', 'public', false)",
    )
    .await
    .unwrap();
    assert_eq!(pinned_of(&pooler, "tz").await, vec![String::new()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_server_is_reset_before_reuse() {
    let pg = PgServer::shared();
    let db = pg.create_db("pinreset").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let a = pooler.client().await;
    a.batch_execute(
        "SET work_mem = '7MB'; CREATE TEMP TABLE t (x int); SELECT pg_advisory_lock(7)",
    )
    .await
    .unwrap();
    let pid_a = pid(&a).await;
    drop(a);
    let b = pooler.client().await;
    assert_eq!(pid(&b).await, pid_a, "pool of one: the same server");
    assert_eq!(first_value(&b, "SHOW work_mem").await, "4MB");
    let err = b.simple_query("SELECT * FROM t").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
    let locks = first_value(
        &b,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
    )
    .await;
    assert_eq!(locks, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_lets_it_through_and_counts() {
    let pg = PgServer::shared();
    let db = pg.create_db("warn").await;
    let pooler = Pooler::start(
        pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = 2\nsession_state = \"warn\"\n\
             admin_users = \"postgres\"\nmetrics_port = {}",
            free_port()
        ),
    )
    .await;
    let c = connect(&format!("{} application_name=w", pooler.app_url())).await;
    c.batch_execute("CREATE TEMP TABLE w (x int)")
        .await
        .unwrap();
    c.batch_execute("LISTEN x").await.unwrap();
    // A setting is carried with the client, not warned about.
    c.batch_execute("SET work_mem = '7MB'").await.unwrap();
    assert_eq!(pinned_of(&pooler, "w").await, vec![String::new()]);
    let body = pooler.scrape().await;
    let labels = [
        ("database", db.as_str()),
        ("user", APP_USER),
        ("action", "warned"),
    ];
    assert_eq!(
        metric(&body, "pooler_session_state_total", &labels),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_refuses_with_0a000_and_the_session_goes_on() {
    let pg = PgServer::shared();
    let db = pg.create_db("refuse").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nsession_state = \"error\"",
    )
    .await;
    let c = pooler.client().await;
    let err = c.simple_query("SET ROLE app").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    assert!(
        message(&err).contains("role creates session state"),
        "{}",
        message(&err)
    );
    // A setting is carried, not refused.
    c.batch_execute("SET work_mem = '7MB'").await.unwrap();
    assert_eq!(first_value(&c, "SHOW work_mem").await, "7MB");
    // Inside a transaction block the refusal aborts the transaction, like any error.
    c.batch_execute("BEGIN").await.unwrap();
    let err = c.simple_query("LISTEN x").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first_value(&c, "SELECT 2").await, "2");
    // Extended protocol: refused with a FATAL, the connection ends.
    let err = c.execute("LISTEN y", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    assert!(c.simple_query("SELECT 1").await.is_err());
    // Nothing leaked to the server.
    let d = pooler.client().await;
    assert_eq!(first_value(&d, "SHOW work_mem").await, "4MB");
}

/// Session state that used to slip past detection leaks no more: the next client on that
/// server (the most recently used idle one, so a leak would show) sees the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_hidden_by_quoting_or_local_answers_does_not_leak() {
    use std::net::SocketAddr;
    let pg = PgServer::shared();
    let db = pg.create_db("pin_hidden").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], pooler.port()));
    let probe = pooler.client().await;
    let default = first_value(&probe, "SHOW work_mem").await;
    drop(probe);
    let cases = [
        "SELECT $$it's$$; SET work_mem = '9MB'",
        "SELECT E'it\\'s'; SET work_mem = '9MB'",
        "DO $$BEGIN PERFORM set_config('work_mem', '9MB', false); END$$",
    ];
    for sql in cases {
        let a = pooler.client().await;
        a.batch_execute(sql).await.unwrap();
        assert_eq!(first_value(&a, "SHOW work_mem").await, "9MB", "{sql}");
        let b = pooler.client().await;
        assert_eq!(
            first_value(&b, "SHOW work_mem").await,
            default,
            "{sql} leaked"
        );
    }
    // A named Parse + Sync the pooler could answer itself, then its execution.
    let mut a = wire::Raw::new(wire::login(addr, APP_USER, APP_PASSWORD, &db).await);
    let mut parse = b"st\0SET work_mem = '9MB'\0".to_vec();
    parse.extend_from_slice(&[0, 0]);
    a.send(&[wire::msg(b'P', &parse), wire::sync()].concat())
        .await;
    a.until_ready().await;
    let mut bind = b"\0st\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let exec = [
        wire::msg(b'B', &bind),
        wire::msg(b'E', &[0, 0, 0, 0, 0]),
        wire::sync(),
    ]
    .concat();
    a.send(&exec).await;
    assert!(a.until_ready().await.errors.is_empty());
    let b = pooler.client().await;
    assert_eq!(
        first_value(&b, "SHOW work_mem").await,
        default,
        "named Parse leaked"
    );
}

/// Issue 13: what frameworks do at connect (`SET client_min_messages`, `SET
/// extra_float_digits`, `SET search_path`) pins nobody: twelve app connections, each with its
/// own settings, share a pool of three, every transaction sees its own connection's values,
/// and Postgres never has more than three connections for the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_sets_multiplex_fully() {
    let pg = PgServer::shared();
    let db = pg.create_db("sets_mux").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 3\nadmin_users = \"postgres\"",
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let c = connect(&format!("{} application_name=mux{i}", pooler.app_url())).await;
        c.batch_execute(&format!(
            "SET client_min_messages TO 'warning'; SET extra_float_digits = 3; \
             SET statement_timeout = '{}s'",
            i + 1
        ))
        .await
        .unwrap();
        clients.push(c);
    }
    let direct = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let row = c
                    .query_one(
                        "SELECT current_setting('statement_timeout'), \
                         current_setting('client_min_messages')",
                        &[],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), format!("{}s", i + 1));
                assert_eq!(row.get::<_, String>(1), "warning");
            }
            c
        }));
    }
    let mut most = 0i64;
    while tasks.iter().any(|t| !t.is_finished()) {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(n);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.unwrap());
    }
    assert!(most <= 3, "{most} server connections for a pool of 3");
    for i in 0..12 {
        assert_eq!(
            pinned_of(&pooler, &format!("mux{i}")).await,
            vec![String::new()]
        );
    }
    drop(kept);
}

/// Issue 13: the settings a client carries are bounded: past 256 names it is refused with
/// 54000 (after its transaction, which Postgres has committed), and nothing of it reaches
/// the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carried_settings_are_bounded() {
    let pg = PgServer::shared();
    let db = pg.create_db("sets_bound").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let c = pooler.client().await;
    let sql: String = (0..300).map(|i| format!("SET app.s{i} = '{i}';")).collect();
    // The SETs themselves succeed; the connection ends right after.
    let _ = c.batch_execute(&sql).await;
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("54000"), "{err:?}");
    assert!(message(&err).contains("too many session settings"));
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "connection ended"
    );
    let d = pooler.client().await;
    assert_eq!(
        first_value(&d, "SELECT coalesce(current_setting('app.s7', true), '')").await,
        ""
    );
    // Under the bound, all is carried.
    let sql: String = (0..200).map(|i| format!("SET app.t{i} = '{i}';")).collect();
    d.batch_execute(&sql).await.unwrap();
    assert_eq!(first_value(&d, "SHOW app.t199").await, "199");
}

/// Issue 13: a startup setting a server of the pool accepted once is not checked again: a
/// login with the same values needs no server, so it does not wait for one while every
/// server is busy (pgjdbc sends `extra_float_digits` in every startup packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_startup_settings_need_no_server_at_login() {
    let pg = PgServer::shared();
    let db = pg.create_db("sets_login").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let url = format!(
        "{} options='-c work_mem=8192 -c extra_float_digits=3'",
        pooler.app_url()
    );
    let first = connect(&url).await;
    assert_eq!(first_value(&first, "SHOW work_mem").await, "8MB");
    // The only server, held in a transaction.
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(20), connect(&url))
        .await
        .expect("the login waited for a server");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(first_value(&second, "SHOW work_mem").await, "8MB");
    assert_eq!(first_value(&second, "SHOW extra_float_digits").await, "3");
    // A value not seen before is still checked by a server, and refused as Postgres would.
    let bad = format!("{} options='-c work_mem=lots'", pooler.app_url());
    let err = try_connect(&bad).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{err:?}");
}
