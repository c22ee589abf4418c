//! What an accept loop does when `accept` fails: log it without flooding, and back off.
//!
//! At the file-descriptor limit (EMFILE, ENFILE) every accept fails at once, and the listening
//! socket stays readable (the connection waits in the backlog), so a loop that logs and
//! retries writes a line per try, tens a second, for as long as the limit is hit. Here the
//! first failure is logged, later ones at most once per `LOG_EVERY` with the count of those
//! not written, and the pause before the next try doubles while accepts keep failing, so the
//! loop neither spins nor waits long once descriptors are free again.

use std::time::{Duration, Instant};

/// At most one log line per listener this often while accepts fail.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The pause after a first failure; it doubles with each failure in a row, up to `MAX_PAUSE`
/// (which is also the longest a freed descriptor waits before the listener notices).
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The accept failures of one listener.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    /// When the last line was written.
    logged_at: Option<Instant>,
    /// Failures since that line, not written.
    repeated: u64,
    /// The last of those, for the line that reports them.
    last_error: String,
    pause: Duration,
}

impl AcceptErrors {
    /// `listener` names it in the log (`clients`, `metrics`).
    pub fn new(listener: &'static str) -> AcceptErrors {
        AcceptErrors {
            listener,
            logged_at: None,
            repeated: 0,
            last_error: String::new(),
            pause: FIRST_PAUSE,
        }
    }

    /// An accept failed: logs it if it is time to, and returns how long to wait before the
    /// next accept.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        let (line, pause) = self.on_failure(error, Instant::now());
        if let Some(line) = line {
            tracing::warn!(listener = self.listener, "{line}");
        }
        pause
    }

    /// An accept succeeded: the next failure waits the shortest pause again; failures not yet
    /// reported are, once a line is due (so the count is not lost when the storm ends).
    pub fn accepted(&mut self) {
        if let Some(line) = self.on_success(Instant::now()) {
            tracing::warn!(listener = self.listener, "{line}");
        }
    }

    fn on_failure(&mut self, error: &std::io::Error, now: Instant) -> (Option<String>, Duration) {
        self.last_error = error.to_string();
        let line = if self.due(now) {
            let line = self.line();
            self.logged_at = Some(now);
            self.repeated = 0;
            Some(line)
        } else {
            self.repeated += 1;
            None
        };
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        (line, pause)
    }

    fn on_success(&mut self, now: Instant) -> Option<String> {
        // Not a reset of the log window: at the limit, accepts alternate between failing and
        // succeeding as descriptors come and go, and each success must not open a new line.
        self.pause = FIRST_PAUSE;
        if self.repeated == 0 || !self.due(now) {
            return None;
        }
        let line = format!(
            "accept failed: {} (repeated {} times; accepting again)",
            self.last_error, self.repeated
        );
        self.logged_at = Some(now);
        self.repeated = 0;
        Some(line)
    }

    fn due(&self, now: Instant) -> bool {
        self.logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
    }

    fn line(&self) -> String {
        if self.repeated == 0 {
            format!("accept failed: {}", self.last_error)
        } else {
            format!(
                "accept failed: {} (repeated {} times)",
                self.last_error, self.repeated
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn a_storm_is_one_line_per_window_with_a_count() {
        let mut errors = AcceptErrors::new("test");
        let start = Instant::now();
        let mut lines = Vec::new();
        // 20 failures a second for 25 s.
        for i in 0..500u32 {
            let now = start + Duration::from_millis(50) * i;
            if let (Some(line), _) = errors.on_failure(&emfile(), now) {
                lines.push(line);
            }
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("accept failed: Too many open files"));
        assert!(lines[0].ends_with("(os error 24)"), "{}", lines[0]);
        assert!(lines[1].ends_with("(repeated 199 times)"), "{}", lines[1]);
        assert!(lines[2].ends_with("(repeated 199 times)"), "{}", lines[2]);
        // The storm ends: the rest is reported at the first success once a line is due.
        assert_eq!(errors.on_success(start + Duration::from_secs(25)), None);
        let last = errors.on_success(start + Duration::from_secs(31));
        assert_eq!(
            last.as_deref(),
            Some(
                "accept failed: Too many open files (os error 24) \
                 (repeated 99 times; accepting again)"
            )
        );
        assert_eq!(errors.on_success(start + Duration::from_secs(60)), None);
    }

    #[test]
    fn alternating_failures_and_successes_do_not_open_new_lines() {
        let mut errors = AcceptErrors::new("test");
        let start = Instant::now();
        let mut lines = 0;
        for i in 0..100u32 {
            let now = start + Duration::from_millis(10) * i;
            lines += usize::from(errors.on_failure(&emfile(), now).0.is_some());
            lines += usize::from(errors.on_success(now).is_some());
        }
        assert_eq!(lines, 1);
    }

    #[test]
    fn the_pause_doubles_up_to_a_bound_and_resets_on_success() {
        let mut errors = AcceptErrors::new("test");
        let now = Instant::now();
        let pauses: Vec<Duration> = (0..8)
            .map(|_| errors.on_failure(&emfile(), now).1)
            .collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 2);
        assert_eq!(*pauses.last().unwrap_or(&Duration::ZERO), MAX_PAUSE);
        errors.on_success(now);
        assert_eq!(errors.on_failure(&emfile(), now).1, FIRST_PAUSE);
    }
}
