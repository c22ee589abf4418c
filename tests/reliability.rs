//! Reliability against a real Postgres: garbage on the listening port while real clients
//! work, logins that never finish, Postgres stopped and restarted under load, Postgres down
//! when the pooler starts, clients vanishing mid-COPY and mid-pipeline.
//!
//! Every wait is bounded (`wire::HANG`, `eventually`); no assertion depends on speed.

mod common;
mod wire;

use common::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wire::*;

const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Garbage on the port.

/// What one garbage connection did and how the pooler answered.
#[derive(Debug)]
struct Garbage {
    kind: usize,
    /// The pooler must answer with 08P01 (the input was consumed whole, so the error is not
    /// lost to a reset).
    must_refuse: bool,
    ending: Ending,
}

const GARBAGE_KINDS: usize = 12;

/// Sends one kind of garbage and waits for the pooler to close the connection.
async fn garbage(addr: std::net::SocketAddr, db: &str, i: usize) -> Garbage {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491));
    let kind = i % GARBAGE_KINDS;
    let absurd = [i32::MIN, -1, 0, 3, 7, 10_001, 0x4000_0000, i32::MAX];
    let startup = startup_packet(&[("user", APP_USER), ("database", db)]);
    let mut must_refuse = false;
    // Kinds 6.. log in first: the garbage then reaches the session's framer.
    let mut s = if kind >= 6 {
        login(addr, APP_USER, APP_PASSWORD, db).await
    } else {
        TcpStream::connect(addr).await.expect("connect")
    };
    let mut close_write = false;
    let payload: Vec<u8> = match kind {
        // Random bytes where the startup packet belongs.
        0 => {
            close_write = true;
            let n = 1 + rng.below(2000) as usize;
            rng.bytes(n)
        }
        // An absurd startup length, alone.
        1 => {
            must_refuse = true;
            absurd[rng.below(absurd.len() as u64) as usize]
                .to_be_bytes()
                .to_vec()
        }
        // A startup packet cut short, then the client leaves.
        2 => {
            close_write = true;
            let cut = 1 + rng.below(startup.len() as u64 - 1) as usize;
            startup[..cut].to_vec()
        }
        // A well-framed startup packet with an unknown protocol code.
        3 => {
            must_refuse = true;
            let mut code = rng.next() as i32;
            if code == pooler::wire::PROTOCOL_3_0 || code >> 16 == 1234 {
                code = 0x0002_0000;
            }
            let body = rng.some_bytes(0, 63);
            [
                &((8 + body.len()) as i32).to_be_bytes()[..],
                &code.to_be_bytes(),
                &body,
            ]
            .concat()
        }
        // Protocol 3.0 with parameters that are not NUL-terminated or not UTF-8.
        4 => {
            must_refuse = true;
            let mut body = pooler::wire::PROTOCOL_3_0.to_be_bytes().to_vec();
            if rng.below(2) == 0 {
                body.extend_from_slice(b"user\0\xff\xfe\xfd\0\0");
            } else {
                body.extend_from_slice(b"user\0app");
            }
            with_length(4 + body.len() as i32, &body)
        }
        // SSLRequest (answered 'N'), then random bytes.
        5 => {
            close_write = true;
            let mut p = with_length(8, &80_877_103i32.to_be_bytes());
            p.extend(rng.some_bytes(1, 500));
            p
        }
        // Logged in: a message header with an absurd length, alone.
        6 => {
            must_refuse = true;
            let len = [i32::MIN, -1, 0, 3, 0x4000_0000, i32::MAX][rng.below(6) as usize];
            [&[b"QPSBX"[rng.below(5) as usize]][..], &len.to_be_bytes()].concat()
        }
        // Logged in: a message type no client sends.
        7 => {
            must_refuse = true;
            let tag = loop {
                let t = rng.next() as u8;
                if !b"QFSHEdcfPDCBX".contains(&t) {
                    break t;
                }
            };
            msg(tag, &[])
        }
        // Logged in: random bytes behind a byte that is no message type.
        8 => {
            close_write = true;
            let mut p = vec![b'z'];
            p.extend(rng.some_bytes(0, 2999));
            p
        }
        // Logged in: a prepare-only batch ending in a Sync with a bad length (the batch the
        // pooler answers without a server).
        9 => {
            must_refuse = true;
            let mut p = msg(b'P', b"s1\0SELECT 1\0\0\0");
            p.push(b'S');
            p.extend_from_slice(&[0i32, -1, i32::MIN][rng.below(3) as usize].to_be_bytes());
            p
        }
        // Logged in: a huge (valid) Query length, a little of it, then the client leaves.
        10 => {
            close_write = true;
            let mut p = vec![b'Q'];
            p.extend_from_slice(&0x3fff_0000i32.to_be_bytes());
            p.extend(b"SELECT ".repeat(1 + rng.below(200) as usize));
            p
        }
        // Logged in: a Bind whose names never end.
        _ => {
            must_refuse = true;
            let body = vec![b'a'; 64];
            [&[b'B'][..], &(4 + body.len() as i32).to_be_bytes(), &body].concat()
        }
    };
    let _ = s.write_all(&payload).await;
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut ending = read_to_close(&mut s, HANG).await;
    if kind == 5 && ending.bytes.first() == Some(&b'N') {
        // The answer to SSLRequest.
        ending.bytes.remove(0);
    }
    Garbage {
        kind,
        must_refuse,
        ending,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_while_real_clients_work() {
    raise_nofile();
    let pg = PgServer::shared();
    let db = pg.create_db("garbage").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 4\nmax_client_conn = 2000\n\
         client_login_timeout = 10\nworkers = 2",
    )
    .await;
    let setup = pooler.client().await;
    setup
        .batch_execute("CREATE TABLE g (worker int, n int, marker text)")
        .await
        .unwrap();
    let rss_before = rss_kib(None);

    // Real clients: transactions with read-back markers, simple and extended protocol.
    const WORKERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS as i32 {
        let (url, stop, done) = (pooler.app_url(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut c = connect(&url).await;
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let marker = format!("w{w}-n{n}");
                let tx = c.transaction().await.map_err(|e| e.to_string())?;
                tx.execute("INSERT INTO g VALUES ($1, $2, $3)", &[&w, &n, &marker])
                    .await
                    .map_err(|e| e.to_string())?;
                let got: String = tx
                    .query_one(
                        "SELECT marker FROM g WHERE worker = $1 AND n = $2",
                        &[&w, &n],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if got != marker {
                    return Err(format!("cross-talk: {got} for {marker}"));
                }
                tx.commit().await.map_err(|e| e.to_string())?;
                let echo = first_value(&c, &format!("SELECT '{marker}'")).await;
                if echo != marker {
                    return Err(format!("cross-talk: {echo} for {marker}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<i32, String>(n)
        }));
    }

    assert!(
        eventually(LIMIT, || async {
            done.load(Ordering::Relaxed) >= WORKERS as u64
        })
        .await
    );
    // Hundreds of garbage connections at once, in two waves.
    const GARBAGE: usize = 600;
    let addr = pooler.running.addr;
    let mut by_kind: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for wave in 0..2 {
        let tasks: Vec<_> = (wave * GARBAGE / 2..(wave + 1) * GARBAGE / 2)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move { garbage(addr, &db, i).await })
            })
            .collect();
        for t in tasks {
            let g = t.await.expect("garbage task");
            let codes = error_codes(&g.ending.bytes);
            assert!(
                g.ending.closed,
                "kind {}: the pooler kept a garbage connection open",
                g.kind
            );
            assert!(
                codes.iter().all(|c| c == "08P01"),
                "kind {}: {codes:?}",
                g.kind
            );
            if g.must_refuse {
                assert_eq!(codes, ["08P01"], "kind {}: {:?}", g.kind, g.ending);
            }
            let e = by_kind.entry(g.kind).or_default();
            e.0 += 1;
            e.1 += codes.len();
        }
    }
    // Every garbage session is gone; the real ones (and setup) remain.
    assert!(
        eventually(LIMIT, || async {
            pooler.running.app.client_count() == WORKERS + 1
        })
        .await,
        "{} clients still counted",
        pooler.running.app.client_count()
    );
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0i64;
    for w in workers {
        let n = w
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a real client saw an error: {e}"));
        committed += i64::from(n);
    }
    let rows: i64 = setup
        .query_one("SELECT count(*) FROM g", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, committed);
    assert!(done.load(Ordering::Relaxed) > 0);
    // Still serving.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 42").await, "42");
    let rss_after = rss_kib(None);
    println!(
        "garbage: {GARBAGE} connections (sent / 08P01 by kind: {by_kind:?}); real clients \
         committed {rows} transactions with no error; test process RSS {rss_before} -> \
         {rss_after} KiB"
    );
    // Generous: the pooler holds nothing per dead connection.
    assert!(rss_after < rss_before + 256 * 1024);
}

