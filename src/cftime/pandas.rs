//! Reference dates as xarray reads them for its standard calendars: with `pd.Timestamp`.
//!
//! For `standard`, `gregorian` and `proleptic_gregorian` (and no calendar), xarray 2026
//! (`coding/times.py`) splits units at the last " since ", pads a year written with fewer than
//! four digits, and reads the reference with `pd.Timestamp(text)` (a zone is converted to UTC).
//! It falls back to cftime only when pandas refuses the text, the unit is not one of pandas'
//! words, or the reference lies outside the datetime64[ns] range. pandas reads much more than
//! cftime's ISO 8601 pattern ("Jan 1, 2000", "1/15/2000 06:00") and reads some ISO-like text
//! differently ("2000-01-15T06" is 06:00 to pandas and midnight to cftime, ".000249" is not
//! truncated), so this route is taken first, as xarray does.
//!
//! Reproduced forms (month names full or three-letter, also "Sept", any case, optional "."):
//! `YYYY[-/. ]MM[-/. ]DD`, `YYYY`, `YYYY-MM`, `YYYYMMDD`, `MM[-/. ]DD[-/. ]YYYY` (month first
//! unless the first number is above 12, as dateutil), `Mon D[th][,] YYYY`, `D[th] Mon[,] YYYY`,
//! `YYYY Mon D`, `Mon YYYY`, an optional weekday first; then optionally, after a space, "T" or
//! ",", `H:MM[:SS[.f]]`, `HH`, `HHMM` or `HHMMSS` with optional AM/PM; then optionally `Z`,
//! `UTC`, `GMT`, `±H`, `±HH:MM` or `±HHMM`. Text pandas may read otherwise (a zone like
//! "UTC+1", which dateutil reads with the POSIX sign, or a fraction finer than a microsecond)
//! is refused rather than read as another instant.

use super::{from_instant_us, instant_us, Calendar, DateTime, TimeUnit};

/// What xarray does with a units string for a standard calendar.
#[derive(Debug, PartialEq)]
pub(super) enum Reading {
    /// pandas reads the reference as this UTC instant (written with this offset, in minutes
    /// east of UTC), and xarray decodes with it.
    Pandas(TimeUnit, DateTime, i32),
    /// pandas refuses the units or the reference is outside datetime64[ns]: xarray uses cftime.
    Cftime,
    /// pandas may read the reference, but not in a way reproduced here.
    Unknown,
}

/// xarray's reading of `units` for a standard calendar (`_unpack_time_unit_and_ref_date`).
pub(super) fn read_units(units: &str) -> Reading {
    let Some((word, reference)) = split_since(units) else {
        return Reading::Cftime;
    };
    let unit = match unit_of(word) {
        Ok(unit) => unit,
        Err(reading) => return reading,
    };
    let Some(padded) = padded_year(reference) else {
        return Reading::Cftime;
    };
    match read_human_reference(&padded) {
        Ok((t, offset)) => Reading::Pandas(unit, t, offset),
        Err(reading) => reading,
    }
}

/// `re.match(r"(.+) since (.+)", units)`, both parts stripped: the last " since " of the first
/// line with text on both sides.
fn split_since(units: &str) -> Option<(&str, &str)> {
    let line = units.split('\n').next().unwrap_or("");
    let (at, _) = line.rmatch_indices(" since ").find(|&(at, _)| at > 0 && line.len() > at + 7)?;
    Some((line[..at].trim(), line[at + 7..].trim()))
}

/// `_netcdf_to_numpy_timeunit`: the word lower-cased, an "s" appended if missing.
fn unit_of(word: &str) -> Result<TimeUnit, Reading> {
    let mut word = word.to_lowercase();
    if !word.ends_with('s') {
        word.push('s');
    }
    Ok(match word.as_str() {
        "microseconds" => TimeUnit::Microseconds,
        "milliseconds" => TimeUnit::Milliseconds,
        "seconds" => TimeUnit::Seconds,
        "minutes" => TimeUnit::Minutes,
        "hours" => TimeUnit::Hours,
        "days" => TimeUnit::Days,
        "nanoseconds" => return Err(Reading::Unknown),
        _ => return Err(Reading::Cftime),
    })
}

