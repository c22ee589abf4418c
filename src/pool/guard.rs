//! What a checkout holds: guards that give themselves back when dropped (a slot, a server),
//! and the grant a waiter is handed.

use std::sync::Arc;

use crate::error::PoolerError;
use crate::server::ServerConn;
use crate::stats::CloseReason;

use super::Pool;

/// What a waiter is handed: a ready server, or the right to open one. Both are guards: a
/// grant dropped unreceived (its waiter gave up) gives itself back.
#[allow(clippy::large_enum_variant)] // one per waiter, moved once: boxing would only add an allocation
pub(super) enum Grant {
    Server(PooledServer),
    Slot(Slot),
    /// The pool has no server and could not open one: the error, for every waiter at once.
    Failed(PoolerError),
}

/// The right to one server in a pool: one unit of its `total` and of the shared limits,
/// counted under the pool's lock when the guard is made. Dropped, it gives the unit back and
/// serves the next waiter, so a checkout abandoned at any await (a `client_login_timeout`
/// while the server is still logging in) loses nothing.
pub(super) struct Slot {
    pub(super) pool: Arc<Pool>,
    pub(super) armed: bool,
    /// Given out to open a server, and counted in the pool's `connecting` until the login
    /// ends (`Pool::open` clears it then) or the slot is dropped unused.
    pub(super) connecting: bool,
}

impl Slot {
    /// For a unit just counted (or held by an idle server being taken out).
    pub(super) fn counted(pool: &Arc<Pool>) -> Slot {
        Slot {
            pool: pool.clone(),
            armed: true,
            connecting: false,
        }
    }

    /// For a unit just counted, and in `connecting` too: the right to open a server.
    pub(super) fn opening(pool: &Arc<Pool>) -> Slot {
        Slot {
            pool: pool.clone(),
            armed: true,
            connecting: true,
        }
    }

    /// The unit stays counted with nobody holding it: it is accounted for under a lock the
    /// caller holds (which dropping the guard would need too), `connecting` included.
    pub(super) fn detach(mut self) {
        self.armed = false;
        self.connecting = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release_slot(self.connecting);
        }
    }
}

/// A checked-out server. Give it back with `Pool::checkin` (idle and clean) or
/// `Pool::discard`; dropped otherwise, it is closed and its slot given back.
pub struct PooledServer {
    /// Present until `detach` (checkin, or a grant that could not be delivered). Boxed: a
    /// checkout moves its server through several futures and the waiter's grant, and a move
    /// of the pointer is what those cost then (the struct is some 400 bytes).
    pub(super) server: Option<Box<ServerConn>>,
    pub(super) reason: CloseReason,
    // Dropped after `server`: the slot is free only once the socket is closed.
    pub(super) slot: Slot,
}

impl PooledServer {
    pub(super) fn new(server: Box<ServerConn>, slot: Slot) -> PooledServer {
        PooledServer {
            server: Some(server),
            reason: CloseReason::Unclean,
            slot,
        }
    }

    /// Takes the server out with its slot still counted (for the idle list, a waiter, or
    /// uncounted by the caller under the lock).
    pub(super) fn detach(mut self) -> Box<ServerConn> {
        self.slot.armed = false;
        self.server
            .take()
            .expect("a pooled server holds its server until detached")
    }
}

impl std::ops::Deref for PooledServer {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.server
            .as_ref()
            .expect("a pooled server holds its server until detached")
    }
}

impl std::ops::DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.server
            .as_mut()
            .expect("a pooled server holds its server until detached")
    }
}

impl std::fmt::Debug for PooledServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled({:?})", self.server)
    }
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let pool = &self.slot.pool;
            pool.stats.server_closed(self.reason);
            pool.lock().untag(&server);
            // Dropping the socket closes it; a backend mid-transaction rolls back on EOF.
            drop(server);
        }
    }
}

/// Hands a server to a waiter; the server back if the waiter has gone.
pub(super) fn offer(tx: super::GrantTx, server: PooledServer) -> Option<PooledServer> {
    match tx.send(Grant::Server(server)) {
        Ok(()) => None,
        Err(Grant::Server(server)) => Some(server),
        Err(Grant::Slot(slot)) => {
            // Not what was sent; keep the unit counted as it was.
            slot.detach();
            None
        }
        Err(Grant::Failed(_)) => None,
    }
}
