//! CF-convention time: calendars, `UNIT since REFERENCE` units, and ISO 8601 range bounds.
//!
//! Decoding and encoding reproduce `cftime` 1.6 (`num2date`/`date2num`, what xarray falls back
//! to for non-standard calendars and dates before 1582-10-15) to the microsecond, quirks
//! included, so that a value served here names the same instant as `xr.open_dataset(original)`:
//! - `value × unit` is formed in x87 extended precision (`np.longdouble`) and rounded half to
//!   even to whole microseconds; for units of a second or longer, a result 1 µs off a whole
//!   second snaps to the second (cftime issue #187), so 4020.000001 s decodes to 01:07:00.
//! - Encoding divides exact integer microseconds, correctly rounded, as `date2num` does.
//! - Reference dates are read with cftime's pattern: text after it (" UTC") is ignored, and a
//!   fraction of a second is truncated after a float round trip (".000249" is 248 µs). For the
//!   standard calendars xarray reads them with pandas first, and so does [`TimeUnits::parse`]
//!   (module `pandas`: "Jan 1, 2000", "1/15/2000 06:00", ".000249" exactly).
//!
//! Years follow cftime's CF defaults. `standard` and `julian` have no year 0: 1 BC is year -1
//! and is a leap year (so are -5, -9, …); year 0 is refused. `proleptic_gregorian` and the
//! idealized calendars count astronomically and do have a year 0. Day numbers are cftime's
//! `toordinal()`: the Julian Day Number for the real-world calendars, days since 0000-01-01 for
//! the idealized ones. Everything is integer arithmetic; no function here panics.

mod pandas;

const DAY_US: i128 = 86_400_000_000;
/// Days before each month (and the year's length at index 12), in common and leap years.
const DAYS_BEFORE: [[i128; 13]; 2] = [
    [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365],
    [0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366],
];
/// Julian Day Number of 1582-10-15, the first Gregorian day of the `standard` calendar.
const GREGORIAN_FIRST_DAY: i128 = 2_299_161;
/// Significand bits of `np.longdouble` on x86-64, in which cftime scales stored values.
const EXTENDED_BITS: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Calendar {
    Standard,
    ProlepticGregorian,
    Julian,
    NoLeap,
    AllLeap,
    Day360,
}

impl Calendar {
    /// A CF calendar name, case-insensitive, synonyms included. `None` for anything else
    /// (including cftime's non-CF `tai`).
    pub fn parse(name: &str) -> Option<Calendar> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "standard" | "gregorian" => Calendar::Standard,
            "proleptic_gregorian" => Calendar::ProlepticGregorian,
            "julian" => Calendar::Julian,
            "noleap" | "365_day" => Calendar::NoLeap,
            "all_leap" | "366_day" => Calendar::AllLeap,
            "360_day" => Calendar::Day360,
            _ => return None,
        })
    }

    /// The canonical CF name (the one cftime reports).
    pub fn name(self) -> &'static str {
        match self {
            Calendar::Standard => "standard",
            Calendar::ProlepticGregorian => "proleptic_gregorian",
            Calendar::Julian => "julian",
            Calendar::NoLeap => "noleap",
            Calendar::AllLeap => "all_leap",
            Calendar::Day360 => "360_day",
        }
    }

    /// Days in a month; 0 for a month outside 1..=12 or a year the calendar lacks (year 0 in
    /// `standard` and `julian`). October 1582 in `standard` still ends on day 31, though its
    /// days 5 to 14 do not exist.
    pub fn days_in_month(self, year: i64, month: u32) -> u32 {
        match (self.astronomical_year(year), month) {
            (Some(_), 1..=12) if self == Calendar::Day360 => 30,
            (Some(a), 1..=12) => {
                let table = &DAYS_BEFORE[usize::from(self.is_leap(a))];
                (table[month as usize] - table[month as usize - 1]) as u32
            }
            _ => 0,
        }
    }

    fn has_year_zero(self) -> bool {
        !matches!(self, Calendar::Standard | Calendar::Julian)
    }

    /// The year in astronomical numbering (1 BC = 0), `None` for a year 0 that does not exist.
    fn astronomical_year(self, year: i64) -> Option<i128> {
        let y = i128::from(year);
        match year {
            _ if self.has_year_zero() || year > 0 => Some(y),
            0 => None,
            _ => Some(y + 1),
        }
    }

    fn calendar_year(self, astronomical: i128) -> i128 {
        if !self.has_year_zero() && astronomical <= 0 {
            astronomical - 1
        } else {
            astronomical
        }
    }

    fn is_leap(self, a: i128) -> bool {
        let julian = a.rem_euclid(4) == 0;
        let gregorian = julian && (a.rem_euclid(100) != 0 || a.rem_euclid(400) == 0);
        match self {
            Calendar::Standard if a > 1581 => gregorian,
            Calendar::Standard | Calendar::Julian => julian,
            Calendar::ProlepticGregorian => gregorian,
            Calendar::AllLeap => true,
            Calendar::NoLeap | Calendar::Day360 => false,
        }
    }
}

/// cftime's `toordinal()` of a date with an astronomical year; `month` must be in 1..=12.
fn ordinal(cal: Calendar, a: i128, month: u32, day: u32) -> i128 {
    let (m, d) = (month as usize, i128::from(day));
    let before = |leap: bool| DAYS_BEFORE[usize::from(leap)][m - 1];
    // Whole years since -4800, the origin of the Dershowitz–Reingold formulas cftime uses.
    let y = a + 4799;
    let julian = || d + before(a.rem_euclid(4) == 0) + 365 * y + y.div_euclid(4) - 31_777;
    let gregorian = || {
        d + before(Calendar::ProlepticGregorian.is_leap(a)) + 365 * y + y.div_euclid(4) - y.div_euclid(100)
            + y.div_euclid(400)
            - 31_739
    };
    match cal {
        Calendar::Day360 => a * 360 + (i128::from(month) - 1) * 30 + d - 1,
        Calendar::NoLeap => a * 365 + before(false) + d - 1,
        Calendar::AllLeap => a * 366 + before(true) + d - 1,
        Calendar::Julian => julian(),
        Calendar::ProlepticGregorian => gregorian(),
        Calendar::Standard if (a, month, day) < (1582, 10, 15) => julian(),
        Calendar::Standard => gregorian(),
    }
}

/// The astronomical date of a day ordinal, the inverse of [`ordinal`].
fn from_ordinal(cal: Calendar, n: i128) -> (i128, u32, u32) {
    let rules = match cal {
        Calendar::Standard if n < GREGORIAN_FIRST_DAY => Calendar::Julian,
        Calendar::Standard => Calendar::ProlepticGregorian,
        other => other,
    };
    let (years, days): (i128, i128) = match rules {
        Calendar::Day360 => (1, 360),
        Calendar::NoLeap => (1, 365),
        Calendar::AllLeap => (1, 366),
        Calendar::Julian => (4, 1461),
        _ => (400, 146_097),
    };
    // The mean year length puts the estimate within a year of the answer.
    let mut a = ((n - ordinal(rules, 0, 1, 1)) * years).div_euclid(days);
    while ordinal(rules, a, 1, 1) > n {
        a -= 1;
    }
    while ordinal(rules, a + 1, 1, 1) <= n {
        a += 1;
    }
    let month = (1..=12).rev().find(|&m| ordinal(rules, a, m, 1) <= n).unwrap_or(1);
    (a, month, (n - ordinal(rules, a, month, 1) + 1) as u32)
}

/// The day number (cftime's `toordinal()`) of a date; Err if the date does not exist in `cal`
/// or its number does not fit an i64.
pub fn day_number(cal: Calendar, year: i64, month: u32, day: u32) -> Result<i64, String> {
    let gap = cal == Calendar::Standard && year == 1582 && month == 10 && (5..=14).contains(&day);
    let a = cal
        .astronomical_year(year)
        .filter(|_| !gap && (1..=cal.days_in_month(year, month)).contains(&day))
        .ok_or_else(|| format!("{} does not exist in the {} calendar", ymd_text(year, month, day), cal.name()))?;
    i64::try_from(ordinal(cal, a, month, day)).map_err(|_| format!("{} is out of range", ymd_text(year, month, day)))
}