/// `_ensure_padded_year`: text without four digits in a row must start with the year, which
/// is padded to four digits; `None` (xarray's ValueError) if it does not start with digits.
fn padded_year(reference: &str) -> Option<String> {
    let has_four = reference.as_bytes().windows(4).any(|w| w.iter().all(u8::is_ascii_digit));
    if has_four {
        return Some(reference.to_string());
    }
    let digits = reference.bytes().take_while(u8::is_ascii_digit).count();
    let year: u64 = reference[..digits].parse().ok()?;
    Some(format!("{year:04}{}", &reference[digits..]))
}

/// The first and last whole microseconds of datetime64[ns] (1677-09-21T00:12:43.145224193 to
/// 2262-04-11T23:47:16.854775807), in microseconds of the proleptic Gregorian calendar.
fn ns_range_us() -> (i128, i128) {
    let cal = Calendar::ProlepticGregorian;
    let at = |year, month, day, hour, minute, second, microsecond| {
        instant_us(cal, &DateTime { year, month, day, hour, minute, second, microsecond }).unwrap_or(0)
    };
    (at(1677, 9, 21, 0, 12, 43, 145_225), at(2262, 4, 11, 23, 47, 16, 854_775))
}

/// A reference date as `pd.Timestamp` reads it (month first, as dateutil by default): the
/// UTC instant and the written offset. Err says what xarray does instead.
pub(super) fn read_human_reference(text: &str) -> Result<(DateTime, i32), Reading> {
    let tokens = tokenize(text).ok_or(Reading::Cftime)?;
    let mut p = Parser { tokens: &tokens, at: 0 };
    let read = p.weekday().and_then(|()| {
        let (year, month, day) = p.date()?;
        let before_clock = p.at;
        let (hour, minute, second, microsecond) = p.clock()?;
        let before_zone = p.at;
        let offset = p.zone()?;
        if p.at > before_zone && before_zone == before_clock {
            // A zone straight after a date: pandas refuses "2000/01/15 UTC" (cftime reads
            // midnight) but reads "2000-01-15+01:00" as 01:00.
            let numeric = p.tokens[before_zone..p.at].iter().any(|t| matches!(t, Token::Num(_)));
            return Err(if numeric { Reading::Unknown } else { Reading::Cftime });
        }
        p.skip_spaces();
        if p.at != p.tokens.len() {
            return Err(Reading::Cftime);
        }
        Ok((DateTime { year, month, day, hour, minute, second, microsecond }, offset))
    });
    let (local, offset) = match read {
        // A year of one to three digits before four digits elsewhere ("99-01-15 +0100") is
        // read by dateutil in ways not reproduced here (two-digit years, day first).
        Err(Reading::Cftime) if matches!(text.bytes().take_while(u8::is_ascii_digit).count(), 1..=3) => {
            return Err(Reading::Unknown);
        }
        other => other?,
    };
    let cal = Calendar::ProlepticGregorian;
    let local_us = instant_us(cal, &local).map_err(|_| Reading::Cftime)?;
    let utc_us = local_us - i128::from(offset) * 60_000_000;
    let (first, last) = ns_range_us();
    if !(first..=last).contains(&utc_us) {
        return Err(Reading::Cftime);
    }
    Ok((from_instant_us(cal, utc_us).map_err(|_| Reading::Cftime)?, offset))
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Num(String),
    Word(String),
    Sym(char),
    Space,
}

