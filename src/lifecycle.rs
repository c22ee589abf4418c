//! Graceful shutdown: SIGTERM, SIGINT and the console's SHUTDOWN all lead here.
//!
//! `Draining`: the listener closes (new connections are refused), `/readyz` answers 503, idle
//! clients get `57P01 server shutting down` at once, and clients inside a transaction keep
//! their server until it ends, then get the same error. After `shutdown_timeout`, or as soon
//! as no client is left, `Closing`: whoever remains is disconnected (a transaction still open
//! rolls back), the pools close their servers, and the phase becomes `Done`, which is when
//! `Running::wait` returns and the binary exits 0.
//!
//! Sessions learn about a phase change through their own `Notify` in the client registry, so
//! the per-transaction path only reads an atomic; nothing global is locked per transaction.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::app::App;
use crate::config::secs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Running = 0,
    /// No new clients; transactions in flight finish.
    Draining = 1,
    /// Everyone left is disconnected now.
    Closing = 2,
    /// Servers closed; the process may exit.
    Done = 3,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Done,
        }
    }
}

/// How long `Closing` waits for sessions to end after being told to.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

/// Drives a shutdown once one is asked for; returns when the phase is `Done`.
pub async fn supervise(app: Arc<App>) {
    let mut phases = app.control.phase_signal();
    if phases.wait_for(|p| *p >= Phase::Draining).await.is_err() {
        return;
    }
    let timeout = secs(app.config().pooler.shutdown_timeout);
    tracing::info!(
        clients = app.clients_registry.snapshot().len(),
        shutdown_timeout_s = timeout.map(|t| t.as_secs_f64()),
        "shutting down: not accepting clients; transactions in flight may finish"
    );
    app.clients_registry.wake_all();
    let deadline = timeout.map(|t| Instant::now() + t);
    while !app.clients_registry.is_empty()
        && app.control.phase() < Phase::Closing
        && deadline.is_none_or(|d| Instant::now() < d)
    {
        tokio::time::sleep(POLL).await;
    }
    let left = app.clients_registry.snapshot().len();
    if left > 0 {
        tracing::warn!(
            clients = left,
            "shutdown_timeout reached; disconnecting the remaining clients"
        );
    }
    app.control.advance(Phase::Closing);
    app.clients_registry.wake_all();
    let grace = Instant::now() + CLOSE_GRACE;
    while !app.clients_registry.is_empty() && Instant::now() < grace {
        tokio::time::sleep(POLL).await;
    }
    let pools = app.pools();
    for pool in &pools {
        pool.shut_down();
    }
    tracing::info!("shutdown complete");
    app.control.advance(Phase::Done);
}

/// RELOAD from a signal or the console, logged either way.
pub fn reload(
    app: &App,
    trigger: &str,
) -> Result<crate::app::ReloadReport, crate::config::ConfigError> {
    match app.reload() {
        Ok(report) => {
            for warning in &app.config().warnings {
                tracing::warn!(trigger, "{warning}");
            }
            tracing::info!(
                trigger,
                retired_pools = report.retired_pools,
                restart_needed = ?report.restart_needed,
                "configuration reloaded"
            );
            Ok(report)
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "reload refused; the running configuration stays");
            Err(e)
        }
    }
}
