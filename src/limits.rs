//! `max_db_connections` and `max_user_connections`: server counts shared by several pools
//! (every pool of a database, every pool of a user). A pool takes a unit from both before it
//! opens a server and gives them back when the server closes, so the counts are exact.
//!
//! When a limit is reached a pool may close an idle server of another pool sharing it
//! (PgBouncer's eviction): an idle server elsewhere must not starve a client here.
//!
//! The limits sit below the pool (a pool holds its `PoolLimitsShared`), so they reach the
//! pools they evict from through `Evict`, which `Pool` implements, not through `Pool` itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A pool, as a limit sees it: something that can close one of its idle servers.
pub trait Evict: Send + Sync {
    /// Closes the pool's least recently used idle server; returns whether there was one.
    fn evict_one_idle(&self) -> bool;

    /// The pool's address, so `evict_idle` can skip the asking pool however it is held.
    fn id(&self) -> *const () {
        self as *const Self as *const ()
    }
}

/// A pool asks through its `Arc` as well as through `&Pool`; both name the same pool.
impl<P: Evict + ?Sized> Evict for Arc<P> {
    fn evict_one_idle(&self) -> bool {
        (**self).evict_one_idle()
    }

    fn id(&self) -> *const () {
        (**self).id()
    }
}

#[derive(Default)]
pub struct ConnLimit {
    /// 0: no limit.
    max: AtomicUsize,
    used: AtomicUsize,
    /// The pools counted here, for eviction.
    pools: Mutex<Vec<Weak<dyn Evict>>>,
}

impl ConnLimit {
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            max: AtomicUsize::new(max),
            ..ConnLimit::default()
        })
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts one more server if the limit allows.
    pub fn try_take(&self) -> bool {
        let max = self.max();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (max == 0 || u < max).then_some(u + 1)
            })
            .is_ok()
    }

    pub fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub fn register<P: Evict + 'static>(&self, pool: &Arc<P>) {
        let pool: Weak<P> = Arc::downgrade(pool);
        let pool: Weak<dyn Evict> = pool;
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// Closes the least recently used idle server of another pool counted here; returns
    /// whether one was closed. Must be called without holding any pool's lock.
    pub fn evict_idle<P: Evict>(&self, except: &P) -> bool {
        let pools: Vec<Arc<dyn Evict>> = {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        pools
            .iter()
            .filter(|p| p.id() != except.id())
            .any(|p| p.evict_one_idle())
    }
}

/// Both limits a pool's servers count against.
#[derive(Clone)]
pub struct PoolLimitsShared {
    pub database: Arc<ConnLimit>,
    pub user: Arc<ConnLimit>,
}

impl PoolLimitsShared {
    pub fn unlimited() -> PoolLimitsShared {
        PoolLimitsShared {
            database: ConnLimit::new(0),
            user: ConnLimit::new(0),
        }
    }

    /// Takes one unit of both, or neither.
    pub fn try_take(&self) -> bool {
        if !self.database.try_take() {
            return false;
        }
        if !self.user.try_take() {
            self.database.give_back(1);
            return false;
        }
        true
    }

    pub fn give_back(&self, n: usize) {
        self.database.give_back(n);
        self.user.give_back(n);
    }

    /// Which shared limit is full, to evict from it.
    pub fn full(&self) -> Option<&ConnLimit> {
        let full = |l: &ConnLimit| l.max() != 0 && l.used() >= l.max();
        if full(&self.database) {
            Some(&self.database)
        } else if full(&self.user) {
            Some(&self.user)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_give_back() {
        let l = ConnLimit::new(2);
        assert!(l.try_take() && l.try_take());
        assert!(!l.try_take());
        l.give_back(1);
        assert!(l.try_take());
        let unlimited = ConnLimit::new(0);
        assert!((0..1000).all(|_| unlimited.try_take()));
    }

    #[test]
    fn both_or_neither() {
        let both = PoolLimitsShared {
            database: ConnLimit::new(5),
            user: ConnLimit::new(1),
        };
        assert!(both.try_take());
        assert!(!both.try_take());
        assert_eq!(both.database.used(), 1, "the database unit was given back");
        assert!(both.full().is_some());
    }

    struct Fake {
        idle: AtomicUsize,
    }

    impl Evict for Fake {
        fn evict_one_idle(&self) -> bool {
            self.idle
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    #[test]
    fn eviction_takes_from_another_pool_only() {
        let limit = ConnLimit::new(2);
        let here = Arc::new(Fake {
            idle: AtomicUsize::new(1),
        });
        let there = Arc::new(Fake {
            idle: AtomicUsize::new(1),
        });
        limit.register(&here);
        limit.register(&there);
        assert!(limit.evict_idle(here.as_ref()));
        assert_eq!(there.idle.load(Ordering::Relaxed), 0);
        assert_eq!(
            here.idle.load(Ordering::Relaxed),
            1,
            "never from the asking pool"
        );
        assert!(!limit.evict_idle(here.as_ref()));
        drop(there);
        assert!(
            !limit.evict_idle(here.as_ref()),
            "a dropped pool is skipped"
        );
    }
}
