//! One direction's buffers and the position in its current message. The socket side of a
//! `Flow` (reads, writes) is the session driver's (`session/relay.rs`).

use bytes::{Buf, BytesMut};

use super::{BUFFER_CAP, MAX_INSPECTED};

/// One direction's buffers.
#[derive(Debug, Default)]
pub struct Flow {
    /// Read from the source, not yet processed.
    pub inbuf: BytesMut,
    /// Processed, to be written to the destination.
    pub out: BytesMut,
    /// Bytes of the current message still to move (or drop) as they arrive.
    pub(crate) remaining: usize,
    /// The current message is being dropped rather than moved.
    pub(crate) dropping: bool,
    /// The last write would have blocked: wait for writability before trying again.
    pub(crate) blocked: bool,
    /// Bytes read from the source since the statistics last took them.
    pub bytes_read: u64,
}

impl Flow {
    pub(crate) fn wants_read(&self) -> bool {
        self.out.len() < BUFFER_CAP && self.inbuf.len() < BUFFER_CAP + MAX_INSPECTED
    }

    /// True between messages with nothing half-moved.
    pub(crate) fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Moves (or drops) the rest of the current message as far as it has arrived.
    /// Returns false while more of it is still to come.
    pub(crate) fn continue_message(&mut self) -> bool {
        if self.remaining == 0 {
            return true;
        }
        let n = self.remaining.min(self.inbuf.len());
        if self.dropping {
            self.inbuf.advance(n);
        } else {
            self.commit(n);
        }
        self.remaining -= n;
        if self.remaining == 0 {
            self.dropping = false;
        }
        self.remaining == 0
    }

    /// Starts moving a message of `total` bytes; the part not yet read follows later.
    pub(crate) fn pass(&mut self, total: usize, drop_it: bool) {
        self.remaining = total;
        self.dropping = drop_it;
        self.continue_message();
    }

    /// Moves the first `n` bytes of `inbuf` (whole messages that pass unchanged) to `out`:
    /// when they are all of `inbuf` and `out` is empty, by trading the buffers, no copy.
    pub(crate) fn commit(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.out.is_empty() && n == self.inbuf.len() {
            std::mem::swap(&mut self.inbuf, &mut self.out);
        } else {
            self.ready_out();
            self.out.extend_from_slice(&self.inbuf[..n]);
            self.inbuf.advance(n);
        }
    }

    /// Gives the buffers' memory back when they are empty: idle clients hold no buffers.
    pub fn shrink_if_empty(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.inbuf));
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.out));
        }
    }

    /// Moves a waiting client's request out of its read buffer into a small one when it
    /// fits. Thousands of clients can be queued on a pool of 150, each holding its request
    /// meanwhile; a read buffer each (16 KiB, a page or more of it touched) was most of their
    /// memory. A copy of a few hundred bytes, on the waiting path only.
    pub fn shrink_to_request(&mut self) {
        if self.inbuf.len() > spare_buffers::SMALL
            || self.inbuf.capacity() <= spare_buffers::SMALL
            || !self.out.is_empty()
        {
            return;
        }
        let mut small = spare_buffers::take_small();
        small.extend_from_slice(&self.inbuf);
        spare_buffers::give(std::mem::replace(&mut self.inbuf, small));
        // `out` is empty (checked above): its buffer goes back too.
        self.shrink_if_empty();
    }

    /// Gives `out` a buffer from the cache before anything is written to it.
    pub(crate) fn ready_out(&mut self) {
        if self.out.capacity() == 0 {
            self.out = spare_buffers::take();
        }
    }
}

impl Drop for Flow {
    /// A flow that ends (a transaction's server side, a client that leaves) gives its buffers
    /// to the next one on this thread: each would otherwise be a fresh allocation.
    fn drop(&mut self) {
        if self.inbuf.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.inbuf));
        }
        if self.out.capacity() > 0 {
            spare_buffers::give(std::mem::take(&mut self.out));
        }
    }
}

/// Buffers of idle clients, kept per worker thread for the next active one: idle clients hold
/// no buffer, yet a busy client does not pay a malloc/free pair per transaction for them.
pub(crate) mod spare_buffers {
    use crate::engine::READ_CHUNK;
    use bytes::BytesMut;
    use std::cell::RefCell;

    /// Enough for the transactions one worker runs at once on a pool of 150 (+ reserve), each
    /// with a client's buffers: how many are in use swings by more than a hundred between one
    /// batch of readiness events and the next. At 64, 256 clients on a pool of 150 made 0.55
    /// allocations of 16 KiB per transaction, each through jemalloc's large-size path (its
    /// thread cache keeps few of those). The cache only holds buffers that were all in use at
    /// once, memory the process already had.
    const KEEP: usize = 256;

    /// A buffer grown past this by a large message is not worth keeping around.
    pub(crate) const MAX_KEPT: usize = 4 * READ_CHUNK;

