//! A wake-up for the one task that owns a client: `notify` leaves a permit and wakes the
//! task if it waits; `wait` takes the permit, at once if one is there.
//!
//! It replaces `tokio::sync::Notify` on the per-transaction path: a `Notify` waiter links
//! itself into a shared list under a lock on its first poll and unlinks on drop, twice per
//! transaction for every session, while nearly every wait ends without a wake-up. Here a
//! wait that ends without one costs an atomic load and, the first time a task polls, one
//! waker clone; later polls by the same task only compare the waker's address, without the
//! lock (the relay polls this on every readiness wake-up).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Wakeup {
    permit: AtomicBool,
    /// The waker of the last task that waited; kept so later waits of the same task only
    /// compare it.
    waker: Mutex<Option<Waker>>,
    /// The data address of the stored waker (0: none). Equal to a polling task's own, the
    /// stored waker is that task's: the clone it holds keeps the task alive, so no other task
    /// can have that address meanwhile.
    registered: AtomicUsize,
}

impl Wakeup {
    pub fn new() -> Wakeup {
        Wakeup::default()
    }

    /// Leaves a permit (one, however often it is called) and wakes the waiting task.
    pub fn notify(&self) {
        self.permit.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Completes when a permit is there, and takes it.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_wait(cx))
    }

    /// `wait` as a poll function, for a caller that polls several things at once.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Loaded before it is taken: nearly every poll finds no permit, and a plain load
        // costs no locked read-modify-write on the relay's every wake-up.
        if self.permit.load(Ordering::Relaxed) && self.permit.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        let id = cx.waker().data() as usize;
        if self.registered.load(Ordering::Acquire) == id {
            // This task's waker is stored: a notify from now on wakes it.
            return Poll::Pending;
        }
        {
            let mut waker = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            self.registered.store(id, Ordering::Release);
        }
        // A notify between the first check and the waker being stored found no waker (or
        // the old one): its permit is seen here.
        if self.permit.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_permit_left_before_the_wait_is_taken_once() {
        let w = Wakeup::new();
        w.notify();
        w.notify();
        tokio::time::timeout(Duration::from_secs(5), w.wait())
            .await
            .expect("permit");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.wait())
                .await
                .is_err(),
            "one permit, however many notifies"
        );
    }

    /// The stored waker is compared by address: a wait moved to another task must still be
    /// woken (that task's waker replaces the first one's).
    #[tokio::test]
    async fn a_wait_from_another_task_replaces_the_waker() {
        let w = Arc::new(Wakeup::new());
        let first = tokio::spawn({
            let w = w.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_millis(20), w.wait()).await;
            }
        });
        first.await.expect("first task");
        for _ in 0..3 {
            notify_wakes_a_new_waiting_task(&w).await;
        }
    }

    /// A task spawned to wait, notified once it waits, ends (bounded).
    async fn notify_wakes_a_new_waiting_task(w: &Arc<Wakeup>) {
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.notify();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        notify_wakes_a_new_waiting_task(&Arc::new(Wakeup::new())).await;
    }
}
