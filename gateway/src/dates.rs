//! Wall-clock time as the gateway writes it: Unix seconds, UTC days and ISO 8601 texts.
//!
//! The one place with Gregorian date arithmetic in this crate (S3 listings, job documents,
//! usage days and quota days all come through here).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since 1970-01-01T00:00:00Z (0 if the clock is before it).
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day count since 1970-01-01 of a Gregorian date (the inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn day_of(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM` (UTC), for people reading a table.
pub fn minute_of(unix: i64) -> String {
    format!("{} {:02}:{:02}", day_of(unix), unix.rem_euclid(86_400) / 3600, unix.rem_euclid(3600) / 60)
}

/// Seconds from `unix` to the next UTC midnight (when daily budgets start again), at least 1.
pub fn seconds_to_midnight(unix: i64) -> u64 {
    (86_400 - unix.rem_euclid(86_400)).max(1) as u64
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn iso8601(unix: i64) -> String {
    let s = unix.rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", day_of(unix), s / 3600, s % 3600 / 60, s % 60)
}

/// `YYYY-MM-DDTHH:MM:SS.000Z`, the form of S3 listings.
pub fn iso8601_millis(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut text = iso8601(secs);
    text.insert_str(text.len() - 1, ".000");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_iso_texts() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_697_766), "2026-11-26");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(iso8601(1_795_697_766), "2026-11-26T12:56:06Z");
        assert_eq!(iso8601_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_697_766);
        assert_eq!(iso8601_millis(t), "2026-11-26T12:56:06.000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn midnight() {
        assert_eq!(seconds_to_midnight(0), 86_400);
        assert_eq!(seconds_to_midnight(86_399), 1);
        assert_eq!(seconds_to_midnight(86_400 + 3600), 82_800);
    }
}
