//! Session threads: with `workers` above one, that many threads each run a single-threaded
//! tokio runtime of their own (its own I/O driver, timers and run queue) instead of all
//! sessions sharing one work-stealing runtime.
//!
//! Why: on tokio's multi-threaded runtime, a worker that finds more than one task ready
//! wakes a sleeping one to steal (a `futex` and an `epoll_wait` on another core), and a
//! session's two sockets are read wherever its task happens to run; that cost 10-20 % more
//! CPU per transaction than one thread at the same load (`docs/benchmarks.md`). Here a session stays on the thread
//! it was given at accept, its client socket is registered with that thread's I/O driver, and
//! a server it checks out is moved to the same driver (`ServerConn::adopt`), so a
//! transaction's reads, writes and wake-ups stay on one thread, as in PgBouncer; the threads
//! meet only in the pools' shared state.
//!
//! Each thread accepts new sessions itself, on a listener of its own (`listener.rs`: one
//! `SO_REUSEPORT` group per address, the kernel hashing each connection to one listener),
//! so a session's client socket is registered with its thread's driver from the start and
//! no thread wakes another to hand a connection over.
//! Unix-socket clients stay on the main thread's runtime (their loopback bridge lives there);
//! the servers they check out are not moved (`adopt` moves only onto a worker thread).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How many worker threads `workers` starts on a machine of `cores`: None runs the sessions
/// on the caller's runtime (one thread). 0 picks one per two cores: on a machine shared with
/// Postgres or the app, a second thread that sleeps and wakes between nearly every event
/// cost 5-17 % more CPU per transaction on every row of the load bench at 2 cores, with no
/// more throughput (`docs/benchmarks.md`, "The default `workers`").
pub fn session_threads(workers: usize, cores: usize) -> Option<usize> {
    match workers {
        0 => Some(cores / 2).filter(|n| *n > 1),
        1 => None,
        n => Some(n),
    }
}

/// Worker ids are unique in the process (tests run several poolers in one).
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This worker thread's id; None on any other thread.
    static CURRENT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The worker thread this code runs on, if it runs on one: an I/O resource made here is
/// driven by this thread's runtime alone.
pub fn current() -> Option<u32> {
    CURRENT.with(|c| c.get())
}

/// Moves `stream` to this worker thread's I/O driver when `home` (the worker it is registered
/// with) is another's, and records the move. The descriptor is duplicated and the duplicate
/// registered here before the old one is deregistered and closed, so the connection itself is
/// untouched. Outside a worker thread nothing moves: a runtime of several threads shares one
/// driver.
pub fn adopt(stream: &mut TcpStream, home: &mut Option<u32>) -> std::io::Result<()> {
    let Some(here) = current() else {
        return Ok(());
    };
    if *home == Some(here) {
        return Ok(());
    }
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned()?;
    let moved = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    drop(std::mem::replace(stream, moved));
    *home = Some(here);
    Ok(())
}

struct Worker {
    handle: Handle,
    /// Joined by tests only: the pooler never waits for a worker to end (its exit does not
    /// need to, and a drop inside a runtime must not block).
    #[cfg_attr(not(test), allow(dead_code))]
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The session threads. Dropped, they stop: each drops its runtime and with it every task
/// still on it (the supervisor has ended the sessions by then).
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stopped = stop.clone();
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let thread = std::thread::Builder::new()
                .name(format!("pooler-worker-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(id)));
                    runtime.block_on(stopped.cancelled());
                    // Sockets still open are closed; nothing here may hold the exit up.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            workers.push(Worker {
                handle,
                thread: Some(thread),
            });
        }
        Ok(Workers { workers, stop })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Worker `i`'s runtime (modulo their number).
    pub fn handle(&self, i: usize) -> &Handle {
        // `start` makes at least one worker, so the index is always in range.
        &self.workers[i % self.workers.len()].handle
    }
}

impl Drop for Workers {
    /// Not joined: this may run inside a runtime, which must not block.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    impl Workers {
        /// Runs `make`'s future on worker `i` and hands back its output.
        fn run_on<F, Fut, T>(&self, i: usize, make: F) -> T
        where
            F: FnOnce() -> Fut + Send + 'static,
            Fut: Future<Output = T> + Send + 'static,
            T: Send + 'static,
        {
            let (tx, rx) = std::sync::mpsc::channel();
            self.workers[i].handle.spawn(async move {
                let _ = tx.send(make().await);
            });
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("the worker answers")
        }

        /// Stops the threads and waits until their runtimes are gone.
        fn join(mut self) {
            self.stop.cancel();
            for w in &mut self.workers {
                if let Some(t) = w.thread.take() {
                    t.join().expect("a worker thread ends cleanly");
                }
            }
        }
    }

    #[test]
    fn workers_zero_starts_one_thread_per_two_cores() {
        assert_eq!(session_threads(0, 1), None);
        assert_eq!(session_threads(0, 2), None);
        assert_eq!(session_threads(0, 3), None);
        assert_eq!(session_threads(0, 4), Some(2));
        assert_eq!(session_threads(0, 9), Some(4));
        assert_eq!(session_threads(1, 8), None);
        assert_eq!(session_threads(2, 1), Some(2));
    }

    #[test]
    fn an_adopted_socket_works_after_the_worker_that_made_it_is_gone() {
        let first = Workers::start(1).unwrap();
        let second = Workers::start(1).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            for _ in 0..2 {
                s.read_exact(&mut buf).unwrap();
                s.write_all(&buf).unwrap();
            }
        });
        let (mut stream, mut home) = first.run_on(0, move || async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            (s, current())
        });
        assert!(home.is_some());
        // The first worker's I/O driver is gone: a socket still registered with it fails.
        first.join();
        let (moved, echoed) = second.run_on(0, move || async move {
            let before = home;
            adopt(&mut stream, &mut home).unwrap();
            stream.write_all(b"pong").await.unwrap();
            let mut buf = [0u8; 4];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                stream.read_exact(&mut buf),
            )
            .await;
            (
                before != home && home == current(),
                n.map(|r| r.map(|_| buf)),
            )
        });
        assert!(moved, "the socket is now the second worker's");
        assert_eq!(echoed.unwrap().unwrap(), *b"pong");
        peer.join().unwrap();
        second.join();
    }
}
