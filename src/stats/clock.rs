//! One monotonic clock in microseconds for every timestamp the stats keep, so a time fits
//! an `AtomicU64` and costs one clock read; converted to wall-clock time only for display.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The clock's origin, fixed at first use: a monotonic instant and the wall time it was.
fn origin() -> &'static (Instant, SystemTime) {
    static ORIGIN: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    ORIGIN.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Microseconds since the origin; never 0 (0 means "no time" in the stats' atomics).
pub fn now_us() -> u64 {
    us_of(Instant::now())
}

/// `at` in the clock's microseconds (at least 1).
pub fn us_of(at: Instant) -> u64 {
    let us = at.saturating_duration_since(origin().0).as_micros();
    u64::try_from(us).unwrap_or(u64::MAX).max(1)
}

/// The wall-clock time of a stats timestamp.
pub fn wall(us: u64) -> SystemTime {
    origin().1 + Duration::from_micros(us)
}

/// How long since the stats timestamp `us` (zero for "no time").
pub fn since(us: u64) -> Duration {
    match us {
        0 => Duration::ZERO,
        us => Duration::from_micros(now_us().saturating_sub(us)),
    }
}

/// A wall-clock time as PgBouncer prints it: `2024-05-01 12:34:56 UTC`.
pub fn format_wall(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_print_as_utc_dates() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        assert_eq!(format_wall(at), "2024-05-01 12:34:56 UTC");
        assert_eq!(
            format_wall(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_wall(leap), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn stamps_are_never_zero_and_move_forward() {
        let a = now_us();
        let b = now_us();
        assert!(a >= 1 && b >= a);
        assert_eq!(since(0), Duration::ZERO);
    }
}
