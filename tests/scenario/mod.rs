//! The differential scenarios of issue 11: the same scenario of several clients, run once
//! against Postgres directly (one connection each) and once through the pooler (transaction
//! mode, one server for all of them), must show every client the same rows, SQLSTATEs, command
//! tags and statuses. Clients differ in their startup parameters, so a pooler that lets one
//! client's settings or statements reach another fails here.
//!
//! Shared by `tests/differential.rs` (the pooler reached directly) and `tests/chopped.rs`
//! (every byte stream through a chopping relay, client and server side). A test crate using
//! this module declares `mod common; mod wire; mod scenario;`.
#![allow(dead_code)]

use crate::common::chop::Chopped;
use crate::common::*;
use crate::wire::*;
use std::net::SocketAddr;

pub const TX1: &str = "pool_mode = \"transaction\"\ndefault_pool_size = 1";

/// How the pooled run reaches the pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight to the pooler, which talks straight to Postgres.
    Pooler,
    /// Through a chopping relay on each side of the pooler.
    Chopped,
}

/// One scenario: each client's startup parameters, then steps of (client, raw request bytes).
pub struct Scenario {
    pub clients: Vec<Vec<(&'static str, &'static str)>>,
    pub steps: Vec<(usize, Vec<u8>)>,
}

impl Scenario {
    pub fn new(clients: Vec<Vec<(&'static str, &'static str)>>) -> Scenario {
        Scenario {
            clients,
            steps: Vec::new(),
        }
    }

    /// A simple query by client `c`.
    pub fn q(&mut self, c: usize, sql: &str) -> &mut Scenario {
        self.steps.push((c, query(sql)));
        self
    }

    /// Raw extended-protocol bytes by client `c` (ending with Sync).
    pub fn raw(&mut self, c: usize, bytes: Vec<u8>) -> &mut Scenario {
        self.steps.push((c, bytes));
        self
    }

    /// Runs against `addr`; returns what each step showed its client.
    pub async fn run(&self, addr: SocketAddr, db: &str) -> Vec<Seen> {
        let mut conns = Vec::new();
        for params in &self.clients {
            let (s, _) = login_params(addr, APP_USER, APP_PASSWORD, db, params)
                .await
                .unwrap_or_else(|e| panic!("login to {addr}: {e}"));
            conns.push(Raw::new(s));
        }
        let mut seen = Vec::new();
        for (c, bytes) in &self.steps {
            conns[*c].send(bytes).await;
            seen.push(conns[*c].until_ready().await);
        }
        seen
    }

    /// Runs directly and through a fresh pooler; asserts both saw the same; returns it.
    pub async fn compare(&self, pg: &PgServer, db: &str, pooler_settings: &str) -> Vec<Seen> {
        self.compare_via(pg, db, pooler_settings, Via::Pooler).await
    }

    /// Runs directly and through a fresh pooler reached as `via` says; asserts both saw the
    /// same; returns it.
    pub async fn compare_via(
        &self,
        pg: &PgServer,
        db: &str,
        pooler_settings: &str,
        via: Via,
    ) -> Vec<Seen> {
        let direct = self
            .run(SocketAddr::from(([127, 0, 0, 1], pg.port)), db)
            .await;
        let pooled = match via {
            Via::Pooler => {
                let pooler = Pooler::start(pg, db, pooler_settings).await;
                self.run(SocketAddr::from(([127, 0, 0, 1], pooler.port())), db)
                    .await
            }
            Via::Chopped => {
                let chopped = Chopped::start(pg, db, pooler_settings).await;
                self.run(chopped.addr(), db).await
            }
        };
        for (i, ((d, p), (c, bytes))) in direct.iter().zip(&pooled).zip(&self.steps).enumerate() {
            assert_eq!(
                d,
                p,
                "step {i} (client {c}, {:?}): direct vs through the pooler ({via:?})",
                String::from_utf8_lossy(&bytes[5..bytes.len().min(80)])
            );
        }
        assert_eq!(direct.len(), pooled.len());
        direct
    }
}

pub fn cell(seen: &Seen) -> Option<String> {
    seen.rows.first().and_then(|r| r.first().cloned().flatten())
}

