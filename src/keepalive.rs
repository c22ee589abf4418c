//! PgBouncer's `tcp_keepalive`, `tcp_keepcnt`, `tcp_keepidle`, `tcp_keepintvl` and
//! `tcp_user_timeout`, set on every client TCP socket the listener accepts and every socket to
//! Postgres. The values are pooler-wide and reloadable, so they live here (set by the App at
//! start and at RELOAD) rather than being threaded through every connect.

use std::sync::RwLock;
use std::time::Duration;

use crate::config::PoolerSettings;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Keepalive {
    on: bool,
    count: u32,
    idle: u32,
    interval: u32,
    user_timeout_ms: u32,
}

static SETTINGS: RwLock<Keepalive> = RwLock::new(Keepalive {
    // PgBouncer's default: keepalive on with the system's timings.
    on: true,
    count: 0,
    idle: 0,
    interval: 0,
    user_timeout_ms: 0,
});

/// Takes the settings in force (start, RELOAD, SET).
pub fn configure(p: &PoolerSettings) {
    let k = Keepalive {
        on: p.tcp_keepalive,
        count: p.tcp_keepcnt,
        idle: p.tcp_keepidle,
        interval: p.tcp_keepintvl,
        user_timeout_ms: p.tcp_user_timeout,
    };
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = k;
}

/// Applies the settings to a connected socket. Failures are logged, never fatal: a socket
/// without keepalive still works.
pub fn apply(stream: &tokio::net::TcpStream) {
    let k = *SETTINGS.read().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = set(stream, k) {
        tracing::debug!(error = %e, "could not set TCP keepalive options");
    }
}

fn set(stream: &tokio::net::TcpStream, k: Keepalive) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if k.on {
        let mut ka = socket2::TcpKeepalive::new();
        if k.idle > 0 {
            ka = ka.with_time(Duration::from_secs(k.idle.into()));
        }
        if k.interval > 0 {
            ka = ka.with_interval(Duration::from_secs(k.interval.into()));
        }
        if k.count > 0 {
            ka = ka.with_retries(k.count);
        }
        socket.set_tcp_keepalive(&ka)?;
    } else {
        socket.set_keepalive(false)?;
    }
    if k.user_timeout_ms > 0 {
        socket.set_tcp_user_timeout(Some(Duration::from_millis(k.user_timeout_ms.into())))?;
    }
    Ok(())
}
