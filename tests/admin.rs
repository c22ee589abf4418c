//! The admin console (`dbname=pgbouncer`): PgBouncer's commands and columns, who may use it,
//! PAUSE/RESUME/KILL against real transactions, SHUTDOWN.

mod common;
mod wire;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn userlist() -> String {
    format!(
        "{}\"admin\" \"admin-pw\"\n\"stats\" \"stats-pw\"\n\"nobody\" \"nobody-pw\"\n",
        Pooler::default_userlist()
    )
}

async fn start(pg: &PgServer, db: &str, extra: &str) -> Pooler {
    Pooler::start_with_userlist(
        pg,
        db,
        &format!(
            "pool_mode = \"transaction\"\ndefault_pool_size = 2\nadmin_users = \"admin\"\n\
             stats_users = [\"stats\"]\n{extra}"
        ),
        &userlist(),
    )
    .await
}

async fn admin(pooler: &Pooler) -> tokio_postgres::Client {
    connect(&pooler.console_url("admin", "admin-pw")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_with_pgbouncer_columns() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_show").await;
    let pooler = start(pg, &db, "").await;
    let app = pooler.client().await;
    let pid = first_value(&app, "SELECT pg_backend_pid()").await;
    let console = admin(&pooler).await;

    assert_eq!(
        columns(&console, "SHOW POOLS").await,
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts"
        ]
    );
    let pools = show(&console, "show pools;").await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["database"], db);
    assert_eq!(pools[0]["user"], APP_USER);
    assert_eq!(pools[0]["cl_active"], "1");
    assert_eq!(pools[0]["sv_idle"], "1");
    assert_eq!(pools[0]["sv_active"], "0");

    // The idle server is the backend that answered; once the client holds it, it is linked.
    let servers = show(&console, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["state"], "idle");
    assert_eq!(servers[0]["remote_pid"], pid);
    assert_eq!(servers[0]["type"], "S");
    app.batch_execute("BEGIN").await.unwrap();
    let clients = show(&console, "SHOW CLIENTS").await;
    let me = clients
        .iter()
        .find(|c| c["database"] == db)
        .expect("app client listed");
    assert_eq!(me["state"], "active");
    assert_eq!(me["user"], APP_USER);
    assert_eq!(me["addr"], "127.0.0.1");
    assert!(
        clients
            .iter()
            .any(|c| c["database"] == "pgbouncer" && c["user"] == "admin"),
        "the console session is listed too"
    );
    let servers = show(&console, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["state"], "active");
    assert_eq!(servers[0]["remote_pid"], pid);
    assert_eq!(servers[0]["link"], me["ptr"]);
    assert_eq!(me["link"], servers[0]["ptr"]);
    app.batch_execute("COMMIT").await.unwrap();

    // pg_backend_pid, BEGIN..COMMIT: two transactions by the client (plus the login probe's
    // assignment, which is no transaction). The relay may flush the COMMIT's reply before it
    // counts the transaction, so the count is polled.
    let xacts = || async {
        let stats = show(&console, "SHOW STATS").await;
        stats
            .iter()
            .find(|r| r["database"] == db)
            .expect("stats row")["total_xact_count"]
            .clone()
    };
    assert!(eventually(Duration::from_secs(10), || async { xacts().await == "2" }).await);
    let stats = show(&console, "SHOW STATS").await;
    let row = stats
        .iter()
        .find(|r| r["database"] == db)
        .expect("stats row");
    assert!(row["total_query_count"].parse::<u64>().unwrap() >= 3);
    assert!(row["total_received"].parse::<u64>().unwrap() > 0);
    assert!(row["total_sent"].parse::<u64>().unwrap() > 0);
    assert!(row.contains_key("avg_wait_time"));

    let dbs = show(&console, "SHOW DATABASES").await;
    let row = dbs.iter().find(|r| r["name"] == db).expect("database row");
    assert_eq!(row["port"], pg.port.to_string());
    assert_eq!(row["pool_size"], "2");
    assert_eq!(row["paused"], "0");
    assert_eq!(row["current_connections"], "1");

    let config = show(&console, "SHOW CONFIG").await;
    let get = |k: &str| {
        config
            .iter()
            .find(|r| r["key"] == k)
            .map(|r| r["value"].clone())
    };
    assert_eq!(get("default_pool_size").as_deref(), Some("2"));
    assert_eq!(get("pool_mode").as_deref(), Some("transaction"));
    assert_eq!(get("admin_users").as_deref(), Some("admin"));

    let lists = show(&console, "SHOW LISTS").await;
    let item = |k: &str| {
        lists
            .iter()
            .find(|r| r["list"] == k)
            .map(|r| r["items"].clone())
    };
    assert_eq!(item("pools").as_deref(), Some("1"));
    assert_eq!(item("databases").as_deref(), Some("1"));
    assert_eq!(item("used_clients").as_deref(), Some("2"));

    let version = first_value(&console, "SHOW VERSION").await;
    assert!(version.starts_with("pooler "), "{version}");
    console.simple_query("SHOW HELP").await.unwrap();
    // Several commands in one query: each answers.
    let both = console
        .simple_query("SHOW VERSION; SHOW LISTS")
        .await
        .unwrap();
    let rows = both
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 15);
    // The console never opened a server of its own.
    assert_eq!(
        pooler.server_pids(pg).await,
        vec![pid.parse::<i32>().unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_and_errors() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_access").await;
    let pooler = start(pg, &db, "").await;

    // Not an admin or stats user: refused after authenticating.
    let err = try_connect(&pooler.console_url("nobody", "nobody-pw"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));
    assert_eq!(message(&err), "not allowed");
    // The password is checked before anything is told.
    let err = try_connect(&pooler.console_url("admin", "wrong"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    // The alias works too.
    let alias = format!(
        "host=127.0.0.1 port={} user=admin password=admin-pw dbname=pooler",
        pooler.port()
    );
    let c = connect(&alias).await;
    assert!(first_value(&c, "SHOW VERSION").await.starts_with("pooler"));

    // stats_users: SHOW yes, control no; the session survives every error.
    let stats = connect(&pooler.console_url("stats", "stats-pw")).await;
    show(&stats, "SHOW POOLS").await;
    let err = stats.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    assert_eq!(message(&err), "admin access needed");
    let err = stats.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let err = stats.simple_query("DROP TABLE x").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    assert!(message(&err).contains("SHOW HELP"), "{}", message(&err));
    // Extended protocol: a clear error, then back in step at Sync.
    let err = stats.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
    assert!(
        first_value(&stats, "SHOW VERSION")
            .await
            .starts_with("pooler")
    );

    let console = admin(&pooler).await;
    // RELOAD works (tests/ops.rs covers what it changes, tests `set_*` what SET does).
    console.simple_query("RELOAD").await.expect("RELOAD");
    let err = console.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
    let err = console.simple_query("RESUME").await.unwrap_err();
    assert_eq!(message(&err), "pooler is not paused");
    assert!(
        first_value(&console, "SHOW VERSION")
            .await
            .starts_with("pooler")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_pause").await;
    let pooler = start(pg, &db, "query_wait_timeout = 120").await;
    let app = pooler.client().await;
    assert_eq!(first_value(&app, "SELECT 1").await, "1");
    let console = admin(&pooler).await;

    // A transaction in flight when PAUSE arrives finishes first; PAUSE returns after it.
    let busy = pooler.client().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pause = {
        let url = pooler.console_url("admin", "admin-pw");
        let db = db.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            c.simple_query(&format!("PAUSE {db}")).await.map(|_| ())
        })
    };
    assert!(
        eventually(LIMIT, || async {
            show(&console, "SHOW DATABASES")
                .await
                .iter()
                .any(|r| r["name"] == db && r["paused"] == "1")
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction open"
    );
    busy.batch_execute("COMMIT").await.unwrap();
    pause.await.unwrap().expect("PAUSE");
    // Paused: every server is closed, so Postgres could be restarted now.
    assert!(eventually(LIMIT, || async { pooler.server_pids(pg).await.is_empty() }).await);

    // A new transaction waits...
    let query = tokio::spawn(async move { first_value(&app, "SELECT 7").await });
    assert!(
        eventually(LIMIT, || async {
            show(&console, "SHOW POOLS")
                .await
                .iter()
                .any(|r| r["database"] == db && r["cl_waiting"] == "1")
        })
        .await,
        "the query did not wait"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran while paused");
    assert!(pooler.server_pids(pg).await.is_empty());
    // ...until RESUME.
    console
        .simple_query(&format!("RESUME {db}"))
        .await
        .expect("RESUME");
    assert_eq!(query.await.unwrap(), "7");
    let again = pooler.client().await;
    assert_eq!(first_value(&again, "SELECT 8").await, "8");
    let dbs = show(&console, "SHOW DATABASES").await;
    assert_eq!(dbs.iter().find(|r| r["name"] == db).unwrap()["paused"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_clients_and_servers_until_resume() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_kill").await;
    let pooler = start(pg, &db, "").await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    let victim = pooler.client().await;
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let console = admin(&pooler).await;
    console
        .simple_query(&format!("KILL {db}"))
        .await
        .expect("KILL");
    // The clients are gone, the transaction rolled back, the servers closed.
    assert!(victim.simple_query("COMMIT").await.is_err());
    assert!(setup.simple_query("SELECT 1").await.is_err());
    assert!(
        eventually(LIMIT, || async { pooler.server_pids(pg).await.is_empty() }).await,
        "servers survived KILL"
    );
    // The console itself survived.
    assert!(
        first_value(&console, "SHOW VERSION")
            .await
            .starts_with("pooler")
    );
    // New clients wait until RESUME.
    let fresh = pooler.client().await;
    let query = tokio::spawn(async move { first_value(&fresh, "SELECT count(*) FROM t").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran on a killed database");
    console.simple_query("RESUME").await.expect("RESUME");
    assert_eq!(
        query.await.unwrap(),
        "0",
        "the killed transaction was rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_listening_and_readyz_says_so() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_shutdown").await;
    let pooler = start(pg, &db, &format!("metrics_port = {}", free_port())).await;
    assert_eq!(pooler.http_get("/readyz").await.0, 200);
    let console = admin(&pooler).await;
    console.simple_query("SHUTDOWN").await.expect("SHUTDOWN");
    assert!(
        eventually(LIMIT, || async {
            pooler.http_get("/readyz").await.0 == 503
        })
        .await
    );
    assert!(
        eventually(LIMIT, || async {
            try_connect(&pooler.app_url()).await.is_err()
        })
        .await,
        "still accepting clients after SHUTDOWN"
    );
}

/// Issue 12, item 8: a console command that is not valid UTF-8 gets an error, as Postgres
/// answers such a query (22021), and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_console_command_is_an_error_not_a_disconnect() {
    use tokio::io::AsyncWriteExt;
    let pg = PgServer::shared();
    let db = pg.create_db("admin_utf8").await;
    let pooler = start(pg, &db, "").await;
    let mut s = wire::login(pooler.running.addr, "admin", "admin-pw", "pgbouncer").await;
    // "SHOW " then a lone continuation byte and a truncated two-byte sequence.
    let mut body = b"SHOW \xc3(POOLS \xff".to_vec();
    body.push(0);
    s.write_all(&wire::msg(b'Q', &body)).await.unwrap();
    let reply = wire::read_until(&mut s, b'Z').await;
    let errors: Vec<_> = reply
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| pooler::wire::error_fields(b))
        .collect();
    assert_eq!(
        errors,
        [(
            "22021".to_string(),
            "invalid byte sequence for encoding \"UTF8\": 0xc3 0x28".to_string()
        )],
        "{reply:?}"
    );
    assert_eq!(
        reply.last().map(|(t, b)| (*t, b.clone())),
        Some((b'Z', vec![b'I']))
    );
    // Still the same session: a valid command is answered.
    s.write_all(&wire::query("SHOW VERSION")).await.unwrap();
    let reply = wire::read_until(&mut s, b'Z').await;
    assert!(reply.iter().any(|(t, _)| *t == b'D'), "{reply:?}");
    assert!(!reply.iter().any(|(t, _)| *t == b'E'), "{reply:?}");
}

/// Every SHOW command PgBouncer 1.25 has: its columns, in its order (src/admin.c, src/stats.c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pgbouncer_show_command_answers_with_its_columns() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_show_all").await;
    let pooler = start(pg, &db, "").await;
    let app = pooler.client().await;
    assert_eq!(first_value(&app, "SELECT 1").await, "1");
    let console = admin(&pooler).await;
    let stats_prefix = [
        "database",
        "server_assignment_count",
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
    ];
    let with = |tail: &[&str]| -> Vec<String> {
        stats_prefix
            .iter()
            .chain(tail)
            .map(|c| c.to_string())
            .collect()
    };
    assert_eq!(
        columns(&console, "SHOW STATS_TOTALS").await,
        with(&["client_parse_count", "server_parse_count", "bind_count"])
    );
    assert_eq!(
        columns(&console, "SHOW STATS_AVERAGES").await,
        with(&[
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count"
        ])
    );
    let totals = show(&console, "SHOW STATS_TOTALS").await;
    let row = totals.iter().find(|r| r["database"] == db).expect("row");
    assert!(row["query_count"].parse::<u64>().unwrap() >= 1);
    assert!(row["bytes_received"].parse::<u64>().unwrap() > 0);
    assert!(row["server_assignment_count"].parse::<u64>().unwrap() >= 1);

    assert_eq!(columns(&console, "SHOW TOTALS").await, ["name", "value"]);
    let names: Vec<String> = show(&console, "SHOW TOTALS")
        .await
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    let figures = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
    ];
    let want: Vec<String> = ["total", "avg"]
        .iter()
        .flat_map(|p| figures.iter().map(move |f| format!("{p}_{f}")))
        .collect();
    assert_eq!(names, want);

    assert_eq!(
        columns(&console, "SHOW DATABASES").await,
        [
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled"
        ]
    );
    assert_eq!(
        columns(&console, "SHOW USERS").await,
        [
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections"
        ]
    );
    let users = show(&console, "SHOW USERS").await;
    let me = users
        .iter()
        .find(|r| r["name"] == APP_USER)
        .expect("app user");
    assert_eq!(me["current_connections"], "1");
    assert_eq!(me["current_client_connections"], "1");
    assert!(!me.contains_key("pool_size"), "no override: NULL");
    assert!(users.iter().any(|r| r["name"] == "admin"));

    assert_eq!(
        columns(&console, "SHOW MEM").await,
        ["name", "size", "used", "free", "memtotal"]
    );
    let mem = show(&console, "SHOW MEM").await;
    let clients = mem.iter().find(|r| r["name"] == "client_cache").unwrap();
    assert_eq!(clients["used"], "2", "the app client and the console");

    assert_eq!(columns(&console, "SHOW STATE").await, ["key", "value"]);
    let state = |rows: Vec<std::collections::BTreeMap<String, String>>| -> Vec<(String, String)> {
        rows.into_iter()
            .map(|r| (r["key"].clone(), r["value"].clone()))
            .collect()
    };
    let pairs = |a: &str, p: &str| {
        vec![
            ("active".to_string(), a.to_string()),
            ("paused".to_string(), p.to_string()),
            ("suspended".to_string(), "no".to_string()),
        ]
    };
    assert_eq!(
        state(show(&console, "SHOW STATE").await),
        pairs("yes", "no")
    );
    console.simple_query("PAUSE").await.expect("PAUSE");
    assert_eq!(
        state(show(&console, "SHOW STATE").await),
        pairs("no", "yes")
    );
    console.simple_query("RESUME").await.expect("RESUME");

    assert_eq!(
        columns(&console, "SHOW PEERS").await,
        ["peer_id", "host", "port", "pool_size"]
    );
    assert_eq!(
        columns(&console, "SHOW DNS_HOSTS").await,
        ["hostname", "ttl", "addrs"]
    );
    assert_eq!(
        columns(&console, "SHOW DNS_ZONES").await,
        ["zonename", "serial", "count"]
    );
    assert_eq!(
        first_value(&console, "SHOW client_encoding").await,
        "UTF-8",
        "PgBouncer's fake answer for drivers"
    );
    let lists: Vec<String> = show(&console, "SHOW LISTS")
        .await
        .iter()
        .map(|r| r["list"].clone())
        .collect();
    assert_eq!(
        lists,
        [
            "databases",
            "users",
            "peers",
            "pools",
            "peer_pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending"
        ]
    );
    for what in ["SOCKETS", "ACTIVE_SOCKETS", "FDS"] {
        let err = console
            .simple_query(&format!("SHOW {what}"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{what}");
        assert!(message(&err).contains("not supported"), "{}", message(&err));
    }
    // The session is still usable.
    assert!(
        first_value(&console, "SHOW VERSION")
            .await
            .starts_with("pooler")
    );
}

/// SET key = value applies a changeable key as RELOAD would; the rest is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_a_key_like_reload() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_set").await;
    let pooler = start(pg, &db, "").await;
    let app = pooler.client().await;
    assert_eq!(first_value(&app, "SELECT 1").await, "1");
    let console = admin(&pooler).await;
    let config = |key: &'static str| {
        let console = &console;
        async move {
            show(console, "SHOW CONFIG")
                .await
                .into_iter()
                .find(|r| r["key"] == key)
                .map(|r| r["value"].clone())
        }
    };
    console
        .simple_query("SET default_pool_size = 3")
        .await
        .expect("SET");
    assert_eq!(config("default_pool_size").await.as_deref(), Some("3"));
    // Applied to the running pool, as RELOAD applies it.
    let pools = show(&console, "SHOW DATABASES").await;
    assert_eq!(
        pools.iter().find(|r| r["name"] == db).unwrap()["pool_size"],
        "3"
    );
    console
        .simple_query("set server_check_query to 'select 2'")
        .await
        .expect("SET quoted");
    assert_eq!(
        config("server_check_query").await.as_deref(),
        Some("select 2")
    );
    console
        .simple_query("SET log_connections = 0")
        .await
        .expect("SET bool");
    assert_eq!(config("log_connections").await.as_deref(), Some("0"));

    let err = console
        .simple_query("SET default_pool_size = lots")
        .await
        .unwrap_err();
    assert!(message(&err).starts_with("SET failed"), "{}", message(&err));
    let err = console
        .simple_query("SET default_pool_size = 0")
        .await
        .unwrap_err();
    assert!(message(&err).contains("at least 1"), "{}", message(&err));
    assert_eq!(config("default_pool_size").await.as_deref(), Some("3"));
    let err = console
        .simple_query("SET listen_port = 7000")
        .await
        .unwrap_err();
    assert!(message(&err).contains("only at start"), "{}", message(&err));
    let err = console
        .simple_query("SET no_such_key = 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42704"));
    // What drivers SET on connect is acknowledged, for anyone; the rest needs an admin.
    let stats = connect(&pooler.console_url("stats", "stats-pw")).await;
    stats
        .simple_query("SET client_encoding = 'UTF8'")
        .await
        .expect("fake SET");
    let err = stats
        .simple_query("SET default_pool_size = 4")
        .await
        .unwrap_err();
    assert_eq!(message(&err), "admin access needed");
    assert_eq!(first_value(&app, "SELECT 2").await, "2");
}

/// DISABLE refuses new clients with PgBouncer's error; connected clients go on; ENABLE undoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_clients_until_enable() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_disable").await;
    let pooler = start(pg, &db, "").await;
    let connected = pooler.client().await;
    let console = admin(&pooler).await;
    let err = console.simple_query("DISABLE").await.unwrap_err();
    assert_eq!(message(&err), "a database is required");
    let err = console.simple_query("DISABLE nosuchdb").await.unwrap_err();
    assert_eq!(message(&err), "no such database: nosuchdb");
    console
        .simple_query(&format!("DISABLE {db}"))
        .await
        .expect("DISABLE");
    let err = try_connect(&pooler.app_url()).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"));
    assert_eq!(message(&err), format!("database \"{db}\" is disabled"));
    let dbs = show(&console, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|r| r["name"] == db).unwrap()["disabled"],
        "1"
    );
    assert_eq!(first_value(&connected, "SELECT 5").await, "5");
    console
        .simple_query(&format!("ENABLE {db}"))
        .await
        .expect("ENABLE");
    let again = pooler.client().await;
    assert_eq!(first_value(&again, "SELECT 6").await, "6");
    let dbs = show(&console, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|r| r["name"] == db).unwrap()["disabled"],
        "0"
    );
}

/// RECONNECT closes idle servers now and busy ones when released; WAIT_CLOSE returns once
/// the last one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_closes_servers_as_released_and_wait_close_waits() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_reconnect").await;
    let pooler = start(pg, &db, "").await;
    let busy = pooler.client().await;
    let idle = pooler.client().await;
    busy.batch_execute("BEGIN").await.unwrap();
    let busy_pid: i32 = first_value(&busy, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    let idle_pid: i32 = first_value(&idle, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_ne!(busy_pid, idle_pid);
    let console = admin(&pooler).await;
    console
        .simple_query(&format!("RECONNECT {db}"))
        .await
        .expect("RECONNECT");
    // The idle server goes at once; the one in a transaction stays with its client.
    assert!(
        eventually(LIMIT, || async {
            pooler.server_pids(pg).await == vec![busy_pid]
        })
        .await,
        "idle server not closed: {:?}",
        pooler.server_pids(pg).await
    );
    // New work gets a new server meanwhile.
    let fresh: i32 = first_value(&idle, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert!(fresh != busy_pid && fresh != idle_pid);
    let wait = {
        let url = pooler.console_url("admin", "admin-pw");
        let db = db.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            c.simple_query(&format!("WAIT_CLOSE {db}"))
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "WAIT_CLOSE returned with a marked server out"
    );
    assert_eq!(
        first_value(&busy, "SELECT pg_backend_pid()").await,
        busy_pid.to_string()
    );
    busy.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(LIMIT, wait)
        .await
        .expect("WAIT_CLOSE did not return")
        .unwrap()
        .expect("WAIT_CLOSE");
    assert!(
        eventually(LIMIT, || async {
            !pooler.server_pids(pg).await.contains(&busy_pid)
        })
        .await,
        "the released server was reused"
    );
    let next: i32 = first_value(&busy, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_ne!(next, busy_pid);
    // Nothing marked: WAIT_CLOSE returns at once.
    tokio::time::timeout(LIMIT, console.simple_query("WAIT_CLOSE"))
        .await
        .expect("WAIT_CLOSE with nothing to wait for")
        .expect("WAIT_CLOSE");
}

/// KILL_CLIENT ends one client with PgBouncer's message; its transaction rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_ends_one_client() {
    let pg = PgServer::shared();
    let db = pg.create_db("admin_kill_client").await;
    let pooler = start(pg, &db, "").await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    // Named at login: SHOW CLIENTS lists the startup application_name.
    let url = |name: &str| format!("{} application_name={name}", pooler.app_url());
    let (victim, conn) = connect_watched(&url("victim")).await;
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let idle_victim = connect_watched(&url("idle_victim")).await;
    let console = admin(&pooler).await;
    let id_of = |name: &'static str| {
        let console = &console;
        async move {
            show(console, "SHOW CLIENTS")
                .await
                .into_iter()
                .find(|r| r.get("application_name").map(String::as_str) == Some(name))
                .map(|r| r["id"].clone())
                .expect("client listed")
        }
    };
    let err = console.simple_query("KILL_CLIENT abc").await.unwrap_err();
    assert_eq!(message(&err), "invalid client pointer supplied");
    let err = console
        .simple_query("KILL_CLIENT 987654321")
        .await
        .unwrap_err();
    assert_eq!(message(&err), "client not found");
    for (name, conn) in [("victim", conn), ("idle_victim", idle_victim.1)] {
        let id = id_of(name).await;
        console
            .simple_query(&format!("KILL_CLIENT {id}"))
            .await
            .expect("KILL_CLIENT");
        assert_eq!(
            connection_end(conn, LIMIT, name).await,
            Some(("08P01".to_string(), "admin forced disconnect".to_string())),
            "{name}"
        );
    }
    // The transaction rolled back; everyone else goes on.
    assert_eq!(first_value(&setup, "SELECT count(*) FROM t").await, "0");
    drop(victim);
    assert!(
        first_value(&console, "SHOW VERSION")
            .await
            .starts_with("pooler")
    );
}