/// Two schemas with a table `t` each, holding the schema's name.
pub async fn two_schemas(pg: &PgServer, prefix: &str) -> String {
    let db = pg.create_db(prefix).await;
    let c = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    c.batch_execute(
        "CREATE SCHEMA s1; CREATE SCHEMA s2;
         CREATE TABLE s1.t (v text); INSERT INTO s1.t VALUES ('s1');
         CREATE TABLE s2.t (v text); INSERT INTO s2.t VALUES ('s2');
         CREATE TABLE public.t (v text); INSERT INTO public.t VALUES ('public');",
    )
    .await
    .expect("schemas");
    db
}

/// Item 2: clients with different startup `search_path` share one server and each reads its
/// own schema, however their transactions interleave.
pub async fn startup_search_path_stays_with_each_client(via: Via) {
    let pg = PgServer::shared();
    let db = two_schemas(pg, "diff_sp").await;
    let mut sc = Scenario::new(vec![
        vec![("search_path", "s1")],
        vec![("search_path", "s2")],
        vec![],
        vec![("search_path", "s1")],
    ]);
    for _ in 0..4 {
        for c in [0, 1, 2, 3, 1, 0, 2, 0, 0, 1] {
            sc.q(c, "SELECT v FROM t");
            sc.q(c, "SHOW search_path");
        }
    }
    let seen = sc.compare_via(pg, &db, TX1, via).await;
    assert_eq!(cell(&seen[0]).as_deref(), Some("s1"));
    assert_eq!(cell(&seen[2]).as_deref(), Some("s2"));
    assert_eq!(cell(&seen[4]).as_deref(), Some("public"));
}

/// Item 4: RESET ALL, DISCARD ALL, RESET x and SET x TO DEFAULT return to the client's startup
/// values (as on a dedicated connection), and the next client still gets its own.
pub async fn resets_return_to_startup_values(via: Via) {
    let pg = PgServer::shared();
    let db = two_schemas(pg, "diff_reset").await;
    let mut sc = Scenario::new(vec![
        vec![("search_path", "s1"), ("application_name", "one")],
        vec![("search_path", "s2")],
        vec![],
    ]);
    // A custom setting (`myapp.tenant`) another client used stays defined on the server once
    // reset (Postgres cannot drop it): `current_setting(.., true)` gives '' where a fresh
    // connection gives NULL, as after any `SET LOCAL` of it. The one difference: folded here.
    let check = |sc: &mut Scenario, c: usize| {
        sc.q(c, "SELECT v FROM t");
        sc.q(c, "SHOW search_path");
        sc.q(c, "SHOW application_name");
    };
    for reset in [
        "RESET ALL",
        // asyncpg's reset on pool release
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        "DISCARD ALL",
        "RESET search_path",
        "RESET application_name",
        "SET application_name = 'changed'",
        "BEGIN; RESET ALL; ROLLBACK",
        "BEGIN; RESET ALL; COMMIT",
    ] {
        for c in 0..3 {
            sc.q(c, reset);
            check(&mut sc, c);
            check(&mut sc, (c + 1) % 3);
        }
    }
    let seen = sc.compare_via(pg, &db, TX1, via).await;
    assert_eq!(cell(&seen[1]).as_deref(), Some("s1"), "after RESET ALL");
    assert_eq!(cell(&seen[3]).as_deref(), Some("one"));
}

pub fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    msg(b'P', &body)
}

pub fn bind_execute(stmt: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(stmt.as_bytes());
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    let mut m = msg(b'B', &body);
    m.extend(msg(b'E', &[0, 0, 0, 0, 0]));
    m
}

pub fn with_sync(mut m: Vec<u8>) -> Vec<u8> {
    m.extend(sync());
    m
}

