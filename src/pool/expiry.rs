//! The queue's deadlines, kept by one task per pool instead of a timer per wait: a waiter
//! past `query_wait_timeout` is told so, one past `reserve_pool_timeout` may open a reserve
//! server, one past `query_wait_notify` is sent its NOTICE (by its session, told here). Arming and dropping a timer on every wait cost more than the rest of the queue's
//! work together when thousands of clients share a pool; this task wakes at the next
//! deadline, which under load is seconds away, and sleeps while nobody waits.

use std::sync::{Arc, Weak};
use std::time::Instant;

use super::{Grant, Pool};
use crate::error::PoolerError;
use crate::wakeup::Wakeup;

/// Runs until the pool is gone (its drop wakes the task).
pub(super) async fn run(pool: Weak<Pool>, wake: Arc<Wakeup>) {
    loop {
        let next = match pool.upgrade() {
            Some(pool) => pool.expire_waiters(Instant::now()),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.wait() => {}
                }
            }
            None => wake.wait().await,
        }
    }
}

impl Pool {
    /// Fails the waiters past `query_wait_timeout`, serves those past `reserve_pool_timeout`
    /// from the reserve, and returns the next deadline; None (and parked, to be woken by the
    /// next waiter) when nobody waits.
    pub(super) fn expire_waiters(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        if let Some(timeout) = st.limits.query_wait_timeout {
            // Arrival order is nearly start order (a checkout that retried is the exception),
            // so the expired ones are at the front, but every one is looked at.
            let mut i = 0;
            while i < st.waiters.len() {
                if now >= st.waiters[i].since + timeout {
                    if let Some(w) = st.waiters.remove(i) {
                        let _ = w.tx.send(Grant::Failed(PoolerError::QueryWaitTimeout));
                    }
                } else {
                    i += 1;
                }
            }
        }
        for w in st.waiters.iter_mut() {
            if w.notify_at.is_some_and(|at| now >= at) {
                w.notify_at = None;
                w.tx.notice();
            }
        }
        self.grant_waiters(&mut st);
        if st.waiters.is_empty() {
            st.expiry_parked = true;
            return None;
        }
        // A full reserve sets no deadline: a server or slot coming back serves the waiters
        // past theirs (`grant_waiters`), as RESUME does after a PAUSE.
        let reserve_open =
            st.limits.reserve_size > 0 && st.total < st.limits.pool_size + st.limits.reserve_size;
        let query = st.limits.query_wait_timeout;
        st.waiters
            .iter()
            .flat_map(|w| {
                let reserve = (reserve_open && w.reserve_after > now).then_some(w.reserve_after);
                [query.map(|t| w.since + t), reserve, w.notify_at]
            })
            .flatten()
            .min()
    }
}
