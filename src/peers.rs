//! Several poolers as one for cancel requests (PgBouncer's peering).
//!
//! A CancelRequest arrives on a connection of its own, so behind a load balancer (or
//! `so_reuseport`) it usually reaches a pooler that never saw the key. Each pooler of a group
//! has a `peer_id` and writes it into the cancel keys it hands out; a pooler that receives a
//! key carrying another id passes the request, unchanged otherwise, to that peer, which
//! cancels as if the client had asked it directly (`client::forward_cancel`). The peer
//! checks the key, so a forwarder needs no secret of its own: the key authenticates itself.
//!
//! The key's layout (the 8 bytes of BackendKeyData: process id, then secret):
//! - process id: 31 random bits, as without peering. The client registry looks keys up by it
//!   and keeps it unique, so it keeps all its randomness (PgBouncer puts the id there; the
//!   layout differs, so pooler and PgBouncer instances cannot be peers of each other).
//! - secret: bit 31 clear, bits 30..17 the `peer_id` (hence at most 16383), bits 16..1
//!   random, bit 0 set while the request may still be forwarded. A forwarder clears it, and a
//!   pooler never forwards a key with it clear: at most one hop, so two peers that disagree
//!   about who owns an id (or an address that loops back) cannot bounce a request forever.
//!   The owner sets the bit again before comparing, as the key it stored has it set.
//!
//! Forwards are bounded per peer (`pool_size` in flight, default `default_pool_size`); one
//! that cannot get a slot, connect, send and see the peer close within the time limit
//! (`server_connect_timeout`) is dropped and counted as failed. The requester learns nothing
//! either way, as with Postgres. The peer answers by closing the connection once its own
//! cancel reached Postgres, and only then does the forwarder close the requester's: a client
//! that waits for its cancel to complete (libpq does) sees it complete.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::config::Config;

/// Bit 0 of the secret: the request may still be forwarded once.
const FORWARDABLE: i32 = 1;
const PEER_SHIFT: u32 = 17;
const PEER_BITS: i32 = 0x3fff;
/// The secret's random bits when the peer id takes the others.
const RANDOM_BITS: i32 = 0x1_fffe;

/// The secret half of a cancel key this pooler hands out: fully random with peering off,
/// else stamped with `peer_id` and marked forwardable.
pub fn issue_secret(peer_id: u16, random: i32) -> i32 {
    if peer_id == 0 {
        return random;
    }
    (i32::from(peer_id) << PEER_SHIFT) | (random & RANDOM_BITS) | FORWARDABLE
}

/// The peer id a cancel key's secret names (0 for keys of a pooler without peering, by
/// chance any other value: such keys are unknown to every peer).
pub fn peer_of(secret: i32) -> u16 {
    // Masked to 14 bits: the cast cannot truncate.
    ((secret >> PEER_SHIFT) & PEER_BITS) as u16
}

/// Where a CancelRequest goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One of this pooler's keys: look the client up with this secret.
    Local { secret: i32 },
    /// Another pooler's: forward this secret (its forwardable bit cleared) to that peer.
    Peer { peer_id: u16, secret: i32 },
    /// Forwarded once already and still not at its owner: dropped.
    Exhausted { peer_id: u16 },
}