/// Item 3: `DEALLOCATE ALL` / `DISCARD ALL` drop the client's own statements and nobody
/// else's; `DEALLOCATE name` of a protocol-level statement works as on Postgres.
pub async fn deallocate_affects_only_its_client(via: Via) {
    let pg = PgServer::shared();
    let db = two_schemas(pg, "diff_dealloc").await;
    let mut sc = Scenario::new(vec![vec![], vec![], vec![]]);
    for c in 0..3 {
        sc.raw(c, with_sync(parse_named("s1", "SELECT 1")));
        sc.raw(c, with_sync(parse_named("s2", "SELECT 2")));
        sc.raw(c, with_sync(bind_execute("s1")));
    }
    // psycopg 3 after a ROLLBACK with prepared statements.
    sc.q(0, "BEGIN").q(0, "ROLLBACK").q(0, "DEALLOCATE ALL");
    sc.raw(0, with_sync(bind_execute("s1")));
    sc.raw(1, with_sync(bind_execute("s1")));
    sc.raw(2, with_sync(bind_execute("s2")));
    sc.raw(0, with_sync(parse_named("s1", "SELECT 11")));
    sc.raw(0, with_sync(bind_execute("s1")));
    sc.q(1, "DISCARD ALL");
    sc.raw(1, with_sync(bind_execute("s2")));
    sc.raw(2, with_sync(bind_execute("s1")));
    sc.raw(1, with_sync(parse_named("s1", "SELECT 1")));
    sc.raw(1, with_sync(bind_execute("s1")));
    // DEALLOCATE of one protocol-level statement, in both protocols.
    sc.q(2, "DEALLOCATE s1");
    sc.raw(2, with_sync(bind_execute("s1")));
    sc.raw(2, with_sync(bind_execute("s2")));
    sc.raw(
        2,
        with_sync([parse_named("", "DEALLOCATE s2"), bind_execute("")].concat()),
    );
    sc.raw(2, with_sync(bind_execute("s2")));
    sc.raw(0, with_sync(bind_execute("s1")));
    // A fresh client after all that.
    let mut sc2 = sc;
    sc2.clients.push(vec![]);
    sc2.raw(3, with_sync(parse_named("s1", "SELECT 1")));
    sc2.raw(3, with_sync(bind_execute("s1")));
    let seen = sc2.compare_via(pg, &db, TX1, via).await;
    assert_eq!(cell(&seen[2]).as_deref(), Some("1"));
    assert_eq!(seen[12].errors, vec!["26000".to_string()], "s1 is gone");
    assert_eq!(cell(&seen[13]).as_deref(), Some("1"), "another client's s1");
}

/// Item 11: a Parse of a name in use is refused (42P05) and the rest of its batch skipped; a
/// named Parse that Postgres skipped after an error prepares nothing; a simple Query sent
/// while the server skips to Sync gets no answer and leaves nothing pending.
pub async fn statement_names_and_error_recovery_as_postgres(via: Via) {
    let pg = PgServer::shared();
    let db = pg.create_db("diff_names").await;
    let mut sc = Scenario::new(vec![vec![], vec![], vec![]]);
    sc.raw(0, with_sync(parse_named("d1", "SELECT 1")));
    sc.raw(
        0,
        with_sync([parse_named("d1", "SELECT 2"), bind_execute("d1")].concat()),
    );
    sc.raw(0, with_sync(bind_execute("d1")));
    sc.raw(
        1,
        with_sync([bind_execute("nosuch"), parse_named("d2", "SELECT 2")].concat()),
    );
    sc.raw(1, with_sync(bind_execute("d2")));
    sc.raw(1, with_sync(parse_named("d2", "SELECT 22")));
    sc.raw(1, with_sync(bind_execute("d2")));
    sc.raw(
        2,
        [bind_execute("nosuch"), query("SELECT 1"), sync()].concat(),
    );
    sc.q(2, "SELECT 3");
    sc.q(0, "SELECT 4");
    let seen = sc.compare_via(pg, &db, TX1, via).await;
    assert_eq!(seen[1].errors, vec!["42P05".to_string()]);
    assert!(
        seen[1].rows.is_empty(),
        "the batch after the refusal is skipped"
    );
    assert_eq!(cell(&seen[2]).as_deref(), Some("1"), "d1 unchanged");
    assert_eq!(seen[4].errors, vec!["26000".to_string()], "skipped Parse");
    assert_eq!(cell(&seen[6]).as_deref(), Some("22"));
    assert_eq!(cell(&seen[8]).as_deref(), Some("3"));
}

