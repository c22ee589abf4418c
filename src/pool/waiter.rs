//! A session's place in a pool's queue, reused by every wait of the session: a `oneshot`
//! channel per wait was the last heap allocation of a transaction when the pool is busy.
//!
//! Each wait takes a new ticket. The pool's end (`GrantTx`, in the queue) delivers a grant
//! only for the ticket it was made for; the session's end (`GrantRx`) that is dropped gives
//! up the ticket and gives back a grant that arrived too late. Lock order: the pool's lock,
//! then a slot's (a grant is dropped only after the slot's lock is released).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use super::Grant;

/// Made at the session's first wait: a client that never waits (or not yet) holds none.
#[derive(Default)]
pub struct WaitSlot(OnceLock<Arc<Mutex<SlotState>>>);

#[derive(Default)]
struct SlotState {
    /// The wait in progress; 0: none.
    ticket: u64,
    last: u64,
    /// Some(Some): granted; Some(None): the queue dropped the wait (KILL, shutdown).
    outcome: Option<Option<Grant>>,
    /// The wait reached `query_wait_notify`: the session writes the NOTICE (`poll_notice`).
    notice: bool,
    waker: Option<Waker>,
}

fn lock(slot: &Mutex<SlotState>) -> MutexGuard<'_, SlotState> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl WaitSlot {
    pub fn new() -> WaitSlot {
        WaitSlot::default()
    }

    /// Starts a wait: the end for the queue and the end to await.
    pub(super) fn begin(&self) -> (GrantTx, GrantRx<'_>) {
        let slot = self.0.get_or_init(Arc::default);
        let ticket = {
            let mut st = lock(slot);
            st.last += 1;
            st.ticket = st.last;
            st.outcome = None;
            st.notice = false;
            st.ticket
        };
        (
            GrantTx {
                slot: slot.clone(),
                ticket,
                done: false,
            },
            GrantRx { slot, ticket },
        )
    }

    /// Ready once when the wait in progress reached `query_wait_notify` (the pool's expiry
    /// task tells): polled by the waiting session beside its checkout, so a wait arms no
    /// timer of its own for the NOTICE.
    pub fn poll_notice(&self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(slot) = self.0.get() else {
            return Poll::Pending;
        };
        let mut st = lock(slot);
        if std::mem::take(&mut st.notice) {
            return Poll::Ready(());
        }
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The queue's end of one wait.
pub(super) struct GrantTx {
    slot: Arc<Mutex<SlotState>>,
    ticket: u64,
    done: bool,
}

impl GrantTx {
    /// Delivers the grant; it comes back if the session gave up this wait.
    pub(super) fn send(mut self, grant: Grant) -> Result<(), Grant> {
        let waker = {
            let mut st = lock(&self.slot);
            if st.ticket != self.ticket || st.outcome.is_some() {
                return Err(grant);
            }
            st.outcome = Some(Some(grant));
            st.waker.take()
        };
        self.done = true;
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Tells the session its wait reached `query_wait_notify`.
    pub(super) fn notice(&self) {
        let waker = {
            let mut st = lock(&self.slot);
            if st.ticket != self.ticket || st.outcome.is_some() {
                return;
            }
            st.notice = true;
            st.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the session gave up this wait (its checkout was dropped).
    pub(super) fn is_closed(&self) -> bool {
        lock(&self.slot).ticket != self.ticket
    }
}

impl Drop for GrantTx {
    /// Dropped unsent (KILL, shutdown, a failed server for everyone): the wait ends in an error.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waker = {
            let mut st = lock(&self.slot);
            if st.ticket != self.ticket || st.outcome.is_some() {
                return;
            }
            st.outcome = Some(None);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The session's end of one wait: the grant, or `Err` if the queue dropped the wait.
pub(super) struct GrantRx<'a> {
    slot: &'a Mutex<SlotState>,
    ticket: u64,
}

impl Future for GrantRx<'_> {
    type Output = Result<Grant, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = lock(self.slot);
        if st.ticket != self.ticket {
            return Poll::Ready(Err(()));
        }
        match st.outcome.take() {
            Some(outcome) => {
                st.ticket = 0;
                Poll::Ready(outcome.ok_or(()))
            }
            None => {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for GrantRx<'_> {
    /// Gives the ticket up; a grant that arrived meanwhile goes back to the pool (its guard's
    /// drop), after the slot's lock is released.
    fn drop(&mut self) {
        let late = {
            let mut st = lock(self.slot);
            if st.ticket != self.ticket {
                return;
            }
            st.ticket = 0;
            st.waker = None;
            st.outcome.take()
        };
        drop(late);
    }
}