/// The date of a day number: the inverse of [`day_number`], defined for every i64.
pub fn date_of_day_number(cal: Calendar, n: i64) -> (i64, u32, u32) {
    let (a, month, day) = from_ordinal(cal, i128::from(n));
    (cal.calendar_year(a) as i64, month, day)
}

/// Is this a date of the calendar (and within the i64 day-number range)?
pub fn is_valid(cal: Calendar, year: i64, month: u32, day: u32) -> bool {
    day_number(cal, year, month, day).is_ok()
}

/// A date and time in some calendar; fields are plain (no validation on construction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub microsecond: u32,
}

impl DateTime {
    pub fn date(year: i64, month: u32, day: u32) -> Self {
        DateTime { year, month, day, hour: 0, minute: 0, second: 0, microsecond: 0 }
    }

    /// `YYYY-MM-DDTHH:MM:SS`, with `.ffffff` only when there are microseconds. Years outside
    /// 0..=9999 carry a sign and as many digits as needed (`-0001`, `+12345`).
    pub fn iso(&self) -> String {
        let mut text = format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}",
            year_text(self.year),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        if self.microsecond != 0 {
            text += &format!(".{:06}", self.microsecond);
        }
        text
    }
}

fn year_text(year: i64) -> String {
    if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    }
}

fn ymd_text(year: i64, month: u32, day: u32) -> String {
    format!("{}-{month:02}-{day:02}", year_text(year))
}

/// Microseconds since the calendar's day-number origin; Err if `t` does not exist in `cal`.
fn instant_us(cal: Calendar, t: &DateTime) -> Result<i128, String> {
    if t.hour > 23 || t.minute > 59 || t.second > 59 || t.microsecond > 999_999 {
        return Err(format!("{} is not a valid time of day", t.iso()));
    }
    let day = day_number(cal, t.year, t.month, t.day)?;
    let seconds = (i128::from(t.hour) * 60 + i128::from(t.minute)) * 60 + i128::from(t.second);
    Ok(i128::from(day) * DAY_US + seconds * 1_000_000 + i128::from(t.microsecond))
}

fn from_instant_us(cal: Calendar, us: i128) -> Result<DateTime, String> {
    let n = i64::try_from(us.div_euclid(DAY_US)).map_err(|_| "date out of range".to_string())?;
    let (year, month, day) = date_of_day_number(cal, n);
    let clock = us.rem_euclid(DAY_US);
    Ok(DateTime {
        year,
        month,
        day,
        hour: (clock / 3_600_000_000) as u32,
        minute: (clock / 60_000_000 % 60) as u32,
        second: (clock / 1_000_000 % 60) as u32,
        microsecond: (clock % 1_000_000) as u32,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl TimeUnit {
    /// The unit's length in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            TimeUnit::Microseconds => 1,
            TimeUnit::Milliseconds => 1_000,
            TimeUnit::Seconds => 1_000_000,
            TimeUnit::Minutes => 60_000_000,
            TimeUnit::Hours => 3_600_000_000,
            TimeUnit::Days => 86_400_000_000,
        }
    }

    /// A lower-case unit word, with exactly the aliases cftime accepts.
    fn from_word(word: &str) -> Result<TimeUnit, String> {
        Ok(match word {
            "microseconds" | "microsecond" | "microsec" | "microsecs" => TimeUnit::Microseconds,
            "milliseconds" | "millisecond" | "millisec" | "millisecs" | "msec" | "msecs" | "ms" => {
                TimeUnit::Milliseconds
            }
            "seconds" | "second" | "sec" | "secs" | "s" => TimeUnit::Seconds,
            "minutes" | "minute" | "min" | "mins" => TimeUnit::Minutes,
            "hours" | "hour" | "hr" | "hrs" | "h" => TimeUnit::Hours,
            "days" | "day" | "d" => TimeUnit::Days,
            "month" | "months" | "year" | "years" | "common_year" | "common_years" => {
                return Err(format!("'{word}' is not a fixed length of time; use days or a shorter unit"));
            }
            _ => {
                return Err(format!(
                    "unknown time unit '{word}' (expected days, hours, minutes, seconds, milliseconds or microseconds)"
                ))
            }
        })
    }
}

/// CF units "UNIT since REFERENCE" with a calendar.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeUnits {
    pub unit: TimeUnit,
    /// The reference instant in UTC: the written reference date minus its time zone offset.
    pub epoch: DateTime,
    pub calendar: Calendar,
    /// The offset written after the reference date, in minutes east of UTC (0 when absent).
    pub utc_offset_minutes: i32,
}

impl TimeUnits {
    /// Parses `units` as xarray does. For the standard calendars that is pandas first (see
    /// [`pandas`]: "Jan 1, 2000", "1/15/2000 06:00" and ISO text as pandas reads it), then,
    /// where xarray falls back, cftime (unit aliases, `since` in any case, the reference read
    /// by cftime's ISO 8601 pattern), which is all there is for the other calendars.
    /// `calendar` is as in [`Calendar::parse`], "" meaning `standard`. Month and year units
    /// are refused, as is a reference date missing from the calendar or one that pandas may
    /// read in a way not reproduced here.
    pub fn parse(units: &str, calendar: &str) -> Result<TimeUnits, String> {
        let calendar = match calendar.trim() {
            "" => Calendar::Standard,
            name => Calendar::parse(name).ok_or_else(|| format!("unknown calendar '{name}'"))?,
        };
        let context = |why: String| format!("time units '{units}': {why}");
        if matches!(calendar, Calendar::Standard | Calendar::ProlepticGregorian) {
            match pandas::read_units(units) {
                pandas::Reading::Pandas(unit, epoch, utc_offset_minutes) => {
                    return Ok(TimeUnits { unit, epoch, calendar, utc_offset_minutes });
                }
                pandas::Reading::Unknown => {
                    return Err(context(
                        "xarray reads this reference date with pandas in a way not reproduced here".into(),
                    ));
                }
                pandas::Reading::Cftime => {}
            }
        }
        let (word, reference) =
            split_since(units).ok_or_else(|| context("expected 'UNIT since REFERENCE'".to_string()))?;
        let unit = TimeUnit::from_word(&word.to_lowercase()).map_err(context)?;
        let (written, utc_offset_minutes) = read_reference(reference).ok_or_else(|| {
            context(format!("cannot read reference date '{reference}' (expected Y-M-D[ h:m[:s[.f]]][ zone])"))
        })?;
        let local = instant_us(calendar, &written).map_err(|why| context(format!("reference date {why}")))?;
        let epoch = from_instant_us(calendar, local - i128::from(utc_offset_minutes) * 60_000_000).map_err(context)?;
        Ok(TimeUnits { unit, epoch, calendar, utc_offset_minutes })
    }

    /// The instant of a stored value, rounded to the microsecond exactly as `cftime.num2date`.
    pub fn decode(&self, value: f64) -> Result<DateTime, String> {
        let offset = scaled_micros(value, self.unit)
            .ok_or_else(|| format!("time value {value} is not finite or overflows 64-bit microseconds"))?;
        from_instant_us(self.calendar, instant_us(self.calendar, &self.epoch)? + i128::from(offset))
    }

    /// The stored value of an instant, as `cftime.date2num` computes it (exact microseconds
    /// divided by the unit, correctly rounded). Err if `t` does not exist in the calendar.
    pub fn encode(&self, t: &DateTime) -> Result<f64, String> {
        let since = instant_us(self.calendar, t)? - instant_us(self.calendar, &self.epoch)?;
        Ok(ratio_to_f64(since, i128::from(self.unit.micros())))
    }
}

/// Splits "UNIT since REFERENCE" the way cftime does (`str.split(None, 2)`).
fn split_since(units: &str) -> Option<(&str, &str)> {
    let rest = units.trim_start();
    let (word, rest) = rest.split_at(rest.find(char::is_whitespace)?);
    let rest = rest.trim_start();
    let (since, rest) = rest.split_at(rest.find(char::is_whitespace)?);
    let reference = rest.trim();
    (since.eq_ignore_ascii_case("since") && !reference.is_empty()).then_some((word, reference))
}

