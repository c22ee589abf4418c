//! What a transaction needs and an idle client does not: the server's side of the relay
//! (its buffers) and the requests in flight. A worker thread keeps a few sets between
//! transactions, buffers and queue attached, so that a transaction takes one and gives it
//! back instead of making and dropping both (two buffers and a queue from their caches each
//! time), and an idle client's task holds none of it.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::engine::{Flow, Tracker, spare_buffers};

/// Enough for the transactions one worker runs at once on a pool of 150 (+ reserve); beyond
/// it, memory goes back. (At 64, the sets of a pool of 150 overflowed it: see
/// `spare_buffers::KEEP`.)
const KEEP: usize = 256;

/// A queue grown by a long pipeline is not worth keeping (buffers: as `spare_buffers`).
const MAX_QUEUE: usize = 64;

thread_local! {
    // Boxed: a lease moves a pointer, not the set, and the transaction's future holds 8 bytes.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Parts>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
pub(super) struct Parts {
    /// From the server to the client.
    pub down: Flow,
    pub tracker: Tracker,
}

impl Parts {
    /// As a fresh set would be: nothing in flight, nothing half-moved, nothing unsent.
    fn is_pristine(&self) -> bool {
        self.down.inbuf.is_empty()
            && self.down.out.is_empty()
            && self.down.at_boundary()
            && !self.down.blocked
            && self.tracker.is_pristine()
    }

    /// Lets go of memory a large transaction grew.
    fn trim(&mut self) {
        for buf in [&mut self.down.inbuf, &mut self.down.out] {
            if buf.capacity() > spare_buffers::MAX_KEPT {
                *buf = bytes::BytesMut::new();
            }
        }
        if self.tracker.queue.capacity() > MAX_QUEUE {
            self.tracker.queue = Default::default();
        }
    }
}

/// A set of parts for one transaction; given back to this thread's cache when dropped clean
/// (a set left mid-message or with requests in flight is freed instead).
pub(super) struct Lease(Option<Box<Parts>>);

impl Lease {
    pub(super) fn take() -> Lease {
        let kept = SPARE.with(|s| s.borrow_mut().pop());
        Lease(Some(kept.unwrap_or_default()))
    }
}

impl Deref for Lease {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        // Only `drop` empties it.
        self.0.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Parts {
        self.0.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut parts) = self.0.take() else {
            return;
        };
        if !parts.is_pristine() {
            return;
        }
        parts.down.bytes_read = 0;
        parts.trim();
        // `try_with`: a lease dropped while the thread's locals are torn down frees its set.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < KEEP
            {
                s.push(parts);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::READ_CHUNK;

    #[test]
    fn the_sets_of_a_pool_of_150_busy_at_once_all_go_back_to_the_cache() {
        // This thread's cache starts empty (each test has a thread of its own).
        let busy: Vec<Lease> = (0..160).map(|_| Lease::take()).collect();
        drop(busy);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 160);
    }

    #[test]
    fn a_clean_set_is_kept_with_its_buffers_and_a_used_one_is_not() {
        // This thread's cache starts empty (each test has a thread of its own).
        let mut lease = Lease::take();
        lease.down.inbuf.reserve(READ_CHUNK);
        let ptr = lease.down.inbuf.as_ptr();
        drop(lease);
        let mut again = Lease::take();
        assert_eq!(
            again.down.inbuf.as_ptr(),
            ptr,
            "the buffer came back with its set"
        );
        // Bytes not yet sent: not given to the next transaction.
        again.down.out.extend_from_slice(b"Z");
        drop(again);
        let mut fresh = Lease::take();
        assert_eq!(fresh.down.inbuf.capacity(), 0);
        assert!(fresh.down.out.is_empty());
        // Grown by a large message: kept without that buffer.
        fresh.down.inbuf.reserve(8 * READ_CHUNK);
        drop(fresh);
        assert_eq!(Lease::take().down.inbuf.capacity(), 0);
    }
}