/// Digit runs, letter runs, single punctuation marks and runs of spaces; `None` for any other
/// character.
fn tokenize(text: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        let run = |chars: &mut std::iter::Peekable<std::str::Chars>, f: fn(&char) -> bool| {
            let mut s = String::new();
            while let Some(c) = chars.next_if(f) {
                s.push(c);
            }
            s
        };
        tokens.push(match c {
            '0'..='9' => Token::Num(run(&mut chars, char::is_ascii_digit)),
            'a'..='z' | 'A'..='Z' => Token::Word(run(&mut chars, char::is_ascii_alphabetic)),
            ' ' => {
                run(&mut chars, |c| *c == ' ');
                Token::Space
            }
            '-' | '/' | '.' | ':' | ',' | '+' => {
                chars.next();
                Token::Sym(c)
            }
            _ => return None,
        });
    }
    Some(tokens)
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const WEEKDAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// A month name as dateutil knows it: the full name, its first three letters, or "sept".
fn month_of(word: &str) -> Option<u32> {
    let w = word.to_ascii_lowercase();
    let i = MONTHS
        .iter()
        .position(|m| *m == w || (w.len() == 3 && m.starts_with(&w)) || (w == "sept" && *m == "september"))?;
    Some(i as u32 + 1)
}

type Step<T> = Result<T, Reading>;
/// Year, month and day as written.
type Ymd = (i64, u32, u32);

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn sym(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Token::Sym(c));
        self.at += usize::from(hit);
        hit
    }

    fn skip_spaces(&mut self) -> bool {
        let hit = self.peek() == Some(&Token::Space);
        self.at += usize::from(hit);
        hit
    }

    /// A digit run of `len` digits (any length in the range), as text.
    fn digits(&mut self, len: std::ops::RangeInclusive<usize>) -> Option<String> {
        match self.peek() {
            Some(Token::Num(n)) if len.contains(&n.len()) => {
                let n = n.clone();
                self.at += 1;
                Some(n)
            }
            _ => None,
        }
    }

    fn number(&mut self, len: std::ops::RangeInclusive<usize>) -> Option<u32> {
        self.digits(len)?.parse().ok()
    }

    fn word(&mut self, test: impl Fn(&str) -> bool) -> Option<String> {
        match self.peek() {
            Some(Token::Word(w)) if test(w) => {
                let w = w.clone();
                self.at += 1;
                Some(w)
            }
            _ => None,
        }
    }

    /// A month name with an optional "." after it.
    fn month_name(&mut self) -> Option<u32> {
        let month = month_of(&self.word(|w| month_of(w).is_some())?)?;
        self.sym('.');
        Some(month)
    }

    /// Between the fields of a written-out date: one "-" or "/", or spaces and commas.
    fn gap(&mut self) -> bool {
        if self.sym('-') || self.sym('/') {
            return true;
        }
        let start = self.at;
        while self.skip_spaces() || self.sym(',') {}
        self.at > start
    }

    /// A day of the month with an optional ordinal suffix ("15th", "4rd").
    fn day(&mut self) -> Option<u32> {
        let day = self.number(1..=2)?;
        self.word(|w| matches!(w.to_ascii_lowercase().as_str(), "st" | "nd" | "rd" | "th"));
        Some(day)
    }

    /// An optional weekday name, which dateutil ignores, and the separator after it.
    fn weekday(&mut self) -> Step<()> {
        let is_weekday = |w: &str| {
            let w = w.to_ascii_lowercase();
            WEEKDAYS.iter().any(|d| *d == w || (w.len() == 3 && d.starts_with(&w)))
        };
        if self.word(is_weekday).is_some() {
            self.sym(',');
            self.skip_spaces();
        }
        Ok(())
    }

    /// The first alternative that reads, from the same start.
    fn date(&mut self) -> Step<Ymd> {
        let start = self.at;
        let forms: [fn(&mut Self) -> Option<Ymd>; 4] =
            [Self::year_first, Self::numbers_year_last, Self::month_name_first, Self::day_then_month_name];
        for form in forms {
            self.at = start;
            if let Some(date) = form(self) {
                return Ok(date);
            }
        }
        Err(Reading::Cftime)
    }

    /// `YYYYMMDD`, `YYYY`, `YYYY-MM`, or `YYYY s MM s DD` / `YYYY s Mon s DD` with the same
    /// separator `s` (one of `-/.` or a space) twice.
    fn year_first(&mut self) -> Option<Ymd> {
        let year = self.digits(4..=8)?;
        if year.len() == 8 {
            let n: u32 = year.parse().ok()?;
            return Some((i64::from(n / 10_000), n / 100 % 100, n % 100));
        }
        let year: i64 = year.parse().ok().filter(|_| year.len() <= 5)?;
        let separator = self.peek().cloned();
        if !matches!(separator, Some(Token::Sym('-' | '/' | '.') | Token::Space)) {
            return (self.at == self.tokens.len()).then_some((year, 1, 1));
        }
        self.at += 1;
        let month = match self.number(1..=2) {
            Some(m) => m,
            None => self.month_name()?,
        };
        if self.peek().cloned() != separator {
            let partial = matches!(separator, Some(Token::Sym('-' | '/'))) && self.at == self.tokens.len();
            return partial.then_some((year, month, 1));
        }
        self.at += 1;
        Some((year, month, self.number(1..=2)?))
    }

    /// `A s B s YYYY`: month first unless `A` is above 12.
    fn numbers_year_last(&mut self) -> Option<Ymd> {
        let a = self.number(1..=2)?;
        let separator = self.peek().cloned().filter(|t| matches!(t, Token::Sym('-' | '/' | '.') | Token::Space))?;
        self.at += 1;
        let b = self.number(1..=2)?;
        (self.peek() == Some(&separator)).then_some(())?;
        self.at += 1;
        let year = i64::from(self.number(4..=4)?);
        Some(if a > 12 { (year, b, a) } else { (year, a, b) })
    }

    /// `Mon D[th][,] YYYY` or `Mon YYYY` (the first of the month).
    fn month_name_first(&mut self) -> Option<Ymd> {
        let month = self.month_name()?;
        self.gap().then_some(())?;
        if let Some(year) = self.number(4..=4) {
            return Some((i64::from(year), month, 1));
        }
        let day = self.day()?;
        self.gap().then_some(())?;
        Some((i64::from(self.number(4..=4)?), month, day))
    }

    /// `D[th][,] Mon[,] YYYY`.
    fn day_then_month_name(&mut self) -> Option<Ymd> {
        let day = self.day()?;
        self.gap().then_some(())?;
        let month = self.month_name()?;
        self.gap().then_some(())?;
        Some((i64::from(self.number(4..=4)?), month, day))
    }

    /// An optional time of day after spaces, commas and at most one "T": `H:MM[:SS[.f]]`,
    /// `HH`, `HHMM` or `HHMMSS`, then an optional AM/PM. Midnight when absent.
    fn clock(&mut self) -> Step<(u32, u32, u32, u32)> {
        let start = self.at;
        while self.skip_spaces() || self.sym(',') {}
        self.word(|w| w.eq_ignore_ascii_case("t"));
        while self.skip_spaces() {}
        if !matches!(self.peek(), Some(Token::Num(_))) {
            self.at = start;
            return Ok((0, 0, 0, 0));
        }
        let hour_text = self.digits(1..=6).ok_or(Reading::Cftime)?;
        let field = |range: std::ops::Range<usize>| hour_text[range].parse::<u32>().map_err(|_| Reading::Cftime);
        let (mut minute, mut second, mut microsecond, mut hour_only) = (0, 0, 0, false);
        let mut hour = match hour_text.len() {
            1 | 2 if self.sym(':') => {
                minute = self.number(1..=2).ok_or(Reading::Cftime)?;
                if self.sym(':') {
                    second = self.number(1..=2).ok_or(Reading::Cftime)?;
                    if self.sym('.') || self.sym(',') {
                        microsecond = self.fraction()?;
                    }
                }
                field(0..hour_text.len())?
            }
            1 | 2 => {
                hour_only = true;
                field(0..hour_text.len())?
            }
            4 => {
                minute = field(2..4)?;
                field(0..2)?
            }
            6 => {
                (minute, second) = (field(2..4)?, field(4..6)?);
                field(0..2)?
            }
            _ => return Err(Reading::Cftime),
        };
        let after_clock = self.at;
        self.skip_spaces();
        match self.word(|w| w.eq_ignore_ascii_case("am") || w.eq_ignore_ascii_case("pm")) {
            Some(half) if (1..=12).contains(&hour) => {
                hour = hour % 12 + if half.eq_ignore_ascii_case("pm") { 12 } else { 0 };
            }
            Some(_) => return Err(Reading::Cftime),
            // pandas reads "2000-01-15 06" but not "2000-01-15 6".
            None if hour_only && hour_text.len() == 1 => return Err(Reading::Cftime),
            None => self.at = after_clock,
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(Reading::Cftime);
        }
        Ok((hour, minute, second, microsecond))
    }

    /// Fraction digits (possibly none) as whole microseconds; Unknown when finer.
    fn fraction(&mut self) -> Step<u32> {
        let Some(digits) = self.digits(1..=usize::MAX) else {
            // pandas reads "06:00:05." and "06:00:05. +01:00" but not "06:00:05.Z".
            return match self.peek() {
                None | Some(Token::Space) => Ok(0),
                Some(_) => Err(Reading::Cftime),
            };
        };
        if digits.len() > 9 {
            return Err(Reading::Unknown);
        }
        let ns: u32 = format!("{digits:0<9}").parse().map_err(|_| Reading::Cftime)?;
        if !ns.is_multiple_of(1000) {
            return Err(Reading::Unknown);
        }
        Ok(ns / 1000)
    }

    /// An optional zone after optional spaces, in minutes east of UTC: `Z`, `UTC`, `GMT`,
    /// `±H`, `±HH`, `±H:MM` or `±HHMM`. dateutil reads "UTC+1" as one hour west (POSIX), which
    /// is left Unknown.
    fn zone(&mut self) -> Step<i32> {
        let start = self.at;
        self.skip_spaces();
        if self.word(|w| matches!(w, "Z" | "z")).is_some() {
            return Ok(0);
        }
        if self.word(|w| matches!(w, "UTC" | "GMT")).is_some() {
            return match self.peek() {
                Some(Token::Sym('+' | '-')) => Err(Reading::Unknown),
                _ => Ok(0),
            };
        }
        let sign = match self.peek() {
            Some(Token::Sym('+')) => 1,
            Some(Token::Sym('-')) => -1,
            _ => {
                self.at = start;
                return Ok(0);
            }
        };
        self.at += 1;
        let text = self.digits(1..=4).ok_or(Reading::Cftime)?;
        let (hours, minutes): (i32, i32) = match text.len() {
            1 | 2 if self.sym(':') => (text.parse().unwrap_or(99), self.number(2..=2).ok_or(Reading::Cftime)? as i32),
            1 | 2 => (text.parse().unwrap_or(99), 0),
            4 => (text[..2].parse().unwrap_or(99), text[2..].parse().unwrap_or(99)),
            _ => return Err(Reading::Cftime),
        };
        match (hours, minutes) {
            (0..=23, 0..=59) => Ok(sign * (hours * 60 + minutes)),
            (0..=23, _) => Err(Reading::Unknown),
            // pandas refuses a whole day or more; xarray then reads it with cftime.
            _ => Err(Reading::Cftime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Calendar, TimeUnit, TimeUnits};
    use super::*;

    /// The instant xarray decodes 0 to, as this crate reads it for `calendar`.
    fn decoded(reference: &str, calendar: &str) -> Result<String, String> {
        TimeUnits::parse(&format!("days since {reference}"), calendar)?.decode(0.0).map(|t| t.iso())
    }

    // Regenerate with pandas 3.1 and xarray 2026.9 (the venv):
    //   ds = xr.Dataset({"time": ("time", [0.0], {"units": "days since " + ref, "calendar": "standard"})})
    //   xr.decode_cf(ds).time.values[0]   # pd.Timestamp(ref), tz_convert("UTC").tz_convert(None)
    const PANDAS: [(&str, &str); 44] = [
        ("Jan 1, 2000", "2000-01-01T00:00:00"),
        ("jan 1, 2000", "2000-01-01T00:00:00"),
        ("JANUARY 1 2000", "2000-01-01T00:00:00"),
        ("Jan. 1, 2000", "2000-01-01T00:00:00"),
        ("Sept 1, 2000", "2000-09-01T00:00:00"),
        ("January 1, 2000 12:00", "2000-01-01T12:00:00"),
        ("Jan 1, 2000 1:05 PM", "2000-01-01T13:05:00"),
        ("Jan 1, 2000 12:00 AM", "2000-01-01T00:00:00"),
        ("Jan 1, 2000 12:00:30.25 UTC", "2000-01-01T12:00:30.250000"),
        ("Jan 1, 2000 12:00 +0100", "2000-01-01T11:00:00"),
        ("Jan 1, 2000 12:00:00-01:30", "2000-01-01T13:30:00"),
        ("Jan 1, 2000 12:00 +1", "2000-01-01T11:00:00"),
        ("Jan 1, 2000T12:00", "2000-01-01T12:00:00"),
        ("15 Jan 2000", "2000-01-15T00:00:00"),
        ("15-Jan-2000", "2000-01-15T00:00:00"),
        ("15th Jan, 2000 06:00", "2000-01-15T06:00:00"),
        ("2000 Jan 15", "2000-01-15T00:00:00"),
        ("Jan 2000", "2000-01-01T00:00:00"),
        ("Sat, 15 Jan 2000 06:00:00 GMT", "2000-01-15T06:00:00"),
        ("1/15/2000", "2000-01-15T00:00:00"),
        ("1/15/2000 06:00", "2000-01-15T06:00:00"),
        ("1/2/2000", "2000-01-02T00:00:00"),
        ("15/1/2000", "2000-01-15T00:00:00"),
        ("01-15-2000", "2000-01-15T00:00:00"),
        ("15.01.2000", "2000-01-15T00:00:00"),
        ("12/31/1999 11:59:59 pm", "1999-12-31T23:59:59"),
        ("2000/01/15", "2000-01-15T00:00:00"),
        ("2000/1/15 06:00:00", "2000-01-15T06:00:00"),
        ("2000.01.15", "2000-01-15T00:00:00"),
        ("2000 01 15", "2000-01-15T00:00:00"),
        ("20000115", "2000-01-15T00:00:00"),
        ("20000115T060000", "2000-01-15T06:00:00"),
        ("2000", "2000-01-01T00:00:00"),
        ("2000-01", "2000-01-01T00:00:00"),
        // ISO-like text that cftime reads otherwise.
        ("2000-01-15T06", "2000-01-15T06:00:00"),
        ("2000-01-15 06Z", "2000-01-15T06:00:00"),
        ("2000-01-15T0630", "2000-01-15T06:30:00"),
        ("2000-01-15 06:30:15,5", "2000-01-15T06:30:15.500000"),
        ("2000-01-15 06:30:15.000249", "2000-01-15T06:30:15.000249"),
        ("2000-01-15T06:00:00+0100", "2000-01-15T05:00:00"),
        ("2000-01-15 06:00:00 +1", "2000-01-15T05:00:00"),
        ("02000-01-15T06", "2000-01-15T06:00:00"),
        ("15-01-2000", "2000-01-15T00:00:00"),
        ("1678-01-01 00:00:00.000249", "1678-01-01T00:00:00.000249"),
    ];

    #[test]
    fn standard_calendars_read_like_pandas() {
        for cal in ["standard", "gregorian", "proleptic_gregorian", ""] {
            for (reference, want) in PANDAS {
                assert_eq!(decoded(reference, cal).as_deref(), Ok(want), "{reference:?} ({cal})");
            }
        }
    }

    #[test]
    fn xarray_falls_back_to_cftime() {
        // pandas refuses these, or they lie outside datetime64[ns]: xarray decodes with cftime.
        let cases = [
            ("1-1-1", "0001-01-01T00:00:00"),
            ("850-1-1 12:00", "0850-01-01T12:00:00"),
            ("1677-09-21 00:00:00.000249", "1677-09-21T00:00:00.000248"),
            ("2263-01-01 00:00:00.000249", "2263-01-01T00:00:00.000248"),
            ("2000-01-15 06:00:00 EST", "2000-01-15T06:00:00"),
            ("2000-01-15 UTC", "2000-01-15T00:00:00"),
            ("2000-01-15 6", "2000-01-15T00:00:00"),
            ("2000-01-15 06:00 +2400", "2000-01-14T06:00:00"),
        ];
        for (reference, want) in cases {
            assert_eq!(decoded(reference, "standard").as_deref(), Ok(want), "{reference:?}");
        }
    }

    #[test]
    fn refused() {
        // xarray refuses the first group; it decodes the second, but not in a way reproduced
        // here (dateutil's POSIX sign after "UTC", nanoseconds, two-digit years, a zone
        // straight after a date), so they are refused rather than read as another instant.
        let cases = [
            "Jan 1, 99",
            "Jan 1, 1650",
            "Jan 1, 2263",
            "Feb 29, 2001",
            "Feb 30, 2000",
            "Jan 32, 2000",
            "Febr 1, 2000",
            "13/13/2000",
            "2000/15/01",
            "Jan 1, 2000 12:00 EST",
            "Jan 1 2000 24:00",
            "Jan 1, 2000 13:00 PM",
            "noon Jan 1, 2000",
            "today",
            "1/15/00",
            "Jan 1, 2000 12:00 UTC+1",
            "Jan 1, 2000 12:00:00.0000005",
            "99-01-15T06:30+0100",
            "1-1-1 00:00:00 +0100",
            "2000-01-15+01:00",
        ];
        for reference in cases {
            assert!(decoded(reference, "standard").is_err(), "{reference:?}");
        }
    }

    #[test]
    fn other_calendars_read_with_cftime_only() {
        for cal in ["noleap", "julian", "360_day", "all_leap"] {
            assert!(decoded("Jan 1, 2000", cal).is_err(), "{cal}");
            assert!(decoded("1/15/2000", cal).is_err(), "{cal}");
        }
        // cftime's pattern reads "15-01-2000" as year 15, month 1, day 20 (xarray agrees).
        assert_eq!(decoded("15-01-2000", "noleap").as_deref(), Ok("0015-01-20T00:00:00"));
        assert_eq!(decoded("2000-01-15T06", "noleap").as_deref(), Ok("2000-01-15T00:00:00"));
    }

    #[test]
    fn unit_words_as_xarray() {
        let unit = |units: &str| TimeUnits::parse(units, "standard").map(|u| u.unit);
        assert_eq!(unit("minute since Jan 1, 2000"), Ok(TimeUnit::Minutes));
        assert_eq!(unit("Days since 1/15/2000"), Ok(TimeUnit::Days));
        // Words pandas does not know (xarray splits at the last " since ") send xarray to
        // cftime, which cannot read these dates; nanoseconds are not represented here.
        let refused = [
            "hr since Jan 1, 2000",
            "d since Jan 1, 2000",
            "days SINCE Jan 1, 2000",
            "hours since 1/15/2000 since 2000-01-01",
            "nanoseconds since Jan 1, 2000",
        ];
        for units in refused {
            assert!(unit(units).is_err(), "{units}");
        }
    }

    #[test]
    fn written_forms_read_back() {
        // Property: pseudo-random instants of the datetime64[ns] era, written in several forms.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        const ABBR: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        for _ in 0..500 {
            let (y, m) = (1678 + next(584) as i64, 1 + next(12) as u32);
            let d = 1 + next(u64::from(Calendar::ProlepticGregorian.days_in_month(y, m))) as u32;
            let (h, min, s) = (next(24) as u32, next(60) as u32, next(60) as u32);
            let want = DateTime { year: y, month: m, day: d, hour: h, minute: min, second: s, microsecond: 0 };
            let (h12, half) = ((h + 11) % 12 + 1, if h < 12 { "AM" } else { "PM" });
            let month = ABBR[m as usize - 1];
            for text in [
                format!("{month} {d}, {y} {h}:{min:02}:{s:02}"),
                format!("{d} {} {y} {h:02}:{min:02}:{s:02}", MONTHS[m as usize - 1]),
                format!("{m}/{d}/{y} {h12}:{min:02}:{s:02} {half}"),
                format!("{y}/{m:02}/{d:02} {h:02}:{min:02}:{s:02}Z"),
            ] {
                assert_eq!(read_human_reference(&text), Ok((want, 0)), "{text}");
            }
        }
    }
}