    /// The buffer of a queued client's request (`Flow::shrink_to_request`): most requests
    /// fit, and four share a page.
    pub(crate) const SMALL: usize = 1024;

    /// Small buffers are taken and given back once per waited transaction, by as many clients
    /// as wait at once: the cache evens out bursts without a malloc for each. (At 256, 2,000
    /// clients queueing for a pool of 150 overflowed it; see `KEEP`.)
    const KEEP_SMALL: usize = 1024;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static SPARE_SMALL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn take() -> BytesMut {
        SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
    }

    pub(crate) fn take_small() -> BytesMut {
        SPARE_SMALL
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SMALL))
    }

    pub(crate) fn give(mut buf: BytesMut) {
        if buf.capacity() == 0 {
            return;
        }
        buf.clear();
        // A buffer that was read from has been advanced: its capacity counts only what lies
        // past the read position. Reclaiming on an empty, unshared buffer moves that position
        // back to the start (never allocating), so the whole buffer is kept instead of freed.
        if !buf.try_reclaim(READ_CHUNK) {
            let _ = buf.try_reclaim(SMALL);
        }
        let (cache, keep) = match buf.capacity() {
            c if (READ_CHUNK..=MAX_KEPT).contains(&c) => (&SPARE, KEEP),
            c if (SMALL..2 * SMALL).contains(&c) => (&SPARE_SMALL, KEEP_SMALL),
            _ => return,
        };
        // `try_with`: a flow dropped while the thread's locals are torn down frees its buffer.
        let _ = cache.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < keep
            {
                s.push(buf);
            }
        });
    }

    /// How many buffers this thread keeps.
    #[cfg(test)]
    pub(crate) fn kept() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    /// How many small buffers this thread keeps.
    #[cfg(test)]
    pub(crate) fn kept_small() -> usize {
        SPARE_SMALL.with(|s| s.borrow().len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use bytes::Buf;

        #[test]
        fn a_buffer_that_was_read_from_is_kept() {
            let mut buf = take();
            buf.extend_from_slice(&[1; 100]);
            buf.advance(100);
            let before = kept();
            give(buf);
            assert_eq!(kept(), before + 1);
            assert!(take().capacity() >= READ_CHUNK);
        }

        #[test]
        fn a_waiting_request_moves_to_a_small_buffer_and_both_are_kept() {
            let mut flow = crate::engine::Flow::default();
            flow.inbuf = take();
            flow.inbuf.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
            let (large, small) = (kept(), kept_small());
            flow.shrink_to_request();
            assert_eq!(&flow.inbuf[..], b"Q\0\0\0\x0dselect 1\0");
            assert!(
                flow.inbuf.capacity() < READ_CHUNK,
                "{}",
                flow.inbuf.capacity()
            );
            assert_eq!(kept(), large + 1, "the read buffer went back");
            // Relayed (here: consumed), then given back: to the small cache.
            flow.inbuf.advance(flow.inbuf.len());
            flow.shrink_if_empty();
            assert_eq!(kept_small(), small + 1);
            assert!(take_small().capacity() >= SMALL);
        }

        #[test]
        fn a_request_too_large_for_a_small_buffer_stays_where_it_is() {
            let mut flow = crate::engine::Flow::default();
            flow.inbuf = take();
            flow.inbuf.extend_from_slice(&[b'x'; SMALL + 1]);
            let ptr = flow.inbuf.as_ptr();
            flow.shrink_to_request();
            assert_eq!(flow.inbuf.as_ptr(), ptr);
            assert_eq!(flow.inbuf.len(), SMALL + 1);
        }

        #[test]
        fn the_buffers_of_a_pool_of_150_busy_at_once_all_come_back_from_the_cache() {
            // Each test has a thread, and so a cache, of its own.
            let first: Vec<BytesMut> = (0..160).map(|_| take()).collect();
            let mut addresses: Vec<usize> = first.iter().map(|b| b.as_ptr() as usize).collect();
            first.into_iter().for_each(give);
            assert_eq!(kept(), 160);
            let again: Vec<BytesMut> = (0..160).map(|_| take()).collect();
            let mut reused: Vec<usize> = again.iter().map(|b| b.as_ptr() as usize).collect();
            addresses.sort_unstable();
            reused.sort_unstable();
            assert_eq!(reused, addresses, "every buffer came from the cache");
        }

        #[test]
        fn the_small_buffers_of_a_thousand_queued_requests_all_go_back_to_the_cache() {
            let queued: Vec<BytesMut> = (0..1000).map(|_| take_small()).collect();
            queued.into_iter().for_each(give);
            assert_eq!(kept_small(), 1000);
        }

        #[test]
        fn a_dropped_flow_gives_its_buffers_back() {
            let mut flow = crate::engine::Flow::default();
            flow.inbuf = take();
            flow.inbuf.extend_from_slice(b"left over");
            flow.ready_out();
            let before = kept();
            drop(flow);
            assert_eq!(kept(), before + 2);
        }
    }
}
