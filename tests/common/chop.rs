//! A chopping TCP relay: accepts on a free loopback port, connects each accepted connection to
//! a target address and forwards the bytes both ways in random 1–1500-byte pieces with random
//! sub-millisecond delays between them, as a real network may deliver them.
//!
//! Placed between a client and the pooler (client side) or between the pooler and Postgres
//! (server side: start the pooler with `Pooler::start_on_port(pg, chopper.port(), ...)`), it
//! makes every message boundary land anywhere in a read.
//!
//! The piece sizes and delays come from a seeded PRNG: the seed is printed when a chopper
//! starts, and `CHOP_SEED=<n>` replays it (the task scheduling is not replayed, the cuts are).
//! Memory is bounded: a direction reads at most `READ_MAX` bytes before writing them all out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{PgServer, Pooler};

/// The largest piece written at once.
pub const PIECE_MAX: usize = 1500;
/// The largest delay drawn between two pieces.
pub const DELAY_MAX_MICROS: u64 = 300;
/// What one direction reads before writing it out (the relay's whole buffer).
const READ_MAX: usize = 16 * 1024;

/// The base seed of this process's choppers: `CHOP_SEED` or the clock, printed once.
pub fn base_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let seed = std::env::var("CHOP_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("chop: CHOP_SEED={seed} (set it to replay these cuts)");
        seed
    })
}

/// splitmix64: turns a seed and a stream number into an independent PRNG state.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// xorshift64*: the piece sizes and delays.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A running chopper; stops (with every connection through it) when dropped.
pub struct Chopper {
    pub addr: SocketAddr,
    pub seed: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Chopper {
    /// A chopper forwarding to `target`, its seed derived from the process's base seed.
    pub async fn start(target: SocketAddr, label: &str) -> Chopper {
        static N: AtomicU64 = AtomicU64::new(0);
        let seed = mix(base_seed() ^ mix(N.fetch_add(1, Ordering::Relaxed)));
        Chopper::start_seeded(target, label, seed).await
    }

    /// A chopper with a given seed.
    pub async fn start_seeded(target: SocketAddr, label: &str, seed: u64) -> Chopper {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind chopper");
        let addr = listener.local_addr().expect("chopper addr");
        eprintln!("chop: {label} {addr} -> {target}, seed {seed}");
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection) when this task is aborted.
            let mut conns = JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        n += 1;
                        let conn_seed = mix(seed ^ mix(n));
                        conns.spawn(relay(inbound, target, conn_seed));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Chopper { addr, seed, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Chopper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One accepted connection: forwards both ways until both directions are done.
async fn relay(inbound: TcpStream, target: SocketAddr, seed: u64) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)).await
    else {
        return; // the client sees the connection close, as with a refused connect
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, Prng(mix(seed ^ 1))),
        pump(out_read, in_write, Prng(mix(seed ^ 2))),
    );
}

/// One direction: reads what arrives and writes it out in random pieces with random delays.
/// On EOF it half-closes the other side; on an error it stops (dropping its halves).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rng: Prng,
) {
    let mut buf = vec![0u8; READ_MAX];
    // tokio's timer has millisecond resolution: the sub-millisecond delays drawn add up here
    // and are slept once they reach a millisecond; pieces in between yield to the scheduler,
    // so that the reader on the other side gets a chance to read each one separately.
    let mut owed_micros = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut pos = 0;
        while pos < n {
            let piece = (rng.range(1, PIECE_MAX as u64) as usize).min(n - pos);
            if to.write_all(&buf[pos..pos + piece]).await.is_err() {
                return;
            }
            if to.flush().await.is_err() {
                return;
            }
            pos += piece;
            owed_micros += rng.range(0, DELAY_MAX_MICROS);
            if owed_micros >= 1000 {
                tokio::time::sleep(Duration::from_micros(owed_micros)).await;
                owed_micros = 0;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A pooler reached through a client-side chopper and reaching Postgres through a server-side
/// chopper: client → chop → pooler → chop → Postgres.
pub struct Chopped {
    pub pooler: Pooler,
    pub client_side: Chopper,
    pub server_side: Chopper,
}

impl Chopped {
    /// Starts the server-side chopper, a pooler with `[pooler]` settings `extra` whose
    /// database entry points at it, and the client-side chopper in front of the pooler.
    pub async fn start(pg: &PgServer, db: &str, extra: &str) -> Chopped {
        let server_side =
            Chopper::start(SocketAddr::from(([127, 0, 0, 1], pg.port)), "server side").await;
        let pooler = Pooler::start_on_port(pg, server_side.port(), db, extra, "").await;
        let client_side = Chopper::start(
            SocketAddr::from(([127, 0, 0, 1], pooler.port())),
            "client side",
        )
        .await;
        Chopped {
            pooler,
            client_side,
            server_side,
        }
    }

    /// Where clients connect: the client-side chopper.
    pub fn addr(&self) -> SocketAddr {
        self.client_side.addr
    }

    pub fn port(&self) -> u16 {
        self.client_side.port()
    }

    /// A connection string through the client-side chopper.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={}",
            self.port(),
            self.pooler.db
        )
    }

    pub fn app_url(&self) -> String {
        self.url(super::APP_USER, super::APP_PASSWORD)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        super::connect(&self.app_url()).await
    }
}
