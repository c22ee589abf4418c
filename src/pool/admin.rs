//! The pool's housekeeping (the janitor) and the admin console's controls.

use std::sync::Weak;
use std::time::Duration;

use crate::stats::CloseReason;

use super::*;

/// Per-pool housekeeping, once a second while the pool exists.
pub(super) async fn janitor(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.maintain();
        pool.stats.roll_period();
    }
}

/// The admin console's controls.
impl Pool {
    /// PAUSE: new transactions wait; idle servers close now, busy ones when they come back.
    pub fn pause(&self) {
        self.close_idle(CloseReason::Admin);
    }

    /// Shutdown, once clients are gone: every server closes, idle ones now.
    pub fn shut_down(&self) {
        self.lock().shutting_down = true;
        self.close_idle(CloseReason::Shutdown);
        drop(std::mem::take(&mut self.lock().waiters));
    }

    fn close_idle(&self, reason: CloseReason) {
        let idle = {
            let mut st = self.lock();
            st.paused = true;
            let idle = std::mem::take(&mut st.idle);
            self.remove_slots(&mut st, idle.len());
            idle
        };
        self.stats.server_closed_n(reason, idle.len());
        for server in idle {
            tokio::spawn(server.terminate());
        }
    }

    /// RECONNECT: every server open now is closed instead of reused: idle ones at once, the
    /// ones clients hold when they come back. New servers are opened as needed meanwhile.
    /// Over several hosts, the timelines seen before are forgotten too (see `hosts`).
    pub fn reconnect(self: &Arc<Self>) {
        if let Some(h) = &self.hosts {
            h.forget_timelines();
        }
        let idle = {
            let mut st = self.lock();
            st.reconnect_mark = Some(Instant::now());
            let idle = std::mem::take(&mut st.idle);
            self.remove_slots(&mut st, idle.len());
            // Every server still counted is held by a client (or still connecting, which
            // `open` counts when it finishes): all older than the mark.
            st.close_needed = st.total - st.connecting;
            self.grant_waiters(&mut st);
            idle
        };
        self.stats.server_closed_n(CloseReason::Admin, idle.len());
        for server in idle {
            tokio::spawn(server.terminate());
        }
    }

    /// Servers RECONNECT marked that clients still hold (PgBouncer's `close_needed`).
    pub fn close_needed(&self) -> usize {
        self.lock().close_needed
    }

    /// RESUME: waiters get servers again, first come first served.
    pub fn resume(self: &Arc<Self>) {
        let mut st = self.lock();
        if !st.paused || st.shutting_down {
            return;
        }
        st.paused = false;
        self.grant_waiters(&mut st);
    }

    /// KILL: paused, and every waiter is turned away (its client gets an error).
    pub fn kill(&self) {
        self.pause();
        let waiters = std::mem::take(&mut self.lock().waiters);
        drop(waiters);
    }

    /// The idle servers, for `SHOW SERVERS` (busy ones are listed through their clients).
    pub fn idle_servers(&self) -> Vec<ServerSnapshot> {
        self.lock()
            .idle
            .iter()
            .map(|s| ServerSnapshot {
                id: s.id,
                backend_pid: s.backend_pid,
                host: s.host,
                connected_us: s.created_us,
                last_used_us: s.last_used_us,
                local: s.stream.local_addr().ok(),
            })
            .collect()
    }
}

/// The janitor's work.
impl Pool {
    /// A slot to open one more server in, while the pool is below `min_pool_size`, nobody
    /// waits (a waiter would take the slot first) and a login place is free.
    fn min_pool_slot(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.lock();
        let min = st.limits.min_pool_size.min(st.limits.pool_size);
        (!st.paused && st.waiters.is_empty() && st.total < min && self.add_login(&mut st))
            .then(|| Slot::opening(self))
    }

    /// Closes servers idle past `server_idle_timeout` (down to `min_pool_size`), past
    /// `server_lifetime`, beyond the pool size (after RELOAD shrank it), and idle servers
    /// Postgres has closed; opens servers up to `min_pool_size`; serves waiters whom a shared
    /// limit kept waiting. While the last attempt to reach the server failed, or idle servers
    /// were found dead, tries one connection a tick: that is how `/readyz` learns the server
    /// is back (or gone) without waiting for a client to try.
    pub(super) fn maintain(self: &Arc<Self>) {
        let mut closing: Vec<(Box<ServerConn>, CloseReason)> = Vec::new();
        let mut dead = 0;
        let mut to_open = 0;
        let mut slots = Vec::new();
        let mut evict = false;
        // Several hosts: the size follows how many fit (`HostSet::pool_size`).
        let scaled = self.hosts.as_ref().map(|h| h.pool_size());
        {
            let mut st = self.lock();
            if let Some(size) = scaled {
                st.limits.pool_size = size;
            }
            let now = clock::now_us();
            let mut i = 0;
            while i < st.idle.len() {
                let server = &st.idle[i];
                let keep_for_min = st.total - closing.len() - dead <= st.limits.min_pool_size;
                let reason = if !server.is_alive() {
                    None
                } else if st.limits.life_over(server, now) {
                    Some(CloseReason::Lifetime)
                } else if !keep_for_min
                    && st
                        .limits
                        .idle_timeout
                        .is_some_and(|t| clock::passed(server.last_used_us, now, t))
                {
                    Some(CloseReason::IdleTimeout)
                } else if st.total - closing.len() - dead > st.limits.pool_size {
                    Some(CloseReason::Evicted)
                } else {
                    i += 1;
                    continue;
                };
                let server = st.idle.remove(i);
                match reason {
                    Some(reason) => closing.push((server, reason)),
                    None => {
                        // Dropping the socket is all a dead server needs.
                        drop(server);
                        dead += 1;
                    }
                }
            }
            let n = closing.len() + dead;
            self.remove_slots(&mut st, n);
            if !st.paused {
                let min = st.limits.min_pool_size.min(st.limits.pool_size);
                if st.total < min && st.waiters.is_empty() {
                    to_open = min - st.total;
                } else if (dead > 0 || self.stats.failing())
                    && st.connecting == 0
                    && st.total < st.limits.pool_size
                {
                    to_open = 1;
                }
                while slots.len() < to_open && self.add_login(&mut st) {
                    slots.push(Slot::opening(self));
                }
                self.grant_waiters(&mut st);
                evict = !st.waiters.is_empty()
                    && st.idle.is_empty()
                    && st.total < st.limits.pool_size
                    && self.shared.full().is_some();
            }
        }
        if evict && let Some(limit) = self.shared.full() {
            // Waiters held back by a shared limit while another pool idles on its servers.
            if limit.evict_idle(self) {
                self.grant_waiters(&mut self.lock());
            }
        }
        self.stats.server_closed_n(CloseReason::Dead, dead);
        for (server, reason) in closing {
            tracing::debug!(database = %self.database, user = %self.user, reason = reason.label(), "closing idle server");
            self.stats.server_closed(reason);
            tokio::spawn(server.terminate());
        }
        for slot in slots {
            let pool = self.clone();
            tokio::spawn(async move {
                // Logins are `MAX_CONNECTING` at a time: the next one starts when this ends,
                // not at the next tick.
                let mut next = Some(slot);
                while let Some(slot) = next.take() {
                    let Ok(server) = pool.open(slot).await else {
                        break;
                    };
                    pool.checkin(server);
                    next = pool.min_pool_slot();
                }
            });
        }
    }
}
