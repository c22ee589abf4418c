//! What can end a logged-in session from outside its own traffic: a shutdown, and the
//! PgBouncer timeouts that watch a client (`client_idle_timeout`, `idle_transaction_timeout`,
//! `query_timeout`, `transaction_timeout`, each overridable per user in `[users]`), and the
//! `query_wait_notify` NOTICE to a client queued for a server.
//!
//! The session calls `next_request` instead of waiting on its socket directly, and `relay`
//! instead of `Relay::run`. Both race the real work against the client's own wake-up `Notify`
//! (set by the shutdown supervisor) and, only when a timeout is configured, a timer. The relay
//! is cancel-safe (all its state lives in the buffers and scanners it borrows), so a stretch
//! can be interrupted to look at that state and resumed where it was.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::app::App;
use crate::config::Config;
use crate::engine::Flow;
use crate::error::{PoolerError, Result};
use crate::lifecycle::Phase;
use crate::pool::{Pool, WaitSlot};
use crate::registry::ClientInfo;

use super::relay::{self, Relay, RelayEnd};
use crate::pool::PooledServer;

/// PgBouncer's `query_wait_notify` text.
pub const QUEUED_NOTICE: &str =
    "No server connection available in postgres backend, client being queued";

/// One session's watchdog.
pub struct Watchdog<'a> {
    app: &'a App,
    client: &'a ClientInfo,
    generation: u64,
    timeouts: Timeouts,
    /// This session's place in its pool's queue, reused by every checkout that waits.
    wait_slot: WaitSlot,
    /// `client_idle_timeout`'s timer, made at the first wait that needs it.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

/// The timeouts that watch this client, in microseconds (0: none). Every session holds them
/// for as long as its client stays, idle or not: half the room of `Option<Duration>`s.
#[derive(Clone, Copy, Default)]
struct Timeouts {
    client_idle: Limit,
    idle_transaction: Limit,
    query: Limit,
    transaction: Limit,
}

/// A timeout in microseconds; 0 for none.
#[derive(Clone, Copy, Default)]
struct Limit(u64);

impl Limit {
    fn of(timeout: Option<Duration>) -> Limit {
        Limit(timeout.map_or(0, |t| {
            u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1)
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 > 0).then(|| Duration::from_micros(self.0))
    }
}

impl Timeouts {
    fn of(config: &Config, user: &str) -> Timeouts {
        let p = &config.pooler;
        Timeouts {
            client_idle: Limit::of(config.user_timeout(
                user,
                |u| u.client_idle_timeout,
                p.client_idle_timeout,
            )),
            idle_transaction: Limit::of(config.user_timeout(
                user,
                |u| u.idle_transaction_timeout,
                p.idle_transaction_timeout,
            )),
            query: Limit::of(config.user_timeout(user, |u| u.query_timeout, p.query_timeout)),
            transaction: Limit::of(config.user_timeout(
                user,
                |u| u.transaction_timeout,
                p.transaction_timeout,
            )),
        }
    }

    /// How often a relay stretch is looked at: a quarter of the shortest relay timeout, so a
    /// timeout fires at most about half of itself late.
    fn tick(&self) -> Option<Duration> {
        let shortest = [self.idle_transaction, self.query, self.transaction]
            .into_iter()
            .filter_map(Limit::get)
            .min()?;
        Some((shortest / 4).max(Duration::from_millis(10)))
    }
}

/// What the relay looked like at a tick.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mark {
    from_client: u64,
    from_server: u64,
    idle_in_transaction: bool,
    request_outstanding: bool,
}

impl Mark {
    fn of(relay: &Relay<'_, '_>) -> Mark {
        Mark {
            from_client: relay.up.bytes_read,
            from_server: relay.down.bytes_read,
            // The server said it is in a transaction and waits for the client.
            idle_in_transaction: relay.tracker.is_idle()
                && relay.server_side.status != crate::wire::STATUS_IDLE
                && relay.up.out.is_empty()
                && relay.down.out.is_empty(),
            request_outstanding: !relay.tracker.is_idle(),
        }
    }
}