// ---------------------------------------------------------------------------------------
// Logins that never finish.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_logins_are_dropped_after_client_login_timeout() {
    let pg = PgServer::shared();
    let db = pg.create_db("logintimeout").await;
    let pooler = Pooler::start(pg, &db, "client_login_timeout = 1").await;
    let addr = pooler.running.addr;
    let startup = startup_packet(&[("user", APP_USER), ("database", &db)]);

    // Silent; half a startup packet; SSLRequest then silence; startup then no password.
    let mut openers: Vec<Vec<u8>> = vec![
        vec![],
        startup[..startup.len() / 2].to_vec(),
        with_length(8, &80_877_103i32.to_be_bytes()),
        startup.clone(),
    ];
    let mut endings = Vec::new();
    for opener in openers.drain(..) {
        endings.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&opener).await.unwrap();
            read_to_close(&mut s, HANG).await
        }));
    }
    // Byte by byte, slower than the timeout allows for the whole packet.
    let dribble = tokio::spawn(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let sent = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (sent, startup) = (sent.clone(), startup.clone());
            tokio::spawn(async move {
                for b in startup {
                    if wr.write_all(&[b]).await.is_err() {
                        return;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let mut bytes = Vec::new();
        let closed = tokio::time::timeout(HANG, async {
            use tokio::io::AsyncReadExt;
            let mut chunk = [0u8; 1024];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .is_ok();
        writer.abort();
        (
            Ending { bytes, closed },
            sent.load(Ordering::Relaxed),
            startup.len(),
        )
    });
    for (i, e) in endings.into_iter().enumerate() {
        let mut ending = e.await.unwrap();
        if i == 2 {
            assert_eq!(ending.bytes.first(), Some(&b'N'), "SSLRequest answered");
            ending.bytes.remove(0);
        }
        assert!(ending.closed, "login {i} was not dropped");
        let codes = error_codes(&ending.bytes);
        assert_eq!(codes, ["08P01"], "login {i}");
        assert_eq!(
            error_messages(&ending.bytes),
            ["client_login_timeout"],
            "login {i}"
        );
    }
    let (ending, sent, len) = dribble.await.unwrap();
    assert!(ending.closed, "the dribbling login was not dropped");
    assert!(sent < len, "the whole packet got through ({sent} of {len})");
    assert_eq!(error_messages(&ending.bytes), ["client_login_timeout"]);
    assert!(eventually(LIMIT, || async { pooler.running.app.client_count() == 0 }).await);
    // A normal login is unaffected.
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 1").await, "1");
}

// ---------------------------------------------------------------------------------------
// Postgres stopped and restarted under load.

/// How each transaction of the restart test ended.
#[derive(Default)]
struct Outcomes {
    committed: Vec<(i32, i32)>,
    /// COMMIT failed: the row may or may not be there.
    ambiguous: Vec<(i32, i32)>,
    errors: BTreeMap<String, usize>,
    crosstalk: Vec<String>,
    hangs: usize,
}

/// The SQLSTATEs a client may see while Postgres stops, is down, and starts.
const CLEAN_CODES: &[&str] = &[
    "08006", // pooler cannot connect / server conn crashed?
    "08P01", // query_wait_timeout
    "57P01", // terminating connection due to administrator command
    "57P02", // crash shutdown
    "57P03", // the database system is starting up / shutting down
];

fn classify(e: &tokio_postgres::Error) -> String {
    match sqlstate(e) {
        Some(code) => {
            assert!(
                CLEAN_CODES.contains(&code.as_str()),
                "unexpected error {code}: {}",
                message(e)
            );
            code
        }
        // The pooler closed the connection after sending its error.
        None if e.is_closed() || e.to_string().contains("closed") => "closed".into(),
        None => format!("other: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load() {
    let pg = PgServer::start();
    let db = pg.create_db("restart").await;
    let direct = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    direct
        .batch_execute("CREATE TABLE r (worker int, n int, marker text)")
        .await
        .unwrap();
    drop(direct);
    let pooler = Pooler::start(
        &pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 6\nserver_connect_timeout = 2\n\
         query_wait_timeout = 20",
    )
    .await;

    const WORKERS: i32 = 16;
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // Successes per worker, and the epoch (0 before the stop, 1 after the restart).
    let epoch = Arc::new(AtomicUsize::new(0));
    let ok_after: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WORKERS).map(|_| AtomicUsize::new(0)).collect());
    let ok_before: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WORKERS).map(|_| AtomicUsize::new(0)).collect());
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (url, outcomes, stop, epoch, ok_before, ok_after) = (
            pooler.app_url(),
            outcomes.clone(),
            stop.clone(),
            epoch.clone(),
            ok_before.clone(),
            ok_after.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                n += 1;
                let started_in = epoch.load(Ordering::Relaxed);
                if client.is_none() {
                    match tokio::time::timeout(HANG, try_connect(&url)).await {
                        Err(_) => {
                            outcomes.lock().unwrap().hangs += 1;
                            continue;
                        }
                        Ok(Err(e)) => {
                            let k = classify(&e);
                            *outcomes.lock().unwrap().errors.entry(k).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Ok(Ok(c)) => client = Some(c),
                    }
                }
                let c = client.as_ref().expect("connected");
                let marker = format!("w{w}-n{n}");
                let mut at_commit = false;
                let op = async {
                    c.batch_execute("BEGIN").await?;
                    c.execute("INSERT INTO r VALUES ($1, $2, $3)", &[&w, &n, &marker])
                        .await?;
                    let got: String = c
                        .query_one(
                            "SELECT marker FROM r WHERE worker = $1 AND n = $2",
                            &[&w, &n],
                        )
                        .await?
                        .get(0);
                    at_commit = true;
                    c.batch_execute("COMMIT").await?;
                    Ok::<_, tokio_postgres::Error>(got)
                };
                match tokio::time::timeout(HANG, op).await {
                    Err(_) => {
                        outcomes.lock().unwrap().hangs += 1;
                        client = None;
                    }
                    Ok(Ok(got)) => {
                        let mut o = outcomes.lock().unwrap();
                        if got != marker {
                            o.crosstalk.push(format!("{got} for {marker}"));
                        }
                        o.committed.push((w, n));
                        let counts = if started_in == 1 {
                            &ok_after
                        } else {
                            &ok_before
                        };
                        counts[w as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        let k = classify(&e);
                        {
                            let mut o = outcomes.lock().unwrap();
                            *o.errors.entry(k).or_default() += 1;
                            if at_commit {
                                o.ambiguous.push((w, n));
                            }
                        }
                        // The pooler ends a session whose server died: start over.
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let all = |counts: Arc<Vec<AtomicUsize>>| async move {
        eventually(Duration::from_secs(120), || {
            let counts = counts.clone();
            async move { counts.iter().all(|c| c.load(Ordering::Relaxed) > 0) }
        })
        .await
    };
    assert!(all(ok_before.clone()).await, "load never got going");

    let pg = Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    // Down for a while: clients get errors, not hangs.
    let errors_at_stop: usize = outcomes.lock().unwrap().errors.values().sum();
    assert!(
        eventually(LIMIT, || async {
            outcomes.lock().unwrap().errors.values().sum::<usize>()
                > errors_at_stop + WORKERS as usize
        })
        .await,
        "clients saw no errors with Postgres down"
    );
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.restart())
        .await
        .unwrap();
    epoch.store(1, Ordering::Relaxed);
    // The pool recovers by itself: every worker commits again.
    assert!(all(ok_after.clone()).await, "the pool did not recover");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let o = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(o.hangs, 0, "operations hung");
    assert!(o.crosstalk.is_empty(), "cross-talk: {:?}", o.crosstalk);
    let direct = connect(&pg.url(APP_USER, APP_PASSWORD, &db)).await;
    let rows: HashSet<(i32, i32)> = direct
        .query("SELECT worker, n FROM r", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let committed: HashSet<(i32, i32)> = o.committed.iter().copied().collect();
    let ambiguous: HashSet<(i32, i32)> = o.ambiguous.iter().copied().collect();
    let lost: Vec<_> = committed.difference(&rows).collect();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let phantom: Vec<_> = rows
        .difference(&committed)
        .filter(|r| !ambiguous.contains(r))
        .collect();
    assert!(phantom.is_empty(), "rows nobody committed: {phantom:?}");
    println!(
        "restart: {} committed, {} ambiguous (COMMIT failed), errors {:?}",
        committed.len(),
        ambiguous.len(),
        o.errors
    );
}

// ---------------------------------------------------------------------------------------
// Postgres down when the pooler starts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start_then_recovers() {
    let pg = PgServer::start();
    let db = pg.create_db("downatstart").await;
    let pg = Arc::new(pg);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    let pooler = Pooler::start(
        &pg,
        &db,
        &format!(
            "pool_mode = \"transaction\"\nserver_connect_timeout = 2\nmetrics_port = {}",
            free_port()
        ),
    )
    .await;
    assert_eq!(pooler.http_get("/healthz").await.0, 200);
    // The first client gets a clean error, bounded by server_connect_timeout.
    let err = tokio::time::timeout(HANG, try_connect(&pooler.app_url()))
        .await
        .expect("login hung with Postgres down")
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08006"), "{err:?}");
    // Not ready while the server cannot be reached.
    assert!(
        eventually(LIMIT, || async {
            pooler.http_get("/readyz").await.0 == 503
        })
        .await
    );
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.restart())
        .await
        .unwrap();
    // Ready again with no client having to try, then serving.
    assert!(
        eventually(LIMIT, || async {
            pooler.http_get("/readyz").await.0 == 200
        })
        .await,
        "/readyz did not recover"
    );
    let c = pooler.client().await;
    assert_eq!(first_value(&c, "SELECT 7").await, "7");
}

// ---------------------------------------------------------------------------------------
// Clients that vanish mid-COPY and mid-pipeline.

async fn open_transactions(pg: &PgServer, db: &str) -> i64 {
    pg.superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT NULL \
             AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_copy_commits_nothing() {
    let pg = PgServer::shared();
    let db = pg.create_db("midcopy").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 2",
    )
    .await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE c (v int)").await.unwrap();
    for opener in [
        "COPY c FROM STDIN",
        "BEGIN; INSERT INTO c VALUES (-1); COPY c FROM STDIN",
    ] {
        let mut s = login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
        s.write_all(&query(opener)).await.unwrap();
        read_until(&mut s, b'G').await;
        let rows: String = (0..2000).map(|i| format!("{i}\n")).collect();
        s.write_all(&msg(b'd', rows.as_bytes())).await.unwrap();
        s.write_all(&msg(b'd', b"2001\n")).await.unwrap();
        s.flush().await.unwrap();
        // Gone without CopyDone.
        drop(s);
        assert!(
            eventually(LIMIT, || async { open_transactions(pg, &db).await == 0 }).await,
            "{opener}: a transaction stayed open"
        );
        assert_eq!(first_value(&setup, "SELECT count(*) FROM c").await, "0");
    }
    // The pool still serves, outside any transaction.
    let c = pooler.client().await;
    assert_eq!(
        first_value(&c, "SELECT now() = statement_timestamp()").await,
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_pipeline_leaves_no_transaction() {
    let pg = PgServer::shared();
    let db = pg.create_db("midpipe").await;
    let pooler = Pooler::start(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1",
    )
    .await;
    let setup = pooler.client().await;
    setup.batch_execute("CREATE TABLE p (v int)").await.unwrap();
    let mut s = login(pooler.running.addr, APP_USER, APP_PASSWORD, &db).await;
    // A synced batch (committed), then an unsynced pipeline inside an explicit transaction.
    let mut batch = extended("INSERT INTO p VALUES (1)");
    batch.extend(sync());
    s.write_all(&batch).await.unwrap();
    read_until(&mut s, b'Z').await;
    let mut pipeline = extended("BEGIN");
    pipeline.extend(extended("INSERT INTO p VALUES (2)"));
    pipeline.extend(extended("INSERT INTO p VALUES (3)"));
    pipeline.extend(extended("SELECT pg_sleep(0.2)"));
    pipeline.extend(msg(b'H', &[]));
    s.write_all(&pipeline).await.unwrap();
    // Wait until the server has run it (the DataRow of the last query), then vanish.
    read_until(&mut s, b'D').await;
    drop(s);
    assert!(
        eventually(LIMIT, || async { open_transactions(pg, &db).await == 0 }).await,
        "the pipelined transaction stayed open"
    );
    assert_eq!(
        first_value(&setup, "SELECT string_agg(v::text, ',' ORDER BY v) FROM p").await,
        "1"
    );
    assert_eq!(
        first_value(&setup, "SELECT now() = statement_timestamp()").await,
        "t"
    );
}

// ---------------------------------------------------------------------------------------
// A client that sends ahead of the login.

/// SSLRequest, startup packet and a query in one write, before any answer (trust): the login
/// reads through a buffer, so the query arrives in that buffer with the startup packet and
/// must reach the session, not be dropped with the login's reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_with_the_startup_packet_is_answered() {
    let pg = PgServer::shared();
    let db = pg.create_db("sendahead").await;
    let pooler = Pooler::start(pg, &db, "auth_type = \"trust\"").await;
    let mut s = TcpStream::connect(pooler.running.addr).await.unwrap();
    let mut ahead = with_length(8, &80_877_103i32.to_be_bytes());
    ahead.extend(startup_packet(&[("user", APP_USER), ("database", &db)]));
    ahead.extend(query("SELECT 40 + 2"));
    s.write_all(&ahead).await.unwrap();
    let mut n = [0u8; 1];
    tokio::time::timeout(HANG, tokio::io::AsyncReadExt::read_exact(&mut s, &mut n))
        .await
        .expect("answer to SSLRequest")
        .unwrap();
    assert_eq!(&n, b"N");
    // The login's ReadyForQuery and the query's may come in one read: read up to both.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while messages(&buf).iter().filter(|(t, _)| *t == b'Z').count() < 2 {
        let got = tokio::time::timeout(HANG, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
            .await
            .expect("the query's answer")
            .unwrap();
        assert!(got > 0, "closed: {:?}", error_messages(&buf));
        buf.extend_from_slice(&chunk[..got]);
    }
    let msgs = messages(&buf);
    assert!(
        msgs.iter()
            .any(|(t, b)| *t == b'R' && b[..4] == [0, 0, 0, 0]),
        "AuthenticationOk"
    );
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    // DataRow: one column, length 2, "42".
    assert_eq!(&row.1[..], &[0, 1, 0, 0, 0, 2, b'4', b'2']);
}

/// The same send-ahead, against Postgres directly and through the pooler (md5 or SCRAM, as
/// each asks): the query goes in one write with the last authentication message, before
/// AuthenticationOk. Both must answer it alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_with_the_password_is_answered_as_postgres_answers_it() {
    let pg = PgServer::shared();
    let db = pg.create_db("sendaheadpw").await;
    let pooler = Pooler::start(pg, &db, "").await;
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], pg.port));
    let sql = "SELECT 6 * 7, current_user";
    let from_pg = answer_sent_with_the_password(direct, &db, sql).await;
    let through = answer_sent_with_the_password(pooler.running.addr, &db, sql).await;
    assert_eq!(through, from_pg);
    assert!(
        from_pg.iter().any(|(t, _)| *t == b'D'),
        "a row: {from_pg:?}"
    );
}

/// Logs in as the app user, writing `sql`'s Query together with the last authentication
/// message; returns the query's reply (the messages after the login's ReadyForQuery, up to
/// the next one).
async fn answer_sent_with_the_password(
    addr: std::net::SocketAddr,
    db: &str,
    sql: &str,
) -> Vec<(u8, Vec<u8>)> {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
    use postgres_protocol::message::frontend;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", APP_USER), ("database", db)]))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Authentication requests answered so far.
    let mut answered = 0;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let msgs = messages(&buf);
        if msgs.iter().filter(|(t, _)| *t == b'Z').count() >= 2 {
            let login_end = msgs.iter().position(|(t, _)| *t == b'Z').unwrap();
            return msgs[login_end + 1..].to_vec();
        }
        let requests: Vec<_> = msgs.iter().filter(|(t, _)| *t == b'R').collect();
        let mut out = BytesMut::new();
        let mut last = false;
        for (_, body) in &requests[answered..] {
            match i32::from_be_bytes(body[..4].try_into().unwrap()) {
                5 => {
                    let salt = body[4..8].try_into().unwrap();
                    let hash = postgres_protocol::authentication::md5_hash(
                        APP_USER.as_bytes(),
                        APP_PASSWORD.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out).unwrap();
                    last = true;
                }
                10 => {
                    let sc =
                        ScramSha256::new(APP_PASSWORD.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut out).unwrap();
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram.as_mut().expect("SASL started");
                    sc.update(&body[4..]).unwrap();
                    frontend::sasl_response(sc.message(), &mut out).unwrap();
                    last = true;
                }
                _ => {}
            }
        }
        answered = requests.len();
        if !out.is_empty() {
            if last {
                out.extend_from_slice(&query(sql));
            }
            s.write_all(&out).await.unwrap();
        }
        let got = tokio::time::timeout(HANG, tokio::io::AsyncReadExt::read(&mut s, &mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(got > 0, "closed: {:?}", error_messages(&buf));
        buf.extend_from_slice(&chunk[..got]);
    }
}