/// Issue 13: session settings changed by `SET`, `set_config(.., false)`, startup parameters
/// and `options=-c` follow each client from server to server with Postgres's transaction
/// semantics (rolled back, `SET LOCAL`, `ROLLBACK TO`), while three clients share one server.
pub async fn session_settings_follow_each_client(via: Via) {
    let pg = PgServer::shared();
    let db = two_schemas(pg, "diff_settings").await;
    let mut sc = Scenario::new(vec![
        vec![("options", "-c work_mem=16MB -c myapp.tenant=start")],
        vec![("statement_timeout", "12s"), ("search_path", "s1")],
        vec![],
    ]);
    let check = |sc: &mut Scenario, c: usize| {
        sc.q(
            c,
            "SELECT current_setting('work_mem'), current_setting('statement_timeout'), \
             current_setting('search_path'), \
             coalesce(current_setting('myapp.tenant', true), ''), \
             current_setting('client_min_messages'), current_setting('extra_float_digits'), \
             current_setting('default_transaction_read_only'), (SELECT v FROM t)",
        );
    };
    let steps: &[&[u8]] = &[
        b"SET work_mem = '8MB'",
        b"BEGIN; SET work_mem = '9MB'; ROLLBACK",
        b"BEGIN; SET work_mem = '10MB'; COMMIT",
        b"BEGIN; SET LOCAL work_mem = '11MB'; SHOW work_mem; COMMIT",
        b"BEGIN; SET work_mem = '12MB'; SAVEPOINT a; SET work_mem = '13MB'; ROLLBACK TO a; COMMIT",
        b"BEGIN; SAVEPOINT a; SET myapp.tenant = '42'; RELEASE a; COMMIT",
        // A failed transaction, then its rollback (together: the server stays with it).
        b"BEGIN; SET statement_timeout = '5s'; SELECT 1/0\0ROLLBACK",
        b"SET search_path = s2",
        b"SET SCHEMA 's1'",
        b"SELECT set_config('client_min_messages', 'warning', false)",
        b"SELECT set_config('myapp.tenant', '7', true)",
        b"SET extra_float_digits = 3",
        b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        b"CREATE TABLE nope (x int)",
        b"RESET default_transaction_read_only",
        b"RESET work_mem",
        b"SET work_mem TO DEFAULT",
        b"SET statement_timeout = '3s'; RESET ALL",
        b"SET work_mem = '5MB'; SET myapp.tenant = 'x'",
        b"DISCARD ALL",
    ];
    for (i, step) in steps.iter().enumerate() {
        for c in 0..3 {
            // Each client a step behind the previous one, so their states differ.
            if let Some(sql) = i.checked_sub(c).and_then(|j| steps.get(j)) {
                for part in sql.split(|&b| b == 0) {
                    sc.q(c, std::str::from_utf8(part).unwrap_or_default());
                }
            }
            check(&mut sc, c);
        }
        let _ = step;
    }
    // The extended protocol: a named SET run in a later transaction, an unnamed one at once.
    sc.raw(0, with_sync(parse_named("sw", "SET work_mem = '20MB'")));
    check(&mut sc, 0);
    check(&mut sc, 1);
    sc.raw(0, with_sync(bind_execute("sw")));
    check(&mut sc, 1);
    check(&mut sc, 0);
    sc.raw(
        1,
        with_sync([parse_named("", "SET work_mem = '21MB'"), bind_execute("")].concat()),
    );
    check(&mut sc, 0);
    check(&mut sc, 1);
    check(&mut sc, 2);
    let seen = sc.compare_via(pg, &db, TX1, via).await;
    // What the client with `options` sees first: its own startup values.
    assert_eq!(
        seen[1].rows.first().and_then(|r| r[0].clone()).as_deref(),
        Some("8MB")
    );
    assert_eq!(
        seen[1].rows.first().and_then(|r| r[3].clone()).as_deref(),
        Some("start")
    );
    // The client with startup values sees them before it changes anything.
    assert_eq!(
        seen[2].rows.first().and_then(|r| r[1].clone()).as_deref(),
        Some("12s")
    );
}