impl<'a> Watchdog<'a> {
    pub fn new(app: &'a App, client: &'a ClientInfo) -> Watchdog<'a> {
        Watchdog {
            app,
            client,
            generation: app.generation(),
            timeouts: Timeouts::of(&app.config(), &client.user),
            wait_slot: WaitSlot::new(),
            idle_timer: None,
        }
    }

    /// Picks up timeouts a RELOAD changed: one atomic load per transaction otherwise.
    fn refresh(&mut self) {
        let generation = self.app.generation();
        if generation != self.generation {
            self.generation = generation;
            self.timeouts = Timeouts::of(&self.app.config(), &self.client.user);
        }
    }

    fn phase(&self) -> Phase {
        self.app.control.phase()
    }

    /// After a wake-up: KILL_CLIENT ends the session wherever it is.
    fn killed(&self) -> Result<()> {
        if self.client.is_killed() {
            Err(PoolerError::AdminKilled)
        } else {
            Ok(())
        }
    }

    /// Waits for the client's next request with no server held. Shutting down or idling past
    /// `client_idle_timeout` ends the session; the caller sends the error.
    ///
    /// An idle client waits here, so the wait keeps next to no state: it polls the wake-up
    /// and the socket's readiness directly, and the idle timer, when one is configured, is
    /// the session's own, kept boxed and re-armed for each wait.
    pub async fn next_request(&mut self, stream: &TcpStream, up: &mut Flow) -> Result<bool> {
        self.refresh();
        let mut timer = match self.timeouts.client_idle.get() {
            Some(t) => {
                let deadline = Instant::now() + t;
                let timer = self
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                timer.as_mut().reset(deadline);
                Some(timer.as_mut())
            }
            None => None,
        };
        loop {
            // (The fields, not `self.phase()`: the timer borrows `self.idle_timer`.)
            if self.app.control.phase() >= Phase::Draining {
                return Err(PoolerError::ShuttingDown);
            }
            if self.client.is_killed() {
                return Err(PoolerError::AdminKilled);
            }
            let next = std::future::poll_fn(|cx| {
                if self.client.stop.poll_wait(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if let Poll::Ready(r) = relay::poll_read_request(stream, up, cx) {
                    return Poll::Ready(Some(r));
                }
                if let Some(t) = timer.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(PoolerError::ClientIdleTimeout)));
                }
                Poll::Pending
            })
            .await;
            match next {
                // Woken: look at the phase and KILL_CLIENT again.
                None => continue,
                Some(r) => return r,
            }
        }
    }

    /// Checks a server out; a forced shutdown or KILL_CLIENT interrupts the wait (dropping the
    /// checkout gives back whatever it held: a queue place, a slot, a server logging in). A
    /// drain starting keeps the same checkout going: the request is served before the end.
    ///
    /// None: the client left while it waited (`relay::client_left`); its request, not yet
    /// sent, is dropped and the unused server given back. With the server, when it was
    /// attached (a `clock` stamp): `asked` (the client's request) for a server at hand, no
    /// clock read.
    pub async fn checkout(
        &self,
        pool: &Arc<Pool>,
        stream: &mut TcpStream,
        up: &mut Flow,
        asked: u64,
    ) -> Result<Option<(PooledServer, u64)>> {
        let checkout = pool.checkout_in(&self.wait_slot, asked);
        tokio::pin!(checkout);
        if self.phase() >= Phase::Closing {
            return Err(PoolerError::ShuttingDown);
        }
        self.killed()?;
        // The common case, a server at hand: no wait, so no client that left while waiting,
        // and no syscall spent looking for one.
        if let std::task::Poll::Ready(r) =
            std::future::poll_fn(|cx| std::task::Poll::Ready(checkout.as_mut().poll(cx))).await
        {
            return r.map(|server| Some((server, asked)));
        }
        // Queued: the request waits in a buffer its size, not in a read buffer.
        up.shrink_to_request();
        // `query_wait_notify`: once per wait, as PgBouncer does; the pool's expiry task says
        // when (a wait arms no timer of its own).
        let server = loop {
            if self.phase() >= Phase::Closing {
                return Err(PoolerError::ShuttingDown);
            }
            self.killed()?;
            tokio::select! {
                biased;
                _ = self.client.stop.wait() => continue,
                r = &mut checkout => break r?,
                _ = std::future::poll_fn(|cx| self.wait_slot.poll_notice(cx)) => {
                    let mut notice = bytes::BytesMut::new();
                    crate::wire::notice(&mut notice, QUEUED_NOTICE);
                    // Written while no server is linked: nothing else writes to the client.
                    tokio::io::AsyncWriteExt::write_all(stream, &notice).await?;
                }
            }
        };
        if relay::client_left(stream) {
            pool.checkin(server);
            return Ok(None);
        }
        Ok(Some((server, crate::clock::now_us())))
    }

    /// Runs the relay until it ends (see `Relay::run`). While the pooler drains, a session-mode
    /// relay also ends at the next point where the server is idle, so the client can be let
    /// go between transactions; a forced shutdown or a relay timeout ends it with an error.
    pub async fn relay(
        &mut self,
        relay: &mut Relay<'_, '_>,
        release_on_idle: bool,
        on_param: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<RelayEnd> {
        let tick = self.timeouts.tick();
        let start = Mark::of(relay);
        // Read only at a tick: without relay timeouts there is none, and no clock is read.
        let began = tick.map(|_| Instant::now());
        // When the client last sent something (query_timeout counts from its last request).
        let mut client_at = (began, start.from_client);
        // Since when nothing moved while idle in a transaction.
        let mut idle_since: Option<(Instant, Mark)> = None;
        // When the server was last seen outside a transaction: a transaction seen open at a
        // tick began after it (so `transaction_timeout` fires at most a tick late or early).
        let mut outside_at = began;
        loop {
            let phase = self.phase();
            if phase >= Phase::Closing {
                return Err(PoolerError::ShuttingDown);
            }
            self.killed()?;
            let draining = phase >= Phase::Draining;
            let release = release_on_idle || draining;
            // A client pinned to its server (session state in transaction mode) is let go at
            // its next idle point while draining, like a session-mode one; the pin is put
            // back afterwards so the caller resets the server before reuse.
            let pin = if draining {
                relay.client_side.pinned.take()
            } else {
                None
            };
            let woke = tokio::select! {
                biased;
                _ = self.client.stop.wait() => Woke::Notified,
                end = relay.run(release, on_param) => Woke::Ended(end),
                _ = sleep_until(tick.map(|t| Instant::now() + t)) => Woke::Tick,
            };
            if pin.is_some() {
                relay.client_side.pinned = pin;
            }
            match woke {
                Woke::Notified => continue,
                Woke::Ended(end) => return end,
                Woke::Tick => {}
            }
            let now = Mark::of(relay);
            if relay.server_side.status == b'I' {
                outside_at = Some(Instant::now());
            } else if self
                .timeouts
                .transaction
                .get()
                .is_some_and(|t| outside_at.is_some_and(|at| at.elapsed() >= t))
            {
                return Err(PoolerError::TransactionTimeout);
            }
            if now.from_client != client_at.1 {
                client_at = (Some(Instant::now()), now.from_client);
            }
            if now.request_outstanding
                && self
                    .timeouts
                    .query
                    .get()
                    .is_some_and(|t| client_at.0.is_some_and(|at| at.elapsed() >= t))
            {
                return Err(PoolerError::QueryTimeout);
            }
            idle_since = match idle_since {
                Some((at, mark)) if now.idle_in_transaction && mark == now => {
                    if self
                        .timeouts
                        .idle_transaction
                        .get()
                        .is_some_and(|t| at.elapsed() >= t)
                    {
                        return Err(PoolerError::IdleTransactionTimeout);
                    }
                    Some((at, mark))
                }
                _ if now.idle_in_transaction => Some((Instant::now(), now)),
                _ => None,
            };
        }
    }
}

enum Woke {
    Notified,
    Ended(Result<RelayEnd>),
    Tick,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_keeps_its_timeout_to_the_microsecond() {
        assert_eq!(Limit::of(None).get(), None);
        let t = Duration::from_millis(1500);
        assert_eq!(Limit::of(Some(t)).get(), Some(t));
        // Shorter than a microsecond is still a timeout, not none.
        assert_eq!(
            Limit::of(Some(Duration::from_nanos(10))).get(),
            Some(Duration::from_micros(1))
        );
    }
}