/// A reference date as cftime's ISO 8601 pattern reads it: `[+-]Y+-M{1,2}-D{1,2}`, then
/// optionally any one character and `h{1,2}:m{1,2}[:s{1,2}[.f+]]`, then optionally a zone
/// (`Z`, `±hh`, `±hh:mm`, `±hhmm`, possibly after one separator). The rest is ignored.
fn read_reference(text: &str) -> Option<(DateTime, i32)> {
    let mut cur = Cursor { chars: text.trim().chars().collect(), pos: 0 };
    let negative = cur.eat('-');
    if !negative {
        cur.eat('+');
    }
    let magnitude: i64 = cur.digits(usize::MAX)?.parse().ok()?;
    if !cur.eat('-') {
        return None;
    }
    let month = cur.number(2)?;
    if !cur.eat('-') {
        return None;
    }
    let day = cur.number(2)?;
    let mut t = DateTime::date(if negative { -magnitude } else { magnitude }, month, day);
    let before_clock = cur.pos;
    match read_clock(&mut cur) {
        Some((hour, minute, second, microsecond)) => {
            (t.hour, t.minute, t.second, t.microsecond) = (hour, minute, second, microsecond);
        }
        None => cur.pos = before_clock,
    }
    let zone = match cur.chars.get(cur.pos) {
        Some(&c) if c != '\n' => cur.zone_at(cur.pos + 1),
        _ => None,
    };
    Some((t, zone.or_else(|| cur.zone_at(cur.pos)).unwrap_or(0)))
}

/// `h{1,2}:m{1,2}[:s{1,2}[.f+]]` after any one separator, as (hour, minute, second, µs).
fn read_clock(cur: &mut Cursor) -> Option<(u32, u32, u32, u32)> {
    if *cur.chars.get(cur.pos)? == '\n' {
        return None;
    }
    cur.pos += 1;
    let hour = cur.number(2)?;
    if !cur.eat(':') {
        return None;
    }
    let minute = cur.number(2)?;
    let (mut second, mut micro) = (0, 0);
    let before_seconds = cur.pos;
    if cur.eat(':') {
        match cur.number(2) {
            Some(s) => {
                second = s;
                let before_fraction = cur.pos;
                if cur.eat('.') {
                    match cur.digits(usize::MAX) {
                        // cftime: int(float("0.fff") * 1e6), which truncates.
                        Some(f) => micro = format!("0.{f}").parse::<f64>().map_or(0, |x| (x * 1e6) as u32),
                        None => cur.pos = before_fraction,
                    }
                }
            }
            None => cur.pos = before_seconds,
        }
    }
    Some((hour, minute, second, micro))
}

struct Cursor {
    chars: Vec<char>,
    pos: usize,
}

impl Cursor {
    fn eat(&mut self, c: char) -> bool {
        let hit = self.chars.get(self.pos) == Some(&c);
        self.pos += usize::from(hit);
        hit
    }

    /// One to `max` ASCII digits.
    fn digits(&mut self, max: usize) -> Option<String> {
        let start = self.pos;
        while self.pos - start < max && self.chars.get(self.pos).is_some_and(char::is_ascii_digit) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    fn number(&mut self, max: usize) -> Option<u32> {
        self.digits(max)?.parse().ok()
    }

    /// A zone `Z`, `±hh`, `±hh:mm` or `±hhmm` starting at `at`, in minutes east of UTC.
    fn zone_at(&self, at: usize) -> Option<i32> {
        let two = |i: usize| -> Option<i32> {
            let (hi, lo) = (self.chars.get(i)?.to_digit(10)?, self.chars.get(i + 1)?.to_digit(10)?);
            Some((hi * 10 + lo) as i32)
        };
        let sign = match self.chars.get(at)? {
            'Z' => return Some(0),
            '+' => 1,
            '-' => -1,
            _ => return None,
        };
        let hours = two(at + 1)?;
        let colon_minutes = if self.chars.get(at + 3) == Some(&':') { two(at + 4) } else { None };
        Some(sign * (hours * 60 + colon_minutes.or_else(|| two(at + 3)).unwrap_or(0)))
    }
}

/// `value × unit` in whole microseconds as cftime computes it: the product rounded to a 64-bit
/// significand, then to the nearest integer (ties to even), then for units of a second or more
/// a result 1 µs past or short of a whole second replaced by the floor or ceiling of the
/// product. `None` for non-finite values and results outside i64.
fn scaled_micros(value: f64, unit: TimeUnit) -> Option<i64> {
    if !value.is_finite() {
        return None;
    }
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = u128::from(bits & ((1 << 52) - 1));
    let (mantissa, exp) = if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased - 1075) };
    let factor = unit.micros();
    let (q, exp) = round_to_bits(mantissa * factor as u128, exp, EXTENDED_BITS);
    let (floor, ceil, nearest) = integer_parts(q, exp)?;
    let (floor, ceil, mut us) = if bits >> 63 == 1 { (-ceil, -floor, -nearest) } else { (floor, ceil, nearest) };
    if ceil > i128::from(i64::MAX) || floor < i128::from(i64::MIN) {
        return None;
    }
    if factor >= 1_000_000 {
        if us.rem_euclid(1_000_000) == 1 {
            us = floor;
        }
        if us.rem_euclid(1_000_000) == 999_999 {
            us = ceil;
        }
    }
    i64::try_from(us).ok()
}

/// `q × 2^exp` rounded (ties to even) to at most `bits` significant bits.
fn round_to_bits(q: u128, exp: i32, bits: u32) -> (u128, i32) {
    let len = 128 - q.leading_zeros();
    if len <= bits {
        return (q, exp);
    }
    let drop = len - bits;
    let kept = q >> drop;
    let rest = q & ((1u128 << drop) - 1);
    let half = 1u128 << (drop - 1);
    let up = rest > half || (rest == half && kept & 1 == 1);
    (kept + u128::from(up), exp + drop as i32)
}

/// Floor, ceiling and nearest integer (ties to even) of `q × 2^exp`, `q` below 2^66.
fn integer_parts(q: u128, exp: i32) -> Option<(i128, i128, i128)> {
    if exp >= 0 {
        if 128 - q.leading_zeros() + exp as u32 > 100 {
            return None;
        }
        let n = (q << exp) as i128;
        return Some((n, n, n));
    }
    let shift = exp.unsigned_abs();
    if shift >= 127 {
        // Far below one half.
        return Some((0, i128::from(q != 0), 0));
    }
    let whole = (q >> shift) as i128;
    let rest = q & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    let nearest = whole + i128::from(rest > half || (rest == half && whole & 1 == 1));
    Some((whole, whole + i128::from(rest != 0), nearest))
}

