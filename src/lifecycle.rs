//! Graceful shutdown: SIGTERM, SIGINT and the console's SHUTDOWN all lead here.
//!
//! `Draining`: the listener closes (new connections are refused), `/readyz` answers 503, idle
//! clients get `57P01 server shutting down` at once, and clients inside a transaction keep
//! their server until it ends, then get the same error. After `shutdown_timeout`, or as soon
//! as no client is left, `Closing`: whoever remains is disconnected (a transaction still open
//! rolls back), the pools close their servers, and the phase becomes `Done`, which is when
//! `Running::wait` returns and the binary exits 0.
//!
//! This module holds the phases and `Control`, the pooler-wide switches (shutdown, PAUSE,
//! DISABLE, readiness) that the layers below read; it knows nothing of `App`, so anything may
//! hold a `Control`. The supervisor that drives a shutdown over the App is `supervisor.rs`.
//!
//! Sessions learn about a phase change through their own `Notify` in the client registry, so
//! the per-transaction path only reads an atomic; nothing global is locked per transaction.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use tokio::sync::watch;

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

/// Pooler-wide state the console drives: which databases are paused, shutdown, readiness.
pub struct Control {
    paused: Mutex<Paused>,
    /// The shutdown phase, for those who wait on it (listener, supervisor)...
    phase: watch::Sender<Phase>,
    /// ...and as a plain atomic for sessions, which read it once per transaction.
    phase_now: AtomicU8,
    listening: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Paused {
    pub(crate) all: bool,
    pub(crate) databases: HashSet<String>,
    /// DISABLE: databases whose new clients are refused.
    pub(crate) disabled: HashSet<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            paused: Mutex::new(Paused::default()),
            phase: watch::Sender::new(Phase::Running),
            phase_now: AtomicU8::new(Phase::Running as u8),
            listening: AtomicBool::new(false),
        }
    }
}

impl Control {
    /// The console edits this under its lock (PAUSE, RESUME, KILL, DISABLE, ENABLE).
    pub(crate) fn paused(&self) -> std::sync::MutexGuard<'_, Paused> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether pools of `database` start paused (a PAUSE or KILL is in force for it).
    pub fn is_paused(&self, database: &str) -> bool {
        let p = self.paused();
        p.all || p.databases.contains(database)
    }

    /// Whether DISABLE is in force for `database` (new clients are refused).
    pub fn is_disabled(&self, database: &str) -> bool {
        self.paused().disabled.contains(database)
    }

    /// Whether a PAUSE (or KILL) of the whole pooler is in force (SHOW STATE).
    pub fn is_all_paused(&self) -> bool {
        self.paused().all
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Asks the pooler to stop gracefully (see `lifecycle`): the accept loop ends, `/readyz`
    /// says so, sessions finish their transactions. Returns false if it was already stopping.
    pub fn shutdown(&self) -> bool {
        self.advance(Phase::Draining)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase_now.load(Ordering::Acquire))
    }

    /// Moves the shutdown forward (never back); returns whether it moved.
    pub fn advance(&self, to: Phase) -> bool {
        self.phase.send_if_modified(|p| {
            if *p < to {
                *p = to;
                // Before the watchers wake: whoever they wake must read the new phase.
                self.phase_now.store(to as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    pub fn phase_signal(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }
}
