//! The pooler's clock for what it stamps and compares per transaction: microseconds on the
//! monotonic clock since the process's epoch, as a plain `u64` (never 0, so 0 can mean
//! "never" in an atomic).
//!
//! `Instant` arithmetic (`duration_since`, `elapsed`) checks seconds and nanoseconds apart,
//! ~55 instructions a call under callgrind, and a transaction did four (its wait, its
//! length, the server's idle time and age); a `u64` subtraction is one. The stamps are read
//! from `CLOCK_MONOTONIC`, the clock `Instant` reads on Linux, against an epoch taken from
//! both at once, so `us_of(Instant::now())` and `now_us()` agree.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The same moment on both clocks.
struct Epoch {
    instant: Instant,
    raw_us: u64,
    /// How far apart the two reads may be (the raw reads around the `Instant` one).
    spread_us: u64,
}

fn epoch() -> &'static Epoch {
    static EPOCH: OnceLock<Epoch> = OnceLock::new();
    EPOCH.get_or_init(|| {
        // Read between two raw reads, a few times if a preemption fell in between: the
        // stamps and `us_of` then differ by at most the spread.
        let mut best: Option<Epoch> = None;
        for _ in 0..5 {
            let before = raw_now_us();
            let instant = Instant::now();
            let after = raw_now_us();
            let epoch = Epoch {
                instant,
                raw_us: before + (after - before) / 2,
                spread_us: after - before,
            };
            let tight = epoch.spread_us <= 2;
            if best.as_ref().is_none_or(|b| epoch.spread_us < b.spread_us) {
                best = Some(epoch);
            }
            if tight {
                break;
            }
        }
        best.expect("at least one read")
    })
}

fn raw_now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write; CLOCK_MONOTONIC always exists
    // on Linux, so the call cannot fail (and a failure would leave 0: time stands still).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Now, as a stamp.
pub fn now_us() -> u64 {
    raw_now_us().saturating_sub(epoch().raw_us) + 1
}

/// An instant as a stamp.
pub fn us_of(t: Instant) -> u64 {
    t.saturating_duration_since(epoch().instant).as_micros() as u64 + 1
}

/// A stamp as an instant (for the queue's deadlines, which tokio's timers take).
pub fn instant_of(us: u64) -> Instant {
    epoch().instant + Duration::from_micros(us.saturating_sub(1))
}

/// The time from stamp `earlier` to stamp `later`; zero if `later` is not later.
pub fn between(earlier: u64, later: u64) -> Duration {
    Duration::from_micros(later.saturating_sub(earlier))
}

/// Whether at least `limit` passed from stamp `since` to stamp `now`.
pub fn passed(since: u64, now: u64, limit: Duration) -> bool {
    u128::from(now.saturating_sub(since)) >= limit.as_micros()
}

/// The calendar date (year, month, day) of a day counted from 1970-01-01: Howard Hinnant's
/// `civil_from_days`, for the timestamps the console and the logs write.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The wall-clock time of a stamp, for display.
pub fn wall_of(us: u64) -> SystemTime {
    let ago = between(us, now_us());
    SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_instants_agree() {
        let before = us_of(Instant::now());
        let stamp = now_us();
        let after = us_of(Instant::now());
        // The two clocks' epochs were read a moment apart: allow that.
        let slack = epoch().spread_us + 1;
        assert!(
            before <= stamp + slack && stamp <= after + slack,
            "{before} {stamp} {after} (slack {slack})"
        );
        let back = us_of(instant_of(stamp));
        assert!(back.abs_diff(stamp) <= 1, "{stamp} -> {back}");
    }

    #[test]
    fn calendar_dates_of_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }

    #[test]
    fn a_limit_passes_at_its_bound() {
        assert!(passed(10, 1_010, Duration::from_millis(1)));
        assert!(!passed(10, 1_009, Duration::from_millis(1)));
        assert!(!passed(1_010, 10, Duration::from_micros(1)));
        assert!(passed(1_010, 10, Duration::ZERO));
        assert_eq!(between(5, 3), Duration::ZERO);
        assert_eq!(between(3, 1_000_003), Duration::from_secs(1));
    }
}