/// `n / d` correctly rounded to f64 (as Python's int / int), `d` nonzero and below 2^64.
fn ratio_to_f64(n: i128, d: i128) -> f64 {
    let (num, den) = (n.unsigned_abs(), d.unsigned_abs());
    if num == 0 || den == 0 {
        return 0.0;
    }
    let bits = |x: u128| 128 - x.leading_zeros() as i32;
    // Scale so the integer quotient has 55 or 56 bits: 53 to keep, and room to round.
    let shift = 55 - (bits(num) - bits(den));
    let (q, sticky) = if shift >= 0 {
        let scaled = num << shift;
        (scaled / den, scaled % den != 0)
    } else {
        let scaled = den << -shift;
        (num / scaled, num % scaled != 0)
    };
    let extra = bits(q) - 53;
    let mut mantissa = q >> extra;
    let rest = q & ((1u128 << extra) - 1);
    let half = 1u128 << (extra - 1);
    if rest > half || (rest == half && (sticky || mantissa & 1 == 1)) {
        mantissa += 1;
    }
    let magnitude = mantissa as f64 * f64::from_bits(((extra - shift + 1023) as u64) << 52);
    if n < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// A bound as written: the year, `given` more fields (month, day, hour, minute, second), and
/// maybe the digits of a fraction of a second, whose count sets the bound's precision.
struct Partial {
    year: i64,
    fields: [u32; 5],
    given: usize,
    fraction: Option<String>,
}

impl Partial {
    fn parse(text: &str) -> Result<Partial, String> {
        Partial::read(text.trim()).ok_or_else(|| {
            format!("time bound '{text}' is not an ISO 8601 date or date-time (YYYY[-MM[-DD[Thh[:mm[:ss[.ffffff]]]]]])")
        })
    }

    fn read(text: &str) -> Option<Partial> {
        let text = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')).unwrap_or(text);
        let (date, clock) = match text.split_once(['T', 't', ' ']) {
            Some((date, clock)) => (date, Some(clock)),
            None => (text, None),
        };
        let (negative, date) = match date.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, date.strip_prefix('+').unwrap_or(date)),
        };
        let mut parts = date.split('-');
        let magnitude = i64::try_from(field(parts.next()?, 18)?).ok()?;
        let year = if negative { -magnitude } else { magnitude };
        let mut p = Partial { year, fields: [1, 1, 0, 0, 0], given: 0, fraction: None };
        for part in parts {
            p.push(part, 2)?;
        }
        if let Some(clock) = clock {
            if p.given != 2 {
                return None;
            }
            let (clock, fraction) = match clock.split_once('.') {
                Some((clock, fraction)) => (clock, Some(fraction)),
                None => (clock, None),
            };
            for part in clock.split(':') {
                p.push(part, 5)?;
            }
            if let Some(f) = fraction {
                let digits = (1..=6).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit());
                if p.given != 5 || !digits {
                    return None;
                }
                p.fraction = Some(f.to_string());
            }
        }
        const LIMITS: [u32; 5] = [12, 31, 23, 59, 59];
        (0..p.given).all(|i| p.fields[i] <= LIMITS[i] && (i >= 2 || p.fields[i] >= 1)).then_some(p)
    }

    /// Appends the next field (1 or 2 digits) unless `last` fields are already there.
    fn push(&mut self, part: &str, last: usize) -> Option<()> {
        if self.given >= last {
            return None;
        }
        self.fields[self.given] = u32::try_from(field(part, 2)?).ok()?;
        self.given += 1;
        Some(())
    }

    fn start(&self) -> DateTime {
        let [month, day, hour, minute, second] = self.fields;
        let microsecond = self.fraction.as_deref().map_or(0, |f| format!("{f:0<6}").parse().unwrap_or(0));
        DateTime { year: self.year, month, day, hour, minute, second, microsecond }
    }
}

