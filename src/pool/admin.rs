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
    pub fn reconnect(self: &Arc<Self>) {
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
                connected_us: us_of(s.created_at),
                last_used_us: us_of(s.last_used),
                local: s.stream.local_addr().ok(),
            })
            .collect()
    }
}
