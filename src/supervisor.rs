//! The supervisor: drives a shutdown through its phases over the whole App (see `lifecycle`
//! for the phases and what each means), and logs reloads, whichever way they were asked for.
//! It sits above `app`, which is why it is not in `lifecycle`: the phases and `Control` are
//! read by layers below the App, the supervisor reads the App.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::app::App;
use crate::config::secs;
use crate::lifecycle::Phase;

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