/// 1 to `max_len` ASCII digits.
fn field(text: &str, max_len: usize) -> Option<u64> {
    let digits = (1..=max_len).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// One end of a user-given ISO 8601 time range (`YYYY` down to `YYYY-MM-DDThh:mm:ss.ffffff`,
/// with `T`, `t` or a space, an optional trailing `Z`, unpadded fields accepted). A start bound
/// is the first instant of the period written; an end bound (`is_end`) is the first instant
/// after it, to be compared exclusively: one unit of the last written field later ("2000" ends
/// at 2001-01-01, "…T12:00:00" at 12:00:01, "…T12:00:00.5" at 12:00:00.6). Err for malformed
/// text and for dates missing from the calendar.
pub fn parse_bound(text: &str, is_end: bool, cal: Calendar) -> Result<DateTime, String> {
    let p = Partial::parse(text)?;
    let start = p.start();
    if !is_valid(cal, start.year, start.month, start.day) {
        let date = ymd_text(start.year, start.month, start.day);
        return Err(format!("time bound '{text}': {date} does not exist in the {} calendar", cal.name()));
    }
    if !is_end {
        return Ok(start);
    }
    let step_us: i128 = match (p.given, &p.fraction) {
        (0, _) => return Ok(next_period_start(&start, Freq::Year, cal)),
        (1, _) => return Ok(next_period_start(&start, Freq::Month, cal)),
        (2, _) => return Ok(next_period_start(&start, Freq::Day, cal)),
        (3, _) => 3_600_000_000,
        (4, _) => 60_000_000,
        (_, None) => 1_000_000,
        (_, Some(f)) => 10i128.pow(6 - f.len() as u32),
    };
    from_instant_us(cal, instant_us(cal, &start)? + step_us)
}

/// The canonical spelling of a bound for cache keys: the same fields, zero padded, `T` as the
/// separator, no `Z`, fraction digits as written. Independent of the calendar.
pub fn canonical_bound(text: &str) -> Result<String, String> {
    let p = Partial::parse(text)?;
    let mut out = year_text(p.year);
    for (i, separator) in ["-", "-", "T", ":", ":"].iter().enumerate().take(p.given) {
        out += &format!("{separator}{:02}", p.fields[i]);
    }
    if let Some(f) = &p.fraction {
        out += &format!(".{f}");
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freq {
    Day,
    Month,
    Year,
}

/// The first instant of the period holding `t`.
pub fn period_start(t: &DateTime, freq: Freq) -> DateTime {
    match freq {
        Freq::Year => DateTime::date(t.year, 1, 1),
        Freq::Month => DateTime::date(t.year, t.month, 1),
        Freq::Day => DateTime::date(t.year, t.month, t.day),
    }
}

/// The first instant of the period after the one holding `t` (a valid date of `cal`): the day
/// after 360_day 2000-02-30 is 2000-03-01, after standard 1582-10-04 comes 1582-10-15, and in
/// `standard` and `julian` year -1 is followed by year 1.
pub fn next_period_start(t: &DateTime, freq: Freq, cal: Calendar) -> DateTime {
    let next_year = match t.year.saturating_add(1) {
        0 if !cal.has_year_zero() => 1,
        year => year,
    };
    match freq {
        Freq::Year => DateTime::date(next_year, 1, 1),
        Freq::Month if t.month >= 12 => DateTime::date(next_year, 1, 1),
        Freq::Month => DateTime::date(t.year, t.month + 1, 1),
        Freq::Day if cal == Calendar::Standard && (t.year, t.month, t.day) == (1582, 10, 4) => {
            DateTime::date(1582, 10, 15)
        }
        Freq::Day if t.day < cal.days_in_month(t.year, t.month) => DateTime::date(t.year, t.month, t.day + 1),
        Freq::Day => next_period_start(t, Freq::Month, cal),
    }
}

#[cfg(test)]
mod tests {
    use super::Calendar::{AllLeap, Day360, Julian, NoLeap, ProlepticGregorian, Standard};
    use super::*;

    const ALL: [Calendar; 6] = [Standard, ProlepticGregorian, Julian, NoLeap, AllLeap, Day360];

    fn decoded(units: &str, cal: &str, value: f64) -> Result<String, String> {
        TimeUnits::parse(units, cal)?.decode(value).map(|t| t.iso())
    }

    fn at(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32, microsecond: u32) -> DateTime {
        DateTime { year, month, day, hour, minute, second, microsecond }
    }

    #[test]
    fn calendar_names() {
        let cases = [
            ("standard", Some(Standard)),
            ("Gregorian", Some(Standard)),
            ("PROLEPTIC_GREGORIAN", Some(ProlepticGregorian)),
            ("julian", Some(Julian)),
            ("noleap", Some(NoLeap)),
            ("365_day", Some(NoLeap)),
            ("all_leap", Some(AllLeap)),
            ("366_day", Some(AllLeap)),
            ("360_day", Some(Day360)),
            ("tai", None),
            ("", None),
            ("none", None),
        ];
        for (name, want) in cases {
            assert_eq!(Calendar::parse(name), want, "{name}");
        }
        for cal in ALL {
            assert_eq!(Calendar::parse(cal.name()), Some(cal));
        }
    }

    #[test]
    fn leap_rules() {
        // (calendar, year, days in February); year -1 is 1 BC, a Julian leap year.
        let cases = [
            (Standard, 1900, 28),
            (ProlepticGregorian, 1900, 28),
            (Julian, 1900, 29),
            (NoLeap, 1900, 28),
            (AllLeap, 1900, 29),
            (Day360, 1900, 30),
            (Standard, 2000, 29),
            (ProlepticGregorian, 2000, 29),
            (Julian, 2000, 29),
            (NoLeap, 2000, 28),
            (AllLeap, 2001, 29),
            (Standard, 1500, 29),
            (ProlepticGregorian, 1500, 28),
            (Standard, 1700, 28),
            (Julian, -1, 29),
            (Standard, -5, 29),
            (Standard, -4, 28),
            (ProlepticGregorian, 0, 29),
            (ProlepticGregorian, -100, 28),
            (Standard, 0, 0),
            (Julian, 0, 0),
        ];
        for (cal, year, want) in cases {
            assert_eq!(cal.days_in_month(year, 2), want, "{cal:?} {year}");
        }
        assert_eq!(Standard.days_in_month(2000, 13), 0);
        assert_eq!(Day360.days_in_month(2000, 0), 0);
        assert_eq!(Standard.days_in_month(1582, 10), 31);
    }

    #[test]
    fn day_numbers_are_cftime_ordinals() {
        // cftime.datetime(y, m, d, calendar=...).toordinal()
        let cases = [
            (Standard, 1, 1, 1, 1_721_424),
            (Standard, -1, 12, 31, 1_721_423),
            (Standard, -4713, 1, 1, 0),
            (Standard, 1582, 10, 4, 2_299_160),
            (Standard, 1582, 10, 15, 2_299_161),
            (Standard, 1600, 2, 29, 2_305_507),
            (Standard, 2000, 1, 1, 2_451_545),
            (Standard, -1, 2, 29, 1_721_117),
            (Standard, 1500, 2, 29, 2_268_992),
            (Standard, 100_000, 3, 1, 38_245_370),
            (Julian, 1, 1, 1, 1_721_424),
            (Julian, -1, 12, 31, 1_721_423),
            (Julian, 1900, 2, 29, 2_415_092),
            (Julian, 2000, 1, 1, 2_451_558),
            (Julian, -5, 2, 29, 1_719_656),
            (Julian, -1_000_000, 1, 1, -363_528_576),
            (ProlepticGregorian, 0, 1, 1, 1_721_060),
            (ProlepticGregorian, -1, 12, 31, 1_721_059),
            (ProlepticGregorian, 1, 1, 1, 1_721_426),
            (ProlepticGregorian, 1582, 10, 15, 2_299_161),
            (ProlepticGregorian, 2000, 2, 29, 2_451_604),
            (ProlepticGregorian, -4713, 11, 24, 0),
            (ProlepticGregorian, 1_000_000, 12, 31, 366_963_925),
            (NoLeap, 0, 1, 1, 0),
            (NoLeap, -1, 12, 31, -1),
            (NoLeap, 2000, 3, 1, 730_059),
            (NoLeap, -123_456, 7, 8, -45_061_252),
            (AllLeap, 1999, 2, 29, 731_693),
            (AllLeap, -1, 12, 31, -1),
            (Day360, 2000, 2, 30, 720_059),
            (Day360, -1, 12, 30, -1),
            (Day360, 123_456, 12, 30, 44_444_519),
        ];
        for (cal, y, m, d, n) in cases {
            assert_eq!(day_number(cal, y, m, d), Ok(n), "{cal:?} {y}-{m}-{d}");
            assert_eq!(date_of_day_number(cal, n), (y, m, d), "{cal:?} {n}");
        }
        // The ten days 1582-10-05..14 do not exist in the standard calendar.
        assert_eq!(day_number(Standard, 1582, 10, 15).unwrap() - day_number(Standard, 1582, 10, 4).unwrap(), 1);
    }

    #[test]
    fn day_numbers_walk_day_by_day() {
        // Property: consecutive day numbers are consecutive dates, and each round-trips.
        let windows = [-800_000, -1_000, 700_000, 1_720_000, 2_298_000, 2_451_000];
        for cal in ALL {
            for start in windows {
                for n in start..start + 2_000 {
                    let (y, m, d) = date_of_day_number(cal, n);
                    assert_eq!(day_number(cal, y, m, d), Ok(n), "{cal:?} {n}");
                    let next = next_period_start(&DateTime::date(y, m, d), Freq::Day, cal);
                    assert_eq!((next.year, next.month, next.day), date_of_day_number(cal, n + 1), "{cal:?} {n}");
                }
            }
            for n in [i64::MIN, i64::MAX] {
                let (y, m, d) = date_of_day_number(cal, n);
                assert_eq!(day_number(cal, y, m, d), Ok(n), "{cal:?} {n}");
            }
            assert!(!is_valid(cal, i64::MAX, 1, 1));
        }
    }

    #[test]
    fn invalid_dates() {
        let cases = [
            (Standard, 1582, 10, 5),
            (Standard, 1582, 10, 14),
            (Standard, 0, 1, 1),
            (Julian, 0, 6, 1),
            (Standard, 1900, 2, 29),
            (ProlepticGregorian, 1900, 2, 29),
            (NoLeap, 2000, 2, 29),
            (Day360, 2000, 1, 31),
            (AllLeap, 2000, 2, 30),
            (Standard, 2000, 13, 1),
            (Standard, 2000, 0, 1),
            (Day360, 2000, 1, 0),
        ];
        for (cal, y, m, d) in cases {
            assert!(!is_valid(cal, y, m, d), "{cal:?} {y}-{m}-{d}");
            assert!(day_number(cal, y, m, d).is_err());
        }
        assert!(
            is_valid(Julian, 1582, 10, 10) && is_valid(Day360, 2001, 2, 30) && is_valid(ProlepticGregorian, 0, 2, 29)
        );
    }

    #[test]
    fn decode_matches_cftime() {
        // cftime.num2date(value, units, calendar), cftime 1.6.6 on x86-64.
        let cases = [
            ("days since 1850-01-01", "standard", 0.1, "1850-01-01T02:24:00"),
            ("days since 1850-01-01", "standard", 0.3333333333333333, "1850-01-01T08:00:00"),
            ("days since 1850-01-01", "standard", 0.6666666666666666, "1850-01-01T16:00:00"),
            ("days since 1850-01-01", "standard", 15.5, "1850-01-16T12:00:00"),
            ("days since 1850-01-01", "standard", 730000.5, "3848-09-03T12:00:00"),
            ("days since 1850-01-01", "standard", -0.1, "1849-12-31T21:36:00"),
            ("days since 1850-01-01", "standard", -0.3333333333333333, "1849-12-31T16:00:00"),
            ("days since 1850-01-01", "standard", -15.5, "1849-12-16T12:00:00"),
            ("days since 1850-01-01", "standard", -730000.5, "-0150-05-03T12:00:00"),
            ("days since 1850-01-01", "standard", 59.0, "1850-03-01T00:00:00"),
            ("days since 1850-01-01", "standard", 1e-06, "1850-01-01T00:00:00.086400"),
            ("days since 1850-01-01", "standard", -0.0, "1850-01-01T00:00:00"),
            ("hours since 1850-01-01", "standard", 1000000.0, "1964-01-30T16:00:00"),
            ("hours since 1850-01-01", "standard", 1000000.1, "1964-01-30T16:06:00"),
            ("hours since 1850-01-01", "standard", -1000000.0, "1735-12-03T08:00:00"),
            ("hours since 1850-01-01", "standard", 0.14285714285714285, "1850-01-01T00:08:34.285714"),
            ("hours since 1850-01-01 00:00:00", "noleap", 1000000.0, "1964-02-26T16:00:00"),
            ("hours since 1850-01-01 00:00:00", "noleap", 876000.25, "1950-01-01T00:15:00"),
            ("hours since 1850-01-01 00:00:00", "noleap", -1.5, "1849-12-31T22:30:00"),
            ("days since 2000-1-1", "360_day", 29.0, "2000-01-30T00:00:00"),
            ("days since 2000-1-1", "360_day", 30.0, "2000-02-01T00:00:00"),
            ("days since 2000-1-1", "360_day", 59.5, "2000-02-30T12:00:00"),
            ("days since 2000-1-1", "360_day", 359.0, "2000-12-30T00:00:00"),
            ("days since 2000-1-1", "360_day", 360.0, "2001-01-01T00:00:00"),
            ("days since 2000-1-1", "360_day", -1.0, "1999-12-30T00:00:00"),
            ("days since 2000-1-1", "360_day", -360.25, "1998-12-30T18:00:00"),
            ("days since 2000-1-1", "360_day", 0.3333333333333333, "2000-01-01T08:00:00"),
            ("days since 0001-01-01 00:00:00", "all_leap", 365.0, "0001-12-31T00:00:00"),
            ("days since 0001-01-01 00:00:00", "all_leap", 366.0, "0002-01-01T00:00:00"),
            ("days since 0001-01-01 00:00:00", "all_leap", -1.0, "0000-12-31T00:00:00"),
            ("days since 0001-01-01 00:00:00", "all_leap", 730000.5, "1995-07-15T12:00:00"),
            ("days since 1582-10-01", "standard", 3.0, "1582-10-04T00:00:00"),
            ("days since 1582-10-01", "standard", 3.5, "1582-10-04T12:00:00"),
            ("days since 1582-10-01", "standard", 4.0, "1582-10-15T00:00:00"),
            ("days since 1582-10-01", "standard", 5.0, "1582-10-16T00:00:00"),
            ("days since 1582-10-01", "standard", -1.0, "1582-09-30T00:00:00"),
            ("days since 1582-10-01", "standard", 100.0, "1583-01-19T00:00:00"),
            ("days since 1582-10-15", "standard", -1.0, "1582-10-04T00:00:00"),
            ("days since 1582-10-15", "standard", -0.5, "1582-10-04T12:00:00"),
            ("days since 1582-10-15", "standard", -11.0, "1582-09-24T00:00:00"),
            ("days since 1582-10-01", "proleptic_gregorian", 4.0, "1582-10-05T00:00:00"),
            ("days since 1582-10-01", "proleptic_gregorian", 14.0, "1582-10-15T00:00:00"),
            ("days since 1582-10-01", "julian", 14.0, "1582-10-15T00:00:00"),
            ("days since 1900-02-28", "standard", 1.0, "1900-03-01T00:00:00"),
            ("days since 1900-02-28", "proleptic_gregorian", 1.0, "1900-03-01T00:00:00"),
            ("days since 1900-02-28", "julian", 1.0, "1900-02-29T00:00:00"),
            ("days since 2000-02-28", "standard", 1.0, "2000-02-29T00:00:00"),
            ("days since 2000-02-28", "noleap", 1.0, "2000-03-01T00:00:00"),
            ("days since 2000-02-28", "all_leap", 1.0, "2000-02-29T00:00:00"),
            ("days since 2000-02-28", "360_day", 2.0, "2000-02-30T00:00:00"),
            ("days since 2000-02-28", "360_day", 3.0, "2000-03-01T00:00:00"),
            ("days since 1500-02-28", "standard", 1.0, "1500-02-29T00:00:00"),
            ("days since 1500-02-28", "proleptic_gregorian", 1.0, "1500-03-01T00:00:00"),
            ("days since 0001-01-01", "standard", -1.0, "-0001-12-31T00:00:00"),
            ("days since 0001-01-01", "standard", -366.0, "-0001-01-01T00:00:00"),
            ("days since 0001-01-01", "standard", -367.0, "-0002-12-31T00:00:00"),
            ("days since 0001-01-01", "julian", -1.0, "-0001-12-31T00:00:00"),
            ("days since 0001-01-01", "proleptic_gregorian", -1.0, "0000-12-31T00:00:00"),
            ("days since 0001-01-01", "proleptic_gregorian", -366.0, "0000-01-01T00:00:00"),
            ("days since 0001-01-01", "proleptic_gregorian", -367.0, "-0001-12-31T00:00:00"),
            ("days since 0000-01-01", "360_day", -1.0, "-0001-12-30T00:00:00"),
            ("days since 0000-03-01", "proleptic_gregorian", -1.0, "0000-02-29T00:00:00"),
            ("days since -0001-03-01", "julian", -1.0, "-0001-02-29T00:00:00"),
            ("days since -0100-01-01", "standard", 36525.0, "0001-01-01T00:00:00"),
            ("seconds since 1970-01-01T00:00:00Z", "standard", 1500000000.0, "2017-07-14T02:40:00"),
            ("seconds since 1970-01-01T00:00:00Z", "standard", -1.0, "1969-12-31T23:59:59"),
            ("seconds since 1970-01-01T00:00:00Z", "standard", 5e-07, "1970-01-01T00:00:00"),
            ("seconds since 1970-01-01T00:00:00Z", "standard", 4020.000001, "1970-01-01T01:07:00"),
            ("seconds since 1970-01-01T00:00:00Z", "standard", 19532.0000006, "1970-01-01T05:25:32"),
            ("seconds since 1970-01-01 00:00:00 +05:30", "standard", 0.0, "1969-12-31T18:30:00"),
            ("minutes since 1900-01-01 00:00:00.0", "standard", 8521.00000001, "1900-01-06T22:01:00"),
            ("minutes since 1900-01-01 00:00:00.0", "standard", 622.6666666766666, "1900-01-01T10:22:40"),
            ("hours since 2000-01-01", "standard", 2509.2083333330556, "2000-04-14T13:12:30"),
            ("hours since 2000-01-01", "standard", 4395.200000000277, "2000-07-02T03:12:00"),
            // The product rounds to a 64-bit significand first; exact arithmetic gives .281007.
            ("hours since 2000-01-01", "standard", 3364607.786744724, "2383-10-31T23:47:12.281006"),
            ("days since 2000-01-01", "proleptic_gregorian", 5728077.043179122, "+17682-12-10T01:02:10.676124"),
            ("days since 2000-01-01", "proleptic_gregorian", 11541.666666666655, "2031-08-07T16:00:00"),
            ("days since 2000-01-01", "proleptic_gregorian", 100000000.0, "+275790-09-13T00:00:00"),
            ("days since 1850-1-1 0:0:0", "julian", 100000.25, "2123-10-15T06:00:00"),
            ("milliseconds since 2000-01-01", "standard", 1.0005, "2000-01-01T00:00:00.001000"),
            ("milliseconds since 2000-01-01", "standard", -0.0005, "1999-12-31T23:59:59.999999"),
            ("milliseconds since 2000-01-01", "standard", 1000000000000000.0, "+33688-09-26T01:46:40"),
            // cftime truncates the reference's fraction; pandas (xarray's reader for standard
            // calendars within datetime64[ns]) does not: see `pandas`.
            ("microseconds since 2000-01-01 00:00:00.000249", "noleap", 0.0, "2000-01-01T00:00:00.000248"),
            ("microseconds since 2000-01-01 00:00:00.000249", "noleap", 0.5, "2000-01-01T00:00:00.000248"),
            ("microseconds since 2000-01-01 00:00:00.000249", "noleap", 1.5, "2000-01-01T00:00:00.000250"),
            ("microseconds since 2000-01-01 00:00:00.000249", "noleap", -2.5, "2000-01-01T00:00:00.000246"),
            ("microseconds since 1600-01-01 00:00:00.000249", "standard", 0.0, "1600-01-01T00:00:00.000248"),
            ("msec since 2000-01-01 12:30:45.5 -01", "noleap", 0.0, "2000-01-01T13:30:45.500000"),
            ("Days SINCE 1850-01-01 00:00:00 UTC", "standard", 1.0, "1850-01-02T00:00:00"),
            ("d since 1850-01-01 12", "", 0.0, "1850-01-01T00:00:00"),
        ];
        for (units, cal, value, want) in cases {
            assert_eq!(decoded(units, cal, value).as_deref(), Ok(want), "{value} {units} ({cal})");
        }
    }

    #[test]
    fn decode_refuses_non_finite_and_overflow() {
        let units = TimeUnits::parse("days since 1850-01-01", "standard").unwrap();
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300, 1.1e8, -1.1e8] {
            assert!(units.decode(value).is_err(), "{value}");
        }
        let micros = TimeUnits::parse("microseconds since 1970-01-01", "proleptic_gregorian").unwrap();
        assert!(micros.decode(9.3e18).is_err());
        assert!(micros.decode(9.2e18).is_ok());
        assert!(micros.decode(f64::MIN_POSITIVE).is_ok());
    }

    #[test]
    fn encode_matches_cftime() {
        // cftime.date2num(cftime.datetime(...), units, calendar)
        let cases = [
            ("days since 1850-01-01", "standard", at(2000, 1, 1, 0, 0, 0, 0), 54786.0),
            ("days since 1850-01-01", "standard", at(1850, 1, 1, 8, 0, 0, 0), 0.3333333333333333),
            ("days since 1850-01-01", "standard", at(1850, 1, 1, 0, 0, 0, 1), 1.1574074074074074e-11),
            ("days since 1850-01-01", "standard", at(1849, 12, 31, 12, 0, 0, 0), -0.5),
            ("days since 1582-10-01", "standard", at(1582, 10, 15, 0, 0, 0, 0), 4.0),
            ("days since 1582-10-01", "standard", at(1582, 10, 4, 0, 0, 0, 0), 3.0),
            ("days since 1582-10-01", "standard", at(1582, 9, 1, 0, 0, 0, 0), -30.0),
            ("hours since 1850-01-01 00:00:00", "noleap", at(1964, 2, 26, 16, 0, 0, 0), 1000000.0),
            ("days since 2000-1-1", "360_day", at(2000, 2, 30, 0, 0, 0, 0), 59.0),
            ("days since 2000-1-1", "360_day", at(1999, 12, 30, 6, 0, 0, 0), -0.75),
            ("seconds since 1970-01-01 00:00:00 +05:30", "standard", at(1970, 1, 1, 0, 0, 0, 0), 19800.0),
            ("days since 0001-01-01", "standard", at(-1, 12, 31, 0, 0, 0, 0), -1.0),
            ("days since 0001-01-01", "proleptic_gregorian", at(9999, 12, 31, 23, 59, 59, 999_999), 3652059.0),
            ("days since 0001-01-01", "proleptic_gregorian", at(0, 2, 29, 0, 0, 0, 0), -307.0),
            ("days since 1850-01-01", "julian", at(1900, 2, 29, 0, 0, 0, 0), 18321.0),
            ("days since 0001-01-01 00:00:00", "all_leap", at(2001, 2, 29, 0, 0, 0, 0), 732059.0),
            ("milliseconds since 2000-01-01", "standard", at(2000, 1, 1, 0, 0, 0, 1500), 1.5),
            (
                "microseconds since 1970-01-01",
                "proleptic_gregorian",
                at(2262, 4, 11, 23, 47, 16, 854_775),
                9223372036854776.0,
            ),
            ("minutes since 1900-01-01 00:00:00.0", "standard", at(1900, 1, 1, 0, 0, 1, 0), 0.016666666666666666),
        ];
        for (units, cal, t, want) in cases {
            let got = TimeUnits::parse(units, cal).and_then(|u| u.encode(&t));
            assert_eq!(got, Ok(want), "{} in {units} ({cal})", t.iso());
        }
    }

    #[test]
    fn encode_refuses_missing_dates() {
        let cases = [
            ("standard", at(1582, 10, 10, 0, 0, 0, 0)),
            ("noleap", at(2000, 2, 29, 0, 0, 0, 0)),
            ("360_day", at(2000, 1, 31, 0, 0, 0, 0)),
            ("julian", at(0, 1, 1, 0, 0, 0, 0)),
            ("standard", at(2000, 1, 1, 24, 0, 0, 0)),
            ("standard", at(2000, 1, 1, 0, 0, 60, 0)),
            ("standard", at(2000, 1, 1, 0, 0, 0, 1_000_000)),
        ];
        for (cal, t) in cases {
            let units = TimeUnits::parse("days since 1582-10-01", cal).unwrap();
            assert!(units.encode(&t).is_err(), "{} ({cal})", t.iso());
        }
    }

    #[test]
    fn decode_inverts_encode() {
        // Property over pseudo-random millisecond instants within a century of the epoch, where
        // an f64 in any unit resolves well under a microsecond.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let units = ["microseconds", "milliseconds", "seconds", "minutes", "hours", "days"];
        for cal in ALL {
            for unit in units {
                let tu = TimeUnits::parse(&format!("{unit} since 1850-01-01 06:00"), cal.name()).unwrap();
                let epoch_day = day_number(cal, 1850, 1, 1).unwrap();
                for _ in 0..300 {
                    let (y, m, d) = date_of_day_number(cal, epoch_day - 36_500 + next(73_000) as i64);
                    let ms = next(86_400_000) as u32;
                    let t = at(y, m, d, ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000 * 1000);
                    let value = tu.encode(&t).unwrap();
                    assert_eq!(tu.decode(value), Ok(t), "{cal:?} {unit} {}", t.iso());
                }
            }
        }
    }

    #[test]
    fn units_parse() {
        let cases = [
            ("days since 1850-01-01", "", TimeUnit::Days, at(1850, 1, 1, 0, 0, 0, 0), 0),
            ("hours since 1850-01-01 00:00:00", "noleap", TimeUnit::Hours, at(1850, 1, 1, 0, 0, 0, 0), 0),
            ("days since 2000-1-1", "360_day", TimeUnit::Days, at(2000, 1, 1, 0, 0, 0, 0), 0),
            ("seconds since 1970-01-01T00:00:00Z", "standard", TimeUnit::Seconds, at(1970, 1, 1, 0, 0, 0, 0), 0),
            ("days since 0001-01-01 00:00:00", "julian", TimeUnit::Days, at(1, 1, 1, 0, 0, 0, 0), 0),
            ("minutes since 1900-01-01 00:00:00.0", "standard", TimeUnit::Minutes, at(1900, 1, 1, 0, 0, 0, 0), 0),
            ("days since 1850-1-1 0:0:0", "standard", TimeUnit::Days, at(1850, 1, 1, 0, 0, 0, 0), 0),
            ("hr since 2000-01-01 06:00:00 +05:30", "standard", TimeUnit::Hours, at(2000, 1, 1, 0, 30, 0, 0), 330),
            ("s since 2000-01-01 00:00:00-0130", "standard", TimeUnit::Seconds, at(2000, 1, 1, 1, 30, 0, 0), -90),
            ("ms since 2000-01-01 00:00:00 UTC", "standard", TimeUnit::Milliseconds, at(2000, 1, 1, 0, 0, 0, 0), 0),
            ("microsecs since -0001-01-01", "standard", TimeUnit::Microseconds, at(-1, 1, 1, 0, 0, 0, 0), 0),
            ("days since 0000-01-01", "proleptic_gregorian", TimeUnit::Days, at(0, 1, 1, 0, 0, 0, 0), 0),
            ("days since 2000-02-30", "360_day", TimeUnit::Days, at(2000, 2, 30, 0, 0, 0, 0), 0),
            ("days since 1582-10-10", "julian", TimeUnit::Days, at(1582, 10, 10, 0, 0, 0, 0), 0),
            ("days since 2000-01-01 00:00:00.5", "standard", TimeUnit::Days, at(2000, 1, 1, 0, 0, 0, 500_000), 0),
        ];
        for (units, cal, unit, epoch, offset) in cases {
            let got = TimeUnits::parse(units, cal).unwrap();
            assert_eq!((got.unit, got.epoch, got.utc_offset_minutes), (unit, epoch, offset), "{units}");
        }
        assert_eq!(TimeUnits::parse("days since 2000-01-01", "GREGORIAN").unwrap().calendar, Standard);
    }

    #[test]
    fn units_refused() {
        let cases = [
            ("months since 2000-01-01", "360_day", "months"),
            ("years since 2000-01-01", "noleap", "years"),
            ("common_years since 2000-01-01", "noleap", "common_years"),
            ("us since 2000-01-01", "standard", "unknown time unit"),
            ("fortnights since 2000-01-01", "standard", "unknown time unit"),
            ("days after 2000-01-01", "standard", "UNIT since REFERENCE"),
            ("days since", "standard", "UNIT since REFERENCE"),
            ("days", "standard", "UNIT since REFERENCE"),
            ("days since 2000", "noleap", "cannot read"),
            ("days since yesterday", "standard", "cannot read"),
            ("days since 1582-10-10", "standard", "does not exist"),
            ("days since 2000-02-30", "standard", "does not exist"),
            ("days since 2000-01-31", "360_day", "does not exist"),
            ("days since 2001-02-29", "noleap", "does not exist"),
            ("days since 0000-01-01", "standard", "does not exist"),
            ("days since 0000-01-01", "julian", "does not exist"),
            ("days since 2000-01-01 24:00", "standard", "not a valid time"),
            ("days since 2000-01-01", "tai", "unknown calendar"),
        ];
        for (units, cal, why) in cases {
            let err = TimeUnits::parse(units, cal).unwrap_err();
            assert!(err.contains(why), "{units} ({cal}): {err}");
        }
    }

    #[test]
    fn bounds() {
        let cases = [
            ("2000", false, Standard, Ok("2000-01-01T00:00:00")),
            ("2000", true, Standard, Ok("2001-01-01T00:00:00")),
            ("2000-02", true, Day360, Ok("2000-03-01T00:00:00")),
            ("2000-02", true, Standard, Ok("2000-03-01T00:00:00")),
            ("2000-12", true, Day360, Ok("2001-01-01T00:00:00")),
            ("2000-12-31", true, NoLeap, Ok("2001-01-01T00:00:00")),
            ("2000-01-01T12:00:00", true, Standard, Ok("2000-01-01T12:00:01")),
            ("2000-02-30", false, Day360, Ok("2000-02-30T00:00:00")),
            ("2000-02-30", true, Day360, Ok("2000-03-01T00:00:00")),
            ("2000-02-29", true, AllLeap, Ok("2000-03-01T00:00:00")),
            ("1900-02-29", true, Julian, Ok("1900-03-01T00:00:00")),
            ("1582-10-04", true, Standard, Ok("1582-10-15T00:00:00")),
            ("1582-10-04T23", true, Standard, Ok("1582-10-15T00:00:00")),
            ("1582-10", true, Standard, Ok("1582-11-01T00:00:00")),
            ("2000-1-5", false, Standard, Ok("2000-01-05T00:00:00")),
            ("2000-01-05 12", true, Standard, Ok("2000-01-05T13:00:00")),
            ("2000-01-05T23:59", true, Standard, Ok("2000-01-06T00:00:00")),
            ("2000-12-31T23:59:59Z", true, Standard, Ok("2001-01-01T00:00:00")),
            ("2000-01-01t00:00:00.5", false, Standard, Ok("2000-01-01T00:00:00.500000")),
            ("2000-01-01T00:00:00.5", true, Standard, Ok("2000-01-01T00:00:00.600000")),
            ("2000-01-01T00:00:00.123456", true, Standard, Ok("2000-01-01T00:00:00.123457")),
            ("-0001", true, Julian, Ok("0001-01-01T00:00:00")),
            ("-0001", true, ProlepticGregorian, Ok("0000-01-01T00:00:00")),
            ("0000", false, ProlepticGregorian, Ok("0000-01-01T00:00:00")),
            (" 2000-01 ", false, Standard, Ok("2000-01-01T00:00:00")),
            ("0000", false, Standard, Err("does not exist")),
            ("2000-02-30", false, Standard, Err("does not exist")),
            ("2000-01-31", false, Day360, Err("does not exist")),
            ("2001-02-29", false, NoLeap, Err("does not exist")),
            ("2000-02-29", true, NoLeap, Err("does not exist")),
            ("1900-02-29", false, Standard, Err("does not exist")),
            ("1582-10-10", false, Standard, Err("does not exist")),
        ];
        for (text, is_end, cal, want) in cases {
            match (parse_bound(text, is_end, cal), want) {
                (Ok(t), Ok(want)) => assert_eq!(t.iso(), want, "{text} {is_end} {cal:?}"),
                (Err(e), Err(why)) => assert!(e.contains(why) && e.contains(text.trim()), "{text}: {e}"),
                (got, want) => panic!("{text} {is_end} {cal:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn malformed_bounds() {
        let cases = "|2000-|2000-1-|20x0|2000-13|2000-00-01|2000-01-00|2000-01-32|2000-01-01T|2000-01-01T25|2000T12\
            |2000-01T12|2000-01-01T12:60|2000-01-01T12:00:60|2000-01-01T12:00:00.|2000-01-01T12:00:00.1234567\
            |2000-01-01T12:00.5|2000/2001|2000-01-01-01|2000-01-01T1:2:3:4|--2000|2000-001|1234567890123456789";
        for text in cases.split('|') {
            assert!(parse_bound(text, false, Day360).is_err(), "{text:?}");
            assert!(canonical_bound(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn canonical_bounds() {
        let cases = [
            ("2000", "2000"),
            ("+2000", "2000"),
            ("2000-1-5", "2000-01-05"),
            ("2000-01-05 12:00", "2000-01-05T12:00"),
            ("2000-1-5t1:2:3.50Z", "2000-01-05T01:02:03.50"),
            (" 2000-02 ", "2000-02"),
            ("2000-02-30", "2000-02-30"),
            ("-500-1", "-0500-01"),
            ("12345-01-01T00", "+12345-01-01T00"),
            ("0-1-1", "0000-01-01"),
        ];
        for (text, want) in cases {
            assert_eq!(canonical_bound(text).as_deref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn periods() {
        let t = at(2000, 5, 17, 13, 45, 10, 500_000);
        assert_eq!(period_start(&t, Freq::Year), DateTime::date(2000, 1, 1));
        assert_eq!(period_start(&t, Freq::Month), DateTime::date(2000, 5, 1));
        assert_eq!(period_start(&t, Freq::Day), DateTime::date(2000, 5, 17));
        let cases = [
            (Day360, (2000, 2, 30), Freq::Day, (2000, 3, 1)),
            (Day360, (2000, 12, 30), Freq::Day, (2001, 1, 1)),
            (Standard, (1582, 10, 4), Freq::Day, (1582, 10, 15)),
            (NoLeap, (2000, 2, 28), Freq::Day, (2000, 3, 1)),
            (AllLeap, (2001, 2, 28), Freq::Day, (2001, 2, 29)),
            (Julian, (1900, 2, 28), Freq::Day, (1900, 2, 29)),
            (Standard, (1900, 2, 28), Freq::Day, (1900, 3, 1)),
            (Standard, (2000, 12, 31), Freq::Day, (2001, 1, 1)),
            (Julian, (-1, 12, 31), Freq::Day, (1, 1, 1)),
            (ProlepticGregorian, (-1, 12, 31), Freq::Day, (0, 1, 1)),
            (Standard, (-1, 6, 15), Freq::Year, (1, 1, 1)),
            (Day360, (-1, 6, 15), Freq::Year, (0, 1, 1)),
            (Standard, (2000, 12, 15), Freq::Month, (2001, 1, 1)),
            (Day360, (2000, 2, 30), Freq::Month, (2000, 3, 1)),
            (Standard, (1582, 10, 1), Freq::Month, (1582, 11, 1)),
        ];
        for (cal, (y, m, d), freq, (ny, nm, nd)) in cases {
            let got = next_period_start(&at(y, m, d, 23, 59, 59, 999_999), freq, cal);
            assert_eq!(got, DateTime::date(ny, nm, nd), "{cal:?} {y}-{m}-{d} {freq:?}");
        }
    }

    #[test]
    fn iso_text() {
        assert_eq!(DateTime::date(2000, 1, 2).iso(), "2000-01-02T00:00:00");
        assert_eq!(at(1, 2, 3, 4, 5, 6, 7).iso(), "0001-02-03T04:05:06.000007");
        assert_eq!(DateTime::date(-1, 12, 31).iso(), "-0001-12-31T00:00:00");
        assert_eq!(DateTime::date(-12345, 1, 1).iso(), "-12345-01-01T00:00:00");
        assert_eq!(DateTime::date(10000, 1, 1).iso(), "+10000-01-01T00:00:00");
        assert_eq!(DateTime::date(9999, 1, 1).iso(), "9999-01-01T00:00:00");
    }
}