/// Decides where a cancel key belongs, for a pooler with id `own` (0: peering off, every key
/// is looked up here as before).
pub fn route(own: u16, secret: i32) -> Route {
    if own == 0 {
        return Route::Local { secret };
    }
    let peer_id = peer_of(secret);
    if peer_id == own {
        Route::Local {
            secret: secret | FORWARDABLE,
        }
    } else if secret & FORWARDABLE == 0 {
        Route::Exhausted { peer_id }
    } else {
        Route::Peer {
            peer_id,
            secret: secret & !FORWARDABLE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("peer {0} is not in [peers]")]
    UnknownPeer(u16),
    #[error("the cancel request was forwarded once already and its owner is not this pooler")]
    Exhausted,
    #[error("timed out (server_connect_timeout)")]
    TimedOut,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One configured peer, with its in-flight bound and counters (SHOW PEERS, /metrics).
pub struct Peer {
    pub id: u16,
    pub host: String,
    pub port: u16,
    pub pool_size: usize,
    permits: Semaphore,
    /// Kept across a RELOAD that changes the peer's address, so counters only grow.
    pub counters: Arc<PeerCounters>,
}

/// Cancel requests forwarded to one peer.
#[derive(Default)]
pub struct PeerCounters {
    sent: AtomicU64,
    failed: AtomicU64,
}

impl PeerCounters {
    /// Forwards that reached the peer (it read the request and closed).
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Forwards that did not: no slot in time, connect or send failed, timed out.
    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }
}

/// This pooler's peers, swapped whole by RELOAD.
pub struct Peers {
    /// Fixed at start: the keys handed out carry it.
    own: u16,
    table: RwLock<Arc<BTreeMap<u16, Arc<Peer>>>>,
}

impl Peers {
    pub fn new(config: &Config) -> Peers {
        let peers = Peers {
            own: config.pooler.peer_id,
            table: RwLock::default(),
        };
        peers.apply(config);
        peers
    }

    /// This pooler's `peer_id` (0: peering off).
    pub fn own_id(&self) -> u16 {
        self.own
    }

    /// Takes the `[peers]` of a new config (start, RELOAD). A peer whose entry is unchanged
    /// keeps its slots, so forwards in flight stay counted against its bound.
    pub fn apply(&self, config: &Config) {
        let old = self.snapshot();
        let default_size = config.pooler.default_pool_size;
        let table = config
            .peers()
            .into_iter()
            .map(|(id, p)| {
                let pool_size = p.pool_size.unwrap_or(default_size);
                let peer = match old.get(&id) {
                    Some(o) if o.host == p.host && o.port == p.port && o.pool_size == pool_size => {
                        o.clone()
                    }
                    o => Arc::new(Peer {
                        id,
                        host: p.host,
                        port: p.port,
                        pool_size,
                        permits: Semaphore::new(pool_size),
                        counters: o.map(|o| o.counters.clone()).unwrap_or_default(),
                    }),
                };
                (id, peer)
            })
            .collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        if self.own == 0 && !config.peers.is_empty() {
            tracing::warn!("[peers] is set but peer_id is 0: cancel requests are not forwarded");
        }
    }

    /// The peers in force, by id.
    pub fn snapshot(&self) -> Arc<BTreeMap<u16, Arc<Peer>>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The call site of every CancelRequest: the secret to look up among this pooler's own
    /// clients, or None when the key is another pooler's (then it has been forwarded, within
    /// `limit`, or dropped).
    pub async fn cancel(&self, pid: i32, secret: i32, limit: Duration) -> Option<i32> {
        let result = match route(self.own, secret) {
            Route::Local { secret } => return Some(secret),
            Route::Exhausted { peer_id } => Err((peer_id, ForwardError::Exhausted)),
            Route::Peer { peer_id, secret } => self
                .forward(peer_id, pid, secret, limit)
                .await
                .map(|()| peer_id)
                .map_err(|e| (peer_id, e)),
        };
        match result {
            Ok(peer_id) => tracing::debug!(peer_id, "cancel request forwarded to peer"),
            // Forged keys land here too: not worth more than debug (PgBouncer found the same).
            Err((peer_id, e)) => {
                tracing::debug!(peer_id, error = %e, "cancel request not forwarded")
            }
        }
        None
    }

    /// Sends one CancelRequest to a peer and waits until the peer closes the connection.
    async fn forward(
        &self,
        peer_id: u16,
        pid: i32,
        secret: i32,
        limit: Duration,
    ) -> Result<(), ForwardError> {
        let peer = self
            .snapshot()
            .get(&peer_id)
            .cloned()
            .ok_or(ForwardError::UnknownPeer(peer_id))?;
        let mut msg = BytesMut::with_capacity(16);
        postgres_protocol::message::frontend::cancel_request(pid, secret, &mut msg);
        let result = tokio::time::timeout(limit, async {
            // Closed only if the semaphore is dropped, which a live `peer` prevents.
            let _slot = peer
                .permits
                .acquire()
                .await
                .map_err(|_| ForwardError::TimedOut)?;
            if peer.host.starts_with('/') {
                let path = format!("{}/.s.PGSQL.{}", peer.host, peer.port);
                send(tokio::net::UnixStream::connect(path).await?, &msg).await
            } else {
                let s = tokio::net::TcpStream::connect((peer.host.as_str(), peer.port)).await?;
                let _ = s.set_nodelay(true);
                send(s, &msg).await
            }
        })
        .await
        .unwrap_or(Err(ForwardError::TimedOut));
        match &result {
            Ok(()) => peer.counters.sent.fetch_add(1, Relaxed),
            Err(_) => peer.counters.failed.fetch_add(1, Relaxed),
        };
        result
    }
}

/// Writes the request, then reads until the peer closes: it does once its cancel is done.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, msg: &[u8]) -> Result<(), ForwardError> {
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_peer_id_and_route_one_hop() {
        for random in [0, -1, 0x1234_5678, i32::MIN, i32::MAX] {
            for own in [1u16, 2, 16383] {
                let secret = issue_secret(own, random);
                assert!(secret > 0, "{secret:#x}");
                assert_eq!(peer_of(secret), own);
                // Its owner looks it up as issued.
                assert_eq!(route(own, secret), Route::Local { secret });
                // Another peer forwards it once, flagged as forwarded...
                let Route::Peer {
                    peer_id,
                    secret: forwarded,
                } = route(7, secret)
                else {
                    panic!("not forwarded");
                };
                assert_eq!(peer_id, own);
                assert_ne!(forwarded, secret);
                // ... which the owner still recognises, and no one else forwards again.
                assert_eq!(route(own, forwarded), Route::Local { secret });
                assert_eq!(route(9, forwarded), Route::Exhausted { peer_id: own });
            }
        }
        // Peering off: keys are fully random and always local.
        assert_eq!(issue_secret(0, -5), -5);
        assert_eq!(route(0, -5), Route::Local { secret: -5 });
    }

    #[test]
    fn the_random_part_keeps_sixteen_bits() {
        let all: std::collections::HashSet<i32> =
            (0..1 << 17).map(|r| issue_secret(3, r)).collect();
        assert_eq!(all.len(), 1 << 16);
    }
}
