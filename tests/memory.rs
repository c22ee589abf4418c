//! What a client costs in memory while it waits for a server: the heap this process holds,
//! counted by its own allocator (the pooler runs in it). The mission's shape is thousands of
//! clients on a pool of 150, most of them queued with a request at any moment, so what a
//! queued client holds is most of the pooler's memory under load.
//!
//! The only test of its binary: other tests' allocations would be counted with it.

mod common;
mod wire;

use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// The system allocator, counting the bytes it has handed out and not yet had back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to `System` unchanged; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Clients queued behind one server each hold their request in a buffer its size: before,
/// each held a 16 KiB read buffer (and the server-side buffers of a transaction it had not
/// started), 18 KiB and more per waiting client, where PgBouncer holds about 4 KiB. Their
/// queries then all run, in order, with their own results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_holds_its_request_not_a_read_buffer() {
    const QUEUED: usize = 300;
    wire::raise_nofile();
    let pg = PgServer::shared();
    let db = pg.create_db("queued_memory").await;
    let pooler = Pooler::start_with_userlist(
        pg,
        &db,
        "pool_mode = \"transaction\"\ndefault_pool_size = 1\nmax_client_conn = 1000\n\
         admin_users = \"admin\"",
        &format!("{}\"admin\" \"admin-pw\"\n", Pooler::default_userlist()),
    )
    .await;
    let console = connect(&pooler.console_url("admin", "admin-pw")).await;
    // The pool's one server, held in a transaction: every other request queues.
    let holder = pooler.client().await;
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], pooler.port()).into();
    let mut clients = Vec::with_capacity(QUEUED);
    for _ in 0..QUEUED {
        let s = wire::login(addr, APP_USER, APP_PASSWORD, &db).await;
        clients.push(wire::Raw::new(s));
    }
    let waiting = || async {
        show(&console, "SHOW POOLS")
            .await
            .iter()
            .find(|r| r["database"] == db && r["user"] == APP_USER)
            .map(|r| r["cl_waiting"].clone())
    };
    assert_eq!(waiting().await.as_deref(), Some("0"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = LIVE.load(Relaxed);

    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&wire::query(&format!(
            "SELECT {i} AS n, repeat('x', 100) AS pad"
        )))
        .await;
    }
    let all = QUEUED.to_string();
    assert!(
        eventually(LIMIT, || async {
            waiting().await.as_deref() == Some(&*all)
        })
        .await,
        "not every client queued: cl_waiting {:?}",
        waiting().await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = LIVE.load(Relaxed);
    let per_client = (queued - idle) / QUEUED as isize;
    println!("heap per queued client: {per_client} bytes ({idle} -> {queued})");
    assert!(
        per_client < 6 * 1024,
        "a queued client holds {per_client} bytes of heap"
    );

    holder.batch_execute("COMMIT").await.expect("COMMIT");
    for (i, c) in clients.iter_mut().enumerate() {
        let seen = c.until_ready().await;
        assert!(seen.errors.is_empty(), "client {i}: {:?}", seen.errors);
        assert_eq!(
            seen.rows,
            vec![vec![Some(i.to_string()), Some("x".repeat(100))]],
            "client {i}"
        );
    }
    assert_eq!(waiting().await.as_deref(), Some("0"));
}
